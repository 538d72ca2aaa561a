/* The metrics registry (util.h): counters, gauges and histograms keyed by
 * family name and label text, rendered in the Prometheus text exposition
 * format 0.0.4. One mutex guards everything; updates are a hash lookup. */
#include <glib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM };

/* Latency buckets in seconds: from a cached hit to a slow transform. */
static const double BUCKETS[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5,   1,     2.5,  5,     10,   30};
#define NBUCKETS (sizeof(BUCKETS) / sizeof(BUCKETS[0]))

struct series {
    char *family;              /* metric family name */
    char *labels;              /* `a="b",c="d"` or "" */
    enum kind kind;            /* what it is */
    double value;              /* counter/gauge value, histogram sum */
    uint64_t count;            /* histogram observations */
    uint64_t bucket[NBUCKETS]; /* histogram counts per upper bound (not cumulative) */
};

struct family {
    char *name;
    char *type; /* "counter", "gauge", "histogram" */
    char *help;
};

struct render_hook {
    void (*fn)(void *);
    void *arg;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static GHashTable *series_by_key; /* "family{labels}" -> struct series */
static GHashTable *families;      /* name -> struct family */
static struct render_hook hooks[8];
static int nhooks;

static struct series *lookup(const char *family, const char *labels, enum kind kind)
{
    if (series_by_key == NULL)
        series_by_key = g_hash_table_new(g_str_hash, g_str_equal);
    char key[512];
    snprintf(key, sizeof(key), "%s{%s}", family, labels ? labels : "");
    struct series *s = g_hash_table_lookup(series_by_key, key);
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        s->family = strdup(family);
        s->labels = strdup(labels ? labels : "");
        s->kind = kind;
        g_hash_table_insert(series_by_key, strdup(key), s);
    }
    return s;
}

void util_metrics_counter_add(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&lock);
    lookup(name, labels, K_COUNTER)->value += v;
    pthread_mutex_unlock(&lock);
}

void util_metrics_gauge_set(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&lock);
    lookup(name, labels, K_GAUGE)->value = v;
    pthread_mutex_unlock(&lock);
}

void util_metrics_histogram_observe(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&lock);
    struct series *s = lookup(name, labels, K_HISTOGRAM);
    s->value += v;
    s->count++;
    for (size_t i = 0; i < NBUCKETS; i++) {
        if (v <= BUCKETS[i]) {
            s->bucket[i]++;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
}

void util_metrics_describe(const char *name, const char *type, const char *help)
{
    pthread_mutex_lock(&lock);
    if (families == NULL)
        families = g_hash_table_new(g_str_hash, g_str_equal);
    if (g_hash_table_lookup(families, name) == NULL) {
        struct family *f = calloc(1, sizeof(*f));
        f->name = strdup(name);
        f->type = strdup(type);
        f->help = strdup(help);
        g_hash_table_insert(families, f->name, f);
    }
    pthread_mutex_unlock(&lock);
}

void util_metrics_on_render(void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&lock);
    if (nhooks < (int)(sizeof(hooks) / sizeof(hooks[0])))
        hooks[nhooks++] = (struct render_hook){fn, arg};
    pthread_mutex_unlock(&lock);
}

static int cmp_series(const void *a, const void *b)
{
    const struct series *x = *(struct series *const *)a;
    const struct series *y = *(struct series *const *)b;
    int c = strcmp(x->family, y->family);
    return c ? c : strcmp(x->labels, y->labels);
}

static void print_value(GString *out, double v)
{
    if (v < 9e15 && v > -9e15 && v == (double)(int64_t)v)
        g_string_append_printf(out, "%lld\n", (long long)v);
    else
        g_string_append_printf(out, "%.9g\n", v);
}

static void series_name(GString *out, const char *name, const char *suffix, const char *labels,
                        const char *extra)
{
    g_string_append_printf(out, "%s%s", name, suffix);
    bool any = labels[0] || (extra && extra[0]);
    if (!any) {
        g_string_append_c(out, ' ');
        return;
    }
    g_string_append_c(out, '{');
    g_string_append(out, labels);
    if (extra && extra[0]) {
        if (labels[0])
            g_string_append_c(out, ',');
        g_string_append(out, extra);
    }
    g_string_append(out, "} ");
}

char *util_metrics_render(size_t *len)
{
    pthread_mutex_lock(&lock);
    int n = nhooks;
    struct render_hook local[8];
    memcpy(local, hooks, sizeof(local));
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n; i++)
        local[i].fn(local[i].arg);

    pthread_mutex_lock(&lock);
    GString *out = g_string_sized_new(8192);
    guint count = series_by_key ? g_hash_table_size(series_by_key) : 0;
    struct series **all = calloc(count + 1, sizeof(*all));
    guint k = 0;
    if (series_by_key) {
        GHashTableIter it;
        gpointer key, val;
        g_hash_table_iter_init(&it, series_by_key);
        while (g_hash_table_iter_next(&it, &key, &val))
            all[k++] = val;
    }
    qsort(all, k, sizeof(*all), cmp_series);
    const char *last = "";
    for (guint i = 0; i < k; i++) {
        struct series *s = all[i];
        if (strcmp(s->family, last) != 0) {
            struct family *f = families ? g_hash_table_lookup(families, s->family) : NULL;
            const char *type = s->kind == K_COUNTER ? "counter"
                               : s->kind == K_GAUGE ? "gauge"
                                                    : "histogram";
            g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", s->family,
                                   f ? f->help : s->family, s->family, type);
            last = s->family;
        }
        if (s->kind != K_HISTOGRAM) {
            series_name(out, s->family, "", s->labels, NULL);
            print_value(out, s->value);
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += s->bucket[b];
            char le[48];
            snprintf(le, sizeof(le), "le=\"%g\"", BUCKETS[b]);
            series_name(out, s->family, "_bucket", s->labels, le);
            print_value(out, (double)cum);
        }
        series_name(out, s->family, "_bucket", s->labels, "le=\"+Inf\"");
        print_value(out, (double)s->count);
        series_name(out, s->family, "_sum", s->labels, NULL);
        print_value(out, s->value);
        series_name(out, s->family, "_count", s->labels, NULL);
        print_value(out, (double)s->count);
    }
    free(all);
    pthread_mutex_unlock(&lock);
    *len = out->len;
    return g_string_free(out, FALSE);
}
