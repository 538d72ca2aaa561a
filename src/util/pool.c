/* A bounded thread pool (util.h). Tasks wait in a ring buffer of fixed size,
 * so a burst never grows memory: past queue_max, submit fails at once and
 * the caller answers 503 (DESIGN §5). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/util.h"

struct task {
    util_pool_fn fn;   /* runs the task */
    util_pool_fn drop; /* called instead when the pool stops first */
    void *arg;
};

struct util_pool {
    pthread_mutex_t lock;
    pthread_cond_t work;  /* signalled when a task is queued or on stop */
    pthread_cond_t idle;  /* signalled when a task finishes */
    struct task *ring;    /* queue_max slots */
    int cap, head, count; /* ring slots (queue_max + threads), first, used */
    int queue_max;        /* tasks allowed to wait for a busy thread */
    int running;
    bool stopping;
    int nthreads;
    pthread_t *threads;
    struct util_slots *slots; /* CPU budget held while a task runs, or NULL */
};

struct util_slots {
    pthread_mutex_t lock;
    pthread_cond_t cv;
    int free;             /* slots not held */
    int waiting_requests; /* requests waiting for a slot: jobs yield to them */
};

struct util_slots *util_slots_new(int n)
{
    struct util_slots *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->free = n > 0 ? n : 1;
    return s;
}

void util_slots_acquire(struct util_slots *s, bool request)
{
    pthread_mutex_lock(&s->lock);
    if (request) {
        s->waiting_requests++;
        while (s->free == 0)
            pthread_cond_wait(&s->cv, &s->lock);
        s->waiting_requests--;
    } else {
        while (s->free == 0 || s->waiting_requests > 0)
            pthread_cond_wait(&s->cv, &s->lock);
    }
    s->free--;
    pthread_mutex_unlock(&s->lock);
}

bool util_slots_acquire_job(struct util_slots *s, const volatile int *cancel)
{
    pthread_mutex_lock(&s->lock);
    while ((s->free == 0 || s->waiting_requests > 0) && !*cancel) {
        struct timespec ts = util_deadline_in(100);
        pthread_cond_timedwait(&s->cv, &s->lock, &ts);
    }
    bool got = !*cancel;
    if (got)
        s->free--;
    pthread_mutex_unlock(&s->lock);
    return got;
}

void util_slots_release(struct util_slots *s)
{
    pthread_mutex_lock(&s->lock);
    s->free++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->lock);
}

void util_slots_free(struct util_slots *s)
{
    if (s == NULL)
        return;
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cv);
    free(s);
}

void util_pool_set_slots(struct util_pool *pool, struct util_slots *slots)
{
    pthread_mutex_lock(&pool->lock);
    pool->slots = slots;
    pthread_mutex_unlock(&pool->lock);
}

static void *worker_main(void *p)
{
    struct util_pool *pool = p;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->count == 0 && !pool->stopping)
            pthread_cond_wait(&pool->work, &pool->lock);
        if (pool->count == 0 && pool->stopping)
            break;
        struct task t = pool->ring[pool->head];
        pool->head = (pool->head + 1) % pool->cap;
        pool->count--;
        pool->running++;
        struct util_slots *slots = pool->slots;
        pthread_mutex_unlock(&pool->lock);
        if (slots)
            util_slots_acquire(slots, true);
        t.fn(t.arg);
        if (slots)
            util_slots_release(slots);
        pthread_mutex_lock(&pool->lock);
        pool->running--;
        pthread_cond_broadcast(&pool->idle);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

struct util_pool *util_pool_new(int threads, int queue_max, const char *name)
{
    (void)name;
    if (threads < 1)
        threads = 1;
    if (queue_max < 1)
        queue_max = 1;
    struct util_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return NULL;
    pool->ring = calloc((size_t)queue_max + (size_t)threads, sizeof(struct task));
    pool->threads = calloc((size_t)threads, sizeof(pthread_t));
    if (pool->ring == NULL || pool->threads == NULL)
        goto fail;
    pool->cap = queue_max + threads;
    pool->queue_max = queue_max;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->work, NULL);
    pthread_cond_init(&pool->idle, NULL);
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
            util_pool_stop(pool, 0);
            util_pool_free(pool);
            return NULL;
        }
        pool->nthreads++;
    }
    return pool;
fail:
    free(pool->ring);
    free(pool->threads);
    free(pool);
    return NULL;
}

bool util_pool_submit(struct util_pool *pool, util_pool_fn fn, util_pool_fn drop, void *arg)
{
    pthread_mutex_lock(&pool->lock);
    /* Waiting tasks beyond the idle threads count against queue_max. */
    int idle = pool->nthreads - pool->running;
    bool ok = !pool->stopping && pool->count - idle < pool->queue_max && pool->count < pool->cap;
    if (ok) {
        pool->ring[(pool->head + pool->count) % pool->cap] = (struct task){fn, drop, arg};
        pool->count++;
        pthread_cond_signal(&pool->work);
    }
    pthread_mutex_unlock(&pool->lock);
    return ok;
}

int util_pool_prune(struct util_pool *pool, bool (*stale)(void *arg))
{
    /* Collect stale tasks under the lock, hand them to drop outside it. */
    struct task dropped[64];
    int nd = 0;
    pthread_mutex_lock(&pool->lock);
    int kept = 0;
    for (int i = 0; i < pool->count; i++) {
        struct task t = pool->ring[(pool->head + i) % pool->cap];
        if (nd < 64 && stale(t.arg))
            dropped[nd++] = t;
        else
            pool->ring[(pool->head + kept++) % pool->cap] = t;
    }
    pool->count = kept;
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < nd; i++)
        if (dropped[i].drop)
            dropped[i].drop(dropped[i].arg);
    return nd;
}

int util_pool_waiting(struct util_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->count;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int util_pool_running(struct util_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->running;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int util_pool_stop(struct util_pool *pool, int64_t deadline_ms)
{
    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    /* Hand waiting tasks back (outside the lock: drop may take other locks). */
    while (pool->count > 0) {
        struct task t = pool->ring[pool->head];
        pool->head = (pool->head + 1) % pool->cap;
        pool->count--;
        pthread_mutex_unlock(&pool->lock);
        if (t.drop)
            t.drop(t.arg);
        pthread_mutex_lock(&pool->lock);
    }
    pthread_cond_broadcast(&pool->work);
    int64_t end = util_monotonic_ms() + deadline_ms;
    while (pool->running > 0) {
        int64_t left = end - util_monotonic_ms();
        if (left <= 0)
            break;
        struct timespec ts = util_deadline_in(left);
        pthread_cond_timedwait(&pool->idle, &pool->lock, &ts);
    }
    int left = pool->running;
    pthread_mutex_unlock(&pool->lock);
    return left;
}

void util_pool_free(struct util_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->lock);
    bool busy = pool->running > 0;
    pool->stopping = true;
    pthread_cond_broadcast(&pool->work);
    pthread_mutex_unlock(&pool->lock);
    if (busy)
        return; /* threads still inside tasks: leaked on purpose, see util.h */
    for (int i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->work);
    pthread_cond_destroy(&pool->idle);
    free(pool->ring);
    free(pool->threads);
    free(pool);
}
