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

int cmd_serve(int argc, char **argv, const char *argv0);
int cmd_transform(int argc, char **argv, const char *argv0);
int cmd_sign(int argc, char **argv, const char *argv0);

#endif
