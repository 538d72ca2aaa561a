/* Logging and clocks (util.h). */
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct timespec util_deadline_in(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

void util_rfc3339_ms(int64_t epoch_ms, char *out, size_t n)
{
    time_t secs = (time_t)(epoch_ms / 1000);
    int ms = (int)(epoch_ms % 1000);
    if (ms < 0) {
        ms += 1000;
        secs -= 1;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

void util_log(const char *level, const char *fmt, ...)
{
    /* One write(2) per line so lines from several threads never interleave. */
    char line[4096];
    char ts[32];
    util_rfc3339_ms(util_now_ms(), ts, sizeof(ts));
    int off = snprintf(line, sizeof(line), "%s %s ", ts, level);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line + off, sizeof(line) - (size_t)off - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)off + (k < 0 ? 0 : (size_t)k);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

int util_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

const char *util_redact_url(const char *url)
{
    static __thread char buf[512];
    snprintf(buf, sizeof(buf), "%s", url ? url : "");
    /* scheme://user:PASSWORD@host */
    char *scheme = strstr(buf, "://");
    char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
    if (at && colon && colon < at && strlen(buf) + 4 < sizeof(buf)) {
        memmove(colon + 4, at, strlen(at) + 1);
        memcpy(colon, ":***", 4);
    }
    /* ...?password=PASSWORD&... */
    char *pw = strstr(buf, "password=");
    if (pw) {
        char *v = pw + 9;
        char *end = strchr(v, '&');
        size_t rest = end ? strlen(end) + 1 : 1;
        if (v + 3 + rest <= buf + sizeof(buf)) {
            memmove(v + 3, end ? end : v + strlen(v), rest);
            memcpy(v, "***", 3);
        }
    }
    return buf;
}
