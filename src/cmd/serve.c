/* `image-server serve`: the API, the job workers and the sweeper in one
 * process (run.c), creating or upgrading the schema at start. SQLite and a
 * blob folder by default; PostgreSQL works too. */
#include <stdio.h>

#include "cmd/cmd.h"

int cmd_serve(int argc, char **argv, const char *argv0)
{
    struct util_config cfg;
    int argi, status;
    if (!cmd_flags(&cfg, UTIL_CMD_SERVE, "serve", NULL, argc, argv, &argi, &status))
        return status;
    if (argi < argc) {
        fprintf(stderr, "image-server: serve: unexpected argument '%s'\n", argv[argi]);
        util_config_free(&cfg);
        return 2;
    }
    int rc = cmd_run(&cfg, CMD_RUN_API | CMD_RUN_JOBS | CMD_RUN_MIGRATE, "serve", argv0);
    util_config_free(&cfg);
    return rc;
}
