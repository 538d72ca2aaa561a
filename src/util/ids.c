/* Ids, base64url and list cursors (util.h). Randomness from getrandom(2)
 * only (DESIGN §5). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "util/util.h"

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t util_b64url_len(size_t n)
{
    return (n / 3) * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

void util_b64url_encode(const void *in, size_t n, char *out)
{
    const unsigned char *p = in;
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        out[o++] = B64URL[(v >> 6) & 63];
        out[o++] = B64URL[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        out[o++] = B64URL[(v >> 6) & 63];
    }
    out[o] = '\0';
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long util_b64url_decode(const char *in, void *out, size_t outcap)
{
    unsigned char *o = out;
    size_t n = strlen(in);
    if (n % 4 == 1)
        return -1;
    size_t len = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (len >= outcap)
                return -1;
            o[len++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero, so every byte string has one encoding. */
    if (acc != 0)
        return -1;
    return (long)len;
}

int util_id_new(char *out)
{
    unsigned char raw[16];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t k = getrandom(raw + got, sizeof(raw) - got, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)k;
    }
    util_b64url_encode(raw, sizeof(raw), out);
    return 0;
}

bool util_id_valid(const char *s)
{
    if (s == NULL || strlen(s) != UTIL_ID_LEN)
        return false;
    for (size_t i = 0; i < UTIL_ID_LEN; i++)
        if (b64url_value(s[i]) < 0)
            return false;
    /* 22 chars carry 132 bits; the last char holds 4 padding bits, zero. */
    return (b64url_value(s[UTIL_ID_LEN - 1]) & 15) == 0;
}

/* A cursor is base64url("c1:" position). The tag lets the format change. */
void util_cursor_encode(int64_t position, char *out)
{
    char raw[40];
    int n = snprintf(raw, sizeof(raw), "c1:%" PRId64, position);
    util_b64url_encode(raw, (size_t)n, out);
}

int util_cursor_decode(const char *cursor, int64_t *position)
{
    if (cursor == NULL || *cursor == '\0' || strlen(cursor) > UTIL_CURSOR_MAX - 1)
        return -1;
    char raw[UTIL_CURSOR_MAX];
    long n = util_b64url_decode(cursor, raw, sizeof(raw) - 1);
    if (n < 4)
        return -1;
    raw[n] = '\0';
    if (memchr(raw, '\0', (size_t)n) != NULL || memcmp(raw, "c1:", 3) != 0)
        return -1;
    int64_t v;
    if (util_parse_int(raw + 3, &v) != 0 || v < 0)
        return -1;
    /* Reject non-canonical spellings ("007") so a cursor has one form. */
    char check[40];
    snprintf(check, sizeof(check), "%" PRId64, v);
    if (strcmp(check, raw + 3) != 0)
        return -1;
    *position = v;
    return 0;
}
