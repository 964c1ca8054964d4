/* The libcurl delivery engine (see engine.h). Sections: jobs and lists,
 * results, the in-flight limit, settling a finished request, one turn. */
#define _GNU_SOURCE
#include "engine.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OO_RESULT_BODY_MAX 65536

/* ------------------------------------------------------------------ */
/* Jobs and lists                                                      */

oo_job *oo_job_new(long long id, const char *body, size_t blen, const char *ref, size_t rlen, int channel,
                   double created_wall) {
    oo_job *j = (oo_job *)malloc(sizeof(oo_job) + blen + rlen + 1);
    if (!j) return NULL;
    memset(j, 0, sizeof *j);
    j->id = id;
    j->channel = channel;
    j->created = created_wall;
    memcpy(j->data, body, blen);
    j->data[blen] = '\0';
    j->body_len = blen;
    j->ref = j->data + blen + 1;
    if (ref && rlen) memcpy(j->ref, ref, rlen);
    j->ref[rlen] = '\0';
    j->ref_len = rlen;
    return j;
}

static void list_push(oo_job **head, oo_job **tail, oo_job *j) {
    j->next = NULL;
    if (*tail) (*tail)->next = j; else *head = j;
    *tail = j;
}

static oo_job *list_pop(oo_job **head, oo_job **tail) {
    oo_job *j = *head;
    if (!j) return NULL;
    *head = j->next;
    if (!*head) *tail = NULL;
    j->next = NULL;
    return j;
}

static int due_before(const oo_job *a, const oo_job *b) {
    return a->due < b->due || (a->due == b->due && a->id < b->id);
}

/* Retries: a binary heap by due time (ties in id order). Under mu. */
static int heap_push(oo_engine *e, oo_job *j) {
    size_t i;
    if (e->nheap == e->capheap) {
        size_t cap = e->capheap ? e->capheap * 2 : 64;
        oo_job **h = (oo_job **)realloc(e->heap, cap * sizeof *h);
        if (!h) return 0;
        e->heap = h;
        e->capheap = cap;
    }
    i = e->nheap++;
    e->heap[i] = j;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!due_before(e->heap[i], e->heap[parent])) break;
        oo_job *t = e->heap[i];
        e->heap[i] = e->heap[parent];
        e->heap[parent] = t;
        i = parent;
    }
    return 1;
}

static oo_job *heap_pop(oo_engine *e) {
    oo_job *top;
    size_t i = 0;
    if (e->nheap == 0) return NULL;
    top = e->heap[0];
    e->heap[0] = e->heap[--e->nheap];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        if (l < e->nheap && due_before(e->heap[l], e->heap[s])) s = l;
        if (r < e->nheap && due_before(e->heap[r], e->heap[s])) s = r;
        if (s == i) break;
        oo_job *t = e->heap[i];
        e->heap[i] = e->heap[s];
        e->heap[s] = t;
        i = s;
    }
    return top;
}

void oo_engine_add(oo_engine *e, oo_job *j) { (void)oo_engine_add_bounded(e, j, 0); }

int oo_engine_add_bounded(oo_engine *e, oo_job *j, size_t max_pending) {
    int room;
    pthread_mutex_lock(&e->mu);
    if (max_pending && e->nin + e->nready + e->nheap + e->in_flight >= max_pending) {
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    list_push(&e->in_head, &e->in_tail, j);
    e->nin++;
    e->metrics.queued++;
    /* can the driver start it now? when every place up to the limit is
     * taken it would only wake to wait again: a transfer that finishes
     * wakes it anyway (a pusher far ahead of delivery costs no syscall) */
    room = (int)(e->in_flight + e->nready + e->nin) <= e->limit_now;
    pthread_mutex_unlock(&e->mu);
    /* Dekker-style: the driver sets `asleep` before it looks at the inbox
     * one last time; we look at `asleep` after adding. One of us sees the
     * other, so a job that can start never waits for a poll timeout. A busy
     * driver sees the job on its next round: no syscall then. */
    if (room && __atomic_load_n(&e->pool.asleep, __ATOMIC_SEQ_CST)) oo_pool_wakeup(&e->pool);
    return 1;
}

void oo_engine_take(oo_engine *e, oo_job *j) {
    pthread_mutex_lock(&e->mu);
    list_push(&e->ready_head, &e->ready_tail, j);
    e->nready++;
    pthread_mutex_unlock(&e->mu);
}

size_t oo_engine_pending(oo_engine *e) {
    size_t n;
    pthread_mutex_lock(&e->mu);
    n = e->nin + e->nready + e->nheap + e->in_flight;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static char *dupn(const char *s, size_t n) {
    char *p = (char *)malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void result_free(oo_result *r) {
    free(r->ref);
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
 * orders themselves were settled all the same). */
static void result_add(oo_engine *e, oo_result *r) {
    while (e->out_head && e->nout >= e->cfg.max_results) {
        oo_result *old = e->out_head;
        e->out_head = old->next;
        if (!e->out_head) e->out_tail = NULL;
        e->nout--;
        e->results_dropped++;
        result_free(old);
    }
    r->next = NULL;
    if (e->out_tail) e->out_tail->next = r; else e->out_head = r;
    e->out_tail = r;
    e->nout++;
    pthread_cond_broadcast(&e->cv);
}

/* A result for job j (NULL for an event); body: the response (may be NULL). */
static oo_result *result_new(oo_res_kind what, const oo_job *j, const oo_outcome *o, const char *body,
                             size_t blen) {
    oo_result *r = (oo_result *)calloc(1, sizeof *r);
    if (!r) return NULL;
    r->what = what;
    r->until = -1;
    if (o) r->o = *o;
    if (j) {
        r->id = j->id;
        r->attempts = j->attempts;
        r->channel = j->channel;
        r->ref = dupn(j->ref, j->ref_len);
    }
    if (body && blen) {
        size_t n = blen < OO_RESULT_BODY_MAX ? blen : OO_RESULT_BODY_MAX;
        r->body = dupn(body, n);
        r->body_len = r->body ? n : 0;
    }
    return r;
}

static void event(oo_engine *e, oo_res_kind what, const char *why, double until, const oo_outcome *o) {
    oo_result *r = result_new(what, NULL, o, NULL, 0);
    if (!r) return;
    r->why = why;
    r->until = until;
    pthread_mutex_lock(&e->mu);
    result_add(e, r);
    pthread_mutex_unlock(&e->mu);
}

/* ------------------------------------------------------------------ */
/* The in-flight limit (limiter.h)                                     */

/* What a finished request tells the limiter about the load. */
static oo_lim_signal load_signal(const oo_outcome *o, const oo_decision *d) {
    if (d->action == OO_ACK) return OO_LIM_OK;
    if (o->status == 429) return OO_LIM_THROTTLED;
    if (o->retryable && ((o->status >= 500 && o->status <= 599) || (o->kind && strcmp(o->kind, "timeout") == 0)))
        return OO_LIM_OVERLOAD;
    return OO_LIM_NEUTRAL;
}

static void limit_update(oo_engine *e, const oo_slot *s, long connects, const oo_outcome *o,
                         const oo_decision *d) {
    int before = e->lim.limit;
    oo_limiter_done(&e->lim, s->started, s->load, oo_mono_now(), connects > 0, load_signal(o, d),
                    (int)e->in_flight);
    if (e->lim.limit != before) { /* published for stats() */
        pthread_mutex_lock(&e->mu);
        e->limit_now = e->lim.limit;
        pthread_mutex_unlock(&e->mu);
    }
}

/* ------------------------------------------------------------------ */
/* Settling a finished request                                         */

static void free_job(oo_job *j) { free(j); }

/* Counts the job out of in_flight (it was settled one way or another). */
static void settled(oo_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->in_flight--;
    if (e->nin + e->nready + e->nheap + e->in_flight == 0) {
        e->settles++;
        pthread_cond_broadcast(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

static void settle_sent(oo_engine *e, oo_job *j, const oo_outcome *o, const char *body, size_t blen,
                        oo_slot *s) {
    oo_result *r = NULL;
    if (j->spool_id && e->hooks && e->hooks->ack) e->hooks->ack(e, j);
    if (e->cfg.report_all || o->warned) {
        r = result_new(OO_RES_SENT, j, o, body, blen);
        if (r) r->latency = oo_mono_now() - s->started;
    }
    pthread_mutex_lock(&e->mu);
    oo_metrics_sent(&e->metrics, e->chans[j->channel].name);
    if (r) result_add(e, r);
    pthread_mutex_unlock(&e->mu);
    if (e->probing) {
        e->probing = 0;
        pthread_mutex_lock(&e->mu);
        e->stopped = 0;
        pthread_mutex_unlock(&e->mu);
        event(e, OO_RES_RESUMED, "credentials", 0, NULL);
    }
}

static void settle_dead(oo_engine *e, oo_job *j, const oo_outcome *o, const char *why, oo_res_kind what,
                        const char *body, size_t blen) {
    oo_result *r;
    if (j->spool_id && e->hooks && e->hooks->dead && what == OO_RES_DEAD) e->hooks->dead(e, j, o, why);
    r = result_new(what, j, o, body, blen);
    if (r) r->why = why;
    pthread_mutex_lock(&e->mu);
    oo_metrics_failed(&e->metrics, o, what == OO_RES_DEAD, e->chans[j->channel].name);
    if (r) result_add(e, r);
    pthread_mutex_unlock(&e->mu);
}

/* A 429 or a Retry-After holds back every new request for a while. */
static void pause_for(oo_engine *e, double seconds, const oo_outcome *o) {
    double until = oo_mono_now() + seconds;
    int was_paused;
    pthread_mutex_lock(&e->mu);
    was_paused = e->pause_until > oo_mono_now();
    if (until > e->pause_until) e->pause_until = until;
    pthread_mutex_unlock(&e->mu);
    if (!was_paused) event(e, OO_RES_PAUSED, "throttled", seconds, o);
}

static void settle_retry(oo_engine *e, oo_job *j, const oo_decision *d, const oo_outcome *o) {
    int ok;
    if (d->pause > 0) pause_for(e, d->pause, o);
    if (e->cfg.report_retries) {
        oo_result *r = result_new(OO_RES_RETRY, j, o, NULL, 0);
        if (r) {
            r->until = d->delay;
            pthread_mutex_lock(&e->mu);
            result_add(e, r);
            pthread_mutex_unlock(&e->mu);
        }
    }
    pthread_mutex_lock(&e->mu);
    e->metrics.retried++;
    pthread_mutex_unlock(&e->mu);
    if (j->spool_id && e->hooks && e->hooks->retry && e->hooks->retry(e, j, oo_wall_now() + d->delay, o)) {
        free_job(j);
        return;
    }
    j->due = oo_mono_now() + d->delay;
    pthread_mutex_lock(&e->mu);
    ok = heap_push(e, j);
    pthread_mutex_unlock(&e->mu);
    if (!ok) { /* out of memory for the retry list: give it up, visibly */
        settle_dead(e, j, o, "memory", OO_RES_DEAD, NULL, 0);
        free_job(j);
    }
}

/* Jobs that will not be sent now that the credentials were refused. */
static void stop_fail(oo_engine *e, oo_job *j, const oo_outcome *o) {
    settle_dead(e, j, o, "credentials", OO_RES_STOPPED, NULL, 0);
    free_job(j);
}

static void settle_stop(oo_engine *e, oo_job *j, const oo_outcome *o, const char *body, size_t blen) {
    int first;
    pthread_mutex_lock(&e->mu);
    first = !e->stopped;
    e->stopped = 1;
    pthread_mutex_unlock(&e->mu);
    e->probing = 0;
    if (e->cfg.on_stop == OO_STOP_DRAIN) {
        settle_dead(e, j, o, "credentials", OO_RES_STOPPED, body, blen);
        free_job(j);
        return;
    }
    /* PAUSE: the order waits with the others until the credentials work */
    e->probe_at = oo_mono_now() + e->cfg.auth_pause;
    if (first) event(e, OO_RES_PAUSED, "credentials", e->cfg.auth_pause, o);
    if (j->spool_id && e->hooks && e->hooks->release) {
        e->hooks->release(e, j);
        free_job(j);
        return;
    }
    pthread_mutex_lock(&e->mu);
    j->next = e->ready_head; /* first in line: it probes next time */
    e->ready_head = j;
    if (!e->ready_tail) e->ready_tail = j;
    e->nready++;
    pthread_mutex_unlock(&e->mu);
}

static void on_done(void *ud, oo_slot *s, CURLcode rc) {
    oo_engine *e = (oo_engine *)ud;
    oo_job *j = (oo_job *)s->job;
    oo_outcome o;
    oo_decision d;
    const char *body = "";
    size_t blen = 0;
    double latency = oo_mono_now() - s->started;
    long status = 0, connects = 0;
    j->attempts++;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(s->e, CURLINFO_RESPONSE_CODE, &status);
        if (s->x.body.len) {
            body = s->x.body.data;
            blen = s->x.body.len;
        }
        oo_classify_response((int)status, s->x.retry_after, body, blen, oo_wall_now(), &o, NULL);
    } else {
        char msg[CURL_ERROR_SIZE + 64];
        oo_http_failure_message(rc, &s->x, msg, sizeof msg);
        oo_classify_failure(oo_http_kind(rc), msg, &o);
        o.transport_code = (int)rc;
    }
    curl_easy_getinfo(s->e, CURLINFO_NUM_CONNECTS, &connects);
    if (!e->cfg.no_metrics) {
        pthread_mutex_lock(&e->mu);
        oo_metrics_attempt(&e->metrics, latency, j->body_len);
        if (o.status == 429) e->metrics.throttled++;
        pthread_mutex_unlock(&e->mu);
    }
    oo_policy_decide(&e->policy, &o, j->attempts, oo_wall_now() - j->created, oo_jitter(&e->rng), &d);
    limit_update(e, s, connects, &o, &d);
    if (e->probing && d.action != OO_ACK && d.action != OO_STOP) {
        /* the probe told nothing about the credentials: another one later */
        e->probing = 0;
        e->probe_at = oo_mono_now() + e->cfg.auth_pause;
    }
    switch (d.action) {
    case OO_ACK:
        settle_sent(e, j, &o, body, blen, s);
        free_job(j);
        break;
    case OO_RETRY:
        settle_retry(e, j, &d, &o);
        break;
    case OO_DEAD:
        settle_dead(e, j, &o, d.why, OO_RES_DEAD, body, blen);
        free_job(j);
        break;
    case OO_STOP:
        settle_stop(e, j, &o, body, blen);
        break;
    }
    settled(e);
}

/* ------------------------------------------------------------------ */
/* One turn                                                            */

/* Inbox and due retries into the ready list (under mu). */
static void intake(oo_engine *e, double now) {
    while (e->in_head) {
        oo_job *j = list_pop(&e->in_head, &e->in_tail);
        e->nin--;
        list_push(&e->ready_head, &e->ready_tail, j);
        e->nready++;
    }
    while (e->nheap && e->heap[0]->due <= now) {
        oo_job *j = heap_pop(e);
        list_push(&e->ready_head, &e->ready_tail, j);
        e->nready++;
    }
}

/* After a refused-credentials stop in DRAIN mode nothing else is sent:
 * every job waiting ends as "stopped". */
static void drain_stopped(oo_engine *e, const oo_outcome *why) {
    for (;;) {
        oo_job *j;
        pthread_mutex_lock(&e->mu);
        j = list_pop(&e->ready_head, &e->ready_tail);
        if (j) e->nready--;
        else if ((j = heap_pop(e)) != NULL) {}
        if (j) e->in_flight++; /* counted while being settled */
        pthread_mutex_unlock(&e->mu);
        if (!j) return;
        stop_fail(e, j, why);
        settled(e);
    }
}

/* Starts ready jobs while the limit, a pause or a stop allow. */
static void start_ready(oo_engine *e, double now) {
    for (;;) {
        oo_job *j;
        oo_slot *s;
        CURLcode rc;
        oo_channel *ch;
        pthread_mutex_lock(&e->mu);
        if (e->nready == 0 || (int)e->in_flight >= e->lim.limit || now < e->pause_until ||
            (e->stopped && (e->probing || now < e->probe_at))) {
            pthread_mutex_unlock(&e->mu);
            return;
        }
        j = list_pop(&e->ready_head, &e->ready_tail);
        e->nready--;
        e->in_flight++; /* with the pop: never in no count */
        pthread_mutex_unlock(&e->mu);
        if (e->stopped) e->probing = 1; /* this one job tries the credentials */
        j->started = 1;
        ch = &e->chans[j->channel >= 0 && j->channel < e->nchan ? j->channel : 0];
        s = oo_pool_start(&e->pool, j, e->url, ch->headers, j->data, j->body_len, &rc);
        if (s) s->load = (int)e->in_flight;
        if (!s) {
            /* cannot happen with valid options: a transport failure, retried */
            oo_outcome o;
            oo_decision d;
            oo_classify_failure("network", curl_easy_strerror(rc), &o);
            j->attempts++;
            oo_policy_decide(&e->policy, &o, j->attempts, oo_wall_now() - j->created, oo_jitter(&e->rng), &d);
            if (d.action == OO_RETRY) {
                settle_retry(e, j, &d, &o);
            } else {
                settle_dead(e, j, &o, d.why, OO_RES_DEAD, NULL, 0);
                free_job(j);
            }
            settled(e);
        }
    }
}

/* How long the turn may wait for transfers before something else is due. */
static double wait_for(oo_engine *e, double now, double max_wait) {
    double w = max_wait;
    pthread_mutex_lock(&e->mu);
    if (e->nin) w = 0;
    if (e->nheap && e->heap[0]->due - now < w) w = e->heap[0]->due - now;
    if (e->nready && (int)e->in_flight < e->lim.limit) {
        if (now < e->pause_until) {
            if (e->pause_until - now < w) w = e->pause_until - now;
        } else if (e->stopped && !e->probing) {
            if (e->probe_at - now < w) w = e->probe_at - now;
        } else if (!e->stopped) {
            w = 0;
        }
    }
    pthread_mutex_unlock(&e->mu);
    if (e->hooks && e->hooks->feed && !e->stopped) {
        int room, hint;
        pthread_mutex_lock(&e->mu);
        room = e->lim.limit - (int)e->in_flight - (int)e->nready;
        hint = e->feed_hint;
        pthread_mutex_unlock(&e->mu);
        if (hint && room > 0) w = 0;
        /* a due look at the store matters only when there is room for what it brings */
        if (room > 0 && e->feed_at - now < w) w = e->feed_at - now;
    }
    return w > 0 ? w : 0;
}

static int feed_room(oo_engine *e) {
    int room;
    pthread_mutex_lock(&e->mu);
    room = e->lim.limit - (int)e->in_flight - (int)e->nready;
    pthread_mutex_unlock(&e->mu);
    return room;
}

int oo_engine_turn(oo_engine *e, double max_wait) {
    double now = oo_mono_now();
    int n, stopped_drain;
    pthread_mutex_lock(&e->mu);
    intake(e, now);
    stopped_drain = e->stopped && e->cfg.on_stop == OO_STOP_DRAIN;
    if (e->pause_until > 0 && now >= e->pause_until) {
        e->pause_until = 0;
        pthread_mutex_unlock(&e->mu);
        event(e, OO_RES_RESUMED, "throttled", 0, NULL);
    } else {
        pthread_mutex_unlock(&e->mu);
    }
    if (stopped_drain) {
        oo_outcome why;
        oo_classify_failure("network", "not sent: the credentials were refused earlier in this run", &why);
        why.kind = "auth";
        why.retryable = 0;
        why.stop = 1;
        drain_stopped(e, &why);
    }
    if (e->hooks && e->hooks->feed && !e->stopped && now >= e->pause_until) {
        int hint;
        pthread_mutex_lock(&e->mu);
        hint = e->feed_hint;
        e->feed_hint = 0;
        pthread_mutex_unlock(&e->mu);
        if (hint || now >= e->feed_at) {
            int room = feed_room(e);
            if (room > 0) e->feed_at = e->hooks->feed(e, room, now);
            else if (hint) e->feed_at = now; /* no room now: as soon as a slot frees up */
        }
    }
    start_ready(e, now);
    __atomic_store_n(&e->pool.asleep, 1, __ATOMIC_SEQ_CST);
    n = oo_pool_run(&e->pool, wait_for(e, oo_mono_now(), max_wait), on_done, e, e->err, sizeof e->err);
    __atomic_store_n(&e->pool.asleep, 0, __ATOMIC_SEQ_CST);
    return n;
}

void oo_engine_report(oo_engine *e, oo_res_kind what, const oo_job *j, const oo_outcome *o) {
    oo_result *r = result_new(what, j, o, NULL, 0);
    pthread_mutex_lock(&e->mu);
    if (what != OO_RES_SENT) oo_metrics_failed(&e->metrics, o, 0, e->chans[j->channel].name);
    if (r) result_add(e, r);
    pthread_mutex_unlock(&e->mu);
}

oo_result *oo_engine_collect(oo_engine *e) {
    oo_result *r;
    pthread_mutex_lock(&e->mu);
    r = e->out_head;
    e->out_head = e->out_tail = NULL;
    e->nout = 0;
    pthread_mutex_unlock(&e->mu);
    return r;
}

void oo_engine_hint_feed(oo_engine *e) {
    int wake;
    pthread_mutex_lock(&e->mu);
    /* one wake-up per hint the driver has not taken yet, and only when it
     * has room for what the store brings (else a finishing transfer wakes
     * it and it finds the hint then) */
    wake = !e->feed_hint && (int)(e->in_flight + e->nready) < e->limit_now;
    e->feed_hint = 1;
    pthread_mutex_unlock(&e->mu);
    if (wake && __atomic_load_n(&e->pool.asleep, __ATOMIC_SEQ_CST)) oo_pool_wakeup(&e->pool);
}

void oo_engine_feed_by(oo_engine *e, double at) {
    if (at < e->feed_at) e->feed_at = at;
}

void oo_engine_resume(oo_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->stopped = 0;
    e->pause_until = 0;
    pthread_mutex_unlock(&e->mu);
    e->probing = 0;
    e->probe_at = 0;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */

struct drop_ctx {
    oo_engine *e;
    void (*fn)(void *ud, oo_job *j);
    void *ud;
};

static void drop_one(struct drop_ctx *c, oo_job *j) {
    if (j->spool_id && c->e->hooks && c->e->hooks->release) {
        c->e->hooks->release(c->e, j);
        free_job(j);
    } else if (c->fn) {
        c->fn(c->ud, j); /* takes the job */
    } else {
        free_job(j);
    }
}

static void drop_aborted(void *ud, void *job) {
    struct drop_ctx *c = (struct drop_ctx *)ud;
    pthread_mutex_lock(&c->e->mu);
    c->e->in_flight--;
    pthread_mutex_unlock(&c->e->mu);
    drop_one(c, (oo_job *)job);
}

void oo_engine_drop_all(oo_engine *e, void (*fn)(void *ud, oo_job *j), void *ud) {
    struct drop_ctx c = {e, fn, ud};
    oo_pool_abort(&e->pool, drop_aborted, &c);
    for (;;) {
        oo_job *j;
        pthread_mutex_lock(&e->mu);
        intake(e, 1e300);
        j = list_pop(&e->ready_head, &e->ready_tail);
        if (j) e->nready--;
        pthread_mutex_unlock(&e->mu);
        if (!j) break;
        drop_one(&c, j);
    }
    pthread_mutex_lock(&e->mu);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

int oo_engine_init(oo_engine *e, const oo_http_opts *ho, const oo_engine_cfg *cfg, const oo_policy *p,
                   char *url, oo_channel *chans, int nchan, char *err, size_t errlen) {
    memset(e, 0, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->url = url;
    e->chans = chans;
    e->nchan = nchan;
    e->cfg = *cfg;
    if (e->cfg.max_results == 0) e->cfg.max_results = 100000;
    e->policy = *p;
    oo_metrics_init(&e->metrics);
    oo_limiter_init(&e->lim, cfg->concurrency, cfg->adaptive, cfg->initial_limit);
    e->limit_now = e->lim.limit;
    e->rng = oo_jitter_seed(e);
    if (oo_pool_init(&e->pool, ho, cfg->concurrency, err, errlen) != 0) return -1;
    return 0;
}

static void free_list(oo_job *j) {
    while (j) {
        oo_job *n = j->next;
        free(j);
        j = n;
    }
}

static void free_aborted(void *ud, void *job) {
    (void)ud;
    free(job);
}

void oo_engine_free(oo_engine *e) {
    int i;
    oo_pool_abort(&e->pool, free_aborted, NULL);
    oo_pool_free(&e->pool);
    free_list(e->in_head);
    free_list(e->ready_head);
    for (i = 0; i < (int)e->nheap; i++) free(e->heap[i]);
    free(e->heap);
    oo_results_free(e->out_head);
    for (i = 0; i < e->nchan; i++) {
        free(e->chans[i].name);
        if (e->chans[i].token) {
            memset(e->chans[i].token, 0, strlen(e->chans[i].token));
            free(e->chans[i].token);
        }
        if (e->chans[i].headers) curl_slist_free_all(e->chans[i].headers);
    }
    free(e->chans);
    free(e->url);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
}
