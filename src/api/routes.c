/* The route table of the public API (DESIGN §3). */
#include "api/api.h"

static const struct http_route ROUTES[] = {
    {"POST", "/v1/images", api_images_create, true, "images_create"},
    {"GET", "/v1/images", api_images_list, false, "images_list"},
    {"GET", "/v1/images/{id}", api_images_get, false, "images_get"},
    {"DELETE", "/v1/images/{id}", api_images_delete, false, "images_delete"},
    {"GET", "/v1/images/{id}/info", api_images_info, false, "images_info"},
    {"POST", "/v1/transform", api_transform, true, "transform"},
    {"POST", "/v1/jobs", api_jobs_create, true, "jobs_create"},
    {"GET", "/v1/jobs", api_jobs_list, false, "jobs_list"},
    {"GET", "/v1/jobs/{id}", api_jobs_get, false, "jobs_get"},
    {"DELETE", "/v1/jobs/{id}", api_jobs_cancel, false, "jobs_cancel"},
    {"GET", "/healthz", api_healthz, false, "healthz"},
    {"GET", "/readyz", api_readyz, false, "readyz"},
    {"GET", "/metrics", api_metrics, false, "metrics"},
};

const struct http_route *api_routes(size_t *n)
{
    *n = sizeof(ROUTES) / sizeof(ROUTES[0]);
    return ROUTES;
}
