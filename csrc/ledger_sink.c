/* The ledger behind a scheduler's record hook (see ledger_sink.h). */
#define _GNU_SOURCE
#include "ledger_sink.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SINK_BATCH 256
#define SINK_WINDOW 0.02
#define SINK_RETRY 1.0 /* seconds between flushes after one failed */

void oo_ledger_sink_init(oo_ledger_sink *k, oo_ledger *l, const char *host, const char *site) {
    memset(k, 0, sizeof *k);
    k->l = oo_ledger_retain(l);
    snprintf(k->host, sizeof k->host, "%s", host);
    snprintf(k->site, sizeof k->site, "%s", site);
    k->max_batch = SINK_BATCH;
    k->window = SINK_WINDOW;
    pthread_mutex_init(&k->mu, NULL);
}

static void note_free(oo_sink_note *n) {
    free(n->body);
    free(n->ref);
    memset(n, 0, sizeof *n);
}

/* Forgets the first `count` notes (written, or given up). */
static void drop_first(oo_ledger_sink *k, size_t count) {
    size_t i;
    for (i = 0; i < count; i++) note_free(&k->v[i]);
    pthread_mutex_lock(&k->mu);
    memmove(k->v, k->v + count, (k->n - count) * sizeof *k->v);
    k->n -= count;
    pthread_mutex_unlock(&k->mu);
    k->first = oo_mono_now();
}

void oo_ledger_sink_free(oo_ledger_sink *k) {
    oo_spool_err err;
    if (!k->l) return;
    if (k->n) oo_ledger_sink_flush(k, &err);
    drop_first(k, k->n);
    free(k->v);
    oo_ledger_close(k->l);
    pthread_mutex_destroy(&k->mu);
    memset(k, 0, sizeof *k);
}

static char *copy(const char *p, size_t n) {
    char *d = (char *)malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

/* Room for one more note; 0 when out of memory or past OO_SINK_MAX (then
 * the oldest goes, counted lost). */
static int room(oo_ledger_sink *k) {
    size_t cap;
    oo_sink_note *v;
    if (k->n >= OO_SINK_MAX) {
        pthread_mutex_lock(&k->mu);
        k->lost++;
        pthread_mutex_unlock(&k->mu);
        drop_first(k, 1);
    }
    if (k->n < k->cap) return 1;
    cap = k->cap ? k->cap * 2 : 64;
    v = (oo_sink_note *)realloc(k->v, cap * sizeof *v);
    if (!v) return 0;
    k->v = v;
    k->cap = cap;
    return 1;
}

/* The ledger's outcome of a job's end, 0 when nothing is recorded (a
 * DELETE given up leaves the ledger as it was). */
static int outcome_of(const oo_job *j, oo_res_kind what, const oo_outcome *o) {
    if (j->method == OO_DELETE) return what == OO_RES_SENT ? OO_LEDGER_CANCELLED : 0;
    if (what == OO_RES_SENT) return o && o->warned ? OO_LEDGER_WARNED : OO_LEDGER_SENT;
    return OO_LEDGER_DEAD;
}

int oo_ledger_sink_add(oo_ledger_sink *k, const oo_sched *s, const oo_job *j, oo_res_kind what,
                       const oo_outcome *o) {
    oo_sink_note *n;
    int outcome = outcome_of(j, what, o);
    if (!outcome || (j->method == OO_POST && !j->body_len) ||
        (j->method == OO_DELETE && !j->ref_len))
        return 0;
    if (!room(k)) goto lost;
    n = &k->v[k->n];
    memset(n, 0, sizeof *n);
    n->outcome = outcome;
    n->channel = j->channel >= 0 && j->channel < s->nchan ? s->chans[j->channel].name : NULL;
    if (j->method == OO_DELETE) {
        if (!(n->ref = copy(j->ref, j->ref_len))) goto lost;
        n->ref_len = j->ref_len;
    } else {
        if (!(n->body = copy(j->data, j->body_len))) goto lost;
        n->body_len = j->body_len;
    }
    if (k->n == 0) k->first = oo_mono_now();
    pthread_mutex_lock(&k->mu);
    k->n++;
    pthread_mutex_unlock(&k->mu);
    return 0;
lost:
    pthread_mutex_lock(&k->mu);
    k->lost++;
    snprintf(k->error, sizeof k->error, "ledger %s: out of memory: an outcome was not recorded",
             oo_ledger_path(k->l));
    pthread_mutex_unlock(&k->mu);
    return -1;
}

double oo_ledger_sink_tick(oo_ledger_sink *k, double now) {
    double due;
    oo_spool_err err;
    if (k->n == 0) return 1e9;
    due = k->first + k->window;
    if (k->retry_at > due) due = k->retry_at;
    if (k->n >= k->max_batch && now >= k->retry_at) due = now;
    if (due > now) return due - now;
    oo_ledger_sink_flush(k, &err);
    return k->n ? SINK_RETRY : 1e9;
}

int oo_ledger_sink_flush(oo_ledger_sink *k, oo_spool_err *err) {
    oo_ledger_scope sc;
    oo_ledger_item *items;
    size_t i, n = k->n;
    int code;
    if (n == 0) return OO_SPOOL_OK;
    items = (oo_ledger_item *)calloc(n, sizeof *items);
    if (!items) {
        memset(err, 0, sizeof *err);
        err->code = OO_SPOOL_STORAGE;
        snprintf(err->message, sizeof err->message, "ledger %s: out of memory",
                 oo_ledger_path(k->l));
        code = OO_SPOOL_STORAGE;
    } else {
        for (i = 0; i < n; i++) {
            const oo_sink_note *w = &k->v[i];
            items[i].body = w->body;
            items[i].body_len = w->body_len;
            items[i].ref = w->ref;
            items[i].ref_len = w->ref_len;
            items[i].channel = w->channel;
            items[i].channel_len = w->channel ? strlen(w->channel) : 0;
            items[i].outcome = w->outcome;
        }
        /* the scope's channel is the first note's; each note names its own */
        sc.host = k->host;
        sc.site = k->site;
        sc.channel = k->v[0].channel ? k->v[0].channel : "-";
        code = oo_ledger_record(k->l, &sc, items, n, oo_wall_now(), err);
        free(items);
    }
    if (code == OO_SPOOL_OK) {
        pthread_mutex_lock(&k->mu);
        k->written += (long long)n;
        pthread_mutex_unlock(&k->mu);
        drop_first(k, n);
        k->retry_at = 0;
        return OO_SPOOL_OK;
    }
    pthread_mutex_lock(&k->mu);
    k->errors++;
    snprintf(k->error, sizeof k->error, "%s", err->message);
    if (code == OO_SPOOL_MISUSE) k->lost += (long long)n; /* no later flush would do better */
    pthread_mutex_unlock(&k->mu);
    if (code == OO_SPOOL_MISUSE) drop_first(k, n);
    else k->retry_at = oo_mono_now() + SINK_RETRY;
    return code;
}

void oo_ledger_sink_stats(oo_ledger_sink *k, oo_sink_stats *out) {
    pthread_mutex_lock(&k->mu);
    out->written = k->written;
    out->errors = k->errors;
    out->lost = k->lost;
    out->waiting = (long long)k->n;
    snprintf(out->error, sizeof out->error, "%s", k->error);
    pthread_mutex_unlock(&k->mu);
}
