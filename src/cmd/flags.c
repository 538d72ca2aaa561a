/* The flag handling every subcommand shares (cmd.h). */
#include <stdio.h>

#include "cmd/cmd.h"
#include "store/store.h"

bool cmd_flags(struct util_config *cfg, unsigned cmd, const char *name, const char *usage, int argc,
               char **argv, int *argi, int *status)
{
    char errbuf[512];
    *argi = 1;
    switch (util_config_parse(cfg, cmd, name, argc, argv, argi, errbuf, sizeof(errbuf))) {
    case UTIL_CONFIG_HELP:
        if (usage)
            printf("\n%s", usage);
        *status = 0;
        return false;
    case UTIL_CONFIG_ERROR:
        fprintf(stderr, "image-server: %s\n", errbuf);
        *status = 2;
        return false;
    case UTIL_CONFIG_OK:
        break;
    }
    return true;
}

int cmd_need_postgres(const struct util_config *cfg, const char *name, int argc, char **argv,
                      int argi)
{
    if (argi < argc) {
        fprintf(stderr, "image-server: %s: unexpected argument '%s'\n", name, argv[argi]);
        return 2;
    }
    if (!store_url_is_postgres(cfg->database)) {
        fprintf(stderr,
                "image-server: %s: needs a postgres:// --database (processes on several "
                "machines share one PostgreSQL); on one machine with %s use `image-server "
                "serve`\n",
                name, cfg->database);
        return 2;
    }
    return 0;
}
