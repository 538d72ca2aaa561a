/*
 * /v1/images: upload, download, info, list, delete (DESIGN §3).
 *
 * An upload is accepted only once it decodes completely (ops_probe), its
 * blob is durable (blob_put: fsync + rename + directory fsync) and its row
 * is committed, in that order: a 201 means the image survives a crash and
 * can be transformed later.
 */
#include <glib.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"

static json_t *image_json(const struct store_image *img, bool info)
{
    char created[40];
    util_rfc3339_ms(img->created_at_ms, created, sizeof(created));
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s}", "id", img->id, "format", img->format,
                  "width", (json_int_t)img->width, "height", (json_int_t)img->height, "bytes",
                  (json_int_t)img->bytes, "sha256", img->sha256, "created_at", created);
    if (info && o) {
        json_object_set_new(o, "pages", json_integer(img->pages));
        json_object_set_new(o, "has_alpha", json_boolean(img->has_alpha));
        json_object_set_new(o, "orientation", json_integer(img->orientation));
        json_object_set_new(o, "icc", img->icc[0] ? json_string(img->icc) : json_null());
    }
    return o;
}

void api_respond_json(struct http_request *req, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s == NULL) {
        http_respond_problem(req, 500, "/problems/internal", "Internal error",
                             "could not encode the answer");
        return;
    }
    http_respond(req, status, "application/json", s, strlen(s));
}

/* Looks the image up by its {id}; answers 404 itself. */
bool api_find_image(struct http_request *req, struct api_ctx *ctx, struct store_image *img)
{
    const char *id = http_request_param(req, "id");
    struct util_error err = {0};
    if (!util_id_valid(id)) {
        util_error_set(&err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id ? id : "");
        api_respond_error(req, &err);
        return false;
    }
    if (store_image_get(ctx->store, id, img, &err) != 0) {
        api_respond_error(req, &err);
        return false;
    }
    return true;
}

/* ---- upload ------------------------------------------------------------- */

/* Where the image bytes are in the body: raw, or the multipart field "file". */
int api_body_image(struct http_request *req, const void **data, size_t *len, struct util_error *err)
{
    const char *ct = http_request_header(req, "Content-Type");
    size_t blen;
    const void *body = http_request_body(req, &blen);
    if (ct && strncasecmp(ct, "multipart/form-data", 19) == 0) {
        char boundary[80];
        if (http_multipart_boundary(ct, boundary, sizeof(boundary)) != 0)
            return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                                  "multipart/form-data needs a valid boundary parameter");
        struct http_part part;
        char detail[128] = "";
        int rc = http_multipart_find(body, blen, boundary, "file", &part, detail, sizeof(detail));
        if (rc < 0)
            return util_error_set(err, UTIL_ERR_INVALID_OPERATION, "malformed multipart body: %s",
                                  detail);
        if (rc > 0)
            return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                                  "the multipart body has no field named 'file'");
        *data = part.data;
        *len = part.len;
        return 0;
    }
    *data = body;
    *len = blen;
    return 0;
}

static void upload(struct http_request *req, struct api_ctx *ctx)
{
    struct util_error err = {0};
    const void *data = NULL;
    size_t len = 0;
    if (api_body_image(req, &data, &len, &err) != 0) {
        api_respond_error(req, &err);
        return;
    }
    struct ops_image_info info;
    if (ops_probe(data, len, &ctx->limits, &info, &err) != 0) {
        util_metrics_counter_add("image_server_uploads_rejected_total", "", 1);
        api_respond_error(req, &err);
        return;
    }
    struct store_image img = {0};
    if (util_id_new(img.id) != 0) {
        util_error_set(&err, UTIL_ERR_INTERNAL, "no randomness for an id");
        api_respond_error(req, &err);
        return;
    }
    blob_sha256_hex(data, len, img.sha256);
    g_strlcpy(img.format, info.format, sizeof(img.format));
    img.width = info.width;
    img.height = info.height;
    img.pages = info.pages;
    img.bytes = (int64_t)len;
    img.has_alpha = info.has_alpha;
    img.orientation = info.orientation;
    g_strlcpy(img.icc, info.icc, sizeof(img.icc));

    /* Answered 503 by a stop already? Then store nothing: a client that
     * retries must not end up with two images. */
    if (!http_request_begin_commit(req)) {
        http_respond_problem(req, 503, "/problems/unavailable", "Service unavailable",
                             "the server is shutting down");
        return;
    }
    /* Blob first (durable), then the row (DESIGN §5). */
    if (blob_put(ctx->blobs, img.sha256, data, len, &err) != 0 ||
        store_image_insert(ctx->store, &img, &err) != 0) {
        api_respond_error(req, &err);
        return;
    }
    /* A sweeper that saw the blob unreferenced just before our row existed
     * may have removed it between our put and our commit: put it back. */
    bool present = false;
    if (blob_exists(ctx->blobs, img.sha256, &present, &err) != 0 ||
        (!present && blob_put(ctx->blobs, img.sha256, data, len, &err) != 0)) {
        /* No row may point at bytes we could not keep. */
        struct util_error derr = {0};
        store_image_delete(ctx->store, img.id, &derr);
        api_respond_error(req, &err);
        return;
    }
    util_metrics_counter_add("image_server_uploads_total", "", 1);
    util_metrics_counter_add("image_server_upload_bytes_total", "", (double)len);
    char location[64];
    snprintf(location, sizeof(location), "/v1/images/%s", img.id);
    http_response_header(req, "Location", location);
    api_respond_json(req, 201, image_json(&img, false));
}

enum http_next api_images_create(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    if (http_request_on_pool(req)) {
        upload(req, ctx);
        return HTTP_DONE;
    }
    /* Cheap checks on the I/O thread; decoding goes to the pool. */
    struct util_error err = {0};
    if (api_check_image_body(req, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    return HTTP_RUN_ON_POOL;
}

int api_check_image_body(struct http_request *req, struct util_error *err)
{
    const char *ct = http_request_header(req, "Content-Type");
    if (ct == NULL ||
        (strncasecmp(ct, "image/", 6) != 0 && strncasecmp(ct, "multipart/form-data", 19) != 0))
        return util_error_set(err, UTIL_ERR_UNSUPPORTED,
                              "send the image as the body with Content-Type image/*, or as the "
                              "multipart/form-data field 'file' (got %.60s)",
                              ct ? ct : "no Content-Type");
    size_t len;
    http_request_body(req, &len);
    if (len == 0)
        return util_error_set(err, UTIL_ERR_UNSUPPORTED, "the body is empty");
    return 0;
}

/* ---- download ----------------------------------------------------------- */

/* RFC 9110 §13.1.2: If-None-Match is a list of entity tags or "*"; weak
 * comparison. */
bool api_etag_matches(const char *header, const char *etag)
{
    if (header == NULL)
        return false;
    const char *p = header;
    size_t elen = strlen(etag);
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - start) == elen && memcmp(start, etag, elen) == 0)
            return true;
    }
    return false;
}

enum http_next api_images_get(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    if (http_request_on_pool(req) || http_request_raw_query(req)[0] != '\0') {
        enum http_next next;
        if (api_variant(req, ctx, &next))
            return next;
    }
    struct store_image img;
    if (!api_find_image(req, ctx, &img))
        return HTTP_DONE;
    char etag[80];
    snprintf(etag, sizeof(etag), "\"%s\"", img.sha256);
    http_response_header(req, "ETag", etag);
    http_response_header(req, "Cache-Control", API_CACHE_FOREVER);
    if (api_etag_matches(http_request_header(req, "If-None-Match"), etag)) {
        http_respond_empty(req, 304);
        return HTTP_DONE;
    }
    struct blob_data data;
    struct util_error err = {0};
    if (blob_get(ctx->blobs, img.sha256, &data, &err) != 0) {
        if (err.code == UTIL_ERR_NOT_FOUND) {
            /* A row whose blob is gone is a bug or lost storage, not a 404. */
            util_error("image %s: blob %s is missing", img.id, img.sha256);
            util_error_set(&err, UTIL_ERR_UNAVAILABLE, "the image's bytes cannot be read");
        }
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    const char *mime = ops_mime_type(img.format);
    if (data.fd >= 0)
        http_respond_fd(req, 200, mime, data.fd, data.size);
    else
        http_respond(req, 200, mime, data.mem, data.size);
    return HTTP_DONE;
}

enum http_next api_images_info(struct http_request *req, void *vctx)
{
    struct store_image img;
    if (api_find_image(req, vctx, &img))
        api_respond_json(req, 200, image_json(&img, true));
    return HTTP_DONE;
}

/* ---- list --------------------------------------------------------------- */

enum http_next api_images_list(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct util_error err = {0};
    int64_t limit, before;
    if (api_list_params(req, NULL, &limit, &before, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    /* One extra row tells whether there is a next page. */
    struct store_image *items = calloc((size_t)limit + 1, sizeof(*items));
    int n = 0;
    if (items == NULL ||
        store_image_list(ctx->store, before, (int)limit + 1, items, &n, &err) != 0) {
        if (items == NULL)
            util_error_set(&err, UTIL_ERR_INTERNAL, "out of memory");
        free(items);
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    json_t *arr = json_array();
    int shown = n > limit ? (int)limit : n;
    for (int i = 0; i < shown; i++)
        json_array_append_new(arr, image_json(&items[i], false));
    json_t *page = api_list_page(arr, n > limit, shown > 0 ? items[shown - 1].seq : 0);
    free(items);
    api_respond_json(req, 200, page);
    return HTTP_DONE;
}

/* ---- delete ------------------------------------------------------------- */

enum http_next api_images_delete(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    if (!http_request_on_pool(req))
        return HTTP_RUN_BLOCKING; /* a committed write */
    const char *id = http_request_param(req, "id");
    struct util_error err = {0};
    if (!util_id_valid(id)) {
        util_error_set(&err, UTIL_ERR_NOT_FOUND, "no image has the id '%.40s'", id ? id : "");
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    if (store_image_delete(ctx->store, id, &err) != 0) {
        api_respond_error(req, &err);
        return HTTP_DONE;
    }
    util_metrics_counter_add("image_server_deletes_total", "", 1);
    http_respond_empty(req, 204);
    return HTTP_DONE;
}
