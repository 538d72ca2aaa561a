/*
 * Store-level tests for src/store/: metadata (images, variants) and the job
 * queue (DESIGN §3 jobs, §4 the queue), written against store/store.h only,
 * so the same file runs unchanged on every backend.
 *
 * The database is IMAGE_SERVER_TEST_DATABASE (sqlite:PATH, postgres://...,
 * or "pg" for IMAGE_SERVER_TEST_PG_URL, set by scripts/with-postgres). Unset, every test gets a
 * fresh SQLite file in a mkdtemp folder; with sqlite:PATH every test gets its own PATH.N file.
 *
 * Two modes:
 *  - exact (SQLite: a fresh database per test): tests may also assert
 *    global behaviour (the claim order of all jobs, counts of rows).
 *  - shared (PostgreSQL): the database may hold anything left by earlier
 *    runs or other suites. Every test creates its own images and jobs and
 *    asserts only on those: claims go on until one of the test's own jobs
 *    comes out (others are claimed and left to expire), lists are filtered
 *    to its own ids. Nothing else may claim jobs from the database while
 *    this runs (no worker, no second copy of this test): a claim is global,
 *    so another claimer would take the test's jobs.
 *    IMAGE_SERVER_TEST_SHARED=1 with sqlite:PATH runs every test on that
 *    one file in this mode (to check the tests themselves; run it twice).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"
#include "util/util.h"

/* ---- fixture ------------------------------------------------------------ */

static const char SPEC[] = "{\"operations\":[],\"output\":{\"format\":\"png\"}}";

/* A clock tolerance for "about now" checks: loose enough for a database
 * server's clock and a slow sanitizer build, tight enough to catch seconds
 * stored as milliseconds, a missing value or a lost backoff. */
#define TOL_MS 2000

#define BIG_JOBS_MAX 100000000

static struct {
    const char *env;    /* IMAGE_SERVER_TEST_DATABASE or NULL */
    bool shared;        /* PostgreSQL: assert only on our own rows */
    char dir[PATH_MAX]; /* our mkdtemp folder, "" if none */
    int counter;        /* per-test file number */
} g;

struct ctx {
    struct store *s;
    bool exact; /* a fresh database of our own */
    char url[PATH_MAX + 64];
    char path[PATH_MAX + 32]; /* the SQLite file, "" for PostgreSQL */
    struct store_image img;   /* a source image made by setup */
};

/* Fails the test with the store's error unless call returns 0. Uses the
 * `err` in scope. */
#define ASSERT_OK(call)                                                                            \
    do {                                                                                           \
        memset(&err, 0, sizeof(err));                                                              \
        int rc_ = (call);                                                                          \
        if (rc_ != 0)                                                                              \
            fail_msg("%s returned %d: %s: %s", #call, rc_, util_err_name(err.code), err.detail);   \
    } while (0)

/* Asserts call returns -1 with the given error code. */
#define ASSERT_ERR(call, want)                                                                     \
    do {                                                                                           \
        memset(&err, 0, sizeof(err));                                                              \
        int rc_ = (call);                                                                          \
        if (rc_ != -1 || err.code != (want))                                                       \
            fail_msg("%s: want -1 %s, got %d %s (%s)", #call, util_err_name(want), rc_,            \
                     util_err_name(err.code), err.detail);                                         \
    } while (0)

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void assert_about(int64_t got, int64_t want, int64_t tol, const char *what)
{
    if (got < want - tol || got > want + tol)
        fail_msg("%s: %lld is not within %lld ms of %lld", what, (long long)got, (long long)tol,
                 (long long)want);
}

static void unlink_db(const char *path)
{
    char p[PATH_MAX + 64];
    if (path[0] == '\0')
        return;
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-journal", path);
    unlink(p);
}

/* 64 lower-case hex chars, distinct for distinct seeds (a random id). */
static void fake_sha256(char out[STORE_SHA256_HEX + 1])
{
    char id[UTIL_ID_LEN + 1];
    assert_int_equal(util_id_new(id), 0);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x",
                 (unsigned)(unsigned char)(id[i % UTIL_ID_LEN] ^ (i / UTIL_ID_LEN)));
    out[STORE_SHA256_HEX] = '\0';
}

static void fill_image(struct store_image *img, int64_t w, int64_t h)
{
    memset(img, 0, sizeof(*img));
    assert_int_equal(util_id_new(img->id), 0);
    fake_sha256(img->sha256);
    snprintf(img->format, sizeof(img->format), "png");
    img->width = w;
    img->height = h;
    img->pages = 1;
    img->bytes = w * h / 4 + 100;
    img->orientation = 1;
}

static void new_image(struct ctx *c, struct store_image *img)
{
    struct util_error err;
    fill_image(img, 640, 480);
    ASSERT_OK(store_image_insert(c->s, img, &err));
}

static int group_setup(void **state)
{
    (void)state;
    g.env = getenv("IMAGE_SERVER_TEST_DATABASE");
    if (g.env && g.env[0] == '\0')
        g.env = NULL;
    /* "pg": the PostgreSQL that scripts/with-postgres started (make test
     * runs every test under it); its absence is a failure, not a skip. */
    if (g.env && strcmp(g.env, "pg") == 0) {
        g.env = getenv("IMAGE_SERVER_TEST_PG_URL");
        if (g.env == NULL || g.env[0] == '\0') {
            fprintf(stderr, "# IMAGE_SERVER_TEST_PG_URL is not set: run the tests through "
                            "scripts/with-postgres (make test does)\n");
            return -1;
        }
    }
    const char *force = getenv("IMAGE_SERVER_TEST_SHARED");
    g.shared = g.env && (strncmp(g.env, "postgres", 8) == 0 || (force && strcmp(force, "1") == 0));
    if (g.env == NULL) {
        const char *tmp = getenv("TMPDIR");
        snprintf(g.dir, sizeof(g.dir), "%s/test_store_queue.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (mkdtemp(g.dir) == NULL) {
            fprintf(stderr, "# mkdtemp %s: %s\n", g.dir, strerror(errno));
            return -1;
        }
    } else if (!g.shared && strncmp(g.env, "sqlite:", 7) != 0) {
        fprintf(stderr, "# IMAGE_SERVER_TEST_DATABASE is neither sqlite:PATH nor postgres://\n");
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (g.dir[0])
        rmdir(g.dir);
    return 0;
}

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    struct util_error err = {0};
    if (c == NULL)
        return -1;
    g.counter++;
    if (g.shared) {
        snprintf(c->url, sizeof(c->url), "%s", g.env);
    } else {
        if (g.env)
            snprintf(c->path, sizeof(c->path), "%s.%d", g.env + 7, g.counter);
        else
            snprintf(c->path, sizeof(c->path), "%s/t%d.db", g.dir, g.counter);
        unlink_db(c->path);
        snprintf(c->url, sizeof(c->url), "sqlite:%s", c->path);
        c->exact = true;
    }
    c->s = store_open(c->url, &err);
    if (c->s == NULL) {
        fprintf(stderr, "# store_open(%s): %s: %s\n", c->url, util_err_name(err.code), err.detail);
        free(c);
        return -1;
    }
    if (store_migrate(c->s, &err) != 0) {
        fprintf(stderr, "# store_migrate: %s: %s\n", util_err_name(err.code), err.detail);
        store_close(c->s);
        free(c);
        return -1;
    }
    fill_image(&c->img, 640, 480);
    if (store_image_insert(c->s, &c->img, &err) != 0) {
        fprintf(stderr, "# store_image_insert: %s: %s\n", util_err_name(err.code), err.detail);
        store_close(c->s);
        free(c);
        return -1;
    }
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c == NULL)
        return 0;
    store_close(c->s);
    unlink_db(c->path);
    free(c);
    return 0;
}

/* ---- job helpers -------------------------------------------------------- */

static void assert_spec(const char *spec)
{
    json_error_t jerr;
    assert_non_null(spec);
    json_t *want = json_loads(SPEC, 0, &jerr);
    json_t *got = json_loads(spec, 0, &jerr);
    assert_non_null(want);
    if (got == NULL)
        fail_msg("spec is not JSON: %s", spec);
    if (!json_equal(want, got))
        fail_msg("spec changed: %s", spec);
    json_decref(want);
    json_decref(got);
}

/* Fills a new job for image_id and enqueues it. The caller clears *job
 * whatever the outcome. A job owns its spec (heap-allocated, freed by
 * store_job_clear): on an idempotent repeat the store clears *job and
 * fills it with the first job, spec included. */
static int enqueue_raw(struct store *s, const char *image_id, int max_attempts, const char *key,
                       const char *hash, int64_t jobs_max, struct store_job *job, bool *existing,
                       struct util_error *err)
{
    memset(job, 0, sizeof(*job));
    assert_int_equal(util_id_new(job->id), 0);
    snprintf(job->image_id, sizeof(job->image_id), "%s", image_id);
    job->spec = strdup(SPEC);
    assert_non_null(job->spec);
    job->max_attempts = max_attempts;
    memset(err, 0, sizeof(*err));
    return store_job_enqueue(s, job, key, hash, jobs_max, existing, err);
}

/* Enqueues a job on the setup image; *job is the queued job (clear it). */
static void enqueue(struct ctx *c, int max_attempts, struct store_job *job)
{
    struct util_error err;
    bool existing = true;
    int64_t t0 = util_now_ms();
    int rc =
        enqueue_raw(c->s, c->img.id, max_attempts, NULL, NULL, BIG_JOBS_MAX, job, &existing, &err);
    if (rc != 0)
        fail_msg("store_job_enqueue: %s: %s", util_err_name(err.code), err.detail);
    assert_false(existing);
    assert_int_equal(job->status, STORE_JOB_QUEUED);
    assert_int_equal(job->max_attempts, max_attempts);
    assert_true(job->seq > 0);
    assert_about(job->created_at_ms, t0, TOL_MS, "created_at after enqueue");
    assert_about(job->run_at_ms, t0, TOL_MS, "run_at after enqueue");
}

/* Enqueues and keeps only the id. */
static void enqueue_id(struct ctx *c, int max_attempts, char id[UTIL_ID_LEN + 1])
{
    struct store_job job;
    enqueue(c, max_attempts, &job);
    snprintf(id, UTIL_ID_LEN + 1, "%s", job.id);
    store_job_clear(&job);
}

static void get_job(struct ctx *c, const char *id, struct store_job *out)
{
    struct util_error err;
    memset(out, 0, sizeof(*out));
    ASSERT_OK(store_job_get(c->s, id, out, &err));
    assert_string_equal(out->id, id);
}

static enum store_job_status job_status(struct ctx *c, const char *id)
{
    struct store_job j;
    get_job(c, id, &j);
    enum store_job_status st = j.status;
    store_job_clear(&j);
    return st;
}

static bool in_set(const char *id, const char *const *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(id, ids[i]) == 0)
            return true;
    return false;
}

/* Claims until one of ids comes out (other jobs, only possible in a shared
 * database, are claimed and left alone; in exact mode there are none).
 * Returns false when no job of ours is due; *out is filled when true. */
static bool claim_mine(struct ctx *c, const char *owner, int64_t lease_ms, const char *const *ids,
                       int n, struct store_job *out)
{
    struct util_error err;
    for (int i = 0; i < 1000000; i++) {
        bool got = false;
        memset(out, 0, sizeof(*out));
        ASSERT_OK(store_job_claim(c->s, owner, lease_ms, out, &got, &err));
        if (!got)
            return false;
        if (in_set(out->id, ids, n))
            return true;
        if (c->exact)
            fail_msg("claimed job %s, which this test did not expect", out->id);
        store_job_clear(out);
    }
    fail_msg("%s", "claim never ran dry");
    return false;
}

static bool claim_one(struct ctx *c, const char *owner, int64_t lease_ms, const char *id,
                      struct store_job *out)
{
    const char *ids[1] = {id};
    return claim_mine(c, owner, lease_ms, ids, 1, out);
}

/* Claims id (it must be the next job of ours due), checks the claim. */
static void claim_expect(struct ctx *c, const char *owner, int64_t lease_ms, const char *id,
                         int attempt, struct store_job *out)
{
    int64_t t0 = util_now_ms();
    if (!claim_one(c, owner, lease_ms, id, out))
        fail_msg("job %s was not claimed", id);
    assert_string_equal(out->id, id);
    assert_int_equal(out->status, STORE_JOB_RUNNING);
    assert_int_equal(out->attempts, attempt);
    assert_string_equal(out->lease_owner, owner);
    assert_about(out->lease_expires_at_ms, t0 + lease_ms, TOL_MS, "lease_expires_at");
    assert_true(out->started_at_ms > 0);
    assert_int_equal(out->finished_at_ms, 0);
    assert_spec(out->spec);
}

static void claim_id(struct ctx *c, const char *owner, int64_t lease_ms, const char *id,
                     int attempt)
{
    struct store_job j;
    claim_expect(c, owner, lease_ms, id, attempt, &j);
    store_job_clear(&j);
}

/* In exact mode: nothing at all is due. */
static void assert_nothing_due(struct ctx *c)
{
    struct util_error err;
    struct store_job j;
    bool got = true;
    if (!c->exact)
        return;
    memset(&j, 0, sizeof(j));
    ASSERT_OK(store_job_claim(c->s, "probe", 60000, &j, &got, &err));
    if (got)
        fail_msg("claimed %s (attempt %d) though nothing should be due", j.id, j.attempts);
    store_job_clear(&j);
}

/* The fields fencing must leave alone. */
static void assert_same_job(const struct store_job *a, const struct store_job *b)
{
    assert_string_equal(a->id, b->id);
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->attempts, b->attempts);
    assert_string_equal(a->lease_owner, b->lease_owner);
    assert_int_equal(a->lease_expires_at_ms, b->lease_expires_at_ms);
    assert_int_equal(a->run_at_ms, b->run_at_ms);
    assert_string_equal(a->result_image_id, b->result_image_id);
    assert_string_equal(a->error_type, b->error_type);
    assert_string_equal(a->error_detail, b->error_detail);
    assert_int_equal(a->started_at_ms, b->started_at_ms);
    assert_int_equal(a->finished_at_ms, b->finished_at_ms);
}

static void rescue(struct ctx *c, int *requeued, int *failed)
{
    struct util_error err;
    *requeued = *failed = -1;
    ASSERT_OK(store_job_rescue(c->s, requeued, failed, &err));
    assert_true(*requeued >= 0);
    assert_true(*failed >= 0);
}

/* ---- open, migrate, ping ------------------------------------------------ */

static void test_open_migrate_ping(void **state)
{
    struct ctx *c = *state;
    struct util_error err;

    /* setup opened and migrated once: migrating again changes nothing. */
    ASSERT_OK(store_migrate(c->s, &err));
    ASSERT_OK(store_migrate(c->s, &err));
    ASSERT_OK(store_ping(c->s, &err));
    /* The setup image survived the repeated migrations. */
    struct store_image got;
    ASSERT_OK(store_image_get(c->s, c->img.id, &got, &err));

    /* A second handle on the same database migrates as a no-op too. */
    memset(&err, 0, sizeof(err));
    struct store *s2 = store_open(c->url, &err);
    if (s2 == NULL)
        fail_msg("store_open again: %s", err.detail);
    ASSERT_OK(store_migrate(s2, &err));
    ASSERT_OK(store_ping(s2, &err));
    ASSERT_OK(store_image_get(s2, c->img.id, &got, &err));
    assert_string_equal(got.sha256, c->img.sha256);
    store_close(s2);

    /* Not a database URL. */
    memset(&err, 0, sizeof(err));
    assert_null(store_open("mysql://localhost/x", &err));
    assert_int_not_equal(err.code, UTIL_OK);
}

/* ---- images ------------------------------------------------------------- */

/* Pages through the image list (newest first) from just above `top` down to
 * `bottom` and collects the ids among mine, in list order. Also checks the
 * paging itself: every page is newest first and below its cursor. */
static int list_my_images(struct ctx *c, int64_t top, int64_t bottom, int limit,
                          const struct store_image *mine, int nmine, int *order)
{
    struct util_error err;
    struct store_image page[8];
    int found = 0;
    int64_t before = top + 1;
    assert_true(limit <= 8);
    for (;;) {
        int n = -1;
        ASSERT_OK(store_image_list(c->s, before, limit, page, &n, &err));
        assert_true(n >= 0 && n <= limit);
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            assert_true(page[i].seq < before);
            if (i > 0)
                assert_true(page[i].seq < page[i - 1].seq);
            for (int k = 0; k < nmine; k++)
                if (strcmp(page[i].id, mine[k].id) == 0)
                    order[found++] = k;
        }
        before = page[n - 1].seq;
        if (before <= bottom)
            break;
    }
    return found;
}

static void test_images(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    struct store_image im[3], got;

    int64_t t0 = util_now_ms();
    for (int i = 0; i < 3; i++) {
        fill_image(&im[i], 100 + i, 200 + i);
        im[i].pages = 1 + i;
        ASSERT_OK(store_image_insert(c->s, &im[i], &err));
        assert_true(im[i].seq > 0);
        if (i > 0)
            assert_true(im[i].seq > im[i - 1].seq);
        assert_about(im[i].created_at_ms, t0, TOL_MS, "image created_at");
    }
    assert_true(im[0].seq > c->img.seq);

    /* Round trip. */
    for (int i = 0; i < 3; i++) {
        memset(&got, 0x55, sizeof(got));
        ASSERT_OK(store_image_get(c->s, im[i].id, &got, &err));
        assert_string_equal(got.id, im[i].id);
        assert_string_equal(got.sha256, im[i].sha256);
        assert_string_equal(got.format, "png");
        assert_int_equal(got.width, 100 + i);
        assert_int_equal(got.height, 200 + i);
        assert_int_equal(got.pages, 1 + i);
        assert_int_equal(got.bytes, im[i].bytes);
        assert_false(got.has_alpha);
        assert_int_equal(got.orientation, 1);
        assert_string_equal(got.icc, "");
        assert_int_equal(got.seq, im[i].seq);
        assert_int_equal(got.created_at_ms, im[i].created_at_ms);
    }

    /* Newest first, paged by seq, in both modes. */
    int order[8];
    for (int limit = 1; limit <= 4; limit++) {
        int n = list_my_images(c, im[2].seq, im[0].seq, limit, im, 3, order);
        assert_int_equal(n, 3);
        assert_int_equal(order[0], 2);
        assert_int_equal(order[1], 1);
        assert_int_equal(order[2], 0);
    }
    if (c->exact) {
        struct store_image page[8];
        int n = -1;
        ASSERT_OK(store_image_list(c->s, 0, 8, page, &n, &err));
        assert_int_equal(n, 4);
        assert_string_equal(page[0].id, im[2].id);
        assert_string_equal(page[1].id, im[1].id);
        assert_string_equal(page[2].id, im[0].id);
        assert_string_equal(page[3].id, c->img.id);
        ASSERT_OK(store_image_list(c->s, 0, 2, page, &n, &err));
        assert_int_equal(n, 2);
        assert_string_equal(page[0].id, im[2].id);
        assert_string_equal(page[1].id, im[1].id);
        ASSERT_OK(store_image_list(c->s, page[1].seq, 2, page, &n, &err));
        assert_int_equal(n, 2);
        assert_string_equal(page[0].id, im[0].id);
        assert_string_equal(page[1].id, c->img.id);
        ASSERT_OK(store_image_list(c->s, page[1].seq, 2, page, &n, &err));
        assert_int_equal(n, 0);
    }

    /* Delete the middle one. */
    ASSERT_OK(store_image_delete(c->s, im[1].id, &err));
    ASSERT_ERR(store_image_get(c->s, im[1].id, &got, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_image_delete(c->s, im[1].id, &err), UTIL_ERR_NOT_FOUND);
    int n = list_my_images(c, im[2].seq, im[0].seq, 2, im, 3, order);
    assert_int_equal(n, 2);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 0);
    ASSERT_OK(store_image_get(c->s, im[0].id, &got, &err));
    ASSERT_OK(store_image_get(c->s, im[2].id, &got, &err));

    /* Unknown ids. */
    char unknown[UTIL_ID_LEN + 1];
    assert_int_equal(util_id_new(unknown), 0);
    ASSERT_ERR(store_image_get(c->s, unknown, &got, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_image_delete(c->s, unknown, &err), UTIL_ERR_NOT_FOUND);

    /* The same id twice is refused (ids are unique). */
    struct store_image dup = im[0];
    memset(&err, 0, sizeof(err));
    assert_int_not_equal(store_image_insert(c->s, &dup, &err), 0);
}

/* ---- variants ----------------------------------------------------------- */

static void fill_variant(struct store_variant *v, const char *image_id, const char *plan,
                         int64_t bytes, int64_t created_at_ms)
{
    memset(v, 0, sizeof(*v));
    snprintf(v->image_id, sizeof(v->image_id), "%s", image_id);
    v->plan = plan;
    fake_sha256(v->sha256);
    snprintf(v->format, sizeof(v->format), "webp");
    v->width = 80;
    v->height = 60;
    v->bytes = bytes;
    v->created_at_ms = created_at_ms;
}

static bool referenced(struct ctx *c, const char *sha)
{
    struct util_error err;
    bool r = false;
    ASSERT_OK(store_blob_referenced(c->s, sha, &r, &err));
    return r;
}

static void test_variants(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    struct store_image img;
    struct store_variant v1, v2, v1b, got;

    new_image(c, &img);
    fill_variant(&v1, img.id, "w=100", 1234, 0);
    fill_variant(&v2, img.id, "w=200&format=png", 5678, 0);
    ASSERT_ERR(store_variant_get(c->s, img.id, "w=100", &got, &err), UTIL_ERR_NOT_FOUND);
    int64_t t0 = util_now_ms();
    ASSERT_OK(store_variant_put(c->s, &v1, &err));
    ASSERT_OK(store_variant_put(c->s, &v2, &err));

    memset(&got, 0, sizeof(got));
    ASSERT_OK(store_variant_get(c->s, img.id, "w=100", &got, &err));
    assert_string_equal(got.image_id, img.id);
    assert_string_equal(got.sha256, v1.sha256);
    assert_string_equal(got.format, "webp");
    assert_int_equal(got.width, 80);
    assert_int_equal(got.height, 60);
    assert_int_equal(got.bytes, 1234);
    assert_about(got.created_at_ms, t0, TOL_MS, "variant created_at");
    assert_true(got.last_used_ms >= got.created_at_ms - 1000);
    ASSERT_OK(store_variant_get(c->s, img.id, "w=200&format=png", &got, &err));
    assert_string_equal(got.sha256, v2.sha256);
    assert_int_equal(got.bytes, 5678);
    /* Another plan, or the same plan of another image, is not cached. */
    ASSERT_ERR(store_variant_get(c->s, img.id, "w=300", &got, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_variant_get(c->s, c->img.id, "w=100", &got, &err), UTIL_ERR_NOT_FOUND);

    /* blob references: the image, each variant, and nothing else. */
    char other[STORE_SHA256_HEX + 1];
    fake_sha256(other);
    assert_true(referenced(c, img.sha256));
    assert_true(referenced(c, v1.sha256));
    assert_true(referenced(c, v2.sha256));
    assert_false(referenced(c, other));

    /* Putting the same key again replaces the row. */
    fill_variant(&v1b, img.id, "w=100", 999, 0);
    ASSERT_OK(store_variant_put(c->s, &v1b, &err));
    ASSERT_OK(store_variant_get(c->s, img.id, "w=100", &got, &err));
    assert_string_equal(got.sha256, v1b.sha256);
    assert_int_equal(got.bytes, 999);
    assert_false(referenced(c, v1.sha256));
    assert_true(referenced(c, v1b.sha256));

    /* Deleting the image deletes its variants. */
    ASSERT_OK(store_image_delete(c->s, img.id, &err));
    ASSERT_ERR(store_variant_get(c->s, img.id, "w=100", &got, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_variant_get(c->s, img.id, "w=200&format=png", &got, &err), UTIL_ERR_NOT_FOUND);
    assert_false(referenced(c, img.sha256));
    assert_false(referenced(c, v1b.sha256));
    assert_false(referenced(c, v2.sha256));

    /* A variant of a deleted (or never stored) image is not recorded. */
    struct store_variant late;
    fill_variant(&late, img.id, "w=50", 10, 0);
    ASSERT_ERR(store_variant_put(c->s, &late, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_variant_get(c->s, img.id, "w=50", &got, &err), UTIL_ERR_NOT_FOUND);
    assert_false(referenced(c, late.sha256));

    /* Two images sharing one blob: the blob stays referenced until both go. */
    struct store_image a, b;
    new_image(c, &a);
    fill_image(&b, 10, 10);
    snprintf(b.sha256, sizeof(b.sha256), "%s", a.sha256);
    ASSERT_OK(store_image_insert(c->s, &b, &err));
    ASSERT_OK(store_image_delete(c->s, a.id, &err));
    assert_true(referenced(c, a.sha256));
    ASSERT_OK(store_image_delete(c->s, b.id, &err));
    assert_false(referenced(c, a.sha256));
}

/* LRU eviction. The variants are stamped far in the future so they are the
 * most recently used rows of the whole table even in a shared database: the
 * budget then keeps ours, in our order, whatever else is cached. */
static void test_variant_trim_lru(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    struct store_image img;
    struct store_variant va, vb, vc, got;
    int evicted = -1;

    new_image(c, &img);
    int64_t base = util_now_ms() + 100LL * 24 * 3600 * 1000;
    base -= base % 1000;
    fill_variant(&va, img.id, "plan-a", 100, base);
    fill_variant(&vb, img.id, "plan-b", 100, base + 10000);
    fill_variant(&vc, img.id, "plan-c", 100, base + 20000);
    ASSERT_OK(store_variant_put(c->s, &va, &err));
    ASSERT_OK(store_variant_put(c->s, &vb, &err));
    ASSERT_OK(store_variant_put(c->s, &vc, &err));

    if (c->exact) {
        /* Within budget: nothing goes, touches or not. */
        ASSERT_OK(store_variant_trim(c->s, 300, &evicted, &err));
        assert_int_equal(evicted, 0);
        ASSERT_OK(store_variant_trim(c->s, INT64_MAX / 2, &evicted, &err));
        assert_int_equal(evicted, 0);
    }

    /* a is served last: b is now the least recently used. */
    store_variant_touch(c->s, img.id, "plan-a", base + 30000);
    ASSERT_OK(store_variant_trim(c->s, 250, &evicted, &err));
    if (c->exact)
        assert_int_equal(evicted, 1);
    else
        assert_true(evicted >= 1);
    ASSERT_OK(store_variant_get(c->s, img.id, "plan-a", &got, &err));
    assert_true(got.last_used_ms >= base + 29000);
    ASSERT_ERR(store_variant_get(c->s, img.id, "plan-b", &got, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_OK(store_variant_get(c->s, img.id, "plan-c", &got, &err));
    assert_false(referenced(c, vb.sha256));
    assert_true(referenced(c, va.sha256));

    /* Room for one: a (touched) stays, c goes. */
    ASSERT_OK(store_variant_trim(c->s, 100, &evicted, &err));
    if (c->exact)
        assert_int_equal(evicted, 1);
    ASSERT_OK(store_variant_get(c->s, img.id, "plan-a", &got, &err));
    ASSERT_ERR(store_variant_get(c->s, img.id, "plan-c", &got, &err), UTIL_ERR_NOT_FOUND);

    /* Touching an evicted or unknown variant is harmless. */
    store_variant_touch(c->s, img.id, "plan-c", base + 40000);
    store_variant_touch(c->s, img.id, "never-made", base + 40000);
    ASSERT_OK(store_variant_trim(c->s, 100, &evicted, &err));
    if (c->exact)
        assert_int_equal(evicted, 0);
    ASSERT_ERR(store_variant_get(c->s, img.id, "plan-c", &got, &err), UTIL_ERR_NOT_FOUND);

    /* A budget of 0 empties the cache. */
    ASSERT_OK(store_variant_trim(c->s, 0, &evicted, &err));
    assert_true(evicted >= 1);
    ASSERT_ERR(store_variant_get(c->s, img.id, "plan-a", &got, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_OK(store_image_get(c->s, img.id, &(struct store_image){0}, &err));
}

/* ---- enqueue ------------------------------------------------------------ */

static void test_enqueue(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    struct store_job job, got;

    if (c->exact)
        assert_int_equal(store_job_next_run_at(c->s), 0);
    enqueue(c, 3, &job);
    get_job(c, job.id, &got);
    assert_string_equal(got.image_id, c->img.id);
    assert_spec(got.spec);
    assert_int_equal(got.status, STORE_JOB_QUEUED);
    assert_int_equal(got.attempts, 0);
    assert_int_equal(got.max_attempts, 3);
    assert_string_equal(got.lease_owner, "");
    assert_int_equal(got.lease_expires_at_ms, 0);
    assert_int_equal(got.run_at_ms, job.run_at_ms);
    assert_string_equal(got.result_image_id, "");
    assert_string_equal(got.error_type, "");
    assert_string_equal(got.error_detail, "");
    assert_int_equal(got.created_at_ms, job.created_at_ms);
    assert_int_equal(got.started_at_ms, 0);
    assert_int_equal(got.finished_at_ms, 0);
    assert_int_equal(got.seq, job.seq);
    int64_t next = store_job_next_run_at(c->s);
    if (c->exact)
        assert_int_equal(next, job.run_at_ms);
    else
        assert_true(next > 0 && next <= job.run_at_ms);
    store_job_clear(&got);

    /* store_job_clear frees the spec and zeroes the job. */
    assert_null(got.spec);
    assert_string_equal(got.id, "");

    /* An unknown image: 404, nothing queued. */
    struct store_job bad;
    bool existing = false;
    char unknown[UTIL_ID_LEN + 1];
    assert_int_equal(util_id_new(unknown), 0);
    int rc = enqueue_raw(c->s, unknown, 3, NULL, NULL, BIG_JOBS_MAX, &bad, &existing, &err);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_job_get(c->s, bad.id, &got, &err), UTIL_ERR_NOT_FOUND);
    store_job_clear(&bad);

    /* A deleted image is unknown too. */
    struct store_image gone;
    new_image(c, &gone);
    ASSERT_OK(store_image_delete(c->s, gone.id, &err));
    rc = enqueue_raw(c->s, gone.id, 3, NULL, NULL, BIG_JOBS_MAX, &bad, &existing, &err);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_job_get(c->s, bad.id, &got, &err), UTIL_ERR_NOT_FOUND);
    store_job_clear(&bad);

    /* An unknown job id. */
    ASSERT_ERR(store_job_get(c->s, unknown, &got, &err), UTIL_ERR_NOT_FOUND);

    if (c->exact) {
        struct store_job list[4];
        int n = -1;
        ASSERT_OK(store_job_list(c->s, -1, 0, 4, list, &n, &err));
        assert_int_equal(n, 1);
        assert_string_equal(list[0].id, job.id);
        store_job_clear(&list[0]);
    }
    store_job_clear(&job);
}

static void test_enqueue_jobs_max(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    struct store_job job, got;
    bool existing = false;
    char first[UTIL_ID_LEN + 1];

    /* One job of ours is queued, so a limit of 1 is reached whatever else
     * the database holds. */
    enqueue_id(c, 3, first);
    int rc = enqueue_raw(c->s, c->img.id, 3, NULL, NULL, 1, &job, &existing, &err);
    if (rc != -1 || err.code != UTIL_ERR_OVERLOADED)
        fail_msg("enqueue past jobs_max: %d %s (%s)", rc, util_err_name(err.code), err.detail);
    ASSERT_ERR(store_job_get(c->s, job.id, &got, &err), UTIL_ERR_NOT_FOUND);
    store_job_clear(&job);
    /* The one already accepted is untouched. */
    assert_int_equal(job_status(c, first), STORE_JOB_QUEUED);

    if (c->exact) {
        /* Exactly jobs_max: 1 queued + 2 more fit under 3, the 4th does not. */
        for (int i = 0; i < 2; i++) {
            rc = enqueue_raw(c->s, c->img.id, 3, NULL, NULL, 3, &job, &existing, &err);
            if (rc != 0)
                fail_msg("enqueue %d under jobs_max: %s (%s)", i, util_err_name(err.code),
                         err.detail);
            store_job_clear(&job);
        }
        rc = enqueue_raw(c->s, c->img.id, 3, NULL, NULL, 3, &job, &existing, &err);
        assert_int_equal(rc, -1);
        assert_int_equal(err.code, UTIL_ERR_OVERLOADED);
        store_job_clear(&job);
        struct store_job list[8];
        int n = -1;
        ASSERT_OK(store_job_list(c->s, -1, 0, 8, list, &n, &err));
        assert_int_equal(n, 3);
        for (int i = 0; i < n; i++)
            store_job_clear(&list[i]);
    }
}

/* ---- claim -------------------------------------------------------------- */

static void test_claim_order(void **state)
{
    struct ctx *c = *state;
    char a[UTIL_ID_LEN + 1], b[UTIL_ID_LEN + 1], d[UTIL_ID_LEN + 1];
    struct store_job j;

    enqueue_id(c, 3, a);
    sleep_ms(3);
    enqueue_id(c, 3, b);
    sleep_ms(3);
    enqueue_id(c, 3, d);
    const char *mine[3] = {a, b, d};

    /* Oldest run_at first. */
    const char *want[3] = {a, b, d};
    for (int i = 0; i < 3; i++) {
        if (!claim_mine(c, "w1", 60000, mine, 3, &j))
            fail_msg("claim %d: none due", i);
        assert_string_equal(j.id, want[i]);
        assert_int_equal(j.attempts, 1);
        assert_int_equal(j.status, STORE_JOB_RUNNING);
        assert_string_equal(j.lease_owner, "w1");
        store_job_clear(&j);
        /* The claim is durable: the job reads back running. */
        get_job(c, want[i], &j);
        assert_int_equal(j.status, STORE_JOB_RUNNING);
        assert_int_equal(j.attempts, 1);
        assert_string_equal(j.lease_owner, "w1");
        assert_true(j.started_at_ms > 0);
        store_job_clear(&j);
    }
    assert_false(claim_mine(c, "w1", 60000, mine, 3, &j));
    assert_nothing_due(c);
    if (c->exact)
        assert_int_equal(store_job_next_run_at(c->s), 0);
}

/* The order is by run_at, not by age: a retried job whose backoff ended
 * after a newer job became due comes after it. */
static void test_claim_order_run_at(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char x[UTIL_ID_LEN + 1], y[UTIL_ID_LEN + 1];
    struct store_job j;

    enqueue_id(c, 3, x);
    claim_id(c, "w1", 60000, x, 1);
    /* x comes back after 300 ms; y is queued now and is due at once. */
    ASSERT_OK(store_job_fail(c->s, x, "w1", 1, true, 300, "/problems/timeout", "slow", &err));
    enqueue_id(c, 3, y);
    sleep_ms(450);
    const char *mine[2] = {x, y};
    assert_true(claim_mine(c, "w2", 60000, mine, 2, &j));
    assert_string_equal(j.id, y);
    assert_int_equal(j.attempts, 1);
    store_job_clear(&j);
    assert_true(claim_mine(c, "w2", 60000, mine, 2, &j));
    assert_string_equal(j.id, x);
    assert_int_equal(j.attempts, 2);
    store_job_clear(&j);
    assert_nothing_due(c);
}

/* Jobs in the future (backoff) are not claimed; next_run_at tells when. */
static void test_claim_not_before_run_at(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char jid[UTIL_ID_LEN + 1], k[UTIL_ID_LEN + 1];
    struct store_job j;

    enqueue_id(c, 3, jid);
    claim_id(c, "w1", 60000, jid, 1);
    int64_t t0 = util_now_ms();
    ASSERT_OK(store_job_fail(c->s, jid, "w1", 1, true, 60000, "/problems/timeout", "took too long",
                             &err));
    int64_t t1 = util_now_ms();
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_QUEUED);
    assert_int_equal(j.attempts, 1);
    if (j.run_at_ms < t0 + 60000 - TOL_MS || j.run_at_ms > t1 + 60000 + TOL_MS)
        fail_msg("run_at %lld is not now + 60 s (now %lld)", (long long)j.run_at_ms, (long long)t0);
    assert_string_equal(j.error_type, "/problems/timeout");
    assert_string_equal(j.error_detail, "took too long");
    assert_int_equal(j.finished_at_ms, 0);
    assert_string_equal(j.result_image_id, "");
    int64_t run_at = j.run_at_ms;
    store_job_clear(&j);

    /* Not claimable before it is due. */
    assert_false(claim_one(c, "w2", 60000, jid, &j));
    assert_nothing_due(c);
    assert_int_equal(job_status(c, jid), STORE_JOB_QUEUED);
    int64_t next = store_job_next_run_at(c->s);
    if (c->exact)
        assert_int_equal(next, run_at);
    else
        assert_true(next > 0 && next <= run_at);

    /* A short backoff: not due at once, due after it. */
    enqueue_id(c, 3, k);
    claim_id(c, "w1", 60000, k, 1);
    ASSERT_OK(store_job_fail(c->s, k, "w1", 1, true, 150, "/problems/unavailable",
                             "database hiccup", &err));
    get_job(c, k, &j);
    int64_t k_run_at = j.run_at_ms;
    store_job_clear(&j);
    next = store_job_next_run_at(c->s);
    if (c->exact)
        assert_int_equal(next, k_run_at);
    else
        assert_true(next > 0 && next <= k_run_at);
    if (util_now_ms() < k_run_at - 20)
        assert_false(claim_one(c, "w2", 60000, k, &j));
    sleep_ms(300);
    claim_id(c, "w2", 60000, k, 2);
    /* The 60 s one is still waiting. */
    assert_false(claim_one(c, "w2", 60000, jid, &j));
    assert_int_equal(job_status(c, jid), STORE_JOB_QUEUED);
    if (c->exact)
        assert_int_equal(store_job_next_run_at(c->s), run_at);
}

/* ---- concurrent claimers ----------------------------------------------- */

#define NCLAIM_JOBS    50
#define NCLAIM_THREADS 4
#define CLAIM_CAP      4096

struct claimer {
    struct store *s;
    pthread_barrier_t *start;
    char owner[32];
    int n;                        /* claims recorded */
    int dropped;                  /* claims past CLAIM_CAP */
    char (*ids)[UTIL_ID_LEN + 1]; /* CLAIM_CAP entries */
    int attempts[CLAIM_CAP];
    char owners[CLAIM_CAP][64];
    int errors;
    struct util_error err;
};

static void *claimer_main(void *arg)
{
    struct claimer *cl = arg;
    pthread_barrier_wait(cl->start);
    for (;;) {
        struct store_job j;
        bool got = false;
        struct util_error err = {0};
        memset(&j, 0, sizeof(j));
        if (store_job_claim(cl->s, cl->owner, 60000, &j, &got, &err) != 0) {
            cl->errors++;
            cl->err = err;
            break;
        }
        if (!got)
            break;
        if (cl->n < CLAIM_CAP) {
            snprintf(cl->ids[cl->n], UTIL_ID_LEN + 1, "%s", j.id);
            cl->attempts[cl->n] = j.attempts;
            snprintf(cl->owners[cl->n], sizeof(cl->owners[0]), "%s", j.lease_owner);
            cl->n++;
        } else {
            cl->dropped++;
        }
        store_job_clear(&j);
    }
    return NULL;
}

static void test_claim_concurrent(void **state)
{
    struct ctx *c = *state;
    static char ids[NCLAIM_JOBS][UTIL_ID_LEN + 1];
    static struct claimer cls[NCLAIM_THREADS];
    pthread_t th[NCLAIM_THREADS];
    pthread_barrier_t start;

    for (int i = 0; i < NCLAIM_JOBS; i++)
        enqueue_id(c, 3, ids[i]);
    pthread_barrier_init(&start, NULL, NCLAIM_THREADS);
    for (int t = 0; t < NCLAIM_THREADS; t++) {
        memset(&cls[t], 0, sizeof(cls[t]));
        cls[t].s = c->s;
        cls[t].start = &start;
        snprintf(cls[t].owner, sizeof(cls[t].owner), "claimer-%d", t);
        cls[t].ids = calloc(CLAIM_CAP, UTIL_ID_LEN + 1);
        assert_non_null(cls[t].ids);
        assert_int_equal(pthread_create(&th[t], NULL, claimer_main, &cls[t]), 0);
    }
    for (int t = 0; t < NCLAIM_THREADS; t++)
        pthread_join(th[t], NULL);
    pthread_barrier_destroy(&start);

    int total = 0;
    for (int t = 0; t < NCLAIM_THREADS; t++) {
        if (cls[t].errors)
            fail_msg("%s: claim failed: %s: %s", cls[t].owner, util_err_name(cls[t].err.code),
                     cls[t].err.detail);
        assert_int_equal(cls[t].dropped, 0);
        total += cls[t].n;
        for (int i = 0; i < cls[t].n; i++)
            assert_string_equal(cls[t].owners[i], cls[t].owner);
    }
    if (c->exact)
        assert_int_equal(total, NCLAIM_JOBS);
    /* Each of our jobs exactly once, as attempt 1, held by its claimer. */
    for (int i = 0; i < NCLAIM_JOBS; i++) {
        int seen = 0, by = -1;
        for (int t = 0; t < NCLAIM_THREADS; t++)
            for (int k = 0; k < cls[t].n; k++)
                if (strcmp(cls[t].ids[k], ids[i]) == 0) {
                    seen++;
                    by = t;
                    assert_int_equal(cls[t].attempts[k], 1);
                }
        if (seen != 1)
            fail_msg("job %d (%s) was claimed %d times", i, ids[i], seen);
        struct store_job j;
        get_job(c, ids[i], &j);
        assert_int_equal(j.status, STORE_JOB_RUNNING);
        assert_int_equal(j.attempts, 1);
        assert_string_equal(j.lease_owner, cls[by].owner);
        store_job_clear(&j);
    }
    for (int t = 0; t < NCLAIM_THREADS; t++)
        free(cls[t].ids);
    assert_nothing_due(c);
}

/* ---- leases, rescue, fencing ------------------------------------------- */

static void test_heartbeat(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char jid[UTIL_ID_LEN + 1];
    struct store_job j, before, after;
    bool held = false;
    int requeued, failed;

    enqueue_id(c, 3, jid);
    claim_id(c, "w1", 200, jid, 1);
    int64_t t0 = util_now_ms();
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w1", 1, 60000, &held, &err));
    assert_true(held);
    get_job(c, jid, &j);
    assert_about(j.lease_expires_at_ms, t0 + 60000, TOL_MS, "lease after heartbeat");
    store_job_clear(&j);

    /* Past the first lease: the heartbeat kept it, rescue leaves it. */
    sleep_ms(400);
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 0);
        assert_int_equal(failed, 0);
    }
    get_job(c, jid, &before);
    assert_int_equal(before.status, STORE_JOB_RUNNING);
    assert_string_equal(before.lease_owner, "w1");

    /* Someone else, or an old attempt number, does not hold it; the lease
     * is unchanged. */
    held = true;
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w2", 1, 1, &held, &err));
    assert_false(held);
    held = true;
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w1", 2, 1, &held, &err));
    assert_false(held);
    char unknown[UTIL_ID_LEN + 1];
    assert_int_equal(util_id_new(unknown), 0);
    held = true;
    memset(&err, 0, sizeof(err));
    int rc = store_job_heartbeat(c->s, unknown, "w1", 1, 1000, &held, &err);
    assert_true(rc == 0 || (rc == -1 && err.code == UTIL_ERR_NOT_FOUND));
    if (rc == 0)
        assert_false(held);
    get_job(c, jid, &after);
    assert_same_job(&before, &after);
    store_job_clear(&before);
    store_job_clear(&after);
    held = false;
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w1", 1, 60000, &held, &err));
    assert_true(held);
}

static void test_lease_expiry_rescue_fencing(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char jid[UTIL_ID_LEN + 1];
    struct store_job j, before, after;
    bool held = true;
    int requeued, failed;

    enqueue_id(c, 3, jid);
    claim_expect(c, "w1", 1, jid, 1, &j);
    int64_t started = j.started_at_ms;
    store_job_clear(&j);
    sleep_ms(20);

    /* The lease expired: the sweeper puts the job back. */
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 1);
        assert_int_equal(failed, 0);
    } else {
        assert_true(requeued >= 1);
    }
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_QUEUED);
    assert_int_equal(j.attempts, 1);
    assert_int_equal(j.finished_at_ms, 0);
    store_job_clear(&j);
    /* Idempotent: a second sweep finds nothing. */
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 0);
        assert_int_equal(failed, 0);
    }
    assert_int_equal(job_status(c, jid), STORE_JOB_QUEUED);

    /* Another worker takes it over: attempt 2. started_at is the first
     * claim's. */
    claim_expect(c, "w2", 60000, jid, 2, &j);
    assert_int_equal(j.started_at_ms, started);
    store_job_clear(&j);

    /* Fencing: w1 lost the lease. */
    get_job(c, jid, &before);
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w1", 1, 60000, &held, &err));
    assert_false(held);
    struct store_image stale;
    fill_image(&stale, 32, 32);
    ASSERT_ERR(store_job_complete(c->s, jid, "w1", 1, &stale, &err), UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_job_fail(c->s, jid, "w1", 1, true, 0, "/problems/internal", "stale", &err),
               UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_job_fail(c->s, jid, "w1", 1, false, 0, "/problems/internal", "stale", &err),
               UTIL_ERR_CONFLICT);
    /* The right owner with the wrong attempt is fenced too. */
    ASSERT_ERR(store_job_complete(c->s, jid, "w2", 1, &stale, &err), UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_job_fail(c->s, jid, "w2", 3, false, 0, "/problems/internal", "x", &err),
               UTIL_ERR_CONFLICT);
    get_job(c, jid, &after);
    assert_same_job(&before, &after);
    store_job_clear(&before);
    store_job_clear(&after);
    struct store_image img;
    ASSERT_ERR(store_image_get(c->s, stale.id, &img, &err), UTIL_ERR_NOT_FOUND);

    /* The new owner still holds it and completes. */
    held = false;
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w2", 2, 60000, &held, &err));
    assert_true(held);
    struct store_image result;
    fill_image(&result, 300, 200);
    snprintf(result.format, sizeof(result.format), "webp");
    int64_t t0 = util_now_ms();
    ASSERT_OK(store_job_complete(c->s, jid, "w2", 2, &result, &err));
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_SUCCEEDED);
    assert_int_equal(j.attempts, 2);
    assert_string_equal(j.result_image_id, result.id);
    assert_about(j.finished_at_ms, t0, TOL_MS, "finished_at");
    assert_string_equal(j.error_type, "");
    assert_spec(j.spec);
    store_job_clear(&j);
    memset(&img, 0, sizeof(img));
    ASSERT_OK(store_image_get(c->s, result.id, &img, &err));
    assert_string_equal(img.sha256, result.sha256);
    assert_string_equal(img.format, "webp");
    assert_int_equal(img.width, 300);
    assert_int_equal(img.height, 200);
    assert_true(img.seq > 0);
    assert_true(img.created_at_ms > 0);
    assert_true(referenced(c, result.sha256));

    /* Finished: nobody holds it any more, nothing changes it. */
    get_job(c, jid, &before);
    ASSERT_OK(store_job_heartbeat(c->s, jid, "w2", 2, 60000, &held, &err));
    assert_false(held);
    struct store_image again;
    fill_image(&again, 1, 1);
    ASSERT_ERR(store_job_complete(c->s, jid, "w2", 2, &again, &err), UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_job_fail(c->s, jid, "w2", 2, false, 0, "/problems/internal", "late", &err),
               UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_image_get(c->s, again.id, &img, &err), UTIL_ERR_NOT_FOUND);
    rescue(c, &requeued, &failed);
    get_job(c, jid, &after);
    assert_same_job(&before, &after);
    store_job_clear(&before);
    store_job_clear(&after);
}

/* A restarted worker may reuse its name: the attempt number still fences
 * the old incarnation. */
static void test_fencing_same_owner(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char jid[UTIL_ID_LEN + 1];
    bool held = true;
    int requeued, failed;

    enqueue_id(c, 3, jid);
    claim_id(c, "worker", 1, jid, 1);
    sleep_ms(20);
    rescue(c, &requeued, &failed);
    claim_id(c, "worker", 60000, jid, 2);
    ASSERT_OK(store_job_heartbeat(c->s, jid, "worker", 1, 60000, &held, &err));
    assert_false(held);
    struct store_image stale;
    fill_image(&stale, 8, 8);
    ASSERT_ERR(store_job_complete(c->s, jid, "worker", 1, &stale, &err), UTIL_ERR_CONFLICT);
    struct store_image img;
    ASSERT_ERR(store_image_get(c->s, stale.id, &img, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_OK(store_job_fail(c->s, jid, "worker", 2, false, 0, "/problems/invalid-image", "corrupt",
                             &err));
    struct store_job j;
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_FAILED);
    assert_string_equal(j.error_type, "/problems/invalid-image");
    assert_string_equal(j.error_detail, "corrupt");
    assert_true(j.finished_at_ms > 0);
    store_job_clear(&j);
}

/* ---- failures ----------------------------------------------------------- */

static void test_fail_no_retry(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char jid[UTIL_ID_LEN + 1];
    struct store_job j;

    /* A bad image fails at once, attempts left or not. */
    enqueue_id(c, 3, jid);
    claim_id(c, "w1", 60000, jid, 1);
    int64_t t0 = util_now_ms();
    ASSERT_OK(store_job_fail(c->s, jid, "w1", 1, false, 60000, "/problems/invalid-image",
                             "truncated PNG", &err));
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_FAILED);
    assert_int_equal(j.attempts, 1);
    assert_string_equal(j.error_type, "/problems/invalid-image");
    assert_string_equal(j.error_detail, "truncated PNG");
    assert_about(j.finished_at_ms, t0, TOL_MS, "finished_at");
    assert_string_equal(j.result_image_id, "");
    store_job_clear(&j);
    assert_false(claim_one(c, "w2", 60000, jid, &j));
    assert_nothing_due(c);
    if (c->exact)
        assert_int_equal(store_job_next_run_at(c->s), 0);
}

static void test_max_attempts_fail(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char jid[UTIL_ID_LEN + 1];
    struct store_job j;

    enqueue_id(c, 2, jid);
    claim_id(c, "w1", 60000, jid, 1);
    ASSERT_OK(store_job_fail(c->s, jid, "w1", 1, true, 0, "/problems/timeout", "first", &err));
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_QUEUED);
    assert_int_equal(j.finished_at_ms, 0);
    store_job_clear(&j);
    claim_id(c, "w2", 60000, jid, 2);
    int64_t t0 = util_now_ms();
    /* Retry asked, but that was the last attempt. */
    ASSERT_OK(store_job_fail(c->s, jid, "w2", 2, true, 0, "/problems/timeout", "second", &err));
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_FAILED);
    assert_int_equal(j.attempts, 2);
    assert_int_equal(j.max_attempts, 2);
    assert_string_equal(j.error_type, "/problems/timeout");
    assert_string_equal(j.error_detail, "second");
    assert_about(j.finished_at_ms, t0, TOL_MS, "finished_at");
    store_job_clear(&j);
    assert_false(claim_one(c, "w3", 60000, jid, &j));
    assert_nothing_due(c);
}

static void test_max_attempts_rescue(void **state)
{
    struct ctx *c = *state;
    char jid[UTIL_ID_LEN + 1];
    struct store_job j;
    int requeued, failed;

    enqueue_id(c, 2, jid);
    claim_id(c, "w1", 1, jid, 1);
    sleep_ms(20);
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 1);
        assert_int_equal(failed, 0);
    }
    assert_int_equal(job_status(c, jid), STORE_JOB_QUEUED);
    claim_id(c, "w2", 1, jid, 2);
    sleep_ms(20);
    int64_t t0 = util_now_ms();
    /* The last attempt's lease expired: failed, not queued. */
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 0);
        assert_int_equal(failed, 1);
    } else {
        assert_true(failed >= 1);
    }
    get_job(c, jid, &j);
    assert_int_equal(j.status, STORE_JOB_FAILED);
    assert_int_equal(j.attempts, 2);
    assert_about(j.finished_at_ms, t0, TOL_MS, "finished_at");
    /* A failed job says why (DESIGN §3: error is {type, detail}). */
    if (strncmp(j.error_type, "/problems/", 10) != 0)
        fail_msg("error_type after the last lease expired: '%s'", j.error_type);
    store_job_clear(&j);
    assert_false(claim_one(c, "w3", 60000, jid, &j));
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 0);
        assert_int_equal(failed, 0);
    }
    assert_int_equal(job_status(c, jid), STORE_JOB_FAILED);

    /* max_attempts = 1: the first expiry is final. */
    enqueue_id(c, 1, jid);
    claim_id(c, "w1", 1, jid, 1);
    sleep_ms(20);
    rescue(c, &requeued, &failed);
    if (c->exact)
        assert_int_equal(failed, 1);
    assert_int_equal(job_status(c, jid), STORE_JOB_FAILED);
}

/* ---- cancel ------------------------------------------------------------- */

static void test_cancel(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char q[UTIL_ID_LEN + 1], r[UTIL_ID_LEN + 1], s[UTIL_ID_LEN + 1], f[UTIL_ID_LEN + 1];
    char x[UTIL_ID_LEN + 1];
    struct store_job out, j;
    bool held = true;
    int requeued, failed;

    /* Queued -> canceled at once, never claimed. */
    enqueue_id(c, 3, q);
    int64_t t0 = util_now_ms();
    memset(&out, 0, sizeof(out));
    ASSERT_OK(store_job_cancel(c->s, q, &out, &err));
    assert_string_equal(out.id, q);
    assert_int_equal(out.status, STORE_JOB_CANCELED);
    assert_about(out.finished_at_ms, t0, TOL_MS, "finished_at of a canceled job");
    store_job_clear(&out);
    get_job(c, q, &j);
    assert_int_equal(j.status, STORE_JOB_CANCELED);
    assert_true(j.finished_at_ms > 0);
    assert_int_equal(j.attempts, 0);
    store_job_clear(&j);
    assert_false(claim_one(c, "w1", 60000, q, &j));
    assert_nothing_due(c);

    /* Running -> canceled; the worker learns at its heartbeat and its
     * completion is fenced out: no result stored. */
    enqueue_id(c, 3, r);
    claim_id(c, "w1", 60000, r, 1);
    t0 = util_now_ms();
    memset(&out, 0, sizeof(out));
    ASSERT_OK(store_job_cancel(c->s, r, &out, &err));
    assert_int_equal(out.status, STORE_JOB_CANCELED);
    assert_about(out.finished_at_ms, t0, TOL_MS, "finished_at of a canceled job");
    store_job_clear(&out);
    ASSERT_OK(store_job_heartbeat(c->s, r, "w1", 1, 60000, &held, &err));
    assert_false(held);
    struct store_image result, img;
    fill_image(&result, 10, 10);
    ASSERT_ERR(store_job_complete(c->s, r, "w1", 1, &result, &err), UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_image_get(c->s, result.id, &img, &err), UTIL_ERR_NOT_FOUND);
    ASSERT_ERR(store_job_fail(c->s, r, "w1", 1, true, 0, "/problems/timeout", "x", &err),
               UTIL_ERR_CONFLICT);
    get_job(c, r, &j);
    assert_int_equal(j.status, STORE_JOB_CANCELED);
    assert_string_equal(j.result_image_id, "");
    assert_true(j.finished_at_ms > 0);
    store_job_clear(&j);
    assert_false(claim_one(c, "w2", 60000, r, &j));

    /* Canceled again: 409, the job still returned. */
    memset(&out, 0, sizeof(out));
    ASSERT_ERR(store_job_cancel(c->s, q, &out, &err), UTIL_ERR_CONFLICT);
    assert_string_equal(out.id, q);
    assert_int_equal(out.status, STORE_JOB_CANCELED);
    store_job_clear(&out);

    /* Succeeded: 409, unchanged. */
    enqueue_id(c, 3, s);
    claim_id(c, "w1", 60000, s, 1);
    fill_image(&result, 10, 10);
    ASSERT_OK(store_job_complete(c->s, s, "w1", 1, &result, &err));
    memset(&out, 0, sizeof(out));
    ASSERT_ERR(store_job_cancel(c->s, s, &out, &err), UTIL_ERR_CONFLICT);
    assert_string_equal(out.id, s);
    assert_int_equal(out.status, STORE_JOB_SUCCEEDED);
    assert_string_equal(out.result_image_id, result.id);
    store_job_clear(&out);
    assert_int_equal(job_status(c, s), STORE_JOB_SUCCEEDED);

    /* Failed: 409, unchanged. */
    enqueue_id(c, 3, f);
    claim_id(c, "w1", 60000, f, 1);
    ASSERT_OK(store_job_fail(c->s, f, "w1", 1, false, 0, "/problems/invalid-image", "bad", &err));
    memset(&out, 0, sizeof(out));
    ASSERT_ERR(store_job_cancel(c->s, f, &out, &err), UTIL_ERR_CONFLICT);
    assert_string_equal(out.id, f);
    assert_int_equal(out.status, STORE_JOB_FAILED);
    assert_string_equal(out.error_type, "/problems/invalid-image");
    store_job_clear(&out);
    assert_int_equal(job_status(c, f), STORE_JOB_FAILED);

    /* Unknown. */
    char unknown[UTIL_ID_LEN + 1];
    assert_int_equal(util_id_new(unknown), 0);
    memset(&out, 0, sizeof(out));
    ASSERT_ERR(store_job_cancel(c->s, unknown, &out, &err), UTIL_ERR_NOT_FOUND);
    store_job_clear(&out);

    /* A canceled job whose lease then expires stays canceled. */
    enqueue_id(c, 3, x);
    claim_id(c, "w1", 1, x, 1);
    memset(&out, 0, sizeof(out));
    ASSERT_OK(store_job_cancel(c->s, x, &out, &err));
    store_job_clear(&out);
    sleep_ms(20);
    rescue(c, &requeued, &failed);
    if (c->exact) {
        assert_int_equal(requeued, 0);
        assert_int_equal(failed, 0);
    }
    get_job(c, x, &j);
    assert_int_equal(j.status, STORE_JOB_CANCELED);
    store_job_clear(&j);
    assert_nothing_due(c);
}

/* ---- idempotency keys --------------------------------------------------- */

static void test_idempotency(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    char key[64], key2[64], key3[64], rnd[UTIL_ID_LEN + 1];
    struct store_job j1, j2, j3, got;
    bool existing = true;

    assert_int_equal(util_id_new(rnd), 0);
    snprintf(key, sizeof(key), "key-%s", rnd);
    snprintf(key2, sizeof(key2), "key2-%s", rnd);
    snprintf(key3, sizeof(key3), "key3-%s", rnd);

    assert_int_equal(
        enqueue_raw(c->s, c->img.id, 3, key, "hash-1", BIG_JOBS_MAX, &j1, &existing, &err), 0);
    assert_false(existing);
    assert_int_equal(j1.status, STORE_JOB_QUEUED);

    /* Same key, same request: the first job, no second one. */
    existing = false;
    int rc = enqueue_raw(c->s, c->img.id, 3, key, "hash-1", BIG_JOBS_MAX, &j2, &existing, &err);
    if (rc != 0)
        fail_msg("repeat: %s: %s", util_err_name(err.code), err.detail);
    assert_true(existing);
    assert_string_equal(j2.id, j1.id);
    assert_int_equal(j2.seq, j1.seq);
    assert_int_equal(j2.status, STORE_JOB_QUEUED);
    assert_string_equal(j2.image_id, c->img.id);
    store_job_clear(&j2);

    /* A repeat answers the job as it is now. */
    claim_id(c, "w1", 60000, j1.id, 1);
    existing = false;
    rc = enqueue_raw(c->s, c->img.id, 3, key, "hash-1", BIG_JOBS_MAX, &j2, &existing, &err);
    assert_int_equal(rc, 0);
    assert_true(existing);
    assert_string_equal(j2.id, j1.id);
    assert_int_equal(j2.status, STORE_JOB_RUNNING);
    assert_int_equal(j2.attempts, 1);
    store_job_clear(&j2);

    /* Same key, another request: conflict, nothing queued. */
    rc = enqueue_raw(c->s, c->img.id, 3, key, "hash-2", BIG_JOBS_MAX, &j3, &existing, &err);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, UTIL_ERR_CONFLICT);
    ASSERT_ERR(store_job_get(c->s, j3.id, &got, &err), UTIL_ERR_NOT_FOUND);
    store_job_clear(&j3);

    if (c->exact) {
        struct store_job list[4];
        int n = -1;
        ASSERT_OK(store_job_list(c->s, -1, 0, 4, list, &n, &err));
        assert_int_equal(n, 1);
        assert_string_equal(list[0].id, j1.id);
        store_job_clear(&list[0]);
    }

    /* Another key is another job. */
    assert_int_equal(
        enqueue_raw(c->s, c->img.id, 3, key2, "hash-1", BIG_JOBS_MAX, &j3, &existing, &err), 0);
    assert_false(existing);
    assert_string_not_equal(j3.id, j1.id);
    store_job_clear(&j3);

    /* A key whose enqueue failed (unknown image) is not taken. */
    char unknown[UTIL_ID_LEN + 1];
    assert_int_equal(util_id_new(unknown), 0);
    rc = enqueue_raw(c->s, unknown, 3, key3, "hash-1", BIG_JOBS_MAX, &j3, &existing, &err);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, UTIL_ERR_NOT_FOUND);
    store_job_clear(&j3);
    existing = true;
    assert_int_equal(
        enqueue_raw(c->s, c->img.id, 3, key3, "hash-9", BIG_JOBS_MAX, &j3, &existing, &err), 0);
    assert_false(existing);
    store_job_clear(&j3);

    /* Expiry respects its cutoff: keys made just now are kept... */
    int n = -1;
    ASSERT_OK(store_idempotency_expire(c->s, util_now_ms() - 3600 * 1000, &n, &err));
    if (c->exact)
        assert_int_equal(n, 0);
    rc = enqueue_raw(c->s, c->img.id, 3, key, "hash-2", BIG_JOBS_MAX, &j3, &existing, &err);
    assert_int_equal(rc, -1);
    assert_int_equal(err.code, UTIL_ERR_CONFLICT);
    store_job_clear(&j3);

    /* ...and a cutoff in the future drops them: the key is free again. */
    ASSERT_OK(store_idempotency_expire(c->s, util_now_ms() + 1000, &n, &err));
    if (c->exact)
        assert_int_equal(n, 3);
    else
        assert_true(n >= 3);
    existing = true;
    rc = enqueue_raw(c->s, c->img.id, 3, key, "hash-2", BIG_JOBS_MAX, &j3, &existing, &err);
    if (rc != 0)
        fail_msg("key reuse after expiry: %s: %s", util_err_name(err.code), err.detail);
    assert_false(existing);
    assert_string_not_equal(j3.id, j1.id);
    get_job(c, j3.id, &got);
    assert_int_equal(got.status, STORE_JOB_QUEUED);
    store_job_clear(&got);
    store_job_clear(&j3);
    /* The first job is untouched by the expiry. */
    assert_int_equal(job_status(c, j1.id), STORE_JOB_RUNNING);
    store_job_clear(&j1);
}

/* ---- listing ------------------------------------------------------------ */

/* Pages through job_list(status) from above `top` down to `bottom`,
 * collecting our ids (indexes into ids) in list order. */
static int list_my_jobs(struct ctx *c, int status, int64_t top, int64_t bottom, int limit,
                        char (*ids)[UTIL_ID_LEN + 1], int nids, int *order)
{
    struct util_error err;
    struct store_job page[8];
    int found = 0;
    int64_t before = top + 1;
    assert_true(limit <= 8);
    for (;;) {
        int n = -1;
        memset(page, 0, sizeof(page));
        ASSERT_OK(store_job_list(c->s, status, before, limit, page, &n, &err));
        assert_true(n >= 0 && n <= limit);
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            assert_true(page[i].seq < before);
            if (i > 0)
                assert_true(page[i].seq < page[i - 1].seq);
            if (status >= 0)
                assert_int_equal(page[i].status, status);
            for (int k = 0; k < nids; k++)
                if (strcmp(page[i].id, ids[k]) == 0) {
                    order[found++] = k;
                    assert_string_equal(page[i].image_id, c->img.id);
                    assert_spec(page[i].spec);
                }
        }
        before = page[n - 1].seq;
        for (int i = 0; i < n; i++)
            store_job_clear(&page[i]);
        if (before <= bottom)
            break;
    }
    return found;
}

static void test_job_list(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    static char ids[5][UTIL_ID_LEN + 1];
    int64_t seq[5];
    struct store_job j, out;
    int order[16];

    for (int i = 0; i < 5; i++) {
        enqueue(c, 3, &j);
        snprintf(ids[i], sizeof(ids[i]), "%s", j.id);
        seq[i] = j.seq;
        if (i > 0)
            assert_true(seq[i] > seq[i - 1]);
        store_job_clear(&j);
        sleep_ms(2);
    }
    /* 0 running, 1 canceled, 2..4 queued. */
    claim_id(c, "w1", 60000, ids[0], 1);
    memset(&out, 0, sizeof(out));
    ASSERT_OK(store_job_cancel(c->s, ids[1], &out, &err));
    store_job_clear(&out);

    for (int limit = 1; limit <= 3; limit++) {
        int n = list_my_jobs(c, -1, seq[4], seq[0], limit, ids, 5, order);
        assert_int_equal(n, 5);
        for (int i = 0; i < 5; i++)
            assert_int_equal(order[i], 4 - i);
        n = list_my_jobs(c, STORE_JOB_QUEUED, seq[4], seq[0], limit, ids, 5, order);
        assert_int_equal(n, 3);
        assert_int_equal(order[0], 4);
        assert_int_equal(order[1], 3);
        assert_int_equal(order[2], 2);
        n = list_my_jobs(c, STORE_JOB_RUNNING, seq[4], seq[0], limit, ids, 5, order);
        assert_int_equal(n, 1);
        assert_int_equal(order[0], 0);
        n = list_my_jobs(c, STORE_JOB_CANCELED, seq[4], seq[0], limit, ids, 5, order);
        assert_int_equal(n, 1);
        assert_int_equal(order[0], 1);
        n = list_my_jobs(c, STORE_JOB_SUCCEEDED, seq[4], seq[0], limit, ids, 5, order);
        assert_int_equal(n, 0);
    }

    if (c->exact) {
        struct store_job page[8];
        int n = -1;
        ASSERT_OK(store_job_list(c->s, -1, 0, 8, page, &n, &err));
        assert_int_equal(n, 5);
        for (int i = 0; i < n; i++) {
            assert_string_equal(page[i].id, ids[4 - i]);
            store_job_clear(&page[i]);
        }
        ASSERT_OK(store_job_list(c->s, -1, 0, 2, page, &n, &err));
        assert_int_equal(n, 2);
        assert_string_equal(page[0].id, ids[4]);
        assert_string_equal(page[1].id, ids[3]);
        int64_t cur = page[1].seq;
        store_job_clear(&page[0]);
        store_job_clear(&page[1]);
        ASSERT_OK(store_job_list(c->s, -1, cur, 2, page, &n, &err));
        assert_int_equal(n, 2);
        assert_string_equal(page[0].id, ids[2]);
        assert_string_equal(page[1].id, ids[1]);
        assert_int_equal(page[1].status, STORE_JOB_CANCELED);
        cur = page[1].seq;
        store_job_clear(&page[0]);
        store_job_clear(&page[1]);
        ASSERT_OK(store_job_list(c->s, -1, cur, 2, page, &n, &err));
        assert_int_equal(n, 1);
        assert_string_equal(page[0].id, ids[0]);
        assert_int_equal(page[0].status, STORE_JOB_RUNNING);
        assert_string_equal(page[0].lease_owner, "w1");
        cur = page[0].seq;
        store_job_clear(&page[0]);
        ASSERT_OK(store_job_list(c->s, -1, cur, 2, page, &n, &err));
        assert_int_equal(n, 0);
        ASSERT_OK(store_job_list(c->s, STORE_JOB_QUEUED, 0, 2, page, &n, &err));
        assert_int_equal(n, 2);
        assert_string_equal(page[0].id, ids[4]);
        assert_string_equal(page[1].id, ids[3]);
        cur = page[1].seq;
        store_job_clear(&page[0]);
        store_job_clear(&page[1]);
        ASSERT_OK(store_job_list(c->s, STORE_JOB_QUEUED, cur, 2, page, &n, &err));
        assert_int_equal(n, 1);
        assert_string_equal(page[0].id, ids[2]);
        store_job_clear(&page[0]);
        ASSERT_OK(store_job_list(c->s, STORE_JOB_FAILED, 0, 2, page, &n, &err));
        assert_int_equal(n, 0);
    }
}

static void test_status_names(void **state)
{
    static const struct {
        enum store_job_status st;
        const char *name;
    } want[] = {
        {STORE_JOB_QUEUED, "queued"},       {STORE_JOB_RUNNING, "running"},
        {STORE_JOB_SUCCEEDED, "succeeded"}, {STORE_JOB_FAILED, "failed"},
        {STORE_JOB_CANCELED, "canceled"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const char *name = store_job_status_name(want[i].st);
        assert_non_null(name);
        assert_string_equal(name, want[i].name);
        assert_int_equal(store_job_status_from_name(name), (int)want[i].st);
    }
    assert_int_equal(store_job_status_from_name("bogus"), -1);
    assert_int_equal(store_job_status_from_name(""), -1);
    assert_int_equal(store_job_status_from_name("Queued"), -1);
    assert_int_equal(store_job_status_from_name("cancelled"), -1);
}

/* ---- waiting ------------------------------------------------------------ */

enum { ACT_ENQUEUE, ACT_WAKE };

struct delayed {
    struct ctx *c;
    int action;
    int64_t delay_ms;
    int rc;
    struct util_error err;
    char id[UTIL_ID_LEN + 1];
};

static void *delayed_main(void *arg)
{
    struct delayed *d = arg;
    sleep_ms(d->delay_ms);
    if (d->action == ACT_ENQUEUE) {
        struct store_job j;
        bool existing = false;
        d->rc =
            enqueue_raw(d->c->s, d->c->img.id, 3, NULL, NULL, BIG_JOBS_MAX, &j, &existing, &d->err);
        snprintf(d->id, sizeof(d->id), "%s", j.id);
        store_job_clear(&j);
    } else {
        store_job_wake(d->c->s);
        d->rc = 0;
    }
    return NULL;
}

static int64_t wait_for(struct ctx *c, int action, int64_t delay_ms, int64_t timeout_ms,
                        struct delayed *d)
{
    pthread_t th;
    memset(d, 0, sizeof(*d));
    d->c = c;
    d->action = action;
    d->delay_ms = delay_ms;
    assert_int_equal(pthread_create(&th, NULL, delayed_main, d), 0);
    int64_t t0 = util_monotonic_ms();
    store_job_wait(c->s, store_job_signals(c->s), timeout_ms);
    int64_t dt = util_monotonic_ms() - t0;
    pthread_join(th, NULL);
    return dt;
}

static void test_wait_enqueue(void **state)
{
    struct ctx *c = *state;
    struct delayed d;

    int64_t dt = wait_for(c, ACT_ENQUEUE, 100, 5000, &d);
    if (d.rc != 0)
        fail_msg("enqueue from a thread: %s: %s", util_err_name(d.err.code), d.err.detail);
    if (dt >= 1000)
        fail_msg("store_job_wait(5000) took %lld ms after an enqueue at 100 ms", (long long)dt);
    /* It waited for the enqueue (nothing else could wake a fresh store). */
    if (c->exact && dt < 80)
        fail_msg("store_job_wait returned after %lld ms, before the enqueue", (long long)dt);
    assert_int_equal(job_status(c, d.id), STORE_JOB_QUEUED);
}

static void test_wait_wake(void **state)
{
    struct ctx *c = *state;
    struct delayed d;

    int64_t dt = wait_for(c, ACT_WAKE, 100, 5000, &d);
    if (dt >= 1000)
        fail_msg("store_job_wait(5000) took %lld ms after store_job_wake at 100 ms", (long long)dt);
    if (c->exact && dt < 80)
        fail_msg("store_job_wait returned after %lld ms, before the wake", (long long)dt);
}

static void test_wait_timeout(void **state)
{
    struct ctx *c = *state;

    int64_t t0 = util_monotonic_ms();
    store_job_wait(c->s, store_job_signals(c->s), 300);
    int64_t dt = util_monotonic_ms() - t0;
    if (dt >= 3000)
        fail_msg("store_job_wait(300) took %lld ms", (long long)dt);
    /* Nothing happens in a fresh store: it sleeps (no busy polling). */
    if (c->exact && dt < 250)
        fail_msg("store_job_wait(300) returned after %lld ms with nothing to wake it",
                 (long long)dt);
}

/* ---- finished-job callback ---------------------------------------------- */

#define DONE_CAP 256

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    int dropped;
    char ids[DONE_CAP][UTIL_ID_LEN + 1];
} g_done = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {{0}}};

static void on_done(const char *job_id, void *arg)
{
    int *magic = arg;
    pthread_mutex_lock(&g_done.mu);
    if (magic == NULL || *magic != 4242 || job_id == NULL)
        g_done.dropped++;
    else if (g_done.n < DONE_CAP)
        snprintf(g_done.ids[g_done.n++], UTIL_ID_LEN + 1, "%s", job_id);
    else
        g_done.dropped++;
    pthread_cond_broadcast(&g_done.cv);
    pthread_mutex_unlock(&g_done.mu);
}

static int done_count_locked(const char *id)
{
    int k = 0;
    for (int i = 0; i < g_done.n; i++)
        if (strcmp(g_done.ids[i], id) == 0)
            k++;
    return k;
}

static int done_count(const char *id)
{
    pthread_mutex_lock(&g_done.mu);
    int k = done_count_locked(id);
    pthread_mutex_unlock(&g_done.mu);
    return k;
}

/* Waits up to 3 s for the callback about id (it may run on another thread). */
static void wait_done(const char *id, const char *what)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 3;
    pthread_mutex_lock(&g_done.mu);
    while (done_count_locked(id) == 0) {
        if (pthread_cond_timedwait(&g_done.cv, &g_done.mu, &ts) == ETIMEDOUT)
            break;
    }
    int k = done_count_locked(id);
    pthread_mutex_unlock(&g_done.mu);
    if (k == 0)
        fail_msg("no job-done callback for %s (%s)", id, what);
}

static void test_on_job_done(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    static int magic = 4242;
    char r[UTIL_ID_LEN + 1], cc[UTIL_ID_LEN + 1], w[UTIL_ID_LEN + 1], e[UTIL_ID_LEN + 1];
    char q[UTIL_ID_LEN + 1];
    struct store_job out;
    int requeued, failed;

    pthread_mutex_lock(&g_done.mu);
    g_done.n = 0;
    g_done.dropped = 0;
    pthread_mutex_unlock(&g_done.mu);
    store_on_job_done(c->s, on_done, &magic);

    enqueue_id(c, 3, r);
    sleep_ms(2);
    enqueue_id(c, 3, cc);
    sleep_ms(2);
    enqueue_id(c, 3, w);
    sleep_ms(2);
    enqueue_id(c, 1, e);
    sleep_ms(2);
    enqueue_id(c, 3, q);

    /* Canceled while queued. */
    memset(&out, 0, sizeof(out));
    ASSERT_OK(store_job_cancel(c->s, q, &out, &err));
    store_job_clear(&out);
    wait_done(q, "cancel of a queued job");

    /* A retry is not an end: no callback. */
    claim_id(c, "w1", 60000, r, 1);
    ASSERT_OK(store_job_fail(c->s, r, "w1", 1, true, 0, "/problems/timeout", "retry", &err));

    /* Succeeded. */
    claim_id(c, "w1", 60000, cc, 1);
    struct store_image result;
    fill_image(&result, 5, 5);
    ASSERT_OK(store_job_complete(c->s, cc, "w1", 1, &result, &err));
    wait_done(cc, "complete");

    /* Canceled while running; the fenced complete adds nothing. */
    claim_id(c, "w1", 60000, w, 1);
    memset(&out, 0, sizeof(out));
    ASSERT_OK(store_job_cancel(c->s, w, &out, &err));
    store_job_clear(&out);
    wait_done(w, "cancel of a running job");
    fill_image(&result, 5, 5);
    ASSERT_ERR(store_job_complete(c->s, w, "w1", 1, &result, &err), UTIL_ERR_CONFLICT);

    /* Failed by the sweeper (last attempt's lease expired). */
    claim_id(c, "w1", 1, e, 1);
    sleep_ms(20);
    rescue(c, &requeued, &failed);
    assert_int_equal(job_status(c, e), STORE_JOB_FAILED);
    wait_done(e, "rescue to failed");

    /* r: its retry comes up now (queued after the others), fails for good. */
    claim_id(c, "w2", 60000, r, 2);
    ASSERT_OK(store_job_fail(c->s, r, "w2", 2, false, 0, "/problems/invalid-image", "bad", &err));
    wait_done(r, "final fail");

    /* Late callbacks have had time to show up: each job exactly once. */
    sleep_ms(200);
    assert_int_equal(done_count(q), 1);
    assert_int_equal(done_count(cc), 1);
    assert_int_equal(done_count(w), 1);
    assert_int_equal(done_count(e), 1);
    assert_int_equal(done_count(r), 1);
    pthread_mutex_lock(&g_done.mu);
    int n = g_done.n, dropped = g_done.dropped;
    pthread_mutex_unlock(&g_done.mu);
    assert_int_equal(dropped, 0);
    if (c->exact)
        assert_int_equal(n, 5);
}

/* ---- jobs and deleted images ------------------------------------------- */

/* A job's source or result image can be deleted like any image; the job
 * stays readable. */
static void test_delete_images_of_jobs(void **state)
{
    struct ctx *c = *state;
    struct util_error err;
    struct store_image src, result, img;
    struct store_job job, j;
    bool existing = false;

    new_image(c, &src);
    assert_int_equal(enqueue_raw(c->s, src.id, 3, NULL, NULL, BIG_JOBS_MAX, &job, &existing, &err),
                     0);
    claim_id(c, "w1", 60000, job.id, 1);
    fill_image(&result, 20, 20);
    ASSERT_OK(store_job_complete(c->s, job.id, "w1", 1, &result, &err));
    ASSERT_OK(store_image_get(c->s, result.id, &img, &err));

    ASSERT_OK(store_image_delete(c->s, src.id, &err));
    ASSERT_OK(store_image_delete(c->s, result.id, &err));
    get_job(c, job.id, &j);
    assert_int_equal(j.status, STORE_JOB_SUCCEEDED);
    assert_string_equal(j.image_id, src.id);
    store_job_clear(&j);
    store_job_clear(&job);

    /* A queued job whose source is deleted is still claimable (the worker
     * then fails it as not found). */
    new_image(c, &src);
    assert_int_equal(enqueue_raw(c->s, src.id, 3, NULL, NULL, BIG_JOBS_MAX, &job, &existing, &err),
                     0);
    ASSERT_OK(store_image_delete(c->s, src.id, &err));
    claim_id(c, "w1", 60000, job.id, 1);
    ASSERT_OK(store_job_fail(c->s, job.id, "w1", 1, false, 0, "/problems/not-found",
                             "the source image was deleted", &err));
    assert_int_equal(job_status(c, job.id), STORE_JOB_FAILED);
    store_job_clear(&job);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_open_migrate_ping),
        T(test_images),
        T(test_variants),
        T(test_variant_trim_lru),
        T(test_enqueue),
        T(test_enqueue_jobs_max),
        T(test_claim_order),
        T(test_claim_order_run_at),
        T(test_claim_not_before_run_at),
        T(test_claim_concurrent),
        T(test_heartbeat),
        T(test_lease_expiry_rescue_fencing),
        T(test_fencing_same_owner),
        T(test_fail_no_retry),
        T(test_max_attempts_fail),
        T(test_max_attempts_rescue),
        T(test_cancel),
        T(test_idempotency),
        T(test_job_list),
        T(test_status_names),
        T(test_wait_enqueue),
        T(test_wait_wake),
        T(test_wait_timeout),
        T(test_on_job_done),
        T(test_delete_images_of_jobs),
    };
#undef T

    return cmocka_run_group_tests_name("store_queue", tests, group_setup, group_teardown);
}
