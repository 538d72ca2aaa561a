/*
 * Unit tests for src/ops/icc.c: the description of ICC profiles.
 *
 * The real profiles in tests/unit/data/ were cut out of the APP2
 * ICC_PROFILE segments of JPEGs in the shared corpus (see the README
 * there). Others are built here byte by byte. Every profile is handed over
 * in a heap block of exactly its size, so the sanitizers catch a read past
 * the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/icc.h"

/* ---- helpers ------------------------------------------------------------ */

/* Opens a fixture: $UNIT_DATA_DIR/name, else data/name beside this file.
 * __FILE__ is the path the compiler was given: absolute, or relative to
 * where it ran (meson's build root, the parent of this test's folder), so
 * a relative one is tried both from the current directory and from the
 * executable's build root. */
static FILE *open_fixture(const char *name, char *path, size_t pathlen)
{
    const char *env = getenv("UNIT_DATA_DIR");
    const char *slash = strrchr(__FILE__, '/');
    int dir = slash != NULL ? (int)(slash - __FILE__) : 0;
    char exe[4096];
    ssize_t n;
    FILE *f;

    if (env != NULL && env[0] != '\0') {
        if (snprintf(path, pathlen, "%s/%s", env, name) >= (int)pathlen)
            return NULL;
        return fopen(path, "rb");
    }
    if (snprintf(path, pathlen, "%.*s%sdata/%s", dir, __FILE__, dir > 0 ? "/" : "", name) >=
        (int)pathlen)
        return NULL;
    f = fopen(path, "rb");
    if (f != NULL || __FILE__[0] == '/')
        return f;
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    for (int up = 0; up < 2; up++) {
        char *s = strrchr(exe, '/');

        if (s != NULL)
            *s = '\0';
    }
    if (snprintf(path, pathlen, "%s/%.*s%sdata/%s", exe, dir, __FILE__, dir > 0 ? "/" : "", name) >=
        (int)pathlen)
        return NULL;
    return fopen(path, "rb");
}

static unsigned char *read_fixture(const char *name, size_t *len)
{
    char path[4096];
    FILE *f;
    unsigned char *buf;
    long size;

    f = open_fixture(name, path, sizeof(path));
    if (f == NULL)
        fail_msg("cannot open fixture %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    size = ftell(f);
    assert_true(size > 0);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    buf = malloc((size_t)size);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    (void)fclose(f);
    *len = (size_t)size;
    return buf;
}

/* ops_icc_description on an exact-size heap copy. */
static int describe(const unsigned char *bytes, size_t n, char *out, size_t outlen)
{
    unsigned char *copy = malloc(n > 0 ? n : 1);
    int r;

    assert_non_null(copy);
    if (n > 0)
        memcpy(copy, bytes, n);
    r = ops_icc_description(copy, n, out, outlen);
    free(copy);
    return r;
}

/* Well-formed UTF-8 with no control characters, no leading or trailing
 * space and no double space. */
static bool clean_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    if (n > 0 && (s[0] == ' ' || s[n - 1] == ' '))
        return false;
    if (strstr(s, "  ") != NULL)
        return false;
    while (*p != '\0') {
        unsigned c = *p;
        int len = c < 0x80                 ? 1
                  : c >= 0xc2 && c <= 0xdf ? 2
                  : c >= 0xe0 && c <= 0xef ? 3
                  : c >= 0xf0 && c <= 0xf4 ? 4
                                           : 0;

        if (len == 0 || c < 0x20 || c == 0x7f)
            return false;
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
        }
        p += len;
    }
    return true;
}

/* A profile under construction: header, tag table, tag data. */
struct builder {
    unsigned char buf[4096];
    size_t len;
};

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void append(struct builder *b, const void *bytes, size_t n)
{
    assert_true(b->len + n <= sizeof(b->buf));
    memcpy(b->buf + b->len, bytes, n);
    b->len += n;
}

static void append32(struct builder *b, uint32_t v)
{
    unsigned char p[4];

    put32(p, v);
    append(b, p, 4);
}

/* A v4 display profile header and a table of one 'desc' tag; the tag data
 * (from `tag`, n bytes) follows the table. */
static void build_profile(struct builder *b, const void *tag, size_t n)
{
    memset(b, 0, sizeof(*b));
    b->len = 128;
    put32(b->buf + 8, 0x04300000); /* version 4.3 */
    memcpy(b->buf + 12, "mntr", 4);
    memcpy(b->buf + 16, "RGB ", 4);
    memcpy(b->buf + 20, "XYZ ", 4);
    memcpy(b->buf + 36, "acsp", 4);
    append32(b, 1);
    append(b, "desc", 4);
    append32(b, 128 + 4 + 12);
    append32(b, (uint32_t)n);
    append(b, tag, n);
    put32(b->buf, (uint32_t)b->len);
}

/* A UTF-16BE string from code units. */
static size_t utf16be(unsigned char *out, const uint16_t *units, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put16(out + 2 * i, units[i]);
    return 2 * n;
}

/* One mluc record. */
struct mluc_rec {
    const char *lang;      /* "enUS" */
    const uint16_t *units; /* UTF-16 code units */
    size_t n;              /* how many */
};

/* An mluc tag of the records, strings after the records. */
static size_t build_mluc(unsigned char *tag, size_t cap, const struct mluc_rec *recs, size_t nrec)
{
    size_t at = 16 + 12 * nrec;

    assert_true(at <= cap);
    memset(tag, 0, at);
    memcpy(tag, "mluc", 4);
    put32(tag + 8, (uint32_t)nrec);
    put32(tag + 12, 12);
    for (size_t i = 0; i < nrec; i++) {
        unsigned char *r = tag + 16 + 12 * i;

        memcpy(r, recs[i].lang, 4);
        put32(r + 4, (uint32_t)(2 * recs[i].n));
        put32(r + 8, (uint32_t)at);
        assert_true(at + 2 * recs[i].n <= cap);
        at += utf16be(tag + at, recs[i].units, recs[i].n);
    }
    return at;
}

/* A v2 textDescriptionType tag with the ASCII `ascii` (count = n + 1) and
 * an optional Unicode copy. */
static size_t build_desc(unsigned char *tag, const char *ascii, size_t n, const uint16_t *units,
                         size_t nunits)
{
    size_t at = 0;

    memcpy(tag, "desc", 4);
    memset(tag + 4, 0, 4);
    put32(tag + 8, (uint32_t)(n + 1));
    memcpy(tag + 12, ascii, n);
    tag[12 + n] = '\0';
    at = 12 + n + 1;
    put32(tag + at, 0);                          /* Unicode language code */
    put32(tag + at + 4, (uint32_t)(nunits + 1)); /* Unicode count, NUL included */
    at += 8;
    at += utf16be(tag + at, units, nunits);
    put16(tag + at, 0);
    at += 2;
    memset(tag + at, 0, 2 + 1 + 67); /* ScriptCode: code, count, 67 bytes */
    return at + 70;
}

/* ---- real profiles ------------------------------------------------------ */

struct fixture {
    const char *file;        /* in tests/unit/data */
    const char *description; /* what it says */
};

static const struct fixture fixtures[] = {
    /* v2.1, from photos/22mp-canon-5d3-5760x3840.jpg */
    {"icc-srgb-iec61966.icc", "sRGB IEC61966-2.1"},
    /* v2.1, from photos/small-rocket-640x427.jpg */
    {"icc-adobe-rgb-1998.icc", "Adobe RGB (1998)"},
    /* v2.1 compact profile with overlapping tags, from
     * formats/car-displayp3-icc-800x533.jpg */
    {"icc-display-p3-compact.icc", "sP3C"},
    /* v2.3, libvips' built-in sRGB (vips icc_export --output-profile srgb) */
    {"icc-srgb-libvips.icc", "sRGB"},
    /* v2.2 CMYK from formats/car-cmyk-800x533.jpg (961644 bytes), cut down
     * to its header and its 'desc' tag */
    {"icc-cmyk-chemical-proof-desc-only.icc", "Chemical proof"},
};

static void test_real_profiles(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
        size_t len;
        unsigned char *p = read_fixture(fixtures[i].file, &len);
        char out[256];

        assert_int_equal(describe(p, len, out, sizeof(out)), 0);
        assert_string_equal(out, fixtures[i].description);
        free(p);
    }
}

/* Cut at every length: never a crash, never a read out of bounds, and
 * either -1 or a clean string that is a prefix of the real description. */
static void test_real_profiles_truncated(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
        size_t len;
        unsigned char *p = read_fixture(fixtures[i].file, &len);

        for (size_t cut = 0; cut <= len; cut++) {
            char out[256];
            int r = describe(p, cut, out, sizeof(out));

            if (r == 0) {
                assert_true(clean_utf8(out));
                assert_true(strncmp(out, fixtures[i].description, strlen(out)) == 0);
            } else {
                assert_int_equal(r, -1);
                assert_string_equal(out, "");
            }
        }
        /* Below the header and the tag count nothing can be read. */
        assert_int_equal(describe(p, 131, (char[8]){0}, 8), -1);
        free(p);
    }
}

/* Small output buffers: the description is cut, never past outlen. */
static void test_real_profile_small_outlen(void **state)
{
    size_t len;
    unsigned char *p = read_fixture("icc-srgb-iec61966.icc", &len);
    char out[32];

    (void)state;
    assert_int_equal(describe(p, len, out, 5), 0);
    assert_string_equal(out, "sRGB");
    /* "sRGB " would end in a space: trimmed */
    assert_int_equal(describe(p, len, out, 6), 0);
    assert_string_equal(out, "sRGB");
    assert_int_equal(describe(p, len, out, 7), 0);
    assert_string_equal(out, "sRGB I");
    assert_int_equal(describe(p, len, out, 2), 0);
    assert_string_equal(out, "s");
    assert_int_equal(describe(p, len, out, 1), -1);
    assert_int_equal(describe(p, len, out, 0), -1);
    assert_int_equal(ops_icc_description(p, len, NULL, 10), -1);
    free(p);
}

/* ---- built profiles: v4 mluc -------------------------------------------- */

static const uint16_t de[] = {'F', 'a', 'r', 'b', 'p', 'r', 'o', 'f', 'i', 'l'};
static const uint16_t en_us[] = {'D', 'i', 's', 'p',    'l', 'a',    'y',   ' ',
                                 'P', '3', ' ', 0x2013, ' ', 0x00e9, 0x2713};
static const uint16_t en_gb[] = {'C', 'o', 'l', 'o', 'u', 'r'};
static const uint16_t fr[] = {'P', 'r', 'o', 'f', 'i', 'l'};

static void test_mluc_prefers_en_us(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[128];
    const struct mluc_rec recs[] = {
        {"deDE", de, 10},
        {"enGB", en_gb, 6},
        {"enUS", en_us, 15},
        {"frFR", fr, 6},
    };
    size_t n = build_mluc(tag, sizeof(tag), recs, 4);

    (void)state;
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Display P3 \xe2\x80\x93 \xc3\xa9\xe2\x9c\x93");
}

static void test_mluc_other_english(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[128];
    const struct mluc_rec recs[] = {
        {"deDE", de, 10},
        {"enGB", en_gb, 6},
    };
    size_t n = build_mluc(tag, sizeof(tag), recs, 2);

    (void)state;
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Colour");
}

static void test_mluc_first_record(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[128];
    const struct mluc_rec recs[] = {
        {"frFR", fr, 6},
        {"deDE", de, 10},
    };
    size_t n = build_mluc(tag, sizeof(tag), recs, 2);

    (void)state;
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Profil");
}

static void test_mluc_surrogates(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[128];
    /* U+1F600 as a pair; a lone high and a lone low surrogate; a trailing
     * high surrogate; a NUL that ends the string early. */
    const uint16_t units[] = {'a', 0xd83d, 0xde00, 'b', 0xd800, 'c', 0xdc00, 'd', 0xd83d};
    const uint16_t with_nul[] = {'x', 'y', 0, 'z'};
    const struct mluc_rec recs[] = {{"enUS", units, 9}};
    const struct mluc_rec recs_nul[] = {{"enUS", with_nul, 4}};
    size_t n = build_mluc(tag, sizeof(tag), recs, 1);

    (void)state;
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "a\xf0\x9f\x98\x80"
                             "b\xef\xbf\xbd"
                             "c\xef\xbf\xbd"
                             "d\xef\xbf\xbd");

    n = build_mluc(tag, sizeof(tag), recs_nul, 1);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "xy");
}

static void test_mluc_controls_and_spaces(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[128];
    /* BOM, spaces, tab, controls (C0, DEL, C1), newline, NBSP, line
     * separator */
    const uint16_t units[] = {0xfeff, ' ', '\t', 'A', 0x01, 'B',    0x7f, 0x9b, '\n',
                              '\r',   'C', 0xa0, ' ', 'D',  0x2028, 'E',  ' ',  '\t'};
    const struct mluc_rec recs[] = {{"enUS", units, sizeof(units) / sizeof(units[0])}};
    size_t n = build_mluc(tag, sizeof(tag), recs, 1);
    const uint16_t blank[] = {' ', 0x01, '\t', 0xfeff, 0x7f};
    const struct mluc_rec recs_blank[] = {{"enUS", blank, 5}};

    (void)state;
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "AB C D E");

    /* Nothing printable: no description */
    n = build_mluc(tag, sizeof(tag), recs_blank, 1);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    assert_string_equal(out, "");
}

/* A cut never splits a UTF-8 sequence. */
static void test_mluc_cut_whole_characters(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[32];
    /* a (1 byte), é (2), € (3), U+1F600 (4), b (1) */
    const uint16_t units[] = {'a', 0x00e9, 0x20ac, 0xd83d, 0xde00, 'b'};
    const struct mluc_rec recs[] = {{"enUS", units, 6}};
    size_t n = build_mluc(tag, sizeof(tag), recs, 1);
    static const char full[] = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
                               "b";
    /* bytes that fit for each outlen (NUL included) */
    static const size_t fits[] = {0, 0, 1, 1, 3, 3, 3, 6, 6, 6, 6, 10, 11, 11};

    (void)state;
    build_profile(&b, tag, n);
    for (size_t outlen = 1; outlen < sizeof(fits) / sizeof(fits[0]); outlen++) {
        int r = describe(b.buf, b.len, out, outlen);

        if (fits[outlen] == 0) {
            assert_int_equal(r, -1);
            continue;
        }
        assert_int_equal(r, 0);
        assert_int_equal(strlen(out), fits[outlen]);
        assert_memory_equal(out, full, fits[outlen]);
        assert_true(clean_utf8(out));
    }
}

static void test_mluc_out_of_bounds(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[64];
    const struct mluc_rec recs[] = {{"enUS", en_gb, 6}, {"deDE", de, 10}};
    size_t n;

    (void)state;
    /* en-US string offset past the tag: falls back to the next choice */
    n = build_mluc(tag, sizeof(tag), recs, 2);
    put32(tag + 16 + 8, 0xfffffff0u);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Farbprofil");

    /* offset + length wrapping around 32 bits */
    n = build_mluc(tag, sizeof(tag), recs, 2);
    put32(tag + 16 + 4, 0xffffffffu);
    put32(tag + 16 + 12 + 4, 0x20);
    put32(tag + 16 + 12 + 8, 0xffffffe0u);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);

    /* a record count far past what the tag holds */
    n = build_mluc(tag, sizeof(tag), recs, 2);
    put32(tag + 8, 0xffffffffu);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Colour");

    /* a record size below 12, and a huge one */
    n = build_mluc(tag, sizeof(tag), recs, 2);
    put32(tag + 12, 4);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    put32(b.buf + 144 + 12, 0xffffffffu);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);

    /* no records */
    n = build_mluc(tag, sizeof(tag), recs, 0);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);

    /* every cut of an mluc profile */
    n = build_mluc(tag, sizeof(tag), recs, 2);
    build_profile(&b, tag, n);
    for (size_t cut = 0; cut <= b.len; cut++) {
        int r = describe(b.buf, cut, out, sizeof(out));

        assert_true(r == -1 || (r == 0 && clean_utf8(out)));
    }
}

/* ---- built profiles: v2 desc, text -------------------------------------- */

static void test_desc_v2(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[64];
    size_t n;
    const uint16_t uni[] = {'U', 'n', 'i', 0x00e7, 'o', 'd', 'e'};

    (void)state;
    n = build_desc(tag, "  My  Profile\t", 14, NULL, 0);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "My Profile");

    /* An empty ASCII part falls back to the Unicode copy. */
    n = build_desc(tag, "", 0, uni, 7);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Uni\xc3\xa7ode");

    /* Latin-1 bytes become UTF-8; well-formed UTF-8 is kept. */
    n = build_desc(tag, "Caf\xe9 \x85 \x9b!", 9, NULL, 0);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Caf\xc3\xa9 !");
    n = build_desc(tag, "Caf\xc3\xa9", 5, NULL, 0);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Caf\xc3\xa9");

    /* An ASCII count far past the tag reads only up to the tag's end. */
    n = build_desc(tag, "Long", 4, NULL, 0);
    put32(tag + 8, 0xffffffffu);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Long");

    /* Empty both ways: none */
    n = build_desc(tag, "", 0, NULL, 0);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);

    /* A huge Unicode count */
    n = build_desc(tag, "", 0, uni, 7);
    put32(tag + 12 + 1 + 4, 0xffffffffu);
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Uni\xc3\xa7ode");
}

static void test_text_type(void **state)
{
    static const unsigned char tag[] = "text\0\0\0\0Plain text\0";
    struct builder b;
    char out[64];

    (void)state;
    build_profile(&b, tag, sizeof(tag) - 1);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Plain text");
}

/* ---- broken profiles ---------------------------------------------------- */

static void test_tag_out_of_bounds(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[64];
    size_t n = build_desc(tag, "Fine", 4, NULL, 0);

    (void)state;
    build_profile(&b, tag, n);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Fine");

    /* offset past the end, at the end, and wrapping with the size */
    put32(b.buf + 136, (uint32_t)b.len + 100);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    put32(b.buf + 136, (uint32_t)b.len);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    put32(b.buf + 136, 0xffffffffu);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    put32(b.buf + 136, 144);
    put32(b.buf + 140, 0xffffffffu);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Fine");

    /* a tag size too small for its type */
    put32(b.buf + 140, 4);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    put32(b.buf + 140, 12);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    put32(b.buf + 140, 14);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Fi");

    /* the tag pointing at the header (garbage, but in bounds) */
    put32(b.buf + 136, 0);
    put32(b.buf + 140, 128);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
}

static void test_tag_count(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[64];
    size_t n = build_desc(tag, "Fine", 4, NULL, 0);

    (void)state;
    build_profile(&b, tag, n);
    /* a count far past the table: capped by what fits */
    put32(b.buf + 128, 0xffffffffu);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), 0);
    assert_string_equal(out, "Fine");
    /* no tags */
    put32(b.buf + 128, 0);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    /* no 'desc' tag */
    put32(b.buf + 128, 1);
    memcpy(b.buf + 132, "cprt", 4);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
}

static void test_not_a_profile(void **state)
{
    unsigned char tag[512];
    struct builder b;
    char out[64];
    size_t n = build_desc(tag, "Fine", 4, NULL, 0);
    static const unsigned char tiny[] = "acsp";

    (void)state;
    build_profile(&b, tag, n);
    memcpy(b.buf + 36, "ACSP", 4);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
    assert_int_equal(describe(tiny, 4, out, sizeof(out)), -1);
    assert_int_equal(describe(tiny, 0, out, sizeof(out)), -1);
    assert_int_equal(ops_icc_description(NULL, 0, out, sizeof(out)), -1);
    assert_int_equal(ops_icc_description(NULL, 1000, out, sizeof(out)), -1);

    /* an unknown tag type */
    build_profile(&b, tag, n);
    memcpy(b.buf + 144, "XYZ ", 4);
    assert_int_equal(describe(b.buf, b.len, out, sizeof(out)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_profiles),
        cmocka_unit_test(test_real_profiles_truncated),
        cmocka_unit_test(test_real_profile_small_outlen),
        cmocka_unit_test(test_mluc_prefers_en_us),
        cmocka_unit_test(test_mluc_other_english),
        cmocka_unit_test(test_mluc_first_record),
        cmocka_unit_test(test_mluc_surrogates),
        cmocka_unit_test(test_mluc_controls_and_spaces),
        cmocka_unit_test(test_mluc_cut_whole_characters),
        cmocka_unit_test(test_mluc_out_of_bounds),
        cmocka_unit_test(test_desc_v2),
        cmocka_unit_test(test_text_type),
        cmocka_unit_test(test_tag_out_of_bounds),
        cmocka_unit_test(test_tag_count),
        cmocka_unit_test(test_not_a_profile),
    };

    return cmocka_run_group_tests_name("ops_icc", tests, NULL, NULL);
}
