/*
 * libFuzzer target: multipart/form-data uploads (src/http/multipart.c).
 *
 * Input: the first line (up to the first '\n', at most LINE_MAX bytes) is
 * appended to "multipart/form-data; boundary=" to make the Content-Type
 * value, so it may quote the boundary or add more parameters; the rest is
 * the body. When the Content-Type is refused, the body is still parsed
 * with a fixed boundary so that body coverage does not depend on the line.
 *
 * Invariants: a boundary is 1..70 RFC 2046 characters; a found part lies
 * inside the body, is followed by a delimiter and holds none; its strings
 * are single-line C strings; a malformed body comes with a detail; passing
 * no detail buffer changes nothing.
 */
#include "fuzz_common.h"

#include "http/http.h"

#define LINE_MAX_BYTES 200
#define PREFIX         "multipart/form-data; boundary="
#define FALLBACK       "fuzzboundary"

static bool is_bchar(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("'()+_,-./:=? ", c) != NULL);
}

static bool single_line(const char *s)
{
    return s == NULL || (strchr(s, '\r') == NULL && strchr(s, '\n') == NULL);
}

static void check_find(const char *body, size_t len, const char *boundary)
{
    struct http_part part;
    char detail[128];
    char delim[4 + 70];
    size_t blen = strlen(boundary);
    size_t dlen = 4 + blen;
    int rc;

    memset(detail, 'x', sizeof(detail));
    rc = http_multipart_find(body, len, boundary, "file", &part, detail, sizeof(detail));
    CHECK(rc == -1 || rc == 0 || rc == 1);
    if (rc == -1) {
        size_t n = strnlen(detail, sizeof(detail));

        CHECK(n > 0 && n < sizeof(detail));
    }
    if (rc == 0) {
        const char *data = part.data;

        CHECK(part.name != NULL && strcmp(part.name, "file") == 0);
        CHECK(single_line(part.filename));
        CHECK(single_line(part.content_type));
        CHECK(data >= body && data <= body + len);
        CHECK(part.len <= (size_t)(body + len - data));
        memcpy(delim, "\r\n--", 4);
        memcpy(delim + 4, boundary, blen);
        /* The data ends at a delimiter and holds none. */
        CHECK((size_t)(body + len - (data + part.len)) >= dlen);
        CHECK(memcmp(data + part.len, delim, dlen) == 0);
        CHECK(part.len < dlen || memmem(data, part.len, delim, dlen) == NULL);
    }
    CHECK(http_multipart_find(body, len, boundary, "file", &part, NULL, 0) == rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl;
    size_t line_len, body_off, body_len;
    char content_type[sizeof(PREFIX) + LINE_MAX_BYTES];
    char boundary[71];
    char *body;
    char *exact;
    int rc;

    if (size == 0)
        data = (const uint8_t *)"";
    nl = memchr(data, '\n', size < LINE_MAX_BYTES + 1 ? size : LINE_MAX_BYTES + 1);
    line_len = nl != NULL ? (size_t)(nl - data) : 0;
    body_off = nl != NULL ? line_len + 1 : 0;
    body_len = size - body_off;
    memcpy(content_type, PREFIX, sizeof(PREFIX) - 1);
    memcpy(content_type + sizeof(PREFIX) - 1, data, line_len);
    content_type[sizeof(PREFIX) - 1 + line_len] = '\0';

    memset(boundary, 'x', sizeof(boundary));
    rc = http_multipart_boundary(content_type, boundary, sizeof(boundary));
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        size_t n = strnlen(boundary, sizeof(boundary));

        CHECK(n >= 1 && n <= 70);
        for (size_t i = 0; i < n; i++)
            CHECK(is_bchar(boundary[i]));
        CHECK(boundary[n - 1] != ' ');
        /* A buffer of exactly the boundary's size is enough (ASan watches
         * the heap copy). */
        exact = malloc(n + 1);
        CHECK(exact != NULL);
        CHECK(http_multipart_boundary(content_type, exact, n + 1) == 0);
        CHECK(strcmp(exact, boundary) == 0);
        free(exact);
    } else {
        memcpy(boundary, FALLBACK, sizeof(FALLBACK));
    }

    /* An exact-size copy: any read past the body is an ASan report. */
    body = malloc(body_len > 0 ? body_len : 1);
    CHECK(body != NULL);
    if (body_len > 0)
        memcpy(body, data + body_off, body_len);
    check_find(body, body_len, boundary);
    free(body);
    return 0;
}
