/*
 * Unit tests for src/util/ids.c: random ids, base64url without padding
 * (RFC 4648 §5) and opaque list cursors. Written from the contract in
 * util.h.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "util/util.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static bool all_base64url(const char *s)
{
    return strspn(s, alphabet) == strlen(s);
}

/* ---- ids ---------------------------------------------------------------- */

static void test_id_new(void **state)
{
    char a[UTIL_ID_LEN + 1];
    char b[UTIL_ID_LEN + 1];

    (void)state;
    assert_int_equal(UTIL_ID_LEN, 22);
    memset(a, '*', sizeof(a));
    assert_int_equal(util_id_new(a), 0);
    assert_int_equal(strlen(a), UTIL_ID_LEN);
    assert_true(all_base64url(a));
    assert_int_equal(util_id_new(b), 0);
    assert_int_equal(strlen(b), UTIL_ID_LEN);
    assert_string_not_equal(a, b);
    assert_true(util_id_valid(a));
    assert_true(util_id_valid(b));
}

/* Many ids: all valid, all distinct (128 random bits never collide here),
 * and every character of the alphabet shows up somewhere. */
static void test_id_many(void **state)
{
    enum { N = 500 };
    static char ids[N][UTIL_ID_LEN + 1];
    bool seen[256] = {false};

    (void)state;
    for (int i = 0; i < N; i++) {
        assert_int_equal(util_id_new(ids[i]), 0);
        assert_true(util_id_valid(ids[i]));
        for (int k = 0; k < UTIL_ID_LEN; k++)
            seen[(unsigned char)ids[i][k]] = true;
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ids[i], ids[j]);
    }
    for (const char *c = alphabet; *c != '\0'; c++)
        assert_true(seen[(unsigned char)*c]);
}

static void test_id_valid_rejects(void **state)
{
    char id[UTIL_ID_LEN + 1];
    char buf[64];
    static const char bad_chars[] = "+/=. !\"#%&*~\t\n";

    (void)state;
    assert_int_equal(util_id_new(id), 0);
    assert_true(util_id_valid(id));

    assert_false(util_id_valid(""));
    /* One short, one long */
    memcpy(buf, id, UTIL_ID_LEN - 1);
    buf[UTIL_ID_LEN - 1] = '\0';
    assert_false(util_id_valid(buf));
    snprintf(buf, sizeof(buf), "%sA", id);
    assert_false(util_id_valid(buf));
    snprintf(buf, sizeof(buf), "%s%s", id, id);
    assert_false(util_id_valid(buf));
    /* A character outside the alphabet, at the start, middle and end */
    for (const char *c = bad_chars; *c != '\0'; c++) {
        for (int at = 0; at < UTIL_ID_LEN; at += 7) {
            memcpy(buf, id, UTIL_ID_LEN + 1);
            buf[at] = *c;
            assert_false(util_id_valid(buf));
        }
        memcpy(buf, id, UTIL_ID_LEN + 1);
        buf[UTIL_ID_LEN - 1] = *c;
        assert_false(util_id_valid(buf));
    }
    /* Non-ASCII bytes */
    memcpy(buf, id, UTIL_ID_LEN + 1);
    buf[3] = (char)0xc3;
    assert_false(util_id_valid(buf));
    /* Path-like input never passes */
    assert_false(util_id_valid("../../../../etc/passwd"));
    assert_false(util_id_valid("AAAAAAAAAA/AAAAAAAAAAA"));
    /* Plain alphabet strings of the right length do (both end in a
     * character whose low four bits are zero, as a 128-bit id must). */
    assert_true(util_id_valid("AAAAAAAAAAAAAAAAAAAAAA"));
    assert_true(util_id_valid("abcdefghij-_012345678w"));
}

/* ---- base64url ---------------------------------------------------------- */

static void test_b64url_vectors(void **state)
{
    /* RFC 4648 §10, without padding */
    static const char *const vectors[][2] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
    };
    char out[64];
    char back[64];

    (void)state;
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        size_t n = strlen(vectors[i][0]);

        assert_int_equal(util_b64url_len(n), strlen(vectors[i][1]));
        util_b64url_encode(vectors[i][0], n, out);
        assert_string_equal(out, vectors[i][1]);
        assert_int_equal(util_b64url_decode(vectors[i][1], back, sizeof(back)), (long)n);
        assert_memory_equal(back, vectors[i][0], n);
    }
    /* The URL-safe alphabet: '-' and '_' instead of '+' and '/' */
    util_b64url_encode("\xfb\xff\xbf", 3, out);
    assert_string_equal(out, "-_-_");
    assert_int_equal(util_b64url_decode("-_-_", back, sizeof(back)), 3);
    assert_memory_equal(back, "\xfb\xff\xbf", 3);
}

static void test_b64url_round_trip(void **state)
{
    unsigned char in[40];
    unsigned char back[41];
    char enc[64];

    (void)state;
    for (size_t n = 0; n <= 40; n++) {
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)(i * 37 + n * 11 + 200);
        if (n > 0)
            in[n - 1] = 0xff;
        memset(enc, '*', sizeof(enc));
        util_b64url_encode(in, n, enc);
        assert_int_equal(strlen(enc), util_b64url_len(n));
        assert_int_equal(util_b64url_len(n), (n * 4 + 2) / 3);
        assert_true(all_base64url(enc));
        assert_null(strchr(enc, '='));
        assert_int_equal(util_b64url_decode(enc, back, sizeof(back)), (long)n);
        assert_memory_equal(back, in, n);
        /* Exactly enough room works; one byte less does not. */
        assert_int_equal(util_b64url_decode(enc, back, n), (long)n);
        if (n > 0)
            assert_int_equal(util_b64url_decode(enc, back, n - 1), -1);
    }
}

static void test_b64url_invalid(void **state)
{
    unsigned char out[64];
    static const char *const bad[] = {
        "Zm9v+", "Zm9v/",  "Zg==", "Zm8=",  "Zm9v YmFy", " Zg",
        "Zg\n",  "Zm9v.g", "Z",    "Zm9vY", "Zg!",       "\xc3\xa9",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(util_b64url_decode(bad[i], out, sizeof(out)), -1);
    /* Empty input is zero bytes, not an error. */
    assert_int_equal(util_b64url_decode("", out, sizeof(out)), 0);
}

/* ---- cursors ------------------------------------------------------------ */

static void test_cursor_round_trip(void **state)
{
    static const int64_t positions[] = {0,        1, 2, 9, 10, 99, 1000, 123456789, INT64_MAX - 1,
                                        INT64_MAX};
    char c[UTIL_CURSOR_MAX];

    (void)state;
    for (size_t i = 0; i < sizeof(positions) / sizeof(positions[0]); i++) {
        int64_t back = -42;

        memset(c, '*', sizeof(c));
        util_cursor_encode(positions[i], c);
        assert_true(strlen(c) > 0);
        assert_true(strlen(c) < UTIL_CURSOR_MAX);
        /* Cursors go into query strings: URL-safe, no padding */
        assert_true(all_base64url(c));
        assert_int_equal(util_cursor_decode(c, &back), 0);
        assert_int_equal(back, positions[i]);
    }
}

static void test_cursor_distinct(void **state)
{
    char a[UTIL_CURSOR_MAX];
    char b[UTIL_CURSOR_MAX];

    (void)state;
    util_cursor_encode(1, a);
    util_cursor_encode(2, b);
    assert_string_not_equal(a, b);
    util_cursor_encode(1, b);
    assert_string_equal(a, b);
}

static void test_cursor_garbage(void **state)
{
    static const char *const bad[] = {
        "",
        "x",
        "0",
        "1",
        "12345",
        "not a cursor",
        "%00",
        "====",
        "AAAA",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "Zm9vYmFy",        /* "foobar" */
        "aGVsbG8gd29ybGQ", /* "hello world" */
        "../../etc/passwd",
    };
    int64_t pos = 42;
    char long_garbage[512];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(util_cursor_decode(bad[i], &pos), -1);
        assert_int_equal(pos, 42);
    }
    memset(long_garbage, 'A', sizeof(long_garbage) - 1);
    long_garbage[sizeof(long_garbage) - 1] = '\0';
    assert_int_equal(util_cursor_decode(long_garbage, &pos), -1);
    assert_int_equal(pos, 42);
}

static void test_cursor_tampered(void **state)
{
    char c[UTIL_CURSOR_MAX];
    char t[UTIL_CURSOR_MAX * 2];
    int64_t pos = 42;
    size_t n;

    (void)state;
    util_cursor_encode(12345, c);
    n = strlen(c);

    /* The first character carries the start of the format tag. */
    for (const char *a = alphabet; *a != '\0'; a++) {
        if (*a == c[0])
            continue;
        memcpy(t, c, n + 1);
        t[0] = *a;
        assert_int_equal(util_cursor_decode(t, &pos), -1);
    }
    /* Characters from outside the alphabet, anywhere */
    for (size_t i = 0; i < n; i++) {
        memcpy(t, c, n + 1);
        t[i] = '+';
        assert_int_equal(util_cursor_decode(t, &pos), -1);
        t[i] = '=';
        assert_int_equal(util_cursor_decode(t, &pos), -1);
    }
    /* Bytes appended: whole zero bytes ("AAAA" decodes to three NULs) or
     * stray characters */
    snprintf(t, sizeof(t), "%sAAAA", c);
    assert_int_equal(util_cursor_decode(t, &pos), -1);
    snprintf(t, sizeof(t), "%sA", c);
    assert_int_equal(util_cursor_decode(t, &pos), -1);
    snprintf(t, sizeof(t), "%s=", c);
    assert_int_equal(util_cursor_decode(t, &pos), -1);
    /* Cut in half */
    memcpy(t, c, n / 2);
    t[n / 2] = '\0';
    assert_int_equal(util_cursor_decode(t, &pos), -1);
    /* A valid id is not a cursor. */
    assert_int_equal(util_id_new(t), 0);
    assert_int_equal(util_cursor_decode(t, &pos), -1);
    assert_int_equal(pos, 42);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_new),
        cmocka_unit_test(test_id_many),
        cmocka_unit_test(test_id_valid_rejects),
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_round_trip),
        cmocka_unit_test(test_b64url_invalid),
        cmocka_unit_test(test_cursor_round_trip),
        cmocka_unit_test(test_cursor_distinct),
        cmocka_unit_test(test_cursor_garbage),
        cmocka_unit_test(test_cursor_tampered),
    };

    return cmocka_run_group_tests_name("util_ids", tests, NULL, NULL);
}
