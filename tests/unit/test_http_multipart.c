/*
 * Unit tests for src/http/multipart.c: the boundary parameter and the
 * multipart/form-data body parser (RFC 7578 over RFC 2046). Every body is
 * copied into a heap block of exactly its size, so the sanitizers catch a
 * read past the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http.h"

/* ---- helpers ------------------------------------------------------------ */

/* An exact-size heap copy of n bytes (a 1-byte block for n == 0). */
static char *exact(const void *bytes, size_t n)
{
    char *p = malloc(n > 0 ? n : 1);

    assert_non_null(p);
    if (n > 0)
        memcpy(p, bytes, n);
    return p;
}

/* Runs http_multipart_find on an exact-size copy of [body, body + n). The
 * part's data is turned into an offset from body so it survives the free. */
static int find_n(const char *body, size_t n, const char *boundary, const char *field,
                  struct http_part *part, size_t *data_off, char *detail)
{
    char *copy = exact(body, n);
    struct http_part local;
    int r;

    if (part == NULL)
        part = &local;
    if (data_off != NULL)
        *data_off = 0;
    r = http_multipart_find(copy, n, boundary, field, part, detail, 128);
    if (r == 0) {
        assert_true((const char *)part->data >= copy);
        assert_true((const char *)part->data + part->len <= copy + n);
        if (data_off != NULL)
            *data_off = (size_t)((const char *)part->data - copy);
        part->data = NULL;
    }
    free(copy);
    return r;
}

static int find(const char *body, const char *boundary, const char *field, struct http_part *part,
                size_t *data_off, char *detail)
{
    return find_n(body, strlen(body), boundary, field, part, data_off, detail);
}

#define CD "Content-Disposition: form-data; "

/* ---- http_multipart_boundary -------------------------------------------- */

static void test_boundary_unquoted(void **state)
{
    char b[71];

    (void)state;
    assert_int_equal(
        http_multipart_boundary(
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", b, sizeof(b)),
        0);
    assert_string_equal(b, "----WebKitFormBoundary7MA4YWxkTrZu0gW");
    assert_int_equal(http_multipart_boundary("multipart/form-data;boundary=abc", b, sizeof(b)), 0);
    assert_string_equal(b, "abc");
    /* curl's form */
    assert_int_equal(
        http_multipart_boundary(
            "multipart/form-data; boundary=------------------------d74496d66958873e", b, sizeof(b)),
        0);
    assert_string_equal(b, "------------------------d74496d66958873e");
}

static void test_boundary_quoted(void **state)
{
    char b[71];

    (void)state;
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=\"simple boundary\"", b, sizeof(b)),
        0);
    assert_string_equal(b, "simple boundary");
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=\"a:b=c/d?e\"", b, sizeof(b)), 0);
    assert_string_equal(b, "a:b=c/d?e");
    /* A quoted-pair stands for its character. */
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=\"a\\bc\"", b, sizeof(b)), 0);
    assert_string_equal(b, "abc");
    /* A space may not end a boundary (RFC 2046 bcharsnospace). */
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=\"abc \"", b, sizeof(b)), -1);
    /* '"' is not a boundary character. */
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=\"a\\\"b\"", b, sizeof(b)), -1);
    /* Unterminated */
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=\"abc", b, sizeof(b)),
                     -1);
}

static void test_boundary_case_insensitive(void **state)
{
    char b[71];

    (void)state;
    assert_int_equal(http_multipart_boundary("Multipart/Form-Data; BOUNDARY=XyZ", b, sizeof(b)), 0);
    /* The value itself keeps its case. */
    assert_string_equal(b, "XyZ");
    assert_int_equal(http_multipart_boundary("MULTIPART/FORM-DATA; Boundary=\"q\"", b, sizeof(b)),
                     0);
    assert_string_equal(b, "q");
}

static void test_boundary_other_params(void **state)
{
    char b[71];

    (void)state;
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; charset=utf-8; boundary=abc", b, sizeof(b)),
        0);
    assert_string_equal(b, "abc");
    assert_int_equal(
        http_multipart_boundary(
            "multipart/form-data; boundary=abc; charset=\"utf-8; boundary=evil\"", b, sizeof(b)),
        0);
    assert_string_equal(b, "abc");
    assert_int_equal(http_multipart_boundary(
                         "multipart/form-data ; x=\"a;b\" ;boundary=\"q r\" ; y=z  ", b, sizeof(b)),
                     0);
    assert_string_equal(b, "q r");
}

static void test_boundary_missing(void **state)
{
    char b[71];

    (void)state;
    assert_int_equal(http_multipart_boundary("multipart/form-data", b, sizeof(b)), -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data;", b, sizeof(b)), -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data; charset=utf-8", b, sizeof(b)),
                     -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=", b, sizeof(b)), -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=\"\"", b, sizeof(b)),
                     -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary", b, sizeof(b)), -1);
    /* "boundaryx" is another parameter. */
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundaryx=abc", b, sizeof(b)),
                     -1);
    assert_int_equal(http_multipart_boundary("", b, sizeof(b)), -1);
    assert_int_equal(http_multipart_boundary(NULL, b, sizeof(b)), -1);
}

static void test_boundary_invalid(void **state)
{
    char b[71];

    (void)state;
    /* Not multipart/form-data. */
    assert_int_equal(http_multipart_boundary("image/jpeg; boundary=abc", b, sizeof(b)), -1);
    assert_int_equal(http_multipart_boundary("multipart/form-datax; boundary=abc", b, sizeof(b)),
                     -1);
    /* Garbage after the value or between parameters. */
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=abc def", b, sizeof(b)),
                     -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=a\"b", b, sizeof(b)),
                     -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data boundary=abc", b, sizeof(b)), -1);
    /* Two boundaries are ambiguous. */
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=a; boundary=b", b, sizeof(b)), -1);
    /* Control characters */
    assert_int_equal(
        http_multipart_boundary("multipart/form-data; boundary=\"a\tb\"", b, sizeof(b)), -1);
}

static void test_boundary_length(void **state)
{
    char ct[200];
    char b[71];
    char small[4];
    char seventy[71];
    char seventyone[72];

    (void)state;
    memset(seventy, 'x', 70);
    seventy[70] = '\0';
    memset(seventyone, 'y', 71);
    seventyone[71] = '\0';

    (void)snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%s", seventy);
    assert_int_equal(http_multipart_boundary(ct, b, sizeof(b)), 0);
    assert_string_equal(b, seventy);
    (void)snprintf(ct, sizeof(ct), "multipart/form-data; boundary=\"%s\"", seventy);
    assert_int_equal(http_multipart_boundary(ct, b, sizeof(b)), 0);
    assert_string_equal(b, seventy);

    (void)snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%s", seventyone);
    assert_int_equal(http_multipart_boundary(ct, b, sizeof(b)), -1);
    (void)snprintf(ct, sizeof(ct), "multipart/form-data; boundary=\"%s\"", seventyone);
    assert_int_equal(http_multipart_boundary(ct, b, sizeof(b)), -1);

    /* The output buffer must hold the value and its NUL. */
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=abc", small, 4), 0);
    assert_string_equal(small, "abc");
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=abcd", small, 4), -1);
    assert_int_equal(http_multipart_boundary("multipart/form-data; boundary=abc", small, 0), -1);
}

/* ---- http_multipart_find ------------------------------------------------ */

static const char three_parts[] = "--XyZ\r\n" CD "name=\"title\"\r\n"
                                  "\r\n"
                                  "A cat\r\n"
                                  "--XyZ\r\n" CD "name=\"file\"; filename=\"cat.jpg\"\r\n"
                                  "Content-Type: image/jpeg\r\n"
                                  "\r\n"
                                  "JPEGDATA\r\n"
                                  "--XyZ\r\n" CD "name=\"tags\"\r\n"
                                  "\r\n"
                                  "a,b\r\n"
                                  "--XyZ--\r\n";

static void test_find_among_parts(void **state)
{
    struct http_part part;
    size_t off;
    char detail[128];

    (void)state;
    assert_int_equal(find(three_parts, "XyZ", "file", &part, &off, detail), 0);
    assert_string_equal(part.name, "file");
    assert_non_null(part.filename);
    assert_string_equal(part.filename, "cat.jpg");
    assert_non_null(part.content_type);
    assert_string_equal(part.content_type, "image/jpeg");
    assert_int_equal(part.len, 8);
    assert_memory_equal(three_parts + off, "JPEGDATA", 8);

    assert_int_equal(find(three_parts, "XyZ", "title", &part, &off, detail), 0);
    assert_string_equal(part.name, "title");
    assert_null(part.filename);
    assert_null(part.content_type);
    assert_int_equal(part.len, 5);
    assert_memory_equal(three_parts + off, "A cat", 5);

    assert_int_equal(find(three_parts, "XyZ", "tags", &part, &off, detail), 0);
    assert_int_equal(part.len, 3);
    assert_memory_equal(three_parts + off, "a,b", 3);
}

static void test_find_wrong_field(void **state)
{
    struct http_part part;
    char detail[128];

    (void)state;
    assert_int_equal(find(three_parts, "XyZ", "image", &part, NULL, detail), 1);
    assert_null(part.name);
    assert_null(part.data);
    /* Field names are compared exactly. */
    assert_int_equal(find(three_parts, "XyZ", "File", &part, NULL, detail), 1);
    assert_int_equal(find(three_parts, "XyZ", "fil", &part, NULL, detail), 1);
    assert_int_equal(find(three_parts, "XyZ", "", &part, NULL, detail), 1);
}

static void test_find_wrong_boundary(void **state)
{
    char detail[128];

    (void)state;
    assert_int_equal(find(three_parts, "XyZW", "file", NULL, NULL, detail), -1);
    assert_true(strlen(detail) > 0);
    /* Boundaries are case-sensitive. */
    assert_int_equal(find(three_parts, "xyz", "file", NULL, NULL, detail), -1);
    assert_int_equal(find(three_parts, "", "file", NULL, NULL, detail), -1);
}

/* Binary data with CR, LF, NUL and everything that looks like a delimiter
 * without being one: only CRLF "--" boundary ends a part. */
static void test_find_binary_data(void **state)
{
    static const char data[] = "\x00\xff\r\n\r\n"
                               "--BOUNDAR\r\n"
                               "\r\n--BOUNDAR\r\n"
                               "x--BOUNDARY\r\n"
                               "\r--BOUNDARY\n"
                               "\n--BOUNDARY\r\n"
                               "\r\n-BOUNDARY\r\n"
                               "\r\n--boundary\r\n"
                               "\x00\x00\r\n\x00"
                               "\r\n--BOUNDAR";
    const size_t dlen = sizeof(data) - 1;
    static const char head[] = "--BOUNDARY\r\n" CD "name=\"file\"; filename=\"b.bin\"\r\n"
                               "Content-Type: application/octet-stream\r\n\r\n";
    static const char tail[] = "\r\n--BOUNDARY--\r\n";
    char body[512];
    size_t n = 0, off;
    struct http_part part;
    char detail[128];

    (void)state;
    memcpy(body + n, head, sizeof(head) - 1);
    n += sizeof(head) - 1;
    memcpy(body + n, data, dlen);
    n += dlen;
    memcpy(body + n, tail, sizeof(tail) - 1);
    n += sizeof(tail) - 1;

    assert_int_equal(find_n(body, n, "BOUNDARY", "file", &part, &off, detail), 0);
    assert_int_equal(part.len, dlen);
    assert_int_equal(off, sizeof(head) - 1);
    assert_memory_equal(body + off, data, dlen);
    assert_string_equal(part.content_type, "application/octet-stream");
    assert_string_equal(part.filename, "b.bin");
}

static void test_find_preamble_epilogue(void **state)
{
    static const char body[] = "This is the preamble. It is to be ignored.\r\n"
                               "--b is not a delimiter here: not the whole boundary\r\n"
                               "--bb\r\n" CD "name=file\r\n"
                               "\r\n"
                               "data\r\n"
                               "--bb--  \r\n"
                               "This is the epilogue, also ignored. --bb\r\n";
    struct http_part part;
    size_t off;
    char detail[128];

    (void)state;
    assert_int_equal(find(body, "bb", "file", &part, &off, detail), 0);
    assert_int_equal(part.len, 4);
    assert_memory_equal(body + off, "data", 4);

    /* The preamble may be a bare CRLF. */
    assert_int_equal(
        find("\r\n--bb\r\n" CD "name=file\r\n\r\nx\r\n--bb--", "bb", "file", &part, &off, detail),
        0);
    assert_int_equal(part.len, 1);
    /* A delimiter must start a line: "x--bb" is not one, so all up to the
     * closing delimiter is preamble and there is no part at all. */
    assert_int_equal(
        find("x--bb\r\n" CD "name=file\r\n\r\nx\r\n--bb--", "bb", "file", &part, NULL, detail), 1);
    assert_int_equal(
        find("x--bb\r\n" CD "name=file\r\n\r\nx\r\n", "bb", "file", &part, NULL, detail), -1);
}

static void test_find_missing_close(void **state)
{
    char detail[128];

    (void)state;
    assert_int_equal(
        find("--b\r\n" CD "name=\"file\"\r\n\r\ndata", "b", "file", NULL, NULL, detail), -1);
    assert_non_null(strstr(detail, "closing"));
    assert_int_equal(
        find("--b\r\n" CD "name=\"file\"\r\n\r\ndata\r\n--b", "b", "file", NULL, NULL, detail), -1);
    assert_non_null(strstr(detail, "closing"));
    assert_int_equal(
        find("--b\r\n" CD "name=\"file\"\r\n\r\ndata\r\n--b-", "b", "file", NULL, NULL, detail),
        -1);
    /* The field comes first, but the body is cut off later: still refused. */
    assert_int_equal(find("--b\r\n" CD "name=\"file\"\r\n\r\ndata\r\n--b\r\n" CD
                          "name=\"other\"\r\n\r\nmore",
                          "b", "file", NULL, NULL, detail),
                     -1);
    /* Garbage after a delimiter */
    assert_int_equal(
        find("--b\r\n" CD "name=\"file\"\r\n\r\ndata\r\n--bx", "b", "file", NULL, NULL, detail),
        -1);
    assert_int_equal(
        find("--b\r\n" CD "name=\"file\"\r\n\r\ndata\r\n--b--x", "b", "file", NULL, NULL, detail),
        -1);
    assert_int_equal(
        find("--bx\r\n" CD "name=\"file\"\r\n\r\ndata\r\n--b--", "b", "file", NULL, NULL, detail),
        -1);
}

static void test_find_truncated_headers(void **state)
{
    char detail[128];

    (void)state;
    assert_int_equal(find("--b\r\n" CD "name=\"file\"", "b", "file", NULL, NULL, detail), -1);
    assert_non_null(strstr(detail, "truncated"));
    assert_int_equal(find("--b\r\n" CD "name=\"file\"\r\n", "b", "file", NULL, NULL, detail), -1);
    assert_non_null(strstr(detail, "truncated"));
    assert_int_equal(find("--b\r\n" CD "name=\"file\"\r", "b", "file", NULL, NULL, detail), -1);
    assert_int_equal(find("--b\r\n", "b", "file", NULL, NULL, detail), -1);
    assert_int_equal(find("--b\r\n\r", "b", "file", NULL, NULL, detail), -1);
}

static void test_find_headers_too_large(void **state)
{
    static const char head[] = "--b\r\n" CD "name=\"file\"\r\nX-Padding: ";
    static const char tail[] = "\r\n\r\ndata\r\n--b--\r\n";
    size_t pad = 9000;
    size_t n = sizeof(head) - 1 + pad + sizeof(tail) - 1;
    char *body = malloc(n);
    char detail[128];
    struct http_part part;
    size_t off;

    (void)state;
    assert_non_null(body);
    memcpy(body, head, sizeof(head) - 1);
    memset(body + sizeof(head) - 1, 'a', pad);
    memcpy(body + sizeof(head) - 1 + pad, tail, sizeof(tail) - 1);
    assert_int_equal(find_n(body, n, "b", "file", NULL, NULL, detail), -1);
    assert_non_null(strstr(detail, "8 KiB"));

    /* Just under the limit is fine: the section is at most 8192 bytes. */
    pad = 8192 - (sizeof(head) - 1 - 5) - 4;
    n = sizeof(head) - 1 + pad + sizeof(tail) - 1;
    memset(body + sizeof(head) - 1, 'a', pad);
    memcpy(body + sizeof(head) - 1 + pad, tail, sizeof(tail) - 1);
    assert_int_equal(find_n(body, n, "b", "file", &part, &off, detail), 0);
    assert_int_equal(part.len, 4);
    /* One more byte is not. */
    pad++;
    n++;
    memset(body + sizeof(head) - 1, 'a', pad);
    memcpy(body + sizeof(head) - 1 + pad, tail, sizeof(tail) - 1);
    assert_int_equal(find_n(body, n, "b", "file", NULL, NULL, detail), -1);
    assert_non_null(strstr(detail, "8 KiB"));
    free(body);
}

static void test_find_no_disposition(void **state)
{
    char detail[128];

    (void)state;
    assert_int_equal(find("--b\r\nContent-Type: image/png\r\n\r\ndata\r\n--b--\r\n", "b", "file",
                          NULL, NULL, detail),
                     -1);
    assert_non_null(strstr(detail, "Content-Disposition"));
    /* No headers at all */
    assert_int_equal(find("--b\r\n\r\ndata\r\n--b--\r\n", "b", "file", NULL, NULL, detail), -1);
    /* A later part without one makes the whole body malformed. */
    assert_int_equal(find("--b\r\n" CD "name=file\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--\r\n", "b",
                          "file", NULL, NULL, detail),
                     -1);
    /* Not form-data */
    assert_int_equal(find("--b\r\nContent-Disposition: attachment; name=file\r\n\r\nx\r\n--b--",
                          "b", "file", NULL, NULL, detail),
                     -1);
    /* Twice */
    assert_int_equal(find("--b\r\n" CD "name=file\r\n" CD "name=other\r\n\r\nx\r\n--b--", "b",
                          "file", NULL, NULL, detail),
                     -1);
}

static void test_find_no_name(void **state)
{
    char detail[128];

    (void)state;
    assert_int_equal(find("--b\r\n" CD "filename=\"a.jpg\"\r\n\r\ndata\r\n--b--\r\n", "b", "file",
                          NULL, NULL, detail),
                     -1);
    assert_non_null(strstr(detail, "name"));
    assert_int_equal(find("--b\r\nContent-Disposition: form-data\r\n\r\ndata\r\n--b--\r\n", "b",
                          "file", NULL, NULL, detail),
                     -1);
    /* name= without a value, and a repeated name */
    assert_int_equal(
        find("--b\r\n" CD "name=\r\n\r\ndata\r\n--b--\r\n", "b", "file", NULL, NULL, detail), -1);
    assert_int_equal(find("--b\r\n" CD "name=file; name=x\r\n\r\ndata\r\n--b--\r\n", "b", "file",
                          NULL, NULL, detail),
                     -1);
}

static void test_find_empty_part(void **state)
{
    struct http_part part;
    size_t off;
    char detail[128];
    static const char body[] = "--b\r\n" CD "name=\"file\"\r\n\r\n\r\n--b--\r\n";

    (void)state;
    assert_int_equal(find(body, "b", "file", &part, &off, detail), 0);
    assert_int_equal(part.len, 0);
    assert_int_equal(off, strstr(body, "\r\n\r\n") - body + 4);

    /* Headers and no data at all (RFC 2046: body-part := headers [CRLF *OCTET]) */
    assert_int_equal(find("--b\r\n" CD "name=\"file\"\r\n--b--", "b", "file", &part, &off, detail),
                     0);
    assert_int_equal(part.len, 0);
}

static void test_find_only_boundary(void **state)
{
    char detail[128];
    struct http_part part;

    (void)state;
    assert_int_equal(find("--b", "b", "file", NULL, NULL, detail), -1);
    assert_true(strlen(detail) > 0);
    assert_int_equal(find("--b\r\n", "b", "file", NULL, NULL, detail), -1);
    /* Only the closing delimiter: well formed, no parts, no field. */
    assert_int_equal(find("--b--", "b", "file", &part, NULL, detail), 1);
    assert_int_equal(find("--b--\r\n", "b", "file", &part, NULL, detail), 1);
}

static void test_find_zero_length(void **state)
{
    char detail[128];
    struct http_part part;

    (void)state;
    assert_int_equal(find_n("", 0, "b", "file", &part, NULL, detail), -1);
    assert_true(strlen(detail) > 0);
    assert_int_equal(http_multipart_find(NULL, 0, "b", "file", &part, detail, sizeof(detail)), -1);
    /* detail may be NULL */
    assert_int_equal(http_multipart_find("", 0, "b", "file", &part, NULL, 0), -1);
}

static void test_find_quoting(void **state)
{
    struct http_part part;
    size_t off;
    char detail[128];

    (void)state;
    /* Backslash escapes in quoted values; unquoted tokens; case-insensitive
     * header and parameter names; extra headers ignored. */
    assert_int_equal(find("--b\r\n"
                          "content-disposition: Form-Data; NAME=\"fi\\\"le\"; "
                          "FileName=\"a \\\\ b;c.jpg\"\r\n"
                          "CONTENT-TYPE:image/png  \r\n"
                          "X-Other: yes\r\n"
                          "\r\n"
                          "png\r\n--b--\r\n",
                          "b", "fi\"le", &part, &off, detail),
                     0);
    assert_string_equal(part.name, "fi\"le");
    assert_string_equal(part.filename, "a \\ b;c.jpg");
    assert_string_equal(part.content_type, "image/png");
    assert_int_equal(part.len, 3);

    assert_int_equal(find("--b\r\n" CD "name=file; filename=x.jpg\r\n\r\nz\r\n--b--", "b", "file",
                          &part, &off, detail),
                     0);
    assert_string_equal(part.filename, "x.jpg");

    /* UTF-8 in a quoted value is kept as is. */
    assert_int_equal(find("--b\r\n" CD "name=\"file\"; filename=\"caf\xc3\xa9.jpg\"\r\n\r\nz\r\n"
                          "--b--",
                          "b", "file", &part, &off, detail),
                     0);
    assert_string_equal(part.filename, "caf\xc3\xa9.jpg");

    /* A folded header line (obs-fold) is one header. */
    assert_int_equal(find("--b\r\n" CD "\r\n name=\"file\";\r\n\tfilename=\"f\"\r\n\r\nz\r\n--b--",
                          "b", "file", &part, &off, detail),
                     0);
    assert_string_equal(part.filename, "f");

    /* Malformed values */
    assert_int_equal(
        find("--b\r\n" CD "name=\"file\r\n\r\nz\r\n--b--", "b", "file", NULL, NULL, detail), -1);
    assert_int_equal(
        find("--b\r\n" CD "name=fi le\r\n\r\nz\r\n--b--", "b", "file", NULL, NULL, detail), -1);
    assert_int_equal(find("--b\r\n" CD "name=file\r\nno colon\r\n\r\nz\r\n--b--", "b", "file", NULL,
                          NULL, detail),
                     -1);
    /* A bare LF or NUL inside the header section */
    assert_int_equal(
        find("--b\r\n" CD "name=file\nX: y\r\n\r\nz\r\n--b--", "b", "file", NULL, NULL, detail),
        -1);
    assert_int_equal(find_n("--b\r\n" CD "name=\"fi\0le\"\r\n\r\nz\r\n--b--",
                            sizeof("--b\r\n" CD "name=\"fi\0le\"\r\n\r\nz\r\n--b--") - 1, "b",
                            "file", NULL, NULL, detail),
                     -1);
}

/* The first part named `field` wins, and later parts do not change the
 * strings it returned. */
static void test_find_first_of_duplicates(void **state)
{
    struct http_part part;
    size_t off;
    char detail[128];
    static const char body[] = "--b\r\n" CD "name=\"file\"; filename=\"one.jpg\"\r\n"
                               "Content-Type: image/jpeg\r\n\r\n"
                               "1\r\n"
                               "--b\r\n" CD "name=\"file\"; filename=\"two.png\"\r\n"
                               "Content-Type: image/png\r\n\r\n"
                               "22\r\n"
                               "--b\r\n" CD "name=\"x\"; filename=\"three.gif\"\r\n"
                               "Content-Type: image/gif\r\n\r\n"
                               "333\r\n"
                               "--b--\r\n";

    (void)state;
    assert_int_equal(find(body, "b", "file", &part, &off, detail), 0);
    assert_string_equal(part.name, "file");
    assert_string_equal(part.filename, "one.jpg");
    assert_string_equal(part.content_type, "image/jpeg");
    assert_int_equal(part.len, 1);
    assert_memory_equal(body + off, "1", 1);
}

static void test_find_transport_padding(void **state)
{
    struct http_part part;
    size_t off;
    char detail[128];

    (void)state;
    assert_int_equal(find("--b \t\r\n" CD "name=file\r\n\r\nabc\r\n--b  \r\n" CD
                          "name=x\r\n\r\n\r\n--b-- \r\n",
                          "b", "file", &part, &off, detail),
                     0);
    assert_int_equal(part.len, 3);
}

/* Every prefix of a valid body: never a read out of bounds, and never a
 * success before the closing delimiter. */
static void test_find_every_prefix(void **state)
{
    size_t n = sizeof(three_parts) - 1;
    size_t close_end = (size_t)(strstr(three_parts, "--XyZ--") - three_parts) + 7;
    char detail[128];

    (void)state;
    for (size_t i = 0; i <= n; i++) {
        struct http_part part;
        int r = find_n(three_parts, i, "XyZ", "file", &part, NULL, detail);

        if (i < close_end) {
            assert_int_equal(r, -1);
            assert_true(strlen(detail) > 0);
        } else if (i == close_end || i == n) {
            assert_int_equal(r, 0);
        }
    }
}

/* Random bytes and random mutations of a valid body (a poor man's fuzzer;
 * the real one is libFuzzer): no crash, no read out of bounds, and a
 * result that points inside the body. */
static void test_find_mutations(void **state)
{
    size_t n = sizeof(three_parts) - 1;
    char buf[sizeof(three_parts) + 16];
    unsigned seed = 12345;
    static const char alphabet[] = "\r\n-XyZ\"\\;=: \t\0a";
    char detail[128];

    (void)state;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = n;
        struct http_part part;
        int r;

        memcpy(buf, three_parts, n);
        for (int k = 0; k < 1 + iter % 4; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % len;

            seed = seed * 1103515245u + 12345u;
            buf[at] = alphabet[(seed >> 8) % (sizeof(alphabet) - 1)];
        }
        seed = seed * 1103515245u + 12345u;
        if (iter % 3 == 0)
            len = (seed >> 8) % (n + 1);
        r = find_n(buf, len, "XyZ", "file", &part, NULL, detail);
        assert_true(r >= -1 && r <= 1);
        if (r == 0)
            assert_string_equal(part.name, "file");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boundary_unquoted),
        cmocka_unit_test(test_boundary_quoted),
        cmocka_unit_test(test_boundary_case_insensitive),
        cmocka_unit_test(test_boundary_other_params),
        cmocka_unit_test(test_boundary_missing),
        cmocka_unit_test(test_boundary_invalid),
        cmocka_unit_test(test_boundary_length),
        cmocka_unit_test(test_find_among_parts),
        cmocka_unit_test(test_find_wrong_field),
        cmocka_unit_test(test_find_wrong_boundary),
        cmocka_unit_test(test_find_binary_data),
        cmocka_unit_test(test_find_preamble_epilogue),
        cmocka_unit_test(test_find_missing_close),
        cmocka_unit_test(test_find_truncated_headers),
        cmocka_unit_test(test_find_headers_too_large),
        cmocka_unit_test(test_find_no_disposition),
        cmocka_unit_test(test_find_no_name),
        cmocka_unit_test(test_find_empty_part),
        cmocka_unit_test(test_find_only_boundary),
        cmocka_unit_test(test_find_zero_length),
        cmocka_unit_test(test_find_quoting),
        cmocka_unit_test(test_find_first_of_duplicates),
        cmocka_unit_test(test_find_transport_padding),
        cmocka_unit_test(test_find_every_prefix),
        cmocka_unit_test(test_find_mutations),
    };

    return cmocka_run_group_tests_name("http_multipart", tests, NULL, NULL);
}
