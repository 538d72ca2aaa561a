/* Domain error values (util.h). */
#include <stdio.h>

#include "util/util.h"

int util_error_set(struct util_error *err, enum util_err code, const char *fmt, ...)
{
    if (err == NULL)
        return -1;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
    va_end(ap);
    return -1;
}

const char *util_err_name(enum util_err code)
{
    switch (code) {
    case UTIL_OK:
        return "ok";
    case UTIL_ERR_INVALID_OPERATION:
        return "invalid-operation";
    case UTIL_ERR_NOT_FOUND:
        return "not-found";
    case UTIL_ERR_UNSUPPORTED:
        return "unsupported-media-type";
    case UTIL_ERR_INVALID_IMAGE:
        return "invalid-image";
    case UTIL_ERR_TOO_LARGE:
        return "image-too-large";
    case UTIL_ERR_CONFLICT:
        return "conflict";
    case UTIL_ERR_OVERLOADED:
        return "overloaded";
    case UTIL_ERR_TIMEOUT:
        return "timeout";
    case UTIL_ERR_UNAVAILABLE:
        return "unavailable";
    case UTIL_ERR_INTERNAL:
        return "internal";
    }
    return "internal";
}
