/*
 * multipart/form-data (RFC 7578) over the RFC 2046 multipart grammar:
 *
 *   multipart-body := [preamble CRLF] dash-boundary *LWSP CRLF body-part
 *                     *(CRLF dash-boundary *LWSP CRLF body-part)
 *                     CRLF dash-boundary "--" *LWSP [CRLF epilogue]
 *   body-part      := *(header-field CRLF) [CRLF *OCTET]
 *
 * A delimiter is CRLF "--" boundary at the start of a line (RFC 2046 5.1.1:
 * the boundary need not be the whole line), so part data may hold any bytes,
 * CR, LF, NUL and boundary prefixes included, as long as it does not hold
 * that exact sequence. The whole body is checked, not just the part asked
 * for, so a truncated upload is refused even when the field came first.
 *
 * Pure: no heap allocation, no state between calls except the thread-local
 * buffers the returned strings live in. Every read stays inside
 * [body, body + len): the parser is fuzzed.
 */
#include <stdio.h>
#include <string.h>

#include "http/http.h"

/* Limit of one part's header section, the blank line included. */
#define HEADERS_MAX 8192
/* RFC 2046 5.1.1: a boundary is 1 to 70 characters. */
#define BOUNDARY_MAX 70

/* The strings of the part returned last on this thread: valid until the
 * next http_multipart_find call on the same thread, which overwrites them.
 * A header value is shorter than the header section, so they cannot
 * overflow. 24 KiB of TLS per thread that ever parses a body. */
static _Thread_local char tls_name[HEADERS_MAX + 1];
static _Thread_local char tls_filename[HEADERS_MAX + 1];
static _Thread_local char tls_content_type[HEADERS_MAX + 1];

/* ---- character classes -------------------------------------------------- */

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* RFC 2046 5.1.1 bcharsnospace. */
static bool is_bchar_nospace(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("'()+_,-./:=?", c) != NULL;
}

/* Characters allowed inside a quoted-string or a quoted-pair (RFC 9110
 * qdtext / quoted-pair: HTAB, SP, VCHAR, obs-text). Never NUL, so the
 * copies we hand out are proper C strings. */
static bool is_qchar(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive comparison of [s, s + n) with the NUL-terminated lit. */
static bool token_is(const char *s, size_t n, const char *lit)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (lit[i] == '\0' || lower((unsigned char)s[i]) != lower((unsigned char)lit[i]))
            return false;
    }
    return lit[n] == '\0';
}

static void set_detail(char *detail, size_t detail_len, const char *msg)
{
    if (detail != NULL && detail_len > 0)
        (void)snprintf(detail, detail_len, "%s", msg);
}

/* ---- a cursor over a header value --------------------------------------- */

/* A header value, possibly folded over several lines (obs-fold: CRLF
 * followed by SP or HTAB, which counts as white space). */
struct cursor {
    const char *p;   /* next byte */
    const char *end; /* one past the value */
};

/* Skips white space and folds. */
static void skip_ows(struct cursor *c)
{
    for (;;) {
        if (c->p < c->end && (*c->p == ' ' || *c->p == '\t')) {
            c->p++;
        } else if (c->end - c->p >= 3 && c->p[0] == '\r' && c->p[1] == '\n' &&
                   (c->p[2] == ' ' || c->p[2] == '\t')) {
            c->p += 3;
        } else {
            return;
        }
    }
}

/* Reads a token; returns its length (0 when there is none). */
static size_t read_token(struct cursor *c, const char **start)
{
    *start = c->p;
    while (c->p < c->end && is_tchar((unsigned char)*c->p))
        c->p++;
    return (size_t)(c->p - *start);
}

/* Reads a parameter value, a token or a quoted-string with backslash
 * escapes, into out (NUL-terminated; out may be NULL to skip it). Returns
 * the value's length, or -1 when it is malformed or does not fit. */
static long read_value(struct cursor *c, char *out, size_t outlen)
{
    size_t n = 0;

    if (c->p < c->end && *c->p == '"') {
        c->p++;
        for (;;) {
            unsigned char ch;

            if (c->p >= c->end)
                return -1; /* unterminated */
            ch = (unsigned char)*c->p;
            if (ch == '"') {
                c->p++;
                break;
            }
            if (ch == '\\') {
                if (c->end - c->p < 2 || !is_qchar((unsigned char)c->p[1]))
                    return -1;
                ch = (unsigned char)c->p[1];
                c->p += 2;
            } else if (ch == '\r' && c->end - c->p >= 3 && c->p[1] == '\n' &&
                       (c->p[2] == ' ' || c->p[2] == '\t')) {
                /* RFC 5322 3.2.4: a fold inside a quoted-string unfolds to
                 * its white space. */
                c->p += 2;
                continue;
            } else if (is_qchar(ch)) {
                c->p++;
            } else {
                return -1;
            }
            if (out != NULL) {
                if (n + 1 >= outlen)
                    return -1;
                out[n] = (char)ch;
            }
            n++;
        }
    } else {
        const char *s;

        n = read_token(c, &s);
        if (n == 0)
            return -1;
        if (out != NULL) {
            if (n + 1 > outlen)
                return -1;
            memcpy(out, s, n);
        }
    }
    if (out != NULL)
        out[n] = '\0';
    return (long)n;
}

/* ---- boundary ----------------------------------------------------------- */

/* Reads the boundary value (token-like or quoted) at c into out. */
static int read_boundary(struct cursor *c, char *out, size_t outlen)
{
    char buf[BOUNDARY_MAX + 1];
    size_t n = 0;

    if (c->p < c->end && *c->p == '"') {
        long r = read_value(c, buf, sizeof(buf));

        if (r < 0)
            return -1;
        n = (size_t)r;
        /* Inside quotes a boundary may hold spaces, but may not end with one. */
        for (size_t i = 0; i < n; i++) {
            if (buf[i] != ' ' && !is_bchar_nospace((unsigned char)buf[i]))
                return -1;
        }
        if (n > 0 && buf[n - 1] == ' ')
            return -1;
    } else {
        /* Unquoted, RFC 9110 wants a token; we also take the other
         * boundary characters (":", "=", "/", ...) that some clients leave
         * unquoted, since they cannot be mistaken for anything else. */
        while (c->p < c->end && is_bchar_nospace((unsigned char)*c->p)) {
            if (n >= BOUNDARY_MAX)
                return -1;
            buf[n++] = *c->p++;
        }
        buf[n] = '\0';
    }
    if (n < 1 || n > BOUNDARY_MAX || n + 1 > outlen)
        return -1;
    memcpy(out, buf, n + 1);
    return 0;
}

int http_multipart_boundary(const char *content_type, char *out, size_t outlen)
{
    struct cursor c;
    const char *s;
    size_t n;
    bool found = false;

    if (content_type == NULL || out == NULL || outlen == 0)
        return -1;
    c.p = content_type;
    c.end = content_type + strlen(content_type);

    /* media-type = type "/" subtype, here multipart/form-data (RFC 7578 4). */
    skip_ows(&c);
    n = read_token(&c, &s);
    if (!token_is(s, n, "multipart") || c.p >= c.end || *c.p != '/')
        return -1;
    c.p++;
    n = read_token(&c, &s);
    if (!token_is(s, n, "form-data"))
        return -1;

    /* parameters = *( OWS ";" OWS [ parameter ] ) (RFC 9110 5.6.6) */
    for (;;) {
        skip_ows(&c);
        if (c.p >= c.end)
            break;
        if (*c.p != ';')
            return -1;
        c.p++;
        skip_ows(&c);
        if (c.p >= c.end || *c.p == ';')
            continue;
        n = read_token(&c, &s);
        if (n == 0 || c.p >= c.end || *c.p != '=')
            return -1;
        c.p++;
        if (token_is(s, n, "boundary")) {
            /* A repeated boundary is ambiguous: two parsers could disagree. */
            if (found)
                return -1;
            if (read_boundary(&c, out, outlen) != 0)
                return -1;
            found = true;
        } else if (read_value(&c, NULL, 0) < 0) {
            return -1;
        }
    }
    return found ? 0 : -1;
}

/* ---- parts -------------------------------------------------------------- */

/* What one part's headers say. */
struct part_headers {
    bool store;           /* copy name, filename and type into the tls_ buffers */
    bool has_disposition; /* a Content-Disposition was seen */
    bool has_name;        /* it had a name parameter */
    bool has_filename;    /* ... and a filename */
    bool has_type;        /* a Content-Type was seen */
};

/* Parses a Content-Disposition value: form-data; name="..."; filename="..."
 * (RFC 7578 4.2, RFC 6266 4.1). Returns NULL or what is wrong. */
static const char *parse_disposition(struct cursor *c, struct part_headers *h)
{
    const char *s;
    size_t n;

    n = read_token(c, &s);
    if (!token_is(s, n, "form-data"))
        return "part Content-Disposition is not form-data";
    for (;;) {
        bool is_name, is_filename;
        char *out = NULL;
        size_t outlen = 0;

        skip_ows(c);
        if (c->p >= c->end)
            break;
        if (*c->p != ';')
            return "malformed Content-Disposition";
        c->p++;
        skip_ows(c);
        if (c->p >= c->end)
            break;
        n = read_token(c, &s);
        if (n == 0 || c->p >= c->end || *c->p != '=')
            return "malformed Content-Disposition";
        c->p++;
        is_name = token_is(s, n, "name");
        is_filename = token_is(s, n, "filename");
        if ((is_name && h->has_name) || (is_filename && h->has_filename))
            return "repeated Content-Disposition parameter";
        if (h->store && is_name) {
            out = tls_name;
            outlen = sizeof(tls_name);
        } else if (h->store && is_filename) {
            out = tls_filename;
            outlen = sizeof(tls_filename);
        }
        /* filename* and other extensions are checked and ignored: RFC 7578
         * 4.2 says senders must not use filename*. */
        if (read_value(c, out, outlen) < 0)
            return "malformed Content-Disposition";
        h->has_name |= is_name;
        h->has_filename |= is_filename;
    }
    return NULL;
}

/* Copies a Content-Type value, each fold turned into a space, trimmed. */
static void copy_content_type(struct cursor *c)
{
    size_t n = 0;

    while (c->p < c->end) {
        if (*c->p == '\r') {
            /* parse_field let only folds (CRLF + SP/HTAB) through. */
            tls_content_type[n++] = ' ';
            c->p += 2;
        } else {
            tls_content_type[n++] = *c->p++;
        }
    }
    while (n > 0 && (tls_content_type[n - 1] == ' ' || tls_content_type[n - 1] == '\t'))
        n--;
    tls_content_type[n] = '\0';
}

/* Parses one header field [p, end) (folds included, final CRLF excluded).
 * Returns NULL or what is wrong. */
static const char *parse_field(const char *p, const char *end, struct part_headers *h)
{
    struct cursor c = {p, end};
    const char *name;
    size_t n;

    /* SP, HTAB, VCHAR, obs-text and folds only: no bare CR, LF or NUL. */
    for (const char *q = p; q < end; q++) {
        if (*q == '\r') {
            if (end - q < 3 || q[1] != '\n' || (q[2] != ' ' && q[2] != '\t'))
                return "malformed part header";
            q++;
        } else if (!is_qchar((unsigned char)*q)) {
            return "malformed part header";
        }
    }
    n = read_token(&c, &name);
    if (n == 0 || c.p >= c.end || *c.p != ':')
        return "malformed part header";
    c.p++;
    skip_ows(&c);
    if (token_is(name, n, "content-disposition")) {
        if (h->has_disposition)
            return "repeated Content-Disposition";
        h->has_disposition = true;
        return parse_disposition(&c, h);
    }
    if (token_is(name, n, "content-type")) {
        if (h->has_type)
            return "repeated Content-Type";
        h->has_type = true;
        if (h->store)
            copy_content_type(&c);
    }
    return NULL; /* other headers are ignored (RFC 7578 4.8) */
}

/* True when [at, end) starts with the n bytes of s. */
static bool starts_with(const char *at, const char *end, const char *s, size_t n)
{
    return (size_t)(end - at) >= n && memcmp(at, s, n) == 0;
}

/* Parses the header section starting at p. On success *hdr_end points at
 * the CRLF that ends it: the blank line (data follows), or the CRLF of the
 * next delimiter (the part has headers and no data at all, RFC 2046
 * body-part := headers [CRLF *OCTET]). Returns NULL or what is wrong. */
static const char *parse_headers(const char *p, const char *end, const char *delim, size_t dlen,
                                 struct part_headers *h, const char **hdr_end)
{
    /* The whole section, blank line included, must fit before limit. */
    const char *limit = (size_t)(end - p) > HEADERS_MAX ? p + HEADERS_MAX : end;
    const char *over = limit < end ? "part headers over 8 KiB" : "truncated part headers";

    for (;;) {
        const char *q = p;
        const char *msg;

        if (starts_with(p, limit, "\r\n", 2)) {
            *hdr_end = p;
            return NULL;
        }
        if (p < end && (*p == ' ' || *p == '\t'))
            return "malformed part header"; /* a fold with nothing to continue */
        /* The field ends at the first CRLF not followed by a fold. */
        for (;;) {
            while (q < limit && *q != '\r')
                q++;
            if (limit - q < 2)
                return over;
            if (q[1] != '\n')
                return "malformed part header";
            if (end - q < 3)
                return "truncated part headers";
            if (q[2] != ' ' && q[2] != '\t')
                break;
            q += 3;
        }
        msg = parse_field(p, q, h);
        if (msg != NULL)
            return msg;
        if (starts_with(q, end, delim, dlen)) {
            *hdr_end = q;
            return NULL;
        }
        p = q + 2;
    }
}

/* What follows a delimiter. */
enum after {
    AFTER_PART,      /* *LWSP CRLF: another part follows */
    AFTER_CLOSE,     /* "--" *LWSP [CRLF epilogue]: the end */
    AFTER_TRUNCATED, /* the body ends first */
    AFTER_GARBAGE,   /* anything else */
};

/* Reads what follows a delimiter at *p; on AFTER_PART *p moves past it. */
static enum after after_delimiter(const char **p, const char *end)
{
    const char *q = *p;
    bool close = false;

    if (end - q >= 2 && q[0] == '-' && q[1] == '-') {
        close = true;
        q += 2;
    } else if (end - q == 1 && q[0] == '-') {
        return AFTER_TRUNCATED;
    }
    while (q < end && (*q == ' ' || *q == '\t'))
        q++;
    if (close && q == end)
        return AFTER_CLOSE;
    if (q == end || (end - q == 1 && q[0] == '\r'))
        return AFTER_TRUNCATED;
    if (q[0] != '\r' || q[1] != '\n')
        return AFTER_GARBAGE;
    if (close)
        return AFTER_CLOSE; /* the epilogue is ignored */
    *p = q + 2;
    return AFTER_PART;
}

int http_multipart_find(const void *body, size_t len, const char *boundary, const char *field,
                        struct http_part *part, char *detail, size_t detail_len)
{
    /* The delimiter CRLF "--" boundary; the first one may lack the CRLF. */
    char delim[4 + BOUNDARY_MAX];
    size_t blen, dlen;
    const char *b = body;
    const char *end;
    const char *p;
    const char *msg;
    struct http_part found = {NULL, NULL, NULL, NULL, 0};
    enum after next_is;

    if (part != NULL)
        memset(part, 0, sizeof(*part));
    if (detail != NULL && detail_len > 0)
        detail[0] = '\0';
    blen = boundary != NULL ? strlen(boundary) : 0;
    if (blen < 1 || blen > BOUNDARY_MAX || field == NULL || (b == NULL && len > 0)) {
        msg = "invalid multipart boundary";
        goto malformed;
    }
    /* Not a C string: compared with memcmp/memmem over dlen bytes. */
    delim[0] = '\r';
    delim[1] = '\n';
    delim[2] = '-';
    delim[3] = '-';
    memcpy(delim + 4, boundary, blen);
    dlen = 4 + blen;
    if (b == NULL)
        b = "";
    end = b + len;

    /* The first delimiter: at the very start, or after a preamble. */
    if (starts_with(b, end, delim + 2, dlen - 2)) {
        p = b + dlen - 2;
    } else {
        p = memmem(b, len, delim, dlen);
        if (p == NULL) {
            msg = "no multipart boundary in the body";
            goto malformed;
        }
        p += dlen;
    }

    for (next_is = after_delimiter(&p, end); next_is == AFTER_PART;
         next_is = after_delimiter(&p, end)) {
        /* Once the field is found its strings stay put: later parts are
         * only checked. */
        struct part_headers h = {found.name == NULL, false, false, false, false};
        const char *hdr_end = NULL;
        const char *next;
        const char *data;

        msg = parse_headers(p, end, delim, dlen, &h, &hdr_end);
        if (msg != NULL)
            goto malformed;
        if (!h.has_disposition) {
            msg = "part without Content-Disposition";
            goto malformed;
        }
        if (!h.has_name) {
            msg = "part without a name";
            goto malformed;
        }
        next = memmem(hdr_end, (size_t)(end - hdr_end), delim, dlen);
        if (next == NULL) {
            msg = "missing closing multipart boundary";
            goto malformed;
        }
        data = next == hdr_end ? next : hdr_end + 2;
        if (h.store && strcmp(tls_name, field) == 0) {
            found.name = tls_name;
            found.filename = h.has_filename ? tls_filename : NULL;
            found.content_type = h.has_type ? tls_content_type : NULL;
            found.data = data;
            found.len = (size_t)(next - data);
        }
        p = next + dlen;
    }
    if (next_is == AFTER_TRUNCATED) {
        msg = "missing closing multipart boundary";
        goto malformed;
    }
    if (next_is == AFTER_GARBAGE) {
        msg = "malformed multipart boundary line";
        goto malformed;
    }
    if (found.name == NULL)
        return 1;
    if (part != NULL)
        *part = found;
    return 0;

malformed:
    set_detail(detail, detail_len, msg);
    return -1;
}
