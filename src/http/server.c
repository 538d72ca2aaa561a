/*
 * The HTTP server on libmicrohttpd (http.h).
 *
 * Life of a request:
 *  1. uri_log() allocates the request (libmicrohttpd hands us the raw URI
 *     there, before it decodes anything; the raw query is kept for URL
 *     signatures).
 *  2. The first access_handler() call routes it and checks Content-Length
 *     against the cap: an unknown route, a wrong method or a body that is
 *     too large is answered at once, before any body byte is read.
 *  3. Body calls append to a buffer that never grows past the cap; a
 *     chunked body that passes it is cut off (MHD_NO closes the connection:
 *     libmicrohttpd 0.9.75 cannot answer in the middle of an upload).
 *  4. The last call runs the handler on the I/O thread. If it asks for the
 *     processing pool, the connection is suspended, the handler runs again
 *     on a pool thread, and the connection is resumed; the next call queues
 *     the answer.
 *  5. completed() writes the access-log line and the metrics and drops the
 *     I/O side's reference; the pool side holds its own while it runs.
 *
 * Invariants: a request is touched by one thread at a time, except for the
 * fields guarded by srv->lock (state, abandoned, refs, the in-flight list).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <glib.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http.h"

#define MAX_PARAMS  4
#define MAX_HEADERS 16
#define MAX_EXEMPT  32
#define DISCARD_MAX 65536 /* body bytes read away on a route that takes none */

enum req_state {
    ST_NEW,    /* not routed yet */
    ST_BODY,   /* receiving the body */
    ST_POOL,   /* suspended, waiting for or running on the pool */
    ST_WAIT,   /* suspended by the handler until woken or timed out */
    ST_RERUN,  /* woken: run the handler again */
    ST_READY,  /* the answer is set and can be queued */
    ST_QUEUED, /* the answer was queued */
};

struct cidr {
    int family;             /* AF_INET or AF_INET6 */
    unsigned char addr[16]; /* network address */
    int bits;               /* prefix length */
};

struct http_server {
    struct MHD_Daemon *daemon;
    struct http_server_config cfg; /* copy; routes and pool are borrowed */
    int port;                      /* bound port */
    pthread_mutex_t lock;          /* guards the fields below and request states */
    pthread_cond_t drained;        /* signalled when inflight drops */
    bool stopping;                 /* no new pool work */
    int inflight;                  /* requests suspended for the pool */
    struct http_request *pooled;   /* list of those requests */
    int open_requests;             /* requests not yet completed */
    struct http_request *waiting;  /* parked requests (HTTP_WAIT) */
    GHashTable *recent_wakes;      /* key -> monotonic ms of its last wake (kept 10 s) */
    pthread_t timer;               /* resumes parked requests past their deadline */
    bool timer_stop;
    pthread_cond_t timer_cv;
    GHashTable *clients; /* address -> open connections (int in pointer) */
    struct cidr exempt[MAX_EXEMPT];
    int nexempt;
    struct cidr trusted[MAX_EXEMPT]; /* proxies whose X-Forwarded-For we believe */
    int ntrusted;
    GHashTable *client_requests; /* client -> requests in or waiting for processing */
};

struct http_request {
    struct http_server *srv;
    struct MHD_Connection *conn;
    enum req_state state;
    int refs;                  /* I/O side + pool side */
    bool abandoned;            /* answered 503 at stop while its task still ran */
    bool committing;           /* its task is writing durable state: never abandoned */
    struct http_request *next; /* in srv->pooled */
    struct http_request *prev;
    const struct http_route *route;
    char method[16];
    char *path;               /* decoded path */
    char *raw_uri;            /* as sent */
    const char *raw_query;    /* inside raw_uri, "" when none */
    char *raw_path;           /* raw_uri up to the '?' */
    char *pnames[MAX_PARAMS]; /* {name} captures */
    char *pvals[MAX_PARAMS];
    int nparams;
    char request_id[72];
    char peer[INET6_ADDRSTRLEN];
    char client[INET6_ADDRSTRLEN]; /* peer, or its X-Forwarded-For when trusted */
    bool counted;                  /* counted in srv->client_requests */
    int64_t start_us;
    bool on_pool;
    bool woken;                 /* the handler runs again after a wait */
    char *wait_key;             /* what it waits for */
    int64_t wait_until_ms;      /* monotonic deadline of the wait */
    int64_t wait_since_ms;      /* when the handler asked to wait (before it checked) */
    struct http_request *wnext; /* in srv->waiting */
    /* body */
    char *body; /* malloc'd (Content-Length known) or mmap'd (chunked) */
    size_t body_len, body_cap;
    int body_fd;      /* memfd of a chunked body, -1 otherwise */
    bool body_mapped; /* body is an mmap of body_fd */
    uint64_t bytes_in;
    uint64_t discarded; /* body bytes read away on a route that takes none */
    bool cut;           /* body cut off past the cap */
    /* answer */
    int status;
    struct MHD_Response *response;
    uint64_t bytes_out;
    char *hnames[MAX_HEADERS];
    char *hvals[MAX_HEADERS];
    int nheaders;
    GPtrArray *hdrs;               /* request headers: name, value, name, value... */
    GPtrArray *args;               /* decoded query arguments, the same way */
    struct MHD_Response *override; /* 503 for a request abandoned at stop */
    /* handler state */
    void *state_ptr;
    void (*state_free)(void *);
};

/* ---- small helpers ------------------------------------------------------ */

static bool client_admit(struct http_request *req);
static void client_release(struct http_request *req);
static void resolve_client(struct http_request *req);

static int write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void req_free(struct http_request *req)
{
    if (req->state_free && req->state_ptr)
        req->state_free(req->state_ptr);
    if (req->response)
        MHD_destroy_response(req->response);
    if (req->override)
        MHD_destroy_response(req->override);
    if (req->hdrs)
        g_ptr_array_free(req->hdrs, TRUE);
    if (req->args)
        g_ptr_array_free(req->args, TRUE);
    for (int i = 0; i < req->nparams; i++) {
        free(req->pnames[i]);
        free(req->pvals[i]);
    }
    for (int i = 0; i < req->nheaders; i++) {
        free(req->hnames[i]);
        free(req->hvals[i]);
    }
    free(req->path);
    free(req->raw_uri);
    g_free(req->raw_path);
    free(req->wait_key);
    if (req->body_mapped)
        munmap(req->body, req->body_len);
    else
        free(req->body);
    if (req->body_fd >= 0)
        close(req->body_fd);
    free(req);
}

/* Drops one reference; the last one frees. Caller must NOT hold srv->lock. */
static void req_unref(struct http_request *req)
{
    struct http_server *srv = req->srv;
    pthread_mutex_lock(&srv->lock);
    int left = --req->refs;
    pthread_mutex_unlock(&srv->lock);
    if (left == 0)
        req_free(req);
}

static void set_response(struct http_request *req, int status, struct MHD_Response *resp,
                         uint64_t bytes)
{
    if (req->response)
        MHD_destroy_response(req->response);
    req->status = status;
    req->response = resp;
    req->bytes_out = bytes;
}

/* ---- public request accessors ------------------------------------------- */

const char *http_request_method(struct http_request *req)
{
    return req->method;
}

const char *http_request_path(struct http_request *req)
{
    return req->path;
}

const char *http_request_param(struct http_request *req, const char *name)
{
    for (int i = 0; i < req->nparams; i++)
        if (strcmp(req->pnames[i], name) == 0)
            return req->pvals[i];
    return NULL;
}

/* Headers and arguments are copied on the first call, so pool threads never
 * touch libmicrohttpd's connection (which may be gone after a stop). */
static const char *pair_lookup(GPtrArray *a, const char *name, bool nocase)
{
    if (a == NULL)
        return NULL;
    for (guint i = 0; i + 1 < a->len; i += 2) {
        const char *k = g_ptr_array_index(a, i);
        if (nocase ? strcasecmp(k, name) == 0 : strcmp(k, name) == 0)
            return g_ptr_array_index(a, i + 1);
    }
    return NULL;
}

const char *http_request_header(struct http_request *req, const char *name)
{
    return pair_lookup(req->hdrs, name, true);
}

const char *http_request_query(struct http_request *req, const char *name)
{
    return pair_lookup(req->args, name, false);
}

static enum MHD_Result copy_pair(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    GPtrArray *a = cls;
    g_ptr_array_add(a, g_strdup(key ? key : ""));
    g_ptr_array_add(a, g_strdup(value ? value : ""));
    return MHD_YES;
}

const char *http_request_raw_path(struct http_request *req)
{
    return req->raw_path ? req->raw_path : "";
}

int http_request_route_access(struct http_request *req)
{
    return req->route ? req->route->access : 0;
}

const char *http_request_raw_query(struct http_request *req)
{
    return req->raw_query ? req->raw_query : "";
}

const void *http_request_body(struct http_request *req, size_t *len)
{
    *len = req->body_len;
    return req->body;
}

const char *http_request_id(struct http_request *req)
{
    return req->request_id;
}

const char *http_request_peer(struct http_request *req)
{
    return req->peer;
}

const char *http_request_client(struct http_request *req)
{
    return req->client[0] ? req->client : req->peer;
}

bool http_request_on_pool(struct http_request *req)
{
    return req->on_pool;
}

void http_request_set_state(struct http_request *req, void *state, void (*free_fn)(void *))
{
    req->state_ptr = state;
    req->state_free = free_fn;
}

void *http_request_state(struct http_request *req)
{
    return req->state_ptr;
}

void http_request_wait(struct http_request *req, const char *key, int64_t timeout_ms)
{
    free(req->wait_key);
    req->wait_key = strdup(key);
    req->wait_since_ms = util_monotonic_ms();
    req->wait_until_ms = req->wait_since_ms + timeout_ms;
}

bool http_request_woken(struct http_request *req)
{
    return req->woken;
}

bool http_request_begin_commit(struct http_request *req)
{
    struct http_server *srv = req->srv;
    pthread_mutex_lock(&srv->lock);
    bool ok = !req->abandoned;
    if (ok)
        req->committing = true;
    pthread_mutex_unlock(&srv->lock);
    return ok;
}

/* Resumes parked requests matching key (NULL: those past their deadline,
 * or all when everything stops). */
static void resume_waiting(struct http_server *srv, const char *key, bool all)
{
    struct http_request *list = NULL;
    int64_t now = util_monotonic_ms();
    pthread_mutex_lock(&srv->lock);
    for (struct http_request **p = &srv->waiting; *p;) {
        struct http_request *r = *p;
        bool hit =
            all || (key ? (r->wait_key && strcmp(r->wait_key, key) == 0) : r->wait_until_ms <= now);
        if (!hit) {
            p = &r->wnext;
            continue;
        }
        *p = r->wnext;
        r->state = ST_RERUN;
        r->woken = true;
        r->wnext = list;
        list = r;
    }
    pthread_mutex_unlock(&srv->lock);
    for (struct http_request *r = list, *nx; r; r = nx) {
        nx = r->wnext;
        r->wnext = NULL;
        MHD_resume_connection(r->conn);
    }
}

void http_server_wake(struct http_server *srv, const char *key)
{
    /* Remembered for a while: a handler that checked just before the wake
     * and parks just after it must not sleep until its timeout. */
    pthread_mutex_lock(&srv->lock);
    if (g_hash_table_size(srv->recent_wakes) < 100000)
        g_hash_table_replace(srv->recent_wakes, g_strdup(key),
                             (gpointer)(intptr_t)util_monotonic_ms());
    pthread_mutex_unlock(&srv->lock);
    resume_waiting(srv, key, false);
}

static gboolean wake_expired(gpointer key, gpointer value, gpointer now)
{
    (void)key;
    return (intptr_t)value < (intptr_t)now - 10000;
}

static void *timer_main(void *arg)
{
    struct http_server *srv = arg;
    pthread_mutex_lock(&srv->lock);
    while (!srv->timer_stop) {
        struct timespec ts = util_deadline_in(50);
        pthread_cond_timedwait(&srv->timer_cv, &srv->lock, &ts);
        g_hash_table_foreach_remove(srv->recent_wakes, wake_expired,
                                    (gpointer)(intptr_t)util_monotonic_ms());
        if (srv->waiting == NULL)
            continue;
        pthread_mutex_unlock(&srv->lock);
        resume_waiting(srv, NULL, false);
        pthread_mutex_lock(&srv->lock);
    }
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

/* Parks the request (the handler returned HTTP_WAIT). */
static void park(struct http_request *req)
{
    struct http_server *srv = req->srv;
    /* Suspend first, then publish: a wake that comes at once then finds a
     * suspended connection to resume (the other order could lose it). */
    MHD_suspend_connection(req->conn);
    pthread_mutex_lock(&srv->lock);
    gpointer woke = req->wait_key ? g_hash_table_lookup(srv->recent_wakes, req->wait_key) : NULL;
    if (srv->stopping || req->wait_key == NULL || (woke && (intptr_t)woke >= req->wait_since_ms)) {
        req->state = ST_RERUN; /* answer now */
        req->woken = true;
        pthread_mutex_unlock(&srv->lock);
        MHD_resume_connection(req->conn);
        return;
    }
    req->state = ST_WAIT;
    req->wnext = srv->waiting;
    srv->waiting = req;
    pthread_mutex_unlock(&srv->lock);
}

/* ---- responses ---------------------------------------------------------- */

void http_response_header(struct http_request *req, const char *name, const char *value)
{
    for (int i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->hnames[i], name) == 0) {
            free(req->hvals[i]);
            req->hvals[i] = strdup(value);
            return;
        }
    }
    if (req->nheaders == MAX_HEADERS)
        return;
    req->hnames[req->nheaders] = strdup(name);
    req->hvals[req->nheaders] = strdup(value);
    req->nheaders++;
}

static struct MHD_Response *buffer_response(void *body, size_t len)
{
    if (body == NULL || len == 0) {
        free(body);
        return MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL)
        free(body);
    return r;
}

void http_respond(struct http_request *req, int status, const char *content_type, void *body,
                  size_t len)
{
    struct MHD_Response *r = buffer_response(body, len);
    if (r && content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    set_response(req, status, r, len);
}

void http_respond_text(struct http_request *req, int status, const char *content_type,
                       const char *text)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    if (copy)
        memcpy(copy, text, len + 1);
    http_respond(req, status, content_type, copy, copy ? len : 0);
}

void http_respond_fd(struct http_request *req, int status, const char *content_type, int fd,
                     uint64_t size)
{
    struct MHD_Response *r;
    if (size == 0) {
        close(fd);
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        r = MHD_create_response_from_fd64(size, fd);
        if (r == NULL)
            close(fd);
    }
    if (r && content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    set_response(req, status, r, size);
}

void http_respond_empty(struct http_request *req, int status)
{
    set_response(req, status,
                 MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT), 0);
}

/* JSON string escaping for the problem body (RFC 8259 §7). */
static void json_escape(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            g_string_append(out, "\\\"");
            break;
        case '\\':
            g_string_append(out, "\\\\");
            break;
        case '\n':
            g_string_append(out, "\\n");
            break;
        case '\r':
            g_string_append(out, "\\r");
            break;
        case '\t':
            g_string_append(out, "\\t");
            break;
        default:
            if (*p < 0x20)
                g_string_append_printf(out, "\\u%04x", *p);
            else
                g_string_append_c(out, (char)*p);
        }
    }
    g_string_append_c(out, '"');
}

void http_respond_problem(struct http_request *req, int status, const char *type, const char *title,
                          const char *detail)
{
    /* An error must not carry what was set for a success (ETag, a year of
     * Cache-Control): keep only the headers that belong to errors. */
    int keep = 0;
    for (int i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->hnames[i], "Allow") == 0 ||
            strcasecmp(req->hnames[i], "Retry-After") == 0 ||
            strcasecmp(req->hnames[i], "WWW-Authenticate") == 0) {
            req->hnames[keep] = req->hnames[i];
            req->hvals[keep] = req->hvals[i];
            keep++;
        } else {
            free(req->hnames[i]);
            free(req->hvals[i]);
        }
    }
    req->nheaders = keep;
    GString *b = g_string_new("{\"type\":");
    json_escape(b, type);
    g_string_append(b, ",\"title\":");
    json_escape(b, title);
    g_string_append_printf(b, ",\"status\":%d", status);
    if (detail && detail[0]) {
        g_string_append(b, ",\"detail\":");
        /* Details come from our own code, but may quote client input:
         * make sure the JSON stays valid UTF-8. */
        if (g_utf8_validate(detail, -1, NULL)) {
            json_escape(b, detail);
        } else {
            gchar *fixed = g_utf8_make_valid(detail, -1);
            json_escape(b, fixed);
            g_free(fixed);
        }
    }
    g_string_append(b, "}");
    size_t len = b->len;
    char *body = g_string_free(b, FALSE);
    http_respond(req, status, "application/problem+json", body, len);
    if (status == 503 || status == 429)
        http_response_header(req, "Retry-After", "1");
}

/* ---- routing ------------------------------------------------------------ */

/* Matches path against pattern, capturing {name} segments into req. */
static bool match(struct http_request *req, const char *pattern, const char *path, bool capture)
{
    const char *p = pattern;
    const char *s = path;
    int n = 0;
    while (*p && *s) {
        if (*p != '/' || *s != '/')
            return false;
        p++;
        s++;
        const char *pe = strchrnul(p, '/');
        const char *se = strchrnul(s, '/');
        if (*p == '{') {
            if (se == s)
                return false; /* empty segment */
            if (capture && n < MAX_PARAMS) {
                req->pnames[n] = g_strndup(p + 1, (gsize)(pe - p - 2));
                req->pvals[n] = g_strndup(s, (gsize)(se - s));
                n++;
            }
        } else if (pe - p != se - s || strncmp(p, s, (size_t)(pe - p)) != 0) {
            return false;
        }
        p = pe;
        s = se;
    }
    if (*p || *s)
        return false;
    if (capture)
        req->nparams = n;
    return true;
}

static bool method_matches(const char *route_method, const char *method)
{
    if (strcmp(route_method, method) == 0)
        return true;
    return strcmp(route_method, "GET") == 0 && strcmp(method, "HEAD") == 0;
}

/* Finds the route; on failure answers 404 or 405 (with Allow) and returns false. */
static bool route(struct http_request *req)
{
    const struct http_server_config *cfg = &req->srv->cfg;
    char allow[128] = "";
    bool path_known = false;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct http_route *r = &cfg->routes[i];
        if (!match(req, r->pattern, req->path, false))
            continue;
        path_known = true;
        if (method_matches(r->method, req->method)) {
            match(req, r->pattern, req->path, true);
            req->route = r;
            return true;
        }
        if (!strstr(allow, r->method)) {
            if (allow[0])
                g_strlcat(allow, ", ", sizeof(allow));
            g_strlcat(allow, r->method, sizeof(allow));
            if (strcmp(r->method, "GET") == 0)
                g_strlcat(allow, ", HEAD", sizeof(allow));
        }
    }
    if (path_known) {
        char detail[256];
        snprintf(detail, sizeof(detail), "%s is not allowed on %s (allowed: %s)", req->method,
                 req->path, allow);
        http_respond_problem(req, 405, "/problems/method-not-allowed", "Method not allowed",
                             detail);
        http_response_header(req, "Allow", allow);
    } else {
        char detail[256];
        snprintf(detail, sizeof(detail), "no route for %.200s", req->path);
        http_respond_problem(req, 404, "/problems/not-found", "Not found", detail);
    }
    return false;
}

/* ---- processing pool ---------------------------------------------------- */

static void pooled_remove(struct http_server *srv, struct http_request *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else if (srv->pooled == req)
        srv->pooled = req->next;
    if (req->next)
        req->next->prev = req->prev;
    req->next = req->prev = NULL;
    srv->inflight--;
    pthread_cond_broadcast(&srv->drained);
}

/* Marks the request answered and resumes its connection, unless the stop
 * procedure already answered it. Drops the pool side's reference. */
static void pool_finish(struct http_request *req)
{
    struct http_server *srv = req->srv;
    pthread_mutex_lock(&srv->lock);
    bool resume = !req->abandoned;
    if (resume)
        req->state = ST_READY;
    pthread_mutex_unlock(&srv->lock);
    if (resume)
        MHD_resume_connection(req->conn);
    /* Only now may the stop procedure count this request as drained: the
     * unlock below is this thread's last touch of srv and req. */
    pthread_mutex_lock(&srv->lock);
    if (resume)
        pooled_remove(srv, req);
    client_release(req);
    int left = --req->refs;
    pthread_mutex_unlock(&srv->lock);
    if (left == 0)
        req_free(req);
}

/* True when the client closed its connection while its request waited:
 * libmicrohttpd does not watch suspended sockets, so look ourselves. */
static bool client_gone(struct http_request *req)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static void pool_run(void *arg)
{
    struct http_request *req = arg;
    req->on_pool = true;
    if (client_gone(req)) {
        /* Nobody waits for the answer: skip the work (a client that timed
         * out must not keep the pool busy after it left). */
        util_metrics_counter_add("image_server_processing_skipped_total", "", 1);
        http_respond_problem(req, 503, "/problems/unavailable", "Service unavailable",
                             "the client went away");
        req->status = 499;
        pool_finish(req);
        return;
    }
    if (req->route->fn(req, req->srv->cfg.ctx) != HTTP_DONE || req->response == NULL) {
        util_error("request %s: handler gave no answer on the pool", req->request_id);
        http_respond_problem(req, 500, "/problems/internal", "Internal error",
                             "the handler gave no answer");
    }
    pool_finish(req);
}

/* The pool stopped before this request ran, or its client left. */
static void pool_drop(void *arg)
{
    struct http_request *req = arg;
    if (req->status == 499) {
        http_respond_problem(req, 503, "/problems/unavailable", "Service unavailable",
                             "the client went away");
        req->status = 499;
    } else {
        http_respond_problem(req, 503, "/problems/unavailable", "Service unavailable",
                             "the server is shutting down");
    }
    pool_finish(req);
}

/* util_pool_prune predicate: a queued request whose client has left. */
static bool stale_request(void *arg)
{
    struct http_request *req = arg;
    if (!client_gone(req))
        return false;
    req->status = 499; /* read by pool_drop */
    util_metrics_counter_add("image_server_processing_skipped_total", "", 1);
    return true;
}

/* Suspends the connection and hands the request to the pool. Runs on the
 * I/O thread inside the access handler. */
static void to_pool(struct http_request *req, struct util_pool *pool)
{
    struct http_server *srv = req->srv;
    pthread_mutex_lock(&srv->lock);
    if (srv->stopping) {
        pthread_mutex_unlock(&srv->lock);
        http_respond_problem(req, 503, "/problems/unavailable", "Service unavailable",
                             "the server is shutting down");
        req->state = ST_READY;
        return;
    }
    if (!client_admit(req)) {
        pthread_mutex_unlock(&srv->lock);
        util_metrics_counter_add("image_server_client_limited_total", "", 1);
        http_respond_problem(req, 429, "/problems/too-many-requests", "Too many requests",
                             "this client already has as many requests in processing as it "
                             "may; retry later");
        req->state = ST_READY;
        return;
    }
    req->state = ST_POOL;
    req->refs++;
    req->next = srv->pooled;
    req->prev = NULL;
    if (srv->pooled)
        srv->pooled->prev = req;
    srv->pooled = req;
    srv->inflight++;
    pthread_mutex_unlock(&srv->lock);

    MHD_suspend_connection(req->conn);
    /* A full queue may hold requests whose clients left (a client that
     * timed out, a load generator that closed its connections): drop them
     * first rather than refuse a client that is still there. */
    if (!util_pool_submit(pool, pool_run, pool_drop, req) &&
        (util_pool_prune(pool, stale_request) == 0 ||
         !util_pool_submit(pool, pool_run, pool_drop, req))) {
        util_metrics_counter_add("image_server_processing_rejected_total", "", 1);
        http_respond_problem(req, 503, "/problems/overloaded", "Overloaded",
                             "the processing queue is full; retry later");
        pool_finish(req);
    }
}

/* ---- libmicrohttpd callbacks -------------------------------------------- */

static void *uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct http_server *srv = cls;
    struct http_request *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return NULL;
    req->srv = srv;
    req->conn = conn;
    req->refs = 1;
    req->body_fd = -1;
    req->start_us = util_monotonic_us();
    req->raw_uri = strdup(uri ? uri : "");
    char *q = req->raw_uri ? strchr(req->raw_uri, '?') : NULL;
    req->raw_query = q ? q + 1 : "";
    req->raw_path =
        req->raw_uri ? g_strndup(req->raw_uri, q ? (gsize)(q - req->raw_uri) : strlen(req->raw_uri))
                     : NULL;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, req->peer,
                      sizeof(req->peer));
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                      req->peer, sizeof(req->peer));
    }
    pthread_mutex_lock(&srv->lock);
    srv->open_requests++;
    pthread_mutex_unlock(&srv->lock);
    return req;
}

/* Sets X-Request-Id from the client's (when it is short and printable) or
 * a new id. */
static void init_request_id(struct http_request *req)
{
    const char *rid = http_request_header(req, "X-Request-Id");
    bool ok = rid && rid[0] && strlen(rid) < 64;
    for (const char *p = rid; ok && *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            ok = false;
    if (ok)
        g_strlcpy(req->request_id, rid, sizeof(req->request_id));
    else if (util_id_new(req->request_id) != 0)
        g_strlcpy(req->request_id, "unknown", sizeof(req->request_id));
}

static enum MHD_Result queue(struct http_request *req)
{
    if (req->override) {
        /* Abandoned at stop: its task may still be writing req->response. */
        MHD_add_response_header(req->override, "X-Request-Id", req->request_id);
        MHD_add_response_header(req->override, "Retry-After", "1");
        req->state = ST_QUEUED;
        req->status = 503;
        return MHD_queue_response(req->conn, 503, req->override);
    }
    if (req->response == NULL) {
        http_respond_problem(req, 500, "/problems/internal", "Internal error",
                             "no answer was produced");
        if (req->response == NULL)
            return MHD_NO;
    }
    for (int i = 0; i < req->nheaders; i++)
        MHD_add_response_header(req->response, req->hnames[i], req->hvals[i]);
    MHD_add_response_header(req->response, "X-Request-Id", req->request_id);
    req->state = ST_QUEUED;
    return MHD_queue_response(req->conn, (unsigned)req->status, req->response);
}

/* Runs the handler on the I/O thread and acts on what it asks for. */
static enum MHD_Result dispatch(struct http_request *req)
{
    enum http_next next = req->route->fn(req, req->srv->cfg.ctx);
    if (next == HTTP_RUN_ON_POOL || next == HTTP_RUN_BLOCKING) {
        struct util_pool *pool = req->srv->cfg.pool;
        if (next == HTTP_RUN_BLOCKING && req->srv->cfg.blocking)
            pool = req->srv->cfg.blocking;
        to_pool(req, pool);
        if (req->state == ST_POOL)
            return MHD_YES;
    } else if (next == HTTP_WAIT) {
        park(req); /* suspended; resumed by a wake, the timer or at once */
        return MHD_YES;
    }
    req->state = ST_READY;
    return queue(req);
}

static enum MHD_Result access_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    struct http_server *srv = cls;
    struct http_request *req = *con_cls;
    if (req == NULL)
        return MHD_NO; /* out of memory in uri_log */

    if (req->state == ST_NEW) {
        req->state = ST_BODY;
        g_strlcpy(req->method, method, sizeof(req->method));
        req->path = strdup(url);
        req->hdrs = g_ptr_array_new_with_free_func(g_free);
        req->args = g_ptr_array_new_with_free_func(g_free);
        MHD_get_connection_values(conn, MHD_HEADER_KIND, copy_pair, req->hdrs);
        MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, copy_pair, req->args);
        resolve_client(req);
        init_request_id(req);
        if (req->path == NULL || !route(req)) {
            req->state = ST_READY;
            return queue(req);
        }
        if (srv->cfg.authorize && !srv->cfg.authorize(req, srv->cfg.ctx)) {
            req->state = ST_READY;
            return queue(req);
        }
        uint64_t cap = req->route->body ? (uint64_t)srv->cfg.max_body_bytes : 0;
        const char *cl = http_request_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno == 0 && *end == '\0' && n > cap) {
                char detail[160];
                if (req->route->body)
                    snprintf(detail, sizeof(detail),
                             "the body has %llu bytes; at most %llu are accepted", n,
                             (unsigned long long)cap);
                else
                    snprintf(detail, sizeof(detail), "%s %s takes no body", method,
                             req->route->pattern);
                http_respond_problem(req, 413, "/problems/payload-too-large", "Payload too large",
                                     detail);
                req->state = ST_READY;
                return queue(req);
            }
            /* Allocate once when the size is announced. */
            if (errno == 0 && *end == '\0' && n > 0) {
                req->body = malloc((size_t)n);
                if (req->body == NULL)
                    return MHD_NO;
                req->body_cap = (size_t)n;
            }
        }
        return MHD_YES;
    }

    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        req->bytes_in += n;
        if (req->state != ST_BODY) {
            *upload_data_size = 0; /* already answered; discard */
            return MHD_YES;
        }
        uint64_t cap = req->route->body ? (uint64_t)srv->cfg.max_body_bytes : 0;
        if (!req->route->body) {
            /* A small body where none belongs (chunked, so not refused from
             * Content-Length): read it away and answer 413 at the end. */
            req->discarded += n;
            *upload_data_size = 0;
            if (req->discarded <= DISCARD_MAX)
                return MHD_YES;
            req->cut = true;
            req->status = 413;
            return MHD_NO;
        }
        if ((uint64_t)req->body_len + n > cap) {
            req->cut = true;
            req->status = 413;
            return MHD_NO; /* cut off: see the header comment */
        }
        if (req->body_len + n > req->body_cap) {
            /* No (or a wrong) Content-Length: a chunked body of unknown size
             * goes to an anonymous memory file, which grows without the
             * copies (and the doubled peak) of realloc, and is mapped as one
             * buffer at the end. */
            if (req->body_fd < 0) {
                req->body_fd = memfd_create("body", MFD_CLOEXEC);
                if (req->body_fd < 0 ||
                    (req->body_len > 0 && write_all(req->body_fd, req->body, req->body_len) != 0))
                    return MHD_NO;
                free(req->body);
                req->body = NULL;
                req->body_cap = SIZE_MAX;
            }
        }
        if (req->body_fd >= 0) {
            if (write_all(req->body_fd, upload_data, n) != 0)
                return MHD_NO;
        } else {
            memcpy(req->body + req->body_len, upload_data, n);
        }
        req->body_len += n;
        *upload_data_size = 0;
        return MHD_YES;
    }

    switch (req->state) {
    case ST_BODY: {
        if (req->discarded > 0) {
            char detail[160];
            snprintf(detail, sizeof(detail), "%s %s takes no body", req->method,
                     req->route->pattern);
            http_respond_problem(req, 413, "/problems/payload-too-large", "Payload too large",
                                 detail);
            req->state = ST_READY;
            return queue(req);
        }
        if (req->body_fd >= 0 && req->body_len > 0) {
            void *m = mmap(NULL, req->body_len, PROT_READ, MAP_PRIVATE, req->body_fd, 0);
            if (m == MAP_FAILED)
                return MHD_NO;
            req->body = m;
            req->body_mapped = true;
        }
        return dispatch(req);
    }
    case ST_RERUN:
        return dispatch(req);
    case ST_READY:
        return queue(req);
    case ST_POOL:
    case ST_WAIT:
        return MHD_YES; /* spurious call while suspended */
    case ST_QUEUED:
    case ST_NEW:
        break;
    }
    return MHD_YES;
}

/* Copies s into out with bytes outside printable ASCII, spaces, quotes and
 * backslashes as %XX. */
static void log_escape(const char *s, char *out, size_t n)
{
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && k + 4 < n; p++) {
        if (*p <= 0x20 || *p >= 0x7f || *p == '"' || *p == '\\' || *p == '%') {
            snprintf(out + k, n - k, "%%%02X", *p);
            k += 3;
        } else {
            out[k++] = (char)*p;
        }
    }
    out[k] = '\0';
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    struct http_server *srv = cls;
    struct http_request *req = *con_cls;
    if (req == NULL)
        return;
    *con_cls = NULL;
    int64_t dur_us = util_monotonic_us() - req->start_us;
    int status = req->status;
    if (status == 0)
        status = 499; /* the client went away before an answer */
    const char *route_name = req->route ? req->route->name : "none";
    /* The method is client text: only known ones become label values. */
    static const char *const KNOWN[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    const char *method = "other";
    for (size_t i = 0; i < sizeof(KNOWN) / sizeof(KNOWN[0]); i++)
        if (strcmp(req->method, KNOWN[i]) == 0)
            method = KNOWN[i];
    char labels[160];
    snprintf(labels, sizeof(labels), "route=\"%s\",method=\"%s\",status=\"%d\"", route_name, method,
             status);
    util_metrics_counter_add("http_requests_total", labels, 1);
    snprintf(labels, sizeof(labels), "route=\"%s\"", route_name);
    util_metrics_histogram_observe("http_request_duration_seconds", labels, (double)dur_us / 1e6);
    util_metrics_counter_add("http_request_bytes_total", "", (double)req->bytes_in);
    /* HEAD answers carry no body; a cut connection sent none we know of. */
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || strcmp(req->method, "HEAD") == 0)
        req->bytes_out = 0;
    util_metrics_counter_add("http_response_bytes_total", "", (double)req->bytes_out);
    /* Client text is logged escaped, so a request cannot forge log lines. */
    char mlog[40], plog[512];
    log_escape(req->method[0] ? req->method : "-", mlog, sizeof(mlog));
    log_escape(req->path ? req->path : "-", plog, sizeof(plog));
    util_log("access", "%s %s %d %llu %.1fms %s %s%s", mlog, plog, status,
             (unsigned long long)req->bytes_out, (double)dur_us / 1000.0,
             req->request_id[0] ? req->request_id : "-", req->peer,
             req->cut ? " body-cut-off" : "");
    pthread_mutex_lock(&srv->lock);
    srv->open_requests--;
    pthread_cond_broadcast(&srv->drained);
    pthread_mutex_unlock(&srv->lock);
    req_unref(req);
}

/* ---- per-client connection limit ---------------------------------------- */

static int addr_key(const struct sockaddr *sa, char *out, size_t n)
{
    if (sa->sa_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                         (socklen_t)n)
                   ? 0
                   : -1;
    if (sa->sa_family == AF_INET6)
        return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                         (socklen_t)n)
                   ? 0
                   : -1;
    return -1;
}

static bool in_cidrs(const struct cidr *list, int n, const struct sockaddr *sa)
{
    const unsigned char *a;
    int family = sa->sa_family;
    if (family == AF_INET)
        a = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else if (family == AF_INET6)
        a = (const unsigned char *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    else
        return false;
    for (int i = 0; i < n; i++) {
        const struct cidr *c = &list[i];
        if (c->family != family)
            continue;
        int bits = c->bits;
        int k = 0;
        for (; bits >= 8; bits -= 8, k++)
            if (a[k] != c->addr[k])
                break;
        if (bits >= 8)
            continue;
        if (bits == 0 || ((a[k] ^ c->addr[k]) & (0xff << (8 - bits)) & 0xff) == 0)
            return true;
    }
    return false;
}

static bool exempt(const struct http_server *srv, const struct sockaddr *sa)
{
    return in_cidrs(srv->exempt, srv->nexempt, sa);
}

/* Parses a textual address into a sockaddr; false if it is none. */
static bool text_addr(const char *text, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)(void *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)(void *)ss;
    if (inet_pton(AF_INET, text, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, text, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        return true;
    }
    return false;
}

/* The client of a request: the socket peer, or the last X-Forwarded-For
 * hop when the peer is a trusted proxy (the last hop is the one the proxy
 * itself added; earlier ones are whatever the client claimed). */
static void resolve_client(struct http_request *req)
{
    struct http_server *srv = req->srv;
    g_strlcpy(req->client, req->peer, sizeof(req->client));
    if (srv->ntrusted == 0)
        return;
    struct sockaddr_storage ss;
    if (!text_addr(req->peer, &ss) ||
        !in_cidrs(srv->trusted, srv->ntrusted, (const struct sockaddr *)&ss))
        return;
    const char *xff = http_request_header(req, "X-Forwarded-For");
    if (xff == NULL)
        return;
    const char *last = strrchr(xff, ',');
    last = last ? last + 1 : xff;
    char hop[INET6_ADDRSTRLEN + 8];
    g_strlcpy(hop, last, sizeof(hop));
    g_strstrip(hop);
    if (text_addr(hop, &ss))
        g_strlcpy(req->client, hop, sizeof(req->client));
}

/* Counts a request against its client's --max-client-requests; false (and
 * a 429) when the client is over it. Caller holds srv->lock. */
static bool client_admit(struct http_request *req)
{
    struct http_server *srv = req->srv;
    if (srv->cfg.max_client_requests <= 0)
        return true;
    struct sockaddr_storage ss;
    if (text_addr(req->client, &ss) && exempt(srv, (const struct sockaddr *)&ss))
        return true;
    long n = (long)(intptr_t)g_hash_table_lookup(srv->client_requests, req->client);
    if (n >= srv->cfg.max_client_requests)
        return false;
    g_hash_table_replace(srv->client_requests, g_strdup(req->client), (gpointer)(intptr_t)(n + 1));
    req->counted = true;
    return true;
}

/* Caller holds srv->lock. */
static void client_release(struct http_request *req)
{
    if (!req->counted)
        return;
    struct http_server *srv = req->srv;
    long n = (long)(intptr_t)g_hash_table_lookup(srv->client_requests, req->client);
    if (n <= 1)
        g_hash_table_remove(srv->client_requests, req->client);
    else
        g_hash_table_replace(srv->client_requests, g_strdup(req->client),
                             (gpointer)(intptr_t)(n - 1));
    req->counted = false;
}

static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct http_server *srv = cls;
    (void)addrlen;
    if (exempt(srv, addr))
        return MHD_YES;
    char key[INET6_ADDRSTRLEN];
    if (addr_key(addr, key, sizeof(key)) != 0)
        return MHD_YES;
    pthread_mutex_lock(&srv->lock);
    long n = (long)(intptr_t)g_hash_table_lookup(srv->clients, key);
    pthread_mutex_unlock(&srv->lock);
    if (n >= srv->cfg.max_client_connections) {
        util_metrics_counter_add("http_connections_refused_total", "reason=\"per_client\"", 1);
        return MHD_NO;
    }
    return MHD_YES;
}

static void notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    struct http_server *srv = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci == NULL || ci->client_addr == NULL || exempt(srv, ci->client_addr))
            return;
        char key[INET6_ADDRSTRLEN];
        if (addr_key(ci->client_addr, key, sizeof(key)) != 0)
            return;
        char *k = strdup(key);
        if (k == NULL)
            return;
        pthread_mutex_lock(&srv->lock);
        long n = (long)(intptr_t)g_hash_table_lookup(srv->clients, k);
        g_hash_table_replace(srv->clients, strdup(k), (gpointer)(intptr_t)(n + 1));
        pthread_mutex_unlock(&srv->lock);
        *socket_context = k;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        char *k = *socket_context;
        pthread_mutex_lock(&srv->lock);
        long n = (long)(intptr_t)g_hash_table_lookup(srv->clients, k);
        if (n <= 1)
            g_hash_table_remove(srv->clients, k);
        else
            g_hash_table_replace(srv->clients, strdup(k), (gpointer)(intptr_t)(n - 1));
        pthread_mutex_unlock(&srv->lock);
        free(k);
        *socket_context = NULL;
    }
}

/* libmicrohttpd's logger: fmt is its own printf format. */
static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    /* Our handler returns MHD_NO on purpose to cut off a body over the cap
     * (logged on the access line as body-cut-off); not an internal error. */
    if (strstr(line, "Application reported internal error") != NULL)
        return;
    util_log("warn", "libmicrohttpd: %s", line);
}

/* ---- start and stop ----------------------------------------------------- */

static int parse_cidrs(struct cidr *out, int *count, const char *flag, const char *list,
                       struct util_error *err)
{
    if (list == NULL)
        return 0;
    gchar **parts = g_strsplit(list, ",", -1);
    int rc = 0;
    for (int i = 0; parts[i]; i++) {
        char *item = g_strstrip(parts[i]);
        if (*item == '\0')
            continue;
        if (*count == MAX_EXEMPT) {
            rc = util_error_set(err, UTIL_ERR_INVALID_OPERATION, "%s: too many", flag);
            break;
        }
        struct cidr *c = &out[*count];
        char *slash = strchr(item, '/');
        if (slash)
            *slash = '\0';
        if (inet_pton(AF_INET, item, c->addr) == 1) {
            c->family = AF_INET;
            c->bits = 32;
        } else if (inet_pton(AF_INET6, item, c->addr) == 1) {
            c->family = AF_INET6;
            c->bits = 128;
        } else {
            rc = util_error_set(err, UTIL_ERR_INVALID_OPERATION, "%s: '%s' is not an address", flag,
                                item);
            break;
        }
        if (slash) {
            int64_t bits;
            if (util_parse_int(slash + 1, &bits) != 0 || bits < 0 || bits > c->bits) {
                rc = util_error_set(err, UTIL_ERR_INVALID_OPERATION, "%s: bad prefix length '/%s'",
                                    flag, slash + 1);
                break;
            }
            c->bits = (int)bits;
        }
        (*count)++;
    }
    g_strfreev(parts);
    return rc;
}

/* Parses "host:port" or "[v6]:port" into a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len,
                        struct util_error *err)
{
    char host[256];
    const char *port;
    if (listen[0] == '[') {
        const char *close_br = strchr(listen, ']');
        if (!close_br || close_br[1] != ':')
            return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                                  "--listen: '%s' is not [host]:port", listen);
        snprintf(host, sizeof(host), "%.*s", (int)(close_br - listen - 1), listen + 1);
        port = close_br + 2;
    } else {
        const char *colon = strrchr(listen, ':');
        if (!colon)
            return util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                                  "--listen: '%s' is not host:port", listen);
        snprintf(host, sizeof(host), "%.*s", (int)(colon - listen), listen);
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0 || res == NULL)
        return util_error_set(err, UTIL_ERR_INVALID_OPERATION, "--listen: '%s': %s", listen,
                              gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Raises RLIMIT_NOFILE so --max-connections sockets plus our own files fit. */
static void raise_nofile(int64_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t target = (rlim_t)want;
    if (rl.rlim_cur >= target)
        return;
    if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max) {
        rl.rlim_max = target;
        if (setrlimit(RLIMIT_NOFILE, &(struct rlimit){target, target}) == 0)
            return;
        getrlimit(RLIMIT_NOFILE, &rl);
        target = rl.rlim_max;
    }
    rl.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        util_warn("could not raise the open-file limit to %lld", (long long)want);
}

struct http_server *http_server_start(const struct http_server_config *cfg, struct util_error *err)
{
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (srv == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    srv->cfg = *cfg;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->drained, NULL);
    srv->clients = g_hash_table_new_full(g_str_hash, g_str_equal, free, NULL);
    srv->recent_wakes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    srv->client_requests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    if (parse_cidrs(srv->exempt, &srv->nexempt, "--limit-exempt", cfg->limit_exempt, err) != 0 ||
        parse_cidrs(srv->trusted, &srv->ntrusted, "--trusted-proxy", cfg->trusted_proxy, err) !=
            0 ||
        parse_listen(cfg->listen, &ss, &sslen, err) != 0)
        goto fail;
    raise_nofile(cfg->max_connections + 256);

    unsigned flags =
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    unsigned io = cfg->io_threads > 0 ? (unsigned)cfg->io_threads : 1;
    srv->daemon = MHD_start_daemon(
        flags, 0, accept_policy, srv, access_handler, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv,
        MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&ss, MHD_OPTION_URI_LOG_CALLBACK, uri_log,
        srv, MHD_OPTION_NOTIFY_COMPLETED, completed, srv, MHD_OPTION_NOTIFY_CONNECTION,
        notify_connection, srv, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((cfg->idle_timeout_ms + 999) / 1000),
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        io > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, io, MHD_OPTION_END);
    if (srv->daemon == NULL) {
        util_error_set(err, UTIL_ERR_UNAVAILABLE, "could not listen on %s: %s", cfg->listen,
                       strerror(errno ? errno : EADDRINUSE));
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : 0;
    pthread_cond_init(&srv->timer_cv, NULL);
    if (pthread_create(&srv->timer, NULL, timer_main, srv) != 0) {
        MHD_stop_daemon(srv->daemon);
        util_error_set(err, UTIL_ERR_INTERNAL, "could not start the timer thread");
        goto fail;
    }
    return srv;
fail:
    g_hash_table_destroy(srv->clients);
    g_hash_table_destroy(srv->recent_wakes);
    g_hash_table_destroy(srv->client_requests);
    free(srv);
    return NULL;
}

int http_server_port(struct http_server *srv)
{
    return srv->port;
}

int http_server_stop(struct http_server *srv, int64_t deadline_ms)
{
    pthread_mutex_lock(&srv->lock);
    srv->stopping = true;
    pthread_mutex_unlock(&srv->lock);
    MHD_socket lfd = MHD_quiesce_daemon(srv->daemon);
    if (lfd != MHD_INVALID_SOCKET)
        close(lfd);
    /* Parked requests answer now, with what there is. */
    resume_waiting(srv, NULL, true);
    pthread_mutex_lock(&srv->lock);
    srv->timer_stop = true;
    pthread_cond_broadcast(&srv->timer_cv);
    pthread_mutex_unlock(&srv->lock);
    pthread_join(srv->timer, NULL);

    /* Let requests on the pool finish, up to the deadline. */
    int64_t end = util_monotonic_ms() + deadline_ms;
    pthread_mutex_lock(&srv->lock);
    while (srv->inflight > 0 && util_monotonic_ms() < end) {
        struct timespec ts = util_deadline_in(50);
        pthread_cond_timedwait(&srv->drained, &srv->lock, &ts);
    }
    /* Whatever is still on the pool is answered 503 now; its task keeps its
     * own reference and will not touch the connection again. */
    static const char body503[] =
        "{\"type\":\"/problems/unavailable\",\"title\":\"Service unavailable\","
        "\"status\":503,\"detail\":\"the server is shutting down\"}";
    /* Requests writing durable state finish their commit (milliseconds):
     * answering them 503 would make a retrying client store twice. */
    int64_t commit_end = util_monotonic_ms() + 10000;
    for (;;) {
        bool committing = false;
        for (struct http_request *r = srv->pooled; r; r = r->next)
            committing |= r->committing;
        if (!committing || util_monotonic_ms() > commit_end)
            break;
        struct timespec cts = util_deadline_in(20);
        pthread_cond_timedwait(&srv->drained, &srv->lock, &cts);
    }
    int abandoned = 0;
    struct http_request *list = NULL;
    for (struct http_request *r = srv->pooled; r;) {
        struct http_request *next = r->next;
        if (r->state == ST_READY) {
            /* Its task finished and resumed it; pool_finish unlinks it. */
            r = next;
            continue;
        }
        r->abandoned = true;
        r->override = MHD_create_response_from_buffer(sizeof(body503) - 1, (void *)body503,
                                                      MHD_RESPMEM_PERSISTENT);
        if (r->override)
            MHD_add_response_header(r->override, MHD_HTTP_HEADER_CONTENT_TYPE,
                                    "application/problem+json");
        r->state = ST_READY;
        pooled_remove(srv, r);
        client_release(r);
        r->next = list;
        list = r;
        abandoned++;
        r = next;
    }
    /* Requests that were finishing leave the list in a moment. */
    int64_t ready_end = util_monotonic_ms() + 2000;
    while (srv->inflight > 0 && util_monotonic_ms() < ready_end) {
        struct timespec rts = util_deadline_in(10);
        pthread_cond_timedwait(&srv->drained, &srv->lock, &rts);
    }
    if (srv->inflight > 0)
        abandoned += srv->inflight; /* keep srv alive for them: see below */
    pthread_mutex_unlock(&srv->lock);
    for (struct http_request *r = list, *nx; r; r = nx) {
        nx = r->next; /* read first: once resumed, r may be freed */
        MHD_resume_connection(r->conn);
    }
    if (abandoned)
        util_warn("stop: %d request(s) still processing at the deadline answered 503", abandoned);
    /* Give the answers a moment to be sent before the daemon closes sockets. */
    int64_t flush_end = util_monotonic_ms() + 1000;
    pthread_mutex_lock(&srv->lock);
    while (srv->open_requests > 0 && util_monotonic_ms() < flush_end) {
        struct timespec ts = util_deadline_in(20);
        pthread_cond_timedwait(&srv->drained, &srv->lock, &ts);
    }
    pthread_mutex_unlock(&srv->lock);
    MHD_stop_daemon(srv->daemon);
    g_hash_table_destroy(srv->clients);
    g_hash_table_destroy(srv->recent_wakes);
    if (abandoned == 0) {
        g_hash_table_destroy(srv->client_requests);
        pthread_mutex_destroy(&srv->lock);
        pthread_cond_destroy(&srv->drained);
        free(srv);
    }
    /* With abandoned requests the server struct is leaked on purpose: their
     * tasks still reference it, and the process is about to exit. */
    return abandoned;
}
