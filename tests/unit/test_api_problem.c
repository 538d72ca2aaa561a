/*
 * Unit tests for src/api/problem.c: the one table from domain errors to
 * HTTP (DESIGN §3) and RFC 9457 problem JSON. The JSON is parsed back with
 * jansson, so the tests check what a client sees, not the spelling.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

/* ---- api_error_map ------------------------------------------------------ */

static void test_error_map_table(void **state)
{
    static const struct {
        enum util_err code;
        int status;
        const char *type;
    } want[] = {
        {UTIL_ERR_INVALID_OPERATION, 400, "/problems/invalid-operation"},
        {UTIL_ERR_NOT_FOUND, 404, "/problems/not-found"},
        {UTIL_ERR_UNSUPPORTED, 415, "/problems/unsupported-media-type"},
        {UTIL_ERR_INVALID_IMAGE, 422, "/problems/invalid-image"},
        {UTIL_ERR_TOO_LARGE, 422, "/problems/image-too-large"},
        {UTIL_ERR_CONFLICT, 409, "/problems/conflict"},
        {UTIL_ERR_OVERLOADED, 503, "/problems/overloaded"},
        {UTIL_ERR_TIMEOUT, 503, "/problems/timeout"},
        {UTIL_ERR_UNAVAILABLE, 503, "/problems/unavailable"},
        {UTIL_ERR_INTERNAL, 500, "/problems/internal"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int status = 0;
        const char *type = NULL;
        const char *title = NULL;

        api_error_map(want[i].code, &status, &type, &title);
        assert_int_equal(status, want[i].status);
        assert_non_null(type);
        assert_string_equal(type, want[i].type);
        assert_non_null(title);
        assert_true(strlen(title) > 0);
    }
}

/* Every code has its own title, and two codes sharing a status (503, 422)
 * still have different types. */
static void test_error_map_distinct(void **state)
{
    const char *types[UTIL_ERR_INTERNAL + 1];
    const char *titles[UTIL_ERR_INTERNAL + 1];

    (void)state;
    for (int c = UTIL_ERR_INVALID_OPERATION; c <= UTIL_ERR_INTERNAL; c++) {
        int status;

        api_error_map((enum util_err)c, &status, &types[c], &titles[c]);
        assert_true(status >= 400 && status <= 599);
        assert_true(strncmp(types[c], "/problems/", 10) == 0);
        for (int d = UTIL_ERR_INVALID_OPERATION; d < c; d++) {
            assert_string_not_equal(types[c], types[d]);
            assert_string_not_equal(titles[c], titles[d]);
        }
    }
}

/* A code outside the table (a bug) is an internal error, never a 2xx. */
static void test_error_map_unknown(void **state)
{
    int status = 0;
    const char *type = NULL;
    const char *title = NULL;

    (void)state;
    api_error_map((enum util_err)999, &status, &type, &title);
    assert_int_equal(status, 500);
    assert_string_equal(type, "/problems/internal");
    assert_non_null(title);
}

/* ---- api_problem_json --------------------------------------------------- */

/* Parses s (and frees it); returns the object. */
static json_t *parse(char *s)
{
    json_error_t e;
    json_t *o;

    assert_non_null(s);
    o = json_loads(s, JSON_REJECT_DUPLICATES, &e);
    if (o == NULL)
        fail_msg("not JSON (%s): %s", e.text, s);
    free(s);
    assert_true(json_is_object(o));
    return o;
}

static void test_problem_json_keys(void **state)
{
    json_t *o = parse(api_problem_json(404, "/problems/not-found", "Not found", "no image abc"));
    const char *key;
    json_t *v;

    (void)state;
    assert_int_equal(json_object_size(o), 4);
    assert_true(json_is_string(json_object_get(o, "type")));
    assert_string_equal(json_string_value(json_object_get(o, "type")), "/problems/not-found");
    assert_true(json_is_string(json_object_get(o, "title")));
    assert_string_equal(json_string_value(json_object_get(o, "title")), "Not found");
    assert_true(json_is_integer(json_object_get(o, "status")));
    assert_int_equal(json_integer_value(json_object_get(o, "status")), 404);
    assert_true(json_is_string(json_object_get(o, "detail")));
    assert_string_equal(json_string_value(json_object_get(o, "detail")), "no image abc");
    json_object_foreach(o, key, v)
    {
        assert_true(strcmp(key, "type") == 0 || strcmp(key, "title") == 0 ||
                    strcmp(key, "status") == 0 || strcmp(key, "detail") == 0);
        (void)v;
    }
    json_decref(o);
}

static void test_problem_json_no_detail(void **state)
{
    json_t *o = parse(api_problem_json(503, "/problems/overloaded", "Overloaded", NULL));

    (void)state;
    assert_int_equal(json_object_size(o), 3);
    assert_null(json_object_get(o, "detail"));
    assert_int_equal(json_integer_value(json_object_get(o, "status")), 503);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "/problems/overloaded");
    assert_string_equal(json_string_value(json_object_get(o, "title")), "Overloaded");
    json_decref(o);

    /* An empty detail is still a detail. */
    o = parse(api_problem_json(400, "/problems/invalid-operation", "Invalid operation", ""));
    assert_int_equal(json_object_size(o), 4);
    assert_string_equal(json_string_value(json_object_get(o, "detail")), "");
    json_decref(o);
}

/* Quotes, backslashes, control characters and non-ASCII UTF-8 survive the
 * trip through JSON unchanged. */
static void test_problem_json_escaping(void **state)
{
    static const char *const details[] = {
        "unknown parameter \"wdth\"",
        "line one\nline two\r\n\ttabbed",
        "back\\slash and /slash",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac",
        "\x01\x1f control",
        "</script><script>alert(1)</script>",
        "{\"type\": \"/problems/fake\", \"status\": 200}",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(details) / sizeof(details[0]); i++) {
        json_t *o = parse(api_problem_json(400, "/problems/invalid-operation",
                                           "Invalid \"operation\"", details[i]));

        assert_int_equal(json_object_size(o), 4);
        assert_string_equal(json_string_value(json_object_get(o, "detail")), details[i]);
        assert_string_equal(json_string_value(json_object_get(o, "title")),
                            "Invalid \"operation\"");
        assert_string_equal(json_string_value(json_object_get(o, "type")),
                            "/problems/invalid-operation");
        assert_int_equal(json_integer_value(json_object_get(o, "status")), 400);
        json_decref(o);
    }
}

/* A detail that is not UTF-8 (bytes from a client) still gives valid
 * JSON with all four keys; what the detail then says is up to the
 * implementation. */
static void test_problem_json_invalid_utf8(void **state)
{
    json_t *o = parse(api_problem_json(422, "/problems/invalid-image", "Invalid image",
                                       "bad \xff\xfe bytes \xc3"));

    (void)state;
    assert_int_equal(json_object_size(o), 4);
    assert_true(json_is_string(json_object_get(o, "detail")));
    assert_int_equal(json_integer_value(json_object_get(o, "status")), 422);
    json_decref(o);
}

/* The map and the JSON agree for every code. */
static void test_problem_json_from_map(void **state)
{
    (void)state;
    for (int c = UTIL_ERR_INVALID_OPERATION; c <= UTIL_ERR_INTERNAL; c++) {
        int status;
        const char *type;
        const char *title;
        json_t *o;

        api_error_map((enum util_err)c, &status, &type, &title);
        o = parse(api_problem_json(status, type, title, "d"));
        assert_int_equal(json_integer_value(json_object_get(o, "status")), status);
        assert_string_equal(json_string_value(json_object_get(o, "type")), type);
        assert_string_equal(json_string_value(json_object_get(o, "title")), title);
        assert_string_equal(json_string_value(json_object_get(o, "detail")), "d");
        json_decref(o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_map_table),
        cmocka_unit_test(test_error_map_distinct),
        cmocka_unit_test(test_error_map_unknown),
        cmocka_unit_test(test_problem_json_keys),
        cmocka_unit_test(test_problem_json_no_detail),
        cmocka_unit_test(test_problem_json_escaping),
        cmocka_unit_test(test_problem_json_invalid_utf8),
        cmocka_unit_test(test_problem_json_from_map),
    };

    return cmocka_run_group_tests_name("api_problem", tests, NULL, NULL);
}
