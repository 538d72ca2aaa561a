/* `image-server worker`: job workers and the sweeper (run.c), with
 * /healthz, /readyz and /metrics on its own --listen. Needs PostgreSQL
 * (DESIGN §1) and a migrated schema. SIGTERM finishes running jobs up to
 * --shutdown-timeout and gives the rest back to the queue. */
#include <stdio.h>

#include "cmd/cmd.h"

int cmd_worker(int argc, char **argv, const char *argv0)
{
    struct util_config cfg;
    int argi, status;
    if (!cmd_flags(&cfg, UTIL_CMD_WORKER, "worker", NULL, argc, argv, &argi, &status))
        return status;
    int rc = cmd_need_postgres(&cfg, "worker", argc, argv, argi);
    if (rc == 0)
        rc = cmd_run(&cfg, CMD_RUN_JOBS, "worker", argv0);
    util_config_free(&cfg);
    return rc;
}
