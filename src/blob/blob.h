/*
 * blob: content-addressed byte storage behind one interface. The backend is
 * chosen once from the --blobs setting: "fs:PATH" (fs.c) or "db" (db.c).
 * Keys are lower-case sha256 hex of the content. Every function is
 * thread-safe and safe across processes sharing the same storage.
 */
#ifndef BLOB_BLOB_H
#define BLOB_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

/* Bytes of one blob: either an open file (fd >= 0) or memory (mem, malloc'd
 * or mapped). Release with blob_data_free. */
struct blob_data {
    int fd;      /* -1 when the bytes are in mem */
    void *mem;   /* NULL when the bytes are in fd */
    size_t size; /* length in bytes */
    bool mapped; /* mem is a read-only mapping of the file */
};

/* One blob seen by the sweeper. */
typedef void (*blob_visit_fn)(const char *sha256, int64_t mtime_ms, void *arg);
/* Asks whether a row refers to the blob: 0 and *referenced, or -1. */
typedef int (*blob_referenced_fn)(const char *sha256, bool *referenced, void *arg);

struct blob_store;

struct blob_ops {
    const char *name;
    void (*close)(struct blob_store *b);
    int (*put)(struct blob_store *b, const char *sha256, const void *data, size_t size,
               struct util_error *err);
    int (*get)(struct blob_store *b, const char *sha256, struct blob_data *out,
               struct util_error *err);
    int (*exists)(struct blob_store *b, const char *sha256, bool *out, struct util_error *err);
    int (*remove_if_unreferenced)(struct blob_store *b, const char *sha256, int64_t older_than_ms,
                                  blob_referenced_fn check, void *arg, bool *removed,
                                  struct util_error *err);
    int (*walk)(struct blob_store *b, blob_visit_fn fn, void *arg, struct util_error *err);
};

struct blob_store {
    const struct blob_ops *ops; /* the backend */
};

struct pg_pool;

/* Opens the storage named by spec: "fs:PATH" (creates the folder if
 * needed) or "db" (inside PostgreSQL, through pool: the store's connection
 * pool, store_postgres_pool; NULL for another database). NULL on error
 * (err says why). */
struct blob_store *blob_open(const char *spec, struct pg_pool *pool, struct util_error *err);
void blob_close(struct blob_store *b);

/* Stores data under sha256 durably: when it returns 0 the bytes survive a
 * crash (temp file, fsync, rename, directory fsync). If the blob is already
 * there its modification time is refreshed instead (so the sweeper's grace
 * period starts again) and nothing is written. */
int blob_put(struct blob_store *b, const char *sha256, const void *data, size_t size,
             struct util_error *err);
/* Reads a blob. UTIL_ERR_NOT_FOUND when it is missing. */
int blob_get(struct blob_store *b, const char *sha256, struct blob_data *out,
             struct util_error *err);
/* Reads a blob fully into memory (out->fd is -1): mapped when it is a
 * file, read-only. */
int blob_get_mem(struct blob_store *b, const char *sha256, struct blob_data *out,
                 struct util_error *err);
void blob_data_free(struct blob_data *d);
int blob_exists(struct blob_store *b, const char *sha256, bool *out, struct util_error *err);
/* Removes the blob if its modification time is older than older_than_ms
 * (wall clock, ms since the epoch) and check() says no row refers to it,
 * asked AFTER the blob was moved out of reach: an upload that commits a row
 * for it meanwhile either finds it missing (and writes it again) or is seen
 * by check() (and the blob is put back). Missing or young blobs are left
 * alone and are not errors. Only the sweeper calls this. */
int blob_remove_if_unreferenced(struct blob_store *b, const char *sha256, int64_t older_than_ms,
                                blob_referenced_fn check, void *arg, bool *removed,
                                struct util_error *err);
/* Calls fn for every blob (sweeper). */
int blob_walk(struct blob_store *b, blob_visit_fn fn, void *arg, struct util_error *err);

/* Backends. */
struct blob_store *blob_fs_open(const char *path, struct util_error *err);
struct blob_store *blob_db_open(struct pg_pool *pool, struct util_error *err);

/* sha256 of data as lower-case hex into out (65 bytes). GLib's GChecksum. */
void blob_sha256_hex(const void *data, size_t size, char *out);

#endif
