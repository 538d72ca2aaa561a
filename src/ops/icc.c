/*
 * The description of an ICC profile (ICC.1:2010 and ICC.1:2001-04):
 *
 *   header      128 bytes, "acsp" at offset 36
 *   tag count   uint32 big-endian at 128
 *   tag table   count x (signature, offset, size), uint32 big-endian each,
 *               offsets from the start of the profile
 *
 * The 'desc' tag is a textDescriptionType in v2 profiles (ASCII, then an
 * optional Unicode copy) and a multiLocalizedUnicodeType ('mluc', UTF-16BE
 * records per language) in v4. Some v2 writers use 'mluc' or a plain 'text'
 * too; we go by the tag's own type signature, not the header's version.
 *
 * The bytes come from uploaded images: every offset and length is checked
 * against the buffer, counts are capped by what fits, and no string is
 * decoded more than a few times, so a hostile profile costs O(len).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "ops/icc.h"

#define HEADER_LEN 128
#define TAG_ENTRY  12

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint32_t be16(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | (uint32_t)p[1];
}

/* ---- output: printable UTF-8, collapsed, trimmed, cut whole ------------- */

struct sink {
    char *out;  /* the caller's buffer */
    size_t cap; /* its size, NUL included */
    size_t n;   /* bytes written so far */
    bool space; /* a space is due before the next character */
    bool full;  /* a character did not fit: everything after is dropped */
};

static bool is_space(uint32_t cp)
{
    return cp == ' ' || (cp >= 0x09 && cp <= 0x0d) || cp == 0x85 || cp == 0xa0 || cp == 0x2028 ||
           cp == 0x2029;
}

/* Characters that print nothing useful: C0 and C1 controls, DEL, surrogates
 * (never valid on their own in UTF-8), the byte order mark and the
 * noncharacters U+FFFE and U+FFFF, and anything past U+10FFFF. */
static bool is_dropped(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0xd800 && cp <= 0xdfff) ||
           cp == 0xfeff || cp == 0xfffe || cp == 0xffff || cp > 0x10ffff;
}

static size_t utf8_encode(uint32_t cp, char *buf)
{
    if (cp < 0x80) {
        buf[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        buf[0] = (char)(0xc0 | cp >> 6);
        buf[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        buf[0] = (char)(0xe0 | cp >> 12);
        buf[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        buf[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    buf[0] = (char)(0xf0 | cp >> 18);
    buf[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    buf[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    buf[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Appends one code point. White space runs become one space, and only
 * between two characters, which trims both ends. */
static void sink_put(struct sink *s, uint32_t cp)
{
    char buf[4];
    size_t len, need;

    if (s->full)
        return;
    if (is_space(cp)) {
        s->space = s->n > 0;
        return;
    }
    if (is_dropped(cp))
        return;
    len = utf8_encode(cp, buf);
    need = len + (s->space ? 1 : 0);
    if (s->n + need + 1 > s->cap) {
        s->full = true;
        return;
    }
    if (s->space)
        s->out[s->n++] = ' ';
    s->space = false;
    memcpy(s->out + s->n, buf, len);
    s->n += len;
}

static void sink_reset(struct sink *s)
{
    s->n = 0;
    s->space = false;
    s->full = false;
}

/* ---- input decoders ----------------------------------------------------- */

/* Decodes one UTF-8 sequence at p (n bytes available). Returns its length
 * and the code point, or 0 when it is not well-formed (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF). */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t c, min;

    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        c = p[0] & 0x1f;
        min = 0x80;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        c = p[0] & 0x0f;
        min = 0x800;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        c = p[0] & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* An 8-bit string up to its NUL. It should be 7-bit ASCII; in the wild it
 * is sometimes UTF-8 and sometimes Latin-1 (Mac Roman too, which we cannot
 * tell from Latin-1). Well-formed UTF-8 is taken as such, anything else as
 * Latin-1, so every byte maps to something printable or is dropped. */
static void put_8bit(struct sink *s, const unsigned char *p, size_t n)
{
    const unsigned char *nul = memchr(p, '\0', n);
    bool utf8 = true;
    uint32_t cp = 0;
    size_t i, len;

    if (nul != NULL)
        n = (size_t)(nul - p);
    for (i = 0; i < n; i += len) {
        len = utf8_decode(p + i, n - i, &cp);
        if (len == 0) {
            utf8 = false;
            break;
        }
    }
    for (i = 0; i < n && !s->full; i += len) {
        if (utf8) {
            len = utf8_decode(p + i, n - i, &cp);
        } else {
            len = 1;
            cp = p[i];
        }
        sink_put(s, cp);
    }
}

/* A UTF-16BE string of n bytes, up to a NUL unit. A valid surrogate pair
 * becomes its supplementary character; a lone surrogate becomes U+FFFD. */
static void put_utf16be(struct sink *s, const unsigned char *p, size_t n)
{
    size_t units = n / 2;

    for (size_t i = 0; i < units && !s->full; i++) {
        uint32_t u = be16(p + 2 * i);

        if (u == 0)
            return;
        if (u >= 0xd800 && u <= 0xdbff && i + 1 < units) {
            uint32_t lo = be16(p + 2 * (i + 1));

            if (lo >= 0xdc00 && lo <= 0xdfff) {
                sink_put(s, 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00));
                i++;
                continue;
            }
        }
        if (u >= 0xd800 && u <= 0xdfff)
            u = 0xfffd;
        sink_put(s, u);
    }
}

/* ---- tag types ---------------------------------------------------------- */

/* textDescriptionType (ICC.1:2001-04 6.5.17): "desc", 4 reserved bytes,
 * uint32 ASCII count (NUL included), the ASCII, then uint32 Unicode
 * language code, uint32 Unicode count (in characters, NUL included), the
 * UTF-16BE text, then a ScriptCode part we ignore. */
static void put_text_description(struct sink *s, const unsigned char *t, size_t size)
{
    uint64_t count, ucount, at;

    if (size < 12)
        return;
    count = be32(t + 8);
    put_8bit(s, t + 12, count < size - 12 ? (size_t)count : size - 12);
    if (s->n > 0)
        return;
    /* No ASCII: try the Unicode copy, if the tag holds it. */
    at = 12 + count;
    if (at + 8 > size)
        return;
    ucount = be32(t + at + 4);
    at += 8;
    sink_reset(s);
    put_utf16be(s, t + at, ucount * 2 < size - at ? (size_t)(ucount * 2) : (size_t)(size - at));
}

/* Preference of an mluc record: 0 for en-US, 1 for other English, 2 for
 * anything else. */
static int mluc_rank(const unsigned char *rec)
{
    if (rec[0] != 'e' || rec[1] != 'n')
        return 2;
    return rec[2] == 'U' && rec[3] == 'S' ? 0 : 1;
}

/* multiLocalizedUnicodeType (ICC.1:2010 10.15): "mluc", 4 reserved bytes,
 * uint32 record count, uint32 record size (12), then records of language
 * (2), country (2), length in bytes (4) and offset from the tag start (4);
 * the strings are UTF-16BE. We take en-US, else the first English record,
 * else the first record; when the chosen one is empty or out of bounds the
 * next choice is tried, at most three decodes in all. */
static void put_mluc(struct sink *s, const unsigned char *t, size_t size)
{
    uint64_t nrec, recsize;
    size_t pick[3] = {SIZE_MAX, SIZE_MAX, SIZE_MAX};

    if (size < 16)
        return;
    nrec = be32(t + 8);
    recsize = be32(t + 12);
    if (recsize < 12)
        return;
    if (nrec > (size - 16) / recsize)
        nrec = (size - 16) / recsize;
    for (size_t i = 0; i < nrec; i++) {
        int rank = mluc_rank(t + 16 + i * recsize);

        if (pick[rank] == SIZE_MAX)
            pick[rank] = i;
    }
    for (int r = 0; r < 3; r++) {
        const unsigned char *rec;
        uint64_t length, offset;

        if (pick[r] == SIZE_MAX)
            continue;
        rec = t + 16 + pick[r] * recsize;
        length = be32(rec + 4);
        offset = be32(rec + 8);
        if (offset > size || length > size - offset)
            continue;
        sink_reset(s);
        put_utf16be(s, t + offset, (size_t)length);
        if (s->n > 0)
            return;
    }
}

int ops_icc_description(const void *profile, size_t len, char *out, size_t outlen)
{
    const unsigned char *b = profile;
    struct sink s = {out, outlen, 0, false, false};
    uint64_t count;

    if (out == NULL || outlen == 0)
        return -1;
    out[0] = '\0';
    if (b == NULL || len < HEADER_LEN + 4 || memcmp(b + 36, "acsp", 4) != 0)
        return -1;
    count = be32(b + HEADER_LEN);
    if (count > (len - HEADER_LEN - 4) / TAG_ENTRY)
        count = (len - HEADER_LEN - 4) / TAG_ENTRY;
    for (size_t i = 0; i < count; i++) {
        const unsigned char *e = b + HEADER_LEN + 4 + i * TAG_ENTRY;
        uint64_t offset, size;
        const unsigned char *t;

        if (memcmp(e, "desc", 4) != 0)
            continue;
        offset = be32(e + 4);
        size = be32(e + 8);
        if (offset >= len)
            return -1;
        /* A profile cut short keeps what it has of the tag. */
        if (size > len - offset)
            size = len - offset;
        if (size < 8)
            return -1;
        t = b + offset;
        if (memcmp(t, "desc", 4) == 0)
            put_text_description(&s, t, (size_t)size);
        else if (memcmp(t, "mluc", 4) == 0)
            put_mluc(&s, t, (size_t)size);
        else if (memcmp(t, "text", 4) == 0)
            put_8bit(&s, t + 8, (size_t)size - 8);
        break; /* only the first 'desc' tag counts */
    }
    out[s.n] = '\0';
    return s.n > 0 ? 0 : -1;
}
