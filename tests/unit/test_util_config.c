/*
 * Unit tests for src/util/config.c: sizes, durations, integers and the
 * flag/environment/default layering of util_config_parse (DESIGN §1).
 * Written from the contract in util.h.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

#define MIB (1024LL * 1024)

/* ---- util_parse_size ---------------------------------------------------- */

static void test_parse_size_units(void **state)
{
    int64_t v = -1;

    (void)state;
    assert_int_equal(util_parse_size("50MiB", &v), 0);
    assert_int_equal(v, 52428800);
    assert_int_equal(util_parse_size("1KiB", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(util_parse_size("10GiB", &v), 0);
    assert_int_equal(v, 10737418240LL);
    assert_int_equal(util_parse_size("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(util_parse_size("1024", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(util_parse_size("123456789", &v), 0);
    assert_int_equal(v, 123456789);
    assert_int_equal(util_parse_size("0MiB", &v), 0);
    assert_int_equal(v, 0);
}

static void test_parse_size_invalid(void **state)
{
    int64_t v = 77;

    (void)state;
    assert_int_equal(util_parse_size("", &v), -1);
    assert_int_equal(util_parse_size("-1", &v), -1);
    assert_int_equal(util_parse_size("-1KiB", &v), -1);
    assert_int_equal(util_parse_size("5XB", &v), -1);
    assert_int_equal(util_parse_size("MiB", &v), -1);
    assert_int_equal(util_parse_size("abc", &v), -1);
    assert_int_equal(util_parse_size("5MiBx", &v), -1);
    assert_int_equal(util_parse_size("0x10", &v), -1);
    /* Overflow of int64_t, in the number and in the multiplication */
    assert_int_equal(util_parse_size("99999999999999999999", &v), -1);
    assert_int_equal(util_parse_size("9223372036854775807GiB", &v), -1);
    assert_int_equal(util_parse_size("17179869184GiB", &v), -1);
}

/* ---- util_parse_duration ------------------------------------------------ */

static void test_parse_duration_units(void **state)
{
    int64_t v = -1;

    (void)state;
    assert_int_equal(util_parse_duration("30s", &v), 0);
    assert_int_equal(v, 30000);
    assert_int_equal(util_parse_duration("250ms", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(util_parse_duration("5m", &v), 0);
    assert_int_equal(v, 300000);
    assert_int_equal(util_parse_duration("1h", &v), 0);
    assert_int_equal(v, 3600000);
    /* A bare number is seconds. */
    assert_int_equal(util_parse_duration("2", &v), 0);
    assert_int_equal(v, 2000);
    assert_int_equal(util_parse_duration("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(util_parse_duration("0ms", &v), 0);
    assert_int_equal(v, 0);
}

static void test_parse_duration_invalid(void **state)
{
    int64_t v = 77;

    (void)state;
    assert_int_equal(util_parse_duration("", &v), -1);
    assert_int_equal(util_parse_duration("-1", &v), -1);
    assert_int_equal(util_parse_duration("-5s", &v), -1);
    assert_int_equal(util_parse_duration("s", &v), -1);
    assert_int_equal(util_parse_duration("ms", &v), -1);
    assert_int_equal(util_parse_duration("5x", &v), -1);
    assert_int_equal(util_parse_duration("5sec", &v), -1);
    assert_int_equal(util_parse_duration("5s5", &v), -1);
    assert_int_equal(util_parse_duration("abc", &v), -1);
    assert_int_equal(util_parse_duration("9223372036854775807h", &v), -1);
    assert_int_equal(util_parse_duration("9223372036854775807", &v), -1);
}

/* ---- util_parse_int ----------------------------------------------------- */

static void test_parse_int(void **state)
{
    int64_t v = 0;

    (void)state;
    assert_int_equal(util_parse_int("42", &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(util_parse_int("-7", &v), 0);
    assert_int_equal(v, -7);
    assert_int_equal(util_parse_int("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(util_parse_int("9223372036854775807", &v), 0);
    assert_int_equal(v, INT64_MAX);
    assert_int_equal(util_parse_int("", &v), -1);
    assert_int_equal(util_parse_int("4x", &v), -1);
    assert_int_equal(util_parse_int("4 ", &v), -1);
    assert_int_equal(util_parse_int("x4", &v), -1);
    assert_int_equal(util_parse_int("1.5", &v), -1);
    assert_int_equal(util_parse_int("9223372036854775808", &v), -1);
    assert_int_equal(util_parse_int("99999999999999999999", &v), -1);
}

/* ---- util_config_parse -------------------------------------------------- */

/* Names of every environment twin a test below sets. */
static const char *const env_names[] = {
    "IMAGE_SERVER_MAX_PIXELS",
    "IMAGE_SERVER_LISTEN",
    "IMAGE_SERVER_VARIANT_CACHE",
    "IMAGE_SERVER_TIMEOUT",
    "IMAGE_SERVER_MAX_BODY_BYTES",
    "IMAGE_SERVER_DATABASE",
    "IMAGE_SERVER_BLOBS",
    "IMAGE_SERVER_BLOB_GRACE",
    "IMAGE_SERVER_MAX_CONNECTIONS",
    "IMAGE_SERVER_MAX_OUTPUT_PIXELS",
    "IMAGE_SERVER_MAX_PIXELS_PROGRESSIVE",
};

/* Every test starts and ends with none of them set, so a developer's own
 * environment cannot change the outcome. */
static int clear_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
    return 0;
}

/* Parses "image-server serve ARGS..." (ARGS NULL-terminated). */
static enum util_config_result parse_serve(struct util_config *cfg, int *argi, char *errbuf,
                                           size_t errlen, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    const char *a;

    argv[argc++] = (char *)"image-server";
    argv[argc++] = (char *)"serve";
    va_start(ap, errlen);
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < 31);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    memset(cfg, 0, sizeof(*cfg));
    *argi = 2;
    errbuf[0] = '\0';
    return util_config_parse(cfg, UTIL_CMD_SERVE, "serve", argc, argv, argi, errbuf, errlen);
}

static void test_config_defaults(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), NULL), UTIL_CONFIG_OK);
    assert_int_equal(argi, 2);
    assert_non_null(cfg.listen);
    assert_string_equal(cfg.listen, "127.0.0.1:8000");
    assert_non_null(cfg.database);
    assert_string_equal(cfg.database, "sqlite:./data/image-server.db");
    assert_non_null(cfg.blobs);
    assert_string_equal(cfg.blobs, "fs:./data/blobs");
    assert_true(cfg.variant_cache);
    assert_int_equal(cfg.max_body_bytes, 50 * MIB);
    assert_int_equal(cfg.max_pixels, 100000000);
    assert_int_equal(cfg.max_pixels_progressive, 30000000);
    assert_int_equal(cfg.max_output_pixels, 50000000);
    assert_int_equal(cfg.timeout_ms, 30000);
    assert_int_equal(cfg.max_connections, 10000);
    assert_int_equal(cfg.blob_grace_ms, 3600000);
    util_config_free(&cfg);
}

static void test_config_flag_forms(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", "5", NULL),
                     UTIL_CONFIG_OK);
    assert_int_equal(cfg.max_pixels, 5);
    assert_int_equal(argi, 4);
    util_config_free(&cfg);

    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels=5", NULL),
                     UTIL_CONFIG_OK);
    assert_int_equal(cfg.max_pixels, 5);
    assert_int_equal(argi, 3);
    /* The other settings keep their defaults. */
    assert_int_equal(cfg.max_output_pixels, 50000000);
    util_config_free(&cfg);

    /* The last of a repeated flag wins. */
    assert_int_equal(
        parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", "5", "--max-pixels=6", NULL),
        UTIL_CONFIG_OK);
    assert_int_equal(cfg.max_pixels, 6);
    util_config_free(&cfg);
}

static void test_config_typed_flags(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--listen", "0.0.0.0:9000",
                                 "--database=postgres://u@h/db", "--blobs", "db",
                                 "--max-body-bytes", "1KiB", "--timeout=250ms", "--blob-grace",
                                 "2m", "--max-connections", "12", NULL),
                     UTIL_CONFIG_OK);
    assert_string_equal(cfg.listen, "0.0.0.0:9000");
    assert_string_equal(cfg.database, "postgres://u@h/db");
    assert_string_equal(cfg.blobs, "db");
    assert_int_equal(cfg.max_body_bytes, 1024);
    assert_int_equal(cfg.timeout_ms, 250);
    assert_int_equal(cfg.blob_grace_ms, 120000);
    assert_int_equal(cfg.max_connections, 12);
    util_config_free(&cfg);
}

static void test_config_env_twin(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(setenv("IMAGE_SERVER_MAX_PIXELS", "7", 1), 0);
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), NULL), UTIL_CONFIG_OK);
    assert_int_equal(cfg.max_pixels, 7);
    util_config_free(&cfg);

    /* The flag beats the environment. */
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", "5", NULL),
                     UTIL_CONFIG_OK);
    assert_int_equal(cfg.max_pixels, 5);
    util_config_free(&cfg);

    assert_int_equal(setenv("IMAGE_SERVER_LISTEN", "127.0.0.1:0", 1), 0);
    assert_int_equal(setenv("IMAGE_SERVER_VARIANT_CACHE", "off", 1), 0);
    assert_int_equal(setenv("IMAGE_SERVER_TIMEOUT", "5s", 1), 0);
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), NULL), UTIL_CONFIG_OK);
    assert_string_equal(cfg.listen, "127.0.0.1:0");
    assert_false(cfg.variant_cache);
    assert_int_equal(cfg.timeout_ms, 5000);
    util_config_free(&cfg);

    /* A bad value in the environment is an error too, not ignored. */
    assert_int_equal(setenv("IMAGE_SERVER_MAX_PIXELS", "lots", 1), 0);
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), NULL), UTIL_CONFIG_ERROR);
    assert_true(strlen(err) > 0);
    clear_env(NULL);
}

static void test_config_bad_value(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", "many", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--max-pixels"));
    assert_null(strchr(err, '\n'));

    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels=", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--max-pixels"));

    /* A flag that needs a value, at the end */
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--max-pixels"));

    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--timeout", "soon", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--timeout"));

    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-body-bytes", "5XB", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--max-body-bytes"));
}

static void test_config_unknown_flag(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--bogus-flag", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--bogus-flag"));

    assert_int_equal(
        parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", "5", "--no-such=1", NULL),
        UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--no-such"));

    /* A short error buffer is still a terminated string. */
    assert_int_equal(parse_serve(&cfg, &argi, err, 8, "--bogus-flag", NULL), UTIL_CONFIG_ERROR);
    assert_true(strlen(err) < 8);
}

static void test_config_variant_cache(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--variant-cache", "off", NULL),
                     UTIL_CONFIG_OK);
    assert_false(cfg.variant_cache);
    util_config_free(&cfg);

    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--variant-cache=off",
                                 "--variant-cache=on", NULL),
                     UTIL_CONFIG_OK);
    assert_true(cfg.variant_cache);
    util_config_free(&cfg);

    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--variant-cache", "maybe", NULL),
                     UTIL_CONFIG_ERROR);
    assert_non_null(strstr(err, "--variant-cache"));
}

static void test_config_positional(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;

    (void)state;
    /* Parsing stops at the first positional argument: what follows it is
     * not parsed, even when it looks like a flag. */
    assert_int_equal(parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels", "5", "in.jpg",
                                 "--bogus-flag", NULL),
                     UTIL_CONFIG_OK);
    assert_int_equal(argi, 4);
    assert_int_equal(cfg.max_pixels, 5);
    util_config_free(&cfg);

    assert_int_equal(
        parse_serve(&cfg, &argi, err, sizeof(err), "in.jpg", "--max-pixels", "5", NULL),
        UTIL_CONFIG_OK);
    assert_int_equal(argi, 2);
    assert_int_equal(cfg.max_pixels, 100000000);
    util_config_free(&cfg);

    /* "--" ends the flags; *argi points past it. */
    assert_int_equal(
        parse_serve(&cfg, &argi, err, sizeof(err), "--max-pixels=9", "--", "--max-pixels", NULL),
        UTIL_CONFIG_OK);
    assert_int_equal(argi, 4);
    assert_int_equal(cfg.max_pixels, 9);
    util_config_free(&cfg);
}

static void test_config_help(void **state)
{
    struct util_config cfg;
    char err[256];
    int argi;
    int saved, devnull;
    enum util_config_result r;

    (void)state;
    /* Help goes to stdout, which carries our TAP stream: send it away. */
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    assert_true(saved >= 0);
    devnull = open("/dev/null", O_WRONLY);
    assert_true(devnull >= 0);
    assert_true(dup2(devnull, STDOUT_FILENO) >= 0);
    close(devnull);
    r = parse_serve(&cfg, &argi, err, sizeof(err), "--help", NULL);
    fflush(stdout);
    assert_true(dup2(saved, STDOUT_FILENO) >= 0);
    close(saved);
    assert_int_equal(r, UTIL_CONFIG_HELP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size_units),
        cmocka_unit_test(test_parse_size_invalid),
        cmocka_unit_test(test_parse_duration_units),
        cmocka_unit_test(test_parse_duration_invalid),
        cmocka_unit_test(test_parse_int),
        cmocka_unit_test_setup_teardown(test_config_defaults, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_flag_forms, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_typed_flags, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_env_twin, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_bad_value, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_unknown_flag, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_variant_cache, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_positional, clear_env, clear_env),
        cmocka_unit_test_setup_teardown(test_config_help, clear_env, clear_env),
    };

    return cmocka_run_group_tests_name("util_config", tests, NULL, NULL);
}
