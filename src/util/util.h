/*
 * util: small shared pieces every layer may use: domain errors, the
 * configuration (flags with IMAGE_SERVER_* twins), ids and base64url, list
 * cursors, time, logging, a bounded thread pool and the metrics registry.
 * Nothing here knows HTTP, SQL or libvips.
 */
#ifndef UTIL_UTIL_H
#define UTIL_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ---- domain errors ------------------------------------------------------ */

/* The errors lower layers return; only api/ maps them to HTTP (one table). */
enum util_err {
    UTIL_OK = 0,
    UTIL_ERR_INVALID_OPERATION, /* bad parameter, bad JSON */
    UTIL_ERR_NOT_FOUND,         /* unknown id */
    UTIL_ERR_UNSUPPORTED,       /* not an image, or a format we refuse */
    UTIL_ERR_INVALID_IMAGE,     /* truncated or corrupt image data */
    UTIL_ERR_TOO_LARGE,         /* over a pixel limit */
    UTIL_ERR_CONFLICT,          /* idempotency key reuse, finished job */
    UTIL_ERR_OVERLOADED,        /* a queue is full */
    UTIL_ERR_TIMEOUT,           /* processing deadline passed */
    UTIL_ERR_UNAVAILABLE,       /* database or blob storage unreachable */
    UTIL_ERR_INTERNAL,          /* a bug */
};

/* An error value with a human-readable detail (shown to clients). */
struct util_error {
    enum util_err code; /* UTIL_OK when nothing failed */
    char detail[256];   /* NUL-terminated, may be empty */
};

/* Sets code and a printf-style detail; returns -1 so callers can
 * `return util_error_set(...)`. err may be NULL. */
int util_error_set(struct util_error *err, enum util_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Name of an error code for logs ("invalid-image"). */
const char *util_err_name(enum util_err code);

/* ---- configuration ------------------------------------------------------ */

/* Which subcommands a flag applies to (bit mask). */
#define UTIL_CMD_SERVE     (1u << 0)
#define UTIL_CMD_API       (1u << 1)
#define UTIL_CMD_WORKER    (1u << 2)
#define UTIL_CMD_MIGRATE   (1u << 3)
#define UTIL_CMD_TRANSFORM (1u << 4)
#define UTIL_CMD_SIGN      (1u << 5)
#define UTIL_CMD_ALL       0x3fu

/* Every setting of every subcommand. Sizes are bytes, durations
 * milliseconds. Strings are owned by the config (util_config_free). */
struct util_config {
    char *listen;                    /* host:port of the HTTP listener */
    char *database;                  /* sqlite:PATH or postgres://... */
    char *blobs;                     /* fs:PATH or db */
    int64_t db_connections;          /* PostgreSQL pool size per process */
    bool variant_cache;              /* --variant-cache on|off */
    int64_t max_body_bytes;          /* request body cap */
    int64_t max_pixels;              /* source width x height x pages */
    int64_t max_pixels_progressive;  /* the same for progressive/interlaced */
    int64_t max_output_pixels;       /* final size */
    int64_t timeout_ms;              /* processing deadline */
    int64_t queue_max;               /* waiting synchronous requests; 0 = 4 x pool */
    int64_t concurrency;             /* processing pool threads; 0 = cores */
    int64_t vips_threads;            /* libvips threads per image */
    int64_t http_threads;            /* libmicrohttpd I/O threads; 0 = from cores */
    int64_t max_connections;         /* open connections */
    int64_t max_client_connections;  /* open connections per client address */
    char *limit_exempt;              /* CIDR list the per-client limits skip */
    char *api_keys;                  /* --api-key values, one a line ("" none) */
    char *api_keys_file;             /* file of keys, "" none */
    char *signing_key;               /* URL signing key, "" none */
    int64_t max_client_requests;     /* per client in or waiting for processing; 0 = 2 x pool */
    char *trusted_proxy;             /* CIDRs whose X-Forwarded-For is believed */
    int64_t idle_timeout_ms;         /* idle keep-alive connections are closed after it */
    int64_t shutdown_timeout_ms;     /* graceful stop deadline */
    int64_t blob_grace_ms;           /* age before an unreferenced blob is collected */
    int64_t variant_cache_max_bytes; /* variant bytes kept (LRU eviction) */
    int64_t jobs_max;                /* queued jobs before POST /v1/jobs is 503 */
    int64_t max_attempts;            /* attempts per job */
    int64_t lease_ms;                /* job lease */
    int64_t workers;                 /* job worker threads; 0 = cores */
    int64_t sweep_interval_ms;       /* how often the sweeper runs */
};

/* Outcome of util_config_parse. */
enum util_config_result {
    UTIL_CONFIG_OK,    /* cfg is filled, *argi is the first positional arg */
    UTIL_CONFIG_HELP,  /* --help was given: help was printed to stdout */
    UTIL_CONFIG_ERROR, /* errbuf holds one line naming the flag */
};

/* Parses flags for subcommand `cmd` (a UTIL_CMD_* bit, name `cmd_name`) from
 * argv[*argi..] over IMAGE_SERVER_* environment variables over defaults.
 * Stops at the first non-flag argument or after `--`, leaving *argi there.
 * On success the caller owns cfg and frees it with util_config_free. */
enum util_config_result util_config_parse(struct util_config *cfg, unsigned cmd,
                                          const char *cmd_name, int argc, char **argv, int *argi,
                                          char *errbuf, size_t errlen);
void util_config_free(struct util_config *cfg);
/* Prints every flag of `cmd` with its environment twin and default. */
void util_config_print_help(unsigned cmd, const char *cmd_name);

/* Parses "50MiB", "10GiB", "1024" (bytes). Returns 0 or -1. */
int util_parse_size(const char *s, int64_t *out);
/* Parses "30s", "250ms", "5m", "1h", or a bare number of seconds. */
int util_parse_duration(const char *s, int64_t *out_ms);
/* Parses a decimal integer with no trailing garbage. */
int util_parse_int(const char *s, int64_t *out);

/* ---- ids, base64url, cursors -------------------------------------------- */

#define UTIL_ID_LEN 22 /* 128 bits in base64url without padding */

/* Fills out (UTIL_ID_LEN + 1 bytes) with a new random id from getrandom(2).
 * Returns 0, or -1 if the kernel gave no randomness. Thread-safe. */
int util_id_new(char *out);
/* True if s could be an id we issued: 22 base64url chars whose unused low
 * 4 bits of the last char are zero. */
bool util_id_valid(const char *s);

/* base64url without padding. Encoded length of n bytes. */
size_t util_b64url_len(size_t n);
/* Writes util_b64url_len(n) chars plus NUL into out. */
void util_b64url_encode(const void *in, size_t n, char *out);
/* Decodes into out (at most outcap bytes); returns the length or -1. */
long util_b64url_decode(const char *in, void *out, size_t outcap);

/* List cursors are opaque to clients: a version tag and a position. */
#define UTIL_CURSOR_MAX 64
void util_cursor_encode(int64_t position, char *out /* UTIL_CURSOR_MAX */);
/* Returns 0 and the position, or -1 for anything we did not issue. */
int util_cursor_decode(const char *cursor, int64_t *position);

/* ---- time --------------------------------------------------------------- */

int64_t util_now_ms(void);       /* wall clock, ms since the epoch */
int64_t util_monotonic_ms(void); /* monotonic clock, ms */
int64_t util_monotonic_us(void); /* monotonic clock, us */
/* The wall-clock time ms from now, for pthread_cond_timedwait. */
struct timespec util_deadline_in(int64_t ms);
/* "2026-11-25T01:52:16.123Z" into out (at least 25 bytes). */
void util_rfc3339_ms(int64_t epoch_ms, char *out, size_t n);

/* ---- logging ------------------------------------------------------------ */

/* One line on stderr, prefixed with an RFC 3339 time and the level. Thread-safe. */
void util_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define util_info(...)  util_log("info", __VA_ARGS__)
#define util_warn(...)  util_log("warn", __VA_ARGS__)
#define util_error(...) util_log("error", __VA_ARGS__)
/* url with any password replaced by *** (for logs); a thread-local buffer
 * valid until the next call on the same thread. */
const char *util_redact_url(const char *url);

/* ---- cores -------------------------------------------------------------- */

/* Online CPUs (at least 1), honouring the affinity mask. */
int util_cores(void);

/* ---- thread pool -------------------------------------------------------- */

/* A fixed set of threads taking tasks from a bounded FIFO. Thread-safe. */
struct util_pool;
typedef void (*util_pool_fn)(void *arg);

/* Starts `threads` threads; at most `queue_max` tasks wait beyond the ones
 * running. Returns NULL on failure. */
struct util_pool *util_pool_new(int threads, int queue_max, const char *name);
/* Queues fn(arg). Returns false at once when the queue is full or the pool
 * is stopping: the caller still owns arg. If the pool stops before the task
 * runs, drop(arg) is called instead of fn (drop may be NULL). */
bool util_pool_submit(struct util_pool *pool, util_pool_fn fn, util_pool_fn drop, void *arg);
/* Removes waiting tasks for which stale(arg) is true (called under the
 * pool's lock: it must be quick and take no other lock), handing each to
 * its drop function. Returns how many were removed. */
int util_pool_prune(struct util_pool *pool, bool (*stale)(void *arg));
/* Tasks waiting (not running). */
int util_pool_waiting(struct util_pool *pool);
/* Tasks running now. */
int util_pool_running(struct util_pool *pool);
/* Stops taking tasks; every waiting task is handed to its drop function
 * instead of run; then waits up to deadline_ms for running tasks.
 * Returns the number still running at the deadline. */
int util_pool_stop(struct util_pool *pool, int64_t deadline_ms);
/* Joins the threads (after util_pool_stop returned 0) and frees the pool.
 * With tasks still running the pool is leaked on purpose: the process exits. */
void util_pool_free(struct util_pool *pool);

/* ---- CPU slots ---------------------------------------------------------- */

/* One budget of image-processing slots shared by the request pool and the
 * job workers (DESIGN §6): at most n images are worked on at once. Requests
 * (someone is waiting on the socket) go first: a job takes a slot only when
 * no request waits for one. Thread-safe. */
struct util_slots;
struct util_slots *util_slots_new(int n);
void util_slots_acquire(struct util_slots *s, bool request);
/* A job's acquire: yields to requests, and gives up (false) once *cancel
 * becomes non-zero (checked at least every 100 ms). */
bool util_slots_acquire_job(struct util_slots *s, const volatile int *cancel);
void util_slots_release(struct util_slots *s);
void util_slots_free(struct util_slots *s);
/* Makes every task of the pool hold a slot while it runs (as a request). */
void util_pool_set_slots(struct util_pool *pool, struct util_slots *slots);

/* ---- metrics ------------------------------------------------------------ */

/* A process-wide registry of counters, gauges and histograms, rendered in
 * the Prometheus text format. Every function is thread-safe. Series are
 * created on first use; names and label values are copied. */
void util_metrics_counter_add(const char *name, const char *labels, double v);
void util_metrics_gauge_set(const char *name, const char *labels, double v);
void util_metrics_histogram_observe(const char *name, const char *labels, double v);
/* HELP text and type for a metric family, registered once at start. */
void util_metrics_describe(const char *name, const char *type, const char *help);
/* A callback run at render time to refresh gauges (queue depth, memory). */
void util_metrics_on_render(void (*fn)(void *), void *arg);
/* Renders everything; the caller frees the returned string. */
char *util_metrics_render(size_t *len);

#endif
