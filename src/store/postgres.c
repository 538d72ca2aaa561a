/*
 * The PostgreSQL backend (store.h): the shared database of a fleet of `api`
 * and `worker` processes (DESIGN §1, §4, §7).
 *
 * - Connections come from a bounded pool (pg.c); a broken one is replaced,
 *   so a restarted database is used again without restarting anything.
 * - Times are the database's clock (PG_NOW_MS), so leases and backoff mean
 *   the same on every machine whatever their clocks say.
 * - Claims are one statement: UPDATE ... WHERE seq = (SELECT ... FOR UPDATE
 *   SKIP LOCKED), so claimers never wait for each other's rows.
 * - Wake-ups go through LISTEN/NOTIFY: `job_ready` (a job may be claimable)
 *   and `job_done` (payload: the job id) are sent inside the transaction
 *   that changes the job, so they are delivered exactly when it commits.
 *   One listening connection per process (its own thread) turns them into
 *   store_job_signals bumps and store_on_job_done callbacks; workers still
 *   poll slowly as a safety net (worker/jobs.c), and after the listener
 *   reconnects every waiter is woken once, since notifications sent while it
 *   was away are lost.
 */
#include <errno.h>
#include <glib.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "store/local.h"
#include "store/pg.h"
#include "store/store.h"

/* A lock id for `migrate` (pg_advisory_xact_lock). */
#define MIGRATE_LOCK_ID "126943244940918"

struct pg_store {
    struct store base;
    struct pg_pool *pool;
    /* the LISTEN thread */
    pthread_t listener;
    bool listener_started;
    int stop_fd;         /* eventfd: the listener stops */
    PGconn *listen_conn; /* owned by the listener thread once started */
};

/* Schema versions, applied in order, each in its own transaction. Times are
 * bigint ms since the epoch, as in the SQLite schema. */
static const char *const MIGRATIONS[] = {
    /* 1: images */
    "CREATE TABLE images ("
    "  seq bigserial PRIMARY KEY,"
    "  id text NOT NULL UNIQUE,"
    "  sha256 text NOT NULL,"
    "  format text NOT NULL,"
    "  width bigint NOT NULL,"
    "  height bigint NOT NULL,"
    "  pages bigint NOT NULL,"
    "  bytes bigint NOT NULL,"
    "  has_alpha boolean NOT NULL,"
    "  orientation integer NOT NULL,"
    "  icc text,"
    "  created_at bigint NOT NULL);"
    "CREATE INDEX images_sha256 ON images(sha256);",
    /* 2: variants, deleted with their image */
    "CREATE TABLE variants ("
    "  image_id text NOT NULL REFERENCES images(id) ON DELETE CASCADE,"
    "  plan text NOT NULL,"
    "  sha256 text NOT NULL,"
    "  format text NOT NULL,"
    "  width bigint NOT NULL,"
    "  height bigint NOT NULL,"
    "  bytes bigint NOT NULL,"
    "  created_at bigint NOT NULL,"
    "  last_used bigint NOT NULL,"
    "  PRIMARY KEY (image_id, plan));"
    "CREATE INDEX variants_sha256 ON variants(sha256);"
    "CREATE INDEX variants_last_used ON variants(last_used);",
    /* 3: the job queue and idempotency keys (DESIGN §4). The partial
     * indexes keep claims and rescues small however many finished jobs
     * accumulate. */
    "CREATE TABLE jobs ("
    "  seq bigserial PRIMARY KEY,"
    "  id text NOT NULL UNIQUE,"
    "  image_id text NOT NULL,"
    "  spec text NOT NULL,"
    "  status text NOT NULL,"
    "  attempts integer NOT NULL DEFAULT 0,"
    "  max_attempts integer NOT NULL,"
    "  lease_owner text,"
    "  lease_expires_at bigint,"
    "  run_at bigint NOT NULL,"
    "  result_image_id text,"
    "  error_type text,"
    "  error_detail text,"
    "  created_at bigint NOT NULL,"
    "  started_at bigint,"
    "  finished_at bigint);"
    "CREATE INDEX jobs_ready ON jobs(run_at, seq) WHERE status = 'queued';"
    "CREATE INDEX jobs_lease ON jobs(lease_expires_at) WHERE status = 'running';"
    "CREATE INDEX jobs_status ON jobs(status, seq);"
    "CREATE TABLE idempotency_keys ("
    "  key text PRIMARY KEY,"
    "  hash text NOT NULL,"
    "  job_id text NOT NULL,"
    "  created_at bigint NOT NULL);"
    "CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);",
    /* 4: blobs kept in the database (--blobs db, blob/db.c). Images do not
     * compress: EXTERNAL stores them out of line without trying. */
    "CREATE TABLE blobs ("
    "  sha256 text PRIMARY KEY,"
    "  size bigint NOT NULL,"
    "  mtime bigint NOT NULL,"
    "  data bytea NOT NULL);"
    "ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;",
};
#define NMIGRATIONS ((int)(sizeof(MIGRATIONS) / sizeof(MIGRATIONS[0])))

#define S(base) ((struct pg_store *)(base))

/* ---- signals and callbacks ------------------------------------------------ */

/* The database's clock now, or -1. Also delivers what arrived with it. */
static int64_t db_now(PGconn *c)
{
    struct util_error err = {0};
    PGresult *r = pg_query(c, &err, "reading the database clock", false, "SELECT " PG_NOW_MS, "");
    if (r == NULL)
        return -1;
    int64_t v = pg_int(r, 0, 0);
    PQclear(r);
    return v;
}

static PGconn *listen_connect(const char *url, struct util_error *err)
{
    PGconn *c = pg_connect(url, err);
    if (c == NULL)
        return NULL;
    if (pg_exec(c, err, "listening for job events", "LISTEN job_ready; LISTEN job_done", "") < 0) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Sleeps up to ms unless asked to stop; true when asked. */
static bool listener_sleep(struct pg_store *s, int ms)
{
    struct pollfd pfd = {.fd = s->stop_fd, .events = POLLIN};
    return poll(&pfd, 1, ms) > 0;
}

/* Hands out every notification libpq holds. A query on the connection (the
 * LISTEN, the liveness check) may have read some already: they wait in
 * libpq, not in the socket, so this runs before every poll. */
static void deliver(struct pg_store *s, PGconn *c)
{
    PGnotify *note;
    bool ready = false;
    while ((note = PQnotifies(c)) != NULL) {
        if (strcmp(note->relname, "job_ready") == 0)
            ready = true;
        else if (strcmp(note->relname, "job_done") == 0 && note->extra[0])
            store_local_done(s->base.local, note->extra);
        PQfreemem(note);
    }
    if (ready)
        store_local_ready(s->base.local);
}

/* After a reconnection: what was notified while we were away is lost.
 * Workers look again, and the jobs that finished since shortly before the
 * connection was last known good are announced again (an announcement
 * twice is harmless: it only wakes ?wait= requests). */
static void catch_up(struct pg_store *s, PGconn *c, int64_t since_db_ms)
{
    store_local_signal(s->base.local);
    if (since_db_ms <= 0)
        return;
    struct util_error err = {0};
    PGresult *r = pg_query(c, &err, "reading jobs finished meanwhile", false,
                           "SELECT id FROM jobs WHERE finished_at >= $1 LIMIT 100000", "i",
                           since_db_ms - 5000);
    if (r == NULL)
        return;
    for (int i = 0; i < PQntuples(r); i++)
        store_local_done(s->base.local, PQgetvalue(r, i, 0));
    PQclear(r);
}

static void *listener_main(void *arg)
{
    struct pg_store *s = arg;
    PGconn *c = s->listen_conn;
    int backoff_ms = 100;
    int64_t good_db_ms = db_now(c); /* the connection last worked then */
    for (;;) {
        if (c == NULL) {
            if (listener_sleep(s, backoff_ms))
                break;
            struct util_error err = {0};
            c = listen_connect(pg_pool_url(s->pool), &err);
            if (c == NULL) {
                backoff_ms = backoff_ms < 2000 ? backoff_ms * 2 : 2000;
                continue;
            }
            backoff_ms = 100;
            util_info("postgres: listening for job events again");
            catch_up(s, c, good_db_ms);
            good_db_ms = db_now(c);
        }
        deliver(s, c);
        struct pollfd pfd[2] = {{.fd = PQsocket(c), .events = POLLIN},
                                {.fd = s->stop_fd, .events = POLLIN}};
        int n = poll(pfd, 2, 5000);
        if (n < 0 && errno != EINTR)
            break;
        if (pfd[1].revents)
            break;
        if (n == 0) {
            /* Quiet for a while: make sure the connection still works (a
             * dead TCP peer sends nothing). */
            int64_t now = db_now(c);
            if (now < 0) {
                util_warn("postgres: the listening connection was lost; reconnecting");
                PQfinish(c);
                c = NULL;
            } else {
                good_db_ms = now;
            }
            continue;
        }
        if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) {
            deliver(s, c); /* what arrived before the loss */
            util_warn("postgres: the listening connection was lost; reconnecting");
            PQfinish(c);
            c = NULL;
        }
    }
    if (c)
        PQfinish(c);
    return NULL;
}

/* ---- schema ------------------------------------------------------------- */

static int pg_migrate(struct store *base, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int rc = -1;
    /* One migrator at a time across every machine: each version's
     * transaction takes a transaction-level advisory lock first, so the lock
     * ends with the transaction whatever happens (a session lock could go
     * back to the pool still held). */
    for (int v = 1; v <= NMIGRATIONS; v++) {
        if (pg_exec(c, err, "starting a migration", "BEGIN", "") < 0 ||
            pg_exec(c, err, "waiting for the migration lock",
                    "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK_ID ")", "") < 0 ||
            pg_exec(c, err, "creating schema_migrations",
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, applied_at bigint NOT NULL)",
                    "") < 0)
            goto out;
        int have = pg_exec(c, err, "reading schema_migrations",
                           "SELECT 1 FROM schema_migrations WHERE version = $1", "i", (int64_t)v);
        if (have < 0)
            goto out;
        if (have == 0) {
            if (pg_exec(c, err, "applying a migration", MIGRATIONS[v - 1], "") < 0 ||
                pg_exec(c, err, "recording a migration",
                        "INSERT INTO schema_migrations (version, applied_at)"
                        " VALUES ($1, " PG_NOW_MS ")",
                        "i", (int64_t)v) < 0)
                goto out;
        }
        if (pg_exec(c, err, "committing a migration", "COMMIT", "") < 0)
            goto out;
        if (have == 0)
            util_info("database: schema migrated to version %d", v);
    }
    rc = 0;
out:
    pg_release(s->pool, c); /* rolls back what was not committed */
    return rc;
}

static int pg_schema_check(struct store *base, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    struct util_error qerr = {0};
    PGresult *r = pg_query(c, &qerr, "reading the schema version", false,
                           "SELECT coalesce(max(version), 0) FROM schema_migrations", "");
    pg_release(s->pool, c);
    if (r == NULL) {
        if (strcmp(pg_last_sqlstate(), "42P01") == 0)
            return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                                  "the database has no schema yet: run image-server migrate");
        *err = qerr;
        return -1;
    }
    int64_t v = pg_int(r, 0, 0);
    PQclear(r);
    if (v < NMIGRATIONS)
        return store_schema_outdated(err, v, NMIGRATIONS);
    return 0;
}

static int pg_ping(struct store *base, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int n = pg_exec(c, err, "checking the database", "SELECT 1", "");
    pg_release(s->pool, c);
    return n < 0 ? -1 : 0;
}

/* ---- images --------------------------------------------------------------- */

#define IMAGE_COLS                                                                                 \
    "seq, id, sha256, format, width, height, pages, bytes, has_alpha, orientation, icc, "          \
    "created_at"

static void read_image(const PGresult *r, int row, struct store_image *img)
{
    memset(img, 0, sizeof(*img));
    img->seq = pg_int(r, row, 0);
    pg_text(r, row, 1, img->id, sizeof(img->id));
    pg_text(r, row, 2, img->sha256, sizeof(img->sha256));
    pg_text(r, row, 3, img->format, sizeof(img->format));
    img->width = pg_int(r, row, 4);
    img->height = pg_int(r, row, 5);
    img->pages = pg_int(r, row, 6);
    img->bytes = pg_int(r, row, 7);
    img->has_alpha = PQgetvalue(r, row, 8)[0] == 't';
    img->orientation = (int)pg_int(r, row, 9);
    pg_text(r, row, 10, img->icc, sizeof(img->icc));
    img->created_at_ms = pg_int(r, row, 11);
}

/* Inserts an image row on c (inside the caller's transaction, if any);
 * fills seq and created_at from the database. */
static int insert_image(PGconn *c, struct store_image *img, struct util_error *err,
                        const char *what)
{
    PGresult *r = pg_query(c, err, what, false,
                           "INSERT INTO images (id, sha256, format, width, height, pages,"
                           " bytes, has_alpha, orientation, icc, created_at)"
                           " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10," PG_NOW_MS ")"
                           " RETURNING seq, created_at",
                           "tttiiiitiz", img->id, img->sha256, img->format, img->width, img->height,
                           img->pages, img->bytes, img->has_alpha ? "t" : "f",
                           (int64_t)img->orientation, img->icc);
    if (r == NULL)
        return -1;
    img->seq = pg_int(r, 0, 0);
    img->created_at_ms = pg_int(r, 0, 1);
    PQclear(r);
    return 0;
}

static int pg_image_insert(struct store *base, struct store_image *img, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int out = insert_image(c, img, err, "storing an image");
    pg_release(s->pool, c);
    return out;
}

static int pg_image_get(struct store *base, const char *id, struct store_image *img,
                        struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    PGresult *r = pg_query(c, err, "reading an image", false,
                           "SELECT " IMAGE_COLS " FROM images WHERE id = $1", "t", id);
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    int out = 0;
    if (PQntuples(r) == 1)
        read_image(r, 0, img);
    else
        out = util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id);
    PQclear(r);
    return out;
}

static int pg_image_delete(struct store *base, const char *id, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int n = pg_exec(c, err, "deleting an image", "DELETE FROM images WHERE id = $1", "t", id);
    pg_release(s->pool, c);
    if (n == 0)
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id);
    return n < 0 ? -1 : 0;
}

static int pg_image_list(struct store *base, int64_t before_seq, int limit,
                         struct store_image *items, int *n, struct util_error *err)
{
    struct pg_store *s = S(base);
    *n = 0;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    PGresult *r = pg_query(c, err, "listing images", false,
                           "SELECT " IMAGE_COLS " FROM images WHERE seq < $1"
                           " ORDER BY seq DESC LIMIT $2",
                           "ii", before_seq > 0 ? before_seq : INT64_MAX, (int64_t)limit);
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    for (int i = 0; i < PQntuples(r) && *n < limit; i++)
        read_image(r, i, &items[(*n)++]);
    PQclear(r);
    return 0;
}

static int pg_blob_referenced(struct store *base, const char *sha256, bool *ref,
                              struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int n = pg_exec(c, err, "checking blob references",
                    "SELECT 1 WHERE EXISTS (SELECT 1 FROM images WHERE sha256 = $1)"
                    " OR EXISTS (SELECT 1 FROM variants WHERE sha256 = $1)",
                    "t", sha256);
    pg_release(s->pool, c);
    if (n < 0)
        return -1;
    *ref = n > 0;
    return 0;
}

/* ---- variants ------------------------------------------------------------- */

static int pg_variant_get(struct store *base, const char *image_id, const char *plan,
                          struct store_variant *v, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    PGresult *r = pg_query(c, err, "reading a variant", false,
                           "SELECT sha256, format, width, height, bytes, created_at, last_used"
                           " FROM variants WHERE image_id = $1 AND plan = $2",
                           "tt", image_id, plan);
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    int out = 0;
    if (PQntuples(r) == 1) {
        memset(v, 0, sizeof(*v));
        g_strlcpy(v->image_id, image_id, sizeof(v->image_id));
        pg_text(r, 0, 0, v->sha256, sizeof(v->sha256));
        pg_text(r, 0, 1, v->format, sizeof(v->format));
        v->width = pg_int(r, 0, 2);
        v->height = pg_int(r, 0, 3);
        v->bytes = pg_int(r, 0, 4);
        v->created_at_ms = pg_int(r, 0, 5);
        v->last_used_ms = pg_int(r, 0, 6);
    } else {
        out = util_error_set(err, UTIL_ERR_NOT_FOUND, "variant not cached");
    }
    PQclear(r);
    return out;
}

static int pg_variant_put(struct store *base, const struct store_variant *v, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int64_t now = v->created_at_ms ? v->created_at_ms : util_now_ms();
    int n = pg_exec(c, err, "storing a variant",
                    "INSERT INTO variants (image_id, plan, sha256, format, width, height, bytes,"
                    " created_at, last_used)"
                    " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8"
                    " WHERE EXISTS (SELECT 1 FROM images WHERE id = $1)"
                    " ON CONFLICT (image_id, plan) DO UPDATE SET sha256 = excluded.sha256,"
                    " format = excluded.format, width = excluded.width,"
                    " height = excluded.height, bytes = excluded.bytes,"
                    " created_at = excluded.created_at, last_used = excluded.last_used",
                    "ttttiiii", v->image_id, v->plan, v->sha256, v->format, v->width, v->height,
                    v->bytes, now);
    pg_release(s->pool, c);
    /* 23503: the image was deleted between the check and the insert. */
    if (n == 0 || (n < 0 && strcmp(pg_last_sqlstate(), "23503") == 0))
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "the image was deleted");
    return n < 0 ? -1 : 0;
}

/* Appends t (n bytes) to a PostgreSQL array literal being built, quoted. */
static void array_add(GString *a, const char *t, size_t n)
{
    if (a->len > 1) /* after the opening brace */
        g_string_append_c(a, ',');
    g_string_append_c(a, '"');
    for (size_t i = 0; i < n; i++) {
        if (t[i] == '"' || t[i] == '\\')
            g_string_append_c(a, '\\');
        g_string_append_c(a, t[i]);
    }
    g_string_append_c(a, '"');
}

/* Writes the batched variant touches: sorted, 500 rows a statement, each
 * statement its own transaction (two processes flushing the same rows then
 * never hold locks across statements; a batch lost to a deadlock costs
 * only LRU precision). */
static int flush_touches(PGconn *c, GHashTable *pending, struct util_error *err)
{
    GList *keys = g_list_sort(g_hash_table_get_keys(pending), (GCompareFunc)strcmp);
    GString *ids = g_string_new("{"), *plans = g_string_new("{"), *uses = g_string_new("{");
    int rc = 0, rows = 0;
    for (GList *l = keys;; l = l->next) {
        if (l) {
            const char *key = l->data;
            const char *nl = strchr(key, '\n');
            if (nl == NULL)
                continue;
            array_add(ids, key, (size_t)(nl - key));
            array_add(plans, nl + 1, strlen(nl + 1));
            g_string_append_printf(uses, "%s%lld", rows ? "," : "",
                                   (long long)(intptr_t)g_hash_table_lookup(pending, key) * 1000);
            rows++;
        }
        if (rows > 0 && (l == NULL || rows == 500)) {
            g_string_append_c(ids, '}');
            g_string_append_c(plans, '}');
            g_string_append_c(uses, '}');
            if (pg_exec(c, err, "flushing variant use",
                        "UPDATE variants v SET last_used = greatest(v.last_used, t.u)"
                        " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(i, p, u)"
                        " WHERE v.image_id = t.i AND v.plan = t.p",
                        "ttt", ids->str, plans->str, uses->str) < 0)
                rc = -1;
            g_string_assign(ids, "{");
            g_string_assign(plans, "{");
            g_string_assign(uses, "{");
            rows = 0;
            if (rc != 0)
                break;
        }
        if (l == NULL)
            break;
    }
    g_list_free(keys);
    g_string_free(ids, TRUE);
    g_string_free(plans, TRUE);
    g_string_free(uses, TRUE);
    return rc;
}

static int pg_variant_trim(struct store *base, int64_t max_bytes, int *evicted,
                           struct util_error *err)
{
    struct pg_store *s = S(base);
    *evicted = 0;
    GHashTable *pending = store_local_take_touches(s->base.local);

    int out = -1;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        goto done;
    if (flush_touches(c, pending, err) != 0)
        goto done;
    if (max_bytes < 0) {
        out = 0;
        goto done;
    }
    /* Least recently used rows past the budget, in one statement (safe from
     * several sweepers: a row deleted twice is deleted once). */
    int n = pg_exec(c, err, "trimming the variant cache",
                    "DELETE FROM variants v USING ("
                    " SELECT image_id, plan FROM (SELECT image_id, plan, sum(bytes) OVER"
                    "  (ORDER BY last_used DESC, image_id DESC, plan DESC) AS running"
                    "  FROM variants) t WHERE running > $1) old"
                    " WHERE v.image_id = old.image_id AND v.plan = old.plan",
                    "i", max_bytes);
    if (n < 0)
        goto done;
    *evicted = n;
    out = 0;
done:
    pg_release(s->pool, c);
    g_hash_table_destroy(pending);
    return out;
}

/* ---- the job queue -------------------------------------------------------- */

#define JOB_COLS                                                                                   \
    "seq, id, image_id, spec, status, attempts, max_attempts, lease_owner, lease_expires_at,"      \
    " run_at, result_image_id, error_type, error_detail, created_at, started_at, finished_at"

static void read_job(const PGresult *r, int row, struct store_job *j)
{
    memset(j, 0, sizeof(*j));
    j->seq = pg_int(r, row, 0);
    pg_text(r, row, 1, j->id, sizeof(j->id));
    pg_text(r, row, 2, j->image_id, sizeof(j->image_id));
    j->spec = strdup(PQgetisnull(r, row, 3) ? "{}" : PQgetvalue(r, row, 3));
    int k = store_job_status_from_name(PQgetvalue(r, row, 4));
    j->status = k < 0 ? STORE_JOB_FAILED : (enum store_job_status)k;
    j->attempts = (int)pg_int(r, row, 5);
    j->max_attempts = (int)pg_int(r, row, 6);
    pg_text(r, row, 7, j->lease_owner, sizeof(j->lease_owner));
    j->lease_expires_at_ms = pg_int(r, row, 8);
    j->run_at_ms = pg_int(r, row, 9);
    pg_text(r, row, 10, j->result_image_id, sizeof(j->result_image_id));
    pg_text(r, row, 11, j->error_type, sizeof(j->error_type));
    pg_text(r, row, 12, j->error_detail, sizeof(j->error_detail));
    j->created_at_ms = pg_int(r, row, 13);
    j->started_at_ms = pg_int(r, row, 14);
    j->finished_at_ms = pg_int(r, row, 15);
}

/* Reads one job on c: 0, 1 when absent, -1 on error. */
static int job_read(PGconn *c, const char *id, struct store_job *out, struct util_error *err)
{
    PGresult *r = pg_query(c, err, "reading a job", false,
                           "SELECT " JOB_COLS " FROM jobs WHERE id = $1", "t", id);
    if (r == NULL)
        return -1;
    int rc = 1;
    if (PQntuples(r) == 1) {
        read_job(r, 0, out);
        rc = 0;
    }
    PQclear(r);
    return rc;
}

/* One try of an enqueue: 0, -1 with err, or 1 when a concurrent request
 * took the same idempotency key first (the caller tries again and finds
 * it). */
static int enqueue_once(PGconn *c, struct store_job *job, const char *idem_key,
                        const char *idem_hash, int64_t jobs_max, bool *existing,
                        struct util_error *err)
{
    if (pg_exec(c, err, "queueing a job", "BEGIN", "") < 0)
        return -1;
    if (idem_key && idem_key[0]) {
        PGresult *r =
            pg_query(c, err, "checking an idempotency key", false,
                     "SELECT hash, job_id FROM idempotency_keys WHERE key = $1", "t", idem_key);
        if (r == NULL)
            return -1;
        if (PQntuples(r) == 1) {
            bool same = strcmp(PQgetvalue(r, 0, 0), idem_hash) == 0;
            char job_id[UTIL_ID_LEN + 1];
            pg_text(r, 0, 1, job_id, sizeof(job_id));
            PQclear(r);
            if (!same)
                return util_error_set(err, UTIL_ERR_CONFLICT,
                                      "this Idempotency-Key was used with a different request");
            struct store_job first;
            int k = job_read(c, job_id, &first, err);
            if (k < 0)
                return -1;
            if (k == 1)
                return util_error_set(err, UTIL_ERR_CONFLICT,
                                      "this Idempotency-Key names a job that no longer exists");
            store_job_clear(job);
            *job = first;
            *existing = true;
            return pg_exec(c, err, "queueing a job", "COMMIT", "") < 0 ? -1 : 0;
        }
        PQclear(r);
    }
    int k =
        pg_exec(c, err, "queueing a job", "SELECT 1 FROM images WHERE id = $1", "t", job->image_id);
    if (k < 0)
        return -1;
    if (k == 0)
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'",
                              job->image_id);
    /* The bound is approximate across processes (two enqueues may both see
     * jobs_max - 1), which is what a back-pressure limit needs. */
    PGresult *r = pg_query(c, err, "counting queued jobs", false,
                           "SELECT count(*) FROM jobs WHERE status = 'queued'", "");
    if (r == NULL)
        return -1;
    int64_t queued = pg_int(r, 0, 0);
    PQclear(r);
    if (queued >= jobs_max)
        return util_error_set(err, UTIL_ERR_OVERLOADED,
                              "the job queue is full (%lld queued); retry later",
                              (long long)queued);
    r = pg_query(c, err, "queueing a job", false,
                 "INSERT INTO jobs (id, image_id, spec, status, max_attempts, run_at, created_at)"
                 " VALUES ($1, $2, $3, 'queued', $4, " PG_NOW_MS ", " PG_NOW_MS ")"
                 " RETURNING seq, run_at, created_at",
                 "ttti", job->id, job->image_id, job->spec, (int64_t)job->max_attempts);
    if (r == NULL)
        return -1;
    job->seq = pg_int(r, 0, 0);
    job->run_at_ms = pg_int(r, 0, 1);
    job->created_at_ms = pg_int(r, 0, 2);
    job->status = STORE_JOB_QUEUED;
    PQclear(r);
    if (idem_key && idem_key[0] &&
        pg_exec(c, err, "recording an idempotency key",
                "INSERT INTO idempotency_keys (key, hash, job_id, created_at)"
                " VALUES ($1, $2, $3, " PG_NOW_MS ")",
                "ttt", idem_key, idem_hash, job->id) < 0)
        return strcmp(pg_last_sqlstate(), "23505") == 0 ? 1 : -1;
    if (pg_exec(c, err, "queueing a job", "SELECT pg_notify('job_ready', '')", "") < 0 ||
        pg_exec(c, err, "queueing a job", "COMMIT", "") < 0)
        return -1;
    return 0;
}

static int pg_job_enqueue(struct store *base, struct store_job *job, const char *idem_key,
                          const char *idem_hash, int64_t jobs_max, bool *existing,
                          struct util_error *err)
{
    struct pg_store *s = S(base);
    *existing = false;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int rc = -1;
    for (int attempt = 0; attempt < 3; attempt++) {
        rc = enqueue_once(c, job, idem_key, idem_hash, jobs_max, existing, err);
        if (PQtransactionStatus(c) != PQTRANS_IDLE) {
            PGresult *r = PQexec(c, "ROLLBACK");
            PQclear(r);
        }
        if (rc != 1)
            break;
        memset(err, 0, sizeof(*err));
    }
    pg_release(s->pool, c);
    if (rc == 1)
        rc = util_error_set(err, UTIL_ERR_UNAVAILABLE, "this Idempotency-Key is in use; retry");
    return rc;
}

static int pg_job_get(struct store *base, const char *id, struct store_job *out,
                      struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int r = job_read(c, id, out, err);
    pg_release(s->pool, c);
    if (r == 1)
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "no job has the id '%.40s'", id);
    return r;
}

static int pg_job_list(struct store *base, int status, int64_t before_seq, int limit,
                       struct store_job *items, int *n, struct util_error *err)
{
    struct pg_store *s = S(base);
    *n = 0;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int64_t before = before_seq > 0 ? before_seq : INT64_MAX;
    PGresult *r;
    if (status >= 0)
        r = pg_query(c, err, "listing jobs", false,
                     "SELECT " JOB_COLS " FROM jobs WHERE seq < $1 AND status = $2"
                     " ORDER BY seq DESC LIMIT $3",
                     "iti", before, store_job_status_name((enum store_job_status)status),
                     (int64_t)limit);
    else
        r = pg_query(c, err, "listing jobs", false,
                     "SELECT " JOB_COLS " FROM jobs WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                     "ii", before, (int64_t)limit);
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    for (int i = 0; i < PQntuples(r) && *n < limit; i++)
        read_job(r, i, &items[(*n)++]);
    PQclear(r);
    return 0;
}

static int pg_job_claim(struct store *base, const char *owner, int64_t lease_ms,
                        struct store_job *out, bool *got, struct util_error *err)
{
    struct pg_store *s = S(base);
    *got = false;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    /* One round trip. SKIP LOCKED: a row another claimer is taking is
     * passed over, never waited for (DESIGN §4). */
    PGresult *r = pg_query(c, err, "claiming a job", false,
                           "UPDATE jobs SET status = 'running', attempts = attempts + 1,"
                           " lease_owner = $1, lease_expires_at = " PG_NOW_MS " + $2,"
                           " started_at = coalesce(started_at, " PG_NOW_MS ")"
                           " WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued'"
                           "  AND run_at <= " PG_NOW_MS " ORDER BY run_at, seq LIMIT 1"
                           "  FOR UPDATE SKIP LOCKED)"
                           " RETURNING " JOB_COLS,
                           "ti", owner, lease_ms);
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    if (PQntuples(r) == 1) {
        read_job(r, 0, out);
        *got = true;
    }
    PQclear(r);
    return 0;
}

#define FENCE " AND status = 'running' AND lease_owner = $2 AND attempts = $3"

static int pg_job_heartbeat(struct store *base, const char *id, const char *owner, int attempt,
                            int64_t lease_ms, bool *held, struct util_error *err)
{
    struct pg_store *s = S(base);
    *held = false;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int n = pg_exec(c, err, "renewing a lease",
                    "UPDATE jobs SET lease_expires_at = " PG_NOW_MS " + $4"
                    " WHERE id = $1" FENCE,
                    "ttii", id, owner, (int64_t)attempt, lease_ms);
    pg_release(s->pool, c);
    if (n < 0)
        return -1;
    *held = n == 1;
    return 0;
}

static int pg_job_complete(struct store *base, const char *id, const char *owner, int attempt,
                           struct store_image *result, struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int out = -1;
    if (pg_exec(c, err, "completing a job", "BEGIN", "") < 0)
        goto done;
    int n = pg_exec(c, err, "completing a job",
                    "UPDATE jobs SET status = 'succeeded', result_image_id = $4,"
                    " finished_at = " PG_NOW_MS ", lease_owner = NULL, lease_expires_at = NULL,"
                    " error_type = NULL, error_detail = NULL WHERE id = $1" FENCE,
                    "ttit", id, owner, (int64_t)attempt, result->id);
    if (n < 0)
        goto done;
    if (n == 0) {
        store_lease_lost(err, id);
        goto done;
    }
    if (insert_image(c, result, err, "storing a job's result") != 0 ||
        pg_exec(c, err, "completing a job", "SELECT pg_notify('job_done', $1)", "t", id) < 0 ||
        pg_exec(c, err, "completing a job", "COMMIT", "") < 0)
        goto done;
    out = 0;
done:
    pg_release(s->pool, c);
    return out;
}

static int pg_job_fail(struct store *base, const char *id, const char *owner, int attempt,
                       bool retry, int64_t backoff_ms, const char *type, const char *detail,
                       struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    /* One statement decides retry or failure from the row itself, and
     * announces a final failure. */
    PGresult *r = pg_query(c, err, "recording a job failure", false,
                           "WITH u AS (UPDATE jobs SET"
                           " status = CASE WHEN $4 AND attempts < max_attempts"
                           "   THEN 'queued' ELSE 'failed' END,"
                           " run_at = CASE WHEN $4 AND attempts < max_attempts"
                           "   THEN " PG_NOW_MS " + $5 ELSE run_at END,"
                           " finished_at = CASE WHEN $4 AND attempts < max_attempts"
                           "   THEN NULL ELSE " PG_NOW_MS " END,"
                           " lease_owner = NULL, lease_expires_at = NULL,"
                           " error_type = $6, error_detail = $7"
                           " WHERE id = $1" FENCE " RETURNING id, status)"
                           " SELECT status, CASE WHEN status = 'failed'"
                           "  THEN pg_notify('job_done', id) END FROM u",
                           "ttitizz", id, owner, (int64_t)attempt, retry ? "t" : "f", backoff_ms,
                           type, detail);
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    int n = PQntuples(r);
    PQclear(r);
    if (n == 0)
        return store_lease_lost(err, id);
    return 0;
}

static int pg_job_release(struct store *base, const char *id, const char *owner, int attempt,
                          struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int n = pg_exec(c, err, "releasing a job",
                    "WITH u AS (UPDATE jobs SET status = 'queued', run_at = " PG_NOW_MS ","
                    " attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL"
                    " WHERE id = $1" FENCE " RETURNING id)"
                    " SELECT pg_notify('job_ready', '') FROM u",
                    "tti", id, owner, (int64_t)attempt);
    pg_release(s->pool, c);
    if (n < 0)
        return -1;
    if (n == 0)
        return store_lease_lost(err, id);
    return 0;
}

static int pg_job_cancel(struct store *base, const char *id, struct store_job *out,
                         struct util_error *err)
{
    struct pg_store *s = S(base);
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int rc = -1;
    int n = pg_exec(c, err, "canceling a job",
                    "WITH u AS (UPDATE jobs SET status = 'canceled', finished_at = " PG_NOW_MS ","
                    " lease_owner = NULL, lease_expires_at = NULL"
                    " WHERE id = $1 AND status IN ('queued', 'running') RETURNING id)"
                    " SELECT pg_notify('job_done', id) FROM u",
                    "t", id);
    if (n >= 0) {
        int k = job_read(c, id, out, err);
        if (k == 1)
            util_error_set(err, UTIL_ERR_NOT_FOUND, "no job has the id '%.40s'", id);
        else if (k == 0 && n == 0)
            store_job_cancel_refused(out, err);
        else if (k == 0)
            rc = 0;
    }
    pg_release(s->pool, c);
    return rc;
}

static int pg_job_rescue(struct store *base, int *requeued, int *failed, struct util_error *err)
{
    struct pg_store *s = S(base);
    *requeued = *failed = 0;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    /* One statement, safe from many sweepers at once: a row another
     * sweeper changed first no longer matches and is skipped. */
    PGresult *r = pg_query(
        c, err, "rescuing expired leases", false,
        "WITH f AS (UPDATE jobs SET status = 'failed', finished_at = " PG_NOW_MS ","
        "  lease_owner = NULL, lease_expires_at = NULL, error_type = '/problems/internal',"
        "  error_detail = 'the worker stopped answering on its last attempt'"
        "  WHERE status = 'running' AND lease_expires_at < " PG_NOW_MS
        "  AND attempts >= max_attempts RETURNING id),"
        " q AS (UPDATE jobs SET status = 'queued', run_at = " PG_NOW_MS ","
        "  lease_owner = NULL, lease_expires_at = NULL, error_type = '/problems/internal',"
        "  error_detail = 'the worker stopped answering; retried'"
        "  WHERE status = 'running' AND lease_expires_at < " PG_NOW_MS
        "  AND attempts < max_attempts RETURNING id)"
        " SELECT (SELECT count(pg_notify('job_done', id)) FROM f),"
        "  (SELECT count(*) FROM q),"
        "  (SELECT CASE WHEN count(*) > 0 THEN pg_notify('job_ready', '') END FROM q) IS NULL",
        "");
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    *failed = (int)pg_int(r, 0, 0);
    *requeued = (int)pg_int(r, 0, 1);
    PQclear(r);
    return 0;
}

static int pg_idempotency_expire(struct store *base, int64_t older_than_ms, int *n,
                                 struct util_error *err)
{
    struct pg_store *s = S(base);
    *n = 0;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    int k = pg_exec(c, err, "expiring idempotency keys",
                    "DELETE FROM idempotency_keys WHERE created_at < $1", "i", older_than_ms);
    pg_release(s->pool, c);
    if (k < 0)
        return -1;
    *n = k;
    return 0;
}

static int64_t pg_job_next_run_at(struct store *base)
{
    struct pg_store *s = S(base);
    struct util_error err = {0};
    PGconn *c = pg_acquire(s->pool, &err);
    if (c == NULL)
        return 0;
    /* run_at is on the database's clock; the caller sleeps on its own, so
     * the answer is converted (a worker whose clock runs ahead must not
     * poll in a tight loop until the databases's clock catches up). */
    PGresult *r =
        pg_query(c, &err, "reading the next run time", false,
                 "SELECT min(run_at) - " PG_NOW_MS " FROM jobs WHERE status = 'queued'", "");
    pg_release(s->pool, c);
    int64_t v = 0;
    if (r && !PQgetisnull(r, 0, 0))
        v = util_now_ms() + pg_int(r, 0, 0);
    PQclear(r);
    return v;
}

static int pg_job_counts(struct store *base, int64_t counts[5], struct util_error *err)
{
    struct pg_store *s = S(base);
    for (int i = 0; i < 5; i++)
        counts[i] = 0;
    PGconn *c = pg_acquire(s->pool, err);
    if (c == NULL)
        return -1;
    PGresult *r = pg_query(c, err, "counting jobs", false,
                           "SELECT status, count(*) FROM jobs GROUP BY status", "");
    pg_release(s->pool, c);
    if (r == NULL)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        int k = store_job_status_from_name(PQgetvalue(r, i, 0));
        if (k >= 0)
            counts[k] = pg_int(r, i, 1);
    }
    PQclear(r);
    return 0;
}

static void pg_close(struct store *base)
{
    struct pg_store *s = S(base);
    if (s->listener_started) {
        uint64_t one = 1;
        ssize_t w = write(s->stop_fd, &one, sizeof(one));
        (void)w;
        pthread_join(s->listener, NULL);
    } else if (s->listen_conn) {
        PQfinish(s->listen_conn);
    }
    if (s->stop_fd >= 0)
        close(s->stop_fd);
    pg_pool_free(s->pool);
    store_local_free(s->base.local);
    free(s);
}

static const struct store_ops PG_OPS = {
    .name = "postgres",
    .close = pg_close,
    .migrate = pg_migrate,
    .schema_check = pg_schema_check,
    .ping = pg_ping,
    .image_insert = pg_image_insert,
    .image_get = pg_image_get,
    .image_delete = pg_image_delete,
    .image_list = pg_image_list,
    .blob_referenced = pg_blob_referenced,
    .variant_get = pg_variant_get,
    .variant_put = pg_variant_put,
    .variant_trim = pg_variant_trim,
    .job_enqueue = pg_job_enqueue,
    .job_get = pg_job_get,
    .job_list = pg_job_list,
    .job_claim = pg_job_claim,
    .job_heartbeat = pg_job_heartbeat,
    .job_complete = pg_job_complete,
    .job_fail = pg_job_fail,
    .job_release = pg_job_release,
    .job_cancel = pg_job_cancel,
    .job_rescue = pg_job_rescue,
    .idempotency_expire = pg_idempotency_expire,
    .job_next_run_at = pg_job_next_run_at,
    .job_counts = pg_job_counts,
};

struct store *store_postgres_open(const char *url, int max_connections, struct util_error *err)
{
    struct pg_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    s->base.ops = &PG_OPS;
    s->stop_fd = -1;
    s->base.local = store_local_new();
    if (s->base.local == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    s->pool = pg_pool_new(url, max_connections, err);
    if (s->pool == NULL)
        goto fail;
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (s->stop_fd < 0) {
        util_error_set(err, UTIL_ERR_INTERNAL, "eventfd: %s", strerror(errno));
        goto fail;
    }
    /* LISTEN before returning, so no notification after open is missed. */
    s->listen_conn = listen_connect(url, err);
    if (s->listen_conn == NULL)
        goto fail;
    if (pthread_create(&s->listener, NULL, listener_main, s) != 0) {
        util_error_set(err, UTIL_ERR_INTERNAL, "could not start the listening thread");
        goto fail;
    }
    s->listener_started = true;
    return &s->base;
fail:
    pg_close(&s->base);
    return NULL;
}

struct pg_pool *store_postgres_pool(struct store *base)
{
    return base && base->ops == &PG_OPS ? S(base)->pool : NULL;
}
