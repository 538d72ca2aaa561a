/* /healthz, /readyz and /metrics (DESIGN §3). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <vips/vips.h>

#include "api/api.h"

enum http_next api_healthz(struct http_request *req, void *ctx)
{
    (void)ctx;
    http_respond_text(req, 200, "application/json", "{\"status\":\"ok\"}");
    return HTTP_DONE;
}

enum http_next api_readyz(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct util_error err = {0};
    if (store_ping(ctx->store, &err) != 0) {
        util_error_set(&err, UTIL_ERR_UNAVAILABLE, "the database is unreachable");
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    http_respond_text(req, 200, "application/json", "{\"status\":\"ready\"}");
    return HTTP_DONE;
}

enum http_next api_metrics(struct http_request *req, void *ctx)
{
    (void)ctx;
    size_t len;
    char *text = util_metrics_render(&len);
    http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    return HTTP_DONE;
}

static void refresh_vips(void *arg)
{
    (void)arg;
    util_metrics_gauge_set("image_server_vips_memory_bytes", "", (double)vips_tracked_get_mem());
    util_metrics_gauge_set("image_server_vips_memory_highwater_bytes", "",
                           (double)vips_tracked_get_mem_highwater());
}

void api_metrics_init(struct api_ctx *ctx)
{
    (void)ctx;
    util_metrics_describe("http_requests_total", "counter",
                          "HTTP requests answered, by route, method and status");
    util_metrics_describe("http_request_duration_seconds", "histogram",
                          "time from the request line to the answer, by route");
    util_metrics_describe("http_request_bytes_total", "counter", "request body bytes received");
    util_metrics_describe("http_response_bytes_total", "counter", "response body bytes sent");
    util_metrics_describe("image_server_vips_memory_bytes", "gauge",
                          "memory libvips has allocated for pixels now");
    util_metrics_describe("image_server_vips_memory_highwater_bytes", "gauge",
                          "the most memory libvips has had allocated for pixels");
    util_metrics_describe("image_server_uploads_total", "counter", "images stored");
    util_metrics_describe("image_server_upload_bytes_total", "counter", "bytes of images stored");
    util_metrics_describe("image_server_uploads_rejected_total", "counter",
                          "uploads refused because the image was not acceptable");
    util_metrics_describe("image_server_deletes_total", "counter", "images deleted");
    util_metrics_describe("image_server_processing_rejected_total", "counter",
                          "requests answered 503 because the processing queue was full");
    util_metrics_describe("image_server_blobs_collected_total", "counter",
                          "unreferenced blobs removed by the sweeper");
    util_metrics_on_render(refresh_vips, NULL);
    /* Series that should exist from the start, at zero. */
    util_metrics_counter_add("image_server_uploads_total", "", 0);
    util_metrics_counter_add("image_server_processing_rejected_total", "", 0);
    util_metrics_counter_add("image_server_blobs_collected_total", "", 0);
}
