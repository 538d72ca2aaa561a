/* Private to ops/: shared by probe.c and exec.c. */
#ifndef OPS_INTERNAL_H
#define OPS_INTERNAL_H

#include <vips/vips.h>

#include "ops/ops.h"

/* A processing deadline watched through libvips' "eval" signal. */
struct ops_deadline {
    int64_t end_ms;             /* monotonic */
    const volatile int *cancel; /* stop when set (may be NULL) */
    bool hit;                   /* the work was killed by the deadline */
    bool canceled;              /* the work was killed by *cancel */
};

/* Opens an untrusted image after the checks of ops_probe that need no
 * pixels: the loader allow-list and the pixel count from the header. The
 * image is lazy (nothing decoded yet); the caller unrefs it. all_pages loads
 * every frame of GIF/WebP. */
int ops_open_checked(const void *buf, size_t len, const struct ops_limits *limits,
                     VipsAccess access, bool all_pages, VipsImage **out,
                     struct ops_image_info *info, struct util_error *err);
/* Kills the computation of image once timeout_ms have passed; d must live
 * as long as the computation. */
void ops_watch_deadline(VipsImage *image, struct ops_deadline *d, int64_t timeout_ms,
                        const volatile int *cancel);
/* Sets err from libvips' error buffer (one line, prefixed by what) and
 * clears the buffer. Returns -1. */
int ops_vips_fail(struct util_error *err, enum util_err code, const char *what);

#endif
