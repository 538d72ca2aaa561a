/*
 * Executing a plan with libvips (ops.h). How a plan runs is decided here
 * and nowhere else.
 *
 *  1. The source is opened lazily after the header checks (ops_open_checked:
 *     allow-list, pixel count before any pixel is decoded).
 *  2. The whole plan is simulated on sizes alone (ops_plan_geometry), so an
 *     absurd output is refused before anything is allocated, and a crop
 *     outside the image is a clean 400.
 *  3. If the first step is a resize, libvips' thumbnail path does the load,
 *     the EXIF auto-orientation, the ICC import/export to sRGB and the resize
 *     in one go, shrinking on load (a 22 MP JPEG resized to 800 px is
 *     decoded at 1/4 or 1/8 scale by libjpeg and never exists at full size).
 *     Otherwise the image is loaded, auto-oriented and converted to sRGB.
 *  4. The remaining steps run in order on each frame (animated GIF/WebP keep
 *     every frame when the output can hold them), then the result is encoded.
 *  5. The deadline is watched on the final image: libvips computes
 *     everything on demand from there, so killing it stops all the work.
 */
#include <math.h>
#include <string.h>
#include <vips/vips.h>

#include "ops/internal.h"

/* AVIF encoding at libvips' default effort (4) takes ~0.6 s for 1200x800
 * here; effort 2 is several times faster for a few percent more bytes. */
#define AVIF_EFFORT     2
#define WEBP_EFFORT     4
#define PNG_COMPRESSION 6

static const char *format_names[] = {
    [OPS_FORMAT_JPEG] = "jpeg", [OPS_FORMAT_PNG] = "png", [OPS_FORMAT_WEBP] = "webp",
    [OPS_FORMAT_AVIF] = "avif", [OPS_FORMAT_GIF] = "gif", [OPS_FORMAT_TIFF] = "tiff",
};

/* ---- format resolution -------------------------------------------------- */

/* q value of a media type in an Accept header (RFC 9110 §12.5.1): -1 when
 * the type is not named (wildcards name nothing here, DESIGN §3). */
static double accept_q(const char *accept, const char *type)
{
    double best = -1;
    const char *p = accept;
    size_t tlen = strlen(type);
    while (p && *p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *semi = memchr(p, ';', len);
        size_t name_len = semi ? (size_t)(semi - p) : len;
        while (name_len > 0 && p[name_len - 1] == ' ')
            name_len--;
        if (name_len == tlen && g_ascii_strncasecmp(p, type, tlen) == 0) {
            double q = 1.0;
            for (const char *s = semi; s && s < p + len;
                 s = memchr(s + 1, ';', (size_t)(p + len - s - 1))) {
                const char *v = s + 1;
                while (*v == ' ')
                    v++;
                if ((v[0] == 'q' || v[0] == 'Q') && v[1] == '=')
                    q = g_ascii_strtod(v + 2, NULL);
            }
            if (q > best)
                best = q;
        }
        p = end ? end + 1 : NULL;
    }
    return best;
}

enum ops_format ops_resolve_format(const struct ops_plan *plan, const char *source_format,
                                   const char *accept)
{
    enum ops_format f = plan->output.format;
    if (f == OPS_FORMAT_AUTO) {
        if (accept && accept_q(accept, "image/avif") > 0)
            return OPS_FORMAT_AVIF;
        if (accept && accept_q(accept, "image/webp") > 0)
            return OPS_FORMAT_WEBP;
        f = OPS_FORMAT_SOURCE;
    }
    if (f != OPS_FORMAT_SOURCE)
        return f;
    /* HEIC is a capture format few clients display: its variants are JPEG. */
    int k = ops_format_from_name(source_format);
    if (k < 0 || k == OPS_FORMAT_AUTO || strcmp(source_format, "heic") == 0)
        return OPS_FORMAT_JPEG;
    return (enum ops_format)k;
}

const char *ops_output_format_name(enum ops_format f)
{
    if (f >= OPS_FORMAT_JPEG && f <= OPS_FORMAT_TIFF)
        return format_names[f];
    return "jpeg";
}

static bool animated_output(enum ops_format f)
{
    return f == OPS_FORMAT_GIF || f == OPS_FORMAT_WEBP;
}

static bool alpha_output(enum ops_format f)
{
    return f != OPS_FORMAT_JPEG;
}

/* ---- geometry ----------------------------------------------------------- */

static int64_t round_dim(double v)
{
    int64_t r = (int64_t)llround(v);
    return r < 1 ? 1 : r;
}

void ops_resize_geometry(int64_t W, int64_t H, const struct ops_resize *r,
                         struct ops_resize_geometry *g)
{
    double w = r->width;
    double h = r->height;
    g->box_w = g->box_h = 0;
    if (r->width == 0 || r->height == 0) {
        /* One side given: the other follows the aspect; fit means nothing. */
        double s = r->width ? w / (double)W : h / (double)H;
        if (!r->enlarge && s > 1)
            s = 1;
        g->scaled_w = r->width && s == w / (double)W ? r->width : round_dim((double)W * s);
        g->scaled_h = r->height && s == h / (double)H ? r->height : round_dim((double)H * s);
        g->box_w = g->scaled_w;
        g->box_h = g->scaled_h;
        return;
    }
    double sx = w / (double)W;
    double sy = h / (double)H;
    switch (r->fit) {
    case OPS_FIT_INSIDE:
    case OPS_FIT_OUTSIDE: {
        double s = r->fit == OPS_FIT_INSIDE ? fmin(sx, sy) : fmax(sx, sy);
        if (!r->enlarge && s > 1)
            s = 1;
        g->scaled_w = s == sx ? r->width : round_dim((double)W * s);
        g->scaled_h = s == sy ? r->height : round_dim((double)H * s);
        g->box_w = g->scaled_w;
        g->box_h = g->scaled_h;
        return;
    }
    case OPS_FIT_COVER:
    case OPS_FIT_CONTAIN: {
        bool cover = r->fit == OPS_FIT_COVER;
        double s = cover ? fmax(sx, sy) : fmin(sx, sy);
        double bw = w, bh = h;
        if (!r->enlarge && s > 1) {
            /* The box shrinks, keeping its aspect, to what the source fills
             * at scale 1 (DESIGN §3). */
            bw = w / s;
            bh = h / s;
            s = 1;
        }
        g->box_w = round_dim(bw);
        g->box_h = round_dim(bh);
        int64_t iw = round_dim((double)W * s);
        int64_t ih = round_dim((double)H * s);
        if (cover) {
            g->scaled_w = iw < g->box_w ? g->box_w : iw;
            g->scaled_h = ih < g->box_h ? g->box_h : ih;
        } else {
            g->scaled_w = iw > g->box_w ? g->box_w : iw;
            g->scaled_h = ih > g->box_h ? g->box_h : ih;
        }
        return;
    }
    case OPS_FIT_FILL: {
        double bw = w, bh = h;
        double m = fmax(sx, sy);
        if (!r->enlarge && m > 1) {
            bw = w / m;
            bh = h / m;
        }
        g->box_w = g->scaled_w = round_dim(bw);
        g->box_h = g->scaled_h = round_dim(bh);
        return;
    }
    }
}

/* Canvas of a rotation by a non-multiple of 90 degrees (what vips_rotate
 * makes, rounded up). */
static void rotated_size(int64_t w, int64_t h, double angle, int64_t *ow, int64_t *oh)
{
    double a = angle * M_PI / 180.0;
    double c = fabs(cos(a)), s = fabs(sin(a));
    *ow = (int64_t)ceil((double)w * c + (double)h * s) + 1;
    *oh = (int64_t)ceil((double)w * s + (double)h * c) + 1;
}

static bool right_angle(double angle, int *quarter)
{
    double q = angle / 90.0;
    if (q != floor(q))
        return false;
    int k = ((int)q % 4 + 4) % 4;
    *quarter = k;
    return true;
}

int ops_plan_geometry(const struct ops_plan *plan, int64_t width, int64_t height, int64_t pages,
                      int64_t max_output_pixels, int64_t *out_w, int64_t *out_h,
                      struct util_error *err)
{
    int64_t w = width, h = height;
    for (int i = 0; i < plan->nsteps; i++) {
        const struct ops_step *st = &plan->steps[i];
        switch (st->kind) {
        case OPS_STEP_CROP: {
            const struct ops_crop *c = &st->crop;
            if ((int64_t)c->x + c->width > w || (int64_t)c->y + c->height > h)
                return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                                      "crop=%d,%d,%d,%d is outside the %lldx%lld image", c->x, c->y,
                                      c->width, c->height, (long long)w, (long long)h);
            w = c->width;
            h = c->height;
            break;
        }
        case OPS_STEP_RESIZE: {
            struct ops_resize_geometry g;
            ops_resize_geometry(w, h, &st->resize, &g);
            /* The scaled image exists before a cover crop: bound it too. */
            if (g.scaled_w * g.scaled_h * pages > max_output_pixels) {
                w = g.scaled_w;
                h = g.scaled_h;
                goto too_large;
            }
            w = g.box_w;
            h = g.box_h;
            break;
        }
        case OPS_STEP_ROTATE: {
            int q;
            if (right_angle(st->rotate.angle, &q)) {
                if (q % 2) {
                    int64_t t = w;
                    w = h;
                    h = t;
                }
            } else {
                rotated_size(w, h, st->rotate.angle, &w, &h);
            }
            break;
        }
        case OPS_STEP_FLIP:
        case OPS_STEP_BLUR:
        case OPS_STEP_SHARPEN:
            break;
        }
        if (w * h * pages > max_output_pixels)
            goto too_large;
    }
    *out_w = w;
    *out_h = h;
    return 0;
too_large:
    return util_error_set(
        err, UTIL_ERR_TOO_LARGE, "the result would be %lldx%lld%s; at most %lld pixels are allowed",
        (long long)w, (long long)h, pages > 1 ? " per frame" : "", (long long)max_output_pixels);
}

/* ---- pixel steps -------------------------------------------------------- */

/* Replaces *img by *out (consuming the reference) when rc is 0, or fails.
 * out is passed by address and read only here, after the call that sets it
 * has returned: the order in which C evaluates arguments is unspecified,
 * so take(img, &out, vips_x(..., &out)) could read out before vips_x wrote
 * it (libFuzzer's clang build did). */
static int take(VipsImage **img, VipsImage **out, int rc)
{
    if (rc != 0)
        return -1;
    g_object_unref(*img);
    *img = *out;
    return 0;
}

static const char *const META_BLOBS[] = {VIPS_META_ICC_NAME, VIPS_META_EXIF_NAME,
                                         VIPS_META_XMP_NAME, VIPS_META_IPTC_NAME};

/* Gives img its own copies of the metadata blobs. libvips 8.14's HEIF loader
 * attaches its ICC profile without copying it, and frees it when the loader
 * closes: once the pixels are copied to memory and the loader is unreffed,
 * encoding would read freed memory (found by ASan on AVIF/HEIC sources).
 * Call while the source pipeline is still alive. */
static int own_metadata(VipsImage *img)
{
    for (size_t i = 0; i < sizeof(META_BLOBS) / sizeof(META_BLOBS[0]); i++) {
        const void *data;
        size_t len;
        if (!vips_image_get_typeof(img, META_BLOBS[i]) ||
            vips_image_get_blob(img, META_BLOBS[i], &data, &len) != 0)
            continue;
        vips_image_set_blob_copy(img, META_BLOBS[i], data, len);
    }
    return 0;
}

/* strip=1: libvips 8.14's webpsave ignores its strip option (EXIF stays),
 * so the metadata is removed here, for every format alike. */
static int strip_metadata(VipsImage **img)
{
    VipsImage *copy;
    if (vips_copy(*img, &copy, NULL) != 0 || take(img, &copy, 0) != 0)
        return -1;
    for (size_t i = 0; i < sizeof(META_BLOBS) / sizeof(META_BLOBS[0]); i++)
        vips_image_remove(*img, META_BLOBS[i]);
    /* Savers rebuild EXIF from the parsed exif-ifd* fields: drop them too. */
    gchar **fields = vips_image_get_fields(*img);
    for (int i = 0; fields && fields[i]; i++)
        if (g_str_has_prefix(fields[i], "exif-") || g_str_has_prefix(fields[i], "xmp-") ||
            g_str_has_prefix(fields[i], "iptc-"))
            vips_image_remove(*img, fields[i]);
    g_strfreev(fields);
    return 0;
}

/* Converts to 8-bit sRGB (or 8-bit grey), honouring an embedded ICC
 * profile (CMYK and Display P3 JPEGs look right), keeping alpha. */
static int to_srgb(VipsImage **img, bool use_icc)
{
    VipsImage *out = NULL;
    VipsImage *in = *img;
    VipsInterpretation it = vips_image_guess_interpretation(in);
    bool has_icc = vips_image_get_typeof(in, VIPS_META_ICC_NAME) != 0;
    if (use_icc && (has_icc || it == VIPS_INTERPRETATION_CMYK)) {
        /* CMYK without a profile gets libvips' built-in CMYK profile. */
        if (vips_icc_transform(in, &out, "srgb", "embedded", TRUE, "input_profile",
                               it == VIPS_INTERPRETATION_CMYK ? "cmyk" : "srgb", "intent",
                               VIPS_INTENT_RELATIVE, "depth", 8, NULL) != 0) {
            /* A broken profile: fall back to a plain conversion. */
            vips_error_clear();
        } else if (take(img, &out, 0) != 0) {
            return -1;
        }
        /* The pixels are sRGB now: drop the old profile. */
        VipsImage *copy;
        if (vips_copy(*img, &copy, NULL) != 0 || take(img, &copy, 0) != 0)
            return -1;
        vips_image_remove(*img, VIPS_META_ICC_NAME);
        it = vips_image_guess_interpretation(*img);
    }
    if (it == VIPS_INTERPRETATION_B_W && (*img)->BandFmt == VIPS_FORMAT_UCHAR)
        return 0;
    if (it == VIPS_INTERPRETATION_sRGB && (*img)->BandFmt == VIPS_FORMAT_UCHAR)
        return 0;
    VipsInterpretation target = (it == VIPS_INTERPRETATION_B_W || it == VIPS_INTERPRETATION_GREY16)
                                    ? VIPS_INTERPRETATION_B_W
                                    : VIPS_INTERPRETATION_sRGB;
    if (take(img, &out, vips_colourspace(*img, &out, target, NULL)) != 0)
        return -1;
    if ((*img)->BandFmt != VIPS_FORMAT_UCHAR &&
        take(img, &out, vips_cast(*img, &out, VIPS_FORMAT_UCHAR, NULL)) != 0)
        return -1;
    return 0;
}

/* The background for padding and rotation, matched to the image's bands.
 * Not given: transparent when the image has alpha, else black. A given
 * colour with alpha < 255 adds an alpha band when the output can hold it. */
static int background(VipsImage **img, bool given, struct ops_rgba c, enum ops_format fmt,
                      double *bg, int *n)
{
    VipsImage *out;
    if (given && c.a < 255 && alpha_output(fmt) && !vips_image_hasalpha(*img)) {
        if (take(img, &out, vips_bandjoin_const1(*img, &out, 255, NULL)) != 0)
            return -1;
    }
    bool grey = (*img)->Bands <= 2;
    if (given && grey && (c.r != c.g || c.g != c.b)) {
        if (take(img, &out, vips_colourspace(*img, &out, VIPS_INTERPRETATION_sRGB, NULL)) != 0)
            return -1;
        grey = false;
    }
    bool alpha = vips_image_hasalpha(*img);
    int k = 0;
    if (grey) {
        bg[k++] = given ? c.r : 0;
    } else {
        bg[k++] = given ? c.r : 0;
        bg[k++] = given ? c.g : 0;
        bg[k++] = given ? c.b : 0;
    }
    if (alpha)
        bg[k++] = given ? c.a : 0;
    *n = k;
    return 0;
}

static VipsCompassDirection compass(enum ops_gravity g)
{
    switch (g) {
    case OPS_GRAVITY_NORTH:
        return VIPS_COMPASS_DIRECTION_NORTH;
    case OPS_GRAVITY_NORTHEAST:
        return VIPS_COMPASS_DIRECTION_NORTH_EAST;
    case OPS_GRAVITY_EAST:
        return VIPS_COMPASS_DIRECTION_EAST;
    case OPS_GRAVITY_SOUTHEAST:
        return VIPS_COMPASS_DIRECTION_SOUTH_EAST;
    case OPS_GRAVITY_SOUTH:
        return VIPS_COMPASS_DIRECTION_SOUTH;
    case OPS_GRAVITY_SOUTHWEST:
        return VIPS_COMPASS_DIRECTION_SOUTH_WEST;
    case OPS_GRAVITY_WEST:
        return VIPS_COMPASS_DIRECTION_WEST;
    case OPS_GRAVITY_NORTHWEST:
        return VIPS_COMPASS_DIRECTION_NORTH_WEST;
    case OPS_GRAVITY_CENTRE:
    case OPS_GRAVITY_ENTROPY:
    case OPS_GRAVITY_ATTENTION:
        break;
    }
    return VIPS_COMPASS_DIRECTION_CENTRE;
}

/* Left/top offset of a w x h window inside W x H placed by gravity. */
static void place(enum ops_gravity g, int64_t W, int64_t H, int64_t w, int64_t h, int *x, int *y)
{
    int64_t cx = (W - w) / 2, cy = (H - h) / 2;
    int64_t ex = W - w, sy = H - h;
    switch (compass(g)) {
    case VIPS_COMPASS_DIRECTION_NORTH:
        *x = (int)cx, *y = 0;
        break;
    case VIPS_COMPASS_DIRECTION_NORTH_EAST:
        *x = (int)ex, *y = 0;
        break;
    case VIPS_COMPASS_DIRECTION_EAST:
        *x = (int)ex, *y = (int)cy;
        break;
    case VIPS_COMPASS_DIRECTION_SOUTH_EAST:
        *x = (int)ex, *y = (int)sy;
        break;
    case VIPS_COMPASS_DIRECTION_SOUTH:
        *x = (int)cx, *y = (int)sy;
        break;
    case VIPS_COMPASS_DIRECTION_SOUTH_WEST:
        *x = 0, *y = (int)sy;
        break;
    case VIPS_COMPASS_DIRECTION_WEST:
        *x = 0, *y = (int)cy;
        break;
    case VIPS_COMPASS_DIRECTION_NORTH_WEST:
        *x = 0, *y = 0;
        break;
    default:
        *x = (int)cx, *y = (int)cy;
        break;
    }
}

/* Scales img to exactly w x h (Lanczos 3, as vips_thumbnail does). */
static int scale_to(VipsImage **img, int64_t w, int64_t h)
{
    VipsImage *out;
    int64_t W = (*img)->Xsize, H = (*img)->Ysize;
    if (W == w && H == h)
        return 0;
    if (take(img, &out,
             vips_resize(*img, &out, (double)w / (double)W, "vscale", (double)h / (double)H,
                         "kernel", VIPS_KERNEL_LANCZOS3, NULL)) != 0)
        return -1;
    /* vips_resize rounds its output size; make it exact. */
    if ((*img)->Xsize != w || (*img)->Ysize != h) {
        if (take(img, &out,
                 vips_embed(*img, &out, 0, 0, (int)w, (int)h, "extend", VIPS_EXTEND_COPY, NULL)) !=
            0)
            return -1;
    }
    return 0;
}

/* The rest of a resize once the image is scaled: cover crops, contain pads. */
static int finish_resize(VipsImage **img, const struct ops_resize *r,
                         const struct ops_resize_geometry *g, enum ops_format fmt)
{
    VipsImage *out;
    int64_t W = (*img)->Xsize, H = (*img)->Ysize;
    if (W == g->box_w && H == g->box_h)
        return 0;
    if (W >= g->box_w && H >= g->box_h) {
        if (r->gravity == OPS_GRAVITY_ENTROPY || r->gravity == OPS_GRAVITY_ATTENTION) {
            /* smartcrop reads the image twice; ops_execute makes sure a
             * shrink-on-load source is in memory first. */
            return take(img, &out,
                        vips_smartcrop(*img, &out, (int)g->box_w, (int)g->box_h, "interesting",
                                       r->gravity == OPS_GRAVITY_ENTROPY
                                           ? VIPS_INTERESTING_ENTROPY
                                           : VIPS_INTERESTING_ATTENTION,
                                       NULL));
        }
        int x, y;
        place(r->gravity, W, H, g->box_w, g->box_h, &x, &y);
        return take(img, &out,
                    vips_extract_area(*img, &out, x, y, (int)g->box_w, (int)g->box_h, NULL));
    }
    double bg[4];
    int n;
    if (background(img, r->background_given, r->background, fmt, bg, &n) != 0)
        return -1;
    VipsArrayDouble *arr = vips_array_double_new(bg, n);
    int rc = vips_gravity(*img, &out, compass(r->gravity), (int)g->box_w, (int)g->box_h, "extend",
                          VIPS_EXTEND_BACKGROUND, "background", arr, NULL);
    vips_area_unref(VIPS_AREA(arr));
    return take(img, &out, rc);
}

static int rotate(VipsImage **img, const struct ops_rotate *r, enum ops_format fmt)
{
    VipsImage *out;
    int q;
    if (right_angle(r->angle, &q)) {
        static const VipsAngle angles[] = {VIPS_ANGLE_D0, VIPS_ANGLE_D90, VIPS_ANGLE_D180,
                                           VIPS_ANGLE_D270};
        if (q == 0)
            return 0;
        return take(img, &out, vips_rot(*img, &out, angles[q], NULL));
    }
    double bg[4];
    int n;
    if (background(img, r->background_given, r->background, fmt, bg, &n) != 0)
        return -1;
    VipsArrayDouble *arr = vips_array_double_new(bg, n);
    int rc = vips_rotate(*img, &out, r->angle, "background", arr, NULL);
    vips_area_unref(VIPS_AREA(arr));
    return take(img, &out, rc);
}

/* Runs steps[from..] on one frame. pending, when not NULL, is the geometry
 * of steps[from - 1], a resize whose scaling the thumbnail path already did
 * and whose crop or padding is still to do. */
static int run_steps(VipsImage **img, const struct ops_plan *plan, int from, enum ops_format fmt,
                     const struct ops_resize_geometry *pending)
{
    VipsImage *out;
    if (pending && finish_resize(img, &plan->steps[from - 1].resize, pending, fmt) != 0)
        return -1;
    for (int i = from; i < plan->nsteps; i++) {
        const struct ops_step *st = &plan->steps[i];
        int rc = 0;
        switch (st->kind) {
        case OPS_STEP_CROP:
            rc = take(img, &out,
                      vips_extract_area(*img, &out, st->crop.x, st->crop.y, st->crop.width,
                                        st->crop.height, NULL));
            break;
        case OPS_STEP_RESIZE: {
            struct ops_resize_geometry g;
            ops_resize_geometry((*img)->Xsize, (*img)->Ysize, &st->resize, &g);
            rc = scale_to(img, g.scaled_w, g.scaled_h);
            if (rc == 0)
                rc = finish_resize(img, &st->resize, &g, fmt);
            break;
        }
        case OPS_STEP_ROTATE:
            rc = rotate(img, &st->rotate, fmt);
            break;
        case OPS_STEP_FLIP:
            rc = take(img, &out,
                      vips_flip(*img, &out,
                                st->flip == OPS_FLIP_HORIZONTAL ? VIPS_DIRECTION_HORIZONTAL
                                                                : VIPS_DIRECTION_VERTICAL,
                                NULL));
            break;
        case OPS_STEP_BLUR:
            rc = take(img, &out, vips_gaussblur(*img, &out, st->blur.sigma, NULL));
            break;
        case OPS_STEP_SHARPEN:
            rc = take(img, &out, vips_sharpen(*img, &out, "sigma", st->sharpen.sigma, NULL));
            if (rc == 0 && (*img)->BandFmt != VIPS_FORMAT_UCHAR)
                rc = take(img, &out, vips_cast(*img, &out, VIPS_FORMAT_UCHAR, NULL));
            break;
        }
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* Runs the steps frame by frame on an animated image and joins the frames. */
static int run_frames(VipsImage **img, int pages, const struct ops_plan *plan, int from,
                      enum ops_format fmt, const struct ops_resize_geometry *pending)
{
    if (pages <= 1 || (from >= plan->nsteps && pending == NULL))
        return run_steps(img, plan, from, fmt, pending);
    int page_h = (*img)->Ysize / pages;
    VipsImage **frames = g_new0(VipsImage *, pages);
    int rc = -1;
    int done = 0;
    for (; done < pages; done++) {
        if (vips_extract_area(*img, &frames[done], 0, done * page_h, (*img)->Xsize, page_h, NULL) !=
                0 ||
            run_steps(&frames[done], plan, from, fmt, pending) != 0) {
            done++;
            goto out;
        }
    }
    VipsImage *joined;
    if (vips_arrayjoin(frames, &joined, pages, "across", 1, NULL) != 0)
        goto out;
    int fh = frames[0]->Ysize;
    if (take(img, &joined, 0) != 0)
        goto out;
    VipsImage *copy;
    if (vips_copy(*img, &copy, NULL) != 0 || take(img, &copy, 0) != 0)
        goto out;
    vips_image_set_int(*img, VIPS_META_PAGE_HEIGHT, fh);
    rc = 0;
out:
    for (int i = 0; i < done; i++)
        if (frames[i])
            g_object_unref(frames[i]);
    g_free(frames);
    return rc;
}

/* ---- encoding ----------------------------------------------------------- */

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

size_t ops_webp_strip(void *buf, size_t len)
{
    /* libvips 8.14's webpsave writes the source's EXIF and XMP whatever
     * its strip option or the image's metadata say, so strip=1 removes
     * the EXIF and "XMP " chunks from the RIFF container itself and clears
     * their flags in VP8X (WebP container spec). Returns the new length;
     * anything unexpected leaves the bytes as they are. */
    unsigned char *b = buf;
    if (len < 12 || memcmp(b, "RIFF", 4) != 0 || memcmp(b + 8, "WEBP", 4) != 0)
        return len;
    size_t in = 12, out = 12;
    unsigned char *vp8x = NULL;
    while (in + 8 <= len) {
        uint32_t csize = le32(b + in + 4);
        size_t total = 8 + (size_t)csize + (csize & 1);
        if (total > len - in)
            return len; /* malformed: leave it */
        bool drop = memcmp(b + in, "EXIF", 4) == 0 || memcmp(b + in, "XMP ", 4) == 0;
        if (!drop) {
            if (out != in)
                memmove(b + out, b + in, total);
            if (memcmp(b + out, "VP8X", 4) == 0 && csize >= 1)
                vp8x = b + out;
            out += total;
        }
        in += total;
    }
    if (in != len)
        return len;
    if (vp8x)
        vp8x[8] &= (unsigned char)~(0x08 | 0x04); /* EXIF and XMP flags */
    put_le32(b + 4, (uint32_t)(out - 8));
    return out;
}

static int encode(VipsImage *img, enum ops_format fmt, const struct ops_output *o, void **buf,
                  size_t *len)
{
    gboolean strip = o->strip;
    int q = o->quality;
    switch (fmt) {
    case OPS_FORMAT_PNG:
        return vips_pngsave_buffer(img, buf, len, "compression", PNG_COMPRESSION, "strip", strip,
                                   NULL);
    case OPS_FORMAT_WEBP:
        return vips_webpsave_buffer(img, buf, len, "Q", q, "effort", WEBP_EFFORT, "strip", strip,
                                    NULL);
    case OPS_FORMAT_AVIF:
        return vips_heifsave_buffer(img, buf, len, "Q", q, "compression",
                                    VIPS_FOREIGN_HEIF_COMPRESSION_AV1, "effort", AVIF_EFFORT,
                                    "strip", strip, NULL);
    case OPS_FORMAT_GIF:
        return vips_gifsave_buffer(img, buf, len, "strip", strip, NULL);
    case OPS_FORMAT_TIFF:
        return vips_tiffsave_buffer(img, buf, len, "compression", VIPS_FOREIGN_TIFF_COMPRESSION_LZW,
                                    "strip", strip, NULL);
    case OPS_FORMAT_JPEG:
    default:
        return vips_jpegsave_buffer(img, buf, len, "Q", q, "strip", strip, NULL);
    }
}

/* ---- the whole plan ----------------------------------------------------- */

int ops_execute(const void *buf, size_t len, const struct ops_plan *plan, const char *accept,
                const struct ops_limits *limits, struct ops_result *res, struct util_error *err)
{
    memset(res, 0, sizeof(*res));
    struct ops_image_info info;
    VipsImage *img = NULL;
    /* A header look first: the output format may depend on the source's. */
    if (ops_open_checked(buf, len, limits, VIPS_ACCESS_RANDOM, false, &img, &info, err) != 0)
        return -1;
    enum ops_format fmt = ops_resolve_format(plan, info.format, accept);
    bool all_pages = animated_output(fmt);
    if (all_pages) {
        g_object_unref(img);
        if (ops_open_checked(buf, len, limits, VIPS_ACCESS_RANDOM, true, &img, &info, err) != 0)
            return -1;
    }
    int pages = (int)info.pages;
    int64_t out_w, out_h;
    if (ops_plan_geometry(plan, info.width, info.height, pages, limits->max_output_pixels, &out_w,
                          &out_h, err) != 0) {
        g_object_unref(img);
        return -1;
    }

    const struct ops_step *first = plan->nsteps > 0 ? &plan->steps[0] : NULL;
    if (first && first->kind == OPS_STEP_RESIZE) {
        /* Shrink on load: thumbnail does load + orient + colour + resize. */
        g_object_unref(img);
        img = NULL;
        struct ops_resize_geometry g;
        ops_resize_geometry(info.width, info.height, &first->resize, &g);
        VipsImage *t;
        /* fail_on goes through the loader's option string: libvips 8.14's
         * thumbnail ignores its own fail_on argument (libvips issue #5195),
         * and a truncated JPEG would come out half grey. */
        /* With an embedded profile, thumbnail converts to sRGB only when
         * asked to export one (Display P3 stayed P3 otherwise). */
        const char *opts = pages > 1 ? "n=-1,fail_on=truncated" : "fail_on=truncated";
        /* An sRGB profile needs no conversion (most camera JPEGs carry
         * one): the transform would cost time for the same pixels. */
        bool convert = info.icc[0] && !g_strrstr(info.icc, "sRGB") && !g_strrstr(info.icc, "srgb");
        int trc = convert
                      ? vips_thumbnail_buffer((void *)buf, len, &t, (int)g.scaled_w, "height",
                                              (int)g.scaled_h, "size", VIPS_SIZE_FORCE,
                                              "option_string", opts, "export_profile", "srgb", NULL)
                      : vips_thumbnail_buffer((void *)buf, len, &t, (int)g.scaled_w, "height",
                                              (int)g.scaled_h, "size", VIPS_SIZE_FORCE,
                                              "option_string", opts, NULL);
        if (trc != 0)
            return ops_vips_fail(err, UTIL_ERR_INVALID_IMAGE, "the image cannot be decoded");
        img = t;
        /* thumbnail already imported any ICC profile and exported sRGB. */
        if (to_srgb(&img, false) != 0)
            goto fail;
        /* thumbnail's output streams from a sequential decoder: steps that
         * read out of order (rotations, vertical flips, smart crops, frame
         * splitting) need it in memory. It is already scaled down (and the
         * geometry check bounded it), so this costs the result's size. */
        if (plan->nsteps > 1 || pages > 1 || first->resize.gravity == OPS_GRAVITY_ENTROPY ||
            first->resize.gravity == OPS_GRAVITY_ATTENTION) {
            VipsImage *mem = vips_image_copy_memory(img);
            if (mem == NULL || own_metadata(mem) != 0) {
                if (mem)
                    g_object_unref(mem);
                goto fail;
            }
            take(&img, &mem, 0);
        }
        if (run_frames(&img, pages, plan, 1, fmt, &g) != 0)
            goto fail;
    } else {
        VipsImage *out;
        if (take(&img, &out, vips_autorot(img, &out, NULL)) != 0 || to_srgb(&img, true) != 0 ||
            run_frames(&img, pages, plan, 0, fmt, NULL) != 0)
            goto fail;
    }
    if (fmt == OPS_FORMAT_JPEG && vips_image_hasalpha(img)) {
        /* JPEG has no alpha: flatten on white, or on the given background. */
        double colour[3] = {255, 255, 255};
        for (int i = 0; i < plan->nsteps; i++) {
            const struct ops_step *st = &plan->steps[i];
            const struct ops_rgba *c = NULL;
            if (st->kind == OPS_STEP_ROTATE && st->rotate.background_given)
                c = &st->rotate.background;
            else if (st->kind == OPS_STEP_RESIZE && st->resize.background_given)
                c = &st->resize.background;
            if (c) {
                colour[0] = c->r;
                colour[1] = c->g;
                colour[2] = c->b;
            }
        }
        if (img->Bands <= 2)
            colour[0] = (colour[0] + colour[1] + colour[2]) / 3;
        VipsArrayDouble *arr = vips_array_double_new(colour, img->Bands > 2 ? 3 : 1);
        VipsImage *out;
        int rc = vips_flatten(img, &out, "background", arr, NULL);
        vips_area_unref(VIPS_AREA(arr));
        if (take(&img, &out, rc) != 0)
            goto fail;
    }
    if (plan->output.strip && strip_metadata(&img) != 0)
        goto fail;
    struct ops_deadline dl;
    ops_watch_deadline(img, &dl, limits->timeout_ms, limits->cancel);
    if (encode(img, fmt, &plan->output, &res->buf, &res->len) != 0) {
        if (dl.canceled) {
            vips_error_clear();
            util_error_set(err, UTIL_ERR_CONFLICT, "the work was canceled");
            g_object_unref(img);
            return -1;
        }
        if (dl.hit) {
            vips_error_clear();
            util_error_set(err, UTIL_ERR_TIMEOUT, "processing took longer than %lld ms",
                           (long long)limits->timeout_ms);
            g_object_unref(img);
            return -1;
        }
        goto fail;
    }
    if (fmt == OPS_FORMAT_WEBP && plan->output.strip)
        res->len = ops_webp_strip(res->buf, res->len);
    g_strlcpy(res->format, ops_output_format_name(fmt), sizeof(res->format));
    res->has_alpha = vips_image_hasalpha(img);
    res->width = img->Xsize;
    res->pages = pages > 1 && all_pages ? pages : 1;
    res->height = img->Ysize / res->pages;
    g_object_unref(img);
    return 0;
fail:
    ops_vips_fail(err, UTIL_ERR_INVALID_IMAGE, "the image cannot be processed");
    if (img)
        g_object_unref(img);
    return -1;
}
