/*
 * Blobs kept inside PostgreSQL (--blobs db): one row per sha256 in the
 * `blobs` table (store/postgres.c creates it), sent and read as binary
 * bytea. Durable when the INSERT commits (synchronous_commit, PostgreSQL's
 * default), so every `api` and `worker` machine sees the same bytes with no
 * shared file system. It uses the store's connection pool (store/pg.h), so
 * a process keeps one budget of connections.
 *
 * Cost: a read holds the bytes twice for a moment (libpq's result, then
 * our copy), and every byte crosses the network; a shared fs: folder is
 * cheaper for large or hot images.
 */
#include <stdlib.h>
#include <string.h>

#include "blob/blob.h"
#include "store/pg.h"

struct db_store {
    struct blob_store base;
    struct pg_pool *pool; /* the store's; not ours to free */
};

#define D(b) ((struct db_store *)(b))

static void db_close(struct blob_store *b)
{
    free(b);
}

/* PostgreSQL's bytea holds at most 1 GiB. */
#define DB_BLOB_MAX ((size_t)1 << 30)

static int db_put(struct blob_store *b, const char *sha256, const void *data, size_t size,
                  struct util_error *err)
{
    if (size >= DB_BLOB_MAX)
        return util_error_set(err, UTIL_ERR_TOO_LARGE,
                              "%zu bytes: --blobs db holds blobs under 1 GiB", size);
    PGconn *c = pg_acquire(D(b)->pool, err);
    if (c == NULL)
        return -1;
    /* Present already: refresh its mtime, so the sweeper's grace starts
     * again (DESIGN §5), and send no bytes. */
    int n = pg_exec(c, err, "storing a blob",
                    "UPDATE blobs SET mtime = " PG_NOW_MS " WHERE sha256 = $1", "t", sha256);
    if (n == 0)
        n = pg_exec(c, err, "storing a blob",
                    "INSERT INTO blobs (sha256, size, mtime, data) VALUES ($1, $2, " PG_NOW_MS
                    ", $3) ON CONFLICT (sha256) DO UPDATE SET mtime = excluded.mtime",
                    "tib", sha256, (int64_t)size, data, size);
    pg_release(D(b)->pool, c);
    return n < 0 ? -1 : 0;
}

static int db_get(struct blob_store *b, const char *sha256, struct blob_data *out,
                  struct util_error *err)
{
    memset(out, 0, sizeof(*out));
    out->fd = -1;
    PGconn *c = pg_acquire(D(b)->pool, err);
    if (c == NULL)
        return -1;
    PGresult *r = pg_query(c, err, "reading a blob", true,
                           "SELECT data FROM blobs WHERE sha256 = $1", "t", sha256);
    pg_release(D(b)->pool, c);
    if (r == NULL)
        return -1;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "blob %s is missing", sha256);
    }
    size_t len = (size_t)PQgetlength(r, 0, 0);
    char *mem = malloc(len ? len : 1);
    if (mem == NULL) {
        PQclear(r);
        return util_error_set(err, UTIL_ERR_INTERNAL, "out of memory reading a blob");
    }
    memcpy(mem, PQgetvalue(r, 0, 0), len);
    PQclear(r);
    out->mem = mem;
    out->size = len;
    return 0;
}

static int db_exists(struct blob_store *b, const char *sha256, bool *exists, struct util_error *err)
{
    PGconn *c = pg_acquire(D(b)->pool, err);
    if (c == NULL)
        return -1;
    int n =
        pg_exec(c, err, "looking for a blob", "SELECT 1 FROM blobs WHERE sha256 = $1", "t", sha256);
    pg_release(D(b)->pool, c);
    if (n < 0)
        return -1;
    *exists = n > 0;
    return 0;
}

/* The row is deleted in a transaction that stays open while check() asks
 * (on another connection) whether a row refers to the blob: an upload of
 * the same bytes meanwhile either refreshed the mtime first (the DELETE no
 * longer matches), or waits on our row lock and, after we commit, inserts
 * the blob again; a reference committed before check() keeps the blob
 * (ROLLBACK). */
static int db_remove_if_unreferenced(struct blob_store *b, const char *sha256,
                                     int64_t older_than_ms, blob_referenced_fn check, void *arg,
                                     bool *removed, struct util_error *err)
{
    PGconn *c = pg_acquire(D(b)->pool, err);
    if (c == NULL)
        return -1;
    int rc = -1;
    if (pg_exec(c, err, "collecting a blob", "BEGIN", "") < 0)
        goto out;
    /* older_than_ms is on our clock: compared as an age on the database's. */
    int n = pg_exec(c, err, "collecting a blob",
                    "DELETE FROM blobs WHERE sha256 = $1 AND mtime < " PG_NOW_MS " - ($3 - $2)",
                    "tii", sha256, older_than_ms, util_now_ms());
    if (n < 0)
        goto out;
    if (n == 0) {
        rc = 0;
        goto out;
    }
    bool referenced = true;
    if (check(sha256, &referenced, arg) != 0) {
        util_error_set(err, UTIL_ERR_UNAVAILABLE, "could not check references to blob %s", sha256);
        goto out;
    }
    if (referenced) {
        rc = 0;
        goto out;
    }
    if (pg_exec(c, err, "collecting a blob", "COMMIT", "") < 0)
        goto out;
    *removed = true;
    rc = 0;
out:
    pg_release(D(b)->pool, c); /* rolls back what was not committed */
    return rc;
}

static int db_walk(struct blob_store *b, blob_visit_fn fn, void *arg, struct util_error *err)
{
    /* In pages by key, so a large table is never held in memory at once. */
    char after[65] = "";
    for (;;) {
        PGconn *c = pg_acquire(D(b)->pool, err);
        if (c == NULL)
            return -1;
        /* mtime is on the database's clock: reported on ours (the sweeper
         * compares it with its own clock). */
        PGresult *r = pg_query(c, err, "listing blobs", false,
                               "SELECT sha256, mtime - " PG_NOW_MS " + $2 FROM blobs"
                               " WHERE sha256 > $1 ORDER BY sha256 LIMIT 1000",
                               "ti", after, util_now_ms());
        pg_release(D(b)->pool, c);
        if (r == NULL)
            return -1;
        int rows = PQntuples(r);
        for (int i = 0; i < rows; i++)
            fn(PQgetvalue(r, i, 0), pg_int(r, i, 1), arg);
        if (rows > 0)
            pg_text(r, rows - 1, 0, after, sizeof(after));
        PQclear(r);
        if (rows < 1000)
            return 0;
    }
}

static const struct blob_ops DB_OPS = {
    .name = "db",
    .close = db_close,
    .put = db_put,
    .get = db_get,
    .exists = db_exists,
    .remove_if_unreferenced = db_remove_if_unreferenced,
    .walk = db_walk,
};

struct blob_store *blob_db_open(struct pg_pool *pool, struct util_error *err)
{
    if (pool == NULL) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                       "--blobs db needs a postgres:// --database");
        return NULL;
    }
    struct db_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    s->base.ops = &DB_OPS;
    s->pool = pool;
    return &s->base;
}
