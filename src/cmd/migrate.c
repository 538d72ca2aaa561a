/* `image-server migrate`: creates or upgrades the schema, then exits
 * (DESIGN §1). Safe to run from several machines at once: PostgreSQL
 * migrations take an advisory lock, SQLite ones a write lock, and every
 * version is applied once, in its own transaction. */
#include <stdio.h>

#include "cmd/cmd.h"
#include "store/store.h"

int cmd_migrate(int argc, char **argv, const char *argv0)
{
    (void)argv0;
    struct util_config cfg;
    int argi, status;
    if (!cmd_flags(&cfg, UTIL_CMD_MIGRATE, "migrate", NULL, argc, argv, &argi, &status))
        return status;
    if (argi < argc) {
        fprintf(stderr, "image-server: migrate: unexpected argument '%s'\n", argv[argi]);
        util_config_free(&cfg);
        return 2;
    }
    struct util_error err = {0};
    int rc = 0;
    struct store *store = store_open_sized(cfg.database, 1, &err);
    if (store == NULL || store_migrate(store, &err) != 0) {
        fprintf(stderr, "image-server: migrate: %s\n", err.detail);
        rc = err.code == UTIL_ERR_INVALID_OPERATION ? 2 : 1;
    } else {
        util_info("migrate: the schema of %s is up to date", util_redact_url(cfg.database));
    }
    store_close(store);
    util_config_free(&cfg);
    return rc;
}
