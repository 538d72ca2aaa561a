/* Configuration: flags with IMAGE_SERVER_* twins over defaults (util.h).
 * One table describes every flag: its name, the subcommands it applies to,
 * its type, its default (parsed by the same code as user values, so the
 * help text shows exactly what is used) and its help line. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "util/util.h"

enum flag_type { F_STRING, F_SIZE, F_DURATION, F_INT, F_ONOFF, F_LIST };

struct flag {
    const char *name; /* without the leading "--" */
    unsigned cmds;    /* UTIL_CMD_* mask */
    enum flag_type type;
    size_t offset;    /* into struct util_config */
    const char *def;  /* default, as text */
    int64_t min, max; /* range for numbers */
    const char *help;
};

#define OFF(f)  offsetof(struct util_config, f)
#define S_SERVE (UTIL_CMD_SERVE)
#define S_DB    (UTIL_CMD_SERVE | UTIL_CMD_API | UTIL_CMD_WORKER | UTIL_CMD_MIGRATE)
#define S_PROC  (UTIL_CMD_SERVE | UTIL_CMD_API | UTIL_CMD_WORKER | UTIL_CMD_TRANSFORM)
#define S_HTTP  (UTIL_CMD_SERVE | UTIL_CMD_API)
#define BIG     INT64_MAX

static const struct flag FLAGS[] = {
    {"listen", S_HTTP, F_STRING, OFF(listen), "127.0.0.1:8000", 0, 0,
     "address to listen on, host:port (port 0 picks a free port)"},
    /* The worker's own listener (/healthz, /metrics) has its own default:
     * set after the entry above, it wins for `worker` (util_config_parse). */
    {"listen", UTIL_CMD_WORKER, F_STRING, OFF(listen), "127.0.0.1:8001", 0, 0,
     "address of the worker's /healthz and /metrics, host:port (port 0 picks a free port)"},
    {"database", S_DB, F_STRING, OFF(database), "sqlite:./data/image-server.db", 0, 0,
     "metadata database: sqlite:PATH or postgres://..."},
    {"blobs", S_DB & ~UTIL_CMD_MIGRATE, F_STRING, OFF(blobs), "fs:./data/blobs", 0, 0,
     "blob storage: fs:PATH (a folder; shared by every process of a fleet) or db (inside "
     "PostgreSQL)"},
    {"db-connections", S_DB, F_INT, OFF(db_connections), "16", 2, 1000,
     "PostgreSQL connections this process may open (one more listens for job events)"},
    {"variant-cache", S_HTTP, F_ONOFF, OFF(variant_cache), "on", 0, 0,
     "store variants and serve them again (on|off)"},
    {"max-body-bytes", S_HTTP, F_SIZE, OFF(max_body_bytes), "50MiB", 1, BIG,
     "largest request body"},
    {"max-pixels", S_PROC, F_INT, OFF(max_pixels), "100000000", 1, BIG,
     "largest source image, width x height x pages, read from the header"},
    {"max-pixels-progressive", S_PROC, F_INT, OFF(max_pixels_progressive), "30000000", 1, BIG,
     "the same for progressive JPEG and interlaced PNG (no shrink-on-load)"},
    {"max-output-pixels", S_PROC, F_INT, OFF(max_output_pixels), "50000000", 1, BIG,
     "largest output image, checked before any pixel is made"},
    {"timeout", S_PROC, F_DURATION, OFF(timeout_ms), "30s", 1, BIG,
     "processing deadline of one request"},
    {"concurrency", S_PROC, F_INT, OFF(concurrency), "0", 0, 4096,
     "processing threads (0: one per core)"},
    {"vips-threads", S_PROC, F_INT, OFF(vips_threads), "1", 1, 64,
     "libvips worker threads per image (parallelism comes from --concurrency)"},
    {"queue-max", S_HTTP, F_INT, OFF(queue_max), "0", 0, 1000000,
     "requests waiting for a processing thread, past it 503 at once (0: 4 x concurrency)"},
    {"http-threads", S_HTTP, F_INT, OFF(http_threads), "0", 0, 256,
     "HTTP I/O threads (0: one per core)"},
    {"max-connections", S_HTTP, F_INT, OFF(max_connections), "10000", 1, 1000000,
     "open connections"},
    {"max-client-connections", S_HTTP, F_INT, OFF(max_client_connections), "128", 1, 1000000,
     "open connections from one client address (--limit-exempt skips it)"},
    {"limit-exempt", S_HTTP, F_STRING, OFF(limit_exempt), "127.0.0.1/32,::1/128", 0, 0,
     "comma-separated CIDRs the per-client limits skip (\"\" for none)"},
    {"idle-timeout", S_HTTP, F_DURATION, OFF(idle_timeout_ms), "60s", 1000, BIG,
     "an idle connection is closed after this long"},
    {"shutdown-timeout", S_HTTP | UTIL_CMD_WORKER, F_DURATION, OFF(shutdown_timeout_ms), "30s", 0,
     BIG, "on SIGTERM, how long in-flight requests and running jobs may take to finish"},
    {"api-key", S_HTTP, F_LIST, OFF(api_keys), "", 0, 0,
     "key that writes, job calls and the image list need as Authorization: Bearer KEY "
     "(repeatable; the environment twin takes a comma-separated list)"},
    {"api-keys-file", S_HTTP, F_STRING, OFF(api_keys_file), "", 0, 0,
     "file of API keys, one a line (# comments), re-read on SIGHUP"},
    {"signing-key", S_HTTP | UTIL_CMD_SIGN, F_STRING, OFF(signing_key), "", 0, 0,
     "key whose HMAC-SHA256 variant URLs must carry as sig= (\"\": none)"},
    {"max-client-requests", S_HTTP, F_INT, OFF(max_client_requests), "0", 0, 1000000,
     "requests one client may have in or waiting for processing, past it 429 "
     "(0: 2 x concurrency)"},
    {"trusted-proxy", S_HTTP, F_STRING, OFF(trusted_proxy), "", 0, 0,
     "comma-separated CIDRs of proxies whose last X-Forwarded-For hop names the client"},
    {"jobs-max", S_HTTP, F_INT, OFF(jobs_max), "10000", 1, BIG,
     "queued jobs; past it POST /v1/jobs is 503"},
    {"max-attempts", S_HTTP, F_INT, OFF(max_attempts), "3", 1, 100, "attempts per job"},
    {"lease", S_SERVE | UTIL_CMD_WORKER, F_DURATION, OFF(lease_ms), "30s", 300, BIG,
     "job lease, renewed every third of it"},
    {"workers", S_SERVE | UTIL_CMD_WORKER, F_INT, OFF(workers), "0", 0, 1024,
     "job worker threads (0: one per core)"},
    {"variant-cache-max-bytes", S_SERVE | UTIL_CMD_WORKER, F_SIZE, OFF(variant_cache_max_bytes),
     "10GiB", 0, BIG, "variant bytes kept; the least recently used are evicted past it"},
    {"blob-grace", S_DB, F_DURATION, OFF(blob_grace_ms), "1h", 0, BIG,
     "age before an unreferenced blob is collected"},
    {"sweep-interval", S_HTTP | UTIL_CMD_WORKER, F_DURATION, OFF(sweep_interval_ms), "5s", 10, BIG,
     "how often the sweeper runs (api: how often it writes which variants it served)"},
};
#define NFLAGS (sizeof(FLAGS) / sizeof(FLAGS[0]))

int util_parse_int(const char *s, int64_t *out)
{
    if (s == NULL || *s == '\0' || isspace((unsigned char)*s) || *s == '+')
        return -1;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Splits "123unit" into a non-negative integer and its unit. */
static int number_unit(const char *s, int64_t *num, const char **unit)
{
    if (s == NULL || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || v > (unsigned long long)INT64_MAX)
        return -1;
    *num = (int64_t)v;
    *unit = end;
    return 0;
}

static int scale(int64_t v, int64_t mult, int64_t *out)
{
    if (v > INT64_MAX / mult)
        return -1;
    *out = v * mult;
    return 0;
}

int util_parse_size(const char *s, int64_t *out)
{
    int64_t v;
    const char *unit;
    if (number_unit(s, &v, &unit) != 0)
        return -1;
    int64_t mult;
    if (*unit == '\0' || strcmp(unit, "B") == 0)
        mult = 1;
    else if (strcmp(unit, "KiB") == 0)
        mult = INT64_C(1) << 10;
    else if (strcmp(unit, "MiB") == 0)
        mult = INT64_C(1) << 20;
    else if (strcmp(unit, "GiB") == 0)
        mult = INT64_C(1) << 30;
    else if (strcmp(unit, "TiB") == 0)
        mult = INT64_C(1) << 40;
    else
        return -1;
    return scale(v, mult, out);
}

int util_parse_duration(const char *s, int64_t *out_ms)
{
    int64_t v;
    const char *unit;
    if (number_unit(s, &v, &unit) != 0)
        return -1;
    int64_t mult;
    if (*unit == '\0' || strcmp(unit, "s") == 0)
        mult = 1000;
    else if (strcmp(unit, "ms") == 0)
        mult = 1;
    else if (strcmp(unit, "m") == 0)
        mult = 60 * 1000;
    else if (strcmp(unit, "h") == 0)
        mult = 3600 * 1000;
    else
        return -1;
    return scale(v, mult, out_ms);
}

static const char *type_hint(enum flag_type t)
{
    switch (t) {
    case F_SIZE:
        return "a size such as 50MiB";
    case F_DURATION:
        return "a duration such as 30s or 250ms";
    case F_INT:
        return "an integer";
    case F_ONOFF:
        return "on or off";
    case F_STRING:
    case F_LIST:
        break;
    }
    return "a string";
}

/* Stores text as the value of f in cfg. 0, or -1 with errbuf set. */
static int set_value(struct util_config *cfg, const struct flag *f, const char *text,
                     const char *source, char *errbuf, size_t errlen)
{
    char *base = (char *)cfg;
    int64_t v = 0;
    int rc = 0;
    switch (f->type) {
    case F_STRING: {
        char **slot = (char **)(base + f->offset);
        free(*slot);
        *slot = strdup(text);
        return 0;
    }
    case F_LIST: {
        /* Repeatable: each use adds a line (a default or an environment
         * value replaces the list; commas separate items there). */
        char **slot = (char **)(base + f->offset);
        bool replace = source[0] != '\0';
        char *item = strdup(text);
        if (replace)
            for (char *p = item; *p; p++)
                if (*p == ',')
                    *p = '\n';
        char *joined =
            (!replace && *slot && **slot) ? g_strdup_printf("%s\n%s", *slot, item) : g_strdup(item);
        free(item);
        free(*slot);
        *slot = strdup(joined);
        g_free(joined);
        return 0;
    }
    case F_ONOFF: {
        bool *slot = (bool *)(base + f->offset);
        if (strcmp(text, "on") == 0 || strcmp(text, "true") == 0 || strcmp(text, "1") == 0)
            *slot = true;
        else if (strcmp(text, "off") == 0 || strcmp(text, "false") == 0 || strcmp(text, "0") == 0)
            *slot = false;
        else
            rc = -1;
        break;
    }
    case F_SIZE:
        rc = util_parse_size(text, &v);
        break;
    case F_DURATION:
        rc = util_parse_duration(text, &v);
        break;
    case F_INT:
        rc = util_parse_int(text, &v);
        break;
    }
    if (rc == 0 && f->type != F_ONOFF && f->type != F_LIST && (v < f->min || v > f->max)) {
        const char *unit = f->type == F_DURATION ? " ms" : f->type == F_SIZE ? " bytes" : "";
        if (f->max == BIG)
            snprintf(errbuf, errlen, "--%s%s: '%s' is out of range (at least %" PRId64 "%s)",
                     f->name, source, text, f->min, unit);
        else
            snprintf(errbuf, errlen, "--%s%s: '%s' is out of range (%" PRId64 "..%" PRId64 "%s)",
                     f->name, source, text, f->min, f->max, unit);
        return -1;
    }
    if (rc != 0) {
        snprintf(errbuf, errlen, "--%s%s: '%s' is not %s", f->name, source, text,
                 type_hint(f->type));
        return -1;
    }
    if (f->type != F_ONOFF && f->type != F_LIST)
        *(int64_t *)(base + f->offset) = v;
    return 0;
}

static void env_name(const struct flag *f, char *out, size_t n)
{
    int k = snprintf(out, n, "IMAGE_SERVER_");
    for (const char *p = f->name; *p && (size_t)k + 1 < n; p++)
        out[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[k] = '\0';
}

void util_config_free(struct util_config *cfg)
{
    for (size_t i = 0; i < NFLAGS; i++) {
        if (FLAGS[i].type == F_STRING || FLAGS[i].type == F_LIST) {
            char **slot = (char **)((char *)cfg + FLAGS[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
}

enum util_config_result util_config_parse(struct util_config *cfg, unsigned cmd,
                                          const char *cmd_name, int argc, char **argv, int *argi,
                                          char *errbuf, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    /* Defaults for every flag (also those of other subcommands, so code
     * reading a field never sees garbage), those of this subcommand last
     * (a field may have a default per subcommand), then the environment. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < NFLAGS; i++) {
            if (((FLAGS[i].cmds & cmd) != 0) != (pass == 1))
                continue;
            if (set_value(cfg, &FLAGS[i], FLAGS[i].def, " (default)", errbuf, errlen) != 0)
                goto fail;
        }
    }
    for (size_t i = 0; i < NFLAGS; i++) {
        if (!(FLAGS[i].cmds & cmd))
            continue;
        char env[96];
        env_name(&FLAGS[i], env, sizeof(env));
        const char *val = getenv(env);
        if (val == NULL)
            continue;
        char src[112];
        snprintf(src, sizeof(src), " (from %s)", env);
        if (set_value(cfg, &FLAGS[i], val, src, errbuf, errlen) != 0)
            goto fail;
    }
    int i = *argi;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            util_config_print_help(cmd, cmd_name);
            util_config_free(cfg);
            return UTIL_CONFIG_HELP;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (arg[0] == '-' && arg[1] != '\0') {
                snprintf(errbuf, errlen, "%s: unknown flag '%s'", cmd_name, arg);
                goto fail;
            }
            break; /* a positional argument */
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct flag *f = NULL;
        for (size_t k = 0; k < NFLAGS; k++) {
            if ((FLAGS[k].cmds & cmd) && strlen(FLAGS[k].name) == nlen &&
                strncmp(FLAGS[k].name, name, nlen) == 0) {
                f = &FLAGS[k];
                break;
            }
        }
        if (f == NULL) {
            snprintf(errbuf, errlen, "%s: unknown flag '--%.*s' (see image-server %s --help)",
                     cmd_name, (int)nlen, name, cmd_name);
            goto fail;
        }
        const char *val;
        if (eq) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc) {
                snprintf(errbuf, errlen, "--%s: needs a value", f->name);
                goto fail;
            }
            val = argv[++i];
        }
        if (set_value(cfg, f, val, "", errbuf, errlen) != 0)
            goto fail;
    }
    *argi = i;
    return UTIL_CONFIG_OK;
fail:
    util_config_free(cfg);
    return UTIL_CONFIG_ERROR;
}

void util_config_print_help(unsigned cmd, const char *cmd_name)
{
    printf("Flags of image-server %s (each also read from its environment variable):\n\n",
           cmd_name);
    for (size_t i = 0; i < NFLAGS; i++) {
        const struct flag *f = &FLAGS[i];
        if (!(f->cmds & cmd))
            continue;
        char env[96];
        env_name(f, env, sizeof(env));
        printf("  --%-24s %s\n  %-26s env %s, default %s\n", f->name, f->help, "", env,
               f->def[0] ? f->def : "\"\"");
    }
}
