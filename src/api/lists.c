/* List parameters and pages (DESIGN §3): limit 1..1000 (default 100), an
 * opaque cursor, newest first, and nothing else unless the route names it. */
#include <glib.h>
#include <string.h>

#include "api/api.h"

#define LIST_DEFAULT 100
#define LIST_MAX     1000

int api_list_params(struct http_request *req, const char *const *extra, int64_t *limit,
                    int64_t *before, struct util_error *err)
{
    *limit = LIST_DEFAULT;
    *before = 0;
    const char *l = http_request_query(req, "limit");
    if (l && (util_parse_int(l, limit) != 0 || *limit < 1 || *limit > LIST_MAX))
        return util_error_set(err, UTIL_ERR_INVALID_OPERATION, "limit must be an integer 1..%d",
                              LIST_MAX);
    const char *c = http_request_query(req, "cursor");
    if (c && util_cursor_decode(c, before) != 0)
        return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                              "cursor is not one this server gave out");
    /* Any other parameter is a mistake worth telling about. */
    gchar **pairs = g_strsplit(http_request_raw_query(req), "&", -1);
    int rc = 0;
    for (int i = 0; pairs[i] && rc == 0; i++) {
        char *eq = strchr(pairs[i], '=');
        if (eq)
            *eq = '\0';
        bool known = pairs[i][0] == '\0' || strcmp(pairs[i], "limit") == 0 ||
                     strcmp(pairs[i], "cursor") == 0;
        for (int k = 0; extra && extra[k] && !known; k++)
            known = strcmp(pairs[i], extra[k]) == 0;
        if (!known)
            rc = util_error_set(err, UTIL_ERR_INVALID_OPERATION, "unknown parameter '%.40s'",
                                pairs[i]);
    }
    g_strfreev(pairs);
    return rc;
}

json_t *api_list_page(json_t *items, bool more, int64_t last_seq)
{
    json_t *next = json_null();
    if (more) {
        char cur[UTIL_CURSOR_MAX];
        util_cursor_encode(last_seq, cur);
        next = json_string(cur);
    }
    return json_pack("{s:o, s:o}", "items", items, "next_cursor", next);
}
