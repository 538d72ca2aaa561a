/*
 * Access (DESIGN §1): API keys for writes, job calls and the image list;
 * HMAC-SHA256 signatures for variant URLs. Checked on the I/O thread right
 * after routing, before the body or the id is looked at, so a refused
 * client learns nothing (not even a 404).
 *
 * Keys are kept as SHA-256 digests and compared in constant time against
 * the digest of what the client sent, so neither the content nor the
 * length of a key leaks through timing. Signatures use GLib's GHmac
 * (DESIGN §5).
 */
#include <glib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

struct api_auth {
    pthread_rwlock_t lock; /* guards digests (SIGHUP reloads them) */
    GArray *digests;       /* guint8[32] per key */
    int nflag_keys;        /* the first ones come from --api-key */
    char *keys_file;       /* --api-keys-file, NULL if none */
    char *signing_key;     /* NULL if none */
};

static void digest(const char *text, size_t len, guint8 out[32])
{
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    g_checksum_update(c, (const guchar *)text, (gssize)len);
    gsize n = 32;
    g_checksum_get_digest(c, out, &n);
    g_checksum_free(c);
}

/* Adds each non-empty, non-comment line of text as a key. */
static void add_keys(GArray *digests, const char *text)
{
    gchar **lines = g_strsplit(text ? text : "", "\n", -1);
    for (int i = 0; lines[i]; i++) {
        char *k = g_strstrip(lines[i]);
        if (*k == '\0' || *k == '#')
            continue;
        guint8 d[32];
        digest(k, strlen(k), d);
        g_array_append_vals(digests, d, 32);
    }
    g_strfreev(lines);
}

static int load_file(GArray *digests, const char *path, struct util_error *err)
{
    gchar *text = NULL;
    GError *gerr = NULL;
    if (!g_file_get_contents(path, &text, NULL, &gerr)) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "--api-keys-file: %s", gerr->message);
        g_error_free(gerr);
        return -1;
    }
    add_keys(digests, text);
    g_free(text);
    return 0;
}

struct api_auth *api_auth_new(const char *keys, const char *keys_file, const char *signing_key,
                              struct util_error *err)
{
    struct api_auth *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    pthread_rwlock_init(&a->lock, NULL);
    a->digests = g_array_new(FALSE, FALSE, 1);
    add_keys(a->digests, keys);
    a->nflag_keys = (int)(a->digests->len / 32);
    if (keys_file && keys_file[0]) {
        a->keys_file = strdup(keys_file);
        if (load_file(a->digests, keys_file, err) != 0) {
            api_auth_free(a);
            return NULL;
        }
    }
    if (signing_key && signing_key[0])
        a->signing_key = strdup(signing_key);
    return a;
}

int api_auth_reload(struct api_auth *a, struct util_error *err)
{
    if (a->keys_file == NULL)
        return 0;
    GArray *fresh = g_array_new(FALSE, FALSE, 1);
    g_array_append_vals(fresh, a->digests->data, (guint)a->nflag_keys * 32);
    if (load_file(fresh, a->keys_file, err) != 0) {
        g_array_free(fresh, TRUE);
        return -1; /* keep the keys we had */
    }
    pthread_rwlock_wrlock(&a->lock);
    GArray *old = a->digests;
    a->digests = fresh;
    pthread_rwlock_unlock(&a->lock);
    g_array_free(old, TRUE);
    util_info("api keys reloaded: %u key(s)", fresh->len / 32);
    return 0;
}

void api_auth_free(struct api_auth *a)
{
    if (a == NULL)
        return;
    g_array_free(a->digests, TRUE);
    pthread_rwlock_destroy(&a->lock);
    free(a->keys_file);
    free(a->signing_key);
    free(a);
}

/* Constant time in the contents of a and b (n is public). */
static bool same(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = a;
    const volatile unsigned char *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

/* 1: no keys configured; 2: a valid key was sent; 0: none or a wrong one. */
static int key_state(struct api_auth *a, struct http_request *req)
{
    pthread_rwlock_rdlock(&a->lock);
    guint n = a->digests->len / 32;
    int state = 0;
    if (n == 0) {
        state = 1;
    } else {
        const char *h = http_request_header(req, "Authorization");
        if (h && g_ascii_strncasecmp(h, "Bearer ", 7) == 0) {
            const char *tok = h + 7;
            while (*tok == ' ')
                tok++;
            guint8 d[32];
            digest(tok, strlen(tok), d);
            bool ok = false;
            for (guint i = 0; i < n; i++) /* every key, whatever matched */
                ok |= same(d, (const guint8 *)a->digests->data + (size_t)i * 32, 32);
            state = ok ? 2 : 0;
        }
    }
    pthread_rwlock_unlock(&a->lock);
    return state;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* True when the raw parameter (name=value as sent) is named sig once
 * percent-decoded, as the operation parser sees it. */
static bool is_sig(const char *pair)
{
    const char *eq = strchr(pair, '=');
    size_t n = eq ? (size_t)(eq - pair) : strlen(pair);
    char *name = g_strndup(pair, n);
    char *dec = g_uri_unescape_string(name, NULL);
    bool yes = dec && strcmp(dec, "sig") == 0;
    g_free(dec);
    g_free(name);
    return yes;
}

int api_signature(const char *key, const char *raw_path, const char *raw_query,
                  char out[API_SIG_LEN + 1], const char **given_sig)
{
    gchar **pairs = g_strsplit(raw_query ? raw_query : "", "&", -1);
    GPtrArray *kept = g_ptr_array_new();
    if (given_sig)
        *given_sig = NULL;
    static __thread char sigbuf[256];
    for (int i = 0; pairs[i]; i++) {
        if (pairs[i][0] == '\0')
            continue;
        if (is_sig(pairs[i])) {
            const char *eq = strchr(pairs[i], '=');
            if (given_sig && eq) {
                g_strlcpy(sigbuf, eq + 1, sizeof(sigbuf));
                *given_sig = sigbuf;
            }
            continue;
        }
        g_ptr_array_add(kept, pairs[i]);
    }
    qsort(kept->pdata, kept->len, sizeof(gpointer), cmp_str);
    GString *text = g_string_new(raw_path);
    g_string_append_c(text, '?');
    for (guint i = 0; i < kept->len; i++) {
        if (i)
            g_string_append_c(text, '&');
        g_string_append(text, g_ptr_array_index(kept, i));
    }
    GHmac *h = g_hmac_new(G_CHECKSUM_SHA256, (const guchar *)key, strlen(key));
    g_hmac_update(h, (const guchar *)text->str, (gssize)text->len);
    guint8 mac[32];
    gsize n = sizeof(mac);
    g_hmac_get_digest(h, mac, &n);
    g_hmac_unref(h);
    util_b64url_encode(mac, 32, out);
    g_string_free(text, TRUE);
    g_ptr_array_free(kept, TRUE);
    g_strfreev(pairs);
    return 0;
}

static bool refuse(struct http_request *req, const char *detail)
{
    http_respond_problem(req, 401, "/problems/unauthorized", "Unauthorized", detail);
    http_response_header(req, "WWW-Authenticate", "Bearer");
    return false;
}

bool api_authorize(struct http_request *req, void *vctx)
{
    struct api_ctx *ctx = vctx;
    struct api_auth *a = ctx->auth;
    if (a == NULL)
        return true;
    int access = http_request_route_access(req);
    if (access == API_ACCESS_OPEN)
        return true;
    int keys = key_state(a, req);
    if (access == API_ACCESS_KEY) {
        if (keys != 0)
            return true;
        return refuse(req, http_request_header(req, "Authorization")
                               ? "the API key is not valid"
                               : "this call needs Authorization: Bearer KEY");
    }
    /* API_ACCESS_SIGNED: only variants (a query beyond sig=) need one. */
    if (a->signing_key == NULL || keys == 2)
        return true;
    const char *raw = http_request_raw_query(req);
    bool variant = false;
    gchar **pairs = g_strsplit(raw, "&", -1);
    for (int i = 0; pairs[i]; i++)
        if (pairs[i][0] && !is_sig(pairs[i]))
            variant = true;
    g_strfreev(pairs);
    if (!variant)
        return true;
    char want[API_SIG_LEN + 1];
    const char *given = NULL;
    api_signature(a->signing_key, http_request_raw_path(req), raw, want, &given);
    if (given == NULL)
        return refuse(req, "this variant URL needs a signature (sig=)");
    if (strlen(given) != API_SIG_LEN || !same(given, want, API_SIG_LEN))
        return refuse(req, "the URL signature is not valid");
    return true;
}
