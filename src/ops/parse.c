/*
 * The one parser of the operation spec (DESIGN §2, §3): URL queries and job
 * JSON both end here, in a struct ops_plan, and leave as its canonical text.
 *
 * This is the attack surface of the service, so it is strict and bounded:
 * no heap allocation, every number must match a fixed grammar before it
 * reaches strtol/strtod, decoded names and values are held in fixed buffers
 * (anything longer cannot be valid), and any client text echoed into an
 * error detail is escaped to printable ASCII and cut short, because details
 * go verbatim into problem+json bodies and logs.
 */
#include "ops/plan.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- names ---------------------------------------------------------------- */

static const char *const format_names[] = {
    [OPS_FORMAT_SOURCE] = "source", [OPS_FORMAT_JPEG] = "jpeg", [OPS_FORMAT_PNG] = "png",
    [OPS_FORMAT_WEBP] = "webp",     [OPS_FORMAT_AVIF] = "avif", [OPS_FORMAT_GIF] = "gif",
    [OPS_FORMAT_TIFF] = "tiff",     [OPS_FORMAT_AUTO] = "auto",
};

static const char *const fit_names[] = {
    [OPS_FIT_CONTAIN] = "contain", [OPS_FIT_COVER] = "cover",     [OPS_FIT_FILL] = "fill",
    [OPS_FIT_INSIDE] = "inside",   [OPS_FIT_OUTSIDE] = "outside",
};

static const char *const gravity_names[] = {
    [OPS_GRAVITY_CENTRE] = "centre",       [OPS_GRAVITY_NORTH] = "north",
    [OPS_GRAVITY_NORTHEAST] = "northeast", [OPS_GRAVITY_EAST] = "east",
    [OPS_GRAVITY_SOUTHEAST] = "southeast", [OPS_GRAVITY_SOUTH] = "south",
    [OPS_GRAVITY_SOUTHWEST] = "southwest", [OPS_GRAVITY_WEST] = "west",
    [OPS_GRAVITY_NORTHWEST] = "northwest", [OPS_GRAVITY_ENTROPY] = "entropy",
    [OPS_GRAVITY_ATTENTION] = "attention",
};

/* The lists quoted in error details; they must match the tables above. */
#define FIT_LIST "contain, cover, fill, inside, outside"
#define GRAVITY_LIST                                                                               \
    "centre, north, northeast, east, southeast, south, southwest, west, northwest, entropy, "      \
    "attention"
#define FORMAT_LIST  "jpeg, png, webp, avif, gif, tiff, auto"
#define JFORMAT_LIST "jpeg, png, webp, avif, gif, tiff"
#define OP_LIST      "crop, resize, rotate, flip, blur, sharpen"

/* Inclusive ranges of the decimal parameters, with the text the details show. */
struct num_range {
    double min;       /* smallest accepted value */
    double max;       /* largest accepted value */
    const char *text; /* "min..max" as documented */
};

static const struct num_range rotate_range = {-360.0, 360.0, "-360..360"};
static const struct num_range blur_range = {0.3, 100.0, "0.3..100"};
static const struct num_range sharpen_range = {0.5, 10.0, "0.5..10"};

/* Index of the entry of names[0..count) equal to s[0..n), or -1. Entries
 * may be NULL (gaps in designated initialisers). */
static int lookup(const char *const *names, size_t count, const char *s, size_t n)
{
    for (size_t i = 0; i < count; i++) {
        if (names[i] && strlen(names[i]) == n && memcmp(names[i], s, n) == 0)
            return (int)i;
    }
    return -1;
}

/* The format a client may name (never "source"); "jpg" is jpeg. */
static int format_lookup(const char *s, size_t n)
{
    if (n == 3 && memcmp(s, "jpg", 3) == 0)
        return OPS_FORMAT_JPEG;
    int f = lookup(format_names, COUNT(format_names), s, n);
    return f == OPS_FORMAT_SOURCE ? -1 : f;
}

const char *ops_format_name(enum ops_format format)
{
    if ((unsigned)format >= COUNT(format_names))
        return "unknown";
    return format_names[format];
}

int ops_format_from_name(const char *name)
{
    if (!name)
        return -1;
    return format_lookup(name, strlen(name));
}

const char *ops_fit_name(enum ops_fit fit)
{
    if ((unsigned)fit >= COUNT(fit_names))
        return "unknown";
    return fit_names[fit];
}

const char *ops_gravity_name(enum ops_gravity gravity)
{
    if ((unsigned)gravity >= COUNT(gravity_names))
        return "unknown";
    return gravity_names[gravity];
}

/* ---- error details -------------------------------------------------------- */

#define QUOTE_MAX 40 /* client bytes shown in a detail, before "..." */

/* Copies s[0..n) into out for an error detail: printable ASCII as is, any
 * other byte as %XX (so the detail stays valid UTF-8 and one line), cut
 * after QUOTE_MAX source bytes with "..."; `more` says s was already cut.
 * out must hold QUOTE_MAX * 3 + 4 bytes. */
#define QUOTE_BUF (QUOTE_MAX * 3 + 4)
static void quote(const char *s, size_t n, bool more, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t j = 0;
    size_t i;

    for (i = 0; i < n && i < QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '%') {
            out[j++] = (char)c;
        } else {
            out[j++] = '%';
            out[j++] = hex[c >> 4];
            out[j++] = hex[c & 15];
        }
    }
    if (i < n || more) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
}

/* ---- numbers -------------------------------------------------------------- */

/* Longest number text accepted: more digits than any valid value needs. */
#define NUMBER_MAX 32

/* strtod and printf follow LC_NUMERIC, which a library (or a future main)
 * may set to a locale whose decimal point is ','. Numbers on the wire always
 * use '.', so they are converted in a private "C" locale. */
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale = (locale_t)0;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

/* The "C" locale, or (locale_t)0 if it could not be made: then the global
 * locale is used, and the grammar checks plus the end-pointer check turn a
 * ',' locale into a refused number, never a wrong one. */
static locale_t number_locale(void)
{
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale;
}

/* A non-negative decimal integer: [0-9]+ only (no sign, space or hex). */
static int parse_uint(const char *s, size_t n, long *out)
{
    char buf[NUMBER_MAX + 1];
    char *end = NULL;

    if (n == 0 || n > NUMBER_MAX)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno != 0 || end != buf + n)
        return -1;
    *out = v;
    return 0;
}

/* A decimal number: -?[0-9]+(\.[0-9]+)? (no '+', exponent, hex, inf or
 * nan, no bare '.'). -0 becomes 0 so that it prints like 0. */
static int parse_decimal(const char *s, size_t n, double *out)
{
    char buf[NUMBER_MAX + 1];
    char *end = NULL;
    size_t i = 0;
    size_t digits = 0;

    if (n == 0 || n > NUMBER_MAX)
        return -1;
    if (s[i] == '-')
        i++;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    if (digits == 0)
        return -1;
    if (i < n && s[i] == '.') {
        i++;
        digits = 0;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            digits++;
        if (digits == 0)
            return -1;
    }
    if (i != n)
        return -1;

    memcpy(buf, s, n);
    buf[n] = '\0';
    locale_t loc = number_locale();
    errno = 0;
    double v = loc ? strtod_l(buf, &end, loc) : strtod(buf, &end);
    if (errno != 0 || end != buf + n || !isfinite(v))
        return -1;
    if (v == 0.0)
        v = 0.0;
    *out = v;
    return 0;
}

static bool in_range(double v, const struct num_range *r)
{
    return isfinite(v) && v >= r->min && v <= r->max;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RRGGBB or RRGGBBAA, hex digits in either case, nothing else (no '#'). */
static int parse_rgba(const char *s, size_t n, struct ops_rgba *out)
{
    uint8_t ch[4] = {0, 0, 0, 255};

    if (n != 6 && n != 8)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]);
        int lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        ch[i] = (uint8_t)(hi * 16 + lo);
    }
    out->r = ch[0];
    out->g = ch[1];
    out->b = ch[2];
    out->a = ch[3];
    return 0;
}

/* ---- plans ---------------------------------------------------------------- */

static const struct ops_rgba default_background = {0, 0, 0, 255};

static void resize_defaults(struct ops_resize *r)
{
    memset(r, 0, sizeof(*r));
    r->fit = OPS_FIT_INSIDE;
    r->enlarge = false;
    r->gravity = OPS_GRAVITY_CENTRE;
    r->background = default_background;
    r->background_given = false;
}

void ops_plan_init(struct ops_plan *plan)
{
    memset(plan, 0, sizeof(*plan));
    plan->nsteps = 0;
    plan->output.format = OPS_FORMAT_SOURCE;
    plan->output.quality = OPS_DEFAULT_Q;
    plan->output.quality_given = false;
    plan->output.strip = false;
    plan->from_url = false;
}

bool ops_plan_is_empty(const struct ops_plan *plan)
{
    return plan->nsteps == 0 && plan->output.format == OPS_FORMAT_SOURCE &&
           !plan->output.quality_given && !plan->output.strip;
}

/* ---- URL form ------------------------------------------------------------- */

/* The query parameters. `sig` is not here: it is skipped before lookup. */
enum qparam {
    Q_CROP,
    Q_W,
    Q_H,
    Q_FIT,
    Q_ENLARGE,
    Q_GRAVITY,
    Q_ROTATE,
    Q_BG,
    Q_FLIP,
    Q_BLUR,
    Q_SHARPEN,
    Q_FORMAT,
    Q_Q,
    Q_STRIP,
    Q_COUNT,
};

static const char *const qparam_names[Q_COUNT] = {
    [Q_CROP] = "crop",
    [Q_W] = "w",
    [Q_H] = "h",
    [Q_FIT] = "fit",
    [Q_ENLARGE] = "enlarge",
    [Q_GRAVITY] = "gravity",
    [Q_ROTATE] = "rotate",
    [Q_BG] = "bg",
    [Q_FLIP] = "flip",
    [Q_BLUR] = "blur",
    [Q_SHARPEN] = "sharpen",
    [Q_FORMAT] = "format",
    [Q_Q] = "q",
    [Q_STRIP] = "strip",
};

/* Decoded names longer than this are unknown, values longer than this are
 * invalid: the longest valid value is a crop of four 6-digit numbers. */
#define QNAME_MAX  64
#define QVALUE_MAX 64

/* What the query said, before it becomes steps in the fixed order. */
struct qstate {
    bool seen[Q_COUNT];     /* each parameter at most once */
    struct ops_crop crop;   /* crop= */
    int w;                  /* w=, 0 when not given */
    int h;                  /* h=, 0 when not given */
    enum ops_fit fit;       /* fit= */
    bool enlarge;           /* enlarge= */
    enum ops_gravity grav;  /* gravity= */
    double rotate;          /* rotate= */
    struct ops_rgba bg;     /* bg= */
    enum ops_flip flip;     /* flip= */
    double blur;            /* blur= */
    double sharpen;         /* sharpen= */
    struct ops_output *out; /* the plan's output, filled directly */
};

/* Percent-decodes s[0..n) (RFC 3986 §2.1; '+' is a space, as in HTML
 * forms) into dst, storing at most cap bytes; *len gets the full decoded
 * length, which exceeds cap when dst was too small. Returns -1 on a '%'
 * not followed by two hex digits. */
static int pct_decode(const char *s, size_t n, char *dst, size_t cap, size_t *len)
{
    size_t j = 0;

    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3)
                return -1;
            int hi = hexval(s[i + 1]);
            int lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (j < cap)
            dst[j] = c;
        j++;
    }
    *len = j;
    return 0;
}

/* crop=x,y,w,h: exactly four integers separated by single commas. */
static int parse_crop(const char *s, size_t n, struct ops_crop *out)
{
    long v[4];
    size_t start = 0;

    for (int k = 0; k < 4; k++) {
        size_t end = start;
        while (end < n && s[end] != ',')
            end++;
        if ((k < 3) != (end < n))
            return -1; /* too few or too many fields */
        if (parse_uint(s + start, end - start, &v[k]) < 0)
            return -1;
        if (v[k] < (k < 2 ? 0 : 1) || v[k] > OPS_MAX_DIMENSION)
            return -1;
        start = end + 1;
    }
    out->x = (int)v[0];
    out->y = (int)v[1];
    out->width = (int)v[2];
    out->height = (int)v[3];
    return 0;
}

static int bad(struct util_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* util_error_set with UTIL_ERR_INVALID_OPERATION; returns -1. */
static int bad(struct util_error *err, const char *fmt, ...)
{
    char detail[sizeof(((struct util_error *)0)->detail)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return util_error_set(err, UTIL_ERR_INVALID_OPERATION, "%s", detail);
}

/* 0 or 1, for enlarge= and strip=. */
static int parse_flag(const char *v, size_t n, bool *out)
{
    if (n != 1 || (v[0] != '0' && v[0] != '1'))
        return -1;
    *out = v[0] == '1';
    return 0;
}

/* Parses the value of parameter p into q. v[0..n) is decoded; n is 0 when
 * the value was missing or too long, which no parameter accepts. */
static int query_value(struct qstate *q, enum qparam p, const char *v, size_t n,
                       struct util_error *err)
{
    long l = 0;
    double d = 0.0;
    int e = 0;

    switch (p) {
    case Q_CROP:
        if (parse_crop(v, n, &q->crop) < 0)
            return bad(err, "crop must be x,y,w,h: integers, x and y 0..%d, w and h 1..%d",
                       OPS_MAX_DIMENSION, OPS_MAX_DIMENSION);
        return 0;
    case Q_W:
    case Q_H:
        if (parse_uint(v, n, &l) < 0 || l < 1 || l > OPS_MAX_DIMENSION)
            return bad(err, "%s must be an integer 1..%d", qparam_names[p], OPS_MAX_DIMENSION);
        if (p == Q_W)
            q->w = (int)l;
        else
            q->h = (int)l;
        return 0;
    case Q_FIT:
        e = lookup(fit_names, COUNT(fit_names), v, n);
        if (e < 0)
            return bad(err, "fit must be one of " FIT_LIST);
        q->fit = (enum ops_fit)e;
        return 0;
    case Q_ENLARGE:
        if (parse_flag(v, n, &q->enlarge) < 0)
            return bad(err, "enlarge must be 0 or 1");
        return 0;
    case Q_GRAVITY:
        e = lookup(gravity_names, COUNT(gravity_names), v, n);
        if (e < 0)
            return bad(err, "gravity must be one of " GRAVITY_LIST);
        q->grav = (enum ops_gravity)e;
        return 0;
    case Q_ROTATE:
        if (parse_decimal(v, n, &d) < 0 || !in_range(d, &rotate_range))
            return bad(err, "rotate must be a number %s", rotate_range.text);
        q->rotate = d;
        return 0;
    case Q_BG:
        if (parse_rgba(v, n, &q->bg) < 0)
            return bad(err, "bg must be RRGGBB or RRGGBBAA (hex)");
        return 0;
    case Q_FLIP:
        if (n != 1 || (v[0] != 'h' && v[0] != 'v'))
            return bad(err, "flip must be h or v");
        q->flip = v[0] == 'h' ? OPS_FLIP_HORIZONTAL : OPS_FLIP_VERTICAL;
        return 0;
    case Q_BLUR:
        if (parse_decimal(v, n, &d) < 0 || !in_range(d, &blur_range))
            return bad(err, "blur must be a number %s", blur_range.text);
        q->blur = d;
        return 0;
    case Q_SHARPEN:
        if (parse_decimal(v, n, &d) < 0 || !in_range(d, &sharpen_range))
            return bad(err, "sharpen must be a number %s", sharpen_range.text);
        q->sharpen = d;
        return 0;
    case Q_FORMAT:
        e = format_lookup(v, n);
        if (e < 0)
            return bad(err, "format must be one of " FORMAT_LIST);
        q->out->format = (enum ops_format)e;
        return 0;
    case Q_Q:
        if (parse_uint(v, n, &l) < 0 || l < 1 || l > 100)
            return bad(err, "q must be an integer 1..100");
        q->out->quality = (int)l;
        q->out->quality_given = true;
        return 0;
    case Q_STRIP:
        if (parse_flag(v, n, &q->out->strip) < 0)
            return bad(err, "strip must be 0 or 1");
        return 0;
    case Q_COUNT:
        break;
    }
    return bad(err, "internal: parameter %d", (int)p);
}

/* One `name[=value]` segment of the query, seg[0..n), still encoded. */
static int query_param(struct qstate *q, const char *seg, size_t n, struct util_error *err)
{
    char name[QNAME_MAX];
    char value[QVALUE_MAX];
    char shown[QUOTE_BUF];
    size_t namelen = 0;
    size_t valuelen = 0;
    const char *eq = memchr(seg, '=', n);
    size_t rawnamelen = eq ? (size_t)(eq - seg) : n;

    if (pct_decode(seg, rawnamelen, name, sizeof(name), &namelen) < 0)
        return bad(err, "malformed percent-encoding in a parameter name");
    if (namelen == 0)
        return bad(err, "empty parameter name");
    if (namelen == 3 && memcmp(name, "sig", 3) == 0)
        return 0; /* checked on the raw query before parsing */

    int p = namelen <= sizeof(name) ? lookup(qparam_names, Q_COUNT, name, namelen) : -1;
    if (p < 0) {
        size_t kept = namelen < sizeof(name) ? namelen : sizeof(name);
        quote(name, kept, kept < namelen, shown);
        return bad(err, "unknown parameter '%s'", shown);
    }
    if (q->seen[p])
        return bad(err, "parameter '%s' given twice", qparam_names[p]);
    q->seen[p] = true;

    if (eq && pct_decode(eq + 1, n - rawnamelen - 1, value, sizeof(value), &valuelen) < 0)
        return bad(err, "malformed percent-encoding in the value of '%s'", qparam_names[p]);
    if (valuelen > sizeof(value))
        valuelen = 0; /* too long to be valid: report it as malformed */
    return query_value(q, (enum qparam)p, value, valuelen, err);
}

/* Checks what needs several parameters, then adds the steps in the fixed
 * order of DESIGN §3. */
static int query_finish(const struct qstate *q, struct ops_plan *plan, struct util_error *err)
{
    bool resize = q->seen[Q_W] || q->seen[Q_H];
    static const enum qparam resize_only[] = {Q_FIT, Q_ENLARGE, Q_GRAVITY};

    if (!resize) {
        for (size_t i = 0; i < COUNT(resize_only); i++) {
            if (q->seen[resize_only[i]])
                return bad(err, "%s needs w or h", qparam_names[resize_only[i]]);
        }
    }
    bool contain = resize && q->fit == OPS_FIT_CONTAIN;
    if (q->seen[Q_BG] && !q->seen[Q_ROTATE] && !contain)
        return bad(err, "bg needs rotate or fit=contain");

    if (q->seen[Q_CROP]) {
        struct ops_step *s = &plan->steps[plan->nsteps++];
        s->kind = OPS_STEP_CROP;
        s->crop = q->crop;
    }
    if (resize) {
        struct ops_step *s = &plan->steps[plan->nsteps++];
        s->kind = OPS_STEP_RESIZE;
        resize_defaults(&s->resize);
        s->resize.width = q->w;
        s->resize.height = q->h;
        s->resize.fit = q->fit;
        s->resize.enlarge = q->enlarge;
        s->resize.gravity = q->grav;
        if (contain && q->seen[Q_BG]) {
            s->resize.background = q->bg;
            s->resize.background_given = true;
        }
    }
    if (q->seen[Q_ROTATE]) {
        struct ops_step *s = &plan->steps[plan->nsteps++];
        s->kind = OPS_STEP_ROTATE;
        s->rotate.angle = q->rotate;
        s->rotate.background = q->seen[Q_BG] ? q->bg : default_background;
        s->rotate.background_given = q->seen[Q_BG];
    }
    if (q->seen[Q_FLIP]) {
        struct ops_step *s = &plan->steps[plan->nsteps++];
        s->kind = OPS_STEP_FLIP;
        s->flip = q->flip;
    }
    if (q->seen[Q_BLUR]) {
        struct ops_step *s = &plan->steps[plan->nsteps++];
        s->kind = OPS_STEP_BLUR;
        s->blur.sigma = q->blur;
    }
    if (q->seen[Q_SHARPEN]) {
        struct ops_step *s = &plan->steps[plan->nsteps++];
        s->kind = OPS_STEP_SHARPEN;
        s->sharpen.sigma = q->sharpen;
    }
    return 0;
}

int ops_parse_query(const char *raw_query, struct ops_plan *plan, struct util_error *err)
{
    struct qstate q;
    const char *p = raw_query;

    ops_plan_init(plan);
    plan->from_url = true;
    memset(&q, 0, sizeof(q));
    q.fit = OPS_FIT_INSIDE;
    q.grav = OPS_GRAVITY_CENTRE;
    q.bg = default_background;
    q.out = &plan->output;

    if (!p || *p == '\0')
        return 0;
    for (;;) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (query_param(&q, p, n, err) < 0)
            goto fail;
        if (!amp)
            break;
        p = amp + 1;
    }
    if (query_finish(&q, plan, err) < 0)
        goto fail;
    return 0;

fail:
    ops_plan_init(plan);
    plan->from_url = true;
    return -1;
}

/* ---- JSON form ------------------------------------------------------------ */

/* Where a value sits, for details: "operations[3]" or "output". */
#define WHERE_MAX 32

/* Keys allowed in each object, NULL-terminated. */
static const char *const crop_keys[] = {"op", "x", "y", "width", "height", NULL};
static const char *const resize_keys[] = {"op",      "width",   "height",     "fit",
                                          "enlarge", "gravity", "background", NULL};
static const char *const rotate_keys[] = {"op", "angle", "background", NULL};
static const char *const flip_keys[] = {"op", "direction", NULL};
static const char *const sigma_keys[] = {"op", "sigma", NULL};
static const char *const output_keys[] = {"format", "quality", "strip", NULL};

/* The operations of the JSON form. */
struct json_op {
    const char *name;        /* value of "op" */
    enum ops_step_kind kind; /* the step it makes */
    const char *const *keys; /* keys allowed next to "op" */
};

static const struct json_op json_ops[] = {
    {"crop", OPS_STEP_CROP, crop_keys},       {"resize", OPS_STEP_RESIZE, resize_keys},
    {"rotate", OPS_STEP_ROTATE, rotate_keys}, {"flip", OPS_STEP_FLIP, flip_keys},
    {"blur", OPS_STEP_BLUR, sigma_keys},      {"sharpen", OPS_STEP_SHARPEN, sigma_keys},
};

/* Rejects any key of obj not in allowed. Keys are compared with their full
 * length: a key with an embedded NUL (JSON_ALLOW_NUL) must not pass as its
 * prefix. */
static int json_check_keys(const json_t *obj, const char *where, const char *const *allowed,
                           struct util_error *err)
{
    /* jansson's iterator API takes a non-const object; nothing is modified. */
    void *it = json_object_iter((json_t *)obj);

    for (; it; it = json_object_iter_next((json_t *)obj, it)) {
        const char *key = json_object_iter_key(it);
#if JANSSON_VERSION_HEX >= 0x020e00
        size_t keylen = json_object_iter_key_len(it);
#else
        size_t keylen = strlen(key);
#endif
        bool known = false;
        for (size_t i = 0; allowed[i]; i++) {
            if (strlen(allowed[i]) == keylen && memcmp(allowed[i], key, keylen) == 0)
                known = true;
        }
        if (!known) {
            char shown[QUOTE_BUF];
            quote(key, keylen, false, shown);
            return bad(err, "unknown key '%s.%s'", where, shown);
        }
    }
    return 0;
}

/* Reads integer member `key` into *out if present. Returns 1 if it was
 * there, 0 if absent, -1 (err set) if not an integer in min..max. */
static int json_int(const json_t *obj, const char *where, const char *key, int min, int max,
                    int *out, struct util_error *err)
{
    const json_t *v = json_object_get(obj, key);

    if (!v)
        return 0;
    if (!json_is_integer(v))
        return bad(err, "%s.%s must be an integer %d..%d", where, key, min, max);
    json_int_t i = json_integer_value(v);
    if (i < min || i > max)
        return bad(err, "%s.%s must be an integer %d..%d", where, key, min, max);
    *out = (int)i;
    return 1;
}

/* As json_int, for a member that must be there. */
static int json_int_required(const json_t *obj, const char *where, const char *key, int min,
                             int max, int *out, struct util_error *err)
{
    int got = json_int(obj, where, key, min, max, out, err);

    if (got == 0)
        return bad(err, "%s.%s is required", where, key);
    return got;
}

/* Reads a required number member (integer or real) within r. */
static int json_number(const json_t *obj, const char *where, const char *key,
                       const struct num_range *r, double *out, struct util_error *err)
{
    const json_t *v = json_object_get(obj, key);

    if (!v)
        return bad(err, "%s.%s is required", where, key);
    if (!json_is_number(v))
        return bad(err, "%s.%s must be a number %s", where, key, r->text);
    double d = json_number_value(v);
    if (!in_range(d, r))
        return bad(err, "%s.%s must be a number %s", where, key, r->text);
    if (d == 0.0)
        d = 0.0; /* -0.0 prints like 0 */
    *out = d;
    return 1;
}

/* Reads a boolean member if present: 1 present, 0 absent, -1 error. */
static int json_flag(const json_t *obj, const char *where, const char *key, bool *out,
                     struct util_error *err)
{
    const json_t *v = json_object_get(obj, key);

    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return bad(err, "%s.%s must be true or false", where, key);
    *out = json_is_true(v);
    return 1;
}

/* Reads a string member naming one of names[0..count) if present: 1
 * present (index in *out), 0 absent, -1 error (list shows the choices). */
static int json_enum(const json_t *obj, const char *where, const char *key,
                     const char *const *names, size_t count, const char *list, int *out,
                     struct util_error *err)
{
    const json_t *v = json_object_get(obj, key);

    if (!v)
        return 0;
    int e = -1;
    if (json_is_string(v))
        e = lookup(names, count, json_string_value(v), json_string_length(v));
    if (e < 0)
        return bad(err, "%s.%s must be one of %s", where, key, list);
    *out = e;
    return 1;
}

/* Reads a "RRGGBB[AA]" background member if present: 1, 0 or -1. */
static int json_background(const json_t *obj, const char *where, struct ops_rgba *out,
                           struct util_error *err)
{
    const json_t *v = json_object_get(obj, "background");

    if (!v)
        return 0;
    if (!json_is_string(v) || parse_rgba(json_string_value(v), json_string_length(v), out) < 0)
        return bad(err, "%s.background must be a string RRGGBB or RRGGBBAA (hex)", where);
    return 1;
}

static int json_resize(const json_t *obj, const char *where, struct ops_resize *r,
                       struct util_error *err)
{
    int e = 0;
    int got = 0;

    resize_defaults(r);
    if (json_int(obj, where, "width", 1, OPS_MAX_DIMENSION, &r->width, err) < 0)
        return -1;
    if (json_int(obj, where, "height", 1, OPS_MAX_DIMENSION, &r->height, err) < 0)
        return -1;
    got = json_enum(obj, where, "fit", fit_names, COUNT(fit_names), FIT_LIST, &e, err);
    if (got < 0)
        return -1;
    if (got)
        r->fit = (enum ops_fit)e;
    if (json_flag(obj, where, "enlarge", &r->enlarge, err) < 0)
        return -1;
    got = json_enum(obj, where, "gravity", gravity_names, COUNT(gravity_names), GRAVITY_LIST, &e,
                    err);
    if (got < 0)
        return -1;
    if (got)
        r->gravity = (enum ops_gravity)e;
    got = json_background(obj, where, &r->background, err);
    if (got < 0)
        return -1;
    r->background_given = got == 1;
    if (r->width == 0 && r->height == 0)
        return bad(err, "%s: resize needs width or height", where);
    if (r->background_given && r->fit != OPS_FIT_CONTAIN)
        return bad(err, "%s.background needs fit contain", where);
    return 0;
}

/* One element of the operations array. */
static int json_step(const json_t *obj, const char *where, struct ops_step *step,
                     struct util_error *err)
{
    const struct json_op *def = NULL;
    char shown[QUOTE_BUF];
    int got = 0;

    if (!json_is_object(obj))
        return bad(err, "%s must be an object", where);
    const json_t *op = json_object_get(obj, "op");
    if (!op)
        return bad(err, "%s.op is required", where);
    if (!json_is_string(op))
        return bad(err, "%s.op must be a string, one of " OP_LIST, where);
    const char *name = json_string_value(op);
    size_t namelen = json_string_length(op);
    for (size_t i = 0; i < COUNT(json_ops); i++) {
        if (strlen(json_ops[i].name) == namelen && memcmp(json_ops[i].name, name, namelen) == 0)
            def = &json_ops[i];
    }
    if (!def) {
        quote(name, namelen, false, shown);
        return bad(err, "%s.op '%s' is not one of " OP_LIST, where, shown);
    }
    if (json_check_keys(obj, where, def->keys, err) < 0)
        return -1;

    memset(step, 0, sizeof(*step));
    step->kind = def->kind;
    switch (def->kind) {
    case OPS_STEP_CROP:
        if (json_int_required(obj, where, "x", 0, OPS_MAX_DIMENSION, &step->crop.x, err) < 0 ||
            json_int_required(obj, where, "y", 0, OPS_MAX_DIMENSION, &step->crop.y, err) < 0 ||
            json_int_required(obj, where, "width", 1, OPS_MAX_DIMENSION, &step->crop.width, err) <
                0 ||
            json_int_required(obj, where, "height", 1, OPS_MAX_DIMENSION, &step->crop.height, err) <
                0)
            return -1;
        return 0;
    case OPS_STEP_RESIZE:
        return json_resize(obj, where, &step->resize, err);
    case OPS_STEP_ROTATE:
        if (json_number(obj, where, "angle", &rotate_range, &step->rotate.angle, err) < 0)
            return -1;
        step->rotate.background = default_background;
        got = json_background(obj, where, &step->rotate.background, err);
        if (got < 0)
            return -1;
        step->rotate.background_given = got == 1;
        return 0;
    case OPS_STEP_FLIP: {
        static const char *const directions[] = {
            [OPS_FLIP_HORIZONTAL] = "horizontal", [OPS_FLIP_VERTICAL] = "vertical"};
        int e = 0;
        got = json_enum(obj, where, "direction", directions, COUNT(directions),
                        "horizontal, vertical", &e, err);
        if (got < 0)
            return -1;
        if (got == 0)
            return bad(err, "%s.direction is required", where);
        step->flip = (enum ops_flip)e;
        return 0;
    }
    case OPS_STEP_BLUR:
        if (json_number(obj, where, "sigma", &blur_range, &step->blur.sigma, err) < 0)
            return -1;
        return 0;
    case OPS_STEP_SHARPEN:
        if (json_number(obj, where, "sigma", &sharpen_range, &step->sharpen.sigma, err) < 0)
            return -1;
        return 0;
    }
    return bad(err, "internal: step kind %d", (int)def->kind);
}

/* The output object; NULL or JSON null means none was given. */
static int json_output(const json_t *obj, struct ops_output *out, struct util_error *err)
{
    if (!obj || json_is_null(obj))
        return 0;
    if (!json_is_object(obj))
        return bad(err, "output must be an object");
    if (json_check_keys(obj, "output", output_keys, err) < 0)
        return -1;

    const json_t *f = json_object_get(obj, "format");
    if (f) {
        int e = -1;
        if (json_is_string(f))
            e = format_lookup(json_string_value(f), json_string_length(f));
        /* auto needs a request's Accept header; a job has none. */
        if (e < 0 || e == OPS_FORMAT_AUTO)
            return bad(err, "output.format must be one of " JFORMAT_LIST);
        out->format = (enum ops_format)e;
    }
    int got = json_int(obj, "output", "quality", 1, 100, &out->quality, err);
    if (got < 0)
        return -1;
    out->quality_given = got == 1;
    if (json_flag(obj, "output", "strip", &out->strip, err) < 0)
        return -1;
    return 0;
}

int ops_parse_json(const json_t *operations, const json_t *output, struct ops_plan *plan,
                   struct util_error *err)
{
    ops_plan_init(plan);
    if (!json_is_array(operations)) {
        bad(err, "operations must be an array");
        goto fail;
    }
    size_t n = json_array_size(operations);
    if (n > OPS_MAX_STEPS) {
        bad(err, "operations must have at most %d entries", OPS_MAX_STEPS);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        char where[WHERE_MAX];
        snprintf(where, sizeof(where), "operations[%zu]", i);
        if (json_step(json_array_get(operations, i), where, &plan->steps[i], err) < 0)
            goto fail;
        plan->nsteps++;
    }
    if (json_output(output, &plan->output, err) < 0)
        goto fail;
    return 0;

fail:
    ops_plan_init(plan);
    return -1;
}

/* ---- canonical text ------------------------------------------------------- */

/* An append-only text buffer that remembers running out of room. */
struct sbuf {
    char *p;       /* the caller's buffer */
    size_t len;    /* bytes written, excluding the NUL */
    size_t cap;    /* size of p */
    bool overflow; /* something did not fit */
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;

    if (b->overflow)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len) {
        b->overflow = true;
        return;
    }
    b->len += (size_t)n;
}

/* The shortest "%.Ng" text (N >= 3, so no exponent for |v| < 1000) that
 * reads back as exactly v: 90 and 90.0 print "90", distinct values never
 * print alike. Printed and read in the "C" locale. out holds 32 bytes. */
static void format_number(double v, char *out, size_t outlen)
{
    locale_t loc = number_locale();
    locale_t old = loc ? uselocale(loc) : (locale_t)0;

    for (int prec = 3; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, v);
        char *end = NULL;
        double back = loc ? strtod_l(out, &end, loc) : strtod(out, &end);
        if (back == v)
            break;
    }
    if (old)
        uselocale(old);
}

static void format_background(bool given, struct ops_rgba c, char *out, size_t outlen)
{
    if (!given)
        snprintf(out, outlen, "default");
    else
        snprintf(out, outlen, "%02x%02x%02x%02x", c.r, c.g, c.b, c.a);
}

static void canonical_step(struct sbuf *b, const struct ops_step *s)
{
    char num[32];
    char bg[16];

    switch (s->kind) {
    case OPS_STEP_CROP:
        sb_printf(b, "crop:x=%d,y=%d,w=%d,h=%d", s->crop.x, s->crop.y, s->crop.width,
                  s->crop.height);
        return;
    case OPS_STEP_RESIZE:
        sb_printf(b, "resize:w=%d,h=%d,fit=%s,enlarge=%d,gravity=%s", s->resize.width,
                  s->resize.height, ops_fit_name(s->resize.fit), s->resize.enlarge ? 1 : 0,
                  ops_gravity_name(s->resize.gravity));
        /* Only contain pads, so only there does the background change the result. */
        if (s->resize.fit == OPS_FIT_CONTAIN) {
            format_background(s->resize.background_given, s->resize.background, bg, sizeof(bg));
            sb_printf(b, ",bg=%s", bg);
        }
        return;
    case OPS_STEP_ROTATE:
        format_number(s->rotate.angle, num, sizeof(num));
        format_background(s->rotate.background_given, s->rotate.background, bg, sizeof(bg));
        sb_printf(b, "rotate:%s,bg=%s", num, bg);
        return;
    case OPS_STEP_FLIP:
        sb_printf(b, "flip:%s", s->flip == OPS_FLIP_HORIZONTAL ? "h" : "v");
        return;
    case OPS_STEP_BLUR:
        format_number(s->blur.sigma, num, sizeof(num));
        sb_printf(b, "blur:%s", num);
        return;
    case OPS_STEP_SHARPEN:
        format_number(s->sharpen.sigma, num, sizeof(num));
        sb_printf(b, "sharpen:%s", num);
        return;
    }
    sb_printf(b, "unknown:%d", (int)s->kind);
}

int ops_plan_canonical(const struct ops_plan *plan, char *out, size_t outlen)
{
    struct sbuf b = {out, 0, outlen, false};

    if (!out || outlen == 0)
        return -1;
    out[0] = '\0';
    if (ops_plan_is_empty(plan)) {
        sb_printf(&b, "original");
        return b.overflow ? -1 : 0;
    }
    for (int i = 0; i < plan->nsteps && i < OPS_MAX_STEPS; i++) {
        canonical_step(&b, &plan->steps[i]);
        sb_printf(&b, "|");
    }
    sb_printf(&b, "out:format=%s,q=%d,strip=%d", ops_format_name(plan->output.format),
              plan->output.quality, plan->output.strip ? 1 : 0);
    if (b.overflow) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}
