/* The ledger behind a scheduler's record hook (see ledger_sink.h).
 * Sections: the memo of entries, notes, writing them, the sink's thread,
 * reserving on it. */
#define _GNU_SOURCE
#include "ledger_sink.h"
#include "clock.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SINK_BATCH 256
#define SINK_WINDOW 0.02

void oo_ledger_sink_init(oo_ledger_sink *k, oo_ledger *l, const char *host, const char *site) {
    memset(k, 0, sizeof *k);
    k->l = oo_ledger_retain(l);
    snprintf(k->host, sizeof k->host, "%s", host);
    snprintf(k->site, sizeof k->site, "%s", site);
    k->max_batch = SINK_BATCH;
    k->window = SINK_WINDOW;
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
}

/* ------------------------------------------------------------------ */
/* The memo of entries (the thread's only)                             */

/* Entries kept (a ring: the oldest goes) and hash buckets (a power of two). */
#define MEMO_CAP 4096
#define MEMO_BUCKETS 8192

typedef struct memo_slot {
    char *body; /* the memo's copy: the entry points into it */
    size_t len;
    uint64_t hash;
    oo_ledger_entry e;
    int used, next; /* next: the bucket's chain, -1 at its end */
} memo_slot;

struct oo_sink_memo {
    memo_slot v[MEMO_CAP];
    int bucket[MEMO_BUCKETS]; /* -1: empty */
    size_t head;              /* insertions so far: the next slot is head % MEMO_CAP */
};

/* A hash of the bytes, eight at a time (the memo compares the bytes too). */
static uint64_t body_hash(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ n, w;
    size_t i;
    for (i = 0; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    for (; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001B3ULL;
    return h ^ (h >> 29);
}

static struct oo_sink_memo *memo_new(void) {
    struct oo_sink_memo *m = (struct oo_sink_memo *)calloc(1, sizeof *m);
    size_t i;
    if (m)
        for (i = 0; i < MEMO_BUCKETS; i++) m->bucket[i] = -1;
    return m;
}

/* Takes slot i out of its chain and frees what it holds. */
static void memo_drop(struct oo_sink_memo *m, int i) {
    memo_slot *w = &m->v[i];
    int *p = &m->bucket[w->hash & (MEMO_BUCKETS - 1)];
    if (!w->used) return;
    while (*p != i) p = &m->v[*p].next;
    *p = w->next;
    oo_ledger_entry_free(&w->e);
    free(w->body);
    w->used = 0;
}

static void memo_free(struct oo_sink_memo *m) {
    int i;
    if (!m) return;
    for (i = 0; i < MEMO_CAP; i++) memo_drop(m, i);
    free(m);
}

/* The slot of these body bytes, or -1. */
static int memo_find(const struct oo_sink_memo *m, const char *body, size_t len) {
    uint64_t h = body_hash(body, len);
    int i;
    for (i = m->bucket[h & (MEMO_BUCKETS - 1)]; i >= 0; i = m->v[i].next)
        if (m->v[i].hash == h && m->v[i].len == len && memcmp(m->v[i].body, body, len) == 0)
            return i;
    return -1;
}

/* Parses a copy of the body into the next slot (the oldest entry goes);
 * the slot, or -1 (out of memory, or a body the ledger refuses: it then
 * parses it itself and says why). */
static int memo_add(struct oo_sink_memo *m, const char *store_key, const char *body, size_t len) {
    int i = (int)(m->head % MEMO_CAP);
    memo_slot *w = &m->v[i];
    memo_drop(m, i);
    if (!(w->body = (char *)malloc(len + 1))) return -1;
    memcpy(w->body, body, len);
    w->body[len] = '\0';
    if (oo_ledger_entry_from_body(w->body, len, store_key, &w->e, NULL, 0) != 0) {
        free(w->body);
        return -1;
    }
    w->len = len;
    w->hash = body_hash(body, len);
    w->next = m->bucket[w->hash & (MEMO_BUCKETS - 1)];
    m->bucket[w->hash & (MEMO_BUCKETS - 1)] = i;
    w->used = 1;
    m->head++;
    return i;
}

/* ------------------------------------------------------------------ */
/* Notes                                                               */

static void notes_free(oo_sink_note *v, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        free(v[i].body);
        free(v[i].ref);
    }
}

static char *copy(const char *p, size_t n) {
    char *d = (char *)malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

/* Room for one more note (under mu); 0 out of memory. Past OO_SINK_MAX
 * the oldest goes, counted lost. */
static int room(oo_ledger_sink *k) {
    size_t cap;
    oo_sink_note *v;
    if (k->n >= OO_SINK_MAX) {
        notes_free(k->v, 1);
        memmove(k->v, k->v + 1, (k->n - 1) * sizeof *k->v);
        k->n--;
        k->lost++;
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

static void lost_one(oo_ledger_sink *k) {
    k->lost++;
    snprintf(k->error, sizeof k->error, "ledger %s: out of memory: an outcome was not recorded",
             oo_ledger_path(k->l));
}

int oo_ledger_sink_add(oo_ledger_sink *k, const oo_sched *s, const oo_job *j, oo_res_kind what,
                       const oo_outcome *o) {
    oo_sink_note note;
    int outcome = outcome_of(j, what, o), wake;
    if (!outcome || (j->method == OO_POST && !j->body_len) ||
        (j->method == OO_DELETE && !j->ref_len))
        return 0;
    memset(&note, 0, sizeof note);
    note.outcome = outcome;
    note.channel = j->channel >= 0 && j->channel < s->nchan ? s->chans[j->channel].name : NULL;
    if (j->method == OO_DELETE) {
        note.ref = copy(j->ref, j->ref_len);
        note.ref_len = j->ref_len;
    } else {
        note.body = copy(j->data, j->body_len);
        note.body_len = j->body_len;
    }
    pthread_mutex_lock(&k->mu);
    if ((!note.ref && !note.body) || !room(k)) {
        lost_one(k);
        pthread_mutex_unlock(&k->mu);
        notes_free(&note, 1);
        return -1;
    }
    if (k->n == 0) k->first = oo_mono_now();
    k->v[k->n++] = note;
    wake = k->threaded && k->n >= k->max_batch;
    pthread_mutex_unlock(&k->mu);
    if (wake) pthread_cond_broadcast(&k->cv);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Writing them                                                        */

/* One transaction for v[0..n) (no lock held). The entries the thread
 * derived when it reserved these orders are used, and dropped once the
 * notes are done with. */
static int record(oo_ledger_sink *k, const oo_sink_note *v, size_t n, oo_spool_err *err) {
    oo_ledger_scope sc;
    oo_ledger_item *items = (oo_ledger_item *)calloc(n, sizeof *items);
    int *hit = k->memo ? (int *)malloc(n * sizeof *hit) : NULL;
    size_t i;
    int code;
    if (!items) {
        free(hit);
        memset(err, 0, sizeof *err);
        err->code = OO_SPOOL_STORAGE;
        snprintf(err->message, sizeof err->message, "ledger %s: out of memory",
                 oo_ledger_path(k->l));
        return OO_SPOOL_STORAGE;
    }
    for (i = 0; i < n; i++) {
        items[i].body = v[i].body;
        items[i].body_len = v[i].body_len;
        items[i].ref = v[i].ref;
        items[i].ref_len = v[i].ref_len;
        items[i].channel = v[i].channel;
        items[i].channel_len = v[i].channel ? strlen(v[i].channel) : 0;
        items[i].outcome = v[i].outcome;
        if (hit) {
            hit[i] = v[i].body ? memo_find(k->memo, v[i].body, v[i].body_len) : -1;
            if (hit[i] >= 0) items[i].entry = &k->memo->v[hit[i]].e;
        }
    }
    /* the scope's channel is the first note's; each note names its own */
    sc.host = k->host;
    sc.site = k->site;
    sc.channel = v[0].channel ? v[0].channel : "-";
    code = oo_ledger_record(k->l, &sc, items, n, oo_wall_now(), err);
    for (i = 0; hit && i < n && (code == OO_SPOOL_OK || code == OO_SPOOL_MISUSE); i++)
        if (hit[i] >= 0) memo_drop(k->memo, hit[i]);
    free(hit);
    free(items);
    return code;
}

/* Puts v[0..n) back in front of the notes that came meanwhile (under
 * mu); 0 out of memory (then they are lost). */
static int put_back(oo_ledger_sink *k, oo_sink_note *v, size_t n, size_t cap) {
    if (k->n) {
        if (cap < n + k->n) {
            oo_sink_note *w = (oo_sink_note *)realloc(v, (n + k->n) * sizeof *v);
            if (!w) return 0;
            v = w;
            cap = n + k->n;
        }
        memcpy(v + n, k->v, k->n * sizeof *v);
        free(k->v);
    }
    k->v = v;
    k->n += n;
    k->cap = cap;
    return 1;
}

/* Writes every note waiting (mu not held by the caller): they are taken
 * out, so that adds go on meanwhile, and put back when the write fails.
 * The outcome is kept (last_code) for flush. */
static int write_now(oo_ledger_sink *k, oo_spool_err *err) {
    oo_sink_note *v;
    size_t n, cap;
    int code;
    pthread_mutex_lock(&k->mu);
    v = k->v;
    n = k->n;
    cap = k->cap;
    k->v = NULL;
    k->n = k->cap = 0;
    k->writing = 1;
    pthread_mutex_unlock(&k->mu);
    code = n ? record(k, v, n, err) : OO_SPOOL_OK;
    pthread_mutex_lock(&k->mu);
    k->writing = 0;
    if (code == OO_SPOOL_OK || code == OO_SPOOL_MISUSE) {
        if (code == OO_SPOOL_OK) k->written += (long long)n;
        else k->lost += (long long)n; /* no later write would do better */
        notes_free(v, n);
        free(v);
        k->retry_at = 0;
    } else if (!put_back(k, v, n, cap)) {
        k->lost += (long long)n;
        notes_free(v, n);
        free(v);
    } else {
        k->retry_at = oo_mono_now() + OO_SINK_RETRY;
    }
    if (k->n) k->first = oo_mono_now();
    if (code != OO_SPOOL_OK) {
        k->errors++;
        snprintf(k->error, sizeof k->error, "%s", err->message);
    }
    pthread_mutex_unlock(&k->mu);
    pthread_cond_broadcast(&k->cv);
    return code;
}

/* Is a write due (under mu)? */
static int due(const oo_ledger_sink *k, double now) {
    return k->n && now >= k->retry_at && (k->n >= k->max_batch || now >= k->first + k->window);
}

double oo_ledger_sink_tick(oo_ledger_sink *k, double now) {
    oo_spool_err err;
    int go;
    double at;
    if (k->threaded) return 1e9;
    pthread_mutex_lock(&k->mu);
    go = due(k, now);
    at = k->first + k->window > k->retry_at ? k->first + k->window : k->retry_at;
    at = k->n ? at : now + 1e9;
    pthread_mutex_unlock(&k->mu);
    if (go) {
        write_now(k, &err);
        pthread_mutex_lock(&k->mu);
        at = k->n ? k->retry_at : now + 1e9;
        pthread_mutex_unlock(&k->mu);
    }
    return at > now ? at - now : 0;
}

int oo_ledger_sink_flush(oo_ledger_sink *k, oo_spool_err *err) {
    int code;
    if (!k->threaded) return k->n ? write_now(k, err) : OO_SPOOL_OK;
    pthread_mutex_lock(&k->mu);
    if (k->n == 0 && !k->writing) {
        pthread_mutex_unlock(&k->mu);
        return OO_SPOOL_OK;
    }
    k->flush_asked = 1;
    pthread_cond_broadcast(&k->cv);
    while (k->flush_asked) pthread_cond_wait(&k->cv, &k->mu);
    /* what the thread's last write said, when notes are still waiting */
    code = k->n ? OO_SPOOL_STORAGE : OO_SPOOL_OK;
    if (code != OO_SPOOL_OK) {
        memset(err, 0, sizeof *err);
        err->code = code;
        snprintf(err->message, sizeof err->message, "%s", k->error);
    }
    pthread_mutex_unlock(&k->mu);
    return code;
}

/* ------------------------------------------------------------------ */
/* The sink's thread                                                   */

/* Derives the entries of the request's bodies into the memo (a batch of
 * at most half its size, so that none of them pushes out another). */
static void memo_fill(oo_ledger_sink *k, oo_sink_request *r) {
    const char *store_key = oo_ledger_store_key(k->l);
    size_t i;
    if (r->n > MEMO_CAP / 2 || (!k->memo && !(k->memo = memo_new()))) return;
    for (i = 0; i < r->n; i++) {
        oo_ledger_item *it = &r->items[i];
        int slot = it->body ? memo_add(k->memo, store_key, it->body, it->body_len) : -1;
        if (slot >= 0) it->entry = &k->memo->v[slot].e;
    }
}

/* The slot holding an entry memo_fill gave out. */
static int slot_of(const struct oo_sink_memo *m, const oo_ledger_entry *e) {
    return (int)((const memo_slot *)(const void *)((const char *)e - offsetof(memo_slot, e)) -
                 m->v);
}

/* Keeps the entries of the orders reserved (their notes will come). */
static void memo_keep_reserved(oo_ledger_sink *k, oo_sink_request *r) {
    size_t i;
    for (i = 0; i < r->n; i++) {
        oo_ledger_item *it = &r->items[i];
        if (it->entry && (r->code != OO_SPOOL_OK || !it->reserved))
            memo_drop(k->memo, slot_of(k->memo, it->entry));
        if (r->code != OO_SPOOL_OK || !it->reserved) it->entry = NULL;
    }
}

static void answer_request(oo_ledger_sink *k) {
    oo_sink_request *r = &k->req;
    oo_ledger_scope sc;
    sc.host = k->host;
    sc.site = k->site;
    sc.channel = r->channel;
    memo_fill(k, r);
    r->code = oo_ledger_reserve(k->l, &sc, r->items, r->n, r->lease, oo_wall_now(), &r->err);
    memo_keep_reserved(k, r);
}

/* Waits for work until `at` (monotonic; <= 0: no deadline), under mu. */
static void wait_until(oo_ledger_sink *k, double at) {
    struct timespec dl;
    double wall;
    if (at <= 0) {
        pthread_cond_wait(&k->cv, &k->mu);
        return;
    }
    wall = oo_wall_now() + (at - oo_mono_now());
    dl.tv_sec = (time_t)wall;
    dl.tv_nsec = (long)((wall - (double)dl.tv_sec) * 1e9);
    if (dl.tv_nsec < 0) dl.tv_nsec = 0;
    if (dl.tv_nsec >= 1000000000L) dl.tv_nsec = 999999999L;
    pthread_cond_timedwait(&k->cv, &k->mu, &dl);
}

static void *sink_main(void *arg) {
    oo_ledger_sink *k = (oo_ledger_sink *)arg;
    oo_spool_err err;
    pthread_mutex_lock(&k->mu);
    for (;;) {
        double now = oo_mono_now();
        if (k->req.state == 1) {
            pthread_mutex_unlock(&k->mu);
            answer_request(k);
            pthread_mutex_lock(&k->mu);
            k->req.state = 2;
            pthread_cond_broadcast(&k->cv);
            continue;
        }
        if (k->n && (k->flush_asked || k->stop || due(k, now))) {
            int asked = k->flush_asked || k->stop;
            pthread_mutex_unlock(&k->mu);
            write_now(k, &err);
            pthread_mutex_lock(&k->mu);
            if (asked) k->flush_asked = 0; /* written, or failed: flush says which */
            pthread_cond_broadcast(&k->cv);
            if (k->stop) break;
            continue;
        }
        if (k->flush_asked) { /* nothing waits */
            k->flush_asked = 0;
            pthread_cond_broadcast(&k->cv);
        }
        if (k->stop) break;
        if (k->n) {
            double at = k->first + k->window;
            wait_until(k, at > k->retry_at ? at : k->retry_at);
        } else {
            wait_until(k, 0);
        }
    }
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

int oo_ledger_sink_start(oo_ledger_sink *k) {
    sigset_t all, old;
    int rc;
    if (k->threaded) return 0;
    sigfillset(&all);
    /* signals (Ctrl-C) stay with the caller's thread */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&k->thread, NULL, sink_main, k);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) return -1;
    k->threaded = 1;
    return 0;
}

void oo_ledger_sink_free(oo_ledger_sink *k) {
    oo_spool_err err;
    if (!k->l) return;
    if (k->threaded) {
        pthread_mutex_lock(&k->mu);
        k->stop = 1;
        pthread_cond_broadcast(&k->cv);
        pthread_mutex_unlock(&k->mu);
        pthread_join(k->thread, NULL);
        k->threaded = 0;
    } else if (k->n) {
        write_now(k, &err);
    }
    k->lost += (long long)k->n; /* a write failed at the very end */
    notes_free(k->v, k->n);
    free(k->v);
    free(k->req.items);
    free(k->req.data);
    memo_free(k->memo);
    oo_ledger_close(k->l);
    pthread_cond_destroy(&k->cv);
    pthread_mutex_destroy(&k->mu);
    memset(k, 0, sizeof *k);
}

/* ------------------------------------------------------------------ */
/* Reserving on it                                                     */

/* The request's copies of the items' strings. 0, or -1 out of memory. */
static int copy_items(oo_sink_request *r, const oo_ledger_item *items, size_t n) {
    size_t i, total = 0;
    char *p;
    for (i = 0; i < n; i++)
        total += (items[i].body ? items[i].body_len + 1 : 0) +
                 (items[i].ref ? items[i].ref_len : 0) +
                 (items[i].channel ? items[i].channel_len : 0);
    free(r->items);
    free(r->data);
    r->items = (oo_ledger_item *)calloc(n ? n : 1, sizeof *r->items);
    r->data = (char *)malloc(total ? total : 1);
    if (!r->items || !r->data) return -1;
    p = r->data;
    for (i = 0; i < n; i++) {
        oo_ledger_item *it = &r->items[i];
        *it = items[i];
        it->hint = NULL; /* not copied: the caller's string */
        it->hint_len = 0;
        if (items[i].body) { /* NUL-terminated, as the ledger reads it */
            memcpy(p, items[i].body, items[i].body_len);
            p[items[i].body_len] = '\0';
            it->body = p;
            p += items[i].body_len + 1;
        }
        if (items[i].ref) {
            memcpy(p, items[i].ref, items[i].ref_len);
            it->ref = p;
            p += items[i].ref_len;
        }
        if (items[i].channel) {
            memcpy(p, items[i].channel, items[i].channel_len);
            it->channel = p;
            p += items[i].channel_len;
        }
    }
    r->n = n;
    return 0;
}

int oo_ledger_sink_reserve(oo_ledger_sink *k, const oo_ledger_scope *sc,
                           const oo_ledger_item *items, size_t n, double lease) {
    oo_sink_request *r = &k->req;
    int rc;
    if (!k->threaded) return -1;
    pthread_mutex_lock(&k->mu);
    rc = r->state == 1 ? -1 : copy_items(r, items, n);
    if (rc == 0) {
        snprintf(r->channel, sizeof r->channel, "%s", sc->channel);
        r->lease = lease;
        r->state = 1;
    }
    pthread_mutex_unlock(&k->mu);
    if (rc == 0) pthread_cond_broadcast(&k->cv);
    return rc;
}

const oo_ledger_item *oo_ledger_sink_answers(oo_ledger_sink *k, size_t *n, oo_spool_err *err) {
    oo_sink_request *r = &k->req;
    const oo_ledger_item *out = NULL;
    pthread_mutex_lock(&k->mu);
    while (r->state == 1) pthread_cond_wait(&k->cv, &k->mu);
    if (r->state == 2) {
        r->state = 0;
        if (r->code == OO_SPOOL_OK) {
            out = r->items;
            *n = r->n;
        } else {
            *err = r->err;
        }
    } else {
        memset(err, 0, sizeof *err);
        err->code = OO_SPOOL_MISUSE;
        snprintf(err->message, sizeof err->message, "ledger: no reservation was asked for");
    }
    pthread_mutex_unlock(&k->mu);
    return out;
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
