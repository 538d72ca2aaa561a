/*
 * What `serve`, `api` and `worker` run (DESIGN §1), in one place: `serve` is
 * the API, the job workers and the sweeper in one process; `api` the API
 * alone (it enqueues, never processes jobs); `worker` the job workers and
 * the sweeper, with /healthz and /metrics on its own --listen.
 *
 * Sizing (DESIGN §6), measured on 2 cores with the benchmark harness: one
 * processing thread per core (--concurrency), one libvips thread per image
 * (--vips-threads 1 beat 2: 28.8 against 24.9 req/s), and the libvips
 * operation cache off (every request brings different bytes). Requests and
 * the embedded job workers share one budget of --concurrency CPU slots;
 * requests go first.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "blob/blob.h"
#include "cmd/cmd.h"
#include "http/http.h"
#include "ops/ops.h"
#include "store/store.h"
#include "util/util.h"
#include "worker/worker.h"

/* Creates the folder that will hold an sqlite: database file. */
static void make_parent(const char *url)
{
    if (strncmp(url, "sqlite:", 7) != 0)
        return;
    char *path = strdup(url + 7);
    if (path == NULL)
        return;
    char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        *slash = '\0';
        for (char *p = path + 1; *p; p++) {
            if (*p == '/') {
                *p = '\0';
                mkdir(path, 0755);
                *p = '/';
            }
        }
        mkdir(path, 0755);
    }
    free(path);
}

static void pool_gauges(void *arg)
{
    struct util_pool *pool = arg;
    util_metrics_gauge_set("image_server_processing_queue_depth", "",
                           (double)util_pool_waiting(pool));
    util_metrics_gauge_set("image_server_processing_busy_threads", "",
                           (double)util_pool_running(pool));
}

static void on_job_done(const char *job_id, void *arg)
{
    http_server_wake(arg, job_id);
}

int cmd_run(struct util_config *cfg, unsigned what, const char *name, const char *argv0)
{
    /* Signals go to the main thread only: block them before any thread
     * starts, then sigwait below. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    struct util_error err = {0};
    struct store *store = NULL;
    struct blob_store *blobs = NULL;
    struct util_pool *pool = NULL;
    struct util_pool *blocking = NULL;
    struct util_slots *slots = NULL;
    struct api_auth *auth = NULL;
    struct http_server *srv = NULL;
    struct worker_sweeper *sweeper = NULL;
    struct worker_jobs *workers = NULL;
    bool api = (what & CMD_RUN_API) != 0;
    bool jobs = (what & CMD_RUN_JOBS) != 0;

    int cores = util_cores();
    int concurrency = cfg->concurrency > 0 ? (int)cfg->concurrency : cores;
    int queue_max = cfg->queue_max > 0 ? (int)cfg->queue_max : 4 * concurrency;
    int io_threads = cfg->http_threads > 0 ? (int)cfg->http_threads : (cores > 1 ? cores : 1);
    int nworkers = cfg->workers > 0 ? (int)cfg->workers : cores;
    if (!api) {
        /* A worker's listener answers health checks and scrapes only. */
        concurrency = 1;
        queue_max = 16;
        io_threads = 1;
    }

    if (ops_init(argv0, (int)cfg->vips_threads, &err) != 0)
        goto fail;
    make_parent(cfg->database);
    store = store_open_sized(cfg->database, (int)cfg->db_connections, &err);
    if (store == NULL)
        goto fail;
    /* `serve` creates or upgrades the schema; `api` and `worker` refuse an
     * older one (DESIGN §1): `migrate` is a deploy step of its own. */
    if ((what & CMD_RUN_MIGRATE) ? store_migrate(store, &err) != 0
                                 : store_schema_check(store, &err) != 0)
        goto fail;
    blobs = blob_open(cfg->blobs, store_postgres_pool(store), &err);
    if (blobs == NULL)
        goto fail;
    pool = util_pool_new(concurrency, queue_max, "processing");
    /* Commits wait on fsync, not on a CPU: a few threads and a long queue
     * (bounded, so a flood of writes still ends in 503s). */
    blocking = util_pool_new(api ? 4 : 1, api ? 4096 : 16, "blocking");
    slots = util_slots_new(jobs && !api ? nworkers : concurrency);
    if (pool == NULL || blocking == NULL || slots == NULL) {
        util_error_set(&err, UTIL_ERR_INTERNAL, "could not start the processing pool");
        goto fail;
    }
    util_pool_set_slots(pool, slots);
    bool access = cfg->api_keys[0] || cfg->api_keys_file[0] || cfg->signing_key[0];
    if (api && access) {
        auth = api_auth_new(cfg->api_keys, cfg->api_keys_file, cfg->signing_key, &err);
        if (auth == NULL)
            goto fail;
    }
    struct api_ctx ctx = {
        .store = store,
        .blobs = blobs,
        .limits = {.max_pixels = cfg->max_pixels,
                   .max_pixels_progressive = cfg->max_pixels_progressive,
                   .max_output_pixels = cfg->max_output_pixels,
                   .timeout_ms = cfg->timeout_ms},
        .variant_cache = cfg->variant_cache,
        .jobs_max = cfg->jobs_max,
        .max_attempts = cfg->max_attempts,
        .auth = auth,
    };
    api_metrics_init(&ctx);
    util_metrics_describe("image_server_processing_queue_depth", "gauge",
                          "requests waiting for a processing thread");
    util_metrics_describe("image_server_processing_busy_threads", "gauge",
                          "processing threads at work");
    util_metrics_on_render(pool_gauges, pool);
    api_variants_init();
    api_jobs_metrics_init(&ctx);
    size_t nroutes;
    const struct http_route *routes = api ? api_routes(&nroutes) : api_worker_routes(&nroutes);
    struct http_server_config hc = {
        .listen = cfg->listen,
        .io_threads = io_threads,
        .pool = pool,
        .blocking = blocking,
        .max_connections = cfg->max_connections,
        .max_client_connections = cfg->max_client_connections,
        .limit_exempt = cfg->limit_exempt,
        .max_client_requests =
            cfg->max_client_requests > 0 ? cfg->max_client_requests : 2 * (int64_t)concurrency,
        .trusted_proxy = cfg->trusted_proxy,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .max_body_bytes = api ? cfg->max_body_bytes : 0,
        .routes = routes,
        .nroutes = nroutes,
        .ctx = &ctx,
        .authorize = api ? api_authorize : NULL,
    };
    srv = http_server_start(&hc, &err);
    if (srv == NULL)
        goto fail;
    /* A finished job (here, or in any process for PostgreSQL) wakes the
     * GET ?wait= requests parked on its id. */
    if (api)
        store_on_job_done(store, on_job_done, srv);
    if (jobs) {
        struct worker_jobs_config wc = {
            .store = store,
            .blobs = blobs,
            .limits = ctx.limits,
            .workers = nworkers,
            .lease_ms = cfg->lease_ms,
            .slots = slots,
        };
        workers = worker_jobs_start(&wc);
        if (workers == NULL) {
            util_error_set(&err, UTIL_ERR_INTERNAL, "could not start the job workers");
            goto fail;
        }
    }
    /* `api` runs a light sweeper: it only writes which variants it served,
     * so the workers' sweepers evict the least recently used. */
    sweeper = worker_sweeper_start(store, blobs, cfg->sweep_interval_ms, cfg->blob_grace_ms,
                                   cfg->variant_cache_max_bytes, jobs);
    if (sweeper == NULL) {
        util_error_set(&err, UTIL_ERR_INTERNAL, "could not start the sweeper");
        goto fail;
    }
    {
        char addr[300];
        snprintf(addr, sizeof(addr), "%s", cfg->listen);
        char *colon = strrchr(addr, ':');
        if (colon)
            snprintf(colon + 1, sizeof(addr) - (size_t)(colon + 1 - addr), "%d",
                     http_server_port(srv));
        char shape[96];
        if (api && jobs)
            snprintf(shape, sizeof(shape), "%d processing threads, queue %d, %d job workers",
                     concurrency, queue_max, nworkers);
        else if (api)
            snprintf(shape, sizeof(shape), "%d processing threads, queue %d", concurrency,
                     queue_max);
        else
            snprintf(shape, sizeof(shape), "%d job workers", nworkers);
        util_info("listening on %s (image-server %s %s, libvips %s, %s, database %s, blobs %s)",
                  addr, IMAGE_SERVER_VERSION, name, ops_vips_version(), shape,
                  util_redact_url(cfg->database), cfg->blobs);
    }

    int sig = 0;
    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig != SIGHUP)
            break;
        /* SIGHUP re-reads --api-keys-file; a bad file keeps the old keys. */
        struct util_error rerr = {0};
        if (auth && api_auth_reload(auth, &rerr) != 0)
            util_warn("SIGHUP: %s (the previous keys stay)", rerr.detail);
    }
    util_info("received %s: stopping (in-flight work has %lld ms)", strsignal(sig),
              (long long)cfg->shutdown_timeout_ms);
    /* Workers first: they finish or release their jobs; the HTTP side then
     * answers what is in flight. */
    store_on_job_done(store, NULL, NULL);
    worker_jobs_stop(workers, cfg->shutdown_timeout_ms);
    workers = NULL;
    int abandoned = http_server_stop(srv, cfg->shutdown_timeout_ms);
    srv = NULL;
    worker_sweeper_stop(sweeper);
    sweeper = NULL;
    int still = util_pool_stop(pool, 1000) + util_pool_stop(blocking, 1000);
    if (abandoned > 0 || still > 0) {
        /* Threads are still inside libvips: leave without tearing down what
         * they use. Everything acknowledged is already durable. */
        util_warn("stopped with %d request(s) still processing", still);
        fflush(NULL);
        _exit(0);
    }
    util_pool_free(pool);
    util_pool_free(blocking);
    pool = blocking = NULL;
    util_info("stopped");
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "image-server: %s: %s\n", name, err.detail);
    /* A setting that cannot work (an unsupported database URL, a bad
     * --listen, a schema to migrate first) is a usage error like a bad
     * flag. */
    if (err.code == UTIL_ERR_INVALID_OPERATION)
        rc = 2;
out:
    if (store)
        store_on_job_done(store, NULL, NULL);
    worker_jobs_stop(workers, 0);
    if (srv)
        http_server_stop(srv, 0);
    worker_sweeper_stop(sweeper);
    if (pool) {
        util_pool_stop(pool, 0);
        util_pool_free(pool);
    }
    if (blocking) {
        util_pool_stop(blocking, 0);
        util_pool_free(blocking);
    }
    blob_close(blobs);
    store_close(store);
    util_slots_free(slots);
    api_auth_free(auth);
    return rc;
}
