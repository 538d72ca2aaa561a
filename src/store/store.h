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
    char id[UTIL_ID_LEN + 1];           /* public id */
    char sha256[STORE_SHA256_HEX + 1];  /* blob key, lower-case hex */
    char format[8];                     /* jpeg png webp gif tiff heic avif */
    int64_t width;                      /* as displayed (after EXIF orientation), one frame */
    int64_t height;                     /* as displayed, one frame */
    int64_t pages;                      /* frames/pages, >= 1 */
    int64_t bytes;                      /* size of the original */
    bool has_alpha;                     /* an alpha band */
    int orientation;                    /* EXIF orientation 1..8 (1 when absent) */
    char icc[128];                      /* ICC profile description, "" when none */
    int64_t created_at_ms;              /* wall clock, ms since the epoch */
    int64_t seq;                        /* insertion order; lists and cursors use it */
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

/* The operations of one backend (libuv style: chosen once at start-up). */
struct store_ops {
    const char *name;
    void (*close)(struct store *s);
    int (*migrate)(struct store *s, struct util_error *err);
    int (*ping)(struct store *s, struct util_error *err);
    int (*image_insert)(struct store *s, struct store_image *img, struct util_error *err);
    int (*image_get)(struct store *s, const char *id, struct store_image *out,
                     struct util_error *err);
    int (*image_delete)(struct store *s, const char *id, struct util_error *err);
    int (*image_list)(struct store *s, int64_t before_seq, int limit, struct store_image *out,
                      int *n, struct util_error *err);
    int (*blob_referenced)(struct store *s, const char *sha256, bool *out,
                           struct util_error *err);
    int (*variant_get)(struct store *s, const char *image_id, const char *plan,
                       struct store_variant *out, struct util_error *err);
    int (*variant_put)(struct store *s, const struct store_variant *v, struct util_error *err);
    void (*variant_touch)(struct store *s, const char *image_id, const char *plan,
                          int64_t now_ms);
    int (*variant_trim)(struct store *s, int64_t max_bytes, int *evicted,
                        struct util_error *err);
};

struct store {
    const struct store_ops *ops; /* the backend */
};

/* Opens the database named by url ("sqlite:PATH" or "postgres://...").
 * Does not create or upgrade the schema: call store_migrate. NULL on error. */
struct store *store_open(const char *url, struct util_error *err);
/* Closes every connection and frees the store. */
void store_close(struct store *s);

/* Creates or upgrades the schema to the version this binary knows. Safe to
 * run again; runs in one transaction per version. */
int store_migrate(struct store *s, struct util_error *err);
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
void store_variant_touch(struct store *s, const char *image_id, const char *plan,
                         int64_t now_ms);
/* Writes pending touches, then deletes the least recently used variant rows
 * until their bytes fit in max_bytes (their blobs are collected later by the
 * blob sweep). *evicted is the number of rows deleted. */
int store_variant_trim(struct store *s, int64_t max_bytes, int *evicted, struct util_error *err);

/* Backends. */
struct store *store_sqlite_open(const char *path, struct util_error *err);

#endif
