/* Store dispatch (store.h): picks the backend from the database URL. */
#include <string.h>

#include "store/local.h"
#include "store/store.h"

bool store_url_is_postgres(const char *url)
{
    return url && (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0);
}

struct store *store_open(const char *url, struct util_error *err)
{
    return store_open_sized(url, 16, err);
}

struct store *store_open_sized(const char *url, int max_connections, struct util_error *err)
{
    if (url && strncmp(url, "sqlite:", 7) == 0 && url[7] != '\0')
        return store_sqlite_open(url + 7, err);
    if (store_url_is_postgres(url))
        return store_postgres_open(url, max_connections, err);
    util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                   "--database: '%s' is neither sqlite:PATH nor postgres://...", url ? url : "");
    return NULL;
}

void store_close(struct store *s)
{
    if (s)
        s->ops->close(s);
}

int store_migrate(struct store *s, struct util_error *err)
{
    return s->ops->migrate(s, err);
}

int store_schema_check(struct store *s, struct util_error *err)
{
    return s->ops->schema_check(s, err);
}

int store_ping(struct store *s, struct util_error *err)
{
    return s->ops->ping(s, err);
}

int store_image_insert(struct store *s, struct store_image *img, struct util_error *err)
{
    return s->ops->image_insert(s, img, err);
}

int store_image_get(struct store *s, const char *id, struct store_image *out,
                    struct util_error *err)
{
    return s->ops->image_get(s, id, out, err);
}

int store_image_delete(struct store *s, const char *id, struct util_error *err)
{
    return s->ops->image_delete(s, id, err);
}

int store_image_list(struct store *s, int64_t before_seq, int limit, struct store_image *out,
                     int *n, struct util_error *err)
{
    return s->ops->image_list(s, before_seq, limit, out, n, err);
}

int store_blob_referenced(struct store *s, const char *sha256, bool *out, struct util_error *err)
{
    return s->ops->blob_referenced(s, sha256, out, err);
}

int store_variant_get(struct store *s, const char *image_id, const char *plan,
                      struct store_variant *out, struct util_error *err)
{
    return s->ops->variant_get(s, image_id, plan, out, err);
}

int store_variant_put(struct store *s, const struct store_variant *v, struct util_error *err)
{
    return s->ops->variant_put(s, v, err);
}

void store_variant_touch(struct store *s, const char *image_id, const char *plan, int64_t now_ms)
{
    store_local_touch(s->local, image_id, plan, now_ms);
}

int store_variant_trim(struct store *s, int64_t max_bytes, int *evicted, struct util_error *err)
{
    return s->ops->variant_trim(s, max_bytes, evicted, err);
}

int store_job_enqueue(struct store *s, struct store_job *job, const char *idem_key,
                      const char *idem_hash, int64_t jobs_max, bool *existing,
                      struct util_error *err)
{
    int rc = s->ops->job_enqueue(s, job, idem_key, idem_hash, jobs_max, existing, err);
    if (rc == 0 && !*existing)
        store_local_ready(s->local); /* an idle worker of this process looks */
    return rc;
}

int store_job_get(struct store *s, const char *id, struct store_job *out, struct util_error *err)
{
    return s->ops->job_get(s, id, out, err);
}

int store_job_list(struct store *s, int status, int64_t before_seq, int limit,
                   struct store_job *out, int *n, struct util_error *err)
{
    return s->ops->job_list(s, status, before_seq, limit, out, n, err);
}

int store_job_claim(struct store *s, const char *owner, int64_t lease_ms, struct store_job *out,
                    bool *got, struct util_error *err)
{
    int rc = s->ops->job_claim(s, owner, lease_ms, out, got, err);
    /* There may be more: the next idle worker of this process looks
     * (local.h), so a burst wakes workers one by one while there is work. */
    if (rc == 0 && *got)
        store_local_ready(s->local);
    return rc;
}

int store_job_heartbeat(struct store *s, const char *id, const char *owner, int attempt,
                        int64_t lease_ms, bool *held, struct util_error *err)
{
    return s->ops->job_heartbeat(s, id, owner, attempt, lease_ms, held, err);
}

int store_job_complete(struct store *s, const char *id, const char *owner, int attempt,
                       struct store_image *result, struct util_error *err)
{
    return s->ops->job_complete(s, id, owner, attempt, result, err);
}

int store_job_fail(struct store *s, const char *id, const char *owner, int attempt, bool retry,
                   int64_t backoff_ms, const char *type, const char *detail, struct util_error *err)
{
    int rc = s->ops->job_fail(s, id, owner, attempt, retry, backoff_ms, type, detail, err);
    if (rc == 0)
        store_local_ready(s->local); /* requeued: a worker sleeps until its run_at */
    return rc;
}

int store_job_cancel(struct store *s, const char *id, struct store_job *out, struct util_error *err)
{
    return s->ops->job_cancel(s, id, out, err);
}

int store_job_rescue(struct store *s, int *requeued, int *failed, struct util_error *err)
{
    int rc = s->ops->job_rescue(s, requeued, failed, err);
    if (rc == 0 && *requeued > 0)
        store_local_ready(s->local);
    return rc;
}

int store_idempotency_expire(struct store *s, int64_t older_than_ms, int *n, struct util_error *err)
{
    return s->ops->idempotency_expire(s, older_than_ms, n, err);
}

int64_t store_job_next_run_at(struct store *s)
{
    return s->ops->job_next_run_at(s);
}

uint64_t store_job_signals(struct store *s)
{
    return store_local_signals(s->local);
}

void store_job_wait(struct store *s, uint64_t seen, int64_t timeout_ms)
{
    store_local_wait(s->local, seen, timeout_ms);
}

void store_job_wake(struct store *s)
{
    store_local_signal(s->local);
}

void store_on_job_done(struct store *s, store_job_done_fn fn, void *arg)
{
    store_local_on_done(s->local, fn, arg);
}

int store_job_counts(struct store *s, int64_t counts[5], struct util_error *err)
{
    return s->ops->job_counts(s, counts, err);
}

int store_job_release(struct store *s, const char *id, const char *owner, int attempt,
                      struct util_error *err)
{
    int rc = s->ops->job_release(s, id, owner, attempt, err);
    if (rc == 0)
        store_local_ready(s->local);
    return rc;
}

int store_job_cancel_refused(const struct store_job *job, struct util_error *err)
{
    return util_error_set(err, UTIL_ERR_CONFLICT, "the job has already %s",
                          job->status == STORE_JOB_SUCCEEDED ? "succeeded"
                          : job->status == STORE_JOB_FAILED  ? "failed"
                                                             : "been canceled");
}

int store_schema_outdated(struct util_error *err, int64_t have, int want)
{
    return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                          "the database schema is version %lld, this binary needs %d: run "
                          "image-server migrate",
                          (long long)have, want);
}

int store_lease_lost(struct util_error *err, const char *job_id)
{
    return util_error_set(err, UTIL_ERR_CONFLICT, "the lease on job %s is no longer held", job_id);
}
