/*
 * worker: background work that knows nothing of HTTP: the sweeper (blob
 * collection now; expired leases, idempotency keys and the variant cache
 * trim join it with the job queue), and later the job claim loop.
 */
#ifndef WORKER_WORKER_H
#define WORKER_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "blob/blob.h"
#include "ops/ops.h"
#include "store/store.h"

struct worker_sweeper;

/* Starts a thread that sweeps every interval_ms. Each step is idempotent and
 * safe with several processes sweeping the same storage. Not full: only
 * write this process's variant cache touches (an `api` process, whose
 * variants the workers' sweepers evict). */
struct worker_sweeper *worker_sweeper_start(struct store *store, struct blob_store *blobs,
                                            int64_t interval_ms, int64_t blob_grace_ms,
                                            int64_t variant_max_bytes, bool full);
/* One sweep, synchronously (tests, and the thread's loop). Returns the
 * number of blobs collected, or -1. */
int worker_sweep_once(struct store *store, struct blob_store *blobs, int64_t blob_grace_ms);
/* Stops and joins the thread. */
void worker_sweeper_stop(struct worker_sweeper *sw);

/* The job workers of one process. */
struct worker_jobs_config {
    struct store *store;      /* the queue and metadata */
    struct blob_store *blobs; /* bytes */
    struct ops_limits limits; /* per attempt */
    int workers;              /* threads */
    int64_t lease_ms;         /* renewed every third of it */
    struct util_slots *slots; /* CPU budget shared with requests, or NULL */
};

struct worker_jobs;

/* Starts the claim loops and the heartbeat thread. */
struct worker_jobs *worker_jobs_start(const struct worker_jobs_config *cfg);
/* Stops claiming, lets running jobs finish up to deadline_ms, then stops
 * and releases the rest (back to queued), joins and frees. */
void worker_jobs_stop(struct worker_jobs *w, int64_t deadline_ms);
/* Backoff before the attempt after `attempt`: uniform in
 * [0, min(2^attempt s, 5 min)] (full jitter, DESIGN §4). */
int64_t worker_backoff_ms(int attempt);

#endif
