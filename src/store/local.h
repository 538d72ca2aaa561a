/*
 * What every store backend keeps in the process, whatever the database:
 * the "a job may be ready" signal counter that workers sleep on, the
 * finished-job callback, and the batch of variant cache touches not yet
 * written. Every store has one (struct store's `local`): store.c serves the
 * calls that need nothing else, the backends signal it. Thread-safe.
 */
#ifndef STORE_LOCAL_H
#define STORE_LOCAL_H

#include <glib.h>
#include <stdint.h>

#include "store/store.h"

struct store_local *store_local_new(void);
void store_local_free(struct store_local *l);
/* Wakes every store_local_wait (store_job_wake, a lost notification). */
void store_local_signal(struct store_local *l);
/* Wakes one store_local_wait: a job may be ready (an enqueue, a release, a
 * notification). store_job_claim calls it again after each successful claim,
 * so a burst of jobs wakes idle workers one by one, as long as there is
 * work, instead of waking them all to find one job. */
void store_local_ready(struct store_local *l);
uint64_t store_local_signals(struct store_local *l);
/* Sleeps until a signal to all after `seen`, a ticket of store_local_ready
 * (taken), or timeout_ms. */
void store_local_wait(struct store_local *l, uint64_t seen, int64_t timeout_ms);
/* Calls the finished-job callback, if any (store_on_job_done). */
void store_local_done(struct store_local *l, const char *job_id);
void store_local_on_done(struct store_local *l, store_job_done_fn fn, void *arg);
/* Notes a variant served (store_variant_touch); bounded. */
void store_local_touch(struct store_local *l, const char *image_id, const char *plan,
                       int64_t now_ms);
/* Takes the pending touches ("image_id\nplan" -> seconds since the epoch);
 * the caller destroys the table. */
GHashTable *store_local_take_touches(struct store_local *l);

#endif
