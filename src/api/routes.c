/* The route table of the public API (DESIGN §3). */
#include "api/api.h"

static const struct http_route ROUTES[] = {
    /* Writes, job calls and the list need a key; an original and /info are
     * open (ids are unguessable); variants need a signature (DESIGN §1). */
    {"POST", "/v1/images", api_images_create, true, "images_create", API_ACCESS_KEY},
    {"GET", "/v1/images", api_images_list, false, "images_list", API_ACCESS_KEY},
    {"GET", "/v1/images/{id}", api_images_get, false, "images_get", API_ACCESS_SIGNED},
    {"DELETE", "/v1/images/{id}", api_images_delete, false, "images_delete", API_ACCESS_KEY},
    {"GET", "/v1/images/{id}/info", api_images_info, false, "images_info", API_ACCESS_OPEN},
    {"POST", "/v1/transform", api_transform, true, "transform", API_ACCESS_KEY},
    {"POST", "/v1/jobs", api_jobs_create, true, "jobs_create", API_ACCESS_KEY},
    {"GET", "/v1/jobs", api_jobs_list, false, "jobs_list", API_ACCESS_KEY},
    {"GET", "/v1/jobs/{id}", api_jobs_get, false, "jobs_get", API_ACCESS_KEY},
    {"DELETE", "/v1/jobs/{id}", api_jobs_cancel, false, "jobs_cancel", API_ACCESS_KEY},
    {"GET", "/healthz", api_healthz, false, "healthz", API_ACCESS_OPEN},
    {"GET", "/readyz", api_readyz, false, "readyz", API_ACCESS_OPEN},
    {"GET", "/metrics", api_metrics, false, "metrics", API_ACCESS_OPEN},
};

const struct http_route *api_routes(size_t *n)
{
    *n = sizeof(ROUTES) / sizeof(ROUTES[0]);
    return ROUTES;
}

/* A `worker` process serves only these (DESIGN §1: worker --listen). */
static const struct http_route WORKER_ROUTES[] = {
    {"GET", "/healthz", api_healthz, false, "healthz", API_ACCESS_OPEN},
    {"GET", "/readyz", api_readyz, false, "readyz", API_ACCESS_OPEN},
    {"GET", "/metrics", api_metrics, false, "metrics", API_ACCESS_OPEN},
};

const struct http_route *api_worker_routes(size_t *n)
{
    *n = sizeof(WORKER_ROUTES) / sizeof(WORKER_ROUTES[0]);
    return WORKER_ROUTES;
}
