/*
 * The sweeper (worker.h, DESIGN §4-5). Blob collection: a blob is removed
 * only when no row refers to it AND its mtime is older than the grace
 * period. Uploads refresh the mtime of a blob they find present before
 * committing their row, and re-check the blob after committing, so a delete
 * racing an equal upload never loses the upload's bytes.
 */
#include <glib.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/worker.h"

struct worker_sweeper {
    struct store *store;
    struct blob_store *blobs;
    int64_t interval_ms;
    int64_t grace_ms;
    int64_t variant_max_bytes;
    int64_t blob_every_ms; /* blob collection walks every blob: not every sweep */
    int64_t blob_last_ms;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
    bool full; /* every step; else only write variant touches (api) */
};

struct candidates {
    GPtrArray *shas; /* blobs old enough to be considered */
    int64_t cutoff;  /* mtime before which a blob is old enough */
};

static void collect(const char *sha, int64_t mtime_ms, void *arg)
{
    struct candidates *c = arg;
    if (mtime_ms < c->cutoff)
        g_ptr_array_add(c->shas, g_strdup(sha));
}

static int check_refs(const char *sha, bool *referenced, void *arg)
{
    struct util_error err = {0};
    return store_blob_referenced(arg, sha, referenced, &err);
}

int worker_sweep_once(struct store *store, struct blob_store *blobs, int64_t blob_grace_ms)
{
    struct util_error err = {0};
    int64_t cutoff = util_now_ms() - blob_grace_ms;
    struct candidates c = {g_ptr_array_new_with_free_func(g_free), cutoff};
    int collected = 0;
    if (blob_walk(blobs, collect, &c, &err) != 0) {
        util_warn("sweeper: %s", err.detail);
        collected = -1;
        goto out;
    }
    for (guint i = 0; i < c.shas->len; i++) {
        const char *sha = g_ptr_array_index(c.shas, i);
        bool referenced = true;
        if (store_blob_referenced(store, sha, &referenced, &err) != 0) {
            util_warn("sweeper: %s", err.detail);
            collected = -1;
            goto out;
        }
        if (referenced)
            continue;
        /* Checked again once the blob is out of reach (blob.h): an upload
         * racing this sweep keeps its bytes. */
        bool removed = false;
        if (blob_remove_if_unreferenced(blobs, sha, cutoff, check_refs, store, &removed, &err) !=
            0) {
            util_warn("sweeper: %s", err.detail);
            continue;
        }
        if (removed) {
            collected++;
            util_metrics_counter_add("image_server_blobs_collected_total", "", 1);
        }
    }
out:
    g_ptr_array_free(c.shas, TRUE);
    return collected;
}

static void *sweeper_main(void *arg)
{
    struct worker_sweeper *sw = arg;
    pthread_mutex_lock(&sw->lock);
    while (!sw->stop) {
        struct timespec ts = util_deadline_in(sw->interval_ms);
        pthread_cond_timedwait(&sw->wake, &sw->lock, &ts);
        if (sw->stop)
            break;
        pthread_mutex_unlock(&sw->lock);
        /* Variant rows past the cache budget go first, so their blobs can be
         * collected by the blob step once the grace period has passed. */
        struct util_error err = {0};
        int evicted = 0;
        if (store_variant_trim(sw->store, sw->full ? sw->variant_max_bytes : -1, &evicted, &err) !=
            0)
            util_warn("sweeper: %s", err.detail);
        else if (evicted > 0)
            util_metrics_counter_add("image_server_variants_evicted_total", "", evicted);
        if (!sw->full) {
            pthread_mutex_lock(&sw->lock);
            continue;
        }
        int requeued = 0, failed = 0, expired = 0;
        if (store_job_rescue(sw->store, &requeued, &failed, &err) != 0)
            util_warn("sweeper: %s", err.detail);
        else if (requeued + failed > 0)
            util_info("sweeper: %d expired lease(s) requeued, %d failed", requeued, failed);
        if (store_idempotency_expire(sw->store, util_now_ms() - 24 * 3600 * 1000, &expired, &err) !=
            0)
            util_warn("sweeper: %s", err.detail);
        int n = 0;
        if (util_monotonic_ms() - sw->blob_last_ms >= sw->blob_every_ms) {
            sw->blob_last_ms = util_monotonic_ms();
            n = worker_sweep_once(sw->store, sw->blobs, sw->grace_ms);
        }
        if (n > 0)
            util_info("sweeper: collected %d unreferenced blob(s)", n);
        pthread_mutex_lock(&sw->lock);
    }
    pthread_mutex_unlock(&sw->lock);
    return NULL;
}

struct worker_sweeper *worker_sweeper_start(struct store *store, struct blob_store *blobs,
                                            int64_t interval_ms, int64_t blob_grace_ms,
                                            int64_t variant_max_bytes, bool full)
{
    struct worker_sweeper *sw = calloc(1, sizeof(*sw));
    if (sw == NULL)
        return NULL;
    sw->full = full;
    sw->store = store;
    sw->blobs = blobs;
    sw->interval_ms = interval_ms;
    sw->grace_ms = blob_grace_ms;
    sw->variant_max_bytes = variant_max_bytes;
    /* A tenth of the grace period, between one sweep and a minute. */
    sw->blob_every_ms = blob_grace_ms / 10;
    if (sw->blob_every_ms > 60000)
        sw->blob_every_ms = 60000;
    if (sw->blob_every_ms < interval_ms)
        sw->blob_every_ms = interval_ms;
    sw->blob_last_ms = util_monotonic_ms() - sw->blob_every_ms;
    pthread_mutex_init(&sw->lock, NULL);
    pthread_cond_init(&sw->wake, NULL);
    if (pthread_create(&sw->thread, NULL, sweeper_main, sw) != 0) {
        free(sw);
        return NULL;
    }
    return sw;
}

void worker_sweeper_stop(struct worker_sweeper *sw)
{
    if (sw == NULL)
        return;
    pthread_mutex_lock(&sw->lock);
    sw->stop = true;
    pthread_cond_signal(&sw->wake);
    pthread_mutex_unlock(&sw->lock);
    pthread_join(sw->thread, NULL);
    pthread_mutex_destroy(&sw->lock);
    pthread_cond_destroy(&sw->wake);
    free(sw);
}
