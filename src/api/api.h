/*
 * api: one file per resource (images, health and metrics, later jobs and
 * transform), JSON in and out. Maps domain errors to HTTP in one table
 * (problem.c). Handlers follow http.h's two-phase rule: cheap checks on the
 * I/O thread, CPU and disk work on the processing pool.
 */
#ifndef API_API_H
#define API_API_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "blob/blob.h"
#include "http/http.h"
#include "ops/ops.h"
#include "store/store.h"
#include "util/util.h"

/* Route access classes (http_route.access). */
#define API_ACCESS_OPEN   0 /* anyone */
#define API_ACCESS_KEY    1 /* an API key when keys are configured */
#define API_ACCESS_SIGNED 2 /* variants: a URL signature when a signing key is set */

#define API_SIG_LEN 43 /* base64url of an HMAC-SHA256, no padding */

struct api_auth;

/* What every handler shares (read-only after start). */
struct api_ctx {
    struct store *store;      /* metadata */
    struct blob_store *blobs; /* bytes */
    struct ops_limits limits; /* pixel limits and deadline */
    bool variant_cache;       /* --variant-cache */
    int64_t jobs_max;         /* queued jobs before POST /v1/jobs is 503 */
    int64_t max_attempts;     /* attempts per job */
    struct api_auth *auth;    /* keys and signing key, or NULL: all open */
};

/* Access (auth.c). keys: one a line. NULL on a bad keys file. */
struct api_auth *api_auth_new(const char *keys, const char *keys_file, const char *signing_key,
                              struct util_error *err);
/* Re-reads --api-keys-file (SIGHUP); on error the old keys stay. */
int api_auth_reload(struct api_auth *a, struct util_error *err);
void api_auth_free(struct api_auth *a);
/* http authorize callback: API keys for API_ACCESS_KEY routes, a URL
 * signature for variants. */
bool api_authorize(struct http_request *req, void *ctx);
/* The signature of a variant URL (DESIGN §1): HMAC-SHA256 with key over
 * raw_path "?" and the raw name=value parameters except sig, sorted with
 * strcmp, joined by '&'; base64url without padding into out. *given_sig,
 * when not NULL, is set to the sig= value found in raw_query (or NULL). */
int api_signature(const char *key, const char *raw_path, const char *raw_query,
                  char out[API_SIG_LEN + 1], const char **given_sig);

/* Registers the variant single-flight table; call once before serving. */
void api_variants_init(void);

/* The route table of the public API (DESIGN §3). */
const struct http_route *api_routes(size_t *n);
/* The routes of a `worker` process: /healthz, /readyz and /metrics. */
const struct http_route *api_worker_routes(size_t *n);
/* Registers metric descriptions and render hooks. */
void api_metrics_init(struct api_ctx *ctx);

/* The one table from domain errors to HTTP: status, problem type, title. */
void api_error_map(enum util_err code, int *status, const char **type, const char **title);
/* RFC 9457 problem JSON (keys type, title, status, detail; detail omitted
 * when NULL). The caller frees the string with free(). */
char *api_problem_json(int status, const char *type, const char *title, const char *detail);
/* Answers req with the problem for err (logs internal errors with the
 * request id). */
void api_respond_error(struct http_request *req, const struct util_error *err);

/* Cache-Control of originals and variants: they never change. */
#define API_CACHE_FOREVER "public, max-age=31536000, immutable"

/* Shared by the handlers (images.c). */
bool api_find_image(struct http_request *req, struct api_ctx *ctx, struct store_image *img);
bool api_etag_matches(const char *if_none_match, const char *etag);
void api_respond_json(struct http_request *req, int status, json_t *o);
/* 0 when the request carries an image body (Content-Type image/..., or
 * multipart/form-data, not empty): cheap, for the I/O thread. */
int api_check_image_body(struct http_request *req, struct util_error *err);
/* The image bytes of the body: raw, or the multipart field "file". */
int api_body_image(struct http_request *req, const void **data, size_t *len,
                   struct util_error *err);
/* A variant request on GET /v1/images/{id}?...: returns false when the
 * query is empty (serve the original), else answers or defers (*next). */
bool api_variant(struct http_request *req, struct api_ctx *ctx, enum http_next *next);

/* List routes (lists.c): limit (1..1000, default 100) and cursor into
 * *limit and *before (0: from the newest); any parameter other than those
 * and the NULL-terminated `extra` names is a 400. */
int api_list_params(struct http_request *req, const char *const *extra, int64_t *limit,
                    int64_t *before, struct util_error *err);
/* {"items": items, "next_cursor": cursor after last_seq, or null}. Takes
 * the reference to items. */
json_t *api_list_page(json_t *items, bool more, int64_t last_seq);

/* Handlers (images.c, variants.c, transform.c, health.c). */
enum http_next api_transform(struct http_request *req, void *ctx);
enum http_next api_jobs_create(struct http_request *req, void *ctx);
enum http_next api_jobs_get(struct http_request *req, void *ctx);
enum http_next api_jobs_list(struct http_request *req, void *ctx);
enum http_next api_jobs_cancel(struct http_request *req, void *ctx);
/* Job metrics (jobs by status at scrape time). */
void api_jobs_metrics_init(struct api_ctx *ctx);
enum http_next api_images_create(struct http_request *req, void *ctx);
enum http_next api_images_get(struct http_request *req, void *ctx);
enum http_next api_images_info(struct http_request *req, void *ctx);
enum http_next api_images_list(struct http_request *req, void *ctx);
enum http_next api_images_delete(struct http_request *req, void *ctx);
enum http_next api_healthz(struct http_request *req, void *ctx);
enum http_next api_readyz(struct http_request *req, void *ctx);
enum http_next api_metrics(struct http_request *req, void *ctx);

#endif
