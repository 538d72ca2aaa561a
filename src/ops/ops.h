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
};

/* What probing an image found. */
struct ops_image_info {
    char format[8];   /* jpeg png webp gif tiff heic avif */
    int64_t width;    /* as displayed (after EXIF orientation), one frame */
    int64_t height;   /* as displayed, one frame */
    int64_t pages;    /* frames loaded (animated GIF/WebP: all), >= 1 */
    bool has_alpha;   /* an alpha band */
    int orientation;  /* EXIF orientation 1..8 */
    bool interlaced;  /* progressive JPEG or interlaced PNG */
    char icc[128];    /* ICC profile description, "" if none */
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

/* MIME type of a format name ("jpeg" -> "image/jpeg"); NULL if unknown. */
const char *ops_mime_type(const char *format);


#endif
