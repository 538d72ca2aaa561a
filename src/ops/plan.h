/*
 * ops/plan: the operation spec, parsed in exactly one place (parse.c) for
 * every entry point: the URL query of a variant or of POST /v1/transform,
 * the `transform` subcommand, and the JSON of POST /v1/jobs (DESIGN §3).
 *
 * A plan is a fixed-size value (no heap, nothing to free): an ordered list
 * of steps plus the output options. Every field of a parsed plan is within
 * its documented range, so the executor never re-validates. A URL plan
 * always has its steps in the fixed order crop, resize, rotate, flip, blur,
 * sharpen (auto-orient is implicit and always first); a JSON plan keeps the
 * order it was given and may repeat an operation.
 *
 * Every function here is reentrant and thread-safe; none keeps state
 * beyond a process-wide "C" locale for strtod, created once.
 */
#ifndef OPS_PLAN_H
#define OPS_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util/util.h"

#define OPS_MAX_STEPS     16     /* steps in one plan (JSON form; a URL makes at most 6) */
#define OPS_MAX_DIMENSION 100000 /* upper bound of every width, height, x and y */
#define OPS_DEFAULT_Q     80     /* output quality when none is given */
#define OPS_CANONICAL_MAX 2048   /* ops_plan_canonical never needs more for a parsed plan */

enum ops_step_kind {
    OPS_STEP_CROP,
    OPS_STEP_RESIZE,
    OPS_STEP_ROTATE,
    OPS_STEP_FLIP,
    OPS_STEP_BLUR,
    OPS_STEP_SHARPEN,
};

/* Fit modes as in libvips and sharp; see DESIGN §3. */
enum ops_fit {
    OPS_FIT_CONTAIN, /* fit inside the box, pad to exactly the box with the background */
    OPS_FIT_COVER,   /* fill the box exactly, crop the overflow by gravity */
    OPS_FIT_FILL,    /* stretch to exactly the box, ignoring the aspect */
    OPS_FIT_INSIDE,  /* fit within the box keeping the aspect (the default) */
    OPS_FIT_OUTSIDE, /* cover the box keeping the aspect, no crop */
};

/* Where cover crops (and contain places the image). entropy and attention
 * are libvips smartcrop strategies (VIPS_INTERESTING_*); they only choose a
 * crop, so with contain they act as centre. */
enum ops_gravity {
    OPS_GRAVITY_CENTRE, /* the default */
    OPS_GRAVITY_NORTH,
    OPS_GRAVITY_NORTHEAST,
    OPS_GRAVITY_EAST,
    OPS_GRAVITY_SOUTHEAST,
    OPS_GRAVITY_SOUTH,
    OPS_GRAVITY_SOUTHWEST,
    OPS_GRAVITY_WEST,
    OPS_GRAVITY_NORTHWEST,
    OPS_GRAVITY_ENTROPY,
    OPS_GRAVITY_ATTENTION,
};

enum ops_flip {
    OPS_FLIP_HORIZONTAL, /* mirror left-right (URL `flip=h`) */
    OPS_FLIP_VERTICAL,   /* mirror top-bottom (URL `flip=v`) */
};

/* Output format. OPS_FORMAT_SOURCE (nothing given) keeps the source's
 * format; OPS_FORMAT_AUTO is resolved by the caller from the request's
 * Accept header (URL form only; a job has no Accept header). */
enum ops_format {
    OPS_FORMAT_SOURCE = 0,
    OPS_FORMAT_JPEG,
    OPS_FORMAT_PNG,
    OPS_FORMAT_WEBP,
    OPS_FORMAT_AVIF,
    OPS_FORMAT_GIF,
    OPS_FORMAT_TIFF,
    OPS_FORMAT_AUTO,
};

/* A background colour, 8 bits per channel; a = 255 is opaque. */
struct ops_rgba {
    uint8_t r; /* red */
    uint8_t g; /* green */
    uint8_t b; /* blue */
    uint8_t a; /* alpha; RRGGBB without AA means 255 */
};

/* crop=x,y,w,h: a rectangle of the (auto-oriented) image. The executor
 * checks it against the image size, which the parser does not know. */
struct ops_crop {
    int x;      /* left edge, 0..OPS_MAX_DIMENSION */
    int y;      /* top edge, 0..OPS_MAX_DIMENSION */
    int width;  /* 1..OPS_MAX_DIMENSION */
    int height; /* 1..OPS_MAX_DIMENSION */
};

/* Resize into a width x height box. At least one of width and height is
 * non-zero; 0 means that side follows the aspect. */
struct ops_resize {
    int width;                  /* 0 or 1..OPS_MAX_DIMENSION */
    int height;                 /* 0 or 1..OPS_MAX_DIMENSION */
    enum ops_fit fit;           /* default OPS_FIT_INSIDE */
    bool enlarge;               /* allow upscaling; default false */
    enum ops_gravity gravity;   /* default OPS_GRAVITY_CENTRE */
    struct ops_rgba background; /* padding of fit=contain; 000000ff when not given */
    bool background_given;      /* false: transparent if the output has alpha, else black */
};

/* Rotate clockwise by angle degrees; multiples of 90 are exact. */
struct ops_rotate {
    double angle;               /* -360..360, finite, never -0 */
    struct ops_rgba background; /* fills the corners; 000000ff when not given */
    bool background_given;      /* false: transparent if the output has alpha, else black */
};

/* Gaussian blur. */
struct ops_blur {
    double sigma; /* 0.3..100 */
};

/* Sharpen (vips_sharpen sigma). */
struct ops_sharpen {
    double sigma; /* 0.5..10 */
};

/* One step; `kind` says which member of the union is set. */
struct ops_step {
    enum ops_step_kind kind; /* selects the union member */
    union {
        struct ops_crop crop;       /* OPS_STEP_CROP */
        struct ops_resize resize;   /* OPS_STEP_RESIZE */
        struct ops_rotate rotate;   /* OPS_STEP_ROTATE */
        enum ops_flip flip;         /* OPS_STEP_FLIP */
        struct ops_blur blur;       /* OPS_STEP_BLUR */
        struct ops_sharpen sharpen; /* OPS_STEP_SHARPEN */
    };
};

/* How the result is encoded. */
struct ops_output {
    enum ops_format format; /* OPS_FORMAT_SOURCE when not given */
    int quality;            /* 1..100; OPS_DEFAULT_Q when not given */
    bool quality_given;     /* q / quality was given explicitly */
    bool strip;             /* drop metadata (EXIF, XMP, ...) except what display needs */
};

/* A parsed operation spec. */
struct ops_plan {
    struct ops_step steps[OPS_MAX_STEPS]; /* steps[0..nsteps) in execution order */
    int nsteps;                           /* 0..OPS_MAX_STEPS */
    struct ops_output output;             /* encoding of the result */
    bool from_url;                        /* true: URL form (fixed order); false: JSON */
};

/* Resets plan to the empty plan: no steps, every output default. */
void ops_plan_init(struct ops_plan *plan);

/* Parses a URL query (without the '?', exactly as sent: names and values
 * are percent-decoded here, '+' is a space). NULL or "" is the empty plan.
 * `sig` is skipped (signatures are checked before this, on the raw text).
 * Unknown, repeated, empty-named, malformed or out-of-range parameters are
 * rejected, as are fit/enlarge/gravity without w or h and bg that neither
 * rotate nor fit=contain uses. bg applies to both rotate and contain.
 * Returns 0, or -1 with err set to UTIL_ERR_INVALID_OPERATION and a detail
 * naming the parameter and what it accepts; on error *plan is empty. */
int ops_parse_query(const char *raw_query, struct ops_plan *plan, struct util_error *err);

/* Parses the `operations` array and the `output` object of a job (either
 * may come straight from the request JSON; output may be NULL or JSON null
 * when absent). Operations keep their order. Keys and ranges follow the URL
 * form: crop {x, y, width, height}, resize {width, height, fit, enlarge,
 * gravity, background}, rotate {angle, background}, flip {direction:
 * "horizontal"|"vertical"}, blur {sigma}, sharpen {sigma}; output {format,
 * quality, strip}. `enlarge` and `strip` are JSON booleans, integer fields
 * must be JSON integers, background is a "RRGGBB[AA]" string, and resize's
 * background needs fit "contain". "auto" is refused as a job format. An
 * unknown key anywhere is an error. The caller should decode the request with
 * JSON_REJECT_DUPLICATES, since a repeated key cannot be seen here.
 * Returns 0, or -1 with err set as ops_parse_query does ("operations[1].angle
 * must be a number -360..360"); on error *plan is empty. */
int ops_parse_json(const json_t *operations, const json_t *output, struct ops_plan *plan,
                   struct util_error *err);

/* Writes the canonical text of plan into out: equal plans (whatever the
 * URL parameter order, or URL vs JSON with the same steps) give equal text,
 * and different results give different text, so it can key a variant cache.
 * Every default is spelled out and numbers are printed in their shortest
 * exact form, e.g.
 *   resize:w=800,h=0,fit=inside,enlarge=0,gravity=centre|out:format=source,q=80,strip=0
 * An unset background prints as bg=default (it depends on the image's alpha).
 * The empty plan (ops_plan_is_empty) prints as "original": it serves the
 * source bytes, unlike e.g. `q=80` alone, which re-encodes them.
 * Returns 0, or -1 if outlen is too small (OPS_CANONICAL_MAX always fits). */
int ops_plan_canonical(const struct ops_plan *plan, char *out, size_t outlen);

/* True when the plan changes nothing: no steps, format not given, no
 * quality given and no strip. The original bytes are then served as is. */
bool ops_plan_is_empty(const struct ops_plan *plan);

/* "jpeg", "png", ..., "auto", and "source" for OPS_FORMAT_SOURCE. */
const char *ops_format_name(enum ops_format format);
/* The format a client names: jpeg (or jpg), png, webp, avif, gif, tiff,
 * auto; lower case only. Returns an enum ops_format, or -1. */
int ops_format_from_name(const char *name);
/* "contain", "cover", ... as in the URL form. */
const char *ops_fit_name(enum ops_fit fit);
/* "centre", "north", ... as in the URL form. */
const char *ops_gravity_name(enum ops_gravity gravity);

#endif
