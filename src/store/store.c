/* Store dispatch (store.h): picks the backend from the database URL. */
#include <string.h>

#include "store/store.h"

struct store *store_open(const char *url, struct util_error *err)
{
    if (url && strncmp(url, "sqlite:", 7) == 0 && url[7] != '\0')
        return store_sqlite_open(url + 7, err);
    if (url && (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0)) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                       "--database: PostgreSQL is not supported by this build yet");
        return NULL;
    }
    util_error_set(err, UTIL_ERR_INVALID_OPERATION,
                   "--database: '%s' is neither sqlite:PATH nor postgres://...", url ? url : "");
    return NULL;
}

void store_close(struct store *s)
{
    if (s)
        s->ops->close(s);
}

int store_migrate(struct store *s, struct util_error *err)
{
    return s->ops->migrate(s, err);
}

int store_ping(struct store *s, struct util_error *err)
{
    return s->ops->ping(s, err);
}

int store_image_insert(struct store *s, struct store_image *img, struct util_error *err)
{
    return s->ops->image_insert(s, img, err);
}

int store_image_get(struct store *s, const char *id, struct store_image *out,
                    struct util_error *err)
{
    return s->ops->image_get(s, id, out, err);
}

int store_image_delete(struct store *s, const char *id, struct util_error *err)
{
    return s->ops->image_delete(s, id, err);
}

int store_image_list(struct store *s, int64_t before_seq, int limit, struct store_image *out,
                     int *n, struct util_error *err)
{
    return s->ops->image_list(s, before_seq, limit, out, n, err);
}

int store_blob_referenced(struct store *s, const char *sha256, bool *out, struct util_error *err)
{
    return s->ops->blob_referenced(s, sha256, out, err);
}

int store_variant_get(struct store *s, const char *image_id, const char *plan,
                      struct store_variant *out, struct util_error *err)
{
    return s->ops->variant_get(s, image_id, plan, out, err);
}

int store_variant_put(struct store *s, const struct store_variant *v, struct util_error *err)
{
    return s->ops->variant_put(s, v, err);
}

void store_variant_touch(struct store *s, const char *image_id, const char *plan, int64_t now_ms)
{
    s->ops->variant_touch(s, image_id, plan, now_ms);
}

int store_variant_trim(struct store *s, int64_t max_bytes, int *evicted, struct util_error *err)
{
    return s->ops->variant_trim(s, max_bytes, evicted, err);
}
