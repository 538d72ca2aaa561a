/*
 * libFuzzer target: arbitrary bytes through the server's own image checks
 * and executor (src/ops/probe.c, src/ops/exec.c), as an upload (ops_probe)
 * and as POST /v1/transform, a variant or a job (ops_execute) see them.
 *
 * Some inputs abort any process that decodes them unchecked (a 35-byte GIF
 * whose frame claims 65535x65535 makes libvips g_malloc 17 GB): the header
 * checks of ops_probe/ops_execute must refuse them before any pixel is
 * made, so such an abort here is a finding. libvips' operation cache is
 * off (ops_init, and again below) so every input is really decoded and
 * memory does not pile up across inputs; one libvips worker thread keeps
 * runs reproducible.
 *
 * Every input goes through ops_execute with the first plan, since
 * POST /v1/transform runs it on the raw upload without a probe; inputs
 * that pass ops_probe then run every plan. Besides, ops_webp_strip on the
 * raw bytes must never grow them.
 */
#include "fuzz_common.h"

#include <glib.h>
#include <vips/vips.h>

#include "ops/ops.h"

static const char *const PLAN_QUERIES[] = {
    "w=64&h=64&fit=cover&format=png",
    "rotate=30&w=50&format=webp&strip=1",
    "crop=0,0,8,8&flip=v&format=jpeg",
    "w=40&format=gif",
};
#define NPLANS (sizeof(PLAN_QUERIES) / sizeof(PLAN_QUERIES[0]))

static struct ops_plan plans[NPLANS];

static const struct ops_limits LIMITS = {
    .max_pixels = 4000000,
    .max_pixels_progressive = 2000000,
    .max_output_pixels = 4000000,
    .timeout_ms = 2000,
    .cancel = NULL,
};

static void quiet_log(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer arg)
{
    (void)domain;
    (void)level;
    (void)msg;
    (void)arg;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct util_error err = {UTIL_OK, ""};

    (void)argc;
    if (ops_init((*argv)[0], 1, &err) != 0) {
        fprintf(stderr, "ops_init: %s\n", err.detail);
        abort();
    }
    vips_cache_set_max(0);
    vips_concurrency_set(1);
    /* libvips warns about every corrupt input ("VipsJpeg: ..."): at
     * thousands of inputs a second that is only noise. FUZZ_VERBOSE=1
     * keeps the server's own log handler. */
    if (getenv("FUZZ_VERBOSE") == NULL)
        g_log_set_handler("VIPS", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION,
                          quiet_log, NULL);
    for (size_t i = 0; i < NPLANS; i++) {
        if (ops_parse_query(PLAN_QUERIES[i], &plans[i], &err) != 0) {
            fprintf(stderr, "plan '%s': %s\n", PLAN_QUERIES[i], err.detail);
            abort();
        }
    }
    return 0;
}

static bool is_allowed_format(const char *f)
{
    static const char *const formats[] = {"jpeg", "png", "webp", "gif", "tiff", "heic", "avif"};

    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
        if (strcmp(f, formats[i]) == 0)
            return true;
    return false;
}

static void check_failure(const struct util_error *err)
{
    /* The errors an untrusted image may cause; UTIL_ERR_INTERNAL is a bug
     * and UTIL_ERR_CONFLICT needs a cancel flag. */
    CHECK(err->code == UTIL_ERR_INVALID_OPERATION || err->code == UTIL_ERR_UNSUPPORTED ||
          err->code == UTIL_ERR_INVALID_IMAGE || err->code == UTIL_ERR_TOO_LARGE ||
          err->code == UTIL_ERR_TIMEOUT);
    CHECK(strnlen(err->detail, sizeof(err->detail)) < sizeof(err->detail));
    CHECK(err->detail[0] != '\0');
    CHECK(strchr(err->detail, '\n') == NULL);
}

static void run_plan(const uint8_t *data, size_t size, const struct ops_plan *plan)
{
    struct ops_result res;
    struct util_error err = {UTIL_OK, ""};

    if (ops_execute(data, size, plan, NULL, &LIMITS, &res, &err) != 0) {
        check_failure(&err);
        CHECK(res.buf == NULL);
        vips_error_clear();
        return;
    }
    CHECK(res.buf != NULL && res.len > 0);
    CHECK(strcmp(res.format, ops_format_name(plan->output.format)) == 0);
    CHECK(res.width >= 1 && res.height >= 1 && res.pages >= 1);
    CHECK(res.width * res.height <= LIMITS.max_output_pixels);
    g_free(res.buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ops_image_info info;
    struct util_error err = {UTIL_OK, ""};
    unsigned char *copy;
    size_t n;

    if (size == 0)
        data = (const uint8_t *)"";

    /* ops_webp_strip edits a buffer in place and never grows it. */
    copy = malloc(size > 0 ? size : 1);
    CHECK(copy != NULL);
    if (size > 0)
        memcpy(copy, data, size);
    n = ops_webp_strip(copy, size);
    CHECK(n <= size);
    if (n != size) {
        /* Something was removed: still a RIFF WEBP, its size field updated. */
        CHECK(n >= 12 && memcmp(copy, "RIFF", 4) == 0 && memcmp(copy + 8, "WEBP", 4) == 0);
        CHECK((size_t)copy[4] + ((size_t)copy[5] << 8) + ((size_t)copy[6] << 16) +
                  ((size_t)copy[7] << 24) ==
              n - 8);
    }
    free(copy);

    run_plan(data, size, &plans[0]);

    if (ops_probe(data, size, &LIMITS, &info, &err) != 0) {
        check_failure(&err);
        vips_error_clear();
        return 0;
    }
    CHECK(is_allowed_format(info.format));
    CHECK(info.width >= 1 && info.height >= 1 && info.pages >= 1);
    CHECK(info.width * info.height * info.pages <= LIMITS.max_pixels);
    CHECK(info.orientation >= 1 && info.orientation <= 8);
    for (size_t i = 1; i < NPLANS; i++)
        run_plan(data, size, &plans[i]);
    vips_error_clear();
    return 0;
}
