/*
 * Variants: GET /v1/images/{id}?w=..&rotate=.. (DESIGN §3).
 *
 * On the I/O thread: parse the query (the one parser), find the image,
 * resolve the output format (format=auto reads Accept), derive the cache key
 * and ETag, answer 304, or a cache hit straight from its blob. A miss goes
 * to the processing pool, where concurrent requests for the same missing
 * variant are folded into one computation (single flight), the result is
 * stored as a blob plus a row, and served.
 */
#include <glib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

/* What the I/O-thread half hands to the pool half. */
struct variant_state {
    struct store_image img;      /* the source */
    struct ops_plan plan;        /* output format resolved */
    char key[OPS_CANONICAL_MAX]; /* canonical plan: the cache key with the image id */
    char etag[80];               /* from image sha256 + key */
    bool vary;                   /* format=auto: the answer depends on Accept */
};

/* One computation in progress, for single flight. */
struct flight {
    int waiters;       /* requests waiting for it, besides the one computing */
    bool done;         /* finished (stored or failed) */
    pthread_cond_t cv; /* signalled when done */
};

static pthread_mutex_t flights_lock = PTHREAD_MUTEX_INITIALIZER;
static GHashTable *flights; /* "image_id\nkey" -> struct flight */

void api_variants_init(void)
{
    pthread_mutex_lock(&flights_lock);
    if (flights == NULL)
        flights = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    pthread_mutex_unlock(&flights_lock);
    util_metrics_describe("image_server_variant_cache_total", "counter",
                          "variant requests by cache result (hit, miss, off)");
    util_metrics_describe("image_server_transform_seconds", "histogram",
                          "time to decode, transform and encode one image, by output format");
    util_metrics_describe("image_server_variants_evicted_total", "counter",
                          "variants evicted from the cache (least recently used)");
    util_metrics_counter_add("image_server_variant_cache_total", "result=\"hit\"", 0);
    util_metrics_counter_add("image_server_variant_cache_total", "result=\"miss\"", 0);
}

/* Returns true if this caller must compute; false if another request
 * computed it meanwhile (look in the cache again). */
static bool flight_begin(const char *fkey)
{
    pthread_mutex_lock(&flights_lock);
    struct flight *f = g_hash_table_lookup(flights, fkey);
    if (f == NULL) {
        f = calloc(1, sizeof(*f));
        pthread_cond_init(&f->cv, NULL);
        g_hash_table_insert(flights, g_strdup(fkey), f);
        pthread_mutex_unlock(&flights_lock);
        return true;
    }
    f->waiters++;
    while (!f->done)
        pthread_cond_wait(&f->cv, &flights_lock);
    if (--f->waiters == 0) {
        pthread_cond_destroy(&f->cv);
        free(f);
    }
    pthread_mutex_unlock(&flights_lock);
    return false;
}

static void flight_end(const char *fkey)
{
    pthread_mutex_lock(&flights_lock);
    struct flight *f = g_hash_table_lookup(flights, fkey);
    if (f) {
        g_hash_table_remove(flights, fkey);
        f->done = true;
        if (f->waiters == 0) {
            pthread_cond_destroy(&f->cv);
            free(f);
        } else {
            pthread_cond_broadcast(&f->cv);
        }
    }
    pthread_mutex_unlock(&flights_lock);
}

static void set_headers(struct http_request *req, const struct variant_state *vs)
{
    http_response_header(req, "ETag", vs->etag);
    http_response_header(req, "Cache-Control", API_CACHE_FOREVER);
    if (vs->vary)
        http_response_header(req, "Vary", "Accept");
}

/* Serves a cached variant if its row and blob exist. */
static bool serve_cached(struct http_request *req, struct api_ctx *ctx,
                         const struct variant_state *vs)
{
    struct store_variant v;
    struct util_error err = {0};
    if (store_variant_get(ctx->store, vs->img.id, vs->key, &v, &err) != 0) {
        if (err.code != UTIL_ERR_NOT_FOUND)
            util_warn("variant cache: %s", err.detail);
        return false;
    }
    struct blob_data data;
    if (blob_get(ctx->blobs, v.sha256, &data, &err) != 0)
        return false; /* evicted and collected meanwhile: make it again */
    store_variant_touch(ctx->store, vs->img.id, vs->key, util_now_ms());
    util_metrics_counter_add("image_server_variant_cache_total", "result=\"hit\"", 1);
    set_headers(req, vs);
    const char *mime = ops_mime_type(v.format);
    if (data.fd >= 0)
        http_respond_fd(req, 200, mime, data.fd, data.size);
    else
        http_respond(req, 200, mime, data.mem, data.size);
    return true;
}

/* The I/O-thread half. Returns false to serve the original. */
static bool variant_prepare(struct http_request *req, struct api_ctx *ctx, enum http_next *next)
{
    struct util_error err = {0};
    struct variant_state *vs = calloc(1, sizeof(*vs));
    if (vs == NULL) {
        util_error_set(&err, UTIL_ERR_INTERNAL, "out of memory");
        api_respond_error(req, &err);
        *next = HTTP_DONE;
        return true;
    }
    if (ops_parse_query(http_request_raw_query(req), &vs->plan, &err) != 0) {
        free(vs);
        api_respond_error(req, &err);
        *next = HTTP_DONE;
        return true;
    }
    if (ops_plan_is_empty(&vs->plan)) {
        free(vs);
        return false;
    }
    *next = HTTP_DONE;
    if (!api_find_image(req, ctx, &vs->img)) {
        free(vs);
        return true;
    }
    vs->vary = vs->plan.output.format == OPS_FORMAT_AUTO;
    vs->plan.output.format =
        ops_resolve_format(&vs->plan, vs->img.format, http_request_header(req, "Accept"));
    if (ops_plan_canonical(&vs->plan, vs->key, sizeof(vs->key)) != 0) {
        free(vs);
        util_error_set(&err, UTIL_ERR_INVALID_OPERATION, "the operation is too long");
        api_respond_error(req, &err);
        return true;
    }
    /* The ETag names the source bytes and the resolved plan: equal for the
     * same variant, whichever URL order or Accept header asked for it. */
    char *material = g_strdup_printf("%s\n%s", vs->img.sha256, vs->key);
    char hex[65];
    blob_sha256_hex(material, strlen(material), hex);
    g_free(material);
    snprintf(vs->etag, sizeof(vs->etag), "\"v%.40s\"", hex);
    if (api_etag_matches(http_request_header(req, "If-None-Match"), vs->etag)) {
        set_headers(req, vs);
        http_respond_empty(req, 304);
        free(vs);
        return true;
    }
    if (ctx->variant_cache && serve_cached(req, ctx, vs)) {
        free(vs);
        return true;
    }
    http_request_set_state(req, vs, free);
    *next = HTTP_RUN_ON_POOL;
    return true;
}

/* The pool half: make the variant (once), store it, serve it. */
static void variant_make(struct http_request *req, struct api_ctx *ctx)
{
    struct variant_state *vs = http_request_state(req);
    struct util_error err = {0};
    char *fkey = NULL;
    if (ctx->variant_cache) {
        fkey = g_strdup_printf("%s\n%s", vs->img.id, vs->key);
        if (!flight_begin(fkey)) {
            /* Another request made it while we waited. */
            g_free(fkey);
            fkey = NULL;
            if (serve_cached(req, ctx, vs))
                return;
            /* It failed or was not stored: make it ourselves, unshared. */
        } else if (serve_cached(req, ctx, vs)) {
            /* A flight for it ended between our miss on the I/O thread and
             * now: it is in the cache. */
            flight_end(fkey);
            g_free(fkey);
            return;
        }
    }
    util_metrics_counter_add("image_server_variant_cache_total",
                             ctx->variant_cache ? "result=\"miss\"" : "result=\"off\"", 1);
    struct blob_data src = {.fd = -1};
    struct ops_result res = {0};
    if (blob_get_mem(ctx->blobs, vs->img.sha256, &src, &err) != 0) {
        if (err.code == UTIL_ERR_NOT_FOUND)
            util_error_set(&err, UTIL_ERR_UNAVAILABLE, "the image's bytes cannot be read");
        goto fail;
    }
    int64_t t0 = util_monotonic_us();
    if (ops_execute(src.mem, src.size, &vs->plan, NULL, &ctx->limits, &res, &err) != 0) {
        if (err.code == UTIL_ERR_UNSUPPORTED)
            err.code = UTIL_ERR_INVALID_IMAGE; /* it was an image when stored */
        goto fail;
    }
    char labels[40];
    snprintf(labels, sizeof(labels), "format=\"%s\"", res.format);
    util_metrics_histogram_observe("image_server_transform_seconds", labels,
                                   (double)(util_monotonic_us() - t0) / 1e6);
    if (ctx->variant_cache) {
        struct store_variant v = {.plan = vs->key,
                                  .width = res.width,
                                  .height = res.height,
                                  .bytes = (int64_t)res.len,
                                  .created_at_ms = util_now_ms()};
        g_strlcpy(v.image_id, vs->img.id, sizeof(v.image_id));
        g_strlcpy(v.format, res.format, sizeof(v.format));
        blob_sha256_hex(res.buf, res.len, v.sha256);
        struct util_error serr = {0};
        /* A failure to cache is logged, not fatal: the answer is ready. */
        if (blob_put(ctx->blobs, v.sha256, res.buf, res.len, &serr) != 0 ||
            store_variant_put(ctx->store, &v, &serr) != 0)
            if (serr.code != UTIL_ERR_NOT_FOUND)
                util_warn("variant cache: could not store %s: %s", vs->img.id, serr.detail);
    }
    if (fkey)
        flight_end(fkey);
    g_free(fkey);
    blob_data_free(&src);
    set_headers(req, vs);
    http_respond(req, 200, ops_mime_type(res.format), res.buf, res.len);
    return;
fail:
    if (fkey)
        flight_end(fkey);
    g_free(fkey);
    blob_data_free(&src);
    g_free(res.buf);
    api_respond_error(req, &err);
}

bool api_variant(struct http_request *req, struct api_ctx *ctx, enum http_next *next)
{
    if (http_request_on_pool(req)) {
        variant_make(req, ctx);
        *next = HTTP_DONE;
        return true;
    }
    return variant_prepare(req, ctx, next);
}
