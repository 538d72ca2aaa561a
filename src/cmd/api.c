/* `image-server api`: the HTTP API alone (run.c). It enqueues jobs and
 * never processes them; variants and /v1/transform still run in its
 * processing pool. Needs PostgreSQL (DESIGN §1) and a migrated schema. */
#include <stdio.h>

#include "cmd/cmd.h"

int cmd_api(int argc, char **argv, const char *argv0)
{
    struct util_config cfg;
    int argi, status;
    if (!cmd_flags(&cfg, UTIL_CMD_API, "api", NULL, argc, argv, &argi, &status))
        return status;
    int rc = cmd_need_postgres(&cfg, "api", argc, argv, argi);
    if (rc == 0)
        rc = cmd_run(&cfg, CMD_RUN_API, "api", argv0);
    util_config_free(&cfg);
    return rc;
}
