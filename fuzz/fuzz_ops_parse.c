/*
 * libFuzzer target: the URL form of the operation spec (ops_parse_query,
 * src/ops/parse.c), then its canonical text (ops_plan_canonical), which
 * keys the variant cache.
 *
 * Invariants: a parse either succeeds with every field in range and the
 * steps in the fixed URL order, or fails with an empty plan and a
 * printable one-line detail; the canonical text of a parsed plan fits in
 * OPS_CANONICAL_MAX; parsing the same text twice gives the same text.
 */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char canon1[OPS_CANONICAL_MAX];
    static char canon2[OPS_CANONICAL_MAX];
    struct ops_plan plan, again;
    struct util_error err = {UTIL_OK, ""};
    struct util_error err2 = {UTIL_OK, ""};
    char *query = fuzz_strndup(data, size);
    int rc = ops_parse_query(query, &plan, &err);

    if (rc != 0) {
        CHECK(rc == -1);
        fuzz_check_failed_parse(&plan, &err);
        /* Refusals are deterministic too. */
        CHECK(ops_parse_query(query, &again, &err2) == -1);
        CHECK(strcmp(err.detail, err2.detail) == 0);
        free(query);
        return 0;
    }
    CHECK(err.code == UTIL_OK);
    CHECK(plan.from_url);
    CHECK(plan.nsteps <= 6);
    fuzz_check_plan_ranges(&plan);
    /* A URL plan has its steps in the fixed order, each at most once. */
    for (int i = 1; i < plan.nsteps; i++)
        CHECK(plan.steps[i - 1].kind < plan.steps[i].kind);
    fuzz_canonical(&plan, canon1);

    CHECK(ops_parse_query(query, &again, &err2) == 0);
    fuzz_canonical(&again, canon2);
    CHECK(strcmp(canon1, canon2) == 0);
    free(query);
    return 0;
}
