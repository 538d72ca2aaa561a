/*
 * Checking untrusted images (ops.h).
 *
 * Order matters (corpus/README.md): a header can claim 65535x65535 in 35
 * bytes, and decoding such a GIF makes libvips g_malloc 17 GB and abort the
 * process, so the pixel count is checked from the header before any pixel
 * is decoded. Truncated JPEG/PNG decode "successfully" with grey fill
 * unless fail_on=truncated is set. PDF and SVG load fine in libvips, so our
 * own allow-list decides what is an image.
 */
#include <string.h>
#include <vips/vips.h>

#include "ops/internal.h"

/* The loaders we accept, by class name, and the format each gives. */
static const struct {
    const char *loader;
    const char *format;
    bool multipage; /* takes the "n" option; we load every frame */
} ALLOWED[] = {
    {"VipsForeignLoadJpegBuffer", "jpeg", false}, {"VipsForeignLoadPngBuffer", "png", false},
    {"VipsForeignLoadWebpBuffer", "webp", true},  {"VipsForeignLoadNsgifBuffer", "gif", true},
    {"VipsForeignLoadGifBuffer", "gif", true},    {"VipsForeignLoadTiffBuffer", "tiff", false},
    {"VipsForeignLoadHeifBuffer", "heic", false},
};

static const struct {
    const char *format;
    const char *mime;
} MIME[] = {
    {"jpeg", "image/jpeg"}, {"png", "image/png"},   {"webp", "image/webp"}, {"gif", "image/gif"},
    {"tiff", "image/tiff"}, {"heic", "image/heic"}, {"avif", "image/avif"},
};

const char *ops_mime_type(const char *format)
{
    for (size_t i = 0; i < sizeof(MIME) / sizeof(MIME[0]); i++)
        if (strcmp(MIME[i].format, format) == 0)
            return MIME[i].mime;
    return NULL;
}

/* libvips reports each failed tile as a GLib warning ("error in tile 0 x
 * 176") before the operation fails with the real error, which we report:
 * those lines would flood the log under a stream of bad images. Other
 * libvips warnings go to our log as one line each. */
static void log_vips(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer arg)
{
    (void)domain;
    (void)arg;
    if (msg == NULL || strncmp(msg, "error in tile", 13) == 0)
        return;
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
        util_error("libvips: %s", msg);
    else if (level & G_LOG_LEVEL_WARNING)
        util_warn("libvips: %s", msg);
}

int ops_init(const char *argv0, int vips_threads, struct util_error *err)
{
    g_log_set_handler("VIPS", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION, log_vips,
                      NULL);
    if (VIPS_INIT(argv0 ? argv0 : "image-server") != 0)
        return util_error_set(err, UTIL_ERR_INTERNAL, "libvips failed to start: %s",
                              vips_error_buffer());
    /* Loaders marked untrusted (e.g. magick, matlab, fits) are never used,
     * whatever the allow-list says (libvips >= 8.13). */
    vips_block_untrusted_set(TRUE);
    vips_concurrency_set(vips_threads > 0 ? vips_threads : 1);
    /* Every request works on different bytes: the operation cache would only
     * hold memory (imgproxy turns it off too). */
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_cache_set_max_files(0);
    return 0;
}

void ops_shutdown(void)
{
    vips_shutdown();
}

const char *ops_vips_version(void)
{
    return vips_version_string();
}

/* Copies libvips' error text for this failure into err's detail, trimmed to
 * one line, and clears it. */
int ops_vips_fail(struct util_error *err, enum util_err code, const char *what)
{
    char msg[200];
    g_strlcpy(msg, vips_error_buffer(), sizeof(msg));
    vips_error_clear();
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    g_strstrip(msg);
    if (msg[0])
        return util_error_set(err, code, "%s: %s", what, msg);
    return util_error_set(err, code, "%s", what);
}

/* libvips "eval" signal: called as work progresses; kills it past the deadline. */
static void on_eval(VipsImage *image, VipsProgress *progress, void *arg)
{
    (void)progress;
    struct ops_deadline *d = arg;
    if (d->cancel && *d->cancel) {
        d->canceled = true;
        vips_image_set_kill(image, TRUE);
    } else if (util_monotonic_ms() > d->end_ms) {
        d->hit = true;
        vips_image_set_kill(image, TRUE);
    }
}

int ops_open_checked(const void *buf, size_t len, const struct ops_limits *limits,
                     VipsAccess access, bool all_pages, VipsImage **out,
                     struct ops_image_info *info, struct util_error *err)
{
    *out = NULL;
    memset(info, 0, sizeof(*info));
    if (len == 0)
        return util_error_set(err, UTIL_ERR_UNSUPPORTED, "the body is empty");
    const char *loader = vips_foreign_find_load_buffer(buf, len);
    vips_error_clear();
    if (loader == NULL)
        return util_error_set(err, UTIL_ERR_UNSUPPORTED,
                              "not an image in a format we accept (JPEG, PNG, WebP, GIF, TIFF, "
                              "HEIF/AVIF)");
    int which = -1;
    for (size_t i = 0; i < sizeof(ALLOWED) / sizeof(ALLOWED[0]); i++)
        if (strcmp(ALLOWED[i].loader, loader) == 0)
            which = (int)i;
    if (which < 0) {
        const char *nick = vips_nickname_find(g_type_from_name(loader));
        return util_error_set(err, UTIL_ERR_UNSUPPORTED,
                              "images loaded by %s are not accepted (JPEG, PNG, WebP, GIF, TIFF, "
                              "HEIF/AVIF only)",
                              nick ? nick : loader);
    }

    /* The header only: libvips reads pixels lazily. */
    VipsImage *image;
    bool multipage = ALLOWED[which].multipage && all_pages;
    if (multipage)
        image = vips_image_new_from_buffer(buf, len, "", "access", access, "fail_on",
                                           VIPS_FAIL_ON_TRUNCATED, "n", -1, NULL);
    else
        image = vips_image_new_from_buffer(buf, len, "", "access", access, "fail_on",
                                           VIPS_FAIL_ON_TRUNCATED, NULL);
    if (image == NULL)
        return ops_vips_fail(err, UTIL_ERR_INVALID_IMAGE, "the image header cannot be read");

    g_strlcpy(info->format, ALLOWED[which].format, sizeof(info->format));
    const char *compression = NULL;
    if (strcmp(info->format, "heic") == 0 && vips_image_get_typeof(image, "heif-compression") &&
        vips_image_get_string(image, "heif-compression", &compression) == 0 && compression &&
        strcmp(compression, "av1") == 0)
        g_strlcpy(info->format, "avif", sizeof(info->format));

    int64_t w = vips_image_get_width(image);
    int64_t h_all = vips_image_get_height(image);
    int pages = multipage ? vips_image_get_n_pages(image) : 1;
    int page_h = vips_image_get_page_height(image);
    if (pages < 1 || page_h * (int64_t)pages != h_all) {
        pages = 1;
        page_h = (int)h_all;
    }
    info->pages = pages;
    /* Progressive JPEG and interlaced PNG cannot shrink on load: the whole
     * image is decoded into memory, so they get a lower limit. */
    int flag = 0;
    if (vips_image_get_typeof(image, "interlaced"))
        vips_image_get_int(image, "interlaced", &flag);
    else if (vips_image_get_typeof(image, "jpeg-multiscan"))
        vips_image_get_int(image, "jpeg-multiscan", &flag);
    info->interlaced = flag != 0;
    int64_t pixels = w * h_all;
    int64_t cap = info->interlaced ? limits->max_pixels_progressive : limits->max_pixels;
    /* The limit is in RGBA pixels: an image with dozens of channels (TIFF
     * allows them) costs as many pixels as it has groups of four. */
    int bands = vips_image_get_bands(image);
    if (bands > 4)
        pixels *= (bands + 3) / 4;
    if (pixels > cap) {
        g_object_unref(image);
        return util_error_set(err, UTIL_ERR_TOO_LARGE,
                              "the image is %lldx%lld%s (%lld pixels); at most %lld are "
                              "accepted%s",
                              (long long)w, (long long)page_h, pages > 1 ? " per frame" : "",
                              (long long)pixels, (long long)cap,
                              info->interlaced ? " for progressive/interlaced images" : "");
    }

    int orientation = 1;
    if (vips_image_get_typeof(image, VIPS_META_ORIENTATION) &&
        vips_image_get_int(image, VIPS_META_ORIENTATION, &orientation) == 0 &&
        (orientation < 1 || orientation > 8))
        orientation = 1;
    info->orientation = orientation;
    info->width = orientation >= 5 ? page_h : w;
    info->height = orientation >= 5 ? w : page_h;
    info->has_alpha = vips_image_hasalpha(image);
    const void *icc = NULL;
    size_t icc_len = 0;
    if (vips_image_get_typeof(image, VIPS_META_ICC_NAME) &&
        vips_image_get_blob(image, VIPS_META_ICC_NAME, &icc, &icc_len) == 0 && icc)
        if (ops_icc_description(icc, icc_len, info->icc, sizeof(info->icc)) != 0)
            g_strlcpy(info->icc, "unnamed profile", sizeof(info->icc));
    *out = image;
    return 0;
}

void ops_watch_deadline(VipsImage *image, struct ops_deadline *d, int64_t timeout_ms,
                        const volatile int *cancel)
{
    d->end_ms = util_monotonic_ms() + timeout_ms;
    d->cancel = cancel;
    d->hit = false;
    d->canceled = false;
    vips_image_set_progress(image, TRUE);
    g_signal_connect(image, "eval", G_CALLBACK(on_eval), d);
}

int ops_probe(const void *buf, size_t len, const struct ops_limits *limits,
              struct ops_image_info *info, struct util_error *err)
{
    VipsImage *image;
    if (ops_open_checked(buf, len, limits, VIPS_ACCESS_SEQUENTIAL, true, &image, info, err) != 0)
        return -1;
    /* Decode every pixel through a sink: vips_avg streams the image in
     * strips, so memory stays small whatever the size. */
    int rc = 0;
    struct ops_deadline dl;
    ops_watch_deadline(image, &dl, limits->timeout_ms, limits->cancel);
    double avg;
    if (vips_avg(image, &avg, NULL) != 0) {
        if (dl.hit) {
            vips_error_clear();
            rc = util_error_set(err, UTIL_ERR_TIMEOUT, "decoding took longer than %lld ms",
                                (long long)limits->timeout_ms);
        } else {
            rc = ops_vips_fail(err, UTIL_ERR_INVALID_IMAGE,
                               "the image data is truncated or corrupt");
        }
    }
    g_object_unref(image);
    return rc;
}
