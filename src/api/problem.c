/* Domain errors to HTTP problems (api.h): the one table of DESIGN §3. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

static const struct {
    enum util_err code;
    int status;
    const char *type;
    const char *title;
} TABLE[] = {
    {UTIL_ERR_INVALID_OPERATION, 400, "/problems/invalid-operation", "Invalid operation"},
    {UTIL_ERR_NOT_FOUND, 404, "/problems/not-found", "Not found"},
    {UTIL_ERR_UNSUPPORTED, 415, "/problems/unsupported-media-type", "Unsupported media type"},
    {UTIL_ERR_INVALID_IMAGE, 422, "/problems/invalid-image", "Invalid image"},
    {UTIL_ERR_TOO_LARGE, 422, "/problems/image-too-large", "Image too large"},
    {UTIL_ERR_CONFLICT, 409, "/problems/conflict", "Conflict"},
    {UTIL_ERR_OVERLOADED, 503, "/problems/overloaded", "Overloaded"},
    {UTIL_ERR_TIMEOUT, 503, "/problems/timeout", "Timeout"},
    {UTIL_ERR_UNAVAILABLE, 503, "/problems/unavailable", "Service unavailable"},
    {UTIL_ERR_INTERNAL, 500, "/problems/internal", "Internal error"},
};

void api_error_map(enum util_err code, int *status, const char **type, const char **title)
{
    for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); i++) {
        if (TABLE[i].code == code) {
            *status = TABLE[i].status;
            *type = TABLE[i].type;
            *title = TABLE[i].title;
            return;
        }
    }
    *status = 500;
    *type = "/problems/internal";
    *title = "Internal error";
}

char *api_problem_json(int status, const char *type, const char *title, const char *detail)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "title", json_string(title));
    json_object_set_new(o, "status", json_integer(status));
    if (detail) {
        json_t *d = json_string(detail);
        if (d == NULL) /* not valid UTF-8: keep the ASCII part */
            d = json_string("(detail not valid UTF-8)");
        json_object_set_new(o, "detail", d);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

void api_respond_error(struct http_request *req, const struct util_error *err)
{
    int status;
    const char *type;
    const char *title;
    api_error_map(err->code, &status, &type, &title);
    if (status == 500) {
        util_error("request %s: internal error: %s", http_request_id(req), err->detail);
        http_respond_problem(req, status, type, title, "see the server log for this request id");
        return;
    }
    http_respond_problem(req, status, type, title, err->detail[0] ? err->detail : NULL);
}
