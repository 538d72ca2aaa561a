/*
 * cmd: one file per subcommand, each with one entry point taking the
 * subcommand's own argv (argv[0] is the subcommand name). They return the
 * process exit status: 0 done, 1 failed at run time, 2 bad usage.
 */
#ifndef CMD_CMD_H
#define CMD_CMD_H

#include <stdbool.h>

#include "util/util.h"

/* Parses the flags of subcommand `cmd` (flags.c). Returns true to go on
 * (*argi is the first positional argument; free cfg with
 * util_config_free); false after --help (usage printed, *status 0) or a
 * bad flag (one line on stderr, *status 2). */
bool cmd_flags(struct util_config *cfg, unsigned cmd, const char *name, const char *usage, int argc,
               char **argv, int *argi, int *status);

/* api and worker: 0 when there is no stray argument and the database is
 * PostgreSQL; else 2 after one line on stderr (with sqlite: say to use
 * serve). */
int cmd_need_postgres(const struct util_config *cfg, const char *name, int argc, char **argv,
                      int argi);

/* What cmd_run starts (run.c). */
#define CMD_RUN_API 1u /* the HTTP API */
#define CMD_RUN_JOBS                                                                               \
    2u /* job workers and the sweeper (with /healthz, /metrics alone if no API)                    \
        */
#define CMD_RUN_MIGRATE 4u /* create or upgrade the schema first (else only check it) */
/* Runs until SIGTERM or SIGINT, then stops gracefully. The exit status. */
int cmd_run(struct util_config *cfg, unsigned what, const char *name, const char *argv0);

int cmd_serve(int argc, char **argv, const char *argv0);
int cmd_api(int argc, char **argv, const char *argv0);
int cmd_worker(int argc, char **argv, const char *argv0);
int cmd_migrate(int argc, char **argv, const char *argv0);
int cmd_transform(int argc, char **argv, const char *argv0);
int cmd_sign(int argc, char **argv, const char *argv0);

#endif
