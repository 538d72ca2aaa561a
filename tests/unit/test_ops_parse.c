/*
 * Tests of src/ops/parse.c: the URL and JSON forms of the operation spec,
 * their errors, and the canonical text that keys the variant cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ops/plan.h"

#define COUNT(a)  (sizeof(a) / sizeof((a)[0]))
#define OUT_DEF   "out:format=source,q=80,strip=0"
#define RESIZE_W8 "resize:w=800,h=0,fit=inside,enlarge=0,gravity=centre"

/* ---- helpers -------------------------------------------------------------- */

/* Parses q and returns its canonical text in a static buffer, failing the
 * test (with the detail) if it does not parse. */
static const char *canon_at(const char *q, const char *file, int line)
{
    static char buf[OPS_CANONICAL_MAX];
    struct ops_plan plan;
    struct util_error err = {0};

    if (ops_parse_query(q, &plan, &err) != 0) {
        print_error("%s:%d: query '%s' refused: %s\n", file, line, q ? q : "(null)", err.detail);
        _fail(file, line);
    }
    if (!plan.from_url) {
        print_error("%s:%d: query '%s' not marked from_url\n", file, line, q);
        _fail(file, line);
    }
    if (ops_plan_canonical(&plan, buf, sizeof(buf)) != 0) {
        print_error("%s:%d: query '%s': canonical failed\n", file, line, q);
        _fail(file, line);
    }
    return buf;
}
#define CANON(q) canon_at((q), __FILE__, __LINE__)

static void ok_at(const char *q, const char *want, const char *file, int line)
{
    const char *got = canon_at(q, file, line);
    if (strcmp(got, want) != 0) {
        print_error("%s:%d: query '%s'\n  got  %s\n  want %s\n", file, line, q ? q : "(null)", got,
                    want);
        _fail(file, line);
    }
}
/* q parses and its canonical text is want. */
#define OK(q, want) ok_at((q), (want), __FILE__, __LINE__)

static void same_at(const char *a, const char *b, const char *file, int line)
{
    char first[OPS_CANONICAL_MAX];
    snprintf(first, sizeof(first), "%s", canon_at(a, file, line));
    const char *second = canon_at(b, file, line);
    if (strcmp(first, second) != 0) {
        print_error("%s:%d: '%s' and '%s' differ:\n  %s\n  %s\n", file, line, a, b, first, second);
        _fail(file, line);
    }
}
/* a and b give the same canonical text. */
#define SAME(a, b) same_at((a), (b), __FILE__, __LINE__)

static void differ_at(const char *a, const char *b, const char *file, int line)
{
    char first[OPS_CANONICAL_MAX];
    snprintf(first, sizeof(first), "%s", canon_at(a, file, line));
    const char *second = canon_at(b, file, line);
    if (strcmp(first, second) == 0) {
        print_error("%s:%d: '%s' and '%s' both give %s\n", file, line, a, b, first);
        _fail(file, line);
    }
}
/* a and b give different canonical text. */
#define DIFFER(a, b) differ_at((a), (b), __FILE__, __LINE__)

static void err_at(const char *q, const char *detail, const char *file, int line)
{
    struct ops_plan plan;
    struct util_error err = {0};

    if (ops_parse_query(q, &plan, &err) != -1) {
        print_error("%s:%d: query '%s' accepted\n", file, line, q);
        _fail(file, line);
    }
    if (err.code != UTIL_ERR_INVALID_OPERATION) {
        print_error("%s:%d: query '%s': code %d\n", file, line, q, (int)err.code);
        _fail(file, line);
    }
    /* A detail ending in '*' only needs that prefix. */
    size_t n = strlen(detail);
    bool prefix = n > 0 && detail[n - 1] == '*';
    if (prefix ? strncmp(err.detail, detail, n - 1) != 0 : strcmp(err.detail, detail) != 0) {
        print_error("%s:%d: query '%s'\n  got  %s\n  want %s\n", file, line, q, err.detail, detail);
        _fail(file, line);
    }
    /* A refused query leaves the empty plan, never a half-built one. */
    if (plan.nsteps != 0 || !ops_plan_is_empty(&plan)) {
        print_error("%s:%d: query '%s': plan not reset\n", file, line, q);
        _fail(file, line);
    }
}
/* q is refused with exactly this detail (or this prefix, ending in '*'). */
#define ERR(q, detail) err_at((q), (detail), __FILE__, __LINE__)

/* JSON written with ' for " to keep the tests readable. */
static json_t *load(const char *text, const char *file, int line)
{
    char buf[8192];
    json_error_t jerr;
    size_t n = strlen(text);

    assert_true(n < sizeof(buf));
    for (size_t i = 0; i <= n; i++)
        buf[i] = text[i] == '\'' ? '"' : text[i];
    json_t *root = json_loads(buf, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        print_error("%s:%d: bad test JSON %s: %s\n", file, line, buf, jerr.text);
        _fail(file, line);
    }
    return root;
}

/* Parses {"operations": ..., "output": ...} from text. */
static int parse_json_text(const char *text, struct ops_plan *plan, struct util_error *err,
                           const char *file, int line)
{
    json_t *root = load(text, file, line);
    int rc = ops_parse_json(json_object_get(root, "operations"), json_object_get(root, "output"),
                            plan, err);
    json_decref(root);
    return rc;
}

static void jok_at(const char *text, const char *want, const char *file, int line)
{
    struct ops_plan plan;
    struct util_error err = {0};
    char buf[OPS_CANONICAL_MAX];

    if (parse_json_text(text, &plan, &err, file, line) != 0) {
        print_error("%s:%d: JSON %s refused: %s\n", file, line, text, err.detail);
        _fail(file, line);
    }
    assert_false(plan.from_url);
    assert_int_equal(ops_plan_canonical(&plan, buf, sizeof(buf)), 0);
    if (strcmp(buf, want) != 0) {
        print_error("%s:%d: JSON %s\n  got  %s\n  want %s\n", file, line, text, buf, want);
        _fail(file, line);
    }
}
/* The JSON parses and its canonical text is want. */
#define JOK(text, want) jok_at((text), (want), __FILE__, __LINE__)

static void jerr_at(const char *text, const char *detail, const char *file, int line)
{
    struct ops_plan plan;
    struct util_error err = {0};

    if (parse_json_text(text, &plan, &err, file, line) != -1) {
        print_error("%s:%d: JSON %s accepted\n", file, line, text);
        _fail(file, line);
    }
    assert_int_equal(err.code, UTIL_ERR_INVALID_OPERATION);
    size_t n = strlen(detail);
    bool prefix = n > 0 && detail[n - 1] == '*';
    if (prefix ? strncmp(err.detail, detail, n - 1) != 0 : strcmp(err.detail, detail) != 0) {
        print_error("%s:%d: JSON %s\n  got  %s\n  want %s\n", file, line, text, err.detail, detail);
        _fail(file, line);
    }
    assert_int_equal(plan.nsteps, 0);
    assert_true(ops_plan_is_empty(&plan));
}
/* The JSON is refused with this detail (or prefix, ending in '*'). */
#define JERR(text, detail) jerr_at((text), (detail), __FILE__, __LINE__)

/* ---- URL form: each parameter --------------------------------------------- */

static void test_empty_query(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    assert_int_equal(ops_parse_query(NULL, &plan, &err), 0);
    assert_true(plan.from_url);
    assert_int_equal(plan.nsteps, 0);
    assert_true(ops_plan_is_empty(&plan));
    assert_int_equal(ops_parse_query("", &plan, &err), 0);
    assert_true(ops_plan_is_empty(&plan));
    assert_int_equal(plan.output.format, OPS_FORMAT_SOURCE);
    assert_int_equal(plan.output.quality, 80);
    assert_false(plan.output.quality_given);
    assert_false(plan.output.strip);
    OK("", "original");
    OK(NULL, "original");
}

static void test_width_height(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    OK("w=800", RESIZE_W8 "|" OUT_DEF);
    OK("h=600", "resize:w=0,h=600,fit=inside,enlarge=0,gravity=centre|" OUT_DEF);
    OK("w=800&h=600", "resize:w=800,h=600,fit=inside,enlarge=0,gravity=centre|" OUT_DEF);
    OK("w=1", "resize:w=1,h=0,fit=inside,enlarge=0,gravity=centre|" OUT_DEF);
    OK("w=100000&h=100000",
       "resize:w=100000,h=100000,fit=inside,enlarge=0,gravity=centre|" OUT_DEF);
    SAME("w=0800", "w=800");

    assert_int_equal(ops_parse_query("h=5&w=7", &plan, &err), 0);
    assert_int_equal(plan.nsteps, 1);
    assert_int_equal(plan.steps[0].kind, OPS_STEP_RESIZE);
    assert_int_equal(plan.steps[0].resize.width, 7);
    assert_int_equal(plan.steps[0].resize.height, 5);
    assert_int_equal(plan.steps[0].resize.fit, OPS_FIT_INSIDE);
    assert_false(plan.steps[0].resize.enlarge);
    assert_int_equal(plan.steps[0].resize.gravity, OPS_GRAVITY_CENTRE);
    assert_false(plan.steps[0].resize.background_given);

    static const char *const bad_w[] = {
        "w=0",
        "w=100001",
        "w=-1",
        "w=+1",
        "w=abc",
        "w=1.5",
        "w=",
        "w",
        "w=0x10",
        "w=1e3",
        "w=+800",
        "w=800+",
        "w=%20800",
        "w=800abc",
        "w=800%00",
        "w=1,2",
        "w=-0",
        "w=999999999999999999999999999",
        "w=000000000000000000000000000000000000000000000000000000000000000000000001",
    };
    for (size_t i = 0; i < COUNT(bad_w); i++)
        ERR(bad_w[i], "w must be an integer 1..100000");
    ERR("h=0", "h must be an integer 1..100000");
    ERR("h=100001", "h must be an integer 1..100000");
    ERR("h=x", "h must be an integer 1..100000");
    ERR("h=", "h must be an integer 1..100000");
    ERR("w=1&w=2", "parameter 'w' given twice");
    ERR("w=1&w=1", "parameter 'w' given twice");
    ERR("h=1&w=3&h=2", "parameter 'h' given twice");
    ERR("w=800&%77=900", "parameter 'w' given twice");
}

static void test_crop(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    OK("crop=10,20,300,400", "crop:x=10,y=20,w=300,h=400|" OUT_DEF);
    OK("crop=0,0,1,1", "crop:x=0,y=0,w=1,h=1|" OUT_DEF);
    OK("crop=100000,100000,100000,100000", "crop:x=100000,y=100000,w=100000,h=100000|" OUT_DEF);
    SAME("crop=010,020,0300,400", "crop=10,20,300,400");
    SAME("crop=10%2C20%2C300%2C400", "crop=10,20,300,400");

    assert_int_equal(ops_parse_query("crop=1,2,3,4", &plan, &err), 0);
    assert_int_equal(plan.nsteps, 1);
    assert_int_equal(plan.steps[0].kind, OPS_STEP_CROP);
    assert_int_equal(plan.steps[0].crop.x, 1);
    assert_int_equal(plan.steps[0].crop.y, 2);
    assert_int_equal(plan.steps[0].crop.width, 3);
    assert_int_equal(plan.steps[0].crop.height, 4);

    static const char *const bad[] = {
        "crop=",
        "crop",
        "crop=1,2,3",
        "crop=1,2,3,4,5",
        "crop=1,2,0,4",
        "crop=1,2,3,0",
        "crop=-1,0,1,1",
        "crop=0,-1,1,1",
        "crop=100001,0,1,1",
        "crop=0,100001,1,1",
        "crop=0,0,100001,1",
        "crop=0,0,1,100001",
        "crop=1,,3,4",
        "crop=,1,2,3",
        "crop=1,2,3,4,",
        "crop=1.5,2,3,4",
        "crop=1;2;3;4",
        "crop=1,+2,3,4",
        "crop=1,%202,3,4",
        "crop=a,b,c,d",
        "crop=,,,",
        "crop=1,2,3,4%00",
        "crop=0x1,2,3,4",
    };
    for (size_t i = 0; i < COUNT(bad); i++)
        ERR(bad[i], "crop must be x,y,w,h: integers, x and y 0..100000, w and h 1..100000");
    ERR("crop=1,2,3,4&crop=1,2,3,4", "parameter 'crop' given twice");
}

static void test_fit(void **state)
{
    (void)state;
    static const char *const fits[] = {"contain", "cover", "fill", "inside", "outside"};
    char q[64];
    char want[160];

    for (size_t i = 0; i < COUNT(fits); i++) {
        snprintf(q, sizeof(q), "w=800&h=600&fit=%s", fits[i]);
        snprintf(want, sizeof(want),
                 "resize:w=800,h=600,fit=%s,enlarge=0,gravity=centre%s|" OUT_DEF, fits[i],
                 i == 0 ? ",bg=default" : "");
        OK(q, want);
    }
    SAME("w=800&fit=co%76er", "w=800&fit=cover");
    SAME("w=800&%66it=cover", "w=800&fit=cover");
    SAME("w=800&fit=inside", "w=800");

    const char *detail = "fit must be one of contain, cover, fill, inside, outside";
    ERR("w=800&fit=bogus", detail);
    ERR("w=800&fit=", detail);
    ERR("w=800&fit", detail);
    ERR("w=800&fit=Cover", detail);
    ERR("w=800&fit=cover+", detail);
    ERR("w=800&fit=cove", detail);
    ERR("w=800&fit=coverr", detail);
    ERR("w=800&fit=cover%00", detail);
    ERR("fit=cover", "fit needs w or h");
    ERR("fit=cover&crop=0,0,1,1", "fit needs w or h");
    ERR("w=1&fit=cover&fit=fill", "parameter 'fit' given twice");
}

static void test_enlarge(void **state)
{
    (void)state;
    OK("w=800&enlarge=1", "resize:w=800,h=0,fit=inside,enlarge=1,gravity=centre|" OUT_DEF);
    SAME("w=800&enlarge=0", "w=800");

    const char *detail = "enlarge must be 0 or 1";
    ERR("w=800&enlarge=2", detail);
    ERR("w=800&enlarge=true", detail);
    ERR("w=800&enlarge=", detail);
    ERR("w=800&enlarge", detail);
    ERR("w=800&enlarge=01", detail);
    ERR("w=800&enlarge=-1", detail);
    ERR("enlarge=1", "enlarge needs w or h");
    ERR("w=1&enlarge=1&enlarge=1", "parameter 'enlarge' given twice");
}

static void test_gravity(void **state)
{
    (void)state;
    static const char *const names[] = {"centre",    "north",   "northeast", "east",
                                        "southeast", "south",   "southwest", "west",
                                        "northwest", "entropy", "attention"};
    char q[64];
    char want[160];

    for (size_t i = 0; i < COUNT(names); i++) {
        snprintf(q, sizeof(q), "w=8&h=6&fit=cover&gravity=%s", names[i]);
        snprintf(want, sizeof(want), "resize:w=8,h=6,fit=cover,enlarge=0,gravity=%s|" OUT_DEF,
                 names[i]);
        OK(q, want);
        assert_string_equal(ops_gravity_name((enum ops_gravity)i), names[i]);
    }
    SAME("w=800&gravity=centre", "w=800");

    const char *detail = "gravity must be one of centre, north, northeast, east, southeast, "
                         "south, southwest, west, northwest, entropy, attention";
    ERR("w=800&gravity=center", detail);
    ERR("w=800&gravity=North", detail);
    ERR("w=800&gravity=", detail);
    ERR("w=800&gravity=smart", detail);
    ERR("gravity=north", "gravity needs w or h");
    ERR("w=1&gravity=north&gravity=south", "parameter 'gravity' given twice");
}

static void test_rotate(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    OK("rotate=90", "rotate:90,bg=default|" OUT_DEF);
    OK("rotate=-90", "rotate:-90,bg=default|" OUT_DEF);
    OK("rotate=45.5", "rotate:45.5,bg=default|" OUT_DEF);
    OK("rotate=360", "rotate:360,bg=default|" OUT_DEF);
    OK("rotate=-360", "rotate:-360,bg=default|" OUT_DEF);
    OK("rotate=0", "rotate:0,bg=default|" OUT_DEF);
    OK("rotate=0.1", "rotate:0.1,bg=default|" OUT_DEF);
    OK("rotate=359.999", "rotate:359.999,bg=default|" OUT_DEF);
    OK("rotate=12.3456789", "rotate:12.3456789,bg=default|" OUT_DEF);
    SAME("rotate=90.0", "rotate=90");
    SAME("rotate=090.000", "rotate=90");
    SAME("rotate=-0", "rotate=0");
    SAME("rotate=-0.0", "rotate=0");
    SAME("rotate=360.0000", "rotate=360");
    SAME("rotate=%34%35.5", "rotate=45.5");

    assert_int_equal(ops_parse_query("rotate=45.5", &plan, &err), 0);
    assert_int_equal(plan.steps[0].kind, OPS_STEP_ROTATE);
    assert_true(plan.steps[0].rotate.angle == 45.5);
    assert_false(plan.steps[0].rotate.background_given);
    assert_int_equal(plan.steps[0].rotate.background.a, 255);

    static const char *const bad[] = {
        "rotate=360.1",
        "rotate=-360.5",
        "rotate=361",
        "rotate=-361",
        "rotate=1e2",
        "rotate=nan",
        "rotate=inf",
        "rotate=-inf",
        "rotate=+90",
        "rotate=.5",
        "rotate=5.",
        "rotate=90abc",
        "rotate=",
        "rotate",
        "rotate=0x10",
        "rotate=--1",
        "rotate=1.2.3",
        "rotate=+90",
        "rotate=%2090",
        "rotate=90,5",
        "rotate=-",
        "rotate=.",
        "rotate=360.0000000001",
        "rotate=0.000000000000000000000000000000001",
        "rotate=90%00",
        "rotate=NaN",
        "rotate=INFINITY",
        "rotate=1_0",
    };
    for (size_t i = 0; i < COUNT(bad); i++)
        ERR(bad[i], "rotate must be a number -360..360");
    ERR("rotate=90&rotate=90", "parameter 'rotate' given twice");
}

static void test_bg(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    OK("rotate=90&bg=ff0000", "rotate:90,bg=ff0000ff|" OUT_DEF);
    OK("rotate=90&bg=000000", "rotate:90,bg=000000ff|" OUT_DEF);
    OK("rotate=90&bg=11223344", "rotate:90,bg=11223344|" OUT_DEF);
    SAME("rotate=90&bg=FF00aa", "rotate=90&bg=ff00AA");
    SAME("rotate=90&bg=ff0000", "rotate=90&bg=ff0000ff");
    /* The default depends on the image's alpha, so it is not 000000ff. */
    DIFFER("rotate=90", "rotate=90&bg=000000");
    OK("w=8&h=6&fit=contain&bg=ffffff",
       "resize:w=8,h=6,fit=contain,enlarge=0,gravity=centre,bg=ffffffff|" OUT_DEF);
    OK("w=8&h=6&fit=contain&rotate=10&bg=ffffff00",
       "resize:w=8,h=6,fit=contain,enlarge=0,gravity=centre,bg=ffffff00|rotate:10,bg="
       "ffffff00|" OUT_DEF);
    /* With cover, bg is for rotate only. */
    OK("w=8&h=6&fit=cover&rotate=10&bg=ffffff",
       "resize:w=8,h=6,fit=cover,enlarge=0,gravity=centre|rotate:10,bg=ffffffff|" OUT_DEF);

    assert_int_equal(ops_parse_query("rotate=1&bg=0a0B0c80", &plan, &err), 0);
    assert_true(plan.steps[0].rotate.background_given);
    assert_int_equal(plan.steps[0].rotate.background.r, 0x0a);
    assert_int_equal(plan.steps[0].rotate.background.g, 0x0b);
    assert_int_equal(plan.steps[0].rotate.background.b, 0x0c);
    assert_int_equal(plan.steps[0].rotate.background.a, 0x80);

    static const char *const bad[] = {
        "rotate=1&bg=fff",        "rotate=1&bg=ff00000", "rotate=1&bg=%23ff0000",
        "rotate=1&bg=gg0000",     "rotate=1&bg=",        "rotate=1&bg",
        "rotate=1&bg=ff00000000", "rotate=1&bg=ff 000",  "rotate=1&bg=0xff0000",
        "rotate=1&bg=ff0000%00",  "rotate=1&bg=-f0000",  "rotate=1&bg=+f0000",
    };
    for (size_t i = 0; i < COUNT(bad); i++)
        ERR(bad[i], "bg must be RRGGBB or RRGGBBAA (hex)");
    ERR("bg=ff0000", "bg needs rotate or fit=contain");
    ERR("w=8&bg=ff0000", "bg needs rotate or fit=contain");
    ERR("w=8&h=6&fit=cover&bg=ff0000", "bg needs rotate or fit=contain");
    ERR("rotate=1&bg=ff0000&bg=ff0000", "parameter 'bg' given twice");
}

static void test_flip(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    OK("flip=h", "flip:h|" OUT_DEF);
    OK("flip=v", "flip:v|" OUT_DEF);
    assert_int_equal(ops_parse_query("flip=v", &plan, &err), 0);
    assert_int_equal(plan.steps[0].kind, OPS_STEP_FLIP);
    assert_int_equal(plan.steps[0].flip, OPS_FLIP_VERTICAL);

    const char *detail = "flip must be h or v";
    ERR("flip=H", detail);
    ERR("flip=x", detail);
    ERR("flip=horizontal", detail);
    ERR("flip=", detail);
    ERR("flip", detail);
    ERR("flip=hv", detail);
    ERR("flip=h&flip=v", "parameter 'flip' given twice");
}

static void test_blur_sharpen(void **state)
{
    (void)state;
    OK("blur=0.3", "blur:0.3|" OUT_DEF);
    OK("blur=100", "blur:100|" OUT_DEF);
    OK("blur=1.5", "blur:1.5|" OUT_DEF);
    OK("sharpen=0.5", "sharpen:0.5|" OUT_DEF);
    OK("sharpen=10", "sharpen:10|" OUT_DEF);
    OK("sharpen=2.25", "sharpen:2.25|" OUT_DEF);
    SAME("blur=0.30", "blur=0.3");
    SAME("blur=100.0", "blur=100");

    static const char *const bad_blur[] = {
        "blur=0.29", "blur=100.01", "blur=0",  "blur=-1",          "blur=abc",
        "blur=",     "blur=1e1",    "blur=.5", "blur=0.2999999999"};
    for (size_t i = 0; i < COUNT(bad_blur); i++)
        ERR(bad_blur[i], "blur must be a number 0.3..100");
    static const char *const bad_sharpen[] = {"sharpen=0.49", "sharpen=10.5", "sharpen=0",
                                              "sharpen=-2",   "sharpen=",     "sharpen=x",
                                              "sharpen=11"};
    for (size_t i = 0; i < COUNT(bad_sharpen); i++)
        ERR(bad_sharpen[i], "sharpen must be a number 0.5..10");
    ERR("blur=1&blur=2", "parameter 'blur' given twice");
    ERR("sharpen=1&sharpen=1", "parameter 'sharpen' given twice");
}

static void test_output(void **state)
{
    (void)state;
    static const char *const formats[] = {"jpeg", "png", "webp", "avif", "gif", "tiff", "auto"};
    char q[64];
    char want[64];
    struct ops_plan plan;
    struct util_error err = {0};

    for (size_t i = 0; i < COUNT(formats); i++) {
        snprintf(q, sizeof(q), "format=%s", formats[i]);
        snprintf(want, sizeof(want), "out:format=%s,q=80,strip=0", formats[i]);
        OK(q, want);
    }
    SAME("format=jpg", "format=jpeg");
    SAME("format=jp%67", "format=jpeg");
    OK("q=1", "out:format=source,q=1,strip=0");
    OK("q=100", "out:format=source,q=100,strip=0");
    OK("format=webp&q=75&strip=1", "out:format=webp,q=75,strip=1");
    OK("strip=1", "out:format=source,q=80,strip=1");
    SAME("w=800&q=80", "w=800");
    SAME("w=800&strip=0", "w=800");

    assert_int_equal(ops_parse_query("q=80", &plan, &err), 0);
    assert_true(plan.output.quality_given);
    assert_int_equal(plan.output.quality, 80);
    assert_int_equal(ops_parse_query("w=1", &plan, &err), 0);
    assert_false(plan.output.quality_given);
    assert_int_equal(plan.output.quality, 80);

    const char *fdetail = "format must be one of jpeg, png, webp, avif, gif, tiff, auto";
    ERR("format=JPEG", fdetail);
    ERR("format=bmp", fdetail);
    ERR("format=source", fdetail);
    ERR("format=heic", fdetail);
    ERR("format=", fdetail);
    ERR("format", fdetail);
    ERR("format=jpeg%00", fdetail);
    ERR("format=png&format=png", "parameter 'format' given twice");
    static const char *const bad_q[] = {
        "q=0", "q=101", "q=50.5", "q=", "q", "q=-1", "q=+5", "q=high"};
    for (size_t i = 0; i < COUNT(bad_q); i++)
        ERR(bad_q[i], "q must be an integer 1..100");
    ERR("q=1&q=2", "parameter 'q' given twice");
    static const char *const bad_strip[] = {"strip=2", "strip=yes", "strip=", "strip",
                                            "strip=true"};
    for (size_t i = 0; i < COUNT(bad_strip); i++)
        ERR(bad_strip[i], "strip must be 0 or 1");
    ERR("strip=1&strip=1", "parameter 'strip' given twice");
}

/* ---- URL form: the query as a whole --------------------------------------- */

static void test_unknown_and_empty_names(void **state)
{
    (void)state;
    ERR("foo=1", "unknown parameter 'foo'");
    ERR("w=800&foo=1", "unknown parameter 'foo'");
    ERR("foo", "unknown parameter 'foo'");
    ERR("W=800", "unknown parameter 'W'");
    ERR("width=800", "unknown parameter 'width'");
    ERR("quality=80", "unknown parameter 'quality'");
    ERR("w+=800", "unknown parameter 'w '");
    ERR("%01x=1", "unknown parameter '%01x'");
    ERR("%C3%A9=1", "unknown parameter '%C3%A9'");
    ERR("a%25b=1", "unknown parameter 'a%25b'");
    ERR("it's=1", "unknown parameter 'it's'");
    ERR("sig%00=1", "unknown parameter 'sig%00'");
    ERR("w%00=1", "unknown parameter 'w%00'");
    /* Long names are cut, and the detail still fits. */
    char q[600];
    memset(q, 'a', 500);
    memcpy(q + 500, "=1", 3);
    ERR(q, "unknown parameter 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...'");
    memset(q, 'b', 50);
    memcpy(q + 50, "=1", 3);
    ERR(q, "unknown parameter 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb...'");
    /* An error in query order wins. */
    ERR("foo=1&w=0", "unknown parameter 'foo'");
    ERR("w=0&foo=1", "w must be an integer 1..100000");

    ERR("=5", "empty parameter name");
    ERR("=", "empty parameter name");
    ERR("&", "empty parameter name");
    ERR("&w=5", "empty parameter name");
    ERR("w=5&", "empty parameter name");
    ERR("w=5&&h=5", "empty parameter name");
}

static void test_percent_decoding(void **state)
{
    (void)state;
    SAME("w=%38%30%30", "w=800");
    SAME("%77=800", "w=800");
    SAME("w=800&fit=co%76er", "w=800&fit=cover");
    SAME("w=800&fit=co%76%65r", "w=800&fit=cover");
    SAME("rotate=1&bg=%66%66%30%30%30%30", "rotate=1&bg=ff0000");
    SAME("format=%6A%70%65%67", "format=jpeg");
    /* '+' is a space, and no number or name has one. */
    ERR("w=+800", "w must be an integer 1..100000");
    ERR("w=%2B800", "w must be an integer 1..100000");
    ERR("fit+=cover&w=1", "unknown parameter 'fit '");
    /* A literal '=' after the first belongs to the value. */
    ERR("w=8=0", "w must be an integer 1..100000");
    /* '&' encoded is data, not a separator. */
    ERR("w=800%26h=600", "w must be an integer 1..100000");

    ERR("w=%", "malformed percent-encoding in the value of 'w'");
    ERR("w=%4", "malformed percent-encoding in the value of 'w'");
    ERR("w=80%2", "malformed percent-encoding in the value of 'w'");
    ERR("w=%zz", "malformed percent-encoding in the value of 'w'");
    ERR("w=%g0", "malformed percent-encoding in the value of 'w'");
    ERR("w=%%30", "malformed percent-encoding in the value of 'w'");
    ERR("%=1", "malformed percent-encoding in a parameter name");
    ERR("%7=1", "malformed percent-encoding in a parameter name");
    ERR("w%=1", "malformed percent-encoding in a parameter name");
    ERR("%7g=1", "malformed percent-encoding in a parameter name");
    /* A value too long to be valid is refused as malformed, not truncated. */
    char q[300];
    snprintf(q, sizeof(q), "w=%s",
             "8000000000000000000000000000000000000000000000000000000000"
             "0000000000000000000000000000000000000000");
    ERR(q, "w must be an integer 1..100000");
}

static void test_sig_ignored(void **state)
{
    (void)state;
    OK("sig=abc", "original");
    OK("sig", "original");
    OK("sig=", "original");
    SAME("w=800&sig=abcDEF_-", "w=800");
    SAME("sig=x&w=800&sig=y", "w=800");
    SAME("%73ig=x&w=800", "w=800");
    SAME("sig=%zz&w=800", "w=800"); /* its value is not ours to decode */
    ERR("Sig=x", "unknown parameter 'Sig'");
    ERR("sigs=x", "unknown parameter 'sigs'");
}

static void test_url_step_order(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};
    static const enum ops_step_kind want[] = {OPS_STEP_CROP, OPS_STEP_RESIZE, OPS_STEP_ROTATE,
                                              OPS_STEP_FLIP, OPS_STEP_BLUR,   OPS_STEP_SHARPEN};

    assert_int_equal(
        ops_parse_query("sharpen=1&blur=1&flip=h&rotate=90&w=100&crop=0,0,10,10", &plan, &err), 0);
    assert_true(plan.from_url);
    assert_int_equal(plan.nsteps, 6);
    for (size_t i = 0; i < COUNT(want); i++)
        assert_int_equal(plan.steps[i].kind, want[i]);

    OK("sharpen=1&blur=2&flip=h&rotate=90&w=100&crop=0,0,10,10",
       "crop:x=0,y=0,w=10,h=10|resize:w=100,h=0,fit=inside,enlarge=0,gravity=centre|"
       "rotate:90,bg=default|flip:h|blur:2|sharpen:1|" OUT_DEF);
}

/* Every order of the same parameters gives the same canonical text. */
static void test_canonical_permutations(void **state)
{
    (void)state;
    const char *params[] = {"w=800",       "h=600",  "fit=contain", "bg=ff000080",
                            "rotate=45.5", "flip=v", "q=70"};
    const size_t n = COUNT(params);
    size_t c[COUNT(params)] = {0};
    char first[OPS_CANONICAL_MAX];
    char q[256];
    size_t perms = 0;

    /* Heap's algorithm: every permutation of params, each one checked. */
    for (size_t i = 0;;) {
        q[0] = '\0';
        for (size_t k = 0; k < n; k++) {
            if (k)
                strcat(q, "&");
            strcat(q, params[k]);
        }
        const char *got = CANON(q);
        if (perms == 0)
            snprintf(first, sizeof(first), "%s", got);
        else if (strcmp(first, got) != 0)
            fail_msg("order '%s' gives %s, not %s", q, got, first);
        perms++;

        while (i < n && c[i] >= i) {
            c[i] = 0;
            i++;
        }
        if (i >= n)
            break;
        size_t j = i % 2 == 0 ? 0 : c[i];
        const char *t = params[j];
        params[j] = params[i];
        params[i] = t;
        c[i]++;
        i = 0;
    }
    assert_int_equal(perms, 5040);
    assert_string_equal(first,
                        "resize:w=800,h=600,fit=contain,enlarge=0,gravity=centre,bg=ff000080|"
                        "rotate:45.5,bg=ff000080|flip:v|out:format=source,q=70,strip=0");

    SAME("crop=1,2,3,4&format=png&blur=2", "blur=2&crop=1,2,3,4&format=png");
    SAME("strip=1&sharpen=1&sig=z", "sharpen=1&strip=1");
    SAME("w=800", "w=800&fit=inside&enlarge=0&gravity=centre&q=80&strip=0");
    SAME("q=80&enlarge=0&gravity=centre&w=800&strip=0&fit=inside", "w=800");
}

static void test_canonical_differences(void **state)
{
    (void)state;
    DIFFER("w=800", "w=801");
    DIFFER("w=800", "h=800");
    DIFFER("w=800&h=600", "w=600&h=800");
    DIFFER("w=800", "w=800&fit=cover");
    DIFFER("w=800&fit=contain", "w=800&fit=cover");
    DIFFER("w=800", "w=800&enlarge=1");
    DIFFER("w=8&h=6&fit=cover", "w=8&h=6&fit=cover&gravity=north");
    DIFFER("w=8&h=6&fit=contain", "w=8&h=6&fit=contain&bg=000000");
    DIFFER("w=8&h=6&fit=contain&bg=000000", "w=8&h=6&fit=contain&bg=00000000");
    DIFFER("crop=1,2,3,4", "crop=2,1,3,4");
    DIFFER("crop=1,2,3,4", "crop=1,2,4,3");
    DIFFER("rotate=90", "rotate=-90");
    DIFFER("rotate=90", "rotate=90.0001");
    DIFFER("rotate=45.1234567890123", "rotate=45.1234567890124");
    DIFFER("rotate=90&bg=ff0000", "rotate=90&bg=ff0001");
    DIFFER("flip=h", "flip=v");
    DIFFER("blur=1", "sharpen=1");
    DIFFER("blur=1", "blur=1.01");
    DIFFER("format=jpeg", "format=png");
    DIFFER("format=jpeg", "format=auto");
    DIFFER("w=8", "w=8&format=jpeg");
    DIFFER("w=8&q=80", "w=8&q=81");
    DIFFER("w=8", "w=8&strip=1");
    DIFFER("w=8", "w=8&rotate=0");
    /* No steps: only what is given re-encodes; the empty plan serves the original. */
    DIFFER("", "q=80");
    DIFFER("", "strip=1");
    DIFFER("", "format=jpeg");
    SAME("", "strip=0");
    SAME("", "sig=1");
}

static void test_is_empty(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};
    static const char *const empty[] = {"", "sig=x", "strip=0"};
    static const char *const not_empty[] = {"q=80", "strip=1", "format=auto", "format=jpeg",
                                            "w=1",  "flip=h",  "rotate=0"};

    for (size_t i = 0; i < COUNT(empty); i++) {
        assert_int_equal(ops_parse_query(empty[i], &plan, &err), 0);
        assert_true(ops_plan_is_empty(&plan));
    }
    for (size_t i = 0; i < COUNT(not_empty); i++) {
        assert_int_equal(ops_parse_query(not_empty[i], &plan, &err), 0);
        assert_false(ops_plan_is_empty(&plan));
    }
}

static void test_error_resets_plan(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    assert_int_equal(ops_parse_query("w=800&rotate=90&format=png&q=5&foo=1", &plan, &err), -1);
    assert_int_equal(plan.nsteps, 0);
    assert_true(ops_plan_is_empty(&plan));
    assert_true(plan.from_url);
    assert_int_equal(plan.output.quality, 80);
    /* A NULL err is allowed. */
    assert_int_equal(ops_parse_query("foo=1", &plan, NULL), -1);
}

static void test_canonical_buffer(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};
    char buf[OPS_CANONICAL_MAX];
    const char *want = RESIZE_W8 "|" OUT_DEF;
    size_t n = strlen(want);

    assert_int_equal(ops_parse_query("w=800", &plan, &err), 0);
    assert_int_equal(ops_plan_canonical(&plan, buf, n + 1), 0);
    assert_string_equal(buf, want);
    assert_int_equal(ops_plan_canonical(&plan, buf, n), -1);
    assert_int_equal(ops_plan_canonical(&plan, buf, 1), -1);
    assert_int_equal(ops_plan_canonical(&plan, buf, 0), -1);
    assert_int_equal(ops_parse_query("", &plan, &err), 0);
    assert_int_equal(ops_plan_canonical(&plan, buf, 8), -1);
    assert_int_equal(ops_plan_canonical(&plan, buf, 9), 0);
    assert_string_equal(buf, "original");
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(ops_format_name(OPS_FORMAT_SOURCE), "source");
    assert_string_equal(ops_format_name(OPS_FORMAT_JPEG), "jpeg");
    assert_string_equal(ops_format_name(OPS_FORMAT_TIFF), "tiff");
    assert_string_equal(ops_format_name(OPS_FORMAT_AUTO), "auto");
    assert_string_equal(ops_format_name((enum ops_format)99), "unknown");
    assert_int_equal(ops_format_from_name("jpeg"), OPS_FORMAT_JPEG);
    assert_int_equal(ops_format_from_name("jpg"), OPS_FORMAT_JPEG);
    assert_int_equal(ops_format_from_name("png"), OPS_FORMAT_PNG);
    assert_int_equal(ops_format_from_name("webp"), OPS_FORMAT_WEBP);
    assert_int_equal(ops_format_from_name("avif"), OPS_FORMAT_AVIF);
    assert_int_equal(ops_format_from_name("gif"), OPS_FORMAT_GIF);
    assert_int_equal(ops_format_from_name("tiff"), OPS_FORMAT_TIFF);
    assert_int_equal(ops_format_from_name("auto"), OPS_FORMAT_AUTO);
    assert_int_equal(ops_format_from_name("source"), -1);
    assert_int_equal(ops_format_from_name("JPEG"), -1);
    assert_int_equal(ops_format_from_name(""), -1);
    assert_int_equal(ops_format_from_name(NULL), -1);
    assert_string_equal(ops_fit_name(OPS_FIT_CONTAIN), "contain");
    assert_string_equal(ops_fit_name(OPS_FIT_OUTSIDE), "outside");
    assert_string_equal(ops_fit_name((enum ops_fit)42), "unknown");
    assert_string_equal(ops_gravity_name((enum ops_gravity)42), "unknown");
}

/* ---- JSON form ------------------------------------------------------------ */

static void test_json_valid(void **state)
{
    (void)state;
    JOK("{'operations': [{'op': 'resize', 'width': 800}]}", RESIZE_W8 "|" OUT_DEF);
    JOK("{'operations': [{'op': 'resize', 'width': 800, 'height': 600, 'fit': 'cover', "
        "'enlarge': true, 'gravity': 'attention'}]}",
        "resize:w=800,h=600,fit=cover,enlarge=1,gravity=attention|" OUT_DEF);
    JOK("{'operations': [{'op': 'resize', 'height': 600, 'fit': 'contain', "
        "'background': 'FFFFFF'}]}",
        "resize:w=0,h=600,fit=contain,enlarge=0,gravity=centre,bg=ffffffff|" OUT_DEF);
    JOK("{'operations': [{'op': 'crop', 'x': 0, 'y': 5, 'width': 10, 'height': 20}]}",
        "crop:x=0,y=5,w=10,h=20|" OUT_DEF);
    JOK("{'operations': [{'op': 'rotate', 'angle': 90}]}", "rotate:90,bg=default|" OUT_DEF);
    JOK("{'operations': [{'op': 'rotate', 'angle': 90.0}]}", "rotate:90,bg=default|" OUT_DEF);
    JOK("{'operations': [{'op': 'rotate', 'angle': -0.0}]}", "rotate:0,bg=default|" OUT_DEF);
    JOK("{'operations': [{'op': 'rotate', 'angle': -360, 'background': '11223344'}]}",
        "rotate:-360,bg=11223344|" OUT_DEF);
    JOK("{'operations': [{'op': 'flip', 'direction': 'horizontal'}, "
        "{'op': 'flip', 'direction': 'vertical'}]}",
        "flip:h|flip:v|" OUT_DEF);
    JOK("{'operations': [{'op': 'blur', 'sigma': 0.3}, {'op': 'sharpen', 'sigma': 10}]}",
        "blur:0.3|sharpen:10|" OUT_DEF);
    JOK("{'operations': [], 'output': {'format': 'webp', 'quality': 75, 'strip': true}}",
        "out:format=webp,q=75,strip=1");
    JOK("{'operations': [], 'output': {'format': 'jpg'}}", "out:format=jpeg,q=80,strip=0");
    JOK("{'operations': [], 'output': {'quality': 80}}", "out:format=source,q=80,strip=0");
    JOK("{'operations': [], 'output': {'strip': false}}", "original");
    JOK("{'operations': [], 'output': {}}", "original");
    JOK("{'operations': [], 'output': null}", "original");
    JOK("{'operations': []}", "original");
    JOK("{'operations': [{'op': 'resize', 'width': 8}], 'output': {'quality': 80}}",
        "resize:w=8,h=0,fit=inside,enlarge=0,gravity=centre|" OUT_DEF);
}

static void test_json_order(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    assert_int_equal(
        parse_json_text("{'operations': [{'op': 'sharpen', 'sigma': 1}, {'op': 'rotate', 'angle': "
                        "90}, {'op': 'resize', 'width': 8}, {'op': 'crop', 'x': 0, 'y': 0, "
                        "'width': 1, 'height': 1}, {'op': 'rotate', 'angle': 90}]}",
                        &plan, &err, __FILE__, __LINE__),
        0);
    assert_false(plan.from_url);
    assert_int_equal(plan.nsteps, 5);
    assert_int_equal(plan.steps[0].kind, OPS_STEP_SHARPEN);
    assert_int_equal(plan.steps[1].kind, OPS_STEP_ROTATE);
    assert_int_equal(plan.steps[2].kind, OPS_STEP_RESIZE);
    assert_int_equal(plan.steps[3].kind, OPS_STEP_CROP);
    assert_int_equal(plan.steps[4].kind, OPS_STEP_ROTATE);

    /* The order given is kept, so it changes the canonical text. */
    JOK("{'operations': [{'op': 'rotate', 'angle': 90}, {'op': 'resize', 'width': 8}]}",
        "rotate:90,bg=default|resize:w=8,h=0,fit=inside,enlarge=0,gravity=centre|" OUT_DEF);
    JOK("{'operations': [{'op': 'resize', 'width': 8}, {'op': 'rotate', 'angle': 90}]}",
        "resize:w=8,h=0,fit=inside,enlarge=0,gravity=centre|rotate:90,bg=default|" OUT_DEF);
}

/* A URL plan and the JSON plan of the same steps in the fixed order agree. */
static void test_json_matches_url(void **state)
{
    (void)state;
    static const struct {
        const char *query;
        const char *json;
    } pairs[] = {
        {"w=800", "{'operations': [{'op': 'resize', 'width': 800}]}"},
        {"w=800&h=600&fit=cover&rotate=90",
         "{'operations': [{'op': 'resize', 'width': 800, 'height': 600, 'fit': 'cover'}, "
         "{'op': 'rotate', 'angle': 90}]}"},
        {"rotate=90&fit=cover&h=600&w=800&format=webp&q=80",
         "{'operations': [{'op': 'resize', 'width': 800, 'height': 600, 'fit': 'cover'}, "
         "{'op': 'rotate', 'angle': 90}], 'output': {'format': 'webp', 'quality': 80}}"},
        {"crop=1,2,3,4&w=800&h=600&fit=contain&enlarge=1&gravity=north&rotate=45.5&bg=ff0000"
         "&flip=v&blur=2&sharpen=1.5&format=png&q=75&strip=1",
         "{'operations': [{'op': 'crop', 'x': 1, 'y': 2, 'width': 3, 'height': 4}, "
         "{'op': 'resize', 'width': 800, 'height': 600, 'fit': 'contain', 'enlarge': true, "
         "'gravity': 'north', 'background': 'ff0000'}, "
         "{'op': 'rotate', 'angle': 45.5, 'background': 'FF0000FF'}, "
         "{'op': 'flip', 'direction': 'vertical'}, {'op': 'blur', 'sigma': 2}, "
         "{'op': 'sharpen', 'sigma': 1.5}], "
         "'output': {'format': 'png', 'quality': 75, 'strip': true}}"},
        {"flip=h&strip=1",
         "{'operations': [{'op': 'flip', 'direction': 'horizontal'}], 'output': {'strip': true}}"},
        {"format=jpg", "{'operations': [], 'output': {'format': 'jpeg'}}"},
        {"", "{'operations': []}"},
    };

    for (size_t i = 0; i < COUNT(pairs); i++) {
        char url[OPS_CANONICAL_MAX];
        snprintf(url, sizeof(url), "%s", CANON(pairs[i].query));
        JOK(pairs[i].json, url);
    }
}

static void test_json_structure_errors(void **state)
{
    (void)state;
    struct ops_plan plan;
    struct util_error err = {0};

    JERR("{}", "operations must be an array");
    JERR("{'operations': {}}", "operations must be an array");
    JERR("{'operations': 'resize'}", "operations must be an array");
    JERR("{'operations': null}", "operations must be an array");
    assert_int_equal(ops_parse_json(NULL, NULL, &plan, &err), -1);
    assert_string_equal(err.detail, "operations must be an array");
    JERR("{'operations': [1]}", "operations[0] must be an object");
    JERR("{'operations': [[]]}", "operations[0] must be an object");
    JERR("{'operations': [null]}", "operations[0] must be an object");
    JERR("{'operations': [{}]}", "operations[0].op is required");
    JERR("{'operations': [{'width': 8}]}", "operations[0].op is required");
    JERR("{'operations': [{'op': 5}]}",
         "operations[0].op must be a string, one of crop, resize, rotate, flip, blur, sharpen");
    JERR("{'operations': [{'op': 'resize', 'width': 8}, {'op': 'scale'}]}",
         "operations[1].op 'scale' is not one of crop, resize, rotate, flip, blur, sharpen");
    JERR("{'operations': [{'op': 'Resize', 'width': 8}]}", "operations[0].op 'Resize' is not*");
    JERR("{'operations': [{'op': ''}]}", "operations[0].op '' is not*");
    JERR("{'operations': [{'op': '\\u00e9\\n'}]}", "operations[0].op '%C3%A9%0A' is not*");
    JERR("{'operations': [{'op': 'resize', 'width': 8}], 'output': []}",
         "output must be an object");
    JERR("{'operations': [], 'output': 'png'}", "output must be an object");

    /* At most OPS_MAX_STEPS operations. */
    char text[4096] = "{'operations': [";
    for (int i = 0; i < OPS_MAX_STEPS; i++)
        strcat(text, i ? ", {'op': 'flip', 'direction': 'vertical'}"
                       : "{'op': 'flip', 'direction': 'vertical'}");
    char ok[4200];
    snprintf(ok, sizeof(ok), "%s]}", text);
    assert_int_equal(parse_json_text(ok, &plan, &err, __FILE__, __LINE__), 0);
    assert_int_equal(plan.nsteps, OPS_MAX_STEPS);
    char buf[OPS_CANONICAL_MAX];
    assert_int_equal(ops_plan_canonical(&plan, buf, sizeof(buf)), 0);
    strcat(text, ", {'op': 'flip', 'direction': 'vertical'}]}");
    JERR(text, "operations must have at most 16 entries");
}

static void test_json_unknown_keys(void **state)
{
    (void)state;
    JERR("{'operations': [{'op': 'resize', 'width': 8, 'w': 9}]}", "unknown key 'operations[0].w'");
    JERR("{'operations': [{'op': 'crop', 'x': 0, 'y': 0, 'width': 1, 'height': 1, "
         "'angle': 1}]}",
         "unknown key 'operations[0].angle'");
    JERR("{'operations': [{'op': 'rotate', 'angle': 1, 'bg': 'ff0000'}]}",
         "unknown key 'operations[0].bg'");
    JERR("{'operations': [{'op': 'flip', 'direction': 'vertical', 'Direction': 'v'}]}",
         "unknown key 'operations[0].Direction'");
    JERR("{'operations': [{'op': 'blur', 'sigma': 1, 'radius': 2}]}",
         "unknown key 'operations[0].radius'");
    JERR("{'operations': [{'op': 'sharpen', 'sigma': 1, '': 2}]}", "unknown key 'operations[0].'");
    JERR("{'operations': [], 'output': {'fmt': 'png'}}", "unknown key 'output.fmt'");
    JERR("{'operations': [], 'output': {'format': 'png', 'q': 80}}", "unknown key 'output.q'");
    JERR("{'operations': [], 'output': {'op': 'png'}}", "unknown key 'output.op'");
    JERR("{'operations': [{'op': 'flip', 'direction': 'vertical', 'x\\u0001': 1}]}",
         "unknown key 'operations[0].x%01'");

#if JANSSON_VERSION_HEX >= 0x020e00
    /* A key with an embedded NUL must not pass as the known key before it. */
    struct ops_plan plan;
    struct util_error err = {0};
    json_t *ops = json_array();
    json_t *op = json_object();
    json_object_set_new(op, "op", json_string("resize"));
    json_object_set_new(op, "width", json_integer(8));
    json_object_setn_new(op, "fit\0x", 5, json_string("cover"));
    json_array_append_new(ops, op);
    assert_int_equal(ops_parse_json(ops, NULL, &plan, &err), -1);
    assert_string_equal(err.detail, "unknown key 'operations[0].fit%00x'");
    json_decref(ops);
#endif
}

static void test_json_value_errors(void **state)
{
    (void)state;
#define RESIZE_WITH(extra) "{'operations': [{'op': 'resize', 'width': 8" extra "}]}"
    const char *wdetail = "operations[0].width must be an integer 1..100000";
    JERR("{'operations': [{'op': 'resize', 'width': 800.0}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': 1.5}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': '800'}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': true}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': null}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': 0}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': -5}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': 100001}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': 4294967297}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': -4294967295}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': 1e3}]}", wdetail);
    JERR("{'operations': [{'op': 'resize', 'width': [800]}]}", wdetail);
    JERR(RESIZE_WITH(", 'height': 0"), "operations[0].height must be an integer 1..100000");
    JERR("{'operations': [{'op': 'resize'}]}", "operations[0]: resize needs width or height");
    JERR("{'operations': [{'op': 'resize', 'fit': 'cover'}]}",
         "operations[0]: resize needs width or height");
    JERR(RESIZE_WITH(", 'fit': 'Cover'"),
         "operations[0].fit must be one of contain, cover, fill, inside, outside");
    JERR(RESIZE_WITH(", 'fit': 1"), "operations[0].fit must be one of*");
    JERR(RESIZE_WITH(", 'enlarge': 1"), "operations[0].enlarge must be true or false");
    JERR(RESIZE_WITH(", 'enlarge': 'true'"), "operations[0].enlarge must be true or false");
    JERR(RESIZE_WITH(", 'enlarge': null"), "operations[0].enlarge must be true or false");
    JERR(RESIZE_WITH(", 'gravity': 'center'"), "operations[0].gravity must be one of centre,*");
    JERR(RESIZE_WITH(", 'background': 'ff0000'"), "operations[0].background needs fit contain");
    JERR(RESIZE_WITH(", 'fit': 'cover', 'background': 'ff0000'"),
         "operations[0].background needs fit contain");
    JERR(RESIZE_WITH(", 'fit': 'contain', 'background': '#ff0000'"),
         "operations[0].background must be a string RRGGBB or RRGGBBAA (hex)");
    JERR(RESIZE_WITH(", 'fit': 'contain', 'background': 16711680"),
         "operations[0].background must be a string RRGGBB or RRGGBBAA (hex)");

    JERR("{'operations': [{'op': 'crop', 'x': 0, 'y': 0, 'width': 1}]}",
         "operations[0].height is required");
    JERR("{'operations': [{'op': 'crop', 'y': 0, 'width': 1, 'height': 1}]}",
         "operations[0].x is required");
    JERR("{'operations': [{'op': 'crop', 'x': -1, 'y': 0, 'width': 1, 'height': 1}]}",
         "operations[0].x must be an integer 0..100000");
    JERR("{'operations': [{'op': 'crop', 'x': 0, 'y': 100001, 'width': 1, 'height': 1}]}",
         "operations[0].y must be an integer 0..100000");
    JERR("{'operations': [{'op': 'crop', 'x': 0, 'y': 0, 'width': 0, 'height': 1}]}",
         "operations[0].width must be an integer 1..100000");
    JERR("{'operations': [{'op': 'crop', 'x': 0.5, 'y': 0, 'width': 1, 'height': 1}]}",
         "operations[0].x must be an integer 0..100000");

    JERR("{'operations': [{'op': 'rotate'}]}", "operations[0].angle is required");
    JERR("{'operations': [{'op': 'flip', 'direction': 'h'}, {'op': 'rotate', 'angle': '90'}]}",
         "operations[0].direction must be one of horizontal, vertical");
    JERR("{'operations': [{'op': 'flip', 'direction': 'vertical'}, "
         "{'op': 'rotate', 'angle': '90'}]}",
         "operations[1].angle must be a number -360..360");
    JERR("{'operations': [{'op': 'rotate', 'angle': 360.5}]}",
         "operations[0].angle must be a number -360..360");
    JERR("{'operations': [{'op': 'rotate', 'angle': -1e9}]}",
         "operations[0].angle must be a number -360..360");
    JERR("{'operations': [{'op': 'rotate', 'angle': 90, 'background': 'ff00'}]}",
         "operations[0].background must be a string RRGGBB or RRGGBBAA (hex)");
    JERR("{'operations': [{'op': 'flip'}]}", "operations[0].direction is required");
    JERR("{'operations': [{'op': 'flip', 'direction': true}]}",
         "operations[0].direction must be one of horizontal, vertical");
    JERR("{'operations': [{'op': 'blur'}]}", "operations[0].sigma is required");
    JERR("{'operations': [{'op': 'blur', 'sigma': 0.2}]}",
         "operations[0].sigma must be a number 0.3..100");
    JERR("{'operations': [{'op': 'blur', 'sigma': '1'}]}",
         "operations[0].sigma must be a number 0.3..100");
    JERR("{'operations': [{'op': 'sharpen', 'sigma': 11}]}",
         "operations[0].sigma must be a number 0.5..10");

    JERR("{'operations': [], 'output': {'format': 'auto'}}",
         "output.format must be one of jpeg, png, webp, avif, gif, tiff");
    JERR("{'operations': [], 'output': {'format': 'source'}}", "output.format must be one of*");
    JERR("{'operations': [], 'output': {'format': 'PNG'}}", "output.format must be one of*");
    JERR("{'operations': [], 'output': {'format': 5}}", "output.format must be one of*");
    JERR("{'operations': [], 'output': {'format': null}}", "output.format must be one of*");
    JERR("{'operations': [], 'output': {'quality': 0}}",
         "output.quality must be an integer 1..100");
    JERR("{'operations': [], 'output': {'quality': 101}}",
         "output.quality must be an integer 1..100");
    JERR("{'operations': [], 'output': {'quality': 90.5}}",
         "output.quality must be an integer 1..100");
    JERR("{'operations': [], 'output': {'quality': '90'}}",
         "output.quality must be an integer 1..100");
    JERR("{'operations': [], 'output': {'strip': 1}}", "output.strip must be true or false");
    JERR("{'operations': [], 'output': {'strip': '1'}}", "output.strip must be true or false");
#undef RESIZE_WITH
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_query),
        cmocka_unit_test(test_width_height),
        cmocka_unit_test(test_crop),
        cmocka_unit_test(test_fit),
        cmocka_unit_test(test_enlarge),
        cmocka_unit_test(test_gravity),
        cmocka_unit_test(test_rotate),
        cmocka_unit_test(test_bg),
        cmocka_unit_test(test_flip),
        cmocka_unit_test(test_blur_sharpen),
        cmocka_unit_test(test_output),
        cmocka_unit_test(test_unknown_and_empty_names),
        cmocka_unit_test(test_percent_decoding),
        cmocka_unit_test(test_sig_ignored),
        cmocka_unit_test(test_url_step_order),
        cmocka_unit_test(test_canonical_permutations),
        cmocka_unit_test(test_canonical_differences),
        cmocka_unit_test(test_is_empty),
        cmocka_unit_test(test_error_resets_plan),
        cmocka_unit_test(test_canonical_buffer),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_json_valid),
        cmocka_unit_test(test_json_order),
        cmocka_unit_test(test_json_matches_url),
        cmocka_unit_test(test_json_structure_errors),
        cmocka_unit_test(test_json_unknown_keys),
        cmocka_unit_test(test_json_value_errors),
    };
    return cmocka_run_group_tests_name("ops_parse", tests, NULL, NULL);
}
