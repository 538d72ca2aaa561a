/*
 * worker: background work that knows nothing of HTTP: the sweeper (blob
 * collection now; expired leases, idempotency keys and the variant cache
 * trim join it with the job queue), and later the job claim loop.
 */
#ifndef WORKER_WORKER_H
#define WORKER_WORKER_H

#include <stdint.h>

#include "blob/blob.h"
#include "store/store.h"

struct worker_sweeper;

/* Starts a thread that sweeps every interval_ms. Each step is idempotent and
 * safe with several processes sweeping the same storage. */
struct worker_sweeper *worker_sweeper_start(struct store *store, struct blob_store *blobs,
                                            int64_t interval_ms, int64_t blob_grace_ms,
                                            int64_t variant_max_bytes);
/* One sweep, synchronously (tests, and the thread's loop). Returns the
 * number of blobs collected, or -1. */
int worker_sweep_once(struct store *store, struct blob_store *blobs, int64_t blob_grace_ms);
/* Stops and joins the thread. */
void worker_sweeper_stop(struct worker_sweeper *sw);

#endif
