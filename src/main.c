/* image-server: dispatches to a subcommand (src/cmd/), nothing else. */
#include <stdio.h>
#include <string.h>
#ifdef IMAGE_SERVER_GLIBC_MALLOC
#include <malloc.h>
#endif

#include "cmd/cmd.h"
#include "ops/ops.h"
#include "util/util.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: image-server COMMAND [FLAGS]\n\n"
                 "commands:\n"
                 "  serve      API + job workers + sweeper in one process (SQLite + a blob "
                 "folder)\n"
                 "  api        the API alone, for many machines sharing one PostgreSQL\n"
                 "  worker     job workers + sweeper, for many machines sharing one PostgreSQL\n"
                 "  migrate    create or upgrade the database schema, then exit\n"
                 "  transform  IN OUT 'QUERY': one local file through the same operations\n"
                 "  sign       'PATH?QUERY': print a signed variant URL\n\n"
                 "image-server --version       print the version\n"
                 "image-server COMMAND --help  list the command's flags and defaults\n\n");
    util_config_print_help(UTIL_CMD_SERVE, "serve");
}

int main(int argc, char **argv)
{
#ifdef IMAGE_SERVER_GLIBC_MALLOC
    /* glibc gives each thread that contends an arena of its own, and
     * libvips' short-lived large buffers fragment them: two arenas cut
     * peak memory by a third under load and were faster than jemalloc
     * here (README, "Performance and memory"). */
    mallopt(M_ARENA_MAX, 2);
#endif
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        if (ops_init(argv[0], 1, NULL) != 0)
            return 1;
        printf("image-server %s (libvips %s)\n", IMAGE_SERVER_VERSION, ops_vips_version());
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc - 1, argv + 1, argv[0]);
    if (strcmp(cmd, "api") == 0)
        return cmd_api(argc - 1, argv + 1, argv[0]);
    if (strcmp(cmd, "worker") == 0)
        return cmd_worker(argc - 1, argv + 1, argv[0]);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(argc - 1, argv + 1, argv[0]);
    if (strcmp(cmd, "transform") == 0)
        return cmd_transform(argc - 1, argv + 1, argv[0]);
    if (strcmp(cmd, "sign") == 0)
        return cmd_sign(argc - 1, argv + 1, argv[0]);
    fprintf(stderr, "image-server: unknown command '%s' (see image-server --help)\n", cmd);
    return 2;
}
