/*
 * libFuzzer target: the JSON form of the operation spec, as POST /v1/jobs
 * decodes it (json_loadb with JSON_REJECT_DUPLICATES, then ops_parse_json
 * on "operations" and "output"), and the canonical text of the plan.
 *
 * A top-level object is read like a job body; a top-level array is also
 * fed as the operations list alone, so mutations of a bare list reach the
 * parser without the wrapper. Invariants as for fuzz_ops_parse, except
 * that a JSON plan keeps its order and may repeat steps. A job accepted at
 * POST is stored as the compact JSON {"operations", "output"} (api/jobs.c)
 * and parsed again by the worker (worker/jobs.c): that round trip must give
 * the same plan.
 */
#include "fuzz_common.h"

/* Returns 0 with the canonical text in canon1 when the plan parses. */
static int check_parse(const json_t *operations, const json_t *output, char *canon1)
{
    static char canon2[OPS_CANONICAL_MAX];
    struct ops_plan plan, again;
    struct util_error err = {UTIL_OK, ""};
    struct util_error err2 = {UTIL_OK, ""};
    int rc = ops_parse_json(operations, output, &plan, &err);

    if (rc != 0) {
        CHECK(rc == -1);
        fuzz_check_failed_parse(&plan, &err);
        CHECK(ops_parse_json(operations, output, &again, &err2) == -1);
        CHECK(strcmp(err.detail, err2.detail) == 0);
        return -1;
    }
    CHECK(err.code == UTIL_OK);
    CHECK(!plan.from_url);
    fuzz_check_plan_ranges(&plan);
    /* "auto" needs an Accept header, which a job does not have. */
    CHECK(plan.output.format != OPS_FORMAT_AUTO);
    fuzz_canonical(&plan, canon1);

    CHECK(ops_parse_json(operations, output, &again, &err2) == 0);
    fuzz_canonical(&again, canon2);
    CHECK(strcmp(canon1, canon2) == 0);
    return 0;
}

/* The stored-spec round trip of a job (api/jobs.c, worker/jobs.c). */
static void check_stored(json_t *operations, json_t *output, const char *canon)
{
    static char canon2[OPS_CANONICAL_MAX];
    struct ops_plan plan;
    struct util_error err = {UTIL_OK, ""};
    json_error_t jerr;
    json_t *spec = json_pack("{s:O, s:O}", "operations", operations, "output",
                             output != NULL ? output : json_null());
    char *text;
    json_t *back;

    CHECK(spec != NULL);
    text = json_dumps(spec, JSON_COMPACT);
    CHECK(text != NULL);
    back = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(back != NULL);
    CHECK(ops_parse_json(json_object_get(back, "operations"), json_object_get(back, "output"),
                         &plan, &err) == 0);
    fuzz_canonical(&plan, canon2);
    CHECK(strcmp(canon, canon2) == 0);
    json_decref(back);
    free(text);
    json_decref(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char canon[OPS_CANONICAL_MAX];
    json_error_t jerr;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);

    if (root == NULL)
        return 0;
    if (json_is_object(root)) {
        json_t *operations = json_object_get(root, "operations");
        json_t *output = json_object_get(root, "output");

        if (check_parse(operations, output, canon) == 0)
            check_stored(operations, output, canon);
    } else if (json_is_array(root)) {
        (void)check_parse(root, NULL, canon);
    }
    json_decref(root);
    return 0;
}
