/* The queue's delivery thread (worker.h): the spool hooks (where durable
 * jobs come from and go) and the thread. No Lua here: the binding is
 * l_worker.c. */
#define _GNU_SOURCE
#include "worker.h"
#include "clock.h"
#include "http.h"
#include "ledger.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A claim that only follows a put waits until CLAIM_GAP after the previous
 * one: claims are write transactions on the file the pushing thread writes
 * too, and SQLite makes a writer that finds the lock taken sleep for a
 * millisecond or more. A pusher's puts then meet one claim per few
 * milliseconds instead of one per put. */
#define CLAIM_GAP 0.002

/* A claim takes up to this many rows beyond the free slots (2 x the limit,
 * 64..256): one write transaction brings the next few round trips' worth
 * instead of one per free slot. They wait in the ready list under their
 * lease (60 s by default), which is why the prefetch stays small. */
#define CLAIM_MIN 64
#define CLAIM_MAX 256

/* Acks are written in groups (one transaction for many rows) once ACK_MAX
 * are waiting, ACK_WINDOW after the first, or when the engine has nothing
 * left to do. A row is deleted at most ACK_WINDOW late; if the process dies
 * meanwhile it is sent again after its lease (at-least-once, as for a
 * crash during the request). */
#define ACK_MAX 256
#define ACK_WINDOW 0.005

#define WORKER(s) ((oo_worker *)(s)->hook_ud)

/* ------------------------------------------------------------------ */
/* The spool hooks                                                     */

/* A spool call failed: counted and kept for stats and the error callback
 * (a full disk must not stop delivery silently). */
static void storage_failed(oo_worker *w, const oo_spool_err *err) {
    pthread_mutex_lock(&w->e.s.mu);
    w->storage_errors++;
    snprintf(w->storage_error, sizeof w->storage_error, "%s", err->message);
    pthread_mutex_unlock(&w->e.s.mu);
}

/* Copies src into dst (size n) as one printable line with every
 * occurrence of the channel's token replaced: a dead letter's message may
 * be shown anywhere. */
static void scrub_line(char *dst, size_t n, const char *src, const char *token) {
    static const char mark[] = "[REDACTED]";
    size_t i = 0, o = 0, len = strlen(src), tl = token ? strlen(token) : 0;
    if (n == 0) return;
    while (i < len && o + 1 < n) {
        if (tl && len - i >= tl && strncasecmp(src + i, token, tl) == 0) {
            size_t k;
            for (k = 0; mark[k] && o + 1 < n; k++) dst[o++] = mark[k];
            i += tl;
            continue;
        }
        {
            unsigned char c = (unsigned char)src[i++];
            dst[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
        }
    }
    dst[o] = '\0';
}

static int channel_index(const oo_sched *s, const char *name) {
    int i;
    if (!name) return 0;
    for (i = 0; i < s->nchan; i++)
        if (s->chans[i].name && strcmp(s->chans[i].name, name) == 0) return i;
    return -1;
}

/* A cancel row's URL (malloc'd), NULL without a cancel path or memory. */
static char *cancel_url(const oo_worker *w, const oo_spool_row *row, size_t *len) {
    size_t np, ns, nseg;
    char *seg, *url;
    if (!w->cancel_prefix || !row->ref || !row->ref_len) return NULL;
    seg = oo_url_segment(row->ref, row->ref_len, &nseg);
    if (!seg) return NULL;
    np = strlen(w->cancel_prefix);
    ns = w->cancel_suffix ? strlen(w->cancel_suffix) : 0;
    url = (char *)malloc(np + nseg + ns + 1);
    if (url) {
        memcpy(url, w->cancel_prefix, np);
        memcpy(url + np, seg, nseg);
        if (ns) memcpy(url + np + nseg, w->cancel_suffix, ns);
        url[np + nseg + ns] = '\0';
        *len = np + nseg + ns;
    }
    free(seg);
    return url;
}

/* A job for a claimed spool row — a create (POST of its body) or a cancel
 * (DELETE of its refCode); NULL for an unknown channel (the config
 * changed), a cancel without a cancel path, or without memory. */
static oo_job *row_job(const oo_worker *w, const oo_sched *s, const oo_spool_row *row) {
    oo_job_spec sp;
    oo_job *j;
    char *url = NULL;
    int ch = channel_index(s, row->channel);
    if (ch < 0) return NULL;
    memset(&sp, 0, sizeof sp);
    sp.id = sp.store_id = row->id;
    sp.ref = row->ref;
    sp.ref_len = row->ref ? row->ref_len : 0;
    sp.channel = ch;
    sp.attempts = (int)row->attempts;
    sp.created = row->created_at;
    if (row->op == OO_SPOOL_OP_CANCEL) {
        /* the spool holds it back while an earlier row of its refCode is
         * there; the scheduler, while one is here (after_ref) */
        sp.method = OO_DELETE;
        sp.after_ref = 1;
        url = cancel_url(w, row, &sp.url_len);
        if (!url) return NULL;
        sp.url = url;
    } else {
        sp.body = row->body;
        sp.body_len = row->body_len;
    }
    j = oo_job_new(&sp);
    free(url);
    return j;
}

/* The store has nothing more due: the Lua side's flush may look at it now
 * (the look is a scan; without this it would look whenever the memory side
 * went idle between two claims). */
static void store_drained(oo_worker *w) {
    pthread_mutex_lock(&w->e.s.mu);
    if (!w->store_drained && !w->e.s.feed_hint) {
        w->store_drained = 1;
        w->e.s.settles++;
        pthread_cond_broadcast(&w->e.s.cv);
    }
    pthread_mutex_unlock(&w->e.s.mu);
}

/* Leases what is due into the ready list; returns when to look again. */
static double spool_feed(oo_sched *e, int room, double now) {
    oo_worker *w = WORKER(e);
    oo_spool_err serr;
    size_t k, want;
    double wall, at;
    int found = 0, batch;
    if (now < w->last_claim + CLAIM_GAP) return w->last_claim + CLAIM_GAP;
    w->last_claim = now;
    wall = oo_wall_now();
    batch = 2 * e->lim.limit;
    batch = batch < CLAIM_MIN ? CLAIM_MIN : batch > CLAIM_MAX ? CLAIM_MAX : batch;
    want = (size_t)(room > batch ? room : batch);
    if (oo_spool_claim(w->spool, want, w->lease, wall, &w->rows, &serr) != OO_SPOOL_OK) {
        if (serr.code != OO_SPOOL_BUSY) storage_failed(w, &serr);
        return now + w->spool_poll; /* busy or failing: try again later */
    }
    for (k = 0; k < w->rows.n; k++) {
        oo_spool_row *row = &w->rows.v[k];
        oo_job *j = row_job(w, e, row);
        if (!j) {
            /* an unknown channel (the config changed), a cancel this queue
             * has no cancel path for, or no memory: it stays in the spool
             * for a process that can send it */
            oo_spool_release(w->spool, row->id, &serr);
            continue;
        }
        oo_sched_take(e, j);
    }
    if (w->rows.n >= want) return now; /* there may be more */
    oo_spool_rows_free(&w->rows);
    store_drained(w);
    /* drained what is due: look again when the next retry falls due, or
     * after spool_poll (other processes' orders, expired leases) */
    at = now + w->spool_poll;
    if (oo_spool_next_due(w->spool, wall, &wall, &found, &serr) == OO_SPOOL_OK && found) {
        double due = now + (wall - oo_wall_now());
        if (due < at) at = due > now ? due : now + 0.01;
    }
    return at;
}

/* Writes the acks waiting (see ACK_WINDOW), in one transaction — with
 * their ledger rows when the spool has a ledger (oo_spool_set_ledger). A
 * row we no longer hold (our lease ran out) is skipped and reported like
 * any storage error: another process may have sent it again. */
static void flush_acks(oo_worker *w) {
    oo_spool_err serr;
    if (w->nacks == 0) return;
    if (oo_spool_ack_outcomes(w->spool, w->acks, w->ack_outcomes, w->nacks, oo_wall_now(), &serr) !=
        OO_SPOOL_OK)
        storage_failed(w, &serr);
    w->nacks = 0;
    /* flush() on the Lua side waits for the spool to be empty: tell it */
    pthread_mutex_lock(&w->e.s.mu);
    w->e.s.settles++;
    pthread_cond_broadcast(&w->e.s.cv);
    pthread_mutex_unlock(&w->e.s.mu);
}

/* Room for one more ack (64 at first, doubling); 0 without memory. */
static int ack_room(oo_worker *w) {
    size_t cap;
    long long *a;
    int *o;
    if (w->nacks < w->capacks) return 1;
    cap = w->capacks ? w->capacks * 2 : 64;
    a = (long long *)realloc(w->acks, cap * sizeof *a);
    if (a) w->acks = a;
    o = a ? (int *)realloc(w->ack_outcomes, cap * sizeof *o) : NULL;
    if (o) w->ack_outcomes = o;
    if (!a || !o) return 0;
    w->capacks = cap;
    return 1;
}

static void spool_ack(oo_sched *e, oo_job *j, const oo_outcome *o) {
    oo_worker *w = WORKER(e);
    int outcome = o->warned ? OO_LEDGER_WARNED : OO_LEDGER_SENT;
    if (!ack_room(w)) { /* no memory to batch: write this one now */
        oo_spool_err serr;
        long long id = j->store_id;
        if (oo_spool_ack_outcomes(w->spool, &id, &outcome, 1, oo_wall_now(), &serr) != OO_SPOOL_OK)
            storage_failed(w, &serr);
        return;
    }
    if (w->nacks == 0) w->ack_since = oo_mono_now();
    w->acks[w->nacks] = j->store_id;
    w->ack_outcomes[w->nacks++] = outcome;
}

/* After a turn: write the acks when enough wait, the oldest waited long
 * enough, or nothing else is going on. Returns how long the next turn may
 * wait before they are due. */
static double maybe_flush_acks(oo_worker *w, double max_wait) {
    double due;
    if (w->nacks == 0) return max_wait;
    due = w->ack_since + ACK_WINDOW - oo_mono_now();
    if (w->nacks >= ACK_MAX || due <= 0 || oo_sched_pending(&w->e.s) == 0) {
        flush_acks(w);
        return max_wait;
    }
    return due < max_wait ? due : max_wait;
}

static int spool_retry(oo_sched *e, oo_job *j, double next_at, const oo_outcome *o) {
    oo_worker *w = WORKER(e);
    oo_spool_err serr;
    char why[sizeof o->message];
    scrub_line(why, sizeof why, o->message, e->chans[j->channel].token);
    /* attempts and the next attempt time live in the row: a restart keeps
     * the backoff. If the write fails (a full disk), the engine keeps the
     * job and retries it from memory; the row stays ours under its lease
     * (or, should we die, is claimed again when the lease runs out): late,
     * never lost. */
    if (oo_spool_retry(w->spool, j->store_id, next_at, why, &serr) != OO_SPOOL_OK) {
        storage_failed(w, &serr);
        return 0;
    }
    oo_sched_feed_by(e, oo_mono_now() + (next_at - oo_wall_now()));
    return 1;
}

/* The spool ended an amend's new version dead with its DELETE (w->deps,
 * its dead letters): each is reported like the scheduler's own (sched.c
 * fail_dependents), a dead result, why "amend", the DELETE's outcome with
 * the dead letter's message. */
static void report_amend_dead(oo_worker *w, const oo_outcome *o) {
    size_t k;
    for (k = 0; k < w->deps.n; k++) {
        oo_spool_row *row = &w->deps.v[k];
        oo_job *j = row_job(w, &w->e.s, row);
        if (!j) continue; /* an unknown channel or no memory: its dead letter says it */
        oo_sched_report_amend_dead(&w->e.s, j, o, row->message);
        free(j);
    }
    oo_spool_rows_free(&w->deps);
}

static void spool_dead(oo_sched *e, oo_job *j, const oo_outcome *o, const char *why) {
    oo_worker *w = WORKER(e);
    oo_spool_err serr;
    oo_spool_failure f;
    char line[sizeof o->message], msg[sizeof o->message + 64];
    scrub_line(line, sizeof line, o->message, e->chans[j->channel].token);
    snprintf(msg, sizeof msg, "%s (after %d attempt%s%s%s)", line, j->attempts,
             j->attempts == 1 ? "" : "s", why && strcmp(why, "rejected") != 0 ? "; " : "",
             why && strcmp(why, "rejected") != 0 ? why : "");
    memset(&f, 0, sizeof f);
    f.kind = o->kind;
    f.status = o->status;
    f.code = o->code[0] ? o->code : NULL;
    f.message = msg;
    if (oo_spool_kill_deps(w->spool, j->store_id, &f, oo_wall_now(), &w->deps, &serr) !=
        OO_SPOOL_OK)
        storage_failed(w, &serr);
    else if (w->deps.n) report_amend_dead(w, o);
}

static void spool_release(oo_sched *e, oo_job *j) {
    oo_worker *w = WORKER(e);
    oo_spool_err serr;
    if (oo_spool_release(w->spool, j->store_id, &serr) != OO_SPOOL_OK) storage_failed(w, &serr);
}

/* No record hook: with a spool the ledger lives in the spool's file, and
 * the spool writes its rows itself, in the transaction of the ack (with
 * each row's outcome: flush_acks) or of the kill. */
static const oo_sched_hooks spool_hooks = {spool_feed, spool_ack,     spool_retry,
                                           spool_dead, spool_release, NULL};

/* ------------------------------------------------------------------ */
/* The thread                                                          */

/* At the end, a job held only in memory is reported, never silently lost. */
static void report_dropped(void *ud, oo_job *j) {
    oo_worker *w = (oo_worker *)ud;
    oo_outcome o;
    oo_classify_failure("network", "the queue closed before the order was delivered", &o);
    o.kind = "shutdown";
    o.retryable = 0;
    oo_sched_report(&w->e.s, OO_RES_DROPPED, j, &o, NULL);
    free(j);
}

static int stopping(oo_worker *w) {
    int s;
    pthread_mutex_lock(&w->e.s.mu);
    s = w->stop;
    pthread_mutex_unlock(&w->e.s.mu);
    return s;
}

static void *worker_main(void *arg) {
    oo_worker *w = (oo_worker *)arg;
    int abandoned;
    double wait = w->spool ? w->spool_poll : 1.0;
    while (!stopping(w)) {
        if (oo_curl_turn(&w->e.d, wait) < 0) {
            struct timespec ts = {0, 50 * 1000 * 1000}; /* an unexpected poll error: do not spin */
            nanosleep(&ts, NULL);
        }
        wait = maybe_flush_acks(w, w->spool ? w->spool_poll : 1.0);
    }
    flush_acks(w);
    /* Rows we lease go back now, not when the lease runs out: a queue
     * reopened on the spool (or another process) takes them at once. The
     * server may have seen some of them: delivery is at-least-once. */
    oo_curl_drop_all(&w->e.d, report_dropped, w);
    oo_spool_rows_free(&w->rows);
    pthread_mutex_lock(&w->e.s.mu);
    w->exited = 1;
    abandoned = w->abandoned;
    pthread_cond_broadcast(&w->e.s.cv);
    pthread_mutex_unlock(&w->e.s.mu);
    if (abandoned) oo_worker_free(w); /* nobody else holds it any more */
    return NULL;
}

void oo_worker_free(oo_worker *w) {
    free(w->acks);
    free(w->ack_outcomes);
    free(w->cancel_prefix);
    free(w->cancel_suffix);
    if (w->spool) oo_spool_close(w->spool);
    oo_spool_rows_free(&w->rows);
    oo_spool_rows_free(&w->deps);
    oo_engine_free(&w->e);
    free(w);
}

int oo_worker_start(oo_worker *w) {
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    /* the thread inherits a mask with every signal blocked: Ctrl-C and
     * friends stay with the Lua side's thread */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) w->started = 1;
    return rc;
}

int oo_worker_stop(oo_worker *w, double timeout) {
    struct timespec dl;
    double end;
    if (!w->started) return 1;
    pthread_mutex_lock(&w->e.s.mu);
    w->stop = 1;
    pthread_mutex_unlock(&w->e.s.mu);
    oo_curl_wakeup(&w->e.d);
    end = oo_wall_now() + (timeout > 0 ? timeout : 0);
    dl.tv_sec = (time_t)end;
    dl.tv_nsec = (long)((end - (double)dl.tv_sec) * 1e9);
    if (dl.tv_nsec >= 1000000000L) dl.tv_nsec = 999999999L;
    if (pthread_timedjoin_np(w->thread, NULL, &dl) == 0) {
        w->started = 0;
        return 1;
    }
    pthread_mutex_lock(&w->e.s.mu);
    if (w->exited) { /* it ended just now */
        pthread_mutex_unlock(&w->e.s.mu);
        pthread_join(w->thread, NULL);
        w->started = 0;
        return 1;
    }
    w->abandoned = 1;
    pthread_mutex_unlock(&w->e.s.mu);
    pthread_detach(w->thread);
    return 0;
}

/* ------------------------------------------------------------------ */
/* What the caller asks                                                */

int oo_worker_use_spool(oo_worker *w, oo_spool *main, oo_spool_err *err) {
    int rc = oo_spool_reopen(main, &w->spool, err);
    if (rc == OO_SPOOL_OK) w->e.s.hooks = &spool_hooks;
    return rc;
}

void oo_worker_drop_unstarted(oo_worker *w) {
    if (!w->started) oo_curl_drop_all(&w->e.d, report_dropped, w);
}

void oo_worker_notify(oo_worker *w, long long n) {
    pthread_mutex_lock(&w->e.s.mu);
    if (n > 0) w->e.s.metrics.queued += n;
    w->store_drained = 0;
    pthread_mutex_unlock(&w->e.s.mu);
    oo_sched_hint_feed(&w->e.s);
}

int oo_worker_wait(oo_worker *w, double timeout, int has_seen, unsigned long seen,
                   unsigned long *progress) {
    struct timespec dl;
    double t;
    int idle;
    oo_sched *e = &w->e.s;
    if (!(timeout > 0)) timeout = 0;
    if (timeout > 3600) timeout = 3600;
    t = oo_wall_now() + timeout;
    dl.tv_sec = (time_t)t;
    dl.tv_nsec = (long)((t - (double)dl.tv_sec) * 1e9);
    if (dl.tv_nsec >= 1000000000L) dl.tv_nsec = 999999999L;
    pthread_mutex_lock(&e->mu);
    if (timeout > 0 && e->nout == 0 && w->started && !w->exited) {
        if (has_seen) {
            while (e->settles == seen && e->nout == 0 && !w->exited &&
                   pthread_cond_timedwait(&e->cv, &e->mu, &dl) == 0) {}
        } else if (oo_sched_pending_locked(e) > 0) {
            pthread_cond_timedwait(&e->cv, &e->mu, &dl);
        }
    }
    idle = oo_sched_pending_locked(e) == 0 && (!w->spool || w->store_drained || !w->started);
    *progress = e->settles;
    pthread_mutex_unlock(&e->mu);
    return idle;
}

void oo_worker_read_stats(oo_worker *w, oo_worker_stats *st) {
    pthread_mutex_lock(&w->e.s.mu);
    st->running = w->started && !w->exited;
    st->storage_errors = w->storage_errors;
    snprintf(st->storage_error, sizeof st->storage_error, "%s", w->storage_error);
    pthread_mutex_unlock(&w->e.s.mu);
}
