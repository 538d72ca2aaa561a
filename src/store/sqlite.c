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
#include <string.h>

#include "store/store.h"

#define POOL_MAX    16
#define BUSY_MS     10000

struct sqlite_store {
    struct store base;
    char *path;                  /* database file */
    pthread_mutex_t lock;        /* guards idle[] and touched */
    sqlite3 *idle[POOL_MAX];     /* connections not in use */
    int nidle;
    GHashTable *touched;         /* "image_id\nplan" -> last use (ms), not yet written */
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
    int rc = sqlite3_open_v2(s->path, &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
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

#define IMAGE_COLS                                                                             \
    "seq, id, sha256, format, width, height, pages, bytes, has_alpha, orientation, icc, "     \
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

static int sq_image_insert(struct store *base, struct store_image *img, struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int out = -1;
    if (img->created_at_ms == 0)
        img->created_at_ms = util_now_ms();
    int rc = sqlite3_prepare_v2(db,
                                "INSERT INTO images (id, sha256, format, width, height, pages,"
                                " bytes, has_alpha, orientation, icc, created_at)"
                                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, img->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, img->sha256, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, img->format, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, img->width);
    sqlite3_bind_int64(st, 5, img->height);
    sqlite3_bind_int64(st, 6, img->pages);
    sqlite3_bind_int64(st, 7, img->bytes);
    sqlite3_bind_int(st, 8, img->has_alpha);
    sqlite3_bind_int(st, 9, img->orientation);
    if (img->icc[0])
        sqlite3_bind_text(st, 10, img->icc, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 10);
    sqlite3_bind_int64(st, 11, img->created_at_ms);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        goto fail;
    img->seq = sqlite3_last_insert_rowid(db);
    out = 0;
    goto done;
fail:
    db_error(db, rc, err, "storing an image");
done:
    sqlite3_finalize(st);
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
    int rc = sqlite3_prepare_v2(db, "SELECT " IMAGE_COLS " FROM images WHERE id = ?", -1, &st,
                                NULL);
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
    sqlite3_stmt *st = NULL;
    int out = -1;
    int rc = sqlite3_prepare_v2(db, "DELETE FROM images WHERE id = ?", -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        goto fail;
    if (sqlite3_changes(db) == 0)
        util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id);
    else
        out = 0;
    goto done;
fail:
    db_error(db, rc, err, "deleting an image");
done:
    sqlite3_finalize(st);
    release(s, db);
    return out;
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
    int rc = sqlite3_prepare_v2(db,
                                "SELECT " IMAGE_COLS
                                " FROM images WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                                -1, &st, NULL);
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
    sqlite3_stmt *st = NULL;
    int out = -1;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT 1 FROM images WHERE sha256 = ?1"
                                " UNION ALL SELECT 1 FROM variants WHERE sha256 = ?1 LIMIT 1",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, sha256, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto fail;
    *ref = rc == SQLITE_ROW;
    out = 0;
    goto done;
fail:
    db_error(db, rc, err, "checking blob references");
done:
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

static int sq_variant_put(struct store *base, const struct store_variant *v,
                          struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3 *db = acquire(s, err);
    if (db == NULL)
        return -1;
    sqlite3_stmt *st = NULL;
    int out = -1;
    int rc = sqlite3_prepare_v2(db,
                                "INSERT OR REPLACE INTO variants (image_id, plan, sha256, format,"
                                " width, height, bytes, created_at, last_used)"
                                " SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8"
                                " WHERE EXISTS (SELECT 1 FROM images WHERE id = ?1)",
                                -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, v->image_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, v->plan, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, v->sha256, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, v->format, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, v->width);
    sqlite3_bind_int64(st, 6, v->height);
    sqlite3_bind_int64(st, 7, v->bytes);
    sqlite3_bind_int64(st, 8, v->created_at_ms ? v->created_at_ms : util_now_ms());
    rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        goto fail;
    if (sqlite3_changes(db) == 0)
        util_error_set(err, UTIL_ERR_NOT_FOUND, "the image was deleted");
    else
        out = 0;
    goto done;
fail:
    db_error(db, rc, err, "storing a variant");
done:
    sqlite3_finalize(st);
    release(s, db);
    return out;
}

static void sq_variant_touch(struct store *base, const char *image_id, const char *plan,
                             int64_t now_ms)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    char *key = g_strdup_printf("%s\n%s", image_id, plan);
    pthread_mutex_lock(&s->lock);
    /* Bounded: past this many pending touches, newer ones are dropped until
     * the next flush; LRU order only needs to be roughly right. */
    if (g_hash_table_size(s->touched) < 100000)
        g_hash_table_replace(s->touched, key, (gpointer)(intptr_t)(now_ms / 1000));
    else
        g_free(key);
    pthread_mutex_unlock(&s->lock);
}

static int sq_variant_trim(struct store *base, int64_t max_bytes, int *evicted,
                           struct util_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *evicted = 0;
    pthread_mutex_lock(&s->lock);
    GHashTable *pending = s->touched;
    s->touched = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    pthread_mutex_unlock(&s->lock);

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
    /* Evict the least recently used rows past the budget, in one statement:
     * a running sum over the rows, newest first, marks where it is passed. */
    int rc = sqlite3_prepare_v2(
        db,
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

static void sq_close(struct store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    g_hash_table_destroy(s->touched);
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
    .ping = sq_ping,
    .image_insert = sq_image_insert,
    .image_get = sq_image_get,
    .image_delete = sq_image_delete,
    .image_list = sq_image_list,
    .blob_referenced = sq_blob_referenced,
    .variant_get = sq_variant_get,
    .variant_put = sq_variant_put,
    .variant_touch = sq_variant_touch,
    .variant_trim = sq_variant_trim,
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
    s->touched = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    pthread_mutex_init(&s->lock, NULL);
    /* Open one connection now so a bad path fails at start, not later. */
    sqlite3 *db = conn_open(s, err);
    if (db == NULL) {
        sq_close(&s->base);
        return NULL;
    }
    release(s, db);
    return &s->base;
}
