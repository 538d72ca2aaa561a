/*
 * queue_bench: what one job costs the database, measured through the store
 * interface (store.h) on either backend, without any image work.
 *
 *   build/queue_bench DATABASE_URL [JOBS] [THREADS]
 *
 * 1. JOBS enqueues, one after another: latency of each.
 * 2. The claim round trip: JOBS claims + completes on one thread.
 * 3. THREADS claimers at once (each claim, heartbeat, complete): the queue's
 *    throughput ceiling with contention, jobs/s.
 * Prints one line per measure: p50, p90, p99 in microseconds, and rates.
 * Uses its own image row; run it on a database nothing else claims from.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "util/util.h"

static struct store *g_store;
static char g_image[UTIL_ID_LEN + 1];
static int g_per_thread;

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, int64_t *us, int n)
{
    qsort(us, (size_t)n, sizeof(*us), cmp64);
    printf("%-34s n=%-6d p50 %6" PRId64 " us  p90 %6" PRId64 " us  p99 %6" PRId64 " us\n", what, n,
           us[n / 2], us[n * 9 / 10], us[n * 99 / 100]);
}

/* A 1x1 PNG's row: the bench stores no bytes. */
static void fake_image(struct store_image *img, int seed)
{
    memset(img, 0, sizeof(*img));
    util_id_new(img->id);
    snprintf(img->sha256, sizeof(img->sha256), "%064d", seed);
    snprintf(img->format, sizeof(img->format), "png");
    img->width = img->height = img->pages = 1;
    img->bytes = 100;
    img->orientation = 1;
}

static void die(const char *what, const struct util_error *err)
{
    fprintf(stderr, "queue_bench: %s: %s\n", what, err->detail);
    exit(1);
}

static void enqueue(void)
{
    struct util_error err = {0};
    struct store_job job = {0};
    util_id_new(job.id);
    snprintf(job.image_id, sizeof(job.image_id), "%s", g_image);
    job.spec = strdup("{\"operations\":[],\"output\":{\"format\":\"png\"}}");
    job.max_attempts = 3;
    bool existing;
    if (store_job_enqueue(g_store, &job, NULL, NULL, INT64_MAX, &existing, &err) != 0)
        die("enqueue", &err);
    store_job_clear(&job);
}

/* Claims and completes one job; returns the claim time in us, or -1 when
 * the queue is empty. */
static int64_t claim_complete(const char *owner, bool heartbeat, int64_t *complete_us)
{
    struct util_error err = {0};
    struct store_job job = {0};
    bool got = false;
    int64_t t0 = util_monotonic_us();
    if (store_job_claim(g_store, owner, 30000, &job, &got, &err) != 0)
        die("claim", &err);
    int64_t t1 = util_monotonic_us();
    if (!got)
        return -1;
    if (heartbeat) {
        bool held;
        if (store_job_heartbeat(g_store, job.id, owner, job.attempts, 30000, &held, &err) != 0)
            die("heartbeat", &err);
    }
    struct store_image res;
    fake_image(&res, 0);
    int64_t t2 = util_monotonic_us();
    if (store_job_complete(g_store, job.id, owner, job.attempts, &res, &err) != 0)
        die("complete", &err);
    if (complete_us)
        *complete_us = util_monotonic_us() - t2;
    store_job_clear(&job);
    return t1 - t0;
}

static void *claimer(void *arg)
{
    char owner[32];
    snprintf(owner, sizeof(owner), "bench/%d", (int)(intptr_t)arg);
    for (int i = 0; i < g_per_thread; i++)
        if (claim_complete(owner, true, NULL) < 0)
            break;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: queue_bench DATABASE_URL [JOBS] [THREADS]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    int threads = argc > 3 ? atoi(argv[3]) : 8;
    if (n < 10 || threads < 1)
        return 2;
    struct util_error err = {0};
    g_store = store_open_sized(argv[1], threads + 2, &err);
    if (g_store == NULL || store_migrate(g_store, &err) != 0)
        die("open", &err);
    struct store_image img;
    fake_image(&img, 1);
    if (store_image_insert(g_store, &img, &err) != 0)
        die("image", &err);
    snprintf(g_image, sizeof(g_image), "%s", img.id);
    /* Drain what an earlier run left. */
    while (claim_complete("bench/drain", false, NULL) >= 0) {
    }

    int64_t *a = calloc((size_t)n, sizeof(*a));
    int64_t *b = calloc((size_t)n, sizeof(*b));
    for (int i = 0; i < n; i++) {
        int64_t t0 = util_monotonic_us();
        enqueue();
        a[i] = util_monotonic_us() - t0;
    }
    report("enqueue (POST /v1/jobs' share)", a, n);

    int k = 0;
    for (; k < n; k++) {
        int64_t c = claim_complete("bench/one", false, &b[k]);
        if (c < 0)
            break;
        a[k] = c;
    }
    report("claim round trip (1 claimer)", a, k);
    report("complete (1 claimer)", b, k);

    for (int i = 0; i < n; i++)
        enqueue();
    g_per_thread = n / threads + 1;
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    int64_t t0 = util_monotonic_us();
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, claimer, (void *)(intptr_t)i);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double secs = (double)(util_monotonic_us() - t0) / 1e6;
    char what[64];
    snprintf(what, sizeof(what), "%d claimers at once", threads);
    printf("%-34s %d jobs in %.2f s: %.0f jobs/s (claim + heartbeat + complete)\n", what, n, secs,
           n / secs);
    printf("backend %s\n", g_store->ops->name);
    free(th);
    free(a);
    free(b);
    store_close(g_store);
    return 0;
}
