/*
 * A bounded pool of libpq connections and small query helpers, shared by the
 * PostgreSQL store (postgres.c) and the blobs-in-the-database backend
 * (blob/db.c), so one process keeps one budget of connections.
 *
 * A connection that breaks (the server restarted, the network dropped) is
 * thrown away when it is released, and an idle one is checked before it is
 * handed out, so a restarted database is used again without restarting the
 * process. Errors are classified: connection loss, a server shutting down,
 * too many connections, serialization failures and deadlocks are
 * UTIL_ERR_UNAVAILABLE (try again later); anything else UTIL_ERR_INTERNAL.
 */
#ifndef STORE_PG_H
#define STORE_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

/* The database's clock in ms since the epoch: one clock for every machine
 * of a fleet (leases, backoff and run_at never depend on a worker's clock). */
#define PG_NOW_MS "(extract(epoch from clock_timestamp()) * 1000)::bigint"

struct pg_pool;

/* Opens a pool of at most max connections to url (a libpq URI or
 * key=value string) and checks that one connection works. NULL on error. */
struct pg_pool *pg_pool_new(const char *url, int max, struct util_error *err);
void pg_pool_free(struct pg_pool *p);
/* The URL the pool was opened with. */
const char *pg_pool_url(const struct pg_pool *p);
/* A connection of the caller's own until pg_release; waits up to a few
 * seconds when all are in use (then UTIL_ERR_UNAVAILABLE). */
PGconn *pg_acquire(struct pg_pool *p, struct util_error *err);
/* Gives the connection back: rolled back if left in a transaction, closed
 * if broken. NULL is ignored. */
void pg_release(struct pg_pool *p, PGconn *c);
/* Opens one connection outside the pool (the LISTEN connection). */
PGconn *pg_connect(const char *url, struct util_error *err);

/* Runs sql with parameters described by fmt, one letter each:
 *   't' const char * as text, 'z' the same but NULL when empty or NULL,
 *   'i' int64_t, 'b' const void * then size_t: binary (bytea).
 * With binary_results the result columns come back in binary form.
 * Returns the result (PGRES_COMMAND_OK or PGRES_TUPLES_OK; free with
 * PQclear) or NULL with err set ("database error while <what>"). */
PGresult *pg_query(PGconn *c, struct util_error *err, const char *what, bool binary_results,
                   const char *sql, const char *fmt, ...);
/* The same for a statement whose result is not needed: returns the number
 * of rows it changed or returned, or -1. */
int pg_exec(PGconn *c, struct util_error *err, const char *what, const char *sql, const char *fmt,
            ...);
/* The SQLSTATE of the last query that failed on this thread ("" if it
 * was not a server error, e.g. a lost connection). */
const char *pg_last_sqlstate(void);

/* Column helpers (text results). */
int64_t pg_int(const PGresult *r, int row, int col);
void pg_text(const PGresult *r, int row, int col, char *out, size_t n);

#endif
