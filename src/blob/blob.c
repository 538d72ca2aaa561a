/* Blob storage dispatch (blob.h): picks the backend from the spec. */
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "blob/blob.h"

struct blob_store *blob_open(const char *spec, struct pg_pool *pool, struct util_error *err)
{
    if (spec && strncmp(spec, "fs:", 3) == 0 && spec[3] != '\0')
        return blob_fs_open(spec + 3, err);
    if (spec && strcmp(spec, "db") == 0)
        return blob_db_open(pool, err);
    util_error_set(err, UTIL_ERR_INVALID_OPERATION, "--blobs: '%s' is neither fs:PATH nor db",
                   spec ? spec : "");
    return NULL;
}

void blob_close(struct blob_store *b)
{
    if (b)
        b->ops->close(b);
}

int blob_put(struct blob_store *b, const char *sha256, const void *data, size_t size,
             struct util_error *err)
{
    return b->ops->put(b, sha256, data, size, err);
}

int blob_get(struct blob_store *b, const char *sha256, struct blob_data *out,
             struct util_error *err)
{
    return b->ops->get(b, sha256, out, err);
}

int blob_get_mem(struct blob_store *b, const char *sha256, struct blob_data *out,
                 struct util_error *err)
{
    if (b->ops->get(b, sha256, out, err) != 0)
        return -1;
    if (out->fd < 0)
        return 0;
    /* Map the file: no copy out of the page cache, and the memory is
     * the kernel's to reclaim. Blobs are immutable (renamed into place,
     * never rewritten), so the mapping cannot change under us. */
    if (out->size > 0) {
        void *m = mmap(NULL, out->size, PROT_READ, MAP_PRIVATE, out->fd, 0);
        if (m != MAP_FAILED) {
            close(out->fd);
            out->fd = -1;
            out->mem = m;
            out->mapped = true;
            return 0;
        }
    }
    /* Read the whole file: blobs are at most --max-body-bytes. */
    char *mem = malloc(out->size ? out->size : 1);
    if (mem == NULL) {
        close(out->fd);
        return util_error_set(err, UTIL_ERR_INTERNAL, "out of memory reading a blob");
    }
    size_t got = 0;
    while (got < out->size) {
        ssize_t k = pread(out->fd, mem + got, out->size - got, (off_t)got);
        if (k <= 0) {
            free(mem);
            close(out->fd);
            out->fd = -1;
            return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob %s: short read", sha256);
        }
        got += (size_t)k;
    }
    close(out->fd);
    out->fd = -1;
    out->mem = mem;
    return 0;
}

void blob_data_free(struct blob_data *d)
{
    if (d->fd >= 0)
        close(d->fd);
    if (d->mapped)
        munmap(d->mem, d->size);
    else
        free(d->mem);
    d->mapped = false;
    d->fd = -1;
    d->mem = NULL;
}

int blob_exists(struct blob_store *b, const char *sha256, bool *out, struct util_error *err)
{
    return b->ops->exists(b, sha256, out, err);
}

int blob_remove_if_unreferenced(struct blob_store *b, const char *sha256, int64_t older_than_ms,
                                blob_referenced_fn check, void *arg, bool *removed,
                                struct util_error *err)
{
    *removed = false;
    return b->ops->remove_if_unreferenced(b, sha256, older_than_ms, check, arg, removed, err);
}

int blob_walk(struct blob_store *b, blob_visit_fn fn, void *arg, struct util_error *err)
{
    return b->ops->walk(b, fn, arg, err);
}

void blob_sha256_hex(const void *data, size_t size, char *out)
{
    GChecksum *c = g_checksum_new(G_CHECKSUM_SHA256);
    /* g_checksum_update takes a gssize length: feed huge buffers in parts. */
    const guchar *p = data;
    while (size > 0) {
        size_t n = size > (1u << 30) ? (1u << 30) : size;
        g_checksum_update(c, p, (gssize)n);
        p += n;
        size -= n;
    }
    g_strlcpy(out, g_checksum_get_string(c), 65);
    g_checksum_free(c);
}
