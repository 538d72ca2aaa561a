/* A bounded pool of libpq connections and query helpers (pg.h). */
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/pg.h"

#define PG_MAX_PARAMS   16
#define ACQUIRE_WAIT_MS 10000

struct pg_pool {
    char *url;
    int max;       /* connections open at most */
    int open;      /* connections open now (idle or in use) */
    PGconn **idle; /* [max], the idle ones */
    int nidle;
    pthread_mutex_t lock;
    pthread_cond_t cv; /* a connection was released */
};

static __thread char last_sqlstate[6];

const char *pg_last_sqlstate(void)
{
    return last_sqlstate;
}

/* Notices (e.g. "relation already exists, skipping") are not our users'
 * business: keep them out of the log. */
static void quiet_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *pg_connect(const char *url, struct util_error *err)
{
    /* Our defaults first, then the URL (expand_dbname): the URL's own
     * settings win. Keepalives notice a dead server on an idle TCP
     * connection within about half a minute; tcp_user_timeout bounds a
     * query whose answer never comes (a vanished server, a fail-over) to
     * 10 s instead of the kernel's quarter of an hour. */
    static const char *const keys[] = {
        "connect_timeout",  "application_name", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "dbname",          NULL};
    const char *const vals[] = {"5", "image-server", "10", "5", "3", "10000", url, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (c == NULL) {
        util_error_set(err, UTIL_ERR_UNAVAILABLE, "database: out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        util_error("postgres: connecting: %s", msg);
        util_error_set(err, UTIL_ERR_UNAVAILABLE, "the database is unreachable");
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    return c;
}

struct pg_pool *pg_pool_new(const char *url, int max, struct util_error *err)
{
    struct pg_pool *p = calloc(1, sizeof(*p));
    if (p == NULL || max < 1) {
        free(p);
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    p->url = strdup(url);
    p->max = max;
    p->idle = calloc((size_t)max, sizeof(*p->idle));
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (p->url == NULL || p->idle == NULL) {
        pg_pool_free(p);
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    /* One connection now, so a bad URL or password fails at start. */
    PGconn *c = pg_acquire(p, err);
    if (c == NULL) {
        pg_pool_free(p);
        return NULL;
    }
    pg_release(p, c);
    return p;
}

void pg_pool_free(struct pg_pool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->nidle; i++)
        PQfinish(p->idle[i]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->lock);
    free(p->idle);
    free(p->url);
    free(p);
}

const char *pg_pool_url(const struct pg_pool *p)
{
    return p->url;
}

/* An idle connection is usable unless the server closed it or sent
 * something while it was idle (a FATAL at a restart): both show as a
 * readable socket. */
static bool idle_usable(PGconn *c)
{
    if (PQstatus(c) != CONNECTION_OK)
        return false;
    struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
    if (pfd.fd < 0)
        return false;
    int n = poll(&pfd, 1, 0);
    return n == 0;
}

PGconn *pg_acquire(struct pg_pool *p, struct util_error *err)
{
    struct timespec deadline = util_deadline_in(ACQUIRE_WAIT_MS);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->nidle > 0) {
            PGconn *c = p->idle[--p->nidle];
            if (idle_usable(c)) {
                pthread_mutex_unlock(&p->lock);
                return c;
            }
            p->open--;
            PQfinish(c);
        }
        if (p->open < p->max)
            break;
        if (pthread_cond_timedwait(&p->cv, &p->lock, &deadline) != 0) {
            pthread_mutex_unlock(&p->lock);
            util_warn("postgres: all %d connections stayed busy for %d ms", p->max,
                      ACQUIRE_WAIT_MS);
            util_error_set(err, UTIL_ERR_UNAVAILABLE, "the database is busy; retry later");
            return NULL;
        }
    }
    p->open++;
    pthread_mutex_unlock(&p->lock);
    PGconn *c = pg_connect(p->url, err);
    if (c == NULL) {
        pthread_mutex_lock(&p->lock);
        p->open--;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->lock);
    }
    return c;
}

void pg_release(struct pg_pool *p, PGconn *c)
{
    if (c == NULL)
        return;
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
        PGresult *r = PQexec(c, "ROLLBACK");
        PQclear(r);
    }
    bool keep = PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE;
    pthread_mutex_lock(&p->lock);
    if (keep) {
        p->idle[p->nidle++] = c;
        c = NULL;
    } else {
        p->open--;
    }
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->lock);
    if (c)
        PQfinish(c);
}

/* Classifies a failed result (or a connection failure when r is NULL). */
static int query_error(PGconn *c, const PGresult *r, struct util_error *err, const char *what)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(last_sqlstate, sizeof(last_sqlstate), "%s", state ? state : "");
    enum util_err code = UTIL_ERR_INTERNAL;
    if (PQstatus(c) != CONNECTION_OK || state == NULL ||
        strncmp(state, "08", 2) == 0 ||  /* connection exception */
        strncmp(state, "57P", 3) == 0 || /* admin shutdown, cannot connect now */
        strncmp(state, "53", 2) == 0 ||  /* insufficient resources */
        strcmp(state, "40001") == 0 ||   /* serialization failure */
        strcmp(state, "40P01") == 0 ||   /* deadlock detected */
        strcmp(state, "25006") == 0 ||   /* read-only transaction (a standby) */
        strcmp(state, "55P03") == 0 ||   /* lock not available */
        strcmp(state, "57014") == 0)     /* canceled: statement timeout, an operator */
        code = UTIL_ERR_UNAVAILABLE;
    char msg[200];
    snprintf(msg, sizeof(msg), "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
    msg[strcspn(msg, "\n")] = '\0';
    /* Callers handle unique violations themselves (idempotency races):
     * no error line for those. */
    if (state == NULL || strcmp(state, "23505") != 0)
        util_error("postgres: %s: %s (%s)", what, msg, state ? state : "no server answer");
    return util_error_set(err, code, "database error while %s", what);
}

static PGresult *query_va(PGconn *c, struct util_error *err, const char *what, bool binary,
                          const char *sql, const char *fmt, va_list ap)
{
    const char *values[PG_MAX_PARAMS];
    int lengths[PG_MAX_PARAMS];
    int formats[PG_MAX_PARAMS];
    char nums[PG_MAX_PARAMS][24];
    int n = 0;
    for (; fmt[n] && n < PG_MAX_PARAMS; n++) {
        lengths[n] = 0;
        formats[n] = 0;
        switch (fmt[n]) {
        case 't':
        case 'z': {
            const char *t = va_arg(ap, const char *);
            values[n] = (fmt[n] == 'z' && (t == NULL || *t == '\0')) ? NULL : t;
            break;
        }
        case 'i':
            snprintf(nums[n], sizeof(nums[n]), "%" PRId64, va_arg(ap, int64_t));
            values[n] = nums[n];
            break;
        case 'b': {
            values[n] = va_arg(ap, const char *);
            size_t len = va_arg(ap, size_t);
            lengths[n] = (int)len;
            formats[n] = 1;
            break;
        }
        default:
            util_error_set(err, UTIL_ERR_INTERNAL, "bad query format");
            return NULL;
        }
    }
    /* Without parameters the simple protocol runs it: several statements
     * may then go in one string (migrations, LISTEN). */
    PGresult *r = (n == 0 && !binary)
                      ? PQexec(c, sql)
                      : PQexecParams(c, sql, n, NULL, values, lengths, formats, binary ? 1 : 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    query_error(c, r, err, what);
    PQclear(r);
    return NULL;
}

PGresult *pg_query(PGconn *c, struct util_error *err, const char *what, bool binary_results,
                   const char *sql, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *r = query_va(c, err, what, binary_results, sql, fmt, ap);
    va_end(ap);
    return r;
}

int pg_exec(PGconn *c, struct util_error *err, const char *what, const char *sql, const char *fmt,
            ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *r = query_va(c, err, what, false, sql, fmt, ap);
    va_end(ap);
    if (r == NULL)
        return -1;
    int n;
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        n = PQntuples(r);
    } else {
        const char *t = PQcmdTuples(r);
        n = (t && *t) ? atoi(t) : 0;
    }
    PQclear(r);
    return n;
}

int64_t pg_int(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

void pg_text(const PGresult *r, int row, int col, char *out, size_t n)
{
    snprintf(out, n, "%s", PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col));
}
