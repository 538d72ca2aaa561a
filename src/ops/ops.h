/*
 * ops: everything that touches pixels, on libvips. Checks and decodes
 * untrusted images (probe.c) and, through the one parser of the operation
 * spec (parse.c, plan.h), transforms them. Knows nothing of HTTP or storage:
 * images come in and go out as memory buffers.
 *
 * Thread-safety: every function may be called from many threads at once
 * after ops_init.
 */
#ifndef OPS_OPS_H
#define OPS_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops/icc.h"
#include "ops/plan.h"
#include "util/util.h"

/* Limits applied to every untrusted image (DESIGN §5). */
struct ops_limits {
    int64_t max_pixels;             /* width x height x pages of the source */
    int64_t max_pixels_progressive; /* the same when it cannot shrink on load */
    int64_t max_output_pixels;      /* final size */
    int64_t timeout_ms;             /* deadline of one decode/transform */
    const volatile int *cancel;     /* when not NULL and set, the work stops (job canceled) */
};

/* What probing an image found. */
struct ops_image_info {
    char format[8];  /* jpeg png webp gif tiff heic avif */
    int64_t width;   /* as displayed (after EXIF orientation), one frame */
    int64_t height;  /* as displayed, one frame */
    int64_t pages;   /* frames loaded (animated GIF/WebP: all), >= 1 */
    bool has_alpha;  /* an alpha band */
    int orientation; /* EXIF orientation 1..8 */
    bool interlaced; /* progressive JPEG or interlaced PNG */
    char icc[128];   /* ICC profile description, "" if none */
};

/* Starts libvips: blocks untrusted loaders, sets its worker threads per
 * image and its operation cache. Call once, before any thread uses ops. */
int ops_init(const char *argv0, int vips_threads, struct util_error *err);
void ops_shutdown(void);
/* "8.14.1" */
const char *ops_vips_version(void);

/* Checks an untrusted image completely: the loader against our allow-list
 * (JPEG, PNG, WebP, GIF, TIFF, HEIF/AVIF; else UTIL_ERR_UNSUPPORTED), the
 * pixel count from the header against the limits (UTIL_ERR_TOO_LARGE,
 * before any pixel is decoded), then a full decode through a sink with
 * fail_on=truncated and sequential access, never into a full in-memory copy
 * (UTIL_ERR_INVALID_IMAGE, or UTIL_ERR_TIMEOUT past limits->timeout_ms). */
int ops_probe(const void *buf, size_t len, const struct ops_limits *limits,
              struct ops_image_info *info, struct util_error *err);

/* An encoded result. */
struct ops_result {
    void *buf;      /* encoded bytes; the caller frees them with g_free */
    size_t len;     /* their length */
    char format[8]; /* jpeg png webp avif gif tiff */
    int64_t width;  /* one frame */
    int64_t height; /* one frame */
    int64_t pages;  /* frames written (animated GIF/WebP), >= 1 */
    bool has_alpha; /* an alpha band was written */
};

/* Sizes of one resize step (ops_resize_geometry): the image is scaled to
 * scaled_w x scaled_h, then cropped (cover) or padded (contain) to the box. */
struct ops_resize_geometry {
    int64_t scaled_w, scaled_h; /* the scaled image */
    int64_t box_w, box_h;       /* the result */
};

/* The format a plan writes for a source format and the request's Accept
 * header (NULL: none): `auto` picks AVIF, then WebP, when Accept names them
 * with q > 0, else the source format; a HEIC source gives JPEG. Never
 * returns OPS_FORMAT_SOURCE or OPS_FORMAT_AUTO. */
enum ops_format ops_resolve_format(const struct ops_plan *plan, const char *source_format,
                                   const char *accept);
/* Name of a resolved output format ("jpeg"). */
const char *ops_output_format_name(enum ops_format format);

/* Pure size arithmetic of one resize on a W x H image (fit, enlarge; DESIGN
 * §3: without enlarge the box shrinks, keeping its aspect, until the source
 * fills it at scale 1). */
void ops_resize_geometry(int64_t W, int64_t H, const struct ops_resize *r,
                         struct ops_resize_geometry *g);
/* Simulates a plan on a width x height (as displayed) image of `pages`
 * frames: the final size, or UTIL_ERR_TOO_LARGE when any intermediate or
 * the result passes max_output_pixels, or UTIL_ERR_INVALID_OPERATION for a
 * crop outside the image. Nothing is allocated. */
int ops_plan_geometry(const struct ops_plan *plan, int64_t width, int64_t height, int64_t pages,
                      int64_t max_output_pixels, int64_t *out_w, int64_t *out_h,
                      struct util_error *err);

/* Runs plan on an untrusted image in memory and encodes the result in the
 * format ops_resolve_format gives for the source and `accept` (may be
 * NULL). Applies the checks of ops_probe that need no pixels, then
 * ops_plan_geometry, before any pixel is made; kills the work past
 * limits->timeout_ms (UTIL_ERR_TIMEOUT) or once *limits->cancel is set
 * (UTIL_ERR_CONFLICT). */
int ops_execute(const void *buf, size_t len, const struct ops_plan *plan, const char *accept,
                const struct ops_limits *limits, struct ops_result *res, struct util_error *err);

/* Removes the EXIF and XMP chunks of a WebP file in place; returns the new
 * length (the old one when the bytes are not a well-formed WebP). */
size_t ops_webp_strip(void *buf, size_t len);

/* MIME type of a format name ("jpeg" -> "image/jpeg"); NULL if unknown. */
const char *ops_mime_type(const char *format);

#endif
