/*
 * store: image metadata (and later the job queue) behind one interface.
 * The backend is chosen once from the database URL: sqlite:PATH (sqlite.c)
 * or postgres://... (postgres.c). Every function is thread-safe: a store
 * keeps its own pool of connections. Errors come back as util_error values:
 * UTIL_ERR_NOT_FOUND for an unknown id, UTIL_ERR_UNAVAILABLE when the
 * database cannot be reached, UTIL_ERR_INTERNAL for anything else.
 */
#ifndef STORE_STORE_H
#define STORE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "util/util.h"

#define STORE_SHA256_HEX 64

/* One stored image (an original, or a job's result). */
struct store_image {
    char id[UTIL_ID_LEN + 1];          /* public id */
    char sha256[STORE_SHA256_HEX + 1]; /* blob key, lower-case hex */
    char format[8];                    /* jpeg png webp gif tiff heic avif */
    int64_t width;                     /* as displayed (after EXIF orientation), one frame */
    int64_t height;                    /* as displayed, one frame */
    int64_t pages;                     /* frames/pages, >= 1 */
    int64_t bytes;                     /* size of the original */
    bool has_alpha;                    /* an alpha band */
    int orientation;                   /* EXIF orientation 1..8 (1 when absent) */
    char icc[128];                     /* ICC profile description, "" when none */
    int64_t created_at_ms;             /* wall clock, ms since the epoch */
    int64_t seq;                       /* insertion order; lists and cursors use it */
};

struct store;

/* One cached variant: the result of a plan on an image. */
struct store_variant {
    char image_id[UTIL_ID_LEN + 1];    /* the source image */
    const char *plan;                  /* canonical plan text (the key, with the image id) */
    char sha256[STORE_SHA256_HEX + 1]; /* blob of the encoded result */
    char format[8];                    /* its format */
    int64_t width, height;             /* its size (one frame) */
    int64_t bytes;                     /* its length */
    int64_t created_at_ms;             /* when it was made */
    int64_t last_used_ms;              /* last served (flushed lazily) */
};

/* Job states (DESIGN §3). */
enum store_job_status {
    STORE_JOB_QUEUED,
    STORE_JOB_RUNNING,
    STORE_JOB_SUCCEEDED,
    STORE_JOB_FAILED,
    STORE_JOB_CANCELED,
};

/* One job. Strings are fixed-size except spec, which the store allocates
 * on reads (free it with store_job_clear). */
struct store_job {
    char id[UTIL_ID_LEN + 1];              /* public id */
    char image_id[UTIL_ID_LEN + 1];        /* the source image */
    char *spec;                            /* {"operations":[...],"output":{...}} as JSON text */
    enum store_job_status status;          /* state */
    int attempts;                          /* claims so far */
    int max_attempts;                      /* claims allowed */
    char lease_owner[64];                  /* worker holding the lease, "" if none */
    int64_t lease_expires_at_ms;           /* 0 if none */
    int64_t run_at_ms;                     /* not claimed before this (backoff) */
    char result_image_id[UTIL_ID_LEN + 1]; /* "" until succeeded */
    char error_type[48];                   /* "/problems/..." or "" */
    char error_detail[256];                /* "" if none */
    int64_t created_at_ms;                 /* wall clock */
    int64_t started_at_ms;                 /* first claim, 0 if never */
    int64_t finished_at_ms;                /* 0 until succeeded, failed or canceled */
    int64_t seq;                           /* insertion order, for lists */
};

/* Called when a job reaches succeeded, failed or canceled (possibly in
 * another process, for backends that can tell). Runs on a store thread:
 * it must not block. */
typedef void (*store_job_done_fn)(const char *job_id, void *arg);

/* The operations of one backend (libuv style: chosen once at start-up). */
struct store_ops {
    const char *name;
    void (*close)(struct store *s);
    int (*migrate)(struct store *s, struct util_error *err);
    int (*schema_check)(struct store *s, struct util_error *err);
    int (*ping)(struct store *s, struct util_error *err);
    int (*image_insert)(struct store *s, struct store_image *img, struct util_error *err);
    int (*image_get)(struct store *s, const char *id, struct store_image *out,
                     struct util_error *err);
    int (*image_delete)(struct store *s, const char *id, struct util_error *err);
    int (*image_list)(struct store *s, int64_t before_seq, int limit, struct store_image *out,
                      int *n, struct util_error *err);
    int (*blob_referenced)(struct store *s, const char *sha256, bool *out, struct util_error *err);
    int (*variant_get)(struct store *s, const char *image_id, const char *plan,
                       struct store_variant *out, struct util_error *err);
    int (*variant_put)(struct store *s, const struct store_variant *v, struct util_error *err);
    int (*variant_trim)(struct store *s, int64_t max_bytes, int *evicted, struct util_error *err);
    int (*job_enqueue)(struct store *s, struct store_job *job, const char *idem_key,
                       const char *idem_hash, int64_t jobs_max, bool *existing,
                       struct util_error *err);
    int (*job_get)(struct store *s, const char *id, struct store_job *out, struct util_error *err);
    int (*job_list)(struct store *s, int status, int64_t before_seq, int limit,
                    struct store_job *out, int *n, struct util_error *err);
    int (*job_claim)(struct store *s, const char *owner, int64_t lease_ms, struct store_job *out,
                     bool *got, struct util_error *err);
    int (*job_heartbeat)(struct store *s, const char *id, const char *owner, int attempt,
                         int64_t lease_ms, bool *held, struct util_error *err);
    int (*job_complete)(struct store *s, const char *id, const char *owner, int attempt,
                        struct store_image *result, struct util_error *err);
    int (*job_fail)(struct store *s, const char *id, const char *owner, int attempt, bool retry,
                    int64_t backoff_ms, const char *type, const char *detail,
                    struct util_error *err);
    int (*job_release)(struct store *s, const char *id, const char *owner, int attempt,
                       struct util_error *err);
    int (*job_cancel)(struct store *s, const char *id, struct store_job *out,
                      struct util_error *err);
    int (*job_rescue)(struct store *s, int *requeued, int *failed, struct util_error *err);
    int (*idempotency_expire)(struct store *s, int64_t older_than_ms, int *n,
                              struct util_error *err);
    int64_t (*job_next_run_at)(struct store *s);
    int (*job_counts)(struct store *s, int64_t counts[5], struct util_error *err);
};

struct store_local;

struct store {
    const struct store_ops *ops; /* the backend */
    struct store_local *local;   /* in-process signals, callback, touches (local.h) */
};

/* Opens the database named by url ("sqlite:PATH" or "postgres://...").
 * Does not create or upgrade the schema: call store_migrate. NULL on error
 * (UTIL_ERR_INVALID_OPERATION for a URL of no known kind,
 * UTIL_ERR_UNAVAILABLE when the database cannot be reached). */
struct store *store_open(const char *url, struct util_error *err);
/* The same with at most max_connections connections to PostgreSQL (the
 * SQLite backend keeps its own small pool). */
struct store *store_open_sized(const char *url, int max_connections, struct util_error *err);
/* Whether url names a PostgreSQL database. */
bool store_url_is_postgres(const char *url);
/* Closes every connection and frees the store. */
void store_close(struct store *s);

/* Creates or upgrades the schema to the version this binary knows. Safe to
 * run again; runs in one transaction per version. */
int store_migrate(struct store *s, struct util_error *err);
/* 0 when the schema is at the version this binary knows; else
 * UTIL_ERR_INVALID_OPERATION saying to run `image-server migrate` (api and
 * worker never migrate by themselves, DESIGN §1). */
int store_schema_check(struct store *s, struct util_error *err);
/* 0 when the database answers a trivial query. */
int store_ping(struct store *s, struct util_error *err);

/* Inserts img (id, sha256 and metadata set by the caller); fills img->seq
 * and img->created_at_ms. Durable when it returns 0. */
int store_image_insert(struct store *s, struct store_image *img, struct util_error *err);
/* UTIL_ERR_NOT_FOUND when no image has that id. */
int store_image_get(struct store *s, const char *id, struct store_image *out,
                    struct util_error *err);
/* Removes the image's row and its variants' rows. Blobs stay for
 * the sweeper. UTIL_ERR_NOT_FOUND when no image has that id. */
int store_image_delete(struct store *s, const char *id, struct util_error *err);
/* Newest first: up to `limit` images with seq < before_seq (0: from the
 * newest). out has room for `limit` entries; *n is how many were filled. */
int store_image_list(struct store *s, int64_t before_seq, int limit, struct store_image *out,
                     int *n, struct util_error *err);
/* Whether any row (image or variant) refers to the blob. */
int store_blob_referenced(struct store *s, const char *sha256, bool *out, struct util_error *err);

/* The variant of image_id for plan; UTIL_ERR_NOT_FOUND when not cached.
 * out->plan is not set. */
int store_variant_get(struct store *s, const char *image_id, const char *plan,
                      struct store_variant *out, struct util_error *err);
/* Records a variant (replacing an older row of the same key). A variant of
 * an image deleted meanwhile is not recorded (UTIL_ERR_NOT_FOUND). */
int store_variant_put(struct store *s, const struct store_variant *v, struct util_error *err);
/* Notes that a variant was served. Kept in memory and written in batches by
 * store_variant_trim, so a cache hit never waits for a disk write. */
void store_variant_touch(struct store *s, const char *image_id, const char *plan, int64_t now_ms);
/* Writes pending touches, then deletes the least recently used variant rows
 * until their bytes fit in max_bytes (their blobs are collected later by the
 * blob sweep). *evicted is the number of rows deleted. A negative max_bytes
 * only writes the touches (an `api` process: the workers' sweepers evict). */
int store_variant_trim(struct store *s, int64_t max_bytes, int *evicted, struct util_error *err);

/* ---- the job queue (DESIGN §4) ------------------------------------------
 * Every transition is one transaction. Fencing: heartbeat, complete and
 * fail act only while the caller still holds the lease (same owner, same
 * attempt, status running); otherwise they change nothing and report
 * UTIL_ERR_CONFLICT (or *held = false), so a worker that lost its lease can
 * never overwrite the outcome of the one that took over, nor a cancel. */

/* Queues job (id, image_id, spec and max_attempts set by the caller; the
 * store fills status, run_at, created_at, seq). With idem_key: if the key
 * was used before, the first job is returned in *job and *existing is set
 * when idem_hash (a digest of the request) matches, else UTIL_ERR_CONFLICT.
 * UTIL_ERR_NOT_FOUND for an unknown image, UTIL_ERR_OVERLOADED when
 * jobs_max jobs are already queued. Idempotency keys are kept 24 hours.
 * job->spec must be malloc'd and is owned by job: when the first job is
 * returned, *job is replaced (store_job_clear frees the caller's spec). */
int store_job_enqueue(struct store *s, struct store_job *job, const char *idem_key,
                      const char *idem_hash, int64_t jobs_max, bool *existing,
                      struct util_error *err);
/* UTIL_ERR_NOT_FOUND for an unknown id. The caller frees with store_job_clear. */
int store_job_get(struct store *s, const char *id, struct store_job *out, struct util_error *err);
/* Newest first; status is an enum store_job_status or -1 for all. out has
 * room for limit jobs; the caller clears each. */
int store_job_list(struct store *s, int status, int64_t before_seq, int limit,
                   struct store_job *out, int *n, struct util_error *err);
/* Claims the queued job with the oldest run_at that is due: status
 * running, attempts + 1, lease to owner for lease_ms. *got is false when
 * none is due. Two claimers never get the same job. */
int store_job_claim(struct store *s, const char *owner, int64_t lease_ms, struct store_job *out,
                    bool *got, struct util_error *err);
/* Extends the lease; *held is false when the caller lost it (expired and
 * taken over, or the job was canceled): the worker must stop. */
int store_job_heartbeat(struct store *s, const char *id, const char *owner, int attempt,
                        int64_t lease_ms, bool *held, struct util_error *err);
/* In one transaction: inserts the result image row (its blob is already
 * durable) and marks the job succeeded. UTIL_ERR_CONFLICT if the lease is
 * not held (nothing is written). */
int store_job_complete(struct store *s, const char *id, const char *owner, int attempt,
                       struct store_image *result, struct util_error *err);
/* Records a failure: with retry and attempts left, the job is queued again
 * to run after backoff_ms; else it is failed with the error. Fenced. */
int store_job_fail(struct store *s, const char *id, const char *owner, int attempt, bool retry,
                   int64_t backoff_ms, const char *type, const char *detail,
                   struct util_error *err);
/* Gives a job back to the queue at once without using up its attempt (a
 * worker that stops gracefully). Fenced like fail. */
int store_job_release(struct store *s, const char *id, const char *owner, int attempt,
                      struct util_error *err);
/* Cancels a queued or running job (finished_at set now) and returns it;
 * UTIL_ERR_CONFLICT for a finished job (*out still filled). */
int store_job_cancel(struct store *s, const char *id, struct store_job *out,
                     struct util_error *err);
/* For backends: the UTIL_ERR_INVALID_OPERATION of a schema at version
 * `have` when this binary needs `want`. */
int store_schema_outdated(struct util_error *err, int64_t have, int want);
/* For backends: the UTIL_ERR_CONFLICT of a fenced transition. */
int store_lease_lost(struct util_error *err, const char *job_id);
/* For backends: the UTIL_ERR_CONFLICT of a cancel on a finished job. */
int store_job_cancel_refused(const struct store_job *job, struct util_error *err);
/* Sweeper: running jobs whose lease expired go back to queued, or to failed
 * when that was their last attempt. Idempotent; safe from many processes. */
int store_job_rescue(struct store *s, int *requeued, int *failed, struct util_error *err);
/* Sweeper: drops idempotency keys created before older_than_ms. */
int store_idempotency_expire(struct store *s, int64_t older_than_ms, int *n,
                             struct util_error *err);
/* Jobs per status, indexed by enum store_job_status (metrics). */
int store_job_counts(struct store *s, int64_t counts[5], struct util_error *err);
/* The earliest run_at of a queued job, or 0 when none (for sleeping). */
int64_t store_job_next_run_at(struct store *s);
/* A counter of "a job may be ready" signals (enqueues, retries, rescues,
 * notifications from other processes, store_job_wake). Read it BEFORE
 * looking for work, and pass it to store_job_wait: a signal that came in
 * between is then not lost. */
uint64_t store_job_signals(struct store *s);
/* Sleeps until the signal counter differs from `seen` or timeout_ms passes. */
void store_job_wait(struct store *s, uint64_t seen, int64_t timeout_ms);
/* Wakes every store_job_wait (shutdown). */
void store_job_wake(struct store *s);
/* Registers the callback for finished jobs (one per store; NULL removes
 * it). When it returns, no call of the previous callback is running. */
void store_on_job_done(struct store *s, store_job_done_fn fn, void *arg);
/* Frees what a read allocated (spec) and zeroes the job. */
void store_job_clear(struct store_job *job);
/* "queued", "running", ... and back (-1 if unknown). */
const char *store_job_status_name(enum store_job_status st);
int store_job_status_from_name(const char *name);

/* Backends. */
struct store *store_sqlite_open(const char *path, struct util_error *err);
struct store *store_postgres_open(const char *url, int max_connections, struct util_error *err);
/* The PostgreSQL connection pool of a store (for blobs kept in the
 * database), NULL for another backend. */
struct pg_pool *store_postgres_pool(struct store *s);

#endif
