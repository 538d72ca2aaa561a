/*
 * /v1/jobs: asynchronous pipelines on stored images (DESIGN §3).
 *
 * A job's operations go through the one parser when it is posted, so a bad
 * operation is a 400 and nothing is queued. GET ?wait=N parks the request
 * (no thread held) until the job finishes: the store's finished-job
 * callback wakes it (serve.c wires it to http_server_wake).
 */
#include <glib.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

#define JOB_JSON_MAX (1 << 20) /* a job request is small; refuse more */
#define WAIT_MAX_S   30

static json_t *time_or_null(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    char t[40];
    util_rfc3339_ms(ms, t, sizeof(t));
    return json_string(t);
}

static json_t *job_json(const struct store_job *j)
{
    json_t *spec = json_loads(j->spec ? j->spec : "{}", 0, NULL);
    json_t *ops = spec ? json_object_get(spec, "operations") : NULL;
    json_t *out = spec ? json_object_get(spec, "output") : NULL;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "status", json_string(store_job_status_name(j->status)));
    json_object_set_new(o, "image_id", json_string(j->image_id));
    json_object_set_new(o, "operations", ops ? json_incref(ops) : json_array());
    json_object_set_new(o, "output", out ? json_incref(out) : json_null());
    json_object_set_new(o, "attempts", json_integer(j->attempts));
    json_object_set_new(o, "max_attempts", json_integer(j->max_attempts));
    json_object_set_new(o, "result_image_id",
                        j->result_image_id[0] ? json_string(j->result_image_id) : json_null());
    json_t *error = json_null();
    /* A retried attempt's error stays in the row for operators, but the
     * public answer shows an error only once the job has failed. */
    if (j->status == STORE_JOB_FAILED && j->error_type[0])
        error = json_pack("{s:s, s:s}", "type", j->error_type, "detail", j->error_detail);
    json_object_set_new(o, "error", error);
    json_object_set_new(o, "created_at", time_or_null(j->created_at_ms));
    json_object_set_new(o, "started_at", time_or_null(j->started_at_ms));
    json_object_set_new(o, "finished_at", time_or_null(j->finished_at_ms));
    json_decref(spec);
    return o;
}

static bool finished(enum store_job_status st)
{
    return st == STORE_JOB_SUCCEEDED || st == STORE_JOB_FAILED || st == STORE_JOB_CANCELED;
}

/* ---- POST /v1/jobs ------------------------------------------------------ */

struct post_state {
    struct store_job job; /* id, image_id, spec, max_attempts */
    char hash[65];        /* digest of the request, for Idempotency-Key */
    char key[256];        /* Idempotency-Key, "" if none */
};

static void post_state_free(void *p)
{
    struct post_state *ps = p;
    store_job_clear(&ps->job);
    free(ps);
}

/* Checks the request on the I/O thread (small JSON, no I/O). */
static int parse_post(struct http_request *req, struct api_ctx *ctx, struct post_state *ps,
                      struct util_error *err)
{
    size_t len;
    const char *body = http_request_body(req, &len);
    if (len > JOB_JSON_MAX)
        return util_error_set(err, UTIL_ERR_INVALID_OPERATION, "a job request is at most %d bytes",
                              JOB_JSON_MAX);
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -1;
    if (root == NULL) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "the body is not valid JSON: %s",
                       jerr.text);
        goto out;
    }
    if (!json_is_object(root)) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "the body must be a JSON object");
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (strcmp(k, "image_id") != 0 && strcmp(k, "operations") != 0 &&
            strcmp(k, "output") != 0) {
            util_error_set(err, UTIL_ERR_INVALID_OPERATION, "unknown key '%.40s'", k);
            goto out;
        }
    }
    json_t *image_id = json_object_get(root, "image_id");
    json_t *ops = json_object_get(root, "operations");
    json_t *output = json_object_get(root, "output");
    if (!json_is_string(image_id)) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "image_id must be a string");
        goto out;
    }
    if (ops == NULL) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "operations is required");
        goto out;
    }
    struct ops_plan plan;
    if (ops_parse_json(ops, output, &plan, err) != 0)
        goto out;
    if (plan.nsteps == 0 && ops_plan_is_empty(&plan)) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                       "the job does nothing: give operations or an output");
        goto out;
    }
    const char *id = json_string_value(image_id);
    if (!util_id_valid(id)) {
        util_error_set(err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id);
        goto out;
    }
    g_strlcpy(ps->job.image_id, id, sizeof(ps->job.image_id));
    json_t *spec =
        json_pack("{s:O, s:O}", "operations", ops, "output", output ? output : json_null());
    ps->job.spec = json_dumps(spec, JSON_COMPACT);
    json_decref(spec);
    char *canon = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    blob_sha256_hex(canon, strlen(canon), ps->hash);
    free(canon);
    ps->job.max_attempts = (int)ctx->max_attempts;
    const char *key = http_request_header(req, "Idempotency-Key");
    if (key) {
        size_t kl = strlen(key);
        bool ok = kl > 0 && kl < sizeof(ps->key);
        for (size_t i = 0; ok && i < kl; i++)
            ok = key[i] > 0x20 && key[i] < 0x7f;
        if (!ok) {
            util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                           "Idempotency-Key must be 1..255 printable ASCII characters");
            goto out;
        }
        g_strlcpy(ps->key, key, sizeof(ps->key));
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

enum http_next api_jobs_create(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct util_error err = {0};
    if (!http_request_on_pool(req)) {
        struct post_state *ps = calloc(1, sizeof(*ps));
        if (ps == NULL || parse_post(req, ctx, ps, &err) != 0) {
            if (ps == NULL)
                util_error_set(&err, UTIL_ERR_INTERNAL, "out of memory");
            else
                post_state_free(ps);
            api_respond_error(req, &err);
            return HTTP_DONE;
        }
        http_request_set_state(req, ps, post_state_free);
        return HTTP_RUN_BLOCKING; /* a committed write */
    }
    struct post_state *ps = http_request_state(req);
    if (util_id_new(ps->job.id) != 0) {
        util_error_set(&err, UTIL_ERR_INTERNAL, "no randomness for an id");
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    if (!http_request_begin_commit(req)) {
        /* Answered 503 by a stop already: queue nothing. */
        http_respond_problem(req, 503, "/problems/unavailable", "Service unavailable",
                             "the server is shutting down");
        return HTTP_DONE;
    }
    bool existing = false;
    if (store_job_enqueue(ctx->store, &ps->job, ps->key[0] ? ps->key : NULL, ps->hash,
                          ctx->jobs_max, &existing, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    char location[64];
    snprintf(location, sizeof(location), "/v1/jobs/%s", ps->job.id);
    http_response_header(req, "Location", location);
    if (!existing)
        util_metrics_counter_add("image_server_jobs_created_total", "", 1);
    api_respond_json(req, existing ? 200 : 202, job_json(&ps->job));
    return HTTP_DONE;
}

/* ---- GET /v1/jobs/{id} -------------------------------------------------- */

enum http_next api_jobs_get(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct util_error err = {0};
    const char *id = http_request_param(req, "id");
    int64_t wait = 0;
    const char *w = http_request_query(req, "wait");
    if (w && (util_parse_int(w, &wait) != 0 || wait < 0 || wait > WAIT_MAX_S)) {
        util_error_set(&err, UTIL_ERR_INVALID_OPERATION, "wait must be an integer 0..%d",
                       WAIT_MAX_S);
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    if (!util_id_valid(id)) {
        util_error_set(&err, UTIL_ERR_NOT_FOUND, "no job has the id '%.40s'", id ? id : "");
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    bool may_wait = wait > 0 && !http_request_woken(req);
    if (may_wait)
        http_request_wait(req, id, wait * 1000); /* before the check: see http.h */
    struct store_job job = {0};
    if (store_job_get(ctx->store, id, &job, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    if (may_wait && !finished(job.status)) {
        store_job_clear(&job);
        return HTTP_WAIT;
    }
    api_respond_json(req, 200, job_json(&job));
    store_job_clear(&job);
    return HTTP_DONE;
}

/* ---- GET /v1/jobs ------------------------------------------------------- */

enum http_next api_jobs_list(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct util_error err = {0};
    static const char *const extra[] = {"status", NULL};
    int64_t limit, before;
    if (api_list_params(req, extra, &limit, &before, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    int status = -1;
    const char *st = http_request_query(req, "status");
    if (st && (status = store_job_status_from_name(st)) < 0) {
        util_error_set(&err, UTIL_ERR_INVALID_OPERATION,
                       "status must be queued, running, succeeded, failed or canceled");
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    struct store_job *items = calloc((size_t)limit + 1, sizeof(*items));
    int n = 0;
    if (items == NULL ||
        store_job_list(ctx->store, status, before, (int)limit + 1, items, &n, &err) != 0) {
        if (items == NULL)
            util_error_set(&err, UTIL_ERR_INTERNAL, "out of memory");
        free(items);
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    json_t *arr = json_array();
    int shown = n > limit ? (int)limit : n;
    for (int i = 0; i < shown; i++)
        json_array_append_new(arr, job_json(&items[i]));
    json_t *page = api_list_page(arr, n > limit, shown > 0 ? items[shown - 1].seq : 0);
    for (int i = 0; i < n; i++)
        store_job_clear(&items[i]);
    free(items);
    api_respond_json(req, 200, page);
    return HTTP_DONE;
}

/* ---- DELETE /v1/jobs/{id} ----------------------------------------------- */

enum http_next api_jobs_cancel(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    if (!http_request_on_pool(req))
        return HTTP_RUN_BLOCKING; /* a committed write */
    struct util_error err = {0};
    const char *id = http_request_param(req, "id");
    if (!util_id_valid(id)) {
        util_error_set(&err, UTIL_ERR_NOT_FOUND, "no job has the id '%.40s'", id ? id : "");
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    struct store_job job = {0};
    if (store_job_cancel(ctx->store, id, &job, &err) != 0) {
        store_job_clear(&job);
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    api_respond_json(req, 200, job_json(&job));
    store_job_clear(&job);
    return HTTP_DONE;
}

/* ---- metrics ------------------------------------------------------------ */

static void refresh_jobs(void *arg)
{
    struct api_ctx *ctx = arg;
    /* Jobs by status, counted from the queue at scrape time. */
    struct util_error err = {0};
    int64_t counts[5] = {0};
    if (store_job_counts(ctx->store, counts, &err) != 0)
        return;
    for (int st = STORE_JOB_QUEUED; st <= STORE_JOB_CANCELED; st++) {
        char labels[40];
        snprintf(labels, sizeof(labels), "status=\"%s\"",
                 store_job_status_name((enum store_job_status)st));
        util_metrics_gauge_set("image_server_jobs", labels, (double)counts[st]);
    }
}

void api_jobs_metrics_init(struct api_ctx *ctx)
{
    util_metrics_describe("image_server_jobs", "gauge", "jobs in the queue, by status");
    util_metrics_describe("image_server_jobs_created_total", "counter", "jobs accepted");
    util_metrics_describe("image_server_job_attempts_total", "counter",
                          "job attempts processed here, by outcome");
    util_metrics_describe("image_server_job_seconds", "histogram",
                          "time of one job attempt, by outcome");
    util_metrics_counter_add("image_server_jobs_created_total", "", 0);
    util_metrics_on_render(refresh_jobs, ctx);
}
