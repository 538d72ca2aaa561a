/* The in-process part of every store backend (local.h). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "store/local.h"

struct store_local {
    pthread_mutex_t lock;
    pthread_cond_t cv;         /* gen changed, or a ticket came */
    pthread_cond_t done_cv;    /* done_running reached 0 */
    uint64_t gen;              /* bumped with every signal to all */
    int tickets;               /* "one job may be ready": each wakes one waiter */
    store_job_done_fn done_fn; /* finished-job callback */
    void *done_arg;
    int done_running;    /* calls of it in progress */
    GHashTable *touched; /* "image_id\nplan" -> last use (s), not yet written */
};

static GHashTable *new_touches(void)
{
    return g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
}

struct store_local *store_local_new(void)
{
    struct store_local *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->cv, NULL);
    pthread_cond_init(&l->done_cv, NULL);
    l->touched = new_touches();
    return l;
}

void store_local_free(struct store_local *l)
{
    if (l == NULL)
        return;
    g_hash_table_destroy(l->touched);
    pthread_cond_destroy(&l->cv);
    pthread_cond_destroy(&l->done_cv);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

void store_local_signal(struct store_local *l)
{
    pthread_mutex_lock(&l->lock);
    l->gen++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->lock);
}

/* Tickets kept for waiters that are not waiting yet (a worker between its
 * claim and its wait): a few are enough, the claim chain does the rest. */
#define MAX_TICKETS 16

void store_local_ready(struct store_local *l)
{
    pthread_mutex_lock(&l->lock);
    if (l->tickets < MAX_TICKETS)
        l->tickets++;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->lock);
}

uint64_t store_local_signals(struct store_local *l)
{
    pthread_mutex_lock(&l->lock);
    uint64_t gen = l->gen;
    pthread_mutex_unlock(&l->lock);
    return gen;
}

void store_local_wait(struct store_local *l, uint64_t seen, int64_t timeout_ms)
{
    struct timespec ts = util_deadline_in(timeout_ms);
    pthread_mutex_lock(&l->lock);
    while (l->gen == seen) {
        if (l->tickets > 0) {
            l->tickets--;
            break;
        }
        if (pthread_cond_timedwait(&l->cv, &l->lock, &ts) != 0)
            break;
    }
    pthread_mutex_unlock(&l->lock);
}

void store_local_done(struct store_local *l, const char *job_id)
{
    pthread_mutex_lock(&l->lock);
    store_job_done_fn fn = l->done_fn;
    void *arg = l->done_arg;
    if (fn)
        l->done_running++;
    pthread_mutex_unlock(&l->lock);
    if (fn == NULL)
        return;
    fn(job_id, arg);
    pthread_mutex_lock(&l->lock);
    if (--l->done_running == 0)
        pthread_cond_broadcast(&l->done_cv);
    pthread_mutex_unlock(&l->lock);
}

void store_local_on_done(struct store_local *l, store_job_done_fn fn, void *arg)
{
    pthread_mutex_lock(&l->lock);
    l->done_fn = fn;
    l->done_arg = arg;
    /* Once this returns, no call to the old callback is still running:
     * its argument may be freed. */
    while (l->done_running > 0)
        pthread_cond_wait(&l->done_cv, &l->lock);
    pthread_mutex_unlock(&l->lock);
}

void store_local_touch(struct store_local *l, const char *image_id, const char *plan,
                       int64_t now_ms)
{
    char *key = g_strdup_printf("%s\n%s", image_id, plan);
    pthread_mutex_lock(&l->lock);
    /* Bounded: past this many pending touches, newer ones are dropped until
     * the next flush; LRU order only needs to be roughly right. */
    if (g_hash_table_size(l->touched) < 100000)
        g_hash_table_replace(l->touched, key, (gpointer)(intptr_t)(now_ms / 1000));
    else
        g_free(key);
    pthread_mutex_unlock(&l->lock);
}

GHashTable *store_local_take_touches(struct store_local *l)
{
    pthread_mutex_lock(&l->lock);
    GHashTable *pending = l->touched;
    l->touched = new_touches();
    pthread_mutex_unlock(&l->lock);
    return pending;
}
