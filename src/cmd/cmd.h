/*
 * cmd: one file per subcommand, each with one entry point taking the
 * subcommand's own argv (argv[0] is the subcommand name). They return the
 * process exit status: 0 done, 1 failed at run time, 2 bad usage.
 */
#ifndef CMD_CMD_H
#define CMD_CMD_H

int cmd_serve(int argc, char **argv, const char *argv0);
int cmd_transform(int argc, char **argv, const char *argv0);
int cmd_sign(int argc, char **argv, const char *argv0);

#endif
