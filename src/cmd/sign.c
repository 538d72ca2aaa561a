/*
 * `image-server sign PATH?QUERY`: prints the variant URL with its sig=
 * (DESIGN §1), for applications that issue URLs. The key comes from
 * --signing-key or IMAGE_SERVER_SIGNING_KEY.
 */
#include <glib.h>
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "cmd/cmd.h"

int cmd_sign(int argc, char **argv, const char *argv0)
{
    (void)argv0;
    struct util_config cfg;
    int argi, status;
    if (!cmd_flags(&cfg, UTIL_CMD_SIGN, "sign",
                   "usage: image-server sign [--signing-key KEY] '/v1/images/ID?w=800&q=80'\n",
                   argc, argv, &argi, &status))
        return status;
    int rc = 2;
    if (argc - argi != 1) {
        fprintf(stderr, "usage: image-server sign [--signing-key KEY] 'PATH?QUERY'\n");
        goto out;
    }
    if (cfg.signing_key[0] == '\0') {
        fprintf(stderr, "image-server: sign: no key: give --signing-key or "
                        "IMAGE_SERVER_SIGNING_KEY\n");
        goto out;
    }
    const char *url = argv[argi];
    const char *q = strchr(url, '?');
    char *path = q ? g_strndup(url, (gsize)(q - url)) : g_strdup(url);
    const char *query = q ? q + 1 : "";
    char sig[API_SIG_LEN + 1];
    const char *old = NULL;
    api_signature(cfg.signing_key, path, query, sig, &old);
    /* Print the URL without any sig= it had, then the new one. */
    GString *out = g_string_new(path);
    gchar **pairs = g_strsplit(query, "&", -1);
    bool first = true;
    for (int i = 0; pairs[i]; i++) {
        if (pairs[i][0] == '\0' || g_str_has_prefix(pairs[i], "sig=") ||
            strcmp(pairs[i], "sig") == 0)
            continue;
        g_string_append_c(out, first ? '?' : '&');
        g_string_append(out, pairs[i]);
        first = false;
    }
    g_string_append_printf(out, "%csig=%s", first ? '?' : '&', sig);
    printf("%s\n", out->str);
    g_string_free(out, TRUE);
    g_strfreev(pairs);
    g_free(path);
    rc = 0;
out:
    util_config_free(&cfg);
    return rc;
}
