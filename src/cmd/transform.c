/*
 * `image-server transform IN OUT 'QUERY'`: one local file through the same
 * parser and executor as the API. The output format is OUT's extension
 * unless the query says format=. Exit 2 for a bad query or usage, 1 for a
 * bad or refused image, with the API's detail text.
 */
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cmd/cmd.h"
#include "ops/ops.h"
#include "util/util.h"

/* The format OUT's extension names, or -1. */
static int format_from_path(const char *path)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (dot == NULL || (slash && dot < slash))
        return -1;
    dot++;
    static const struct {
        const char *ext;
        enum ops_format f;
    } EXT[] = {{"jpg", OPS_FORMAT_JPEG},  {"jpeg", OPS_FORMAT_JPEG}, {"png", OPS_FORMAT_PNG},
               {"webp", OPS_FORMAT_WEBP}, {"avif", OPS_FORMAT_AVIF}, {"gif", OPS_FORMAT_GIF},
               {"tif", OPS_FORMAT_TIFF},  {"tiff", OPS_FORMAT_TIFF}};
    for (size_t i = 0; i < sizeof(EXT) / sizeof(EXT[0]); i++)
        if (strcasecmp(dot, EXT[i].ext) == 0)
            return (int)EXT[i].f;
    return -1;
}

int cmd_transform(int argc, char **argv, const char *argv0)
{
    struct util_config cfg;
    int argi, status;
    if (!cmd_flags(&cfg, UTIL_CMD_TRANSFORM, "transform",
                   "usage: image-server transform [FLAGS] IN OUT 'QUERY'\n"
                   "  QUERY is a variant query such as 'w=800&rotate=90' (see the README);\n"
                   "  the output format is OUT's extension unless QUERY has format=.\n",
                   argc, argv, &argi, &status))
        return status;
    int rc = 2;
    gchar *data = NULL;
    gsize len = 0;
    struct ops_result res = {0};
    if (argc - argi != 3) {
        fprintf(stderr, "usage: image-server transform [FLAGS] IN OUT 'QUERY'\n");
        goto out;
    }
    const char *in = argv[argi], *outp = argv[argi + 1], *query = argv[argi + 2];
    if (query[0] == '?')
        query++;
    struct ops_plan plan;
    struct util_error err = {0};
    if (ops_parse_query(query, &plan, &err) != 0) {
        fprintf(stderr, "image-server: transform: %s\n", err.detail);
        goto out;
    }
    if (plan.output.format == OPS_FORMAT_AUTO) {
        fprintf(stderr, "image-server: transform: format=auto needs an HTTP Accept header; "
                        "name a format\n");
        goto out;
    }
    if (plan.output.format == OPS_FORMAT_SOURCE) {
        int f = format_from_path(outp);
        if (f < 0) {
            fprintf(stderr,
                    "image-server: transform: cannot tell the output format from '%s' "
                    "(use .jpg .png .webp .avif .gif .tif, or format=)\n",
                    outp);
            goto out;
        }
        plan.output.format = (enum ops_format)f;
    }
    rc = 1;
    GError *gerr = NULL;
    if (!g_file_get_contents(in, &data, &len, &gerr)) {
        fprintf(stderr, "image-server: transform: %s\n", gerr->message);
        g_error_free(gerr);
        goto out;
    }
    if (ops_init(argv0, (int)cfg.vips_threads, &err) != 0) {
        fprintf(stderr, "image-server: transform: %s\n", err.detail);
        goto out;
    }
    struct ops_limits limits = {.max_pixels = cfg.max_pixels,
                                .max_pixels_progressive = cfg.max_pixels_progressive,
                                .max_output_pixels = cfg.max_output_pixels,
                                .timeout_ms = cfg.timeout_ms};
    if (ops_execute(data, len, &plan, NULL, &limits, &res, &err) != 0) {
        fprintf(stderr, "image-server: transform: %s\n", err.detail);
        /* A query that does not fit the image (crop outside it) is a bad
         * query, as the API's 400 says. */
        if (err.code == UTIL_ERR_INVALID_OPERATION)
            rc = 2;
        goto out;
    }
    if (!g_file_set_contents(outp, res.buf, (gssize)res.len, &gerr)) {
        fprintf(stderr, "image-server: transform: %s\n", gerr->message);
        g_error_free(gerr);
        goto out;
    }
    rc = 0;
out:
    g_free(res.buf);
    g_free(data);
    util_config_free(&cfg);
    return rc;
}
