/*
 * POST /v1/transform?w=..: image body in, result out, nothing stored
 * (DESIGN §3). Same parser and executor as variants.
 */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

struct transform_state {
    struct ops_plan plan; /* parsed on the I/O thread */
    char accept[512];     /* for format=auto */
};

enum http_next api_transform(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct util_error err = {0};
    if (!http_request_on_pool(req)) {
        struct transform_state *ts = calloc(1, sizeof(*ts));
        if (ts == NULL) {
            util_error_set(&err, UTIL_ERR_INTERNAL, "out of memory");
            api_respond_error(req, &err);
            return HTTP_DONE;
        }
        /* The operation first: a bad query is a 400 whatever the body. */
        if (ops_parse_query(http_request_raw_query(req), &ts->plan, &err) != 0 ||
            api_check_image_body(req, &err) != 0) {
            free(ts);
            api_respond_error(req, &err);
            return HTTP_DONE;
        }
        const char *accept = http_request_header(req, "Accept");
        g_strlcpy(ts->accept, accept ? accept : "", sizeof(ts->accept));
        http_request_set_state(req, ts, free);
        return HTTP_RUN_ON_POOL;
    }
    struct transform_state *ts = http_request_state(req);
    const void *data = NULL;
    size_t len = 0;
    struct ops_result res = {0};
    if (api_body_image(req, &data, &len, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    int64_t t0 = util_monotonic_us();
    if (ops_execute(data, len, &ts->plan, ts->accept, &ctx->limits, &res, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    char labels[40];
    snprintf(labels, sizeof(labels), "format=\"%s\"", res.format);
    util_metrics_histogram_observe("image_server_transform_seconds", labels,
                                   (double)(util_monotonic_us() - t0) / 1e6);
    if (ts->plan.output.format == OPS_FORMAT_AUTO)
        http_response_header(req, "Vary", "Accept");
    http_response_header(req, "Cache-Control", "no-store");
    http_respond(req, 200, ops_mime_type(res.format), res.buf, res.len);
    return HTTP_DONE;
}
