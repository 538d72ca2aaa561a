/*
 * Job workers (worker.h, DESIGN §4): N threads claim jobs with a lease, run
 * their plan, store the result as an ordinary image and complete the job;
 * one heartbeat thread renews every lease every third of its length and
 * tells a worker to stop when its lease is gone (canceled, or expired and
 * taken over): the libvips work is killed and nothing is stored.
 *
 * Errors are classified: an invalid plan or image fails the job at once; a
 * timeout, a storage error or anything unexpected is retried after
 * min(2^attempt s, 5 min) with full jitter, up to max_attempts.
 */
#include <glib.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ops/ops.h"
#include "worker/worker.h"

#define MAX_BACKOFF_MS (5 * 60 * 1000)
#define IDLE_POLL_MS   1000 /* safety net: wake-ups come from the store */

/* A job being processed, as the heartbeat thread sees it. */
struct active {
    char id[UTIL_ID_LEN + 1];
    int attempt;
    volatile int lost; /* 1: the lease is gone, store nothing; 2: the process stops */
    bool busy;         /* slot in use */
};

struct worker_jobs {
    struct worker_jobs_config cfg;
    pthread_t *threads;
    int nthreads;
    pthread_t heartbeat;
    pthread_mutex_t lock;  /* guards active[] and stop */
    pthread_cond_t cv;     /* heartbeat sleep, idle workers at stop */
    struct active *active; /* one slot per worker thread */
    bool stop;
    char owner[64]; /* this process's lease owner prefix */
    int running;    /* jobs being processed */
};

struct thread_arg {
    struct worker_jobs *w;
    int index;
};

/* Uniform random in [0, n) from getrandom(2) (DESIGN §5: no rand()). */
static int64_t random_below(int64_t n)
{
    uint64_t r = 0;
    if (n <= 0 || getrandom(&r, sizeof(r), 0) != sizeof(r))
        return 0;
    return (int64_t)(r % (uint64_t)n);
}

int64_t worker_backoff_ms(int attempt)
{
    int64_t cap = attempt >= 19 ? MAX_BACKOFF_MS : (int64_t)1000 << attempt;
    if (cap > MAX_BACKOFF_MS)
        cap = MAX_BACKOFF_MS;
    return random_below(cap + 1); /* full jitter */
}

static bool retryable(enum util_err code)
{
    switch (code) {
    case UTIL_ERR_INVALID_OPERATION:
    case UTIL_ERR_NOT_FOUND:
    case UTIL_ERR_UNSUPPORTED:
    case UTIL_ERR_INVALID_IMAGE:
    case UTIL_ERR_TOO_LARGE:
        return false;
    default:
        return true;
    }
}

static const char *problem_type(enum util_err code)
{
    switch (code) {
    case UTIL_ERR_INVALID_OPERATION:
        return "/problems/invalid-operation";
    case UTIL_ERR_NOT_FOUND:
        return "/problems/not-found";
    case UTIL_ERR_UNSUPPORTED:
        return "/problems/unsupported-media-type";
    case UTIL_ERR_INVALID_IMAGE:
        return "/problems/invalid-image";
    case UTIL_ERR_TOO_LARGE:
        return "/problems/image-too-large";
    case UTIL_ERR_TIMEOUT:
        return "/problems/timeout";
    case UTIL_ERR_UNAVAILABLE:
        return "/problems/unavailable";
    default:
        return "/problems/internal";
    }
}

/* Sleeps ms, or less once the job is lost (fenced, or the stop deadline
 * passed): false then. */
static bool sleep_unless_lost(const struct active *a, int64_t ms)
{
    for (int64_t end = util_monotonic_ms() + ms; a->lost == 0;) {
        int64_t left = end - util_monotonic_ms();
        if (left <= 0)
            return true;
        struct timespec ts = {0, (left < 50 ? left : 50) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* Runs the job's plan; on success fills *result (its blob is durable). */
static int run_job(struct worker_jobs *w, struct store_job *job, struct active *a,
                   struct store_image *result, struct ops_result *out_res, struct util_error *err)
{
    int rc = -1;
    json_t *spec = NULL;
    struct blob_data src = {.fd = -1};
    struct ops_result res = {0};
    struct ops_plan plan;
    json_error_t jerr;
    spec = json_loads(job->spec, JSON_REJECT_DUPLICATES, &jerr);
    if (spec == NULL) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "the stored job is not JSON: %s",
                       jerr.text);
        goto out;
    }
    if (ops_parse_json(json_object_get(spec, "operations"), json_object_get(spec, "output"), &plan,
                       err) != 0)
        goto out;
    struct store_image src_img;
    if (store_image_get(w->cfg.store, job->image_id, &src_img, err) != 0)
        goto out;
    if (blob_get_mem(w->cfg.blobs, src_img.sha256, &src, err) != 0) {
        if (err->code == UTIL_ERR_NOT_FOUND)
            util_error_set(err, UTIL_ERR_UNAVAILABLE, "the source image's bytes are missing");
        goto out;
    }
    /* The stored bytes were accepted once; if they changed on disk, say so
     * (a corrupt source is a permanent failure, not worth a retry). */
    char sum[65];
    blob_sha256_hex(src.mem, src.size, sum);
    if (strcmp(sum, src_img.sha256) != 0) {
        util_error_set(err, UTIL_ERR_INVALID_IMAGE,
                       "the stored image is corrupt (its bytes no longer match their sha256)");
        goto out;
    }
    struct ops_limits limits = w->cfg.limits;
    limits.cancel = &a->lost;
    if (ops_execute(src.mem, src.size, &plan, NULL, &limits, &res, err) != 0) {
        if (err->code == UTIL_ERR_UNSUPPORTED)
            err->code = UTIL_ERR_INVALID_IMAGE; /* it was an image when stored */
        goto out;
    }
    if (a->lost) {
        util_error_set(err, UTIL_ERR_CONFLICT, "the work was stopped");
        goto out;
    }
    memset(result, 0, sizeof(*result));
    if (util_id_new(result->id) != 0) {
        util_error_set(err, UTIL_ERR_INTERNAL, "no randomness for an id");
        goto out;
    }
    blob_sha256_hex(res.buf, res.len, result->sha256);
    g_strlcpy(result->format, res.format, sizeof(result->format));
    result->width = res.width;
    result->height = res.height;
    result->pages = res.pages;
    result->bytes = (int64_t)res.len;
    result->has_alpha = res.has_alpha;
    result->orientation = 1;
    if (blob_put(w->cfg.blobs, result->sha256, res.buf, res.len, err) != 0)
        goto out;
    rc = 0;
    *out_res = res; /* the caller keeps the bytes until the row is in */
    res.buf = NULL;
out:
    json_decref(spec);
    blob_data_free(&src);
    g_free(res.buf);
    return rc;
}

static void process(struct worker_jobs *w, struct active *a, struct store_job *job,
                    const char *owner)
{
    int64_t t0 = util_monotonic_us();
    struct util_error err = {0};
    struct store_image result;
    const char *outcome;
    struct ops_result res = {0};
    if (run_job(w, job, a, &result, &res, &err) == 0) {
        struct util_error cerr = {0};
        int crc = store_job_complete(w->cfg.store, job->id, owner, job->attempts, &result, &cerr);
        /* The work is done and its blob durable: a database that is away
         * for a moment (a restart, a fail-over) should not cost the job an
         * attempt. Completing is fenced, so trying again is safe; half the
         * lease bounds it (the heartbeat keeps the lease meanwhile), and a
         * lost lease or the stop deadline ends it. */
        int64_t deadline = util_monotonic_ms() + w->cfg.lease_ms / 2;
        for (int64_t pause = 250; crc != 0 && cerr.code == UTIL_ERR_UNAVAILABLE &&
                                  util_monotonic_ms() + pause < deadline;
             pause *= 2) {
            if (!sleep_unless_lost(a, pause))
                break;
            memset(&cerr, 0, sizeof(cerr));
            crc = store_job_complete(w->cfg.store, job->id, owner, job->attempts, &result, &cerr);
        }
        if (crc == 0) {
            outcome = "succeeded";
            /* Like an upload (DESIGN §5): the blob must outlive its row. A
             * sweep that ran while the row was not in yet (a long outage,
             * a short --blob-grace) may have taken it: write it again. */
            bool exists = true;
            struct util_error berr = {0};
            if (blob_exists(w->cfg.blobs, result.sha256, &exists, &berr) == 0 && !exists &&
                blob_put(w->cfg.blobs, result.sha256, res.buf, res.len, &berr) != 0)
                util_error("job %s: its result's bytes are missing and could not be written "
                           "again: %s",
                           job->id, berr.detail);
        } else if (a->lost == 2 && cerr.code != UTIL_ERR_CONFLICT) {
            /* The stop deadline passed while the database was away. */
            struct util_error ferr = {0};
            store_job_release(w->cfg.store, job->id, owner, job->attempts, &ferr);
            outcome = "released";
        } else if (cerr.code == UTIL_ERR_CONFLICT) {
            /* Fenced: canceled or taken over. Its blob is left to the sweeper. */
            outcome = "fenced";
        } else {
            /* The result could not be recorded: retry the job. */
            struct util_error ferr = {0};
            store_job_fail(w->cfg.store, job->id, owner, job->attempts, true,
                           worker_backoff_ms(job->attempts), "/problems/unavailable", cerr.detail,
                           &ferr);
            outcome = "retried";
        }
    } else if (a->lost || err.code == UTIL_ERR_CONFLICT) {
        if (a->lost == 2) {
            /* Shutting down: give the job back at once, its attempt unused. */
            struct util_error ferr = {0};
            store_job_release(w->cfg.store, job->id, owner, job->attempts, &ferr);
            outcome = "released";
        } else {
            outcome = "fenced";
        }
    } else {
        bool retry = retryable(err.code);
        struct util_error ferr = {0};
        if (store_job_fail(w->cfg.store, job->id, owner, job->attempts, retry,
                           retry ? worker_backoff_ms(job->attempts) : 0, problem_type(err.code),
                           err.detail, &ferr) != 0 &&
            ferr.code != UTIL_ERR_CONFLICT)
            util_warn("job %s: could not record the failure: %s", job->id, ferr.detail);
        outcome = retry && job->attempts < job->max_attempts ? "retried" : "failed";
        util_info("job %s attempt %d: %s (%s)", job->id, job->attempts, err.detail, outcome);
    }
    g_free(res.buf);
    char labels[48];
    snprintf(labels, sizeof(labels), "outcome=\"%s\"", outcome);
    util_metrics_counter_add("image_server_job_attempts_total", labels, 1);
    util_metrics_histogram_observe("image_server_job_seconds", labels,
                                   (double)(util_monotonic_us() - t0) / 1e6);
}

static void *worker_main(void *p)
{
    struct thread_arg *ta = p;
    struct worker_jobs *w = ta->w;
    struct active *a = &w->active[ta->index];
    char owner[96];
    snprintf(owner, sizeof(owner), "%s/%d", w->owner, ta->index);
    free(ta);
    for (;;) {
        pthread_mutex_lock(&w->lock);
        bool stop = w->stop;
        pthread_mutex_unlock(&w->lock);
        if (stop)
            break;
        struct store_job job = {0};
        bool got = false;
        struct util_error err = {0};
        uint64_t seen = store_job_signals(w->cfg.store);
        if (store_job_claim(w->cfg.store, owner, w->cfg.lease_ms, &job, &got, &err) != 0) {
            util_warn("worker: claim failed: %s", err.detail);
            store_job_wait(w->cfg.store, seen, IDLE_POLL_MS);
            continue;
        }
        if (!got) {
            int64_t next = store_job_next_run_at(w->cfg.store);
            int64_t wait = IDLE_POLL_MS;
            if (next > 0) {
                wait = next - util_now_ms();
                if (wait < 5)
                    wait = 5;
                if (wait > IDLE_POLL_MS)
                    wait = IDLE_POLL_MS;
            }
            store_job_wait(w->cfg.store, seen, wait);
            continue;
        }
        pthread_mutex_lock(&w->lock);
        if (w->stop) {
            /* Claimed while the stop began: give it back untouched. */
            pthread_mutex_unlock(&w->lock);
            struct util_error rerr = {0};
            store_job_release(w->cfg.store, job.id, owner, job.attempts, &rerr);
            store_job_clear(&job);
            break;
        }
        g_strlcpy(a->id, job.id, sizeof(a->id));
        a->attempt = job.attempts;
        a->lost = 0;
        a->busy = true;
        w->running++;
        pthread_mutex_unlock(&w->lock);
        /* One budget of cores for requests and jobs (DESIGN §6); requests
         * go first. The lease is renewed while the job waits for a slot. */
        bool slot = true;
        if (w->cfg.slots)
            slot = util_slots_acquire_job(w->cfg.slots, &a->lost);
        if (slot) {
            process(w, a, &job, owner);
            if (w->cfg.slots)
                util_slots_release(w->cfg.slots);
        } else {
            /* Stopped (or the lease was lost) while waiting for a slot. */
            struct util_error rerr = {0};
            if (a->lost == 2)
                store_job_release(w->cfg.store, job.id, owner, job.attempts, &rerr);
        }
        pthread_mutex_lock(&w->lock);
        a->busy = false;
        w->running--;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->lock);
        store_job_clear(&job);
    }
    return NULL;
}

static void *heartbeat_main(void *p)
{
    struct worker_jobs *w = p;
    int64_t period = w->cfg.lease_ms / 3;
    if (period < 10)
        period = 10;
    pthread_mutex_lock(&w->lock);
    while (!w->stop || w->running > 0) {
        struct timespec ts = util_deadline_in(period);
        pthread_cond_timedwait(&w->cv, &w->lock, &ts);
        for (int i = 0; i < w->nthreads; i++) {
            struct active *a = &w->active[i];
            if (!a->busy || a->lost)
                continue;
            char id[UTIL_ID_LEN + 1];
            g_strlcpy(id, a->id, sizeof(id));
            int attempt = a->attempt;
            char owner[96];
            snprintf(owner, sizeof(owner), "%s/%d", w->owner, i);
            pthread_mutex_unlock(&w->lock);
            bool held = true;
            struct util_error err = {0};
            int rc =
                store_job_heartbeat(w->cfg.store, id, owner, attempt, w->cfg.lease_ms, &held, &err);
            pthread_mutex_lock(&w->lock);
            if (rc != 0) {
                util_warn("worker: heartbeat for job %s failed: %s", id, err.detail);
                continue; /* the lease may still be ours; try again next beat */
            }
            if (!held && a->busy && strcmp(a->id, id) == 0 && a->attempt == attempt) {
                util_info("job %s: lease lost (canceled or taken over); stopping", id);
                a->lost = 1;
            }
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

struct worker_jobs *worker_jobs_start(const struct worker_jobs_config *cfg)
{
    struct worker_jobs *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    w->cfg = *cfg;
    w->nthreads = cfg->workers > 0 ? cfg->workers : 1;
    w->threads = calloc((size_t)w->nthreads, sizeof(pthread_t));
    w->active = calloc((size_t)w->nthreads, sizeof(struct active));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cv, NULL);
    char host[40] = "host";
    gethostname(host, sizeof(host) - 1);
    char rnd[UTIL_ID_LEN + 1];
    if (util_id_new(rnd) != 0)
        g_strlcpy(rnd, "x", sizeof(rnd));
    snprintf(w->owner, sizeof(w->owner), "%.24s:%d:%.8s", host, (int)getpid(), rnd);
    pthread_create(&w->heartbeat, NULL, heartbeat_main, w);
    for (int i = 0; i < w->nthreads; i++) {
        struct thread_arg *ta = malloc(sizeof(*ta));
        ta->w = w;
        ta->index = i;
        pthread_create(&w->threads[i], NULL, worker_main, ta);
    }
    return w;
}

void worker_jobs_stop(struct worker_jobs *w, int64_t deadline_ms)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->lock);
    store_job_wake(w->cfg.store);
    /* Let running jobs finish up to the deadline, then release them. */
    int64_t end = util_monotonic_ms() + deadline_ms;
    pthread_mutex_lock(&w->lock);
    while (w->running > 0 && util_monotonic_ms() < end) {
        struct timespec ts = util_deadline_in(50);
        pthread_cond_timedwait(&w->cv, &w->lock, &ts);
    }
    /* Past the deadline: jobs still running are killed through their
     * cancel flag and given back to the queue. */
    for (int i = 0; i < w->nthreads; i++)
        if (w->active[i].busy && w->active[i].lost == 0)
            w->active[i].lost = 2;
    pthread_mutex_unlock(&w->lock);
    store_job_wake(w->cfg.store);
    for (int i = 0; i < w->nthreads; i++)
        pthread_join(w->threads[i], NULL);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->heartbeat, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cv);
    free(w->threads);
    free(w->active);
    free(w);
}
