/* The delivery scheduler (see sched.h). Sections: jobs and lists, results,
 * refCode order, the in-flight limit, settling an attempt, the next job,
 * removing and dropping, life cycle. */
#define _GNU_SOURCE
#include "sched.h"
#include "amend.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OO_RESULT_BODY_MAX 65536
#define OO_SCHED_FOREVER 1e9

void oo_sched_defaults(oo_sched_cfg *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->concurrency = 8;
    cfg->on_stop = OO_STOP_DRAIN;
    cfg->auth_pause = 300;
    cfg->max_results = 100000;
}

/* ------------------------------------------------------------------ */
/* Jobs and lists                                                      */

oo_job *oo_job_new(const oo_job_spec *sp) {
    size_t blen = sp->body ? sp->body_len : 0, rlen = sp->ref ? sp->ref_len : 0;
    size_t ulen = sp->url ? sp->url_len + 1 : 0, xlen = sp->blob ? sp->blob_len : 0;
    oo_job *j = (oo_job *)malloc(sizeof(oo_job) + blen + rlen + 1 + ulen + xlen);
    char *p;
    if (!j) return NULL;
    memset(j, 0, sizeof *j);
    j->id = sp->id;
    j->store_id = sp->store_id;
    j->channel = sp->channel;
    j->method = sp->method;
    j->after_ok = sp->after_ok;
    j->after_ref = sp->after_ref || sp->after_ok;
    j->attempts = sp->attempts;
    j->created = sp->created > 0 ? sp->created : oo_wall_now();
    if (blen) memcpy(j->data, sp->body, blen);
    j->data[blen] = '\0';
    j->body_len = blen;
    j->ref = p = j->data + blen + 1;
    if (rlen) memcpy(p, sp->ref, rlen);
    p[rlen] = '\0';
    j->ref_len = rlen;
    p += rlen + 1;
    if (ulen) {
        j->url = p;
        memcpy(p, sp->url, ulen - 1);
        p[ulen - 1] = '\0';
        j->url_len = ulen - 1;
        p += ulen;
    }
    if (sp->blob) {
        j->blob = p;
        if (xlen) memcpy(p, sp->blob, xlen);
        j->blob_len = xlen;
    }
    return j;
}

static void list_push(oo_job **head, oo_job **tail, oo_job *j) {
    j->next = NULL;
    if (*tail) (*tail)->next = j;
    else *head = j;
    *tail = j;
}

static void list_push_head(oo_job **head, oo_job **tail, oo_job *j) {
    j->next = *head;
    *head = j;
    if (!*tail) *tail = j;
}

static oo_job *list_pop(oo_job **head, oo_job **tail) {
    oo_job *j = *head;
    if (!j) return NULL;
    *head = j->next;
    if (!*head) *tail = NULL;
    j->next = NULL;
    return j;
}

/* Unlinks j, found after prev (NULL: j is the head). */
static void list_unlink(oo_job **head, oo_job **tail, oo_job *prev, oo_job *j) {
    if (prev) prev->next = j->next;
    else *head = j->next;
    if (*tail == j) *tail = prev;
    j->next = NULL;
}

static void fly_push(oo_sched *s, oo_job *j) {
    j->prev = NULL;
    j->next = s->fly_head;
    if (s->fly_head) s->fly_head->prev = j;
    s->fly_head = j;
}

static void fly_unlink(oo_sched *s, oo_job *j) {
    if (j->prev) j->prev->next = j->next;
    else if (s->fly_head == j) s->fly_head = j->next;
    if (j->next) j->next->prev = j->prev;
    j->next = j->prev = NULL;
}

static int due_before(const oo_job *a, const oo_job *b) {
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_swap(oo_sched *s, size_t a, size_t b) {
    oo_job *t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
}

static void heap_up(oo_sched *s, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!due_before(s->heap[i], s->heap[parent])) break;
        heap_swap(s, i, parent);
        i = parent;
    }
}

static void heap_down(oo_sched *s, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nheap && due_before(s->heap[l], s->heap[m])) m = l;
        if (r < s->nheap && due_before(s->heap[r], s->heap[m])) m = r;
        if (m == i) return;
        heap_swap(s, i, m);
        i = m;
    }
}

/* Room for one more retry (under mu); 0 when out of memory. */
static int heap_reserve(oo_sched *s) {
    size_t cap;
    oo_job **h;
    if (s->nheap < s->capheap) return 1;
    cap = s->capheap ? s->capheap * 2 : 64;
    h = (oo_job **)realloc(s->heap, cap * sizeof *h);
    if (!h) return 0;
    s->heap = h;
    s->capheap = cap;
    return 1;
}

/* After heap_reserve: cannot fail. */
static void heap_push(oo_sched *s, oo_job *j) {
    s->heap[s->nheap] = j;
    heap_up(s, s->nheap++);
}

static oo_job *heap_remove(oo_sched *s, size_t i) {
    oo_job *j = s->heap[i];
    s->heap[i] = s->heap[--s->nheap];
    if (i < s->nheap) {
        heap_down(s, i);
        heap_up(s, i);
    }
    return j;
}

size_t oo_sched_pending_locked(const oo_sched *s) {
    return s->nin + s->nready + s->npark + s->nheap + s->in_flight;
}

double oo_sched_now(const oo_sched *s) {
    double ahead = __atomic_load_n(&s->ahead_ns, __ATOMIC_RELAXED) / 1e9;
    return oo_mono_now() + ahead;
}

void oo_sched_advance(oo_sched *s, double seconds) {
    if (seconds > 0 && seconds < 1e6)
        __atomic_add_fetch(&s->ahead_ns, (long long)(seconds * 1e9), __ATOMIC_RELAXED);
}

void oo_sched_wake(oo_sched *s) {
    if (s->wake && __atomic_load_n(&s->asleep, __ATOMIC_SEQ_CST)) s->wake(s->wake_ud);
}

void oo_sched_add(oo_sched *s, oo_job *j) { (void)oo_sched_add_all(s, &j, 1, 0); }

int oo_sched_add_bounded(oo_sched *s, oo_job *j, size_t max_pending) {
    return oo_sched_add_all(s, &j, 1, max_pending);
}

int oo_sched_add_all(oo_sched *s, oo_job **jobs, size_t n, size_t max_pending) {
    int room;
    size_t i;
    pthread_mutex_lock(&s->mu);
    if (max_pending && oo_sched_pending_locked(s) + n > max_pending) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    for (i = 0; i < n; i++) {
        jobs[i]->seq = ++s->next_seq;
        list_push(&s->in_head, &s->in_tail, jobs[i]);
        s->nin++;
        if (jobs[i]->method == OO_POST) s->metrics.queued++;
    }
    /* can the driver start it now? when every place up to the limit is
     * taken it would only wake to wait again: a transfer that finishes
     * wakes it anyway (a pusher far ahead of delivery costs no syscall) */
    room = (int)(s->in_flight + s->nready + s->nin) <= s->limit_now;
    pthread_mutex_unlock(&s->mu);
    /* Dekker-style: the driver sets `asleep` before it looks at the inbox
     * one last time (oo_sched_wait); we look at `asleep` after adding. One
     * of us sees the other, so a job that can start never waits for a
     * timeout; a busy driver sees it on its next round, without a syscall. */
    if (room) oo_sched_wake(s);
    return 1;
}

void oo_sched_take(oo_sched *s, oo_job *j) {
    pthread_mutex_lock(&s->mu);
    j->seq = ++s->next_seq;
    list_push(&s->ready_head, &s->ready_tail, j);
    s->nready++;
    pthread_mutex_unlock(&s->mu);
}

size_t oo_sched_pending(oo_sched *s) {
    size_t n;
    pthread_mutex_lock(&s->mu);
    n = oo_sched_pending_locked(s);
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static char *dupn(const char *p, size_t n) {
    char *d = (char *)malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

static void result_free(oo_result *r) {
    free(r->ref);
    free(r->blob);
    free(r->body);
    free(r);
}

void oo_results_free(oo_result *r) {
    while (r) {
        oo_result *n = r->next;
        result_free(r);
        r = n;
    }
}

/* Appends a result (under mu). Nobody collecting must not mean unbounded
 * memory: past max_results the oldest go, counted in results_dropped (the
 * jobs themselves were settled all the same). */
static void result_add(oo_sched *s, oo_result *r) {
    while (s->out_head && s->nout >= s->cfg.max_results) {
        oo_result *old = s->out_head;
        s->out_head = old->next;
        if (!s->out_head) s->out_tail = NULL;
        s->nout--;
        s->results_dropped++;
        result_free(old);
    }
    r->next = NULL;
    if (s->out_tail) s->out_tail->next = r;
    else s->out_head = r;
    s->out_tail = r;
    s->nout++;
    pthread_cond_broadcast(&s->cv);
}

static void result_of_job(oo_result *r, const oo_job *j) {
    r->id = j->id;
    r->store_id = j->store_id;
    r->attempts = j->attempts;
    r->channel = j->channel;
    r->method = j->method;
    r->ref = dupn(j->ref, j->ref_len);
    if (j->blob) {
        r->blob = dupn(j->blob, j->blob_len);
        r->blob_len = r->blob ? j->blob_len : 0;
    }
}

/* A result for job j (NULL for an event); body: the response (may be NULL). */
static oo_result *result_new(oo_res_kind what, const oo_job *j, const oo_outcome *o,
                             const char *body, size_t blen) {
    oo_result *r = (oo_result *)calloc(1, sizeof *r);
    if (!r) return NULL;
    r->what = what;
    r->until = -1;
    if (o) r->o = *o;
    if (j) result_of_job(r, j);
    if (body && blen) {
        size_t n = blen < OO_RESULT_BODY_MAX ? blen : OO_RESULT_BODY_MAX;
        r->body = dupn(body, n);
        r->body_len = r->body ? n : 0;
    }
    return r;
}

static void event(oo_sched *s, oo_res_kind what, const char *why, double until,
                  const oo_outcome *o) {
    oo_result *r = result_new(what, NULL, o, NULL, 0);
    if (!r) return;
    r->why = why;
    r->until = until;
    pthread_mutex_lock(&s->mu);
    result_add(s, r);
    pthread_mutex_unlock(&s->mu);
}

oo_result *oo_sched_collect(oo_sched *s) {
    oo_result *r;
    pthread_mutex_lock(&s->mu);
    r = s->out_head;
    s->out_head = s->out_tail = NULL;
    s->nout = 0;
    pthread_mutex_unlock(&s->mu);
    return r;
}

static const char *chan_name(const oo_sched *s, const oo_job *j) {
    return j->channel >= 0 && j->channel < s->nchan ? s->chans[j->channel].name : NULL;
}

void oo_sched_report(oo_sched *s, oo_res_kind what, const oo_job *j, const oo_outcome *o,
                     const char *why) {
    oo_result *r = result_new(what, j, o, NULL, 0);
    if (r) r->why = why;
    pthread_mutex_lock(&s->mu);
    if (what != OO_RES_SENT && j->method == OO_POST)
        oo_metrics_failed(&s->metrics, o, what == OO_RES_DEAD, chan_name(s, j));
    if (r) result_add(s, r);
    pthread_mutex_unlock(&s->mu);
}

void oo_sched_report_amend_dead(oo_sched *s, const oo_job *j, const oo_outcome *o,
                                const char *message) {
    oo_outcome d = *o;
    d.retryable = 0;
    if (message) snprintf(d.message, sizeof d.message, "%s", message);
    oo_sched_report(s, OO_RES_DEAD, j, &d, "amend");
}

/* ------------------------------------------------------------------ */
/* RefCode order: a job marked after_ref (a cancel) does not start while  */
/* an earlier job of its refCode is queued, retrying or in flight here.   */

static int same_ref(const oo_job *a, const oo_job *b) {
    return a->ref_len == b->ref_len && memcmp(a->ref, b->ref, a->ref_len) == 0;
}

static int list_has_earlier(const oo_job *l, const oo_job *j) {
    for (; l; l = l->next)
        if (l->seq < j->seq && same_ref(l, j)) return 1;
    return 0;
}

/* Is an earlier job of j's refCode still here (under mu)? */
static int earlier_alive(const oo_sched *s, const oo_job *j) {
    size_t i;
    if (list_has_earlier(s->in_head, j) || list_has_earlier(s->ready_head, j) ||
        list_has_earlier(s->fly_head, j) || list_has_earlier(s->park_head, j))
        return 1;
    for (i = 0; i < s->nheap; i++)
        if (s->heap[i]->seq < j->seq && same_ref(s->heap[i], j)) return 1;
    return 0;
}

/* A job of `gone`'s refCode left (or moved): parked jobs of that refCode
 * with nothing earlier left go back to the head of the ready list, in
 * their order (under mu). */
static void unpark_for(oo_sched *s, const oo_job *gone) {
    oo_job *prev = NULL, *p = s->park_head, *back_head = NULL, *back_tail = NULL;
    size_t n = 0;
    while (p) {
        oo_job *next = p->next;
        if (same_ref(p, gone) && !earlier_alive(s, p)) {
            list_unlink(&s->park_head, &s->park_tail, prev, p);
            list_push(&back_head, &back_tail, p);
            n++;
        } else {
            prev = p;
        }
        p = next;
    }
    if (!back_head) return;
    back_tail->next = s->ready_head;
    s->ready_head = back_head;
    if (!s->ready_tail) s->ready_tail = back_tail;
    s->npark -= n;
    s->nready += n;
}

/* ------------------------------------------------------------------ */
/* The in-flight limit (limiter.h)                                     */

/* What a finished request tells the limiter about the load. */
static oo_lim_signal load_signal(const oo_outcome *o, const oo_decision *d) {
    if (d->action == OO_ACK) return OO_LIM_OK;
    if (o->throttled) return OO_LIM_THROTTLED;
    if (o->retryable &&
        ((o->status >= 500 && o->status <= 599) || (o->kind && strcmp(o->kind, "timeout") == 0)))
        return OO_LIM_OVERLOAD;
    return OO_LIM_NEUTRAL;
}

static void limit_update(oo_sched *s, const oo_job *j, int new_conn, const oo_outcome *o,
                         const oo_decision *d) {
    int before = s->lim.limit;
    oo_limiter_done(&s->lim, j->started_at, j->load, oo_sched_now(s), new_conn, load_signal(o, d),
                    (int)s->in_flight);
    if (s->lim.limit != before) { /* published for stats() and adders */
        pthread_mutex_lock(&s->mu);
        s->limit_now = s->lim.limit;
        pthread_mutex_unlock(&s->mu);
    }
}

/* ------------------------------------------------------------------ */
/* Settling an attempt                                                 */

/* Where a settled job goes. */
typedef enum { TO_GONE = 0, TO_HEAP, TO_READY_HEAD } oo_dest;

/* The job leaves the in-flight count for `dest` (under one lock with the
 * refCode check: nobody sees it in no count); GONE jobs are freed. */
static void finish(oo_sched *s, oo_job *j, oo_dest dest) {
    pthread_mutex_lock(&s->mu);
    fly_unlink(s, j);
    s->in_flight--;
    if (dest == TO_HEAP) heap_push(s, j);
    else if (dest == TO_READY_HEAD) {
        list_push_head(&s->ready_head, &s->ready_tail, j);
        s->nready++;
    }
    if (s->npark) unpark_for(s, j);
    if (oo_sched_pending_locked(s) == 0) {
        s->settles++;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (dest == TO_GONE) free(j);
}

static void settle_sent(oo_sched *s, oo_job *j, const oo_outcome *o, const char *body,
                        size_t blen) {
    oo_result *r = NULL;
    if (s->hooks && s->hooks->record) s->hooks->record(s, j, OO_RES_SENT, o);
    if (j->store_id && s->hooks && s->hooks->ack) s->hooks->ack(s, j, o);
    if (s->cfg.report_all || o->warned) {
        r = result_new(OO_RES_SENT, j, o, body, blen);
        if (r) r->latency = oo_sched_now(s) - j->started_at;
    }
    pthread_mutex_lock(&s->mu);
    if (j->method == OO_POST) oo_metrics_sent(&s->metrics, chan_name(s, j));
    if (r) result_add(s, r);
    pthread_mutex_unlock(&s->mu);
    if (s->probing) {
        s->probing = 0;
        pthread_mutex_lock(&s->mu);
        s->stopped = 0;
        pthread_mutex_unlock(&s->mu);
        event(s, OO_RES_RESUMED, "credentials", 0, NULL);
    }
}

static void fail_dependents(oo_sched *s, const oo_job *del, const oo_outcome *o, const char *body,
                            size_t blen);

/* Given up (DEAD), or not sent after a stop (STOPPED). */
static void settle_dead(oo_sched *s, oo_job *j, const oo_outcome *o, const char *why,
                        oo_res_kind what, const char *body, size_t blen) {
    oo_result *r;
    if (what == OO_RES_DEAD) {
        if (s->hooks && s->hooks->record) s->hooks->record(s, j, OO_RES_DEAD, o);
        if (j->store_id && s->hooks && s->hooks->dead) s->hooks->dead(s, j, o, why);
    }
    r = result_new(what, j, o, body, blen);
    if (r) r->why = why;
    pthread_mutex_lock(&s->mu);
    if (j->method == OO_POST)
        oo_metrics_failed(&s->metrics, o, what == OO_RES_DEAD, chan_name(s, j));
    if (r) result_add(s, r);
    pthread_mutex_unlock(&s->mu);
    if (what == OO_RES_DEAD && j->method == OO_DELETE) fail_dependents(s, j, o, body, blen);
}

/* Which jobs take_matching moves: those of key's refCode, of one method
 * (or any: -1), or only the after_ok ones queued after key (an amend's). */
typedef struct job_match {
    const oo_job *key;
    int method;
    int dependents;
} job_match;

static int job_matches(const oo_job *p, const job_match *m) {
    if (!same_ref(p, m->key)) return 0;
    if (m->dependents) return p->after_ok && p->seq > m->key->seq;
    return m->method < 0 || p->method == m->method;
}

/* Moves the matching jobs of one list onto *out (under mu). */
static size_t take_from(oo_job **head, oo_job **tail, const job_match *m, oo_job **out) {
    oo_job *prev = NULL, *p = *head;
    size_t n = 0;
    while (p) {
        oo_job *next = p->next;
        if (job_matches(p, m)) {
            list_unlink(head, tail, prev, p);
            p->next = *out;
            *out = p;
            n++;
        } else {
            prev = p;
        }
        p = next;
    }
    return n;
}

/* The same from the inbox, the ready list and the parked jobs (under mu). */
static void take_matching(oo_sched *s, const job_match *m, oo_job **out) {
    s->nin -= take_from(&s->in_head, &s->in_tail, m, out);
    s->nready -= take_from(&s->ready_head, &s->ready_tail, m, out);
    s->npark -= take_from(&s->park_head, &s->park_tail, m, out);
}

/* The DELETE of an amend died: the new versions waiting behind it end dead
 * too, never sent, with the DELETE's outcome (why "amend"). Such a job
 * cannot have started (it waits behind the DELETE): it is in the inbox,
 * the ready list or parked. */
static void fail_dependents(oo_sched *s, const oo_job *del, const oo_outcome *o, const char *body,
                            size_t blen) {
    oo_job *out = NULL;
    oo_outcome d = *o;
    char msg[sizeof d.message];
    job_match m = {del, -1, 1};
    pthread_mutex_lock(&s->mu);
    take_matching(s, &m, &out);
    pthread_mutex_unlock(&s->mu);
    if (!out) return;
    snprintf(msg, sizeof msg, OO_AMEND_FAILED "%.*s", (int)sizeof msg - 64, o->message);
    memcpy(d.message, msg, sizeof d.message);
    d.retryable = 0;
    while (out) {
        oo_job *j = out;
        out = j->next;
        pthread_mutex_lock(&s->mu); /* counted in flight while being settled */
        s->in_flight++;
        fly_push(s, j);
        pthread_mutex_unlock(&s->mu);
        settle_dead(s, j, &d, "amend", OO_RES_DEAD, body, blen);
        finish(s, j, TO_GONE);
    }
}

/* A 429 holds back every new request for a while. */
static void pause_for(oo_sched *s, double seconds, const oo_outcome *o) {
    double now = oo_sched_now(s), until = now + seconds;
    int was_paused;
    pthread_mutex_lock(&s->mu);
    was_paused = s->pause_until > now;
    if (until > s->pause_until) s->pause_until = until;
    pthread_mutex_unlock(&s->mu);
    if (!was_paused) event(s, OO_RES_PAUSED, "throttled", seconds, o);
}

static oo_dest settle_retry(oo_sched *s, oo_job *j, const oo_decision *d, const oo_outcome *o) {
    int room;
    if (d->pause > 0) pause_for(s, d->pause, o);
    pthread_mutex_lock(&s->mu);
    if (s->cfg.report_retries) {
        oo_result *r = result_new(OO_RES_RETRY, j, o, NULL, 0);
        if (r) {
            r->until = d->delay;
            result_add(s, r);
        }
    }
    if (j->method == OO_POST) s->metrics.retried++;
    pthread_mutex_unlock(&s->mu);
    if (j->store_id && s->hooks && s->hooks->retry &&
        s->hooks->retry(s, j, oo_wall_now() + d->delay, o))
        return TO_GONE;
    j->due = oo_sched_now(s) + d->delay;
    pthread_mutex_lock(&s->mu);
    room = heap_reserve(s);
    pthread_mutex_unlock(&s->mu);
    if (room) return TO_HEAP;
    settle_dead(s, j, o, "memory", OO_RES_DEAD, NULL, 0); /* no memory to keep it: visibly */
    return TO_GONE;
}

static oo_dest settle_stop(oo_sched *s, oo_job *j, const oo_outcome *o, const char *body,
                           size_t blen) {
    int first;
    pthread_mutex_lock(&s->mu);
    first = !s->stopped;
    s->stopped = 1;
    pthread_mutex_unlock(&s->mu);
    s->probing = 0;
    if (s->cfg.on_stop == OO_STOP_DRAIN) {
        settle_dead(s, j, o, "credentials", OO_RES_STOPPED, body, blen);
        return TO_GONE;
    }
    /* PAUSE: the job waits with the others until the credentials work */
    s->probe_at = oo_sched_now(s) + s->cfg.auth_pause;
    if (first) event(s, OO_RES_PAUSED, "credentials", s->cfg.auth_pause, o);
    if (j->store_id && s->hooks && s->hooks->release) {
        s->hooks->release(s, j);
        return TO_GONE;
    }
    return TO_READY_HEAD; /* first in line: it probes next time */
}

/* Counts the attempt (metrics), which is a request whatever its method. */
static void count_attempt(oo_sched *s, const oo_job *j, const oo_outcome *o) {
    if (s->cfg.no_metrics) return;
    pthread_mutex_lock(&s->mu);
    oo_metrics_attempt(&s->metrics, oo_sched_now(s) - j->started_at, j->body_len);
    if (o->throttled) s->metrics.throttled++;
    pthread_mutex_unlock(&s->mu);
}

int oo_sched_settle(oo_sched *s, oo_job *j, const oo_outcome *o, const oo_reply *rp,
                    const char **why) {
    oo_decision d;
    oo_dest dest = TO_GONE;
    const char *body = rp && rp->body ? rp->body : NULL;
    size_t blen = body ? rp->body_len : 0;
    j->attempts++;
    j->driver = NULL;
    count_attempt(s, j, o);
    oo_policy_decide(&s->policy, o, j->attempts, oo_wall_now() - j->created,
                     s->jitter ? s->jitter(s) : oo_jitter(&s->rng), &d);
    limit_update(s, j, rp && rp->new_connection, o, &d);
    if (s->probing && d.action != OO_ACK && d.action != OO_STOP) {
        /* the probe told nothing about the credentials: another one later */
        s->probing = 0;
        s->probe_at = oo_sched_now(s) + s->cfg.auth_pause;
    }
    if (why) *why = d.why;
    switch (d.action) {
    case OO_ACK: settle_sent(s, j, o, body, blen); break;
    case OO_RETRY: dest = settle_retry(s, j, &d, o); break;
    case OO_DEAD: settle_dead(s, j, o, d.why, OO_RES_DEAD, body, blen); break;
    case OO_STOP: dest = settle_stop(s, j, o, body, blen); break;
    }
    finish(s, j, dest);
    return (int)d.action;
}

void oo_sched_classify(const oo_reply *r, oo_outcome *o) {
    if (r->status > 0) {
        oo_classify_response(r->status, r->retry_after, r->body ? r->body : "",
                             r->body ? r->body_len : 0, oo_wall_now(), o, NULL);
    } else {
        oo_classify_failure(r->kind, r->message, o);
        o->transport_code = r->code;
    }
}

int oo_sched_done(oo_sched *s, oo_job *j, const oo_reply *r) {
    oo_outcome o;
    oo_sched_classify(r, &o);
    return oo_sched_settle(s, j, &o, r, NULL);
}

/* ------------------------------------------------------------------ */
/* The next job                                                        */

/* Inbox and due retries into the ready list (under mu). */
static void intake(oo_sched *s, double now) {
    if (s->in_head) {
        if (s->ready_tail) s->ready_tail->next = s->in_head;
        else s->ready_head = s->in_head;
        s->ready_tail = s->in_tail;
        s->nready += s->nin;
        s->in_head = s->in_tail = NULL;
        s->nin = 0;
    }
    while (s->nheap && s->heap[0]->due <= now) {
        oo_job *j = heap_remove(s, 0);
        list_push(&s->ready_head, &s->ready_tail, j);
        s->nready++;
    }
}

/* After a refused-credentials stop in DRAIN mode nothing else is sent:
 * every job waiting ends as "stopped". */
static void drain_stopped(oo_sched *s) {
    oo_outcome why;
    oo_classify_failure("network", "not sent: the credentials were refused earlier in this run",
                        &why);
    why.kind = "auth";
    why.retryable = 0;
    why.stop = 1;
    for (;;) {
        oo_job *j;
        pthread_mutex_lock(&s->mu);
        intake(s, OO_SCHED_FOREVER * 1e6);
        j = list_pop(&s->ready_head, &s->ready_tail);
        if (j) s->nready--;
        else if ((j = list_pop(&s->park_head, &s->park_tail)) != NULL) s->npark--;
        if (j) { /* counted in flight while being settled */
            s->in_flight++;
            fly_push(s, j);
        }
        pthread_mutex_unlock(&s->mu);
        if (!j) return;
        settle_dead(s, j, &why, "credentials", OO_RES_STOPPED, NULL, 0);
        finish(s, j, TO_GONE);
    }
}

static int feed_room(oo_sched *s) {
    int room;
    pthread_mutex_lock(&s->mu);
    room = s->lim.limit - (int)s->in_flight - (int)s->nready;
    pthread_mutex_unlock(&s->mu);
    return room;
}

/* Asks the store for jobs when it has new ones or a look is due. */
static void maybe_feed(oo_sched *s, double now) {
    int hint;
    if (!s->hooks || !s->hooks->feed || s->stopped || now < s->pause_until) return;
    pthread_mutex_lock(&s->mu);
    hint = s->feed_hint;
    s->feed_hint = 0;
    pthread_mutex_unlock(&s->mu);
    if (hint || now >= s->feed_at) {
        int room = feed_room(s);
        if (room > 0) s->feed_at = s->hooks->feed(s, room, now);
        else if (hint) s->feed_at = now; /* no room now: as soon as a slot frees up */
    }
}

void oo_sched_prepare(oo_sched *s, double now) {
    int resumed = 0, drain;
    pthread_mutex_lock(&s->mu);
    intake(s, now);
    drain = s->stopped && s->cfg.on_stop == OO_STOP_DRAIN;
    if (s->pause_until > 0 && now >= s->pause_until) {
        s->pause_until = 0;
        resumed = 1;
    }
    pthread_mutex_unlock(&s->mu);
    if (resumed) event(s, OO_RES_RESUMED, "throttled", 0, NULL);
    if (drain) drain_stopped(s);
    maybe_feed(s, now);
}

/* May a ready job start now (under mu)? */
static int may_start(const oo_sched *s, double now) {
    return s->nready > 0 && (int)s->in_flight < s->lim.limit && now >= s->pause_until &&
           !(s->stopped && (s->probing || now < s->probe_at));
}

oo_job *oo_sched_next(oo_sched *s, double now) {
    oo_sched_prepare(s, now);
    return oo_sched_pick(s, now);
}

oo_job *oo_sched_pick(oo_sched *s, double now) {
    oo_job *j = NULL;
    pthread_mutex_lock(&s->mu);
    while (may_start(s, now)) {
        j = list_pop(&s->ready_head, &s->ready_tail);
        s->nready--;
        if (j->after_ref && earlier_alive(s, j)) { /* behind its refCode: parked */
            list_push(&s->park_head, &s->park_tail, j);
            s->npark++;
            j = NULL;
            continue;
        }
        s->in_flight++; /* with the pop: never in no count */
        fly_push(s, j);
        j->started = 1;
        j->started_at = now;
        j->load = (int)s->in_flight;
        if (s->stopped) s->probing = 1; /* this one job tries the credentials */
        break;
    }
    pthread_mutex_unlock(&s->mu);
    return j;
}

/* When the earliest job waiting may start (under mu); OO_SCHED_FOREVER
 * when only a finishing request (the limit, a probe) or an add can help. */
static double start_at(const oo_sched *s, double now) {
    double at = OO_SCHED_FOREVER;
    if (s->nready) at = now;
    else if (s->nheap) at = s->heap[0]->due;
    if (at >= OO_SCHED_FOREVER || (int)s->in_flight >= s->lim.limit) return OO_SCHED_FOREVER;
    if (at < s->pause_until) at = s->pause_until;
    if (s->stopped) {
        if (s->probing) return OO_SCHED_FOREVER;
        if (at < s->probe_at) at = s->probe_at;
    }
    return at;
}

double oo_sched_wait(oo_sched *s, double now) {
    double w;
    int room, hint;
    pthread_mutex_lock(&s->mu);
    w = s->nin ? 0 : start_at(s, now) - now;
    room = s->lim.limit - (int)s->in_flight - (int)s->nready;
    hint = s->feed_hint;
    pthread_mutex_unlock(&s->mu);
    if (s->hooks && s->hooks->feed && !s->stopped && room > 0) {
        if (hint) w = 0;
        /* a due look at the store matters only when there is room for what it brings */
        if (s->feed_at - now < w) w = s->feed_at - now;
    }
    return w > 0 ? w : 0;
}

void oo_sched_hint_feed(oo_sched *s) {
    int wake;
    pthread_mutex_lock(&s->mu);
    /* one wake-up per hint the driver has not taken yet, and only when it
     * has room for what the store brings (else a finishing transfer wakes
     * it and it finds the hint then) */
    wake = !s->feed_hint && (int)(s->in_flight + s->nready) < s->limit_now;
    s->feed_hint = 1;
    pthread_mutex_unlock(&s->mu);
    if (wake) oo_sched_wake(s);
}

void oo_sched_feed_by(oo_sched *s, double at) {
    if (at < s->feed_at) s->feed_at = at;
}

void oo_sched_resume(oo_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->stopped = 0;
    s->pause_until = 0;
    s->probe_at = 0;
    pthread_mutex_unlock(&s->mu);
    oo_sched_wake(s);
}

void oo_sched_hurry(oo_sched *s) {
    size_t i;
    pthread_mutex_lock(&s->mu);
    for (i = 0; i < s->nheap; i++) s->heap[i]->due = 0; /* all equal: still a heap */
    if (s->pause_until > 0) s->pause_until = oo_sched_now(s);
    pthread_mutex_unlock(&s->mu);
    oo_sched_wake(s);
}

/* ------------------------------------------------------------------ */
/* Removing and dropping                                               */

oo_job *oo_sched_remove_ref(oo_sched *s, const char *ref, size_t len, int method, int *flying) {
    oo_job key, *out = NULL, *p;
    size_t i, n;
    job_match m;
    memset(&key, 0, sizeof key);
    key.ref = (char *)ref;
    key.ref_len = len;
    m.key = &key;
    m.method = method;
    m.dependents = 0;
    pthread_mutex_lock(&s->mu);
    take_matching(s, &m, &out);
    for (i = s->nheap; i-- > 0;) {
        if (job_matches(s->heap[i], &m)) {
            oo_job *j = heap_remove(s, i);
            j->next = out;
            out = j;
            i = s->nheap; /* the heap moved: look again from the end */
        }
    }
    for (n = 0, p = out; p; p = p->next) n++;
    s->removed += (long long)n;
    *flying = 0;
    for (p = s->fly_head; p; p = p->next)
        if (same_ref(p, &key)) *flying = 1;
    if (out && s->npark) unpark_for(s, &key);
    if (out && oo_sched_pending_locked(s) == 0) {
        s->settles++;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return out;
}

static void drop_one(oo_sched *s, oo_job *j, void (*fn)(void *ud, oo_job *j), void *ud) {
    if (j->store_id && s->hooks && s->hooks->release) {
        s->hooks->release(s, j);
        free(j);
    } else if (fn) {
        fn(ud, j); /* takes the job */
    } else {
        free(j);
    }
}

void oo_sched_drop_flying(oo_sched *s, oo_job *j, void (*fn)(void *ud, oo_job *j), void *ud) {
    pthread_mutex_lock(&s->mu);
    fly_unlink(s, j);
    s->in_flight--;
    pthread_mutex_unlock(&s->mu);
    j->driver = NULL;
    drop_one(s, j, fn, ud);
}

void oo_sched_drop_all(oo_sched *s, void (*fn)(void *ud, oo_job *j), void *ud) {
    for (;;) {
        oo_job *j;
        pthread_mutex_lock(&s->mu);
        intake(s, OO_SCHED_FOREVER * 1e6);
        j = list_pop(&s->ready_head, &s->ready_tail);
        if (j) s->nready--;
        else if ((j = list_pop(&s->park_head, &s->park_tail)) != NULL) s->npark--;
        pthread_mutex_unlock(&s->mu);
        if (!j) break;
        drop_one(s, j, fn, ud);
    }
    pthread_mutex_lock(&s->mu);
    s->settles++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */

int oo_sched_init(oo_sched *s, const oo_sched_cfg *cfg, const oo_policy *p, char *url,
                  oo_channel *chans, int nchan) {
    int i;
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->url = url;
    s->chans = chans;
    s->nchan = nchan;
    s->cfg = *cfg;
    if (s->cfg.max_results == 0) s->cfg.max_results = 100000;
    if (s->cfg.concurrency < 1) s->cfg.concurrency = 1;
    s->policy = *p;
    oo_metrics_init(&s->metrics);
    for (i = 0; i < nchan; i++) oo_metrics_secret(&s->metrics, chans[i].token); /* never a label */
    oo_limiter_init(&s->lim, s->cfg.concurrency, cfg->adaptive, cfg->initial_limit);
    s->limit_now = s->lim.limit;
    s->rng = oo_jitter_seed(s);
    return 0;
}

static void free_list(oo_job *j) {
    while (j) {
        oo_job *n = j->next;
        free(j);
        j = n;
    }
}

void oo_channels_free(oo_channel *c, int n) {
    int i;
    if (!c) return;
    for (i = 0; i < n; i++) {
        free(c[i].name);
        if (c[i].token) {
            memset(c[i].token, 0, strlen(c[i].token));
            free(c[i].token);
        }
    }
    free(c);
}

void oo_sched_free(oo_sched *s) {
    size_t i;
    free_list(s->in_head);
    free_list(s->ready_head);
    free_list(s->park_head);
    free_list(s->fly_head); /* the driver aborted them first */
    for (i = 0; i < s->nheap; i++) free(s->heap[i]);
    free(s->heap);
    oo_results_free(s->out_head);
    oo_channels_free(s->chans, s->nchan);
    free(s->url);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    memset(s, 0, sizeof *s);
}
