/* The flag handling every subcommand shares (cmd.h). */
#include <stdio.h>

#include "cmd/cmd.h"

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
