/*
 * Shared pieces of the libFuzzer targets: a CHECK that aborts (libFuzzer
 * turns the SIGABRT into a crash report and a saved reproducer), and the
 * invariants every parsed operation plan must hold (src/ops/plan.h).
 * Only static inline functions, so a target that uses none stays
 * warning-free.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/plan.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A NUL-terminated heap copy of [data, data + size), so ASan sees any read
 * past the terminator. The caller frees it. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);

    CHECK(s != NULL);
    if (size > 0)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* An error detail is a NUL-terminated line of printable ASCII (parse.c
 * escapes any client byte it quotes). */
static inline void fuzz_check_detail(const struct util_error *err)
{
    size_t n = strnlen(err->detail, sizeof(err->detail));

    CHECK(n < sizeof(err->detail));
    for (size_t i = 0; i < n; i++)
        CHECK(err->detail[i] >= 0x20 && err->detail[i] < 0x7f);
}

static inline bool fuzz_rgba_default(const struct ops_rgba *c)
{
    return c->r == 0 && c->g == 0 && c->b == 0 && c->a == 255;
}

/* Every field of a parsed plan is within its documented range (plan.h). */
static inline void fuzz_check_plan_ranges(const struct ops_plan *p)
{
    CHECK(p->nsteps >= 0 && p->nsteps <= OPS_MAX_STEPS);
    for (int i = 0; i < p->nsteps; i++) {
        const struct ops_step *s = &p->steps[i];

        switch (s->kind) {
        case OPS_STEP_CROP:
            CHECK(s->crop.x >= 0 && s->crop.x <= OPS_MAX_DIMENSION);
            CHECK(s->crop.y >= 0 && s->crop.y <= OPS_MAX_DIMENSION);
            CHECK(s->crop.width >= 1 && s->crop.width <= OPS_MAX_DIMENSION);
            CHECK(s->crop.height >= 1 && s->crop.height <= OPS_MAX_DIMENSION);
            break;
        case OPS_STEP_RESIZE:
            CHECK(s->resize.width >= 0 && s->resize.width <= OPS_MAX_DIMENSION);
            CHECK(s->resize.height >= 0 && s->resize.height <= OPS_MAX_DIMENSION);
            CHECK(s->resize.width > 0 || s->resize.height > 0);
            CHECK((unsigned)s->resize.fit <= OPS_FIT_OUTSIDE);
            CHECK((unsigned)s->resize.gravity <= OPS_GRAVITY_ATTENTION);
            CHECK(s->resize.background_given || fuzz_rgba_default(&s->resize.background));
            CHECK(!s->resize.background_given || s->resize.fit == OPS_FIT_CONTAIN);
            break;
        case OPS_STEP_ROTATE:
            CHECK(isfinite(s->rotate.angle));
            CHECK(s->rotate.angle >= -360 && s->rotate.angle <= 360);
            CHECK(!(s->rotate.angle == 0 && signbit(s->rotate.angle)));
            CHECK(s->rotate.background_given || fuzz_rgba_default(&s->rotate.background));
            break;
        case OPS_STEP_FLIP:
            CHECK(s->flip == OPS_FLIP_HORIZONTAL || s->flip == OPS_FLIP_VERTICAL);
            break;
        case OPS_STEP_BLUR:
            CHECK(s->blur.sigma >= 0.3 && s->blur.sigma <= 100);
            break;
        case OPS_STEP_SHARPEN:
            CHECK(s->sharpen.sigma >= 0.5 && s->sharpen.sigma <= 10);
            break;
        default:
            CHECK(!"unknown step kind");
        }
    }
    CHECK((unsigned)p->output.format <= OPS_FORMAT_AUTO);
    CHECK(p->output.quality >= 1 && p->output.quality <= 100);
    CHECK(p->output.quality_given || p->output.quality == OPS_DEFAULT_Q);
}

/* Writes the canonical text of a parsed plan into out (OPS_CANONICAL_MAX
 * bytes) and checks it: it fits, it is exactly as long as needed (one byte
 * less is refused, without writing past the buffer: ASan watches an
 * exact-size heap copy), and "original" means the empty plan. */
static inline void fuzz_canonical(const struct ops_plan *p, char *out)
{
    size_t n;
    char *exact;

    memset(out, 0, OPS_CANONICAL_MAX);
    CHECK(ops_plan_canonical(p, out, OPS_CANONICAL_MAX) == 0);
    n = strnlen(out, OPS_CANONICAL_MAX);
    CHECK(n > 0 && n < OPS_CANONICAL_MAX);
    CHECK((strcmp(out, "original") == 0) == ops_plan_is_empty(p));

    exact = malloc(n + 1);
    CHECK(exact != NULL);
    CHECK(ops_plan_canonical(p, exact, n + 1) == 0);
    CHECK(memcmp(exact, out, n + 1) == 0);
    free(exact);
    exact = malloc(n);
    CHECK(exact != NULL);
    CHECK(ops_plan_canonical(p, exact, n) == -1);
    free(exact);
}

/* A failed parse leaves an empty plan and an invalid-operation error. */
static inline void fuzz_check_failed_parse(const struct ops_plan *p, const struct util_error *err)
{
    CHECK(err->code == UTIL_ERR_INVALID_OPERATION);
    CHECK(err->detail[0] != '\0');
    fuzz_check_detail(err);
    CHECK(p->nsteps == 0);
    CHECK(ops_plan_is_empty(p));
}

#endif
