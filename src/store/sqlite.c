/*
 * The SQLite backend (store.h), the embedded default.
 *
 * WAL mode with synchronous=FULL (DESIGN §5: a commit that returned is on
 * disk), a busy timeout so concurrent writers wait instead of failing, and
 * a small pool of connections so readers on different threads never
 * serialise on one handle (readers never block the writer in WAL mode).
 * Each connection is used by one thread at a time.
 */
#include <glib.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "store/local.h"
#include "store/store.h"

#define POOL_MAX 16
#define BUSY_MS  10000

struct sqlite_store {
    struct store base;
    char *path;              /* database file */
    pthread_mutex_t lock;    /* guards idle[] */
    sqlite3 *idle[POOL_MAX]; /* connections not in use */
    int nidle;
};

/* Schema versions, applied in order, each in its own transaction. */
static const char *const MIGRATIONS[] = {
    /* 1: images */
    "CREATE TABLE images ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  id TEXT NOT NULL UNIQUE,"
    "  sha256 TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  width INTEGER NOT NULL,"
    "  height INTEGER NOT NULL,"
    "  pages INTEGER NOT NULL,"
    "  bytes INTEGER NOT NULL,"
    "  has_alpha INTEGER NOT NULL,"
    "  orientation INTEGER NOT NULL,"
    "  icc TEXT,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX images_sha256 ON images(sha256);",
    /* 2: variants, keyed by image and canonical plan, deleted with their
     * image (foreign_keys is on for every connection). */
    "CREATE TABLE variants ("
    "  image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,"
    "  plan TEXT NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  width INTEGER NOT NULL,"
    "  height INTEGER NOT NULL,"
    "  bytes INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  last_used INTEGER NOT NULL,"
    "  PRIMARY KEY (image_id, plan));"
    "CREATE INDEX variants_sha256 ON variants(sha256);"
    "CREATE INDEX variants_last_used ON variants(last_used);",
    /* 3: the job queue and idempotency keys (DESIGN §4). */
    "CREATE TABLE jobs ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  id TEXT NOT NULL UNIQUE,"
    "  image_id TEXT NOT NULL,"
    "  spec TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  max_attempts INTEGER NOT NULL,"
    "  lease_owner TEXT,"
    "  lease_expires_at INTEGER,"
    "  run_at INTEGER NOT NULL,"
    "  result_image_id TEXT,"
    "  error_type TEXT,"
    "  error_detail TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  started_at INTEGER,"
    "  finished_at INTEGER);"
    "CREATE INDEX jobs_ready ON jobs(status, run_at, seq);"
    "CREATE INDEX jobs_lease ON jobs(status, lease_expires_at);"
    "CREATE TABLE idempotency_keys ("
    "  key TEXT PRIMARY KEY,"
    "  hash TEXT NOT NULL,"
    "  job_id TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL);"
    "CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);",
};
#define NMIGRATIONS ((int)(sizeof(MIGRATIONS) / sizeof(MIGRATIONS[0])))

static int db_error(sqlite3 *db, int rc, struct util_error *err, const char *what)
{
    int primary = rc & 0xff;
    enum util_err code = UTIL_ERR_INTERNAL;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED || primary == SQLITE_IOERR ||
        primary == SQLITE_CANTOPEN || primary == SQLITE_FULL || primary == SQLITE_READONLY ||
        primary == SQLITE_PROTOCOL || primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
        code = UTIL_ERR_UNAVAILABLE;
    util_error("sqlite: %s: %s (%d)", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), rc);
    return util_error_set(err, code, "database error while %s", what);
}

static sqlite3 *conn_open(struct sqlite_store *s, struct util_error *err)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        db_error(db, rc, err, "opening the database");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, BUSY_MS);
    char *msg = NULL;
    rc = sqlite3_exec(db,
                      "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                      "PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;",
                      NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        util_error("sqlite: setting pragmas: %s", msg ? msg : "?");
        sqlite3_free(msg);
        db_error(db, rc, err, "configuring the database");
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

static sqlite3 *acquire(struct sqlite_store *s, struct util_error *err)
{
    pthread_mutex_lock(&s->lock);
    sqlite3 *db = s->nidle > 0 ? s->idle[--s->nidle] : NULL;
    pthread_mutex_unlock(&s->lock);
    return db ? db : conn_open(s, err);
}

static void release(struct sqlite_store *s, sqlite3 *db)
{
    if (db == NULL)
        return;
    /* A connection left inside a transaction by an error is rolled back. */
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    pthread_mutex_lock(&s->lock);
    if (s->nidle < POOL_MAX) {
        s->idle[s->nidle++] = db;
        db = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (db)
        sqlite3_close(db);
}

static int exec(sqlite3 *db, const char *sql, struct util_error *err, const char *what)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, err, what);
}

/* Prepares sql and binds text/int64 arguments described by fmt ('t', 'i',
 * 'z' for text bound as NULL when it is empty). */
static sqlite3_stmt *prep(sqlite3 *db, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    for (int i = 0; fmt[i]; i++) {
        if (fmt[i] == 't' || fmt[i] == 'z') {
            const char *t = va_arg(ap, const char *);
            if (fmt[i] == 'z' && (t == NULL || *t == '\0'))
                sqlite3_bind_null(st, i + 1);
            else
                sqlite3_bind_text(st, i + 1, t, -1, SQLITE_TRANSIENT);
        } else {
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        }
    }
    va_end(ap);
    return st;
}

/* Runs a prepared statement to completion; returns changes or -1. */
static int run(sqlite3 *db, sqlite3_stmt *st, struct util_error *err, const char *what)
{
    if (st == NULL)
        return db_error(db, sqlite3_errcode(db), err, what);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return db_error(db, rc, err, what);
    return sqlite3_changes(db);
}

static int sq_migrate(struct store *base, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int rc = -1;
    sqlite3_stmt *st = NULL;
    if (exec(db,
             "CREATE TABLE IF NOT EXISTS schema_migrations ("
             " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
             err, "creating schema_migrations") != 0)
        goto out;
    for (int v = 1; v <= NMIGRATIONS; v++) {
        if (exec(db, "BEGIN IMMEDIATE", err, "starting a migration") != 0)
            goto out;
        int have = 0;
        if (sqlite3_prepare_v2(db, "SELECT 1 FROM schema_migrations WHERE version = ?", -1, &st,
                               NULL) != SQLITE_OK)
            goto fail_db;
        sqlite3_bind_int(st, 1, v);
        int step = sqlite3_step(st);
        if (step == SQLITE_ROW)
            have = 1;
        else if (step != SQLITE_DONE)
            goto fail_db;
        sqlite3_finalize(st);
        st = NULL;
        if (!have) {
            if (exec(db, MIGRATIONS[v - 1], err, "applying a migration") != 0)
                goto out;
            char sql[128];
            snprintf(sql, sizeof(sql),
                     "INSERT INTO schema_migrations(version, applied_at) VALUES (%d, %lld)", v,
                     (long long)util_now_ms());
            if (exec(db, sql, err, "recording a migration") != 0)
                goto out;
            util_info("database: schema migrated to version %d", v);
        }
        if (exec(db, "COMMIT", err, "committing a migration") != 0)
            goto out;
    }
    rc = 0;
    goto out;
fail_db:
    db_error(db, sqlite3_errcode(db), err, "reading schema_migrations");
out:
    sqlite3_finalize(st);
    release(s, db);
    return rc;
}

static int sq_schema_check(struct store *base, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", -1,
                                &st, NULL);
    int64_t v = 0;
    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    release(s, db);
    if (v < NMIGRATIONS)
        return store_schema_outdated(err, v, NMIGRATIONS);
    return 0;
}

static int sq_ping(struct store *base, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM schema_migrations", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    int out = (rc == SQLITE_ROW) ? 0 : db_error(db, rc, err, "checking the database");
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

#define IMAGE_COLS                                                                                 \
    "seq, id, sha256, format, width, height, pages, bytes, has_alpha, orientation, icc, "          \
    "created_at"

static void read_image(sqlite3_stmt *st, struct store_image *img)
{
    memset(img, 0, sizeof(*img));
    img->seq = sqlite3_column_int64(st, 0);
    snprintf(img->id, sizeof(img->id), "%s", (const char *)sqlite3_column_text(st, 1));
    snprintf(img->sha256, sizeof(img->sha256), "%s", (const char *)sqlite3_column_text(st, 2));
    snprintf(img->format, sizeof(img->format), "%s", (const char *)sqlite3_column_text(st, 3));
    img->width = sqlite3_column_int64(st, 4);
    img->height = sqlite3_column_int64(st, 5);
    img->pages = sqlite3_column_int64(st, 6);
    img->bytes = sqlite3_column_int64(st, 7);
    img->has_alpha = sqlite3_column_int(st, 8) != 0;
    img->orientation = sqlite3_column_int(st, 9);
    const unsigned char *icc = sqlite3_column_text(st, 10);
    snprintf(img->icc, sizeof(img->icc), "%s", icc ? (const char *)icc : "");
    img->created_at_ms = sqlite3_column_int64(st, 11);
}

/* Inserts an image row on an open connection (the caller's transaction,
 * if any); fills img->seq. */
static int insert_image(sqlite3 *db, struct store_image *img, struct util_error *err,
                        const char *what)
{
    sqlite3_stmt *st = prep(db,
                            "INSERT INTO images (id, sha256, format, width, height, pages,"
                            " bytes, has_alpha, orientation, icc, created_at)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            "tttiiiiiizi", img->id, img->sha256, img->format, img->width,
                            img->height, img->pages, img->bytes, (int64_t)img->has_alpha,
                            (int64_t)img->orientation, img->icc, img->created_at_ms);
    if (run(db, st, err, what) < 0)
        return -1;
    img->seq = sqlite3_last_insert_rowid(db);
    return 0;
}

static int sq_image_insert(struct store *base, struct store_image *img, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    if (img->created_at_ms == 0)
        img->created_at_ms = util_now_ms();
    int out = insert_image(db, img, err, "storing an image");
    release(s, db);
    return out;
}

static int sq_image_get(struct store *base, const char *id, struct store_image *out_img,
                        struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int out = -1;
    int rc =
        sqlite3_prepare_v2(db, "SELECT " IMAGE_COLS " FROM images WHERE id = ?", -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        read_image(st, out_img);
        out = 0;
    } else if (rc == SQLITE_DONE) {
        util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id);
    } else {
        goto fail;
    }
    goto done;
fail:
    db_error(db, rc, err, "reading an image");
done:
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static int sq_image_delete(struct store *base, const char *id, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int n = run(db, prep(db, "DELETE FROM images WHERE id = ?", "t", id), err, "deleting an image");
    release(s, db);
    if (n == 0)
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id);
    return n < 0 ? -1 : 0;
}

static int sq_image_list(struct store *base, int64_t before_seq, int limit,
                         struct store_image *items, int *n, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *n = 0;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int out = -1;
    int rc = sqlite3_prepare_v2(
        db, "SELECT " IMAGE_COLS " FROM images WHERE seq < ? ORDER BY seq DESC LIMIT ?", -1, &st,
        NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, before_seq > 0 ? before_seq : INT64_MAX);
    sqlite3_bind_int(st, 2, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < limit)
        read_image(st, &items[(*n)++]);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        goto fail;
    out = 0;
    goto done;
fail:
    db_error(db, rc, err, "listing images");
done:
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static int sq_blob_referenced(struct store *base, const char *sha256, bool *ref,
                              struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = prep(db,
                            "SELECT 1 FROM images WHERE sha256 = ?1"
                            " UNION ALL SELECT 1 FROM variants WHERE sha256 = ?1 LIMIT 1",
                            "t", sha256);
    int rc = st ? sqlite3_step(st) : sqlite3_errcode(db);
    int out = 0;
    if (rc == SQLITE_ROW || rc == SQLITE_DONE)
        *ref = rc == SQLITE_ROW;
    else
        out = db_error(db, rc, err, "checking blob references");
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static int sq_variant_get(struct store *base, const char *image_id, const char *plan,
                          struct store_variant *v, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int out = -1;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT sha256, format, width, height, bytes, created_at,"
                                " last_used FROM variants WHERE image_id = ? AND plan = ?",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, image_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, plan, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        memset(v, 0, sizeof(*v));
        g_strlcpy(v->image_id, image_id, sizeof(v->image_id));
        g_strlcpy(v->sha256, (const char *)sqlite3_column_text(st, 0), sizeof(v->sha256));
        g_strlcpy(v->format, (const char *)sqlite3_column_text(st, 1), sizeof(v->format));
        v->width = sqlite3_column_int64(st, 2);
        v->height = sqlite3_column_int64(st, 3);
        v->bytes = sqlite3_column_int64(st, 4);
        v->created_at_ms = sqlite3_column_int64(st, 5);
        v->last_used_ms = sqlite3_column_int64(st, 6);
        out = 0;
    } else if (rc == SQLITE_DONE) {
        util_error_set(err, UTIL_ERR_NOT_FOUND, "variant not cached");
    } else {
        goto fail;
    }
    goto done;
fail:
    db_error(db, rc, err, "reading a variant");
done:
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static int sq_variant_put(struct store *base, const struct store_variant *v, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int n = run(db,
                prep(db,
                     "INSERT OR REPLACE INTO variants (image_id, plan, sha256, format,"
                     " width, height, bytes, created_at, last_used)"
                     " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8"
                     " WHERE EXISTS (SELECT 1 FROM images WHERE id = ?1)",
                     "ttttiiii", v->image_id, v->plan, v->sha256, v->format, v->width, v->height,
                     v->bytes, v->created_at_ms ? v->created_at_ms : util_now_ms()),
                err, "storing a variant");
    release(s, db);
    if (n == 0)
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "the image was deleted");
    return n < 0 ? -1 : 0;
}

static int sq_variant_trim(struct store *base, int64_t max_bytes, int *evicted,
                           struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *evicted = 0;
    GHashTable *pending = store_local_take_touches(s->base.local);

    sqlite3 *db = acquire(s, err);
    int out = -1;
    sqlite3_stmt *st = NULL;
    if (db == NULL)
        goto done;
    if (g_hash_table_size(pending) > 0) {
        if (exec(db, "BEGIN IMMEDIATE", err, "flushing variant use") != 0)
            goto done;
        int rc = sqlite3_prepare_v2(db,
                                    "UPDATE variants SET last_used = max(last_used, ?3)"
                                    " WHERE image_id = ?1 AND plan = ?2",
                                    -1, &st, NULL);
        if (rc != SQLITE_OK) {
            db_error(db, rc, err, "flushing variant use");
            goto done;
        }
        GHashTableIter it;
        gpointer k, val;
        g_hash_table_iter_init(&it, pending);
        while (g_hash_table_iter_next(&it, &k, &val)) {
            char *key = k;
            char *nl = strchr(key, '\n');
            if (nl == NULL)
                continue;
            sqlite3_reset(st);
            sqlite3_bind_text(st, 1, key, (int)(nl - key), SQLITE_STATIC);
            sqlite3_bind_text(st, 2, nl + 1, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, (int64_t)(intptr_t)val * 1000);
            rc = sqlite3_step(st);
            if (rc != SQLITE_DONE) {
                db_error(db, rc, err, "flushing variant use");
                goto done;
            }
        }
        sqlite3_finalize(st);
        st = NULL;
        if (exec(db, "COMMIT", err, "flushing variant use") != 0)
            goto done;
    }
    if (max_bytes < 0) {
        out = 0;
        goto done;
    }
    /* Evict the least recently used rows past the budget, in one statement:
     * a running sum over the rows, newest first, marks where it is passed. */
    int rc = sqlite3_prepare_v2(db,
                                "DELETE FROM variants WHERE rowid IN ("
                                " SELECT rowid FROM (SELECT rowid, sum(bytes) OVER"
                                "  (ORDER BY last_used DESC, rowid DESC) AS running FROM variants)"
                                " WHERE running > ?)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        db_error(db, rc, err, "trimming the variant cache");
        goto done;
    }
    sqlite3_bind_int64(st, 1, max_bytes);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        db_error(db, rc, err, "trimming the variant cache");
        goto done;
    }
    *evicted = sqlite3_changes(db);
    out = 0;
done:
    sqlite3_finalize(st);
    release(s, db);
    g_hash_table_destroy(pending);
    return out;
}

/* ---- the job queue ------------------------------------------------------ */

static const char *const STATUS_NAMES[] = {"queued", "running", "succeeded", "failed", "canceled"};

const char *store_job_status_name(enum store_job_status st)
{
    if ((int)st >= 0 && (size_t)st < sizeof(STATUS_NAMES) / sizeof(STATUS_NAMES[0]))
        return STATUS_NAMES[st];
    return "unknown";
}

int store_job_status_from_name(const char *name)
{
    for (size_t i = 0; name && i < sizeof(STATUS_NAMES) / sizeof(STATUS_NAMES[0]); i++)
        if (strcmp(STATUS_NAMES[i], name) == 0)
            return (int)i;
    return -1;
}

void store_job_clear(struct store_job *job)
{
    free(job->spec);
    memset(job, 0, sizeof(*job));
}

#define JOB_COLS                                                                                   \
    "seq, id, image_id, spec, status, attempts, max_attempts, lease_owner, lease_expires_at,"      \
    " run_at, result_image_id, error_type, error_detail, created_at, started_at, finished_at"

static void col_text(sqlite3_stmt *st, int i, char *out, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    g_strlcpy(out, t ? (const char *)t : "", n);
}

static void read_job(sqlite3_stmt *st, struct store_job *j)
{
    memset(j, 0, sizeof(*j));
    j->seq = sqlite3_column_int64(st, 0);
    col_text(st, 1, j->id, sizeof(j->id));
    col_text(st, 2, j->image_id, sizeof(j->image_id));
    const unsigned char *spec = sqlite3_column_text(st, 3);
    j->spec = strdup(spec ? (const char *)spec : "{}");
    char status[16];
    col_text(st, 4, status, sizeof(status));
    int k = store_job_status_from_name(status);
    j->status = k < 0 ? STORE_JOB_FAILED : (enum store_job_status)k;
    j->attempts = sqlite3_column_int(st, 5);
    j->max_attempts = sqlite3_column_int(st, 6);
    col_text(st, 7, j->lease_owner, sizeof(j->lease_owner));
    j->lease_expires_at_ms = sqlite3_column_int64(st, 8);
    j->run_at_ms = sqlite3_column_int64(st, 9);
    col_text(st, 10, j->result_image_id, sizeof(j->result_image_id));
    col_text(st, 11, j->error_type, sizeof(j->error_type));
    col_text(st, 12, j->error_detail, sizeof(j->error_detail));
    j->created_at_ms = sqlite3_column_int64(st, 13);
    j->started_at_ms = sqlite3_column_int64(st, 14);
    j->finished_at_ms = sqlite3_column_int64(st, 15);
}

/* Reads one job by id on an open connection: 0, 1 when absent, -1 on error. */
static int job_read(sqlite3 *db, const char *id, struct store_job *out, struct util_error *err)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT " JOB_COLS " FROM jobs WHERE id = ?", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        db_error(db, rc, err, "reading a job");
        return -1;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    int out_rc;
    if (rc == SQLITE_ROW) {
        read_job(st, out);
        out_rc = 0;
    } else if (rc == SQLITE_DONE) {
        out_rc = 1;
    } else {
        db_error(db, rc, err, "reading a job");
        out_rc = -1;
    }
    sqlite3_finalize(st);
    return out_rc;
}

static int sq_job_enqueue(struct store *base, struct store_job *job, const char *idem_key,
                          const char *idem_hash, int64_t jobs_max, bool *existing,
                          struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *existing = false;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int out = -1;
    sqlite3_stmt *st = NULL;
    if (exec(db, "BEGIN IMMEDIATE", err, "queueing a job") != 0)
        goto done;
    if (idem_key && idem_key[0]) {
        st = prep(db, "SELECT hash, job_id FROM idempotency_keys WHERE key = ?", "t", idem_key);
        int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
        if (rc == SQLITE_ROW) {
            bool same = strcmp((const char *)sqlite3_column_text(st, 0), idem_hash) == 0;
            char job_id[UTIL_ID_LEN + 1];
            col_text(st, 1, job_id, sizeof(job_id));
            sqlite3_finalize(st);
            st = NULL;
            if (!same) {
                util_error_set(err, UTIL_ERR_CONFLICT,
                               "this Idempotency-Key was used with a different request");
                goto done;
            }
            store_job_clear(job);
            int r = job_read(db, job_id, job, err);
            if (r == 0) {
                *existing = true;
                out = 0;
            } else if (r == 1) {
                util_error_set(err, UTIL_ERR_CONFLICT,
                               "this Idempotency-Key names a job that no longer exists");
            }
            goto done;
        }
        if (rc != SQLITE_DONE) {
            db_error(db, rc, err, "checking an idempotency key");
            goto done;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    st = prep(db, "SELECT 1 FROM images WHERE id = ?", "t", job->image_id);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    sqlite3_finalize(st);
    st = NULL;
    if (rc == SQLITE_DONE) {
        util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", job->image_id);
        goto done;
    }
    if (rc != SQLITE_ROW) {
        db_error(db, rc, err, "queueing a job");
        goto done;
    }
    st = prep(db, "SELECT count(*) FROM jobs WHERE status = 'queued'", "");
    rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    int64_t queued = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_finalize(st);
    st = NULL;
    if (queued < 0) {
        db_error(db, rc, err, "counting queued jobs");
        goto done;
    }
    if (queued >= jobs_max) {
        util_error_set(err, UTIL_ERR_OVERLOADED, "the job queue is full (%lld queued); retry later",
                       (long long)queued);
        goto done;
    }
    int64_t now = util_now_ms();
    job->status = STORE_JOB_QUEUED;
    job->run_at_ms = now;
    job->created_at_ms = now;
    if (run(db,
            prep(db,
                 "INSERT INTO jobs (id, image_id, spec, status, max_attempts, run_at,"
                 " created_at) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                 "tttiii", job->id, job->image_id, job->spec, (int64_t)job->max_attempts, now, now),
            err, "queueing a job") < 0)
        goto done;
    job->seq = sqlite3_last_insert_rowid(db);
    if (idem_key && idem_key[0] &&
        run(db,
            prep(db,
                 "INSERT INTO idempotency_keys (key, hash, job_id, created_at)"
                 " VALUES (?, ?, ?, ?)",
                 "ttti", idem_key, idem_hash, job->id, now),
            err, "recording an idempotency key") < 0)
        goto done;
    if (exec(db, "COMMIT", err, "queueing a job") != 0)
        goto done;
    out = 0;
done:
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static int sq_job_get(struct store *base, const char *id, struct store_job *out,
                      struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int r = job_read(db, id, out, err);
    release(s, db);
    if (r == 1)
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "no job has the id '%.40s'", id);
    return r;
}

static int sq_job_list(struct store *base, int status, int64_t before_seq, int limit,
                       struct store_job *items, int *n, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *n = 0;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st;
    if (status >= 0)
        st = prep(db,
                  "SELECT " JOB_COLS " FROM jobs WHERE seq < ? AND status = ?"
                  " ORDER BY seq DESC LIMIT ?",
                  "iti", before_seq > 0 ? before_seq : INT64_MAX,
                  store_job_status_name((enum store_job_status)status), (int64_t)limit);
    else
        st = prep(db, "SELECT " JOB_COLS " FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", "ii",
                  before_seq > 0 ? before_seq : INT64_MAX, (int64_t)limit);
    int rc = SQLITE_ERROR;
    if (st) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW && *n < limit)
            read_job(st, &items[(*n)++]);
    }
    int out = 0;
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        for (int i = 0; i < *n; i++)
            store_job_clear(&items[i]);
        *n = 0;
        out = db_error(db, rc, err, "listing jobs");
    }
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static int sq_job_claim(struct store *base, const char *owner, int64_t lease_ms,
                        struct store_job *out, bool *got, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *got = false;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int rc_out = -1;
    sqlite3_stmt *st = NULL;
    /* BEGIN IMMEDIATE takes the write lock first, so two claimers are
     * serialised and never see the same queued row (DESIGN §4). */
    if (exec(db, "BEGIN IMMEDIATE", err, "claiming a job") != 0)
        goto done;
    int64_t now = util_now_ms();
    st = prep(db,
              "SELECT id FROM jobs WHERE status = 'queued' AND run_at <= ?"
              " ORDER BY run_at, seq LIMIT 1",
              "i", now);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    if (rc == SQLITE_DONE) {
        rc_out = 0;
        goto done;
    }
    if (rc != SQLITE_ROW) {
        db_error(db, rc, err, "claiming a job");
        goto done;
    }
    char id[UTIL_ID_LEN + 1];
    col_text(st, 0, id, sizeof(id));
    sqlite3_finalize(st);
    st = NULL;
    if (run(db,
            prep(db,
                 "UPDATE jobs SET status = 'running', attempts = attempts + 1,"
                 " lease_owner = ?, lease_expires_at = ?,"
                 " started_at = coalesce(started_at, ?) WHERE id = ?",
                 "tiit", owner, now + lease_ms, now, id),
            err, "claiming a job") < 0)
        goto done;
    if (job_read(db, id, out, err) != 0)
        goto done;
    if (exec(db, "COMMIT", err, "claiming a job") != 0) {
        store_job_clear(out);
        goto done;
    }
    *got = true;
    rc_out = 0;
done:
    sqlite3_finalize(st);
    release(s, db);
    return rc_out;
}

static int sq_job_heartbeat(struct store *base, const char *id, const char *owner, int attempt,
                            int64_t lease_ms, bool *held, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *held = false;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int n = run(db,
                prep(db,
                     "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND status = 'running'"
                     " AND lease_owner = ? AND attempts = ?",
                     "itti", util_now_ms() + lease_ms, id, owner, (int64_t)attempt),
                err, "renewing a lease");
    release(s, db);
    if (n < 0)
        return -1;
    *held = n == 1;
    return 0;
}

#define FENCE " AND status = 'running' AND lease_owner = ? AND attempts = ?"

static int sq_job_complete(struct store *base, const char *id, const char *owner, int attempt,
                           struct store_image *result, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int out = -1;
    if (exec(db, "BEGIN IMMEDIATE", err, "completing a job") != 0)
        goto done;
    int64_t now = util_now_ms();
    int n = run(db,
                prep(db,
                     "UPDATE jobs SET status = 'succeeded', result_image_id = ?,"
                     " finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,"
                     " error_type = NULL, error_detail = NULL WHERE id = ?" FENCE,
                     "titti", result->id, now, id, owner, (int64_t)attempt),
                err, "completing a job");
    if (n < 0)
        goto done;
    if (n == 0) {
        store_lease_lost(err, id);
        goto done;
    }
    result->created_at_ms = now;
    if (insert_image(db, result, err, "storing a job's result") != 0)
        goto done;
    if (exec(db, "COMMIT", err, "completing a job") != 0)
        goto done;
    out = 0;
done:
    release(s, db);
    if (out == 0)
        store_local_done(s->base.local, id);
    return out;
}

static int sq_job_fail(struct store *base, const char *id, const char *owner, int attempt,
                       bool retry, int64_t backoff_ms, const char *type, const char *detail,
                       struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int64_t now = util_now_ms();
    /* One statement decides retry or failure from the row itself. */
    int n = run(db,
                prep(db,
                     "UPDATE jobs SET"
                     " status = CASE WHEN ?1 AND attempts < max_attempts"
                     "   THEN 'queued' ELSE 'failed' END,"
                     " run_at = CASE WHEN ?1 AND attempts < max_attempts"
                     "   THEN ?2 + ?3 ELSE run_at END,"
                     " finished_at = CASE WHEN ?1 AND attempts < max_attempts"
                     "   THEN NULL ELSE ?2 END,"
                     " lease_owner = NULL, lease_expires_at = NULL,"
                     " error_type = ?4, error_detail = ?5"
                     " WHERE id = ?6 AND status = 'running' AND lease_owner = ?7"
                     " AND attempts = ?8",
                     "iiitttti", (int64_t)retry, now, backoff_ms, type, detail, id, owner,
                     (int64_t)attempt),
                err, "recording a job failure");
    int out = -1;
    bool final = false;
    if (n == 0) {
        store_lease_lost(err, id);
    } else if (n > 0) {
        struct store_job j;
        if (job_read(db, id, &j, err) == 0) {
            final = j.status == STORE_JOB_FAILED;
            store_job_clear(&j);
        }
        out = 0;
    }
    release(s, db);
    if (out == 0 && final)
        store_local_done(s->base.local, id);
    return out;
}

static int sq_job_release(struct store *base, const char *id, const char *owner, int attempt,
                          struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int n = run(db,
                prep(db,
                     "UPDATE jobs SET status = 'queued', run_at = ?, attempts = attempts - 1,"
                     " lease_owner = NULL, lease_expires_at = NULL"
                     " WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?",
                     "itti", util_now_ms(), id, owner, (int64_t)attempt),
                err, "releasing a job");
    release(s, db);
    if (n < 0)
        return -1;
    if (n == 0)
        return store_lease_lost(err, id);
    return 0;
}

static int sq_job_cancel(struct store *base, const char *id, struct store_job *out,
                         struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int rc = -1;
    int n = run(db,
                prep(db,
                     "UPDATE jobs SET status = 'canceled', finished_at = ?,"
                     " lease_owner = NULL, lease_expires_at = NULL"
                     " WHERE id = ? AND status IN ('queued', 'running')",
                     "it", util_now_ms(), id),
                err, "canceling a job");
    if (n >= 0) {
        int r = job_read(db, id, out, err);
        if (r == 1)
            util_error_set(err, UTIL_ERR_NOT_FOUND, "no job has the id '%.40s'", id);
        else if (r == 0 && n == 0)
            store_job_cancel_refused(out, err);
        else if (r == 0)
            rc = 0;
    }
    release(s, db);
    if (rc == 0)
        store_local_done(s->base.local, id);
    return rc;
}

static int sq_job_rescue(struct store *base, int *requeued, int *failed, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *requeued = *failed = 0;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int out = -1;
    GPtrArray *finals = g_ptr_array_new_with_free_func(g_free);
    if (exec(db, "BEGIN IMMEDIATE", err, "rescuing expired leases") != 0)
        goto done;
    int64_t now = util_now_ms();
    sqlite3_stmt *st = prep(db,
                            "SELECT id FROM jobs WHERE status = 'running'"
                            " AND lease_expires_at < ? AND attempts >= max_attempts",
                            "i", now);
    while (st && sqlite3_step(st) == SQLITE_ROW)
        g_ptr_array_add(finals, g_strdup((const char *)sqlite3_column_text(st, 0)));
    sqlite3_finalize(st);
    int f = run(db,
                prep(db,
                     "UPDATE jobs SET status = 'failed', finished_at = ?1,"
                     " lease_owner = NULL, lease_expires_at = NULL,"
                     " error_type = '/problems/internal',"
                     " error_detail = 'the worker stopped answering on its last attempt'"
                     " WHERE status = 'running' AND lease_expires_at < ?1"
                     " AND attempts >= max_attempts",
                     "i", now),
                err, "rescuing expired leases");
    if (f < 0)
        goto done;
    int q = run(db,
                prep(db,
                     "UPDATE jobs SET status = 'queued', run_at = ?1,"
                     " lease_owner = NULL, lease_expires_at = NULL,"
                     " error_type = '/problems/internal',"
                     " error_detail = 'the worker stopped answering; retried'"
                     " WHERE status = 'running' AND lease_expires_at < ?1",
                     "i", now),
                err, "rescuing expired leases");
    if (q < 0)
        goto done;
    if (exec(db, "COMMIT", err, "rescuing expired leases") != 0)
        goto done;
    *requeued = q;
    *failed = f;
    out = 0;
done:
    release(s, db);
    if (out == 0) {
        for (guint i = 0; i < finals->len; i++)
            store_local_done(s->base.local, g_ptr_array_index(finals, i));
    }
    g_ptr_array_free(finals, TRUE);
    return out;
}

static int sq_idempotency_expire(struct store *base, int64_t older_than_ms, int *n,
                                 struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *n = 0;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    int k =
        run(db, prep(db, "DELETE FROM idempotency_keys WHERE created_at < ?", "i", older_than_ms),
            err, "expiring idempotency keys");
    release(s, db);
    if (k < 0)
        return -1;
    *n = k;
    return 0;
}

static int64_t sq_job_next_run_at(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    struct util_error err = {0};
    sqlite3 *db = acquire(s, &err);
    if (db == NULL)
        return 0;
    sqlite3_stmt *st = prep(db, "SELECT min(run_at) FROM jobs WHERE status = 'queued'", "");
    int64_t v = 0;
    if (st && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    release(s, db);
    return v;
}

static int sq_job_counts(struct store *base, int64_t counts[5], struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    for (int i = 0; i < 5; i++)
        counts[i] = 0;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = prep(db, "SELECT status, count(*) FROM jobs GROUP BY status", "");
    int rc = SQLITE_ERROR;
    while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int k = store_job_status_from_name((const char *)sqlite3_column_text(st, 0));
        if (k >= 0)
            counts[k] = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    int out = rc == SQLITE_DONE ? 0 : db_error(db, rc, err, "counting jobs");
    release(s, db);
    return out;
}

static void sq_close(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    store_local_free(s->base.local);
    for (int i = 0; i < s->nidle; i++)
        sqlite3_close(s->idle[i]);
    pthread_mutex_destroy(&s->lock);
    free(s->path);
    free(s);
}

static const struct store_ops SQLITE_OPS = {
    .name = "sqlite",
    .close = sq_close,
    .migrate = sq_migrate,
    .schema_check = sq_schema_check,
    .ping = sq_ping,
    .image_insert = sq_image_insert,
    .image_get = sq_image_get,
    .image_delete = sq_image_delete,
    .image_list = sq_image_list,
    .blob_referenced = sq_blob_referenced,
    .variant_get = sq_variant_get,
    .variant_put = sq_variant_put,
    .variant_trim = sq_variant_trim,
    .job_enqueue = sq_job_enqueue,
    .job_get = sq_job_get,
    .job_list = sq_job_list,
    .job_claim = sq_job_claim,
    .job_heartbeat = sq_job_heartbeat,
    .job_complete = sq_job_complete,
    .job_fail = sq_job_fail,
    .job_release = sq_job_release,
    .job_cancel = sq_job_cancel,
    .job_rescue = sq_job_rescue,
    .idempotency_expire = sq_idempotency_expire,
    .job_next_run_at = sq_job_next_run_at,
    .job_counts = sq_job_counts,
};

struct store *store_sqlite_open(const char *path, struct util_error *err)
{
    struct sqlite_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    s->base.ops = &SQLITE_OPS;
    s->path = strdup(path);
    s->base.local = store_local_new();
    pthread_mutex_init(&s->lock, NULL);
    if (s->path == NULL || s->base.local == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        sq_close(&s->base);
        return NULL;
    }
    /* Open one connection now so a bad path fails at start, not later. */
    sqlite3 *db = conn_open(s, err);
    if (db == NULL) {
        sq_close(&s->base);
        return NULL;
    }
    release(s, db);
    return &s->base;
}
