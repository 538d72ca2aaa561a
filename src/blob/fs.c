/*
 * Blobs in a folder (blob.h): PATH/ab/cd/<sha256>, temp files in PATH/tmp.
 *
 * Durability (DESIGN §5): the bytes go to a unique temp file, which is
 * fsynced, renamed into place (atomic; a concurrent writer of the same key
 * renames identical bytes over it, which is harmless), and the directory is
 * fsynced so the name survives a crash. Only then may the caller commit a
 * row naming the blob. Several processes may share the folder: temp names
 * are random and every step is atomic.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "blob/blob.h"

struct fs_store {
    struct blob_store base;
    char *root; /* the folder */
};

/* snprintf that reports truncation (paths are bounded at open). */
#define PATHF(buf, ...) (snprintf((buf), sizeof(buf), __VA_ARGS__) >= (int)sizeof(buf))

static bool valid_key(const char *sha)
{
    if (sha == NULL || strlen(sha) != 64)
        return false;
    for (int i = 0; i < 64; i++) {
        char c = sha[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

static void key_path(const struct fs_store *s, const char *sha, char *out, size_t n)
{
    snprintf(out, n, "%s/%.2s/%.2s/%s", s->root, sha, sha + 2, sha);
}

static int fsync_dir(const char *dir);

/* Creates a directory: returns 1 when it made it, 0 when it existed. */
static int make_dir(const char *path)
{
    if (mkdir(path, 0755) == 0)
        return 1;
    return errno == EEXIST ? 0 : -1;
}

/* mkdir -p; a directory it creates is made durable by fsyncing its parent,
 * so a blob's name cannot vanish with its folder after a crash. */
static int mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        int made = make_dir(buf);
        if (made < 0)
            return -1;
        if (made == 1) {
            char *slash = strrchr(buf, '/');
            if (slash && slash != buf) {
                *slash = '\0';
                int rc = fsync_dir(buf);
                *slash = '/';
                if (rc != 0)
                    return -1;
            }
        }
        *p = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int write_all(int fd, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t k = write(fd, p, size);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        size -= (size_t)k;
    }
    return 0;
}

static int fs_put(struct blob_store *b, const char *sha, const void *data, size_t size,
                  struct util_error *err)
{
    struct fs_store *s = (struct fs_store *)b;
    if (!valid_key(sha))
        return util_error_set(err, UTIL_ERR_INTERNAL, "bad blob key");
    char path[4096];
    key_path(s, sha, path, sizeof(path));
    /* Present already: refresh its mtime so the sweeper's grace starts again
     * (DESIGN §5). utimensat fails with ENOENT if it vanished meanwhile, and
     * then we write it anew. */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%.2s/%.2s", s->root, sha, sha + 2);
    if (utimensat(AT_FDCWD, path, NULL, 0) == 0) {
        /* Another writer may have renamed it into place without having
         * fsynced the directory yet: our row must not outlive its name. */
        if (fsync_dir(dir) != 0)
            return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: fsync %s: %s", dir,
                                  strerror(errno));
        return 0;
    }
    if (errno != ENOENT)
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s: %s", path,
                              strerror(errno));

    char tmpdir[4096];
    snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", s->root);
    if (mkdir_p(dir) != 0 || mkdir_p(tmpdir) != 0)
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: cannot create %s: %s", dir,
                              strerror(errno));
    char rnd[UTIL_ID_LEN + 1];
    if (util_id_new(rnd) != 0)
        return util_error_set(err, UTIL_ERR_INTERNAL, "no randomness");
    char tmp[4096];
    if (PATHF(tmp, "%s/%.16s.%s", tmpdir, sha, rnd))
        return util_error_set(err, UTIL_ERR_INTERNAL, "blob path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s: %s", tmp,
                              strerror(errno));
    if (write_all(fd, data, size) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: writing %s: %s", tmp,
                              strerror(e));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s: %s", path, strerror(e));
    }
    if (fsync_dir(dir) != 0)
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: fsync %s: %s", dir,
                              strerror(errno));
    return 0;
}

static int fs_get(struct blob_store *b, const char *sha, struct blob_data *out,
                  struct util_error *err)
{
    struct fs_store *s = (struct fs_store *)b;
    out->fd = -1;
    out->mem = NULL;
    out->size = 0;
    if (!valid_key(sha))
        return util_error_set(err, UTIL_ERR_NOT_FOUND, "no such blob");
    char path[4096];
    key_path(s, sha, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return util_error_set(err, UTIL_ERR_NOT_FOUND, "blob %.12s is missing", sha);
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s: %s", path,
                              strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s", strerror(errno));
    }
    out->fd = fd;
    out->size = (size_t)st.st_size;
    return 0;
}

static int fs_exists(struct blob_store *b, const char *sha, bool *out, struct util_error *err)
{
    struct fs_store *s = (struct fs_store *)b;
    char path[4096];
    key_path(s, sha, path, sizeof(path));
    struct stat st;
    if (stat(path, &st) == 0) {
        *out = true;
        return 0;
    }
    if (errno == ENOENT) {
        *out = false;
        return 0;
    }
    return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s: %s", path, strerror(errno));
}

static int64_t mtime_ms(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

static int fs_remove_if_unreferenced(struct blob_store *b, const char *sha, int64_t older_than_ms,
                                     blob_referenced_fn check, void *arg, bool *removed,
                                     struct util_error *err)
{
    struct fs_store *s = (struct fs_store *)b;
    if (!valid_key(sha))
        return 0;
    char path[4096];
    key_path(s, sha, path, sizeof(path));
    struct stat st;
    if (stat(path, &st) != 0 || mtime_ms(&st) >= older_than_ms)
        return 0;
    /* Move it out of reach first (atomic), then ask about rows: see blob.h. */
    char rnd[UTIL_ID_LEN + 1];
    if (util_id_new(rnd) != 0)
        return util_error_set(err, UTIL_ERR_INTERNAL, "no randomness");
    char grave[4096];
    if (PATHF(grave, "%s/tmp/%s.grave.%s", s->root, sha, rnd))
        return util_error_set(err, UTIL_ERR_INTERNAL, "blob path too long");
    if (rename(path, grave) != 0)
        return errno == ENOENT
                   ? 0
                   : util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: rename %s: %s", path,
                                    strerror(errno));
    bool referenced = true;
    bool young = stat(grave, &st) == 0 && mtime_ms(&st) >= older_than_ms;
    if (young || check(sha, &referenced, arg) != 0 || referenced) {
        /* Put it back; an upload may have written it again meanwhile, with
         * the same bytes (content-addressed), so replacing it is harmless. */
        if (rename(grave, path) != 0)
            return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: rename %s: %s", grave,
                                  strerror(errno));
        return 0;
    }
    if (unlink(grave) != 0 && errno != ENOENT)
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: unlink %s: %s", grave,
                              strerror(errno));
    *removed = true;
    return 0;
}

/* Visits PATH/xx/yy/<sha>; also removes temp files older than an hour
 * (left by a crash between write and rename). */
static int fs_walk(struct blob_store *b, blob_visit_fn fn, void *arg, struct util_error *err)
{
    struct fs_store *s = (struct fs_store *)b;
    DIR *d1 = opendir(s->root);
    if (d1 == NULL)
        return util_error_set(err, UTIL_ERR_UNAVAILABLE, "blob storage: %s: %s", s->root,
                              strerror(errno));
    struct dirent *e1;
    char p1[4096], p2[4096], p3[4096];
    while ((e1 = readdir(d1)) != NULL) {
        if (e1->d_name[0] == '.')
            continue;
        if (PATHF(p1, "%s/%s", s->root, e1->d_name))
            continue;
        bool is_tmp = strcmp(e1->d_name, "tmp") == 0;
        DIR *d2 = opendir(p1);
        if (d2 == NULL)
            continue;
        struct dirent *e2;
        while ((e2 = readdir(d2)) != NULL) {
            if (e2->d_name[0] == '.')
                continue;
            if (PATHF(p2, "%s/%s", p1, e2->d_name))
                continue;
            if (is_tmp) {
                /* A grave left by a sweeper that crashed before deciding goes
                 * back (the next sweep decides again); an old temp file of
                 * an interrupted write is removed. */
                const char *g = strstr(e2->d_name, ".grave.");
                if (g && g - e2->d_name == 64) {
                    char sha[65];
                    memcpy(sha, e2->d_name, 64);
                    sha[64] = '\0';
                    char back[4096];
                    key_path(s, sha, back, sizeof(back));
                    struct stat st;
                    if (stat(p2, &st) == 0 && st.st_mtim.tv_sec < time(NULL) - 60 && valid_key(sha))
                        rename(p2, back);
                    continue;
                }
                struct stat st;
                if (stat(p2, &st) == 0 && st.st_mtim.tv_sec < time(NULL) - 3600)
                    unlink(p2);
                continue;
            }
            DIR *d3 = opendir(p2);
            if (d3 == NULL)
                continue;
            struct dirent *e3;
            while ((e3 = readdir(d3)) != NULL) {
                if (!valid_key(e3->d_name))
                    continue;
                if (PATHF(p3, "%s/%s", p2, e3->d_name))
                    continue;
                struct stat st;
                if (stat(p3, &st) != 0)
                    continue;
                fn(e3->d_name, (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000,
                   arg);
            }
            closedir(d3);
        }
        closedir(d2);
    }
    closedir(d1);
    return 0;
}

static void fs_close(struct blob_store *b)
{
    struct fs_store *s = (struct fs_store *)b;
    free(s->root);
    free(s);
}

static const struct blob_ops FS_OPS = {
    .name = "fs",
    .close = fs_close,
    .put = fs_put,
    .get = fs_get,
    .exists = fs_exists,
    .remove_if_unreferenced = fs_remove_if_unreferenced,
    .walk = fs_walk,
};

struct blob_store *blob_fs_open(const char *path, struct util_error *err)
{
    if (strlen(path) > 3000) {
        util_error_set(err, UTIL_ERR_INVALID_OPERATION, "--blobs: the path is too long");
        return NULL;
    }
    if (mkdir_p(path) != 0) {
        util_error_set(err, UTIL_ERR_UNAVAILABLE, "--blobs: cannot create %s: %s", path,
                       strerror(errno));
        return NULL;
    }
    struct fs_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        util_error_set(err, UTIL_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    s->base.ops = &FS_OPS;
    s->root = strdup(path);
    return &s->base;
}
