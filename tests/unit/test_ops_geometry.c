/*
 * Tests of the pure size arithmetic in src/ops/exec.c: ops_resize_geometry
 * (one resize: fit modes, enlarge, one-sided sizes) and ops_plan_geometry
 * (a whole plan simulated on sizes: crop bounds, rotation, output limits,
 * animated pages). Expected values follow DESIGN §3, not the code.
 */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "ops/ops.h"

#define MAXPX 50000000LL /* the default --max-output-pixels */

/* ---- helpers -------------------------------------------------------------- */

static void parse_at(const char *q, struct ops_plan *plan, const char *file, int line)
{
    struct util_error err = {0};
    if (ops_parse_query(q, plan, &err) != 0) {
        print_error("%s:%d: query '%s' refused: %s\n", file, line, q, err.detail);
        _fail(file, line);
    }
}

/* The resize step of the query (which must have one). */
static struct ops_resize resize_at(const char *q, const char *file, int line)
{
    struct ops_plan plan;
    parse_at(q, &plan, file, line);
    for (int i = 0; i < plan.nsteps; i++)
        if (plan.steps[i].kind == OPS_STEP_RESIZE)
            return plan.steps[i].resize;
    print_error("%s:%d: query '%s' has no resize step\n", file, line, q);
    _fail(file, line);
    struct ops_resize none = {0};
    return none;
}

/* ops_resize_geometry of the query's resize on a W x H image gives a
 * scaled_w x scaled_h image in a box_w x box_h result. */
static void geom_at(int64_t W, int64_t H, const char *q, int64_t sw, int64_t sh, int64_t bw,
                    int64_t bh, const char *file, int line)
{
    struct ops_resize r = resize_at(q, file, line);
    struct ops_resize_geometry g;
    memset(&g, 0xab, sizeof(g));
    ops_resize_geometry(W, H, &r, &g);
    if (g.scaled_w != sw || g.scaled_h != sh || g.box_w != bw || g.box_h != bh) {
        print_error("%s:%d: %lldx%lld '%s'\n  got  scaled %lldx%lld box %lldx%lld\n"
                    "  want scaled %lldx%lld box %lldx%lld\n",
                    file, line, (long long)W, (long long)H, q, (long long)g.scaled_w,
                    (long long)g.scaled_h, (long long)g.box_w, (long long)g.box_h, (long long)sw,
                    (long long)sh, (long long)bw, (long long)bh);
        _fail(file, line);
    }
}
#define GEOM(W, H, q, sw, sh, bw, bh)                                                              \
    geom_at((W), (H), (q), (sw), (sh), (bw), (bh), __FILE__, __LINE__)
/* A resize whose scaled image is the result (no crop, no padding). */
#define SIZE(W, H, q, w, h) GEOM((W), (H), (q), (w), (h), (w), (h))

/* ops_plan_geometry of the query on a W x H x pages image: 0 and w x h. */
static void plan_ok_at(int64_t W, int64_t H, int64_t pages, int64_t maxpx, const char *q, int64_t w,
                       int64_t h, const char *file, int line)
{
    struct ops_plan plan;
    parse_at(q, &plan, file, line);
    struct util_error err = {0};
    int64_t ow = -1, oh = -1;
    int rc = ops_plan_geometry(&plan, W, H, pages, maxpx, &ow, &oh, &err);
    if (rc != 0 || ow != w || oh != h) {
        print_error("%s:%d: %lldx%lld x%lld '%s' (max %lld)\n  got  rc %d %lldx%lld (%s)\n"
                    "  want rc 0 %lldx%lld\n",
                    file, line, (long long)W, (long long)H, (long long)pages, q, (long long)maxpx,
                    rc, (long long)ow, (long long)oh, err.detail, (long long)w, (long long)h);
        _fail(file, line);
    }
}
#define PLAN_OK(W, H, pages, maxpx, q, w, h)                                                       \
    plan_ok_at((W), (H), (pages), (maxpx), (q), (w), (h), __FILE__, __LINE__)

/* ops_plan_geometry of the query fails with code and a non-empty detail. */
static void plan_err_at(int64_t W, int64_t H, int64_t pages, int64_t maxpx, const char *q,
                        enum util_err code, const char *file, int line)
{
    struct ops_plan plan;
    parse_at(q, &plan, file, line);
    struct util_error err = {0};
    int64_t ow = -1, oh = -1;
    int rc = ops_plan_geometry(&plan, W, H, pages, maxpx, &ow, &oh, &err);
    if (rc == 0 || err.code != code || err.detail[0] == '\0') {
        print_error("%s:%d: %lldx%lld x%lld '%s' (max %lld)\n  got  rc %d code %s (%s) "
                    "%lldx%lld\n  want code %s\n",
                    file, line, (long long)W, (long long)H, (long long)pages, q, (long long)maxpx,
                    rc, util_err_name(err.code), err.detail, (long long)ow, (long long)oh,
                    util_err_name(code));
        _fail(file, line);
    }
}
#define PLAN_ERR(W, H, pages, maxpx, q, code)                                                      \
    plan_err_at((W), (H), (pages), (maxpx), (q), (code), __FILE__, __LINE__)

/* ---- ops_resize_geometry --------------------------------------------------- */

static void test_one_sided(void **state)
{
    (void)state;
    SIZE(800, 533, "w=400", 400, 267);
    SIZE(800, 533, "h=200", 300, 200);
    SIZE(800, 533, "w=800", 800, 533);
    SIZE(533, 800, "w=200", 200, 300);
    SIZE(533, 800, "h=400", 267, 400);
    SIZE(1000, 1000, "w=1", 1, 1);
    /* a side never rounds to 0 */
    SIZE(10000, 1, "w=100", 100, 1);
    SIZE(1, 10000, "h=100", 1, 100);
    /* fit means nothing with one side */
    SIZE(800, 533, "w=400&fit=cover", 400, 267);
    SIZE(800, 533, "w=400&fit=contain", 400, 267);
    SIZE(800, 533, "w=400&fit=fill", 400, 267);
    SIZE(800, 533, "h=200&fit=outside", 300, 200);
}

static void test_one_sided_enlarge(void **state)
{
    (void)state;
    /* enlarge=0 never upscales */
    SIZE(800, 533, "w=1600", 800, 533);
    SIZE(800, 533, "h=1066", 800, 533);
    SIZE(800, 533, "w=100000", 800, 533);
    SIZE(1, 1, "w=5", 1, 1);
    /* enlarge=1 does */
    SIZE(800, 533, "w=1600&enlarge=1", 1600, 1066);
    SIZE(800, 533, "h=1066&enlarge=1", 1600, 1066);
    SIZE(1, 1, "w=5&enlarge=1", 5, 5);
    SIZE(800, 533, "w=100000&enlarge=1", 100000, 66625);
    /* enlarge=1 still shrinks */
    SIZE(800, 533, "w=400&enlarge=1", 400, 267);
}

static void test_fit_inside(void **state)
{
    (void)state;
    SIZE(800, 533, "w=400&h=400", 400, 267); /* inside is the default */
    SIZE(800, 533, "w=400&h=400&fit=inside", 400, 267);
    SIZE(800, 533, "w=1000&h=200&fit=inside", 300, 200);
    SIZE(533, 800, "w=400&h=400&fit=inside", 267, 400);
    SIZE(800, 533, "w=2000&h=2000&fit=inside", 800, 533);
    SIZE(800, 533, "w=2000&h=2000&fit=inside&enlarge=1", 2000, 1333);
    SIZE(800, 533, "w=800&h=533&fit=inside", 800, 533);
}

static void test_fit_outside(void **state)
{
    (void)state;
    SIZE(800, 533, "w=400&h=400&fit=outside", 600, 400);
    SIZE(533, 800, "w=400&h=400&fit=outside", 400, 600);
    SIZE(800, 533, "w=1000&h=200&fit=outside", 800, 533); /* would need 1.25: capped */
    SIZE(800, 533, "w=2000&h=2000&fit=outside", 800, 533);
    SIZE(800, 533, "w=1000&h=1000&fit=outside&enlarge=1", 1501, 1000);
    SIZE(800, 533, "w=100&h=100&fit=outside", 150, 100);
}

static void test_fit_cover(void **state)
{
    (void)state;
    GEOM(800, 533, "w=400&h=400&fit=cover", 600, 400, 400, 400);
    GEOM(533, 800, "w=400&h=400&fit=cover", 400, 600, 400, 400);
    GEOM(800, 533, "w=400&h=100&fit=cover", 400, 267, 400, 100);
    /* without enlarge the box shrinks by 1000/533 to 533x533 */
    GEOM(800, 533, "w=1000&h=1000&fit=cover", 800, 533, 533, 533);
    /* 1000x200 needs 1.25: the box shrinks by 1.25 to 800x160 */
    GEOM(800, 533, "w=1000&h=200&fit=cover", 800, 533, 800, 160);
    GEOM(800, 533, "w=1000&h=1000&fit=cover&enlarge=1", 1501, 1000, 1000, 1000);
    GEOM(800, 533, "w=800&h=533&fit=cover", 800, 533, 800, 533);
    /* gravity changes where, not how much */
    GEOM(800, 533, "w=400&h=400&fit=cover&gravity=north", 600, 400, 400, 400);
    GEOM(800, 533, "w=400&h=400&fit=cover&gravity=attention", 600, 400, 400, 400);
}

static void test_fit_contain(void **state)
{
    (void)state;
    GEOM(800, 533, "w=400&h=400&fit=contain", 400, 267, 400, 400);
    GEOM(533, 800, "w=400&h=400&fit=contain", 267, 400, 400, 400);
    /* without enlarge the box shrinks by 1.25 to 800x800 */
    GEOM(800, 533, "w=1000&h=1000&fit=contain", 800, 533, 800, 800);
    GEOM(800, 533, "w=1000&h=200&fit=contain", 300, 200, 1000, 200);
    GEOM(800, 533, "w=1000&h=1000&fit=contain&enlarge=1", 1000, 666, 1000, 1000);
    GEOM(800, 533, "w=800&h=533&fit=contain", 800, 533, 800, 533);
}

static void test_fit_fill(void **state)
{
    (void)state;
    SIZE(800, 533, "w=400&h=400&fit=fill", 400, 400);
    SIZE(800, 533, "w=100&h=500&fit=fill", 100, 500);
    /* the box shrinks by max(2, 0.75) = 2 */
    SIZE(800, 533, "w=1600&h=400&fit=fill", 800, 200);
    SIZE(800, 533, "w=1000&h=1000&fit=fill", 533, 533);
    SIZE(800, 533, "w=1600&h=400&fit=fill&enlarge=1", 1600, 400);
    SIZE(800, 533, "w=100000&h=100000&fit=fill&enlarge=1", 100000, 100000);
}

/* Without enlarge no resize ever makes more pixels in either direction than
 * the source has, for every fit and a spread of boxes. */
static void test_never_upscales(void **state)
{
    (void)state;
    static const char *fits[] = {"inside", "outside", "cover", "contain", "fill"};
    static const int64_t srcs[][2] = {{800, 533}, {533, 800}, {1, 1}, {640, 480}, {3, 2000}};
    static const int boxes[][2] = {{1, 1},     {10, 3000}, {3000, 10},      {400, 400},
                                   {799, 534}, {1600, 1},  {100000, 100000}};
    for (size_t s = 0; s < sizeof(srcs) / sizeof(srcs[0]); s++)
        for (size_t f = 0; f < sizeof(fits) / sizeof(fits[0]); f++)
            for (size_t b = 0; b < sizeof(boxes) / sizeof(boxes[0]); b++) {
                char q[128];
                snprintf(q, sizeof(q), "w=%d&h=%d&fit=%s", boxes[b][0], boxes[b][1], fits[f]);
                struct ops_resize r = resize_at(q, __FILE__, __LINE__);
                struct ops_resize_geometry g;
                ops_resize_geometry(srcs[s][0], srcs[s][1], &r, &g);
                int64_t W = srcs[s][0], H = srcs[s][1];
                /* inside and outside: the result is the scaled image; the
                 * others make exactly a (possibly shrunk) box */
                bool boxed = strcmp(fits[f], "inside") != 0 && strcmp(fits[f], "outside") != 0;
                bool bad = g.scaled_w > W || g.scaled_h > H || g.scaled_w < 1 || g.scaled_h < 1 ||
                           g.box_w < 1 || g.box_h < 1;
                if (strcmp(fits[f], "outside") != 0)
                    bad = bad || g.box_w > boxes[b][0] || g.box_h > boxes[b][1];
                if (!boxed || strcmp(fits[f], "fill") == 0)
                    bad = bad || g.box_w != g.scaled_w || g.box_h != g.scaled_h;
                if (strcmp(fits[f], "cover") == 0) /* scaled, then cropped to the box */
                    bad = bad || g.scaled_w < g.box_w || g.scaled_h < g.box_h;
                if (strcmp(fits[f], "contain") == 0) /* scaled, then padded to the box */
                    bad = bad || g.scaled_w > g.box_w || g.scaled_h > g.box_h;
                if (bad) {
                    print_error("%lldx%lld '%s': scaled %lldx%lld box %lldx%lld\n", (long long)W,
                                (long long)H, q, (long long)g.scaled_w, (long long)g.scaled_h,
                                (long long)g.box_w, (long long)g.box_h);
                    fail();
                }
                if (!boxed)
                    continue;
                /* the box keeps the requested aspect (within rounding) */
                double want = (double)boxes[b][0] / boxes[b][1];
                double got = (double)g.box_w / (double)g.box_h;
                double tol = 1.0 / (double)g.box_h + 1.0 / (double)g.box_w;
                /* a box cut to 1 pixel on a side cannot keep its aspect */
                if ((got / want > 1 + 2 * tol + 1e-9 || want / got > 1 + 2 * tol + 1e-9) &&
                    g.box_w > 1 && g.box_h > 1) {
                    print_error("%lldx%lld '%s': box %lldx%lld lost the aspect %.4f\n",
                                (long long)W, (long long)H, q, (long long)g.box_w,
                                (long long)g.box_h, want);
                    fail();
                }
            }
}

/* ---- ops_plan_geometry ----------------------------------------------------- */

static void test_plan_simple(void **state)
{
    (void)state;
    PLAN_OK(800, 533, 1, MAXPX, "w=400", 400, 267);
    PLAN_OK(800, 533, 1, MAXPX, "w=1000&h=1000&fit=cover", 533, 533);
    PLAN_OK(800, 533, 1, MAXPX, "w=1000&h=1000&fit=contain", 800, 800);
    PLAN_OK(800, 533, 1, MAXPX, "w=1600&h=400&fit=fill", 800, 200);
    PLAN_OK(800, 533, 1, MAXPX, "w=1600&enlarge=1", 1600, 1066);
    PLAN_OK(800, 533, 1, MAXPX, "flip=h&blur=3&sharpen=2", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "format=png&q=50&strip=1", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "", 800, 533);
}

static void test_plan_crop(void **state)
{
    (void)state;
    PLAN_OK(800, 533, 1, MAXPX, "crop=10,20,300,200", 300, 200);
    PLAN_OK(800, 533, 1, MAXPX, "crop=0,0,800,533", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "crop=799,532,1,1", 1, 1);
    /* crop runs before resize whatever the URL order */
    PLAN_OK(800, 533, 1, MAXPX, "crop=0,0,400,200&w=100", 100, 50);
    PLAN_OK(800, 533, 1, MAXPX, "w=100&crop=0,0,400,200", 100, 50);
    PLAN_OK(800, 533, 1, MAXPX, "crop=0,0,100,50&rotate=90", 50, 100);
    /* outside the image */
    PLAN_ERR(800, 533, 1, MAXPX, "crop=800,0,1,1", UTIL_ERR_INVALID_OPERATION);
    PLAN_ERR(800, 533, 1, MAXPX, "crop=0,533,1,1", UTIL_ERR_INVALID_OPERATION);
    PLAN_ERR(800, 533, 1, MAXPX, "crop=700,0,200,10", UTIL_ERR_INVALID_OPERATION);
    PLAN_ERR(800, 533, 1, MAXPX, "crop=0,500,10,100", UTIL_ERR_INVALID_OPERATION);
    PLAN_ERR(800, 533, 1, MAXPX, "crop=0,0,801,533", UTIL_ERR_INVALID_OPERATION);
    PLAN_ERR(800, 533, 1, MAXPX, "crop=100000,100000,100000,100000", UTIL_ERR_INVALID_OPERATION);
    /* checked against the auto-oriented size the caller passes */
    PLAN_OK(533, 800, 1, MAXPX, "crop=0,0,533,800", 533, 800);
    PLAN_ERR(533, 800, 1, MAXPX, "crop=0,0,800,533", UTIL_ERR_INVALID_OPERATION);
}

static void test_plan_crop_detail_names_crop(void **state)
{
    (void)state;
    struct ops_plan plan;
    parse_at("crop=700,0,200,10", &plan, __FILE__, __LINE__);
    struct util_error err = {0};
    int64_t w, h;
    assert_int_not_equal(ops_plan_geometry(&plan, 800, 533, 1, MAXPX, &w, &h, &err), 0);
    assert_int_equal(err.code, UTIL_ERR_INVALID_OPERATION);
    assert_non_null(strstr(err.detail, "crop"));
}

static void test_plan_rotate(void **state)
{
    (void)state;
    PLAN_OK(800, 533, 1, MAXPX, "rotate=90", 533, 800);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=-90", 533, 800);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=270", 533, 800);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=-270", 533, 800);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=180", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=-180", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=360", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "rotate=0", 800, 533);
    PLAN_OK(800, 533, 1, MAXPX, "w=400&rotate=90", 267, 400);
    /* resize runs before rotate whatever the URL order */
    PLAN_OK(800, 533, 1, MAXPX, "rotate=90&w=400", 267, 400);
}

static void test_plan_rotate_any_angle_enlarges(void **state)
{
    (void)state;
    static const double angles[] = {45, -45, 30, 135, 1, 359.5, -10.25};
    for (size_t i = 0; i < sizeof(angles) / sizeof(angles[0]); i++) {
        char q[64];
        snprintf(q, sizeof(q), "rotate=%g", angles[i]);
        struct ops_plan plan;
        parse_at(q, &plan, __FILE__, __LINE__);
        struct util_error err = {0};
        int64_t w = 0, h = 0;
        assert_int_equal(ops_plan_geometry(&plan, 800, 533, 1, MAXPX, &w, &h, &err), 0);
        /* the bounding box of the turned rectangle, give or take rounding */
        double a = angles[i] * 3.14159265358979323846 / 180.0;
        double ca = fabs(cos(a)), sa = fabs(sin(a));
        double ew = 800 * ca + 533 * sa, eh = 800 * sa + 533 * ca;
        if (w < (int64_t)ew - 1 || w > (int64_t)ew + 3 || h < (int64_t)eh - 1 ||
            h > (int64_t)eh + 3) {
            print_error("'%s': %lldx%lld, expected about %.1fx%.1f\n", q, (long long)w,
                        (long long)h, ew, eh);
            fail();
        }
        assert_true(w >= 800 || h >= 533);
    }
    /* 45 degrees: ~943 x 943 from 800x533 */
    struct ops_plan plan;
    parse_at("rotate=45", &plan, __FILE__, __LINE__);
    struct util_error err = {0};
    int64_t w = 0, h = 0;
    assert_int_equal(ops_plan_geometry(&plan, 800, 533, 1, MAXPX, &w, &h, &err), 0);
    assert_true(w > 800 && h > 533);
    assert_true(w >= 942 && w <= 946 && h >= 942 && h <= 946);
}

static void test_plan_too_large(void **state)
{
    (void)state;
    PLAN_ERR(800, 533, 1, MAXPX, "w=100000&h=100000&fit=fill&enlarge=1", UTIL_ERR_TOO_LARGE);
    PLAN_ERR(800, 533, 1, MAXPX, "w=100000&enlarge=1", UTIL_ERR_TOO_LARGE);
    PLAN_ERR(800, 533, 1, MAXPX, "w=100000&h=100000&fit=cover&enlarge=1", UTIL_ERR_TOO_LARGE);
    PLAN_ERR(800, 533, 1, MAXPX, "w=100000&h=100000&fit=contain&enlarge=1", UTIL_ERR_TOO_LARGE);
    /* without enlarge the same box is harmless */
    PLAN_OK(800, 533, 1, MAXPX, "w=100000&h=100000&fit=fill", 533, 533);
    PLAN_OK(800, 533, 1, MAXPX, "w=100000&h=100000&fit=contain", 800, 800);
    PLAN_OK(800, 533, 1, MAXPX, "w=100000&h=100000&fit=cover", 533, 533);
    /* 1e10 pixels fit in int64 and pass a limit that large */
    PLAN_OK(800, 533, 1, 10000000000LL, "w=100000&h=100000&fit=fill&enlarge=1", 100000, 100000);
    /* the limit is inclusive */
    PLAN_OK(800, 533, 1, 1600LL * 1066, "w=1600&enlarge=1", 1600, 1066);
    PLAN_ERR(800, 533, 1, 1600LL * 1066 - 1, "w=1600&enlarge=1", UTIL_ERR_TOO_LARGE);
    /* the scaled image before a cover crop counts too: 15009x10000 made to
     * crop a 100x10000 box */
    PLAN_ERR(800, 533, 1, MAXPX, "w=100&h=10000&fit=cover&enlarge=1", UTIL_ERR_TOO_LARGE);
    /* a rotation canvas counts: 800x533 fits, 45 degrees does not */
    PLAN_OK(800, 533, 1, 800 * 533, "rotate=90", 533, 800);
    PLAN_ERR(800, 533, 1, 800 * 533, "rotate=45", UTIL_ERR_TOO_LARGE);
    /* the resize of a crop: 10x10 -> 20000x20000 */
    PLAN_ERR(800, 533, 1, MAXPX, "w=20000&enlarge=1&crop=0,0,10,10", UTIL_ERR_TOO_LARGE);
}

static void test_plan_pages_multiply(void **state)
{
    (void)state;
    /* 8 frames of 240x160: every frame counts */
    PLAN_OK(240, 160, 8, 240 * 160 * 8, "w=240", 240, 160);
    PLAN_ERR(240, 160, 8, 240 * 160 * 8 - 1, "w=240&flip=h", UTIL_ERR_TOO_LARGE);
    PLAN_OK(240, 160, 8, MAXPX, "w=120", 120, 80); /* sizes are per frame */
    PLAN_OK(240, 160, 8, MAXPX, "rotate=90", 160, 240);
    PLAN_OK(240, 160, 1, 480 * 320, "w=480&enlarge=1", 480, 320);
    PLAN_ERR(240, 160, 8, 480 * 320, "w=480&enlarge=1", UTIL_ERR_TOO_LARGE);
    PLAN_OK(240, 160, 8, 480LL * 320 * 8, "w=480&enlarge=1", 480, 320);
    /* 2000 frames of 100x100 at 5000x5000 each: 5e10 */
    PLAN_ERR(100, 100, 2000, MAXPX, "w=5000&enlarge=1", UTIL_ERR_TOO_LARGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_sided),
        cmocka_unit_test(test_one_sided_enlarge),
        cmocka_unit_test(test_fit_inside),
        cmocka_unit_test(test_fit_outside),
        cmocka_unit_test(test_fit_cover),
        cmocka_unit_test(test_fit_contain),
        cmocka_unit_test(test_fit_fill),
        cmocka_unit_test(test_never_upscales),
        cmocka_unit_test(test_plan_simple),
        cmocka_unit_test(test_plan_crop),
        cmocka_unit_test(test_plan_crop_detail_names_crop),
        cmocka_unit_test(test_plan_rotate),
        cmocka_unit_test(test_plan_rotate_any_angle_enlarges),
        cmocka_unit_test(test_plan_too_large),
        cmocka_unit_test(test_plan_pages_multiply),
    };
    return cmocka_run_group_tests_name("ops_geometry", tests, NULL, NULL);
}
