/*
 * http: libmicrohttpd glue. Owns sockets, routing, request bodies (streamed
 * with a cap), responses, suspend/resume onto the processing pool, the
 * connection limits, the access log and graceful stop. Knows nothing of
 * images: handlers come from api/ through a route table.
 *
 * Threads: libmicrohttpd's I/O threads call handlers first. A handler that
 * needs CPU or disk work returns HTTP_RUN_ON_POOL; the connection is then
 * suspended and the same handler runs again on a processing-pool thread
 * (http_request_on_pool() is true there), and the connection is resumed
 * with its answer. HTTP_RUN_BLOCKING does the same on the blocking pool,
 * for work that waits on a disk or a database rather than a CPU (a commit),
 * so it never queues behind image processing. A request is only ever touched by one thread at a
 * time.
 */
#ifndef HTTP_HTTP_H
#define HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

struct http_request;

/* What a handler asks for next. */
enum http_next {
    HTTP_DONE,         /* a response has been set */
    HTTP_RUN_ON_POOL,  /* call me again on a processing thread */
    HTTP_RUN_BLOCKING, /* call me again on a thread for short blocking work (a commit) */
    HTTP_WAIT,         /* park the request (see http_request_wait) */
};

typedef enum http_next (*http_handler)(struct http_request *req, void *ctx);

/* One route: method + pattern ("/v1/images/{id}/info"; a {name} segment
 * matches one non-empty path segment). */
struct http_route {
    const char *method;  /* "GET", "POST", "DELETE"; GET also answers HEAD */
    const char *pattern; /* path pattern */
    http_handler fn;     /* the handler */
    bool body;           /* accepts a body (capped by max_body_bytes); else any body is 413 */
    const char *name;    /* route label for metrics ("images_get") */
    int access;          /* opaque to http: passed to the authorize callback */
};

struct http_server_config {
    const char *listen;             /* "host:port"; port 0 picks a free one */
    int io_threads;                 /* libmicrohttpd thread pool size */
    struct util_pool *pool;         /* processing pool (shared, not owned) */
    struct util_pool *blocking;     /* short blocking work: database commits (not owned) */
    int64_t max_connections;        /* MHD_OPTION_CONNECTION_LIMIT */
    int64_t max_client_connections; /* per client address, except exempt ones */
    int64_t max_client_requests;    /* per client in or waiting for processing (429 past it) */
    const char *trusted_proxy;      /* CIDRs whose last X-Forwarded-For hop names the client */
    const char *limit_exempt;       /* comma-separated CIDRs */
    int64_t idle_timeout_ms;        /* idle connection timeout */
    int64_t max_body_bytes;         /* body cap for routes that take one */
    const struct http_route *routes;
    size_t nroutes;
    void *ctx; /* passed to every handler */
    /* Called on the I/O thread right after routing, before anything else
     * (body size included). Returns false after setting the refusal. */
    bool (*authorize)(struct http_request *req, void *ctx);
};

struct http_server;

/* Binds and starts serving. NULL on error (err says why). */
struct http_server *http_server_start(const struct http_server_config *cfg, struct util_error *err);
/* The bound port (useful with port 0). */
int http_server_port(struct http_server *srv);
/* Graceful stop: stops accepting, lets in-flight requests finish up to
 * deadline_ms, answers anything still waiting with 503, stops the daemon and
 * frees the server. Returns the number of requests abandoned at the
 * deadline (their pool threads may still be running). */
int http_server_stop(struct http_server *srv, int64_t deadline_ms);

/* ---- requests ----------------------------------------------------------- */

const char *http_request_method(struct http_request *req);
const char *http_request_path(struct http_request *req);
/* A {name} segment of the matched pattern, or NULL. */
const char *http_request_param(struct http_request *req, const char *name);
/* A request header (case-insensitive), or NULL. */
const char *http_request_header(struct http_request *req, const char *name);
/* A decoded query argument, or NULL. */
const char *http_request_query(struct http_request *req, const char *name);
/* The path exactly as sent (before percent-decoding). */
const char *http_request_raw_path(struct http_request *req);
/* The matched route's access value. */
int http_request_route_access(struct http_request *req);
/* The query string exactly as sent (before percent-decoding), "" if none. */
const char *http_request_raw_query(struct http_request *req);
/* The body received so far (the whole body once the handler runs). */
const void *http_request_body(struct http_request *req, size_t *len);
/* The request id (X-Request-Id as sent, or a generated one). */
const char *http_request_id(struct http_request *req);
/* The socket peer's address as text. */
const char *http_request_peer(struct http_request *req);
/* The client: the peer, or the last X-Forwarded-For hop when the peer is a
 * trusted proxy. */
const char *http_request_client(struct http_request *req);
/* True when the handler runs on a processing thread. */
bool http_request_on_pool(struct http_request *req);
/* Per-request slot for the handler's own state between its two calls. The
 * handler owns what it stores; free_fn (may be NULL) runs when the request
 * ends. */
void http_request_set_state(struct http_request *req, void *state, void (*free_fn)(void *));
void *http_request_state(struct http_request *req);

/* Parks the request without holding any thread: the connection is
 * suspended until http_server_wake(key) or timeout_ms, then the handler
 * runs again on an I/O thread with http_request_woken() true. Call it
 * BEFORE checking whether there is anything to wait for, then return
 * HTTP_WAIT (or answer at once, ignoring the wait): a wake that comes
 * between the check and the park is not lost. */
void http_request_wait(struct http_request *req, const char *key, int64_t timeout_ms);
/* On a pool thread, just before writing durable state: false when the
 * request was already answered 503 by a stop (then write nothing); true
 * marks it so a stop waits for the commit instead of answering 503. */
bool http_request_begin_commit(struct http_request *req);
/* True when the handler runs again after a wait (woken or timed out). */
bool http_request_woken(struct http_request *req);
/* Wakes every request waiting on key. Thread-safe, never blocks for long. */
void http_server_wake(struct http_server *srv, const char *key);

/* ---- responses (set once per request) ----------------------------------- */

/* Adds a response header (copied). */
void http_response_header(struct http_request *req, const char *name, const char *value);
/* A response from memory; takes ownership of body (freed with free()). */
void http_respond(struct http_request *req, int status, const char *content_type, void *body,
                  size_t len);
/* A response from a copy of a string. */
void http_respond_text(struct http_request *req, int status, const char *content_type,
                       const char *text);
/* A response streamed from an open file; takes ownership of fd. */
void http_respond_fd(struct http_request *req, int status, const char *content_type, int fd,
                     uint64_t size);
/* An empty response (204, 304). */
void http_respond_empty(struct http_request *req, int status);
/* An RFC 9457 problem+json response. */
void http_respond_problem(struct http_request *req, int status, const char *type, const char *title,
                          const char *detail);

/* ---- multipart/form-data ------------------------------------------------- */

/* One part of a multipart/form-data body. data points into the body; the
 * strings are per-thread copies (see http_multipart_find). */
struct http_part {
    const char *name;         /* form field name (NUL-terminated copy in the parser) */
    const char *filename;     /* filename or NULL */
    const char *content_type; /* part Content-Type or NULL */
    const void *data;         /* bytes, inside the body */
    size_t len;               /* length of data */
};

/* Extracts the boundary from a Content-Type header value
 * ("multipart/form-data; boundary=xyz", quoted or not) into out.
 * Returns 0, or -1 when there is none or it is invalid (RFC 2046: 1..70 chars). */
int http_multipart_boundary(const char *content_type, char *out, size_t outlen);
/* Finds the part named `field` in body. Returns 0 and fills *part, 1 when the
 * body is well formed but has no such field, -1 when the body is malformed
 * (detail, if not NULL, says how; 128 bytes). Strings in *part stay valid
 * until the next call on the same thread. Pure: no allocation on the heap. */
int http_multipart_find(const void *body, size_t len, const char *boundary, const char *field,
                        struct http_part *part, char *detail, size_t detail_len);

#endif
