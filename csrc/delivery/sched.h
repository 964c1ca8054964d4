/* The delivery scheduler: the one place that decides what is sent when.
 * No I/O here (no curl, no sockets, no Lua): a driver moves the bytes.
 *
 * It owns the jobs (an inbox, the ready list, the retry heap and, for jobs
 * that wait behind another of their refCode, a parked list), the in-flight
 * limit (limiter.h), the pause after a 429, the stop after refused
 * credentials and its probe, and the result records and counters
 * (metrics.h). Every finished attempt is classified (classify.h) and
 * settled by the one policy (policy.h), age limit included.
 *
 * A driver asks and answers:
 *   j = oo_sched_next(s, now)        a job that may start now, or NULL;
 *   w = oo_sched_wait(s, now)        then: seconds until one may be due
 *   ... the driver sends j (method, URL, channel, body) ...
 *   oo_sched_done(s, j, &reply)      the answer or the transport failure
 * Drivers: the libcurl one (driver_curl.h: send_batch in the calling
 * thread, the queue's thread in worker.c) and the Lua binding (l_sched.c:
 * client:send, user transports, the nginx cosocket senders).
 *
 * Stores sit behind hooks (oo_sched_hooks below). Memory is the scheduler's
 * own lists; the spool (worker.c) and Lua stores (l_sched.c) plug in. A
 * store that lives in Lua (the nginx memory ring, a spool handle, a shared
 * dict) gives its hooks as Lua functions: the binding calls them
 * synchronously, from inside the binding call that settles the job (s:next
 * feeds, s:done records, acks, retries, kills or releases, s:drop
 * releases) — never as actions returned for later, so the store sees
 * every transition in order, before the call returns. A Lua hook must not
 * yield (no cosocket, no sleep: the C boundary forbids it) and must not
 * drive the scheduler (next/done/drop/close raise there); one that raises
 * is counted (stats: hook_errors) and delivery goes on.
 *
 * Threads: the driver (whoever calls next/done/wait) owns the scheduling
 * state; any thread may add jobs, remove them, collect results or read
 * stats (under mu). Counting rule: a job is always counted in exactly one
 * of inbox, ready (parked included), retrying, in flight — moved between
 * them under mu — so "idle" is never seen while a job is on its way. */
#ifndef OO_SCHED_H
#define OO_SCHED_H

#include <pthread.h>
#include <stddef.h>
#include "limiter.h"
#include "metrics.h"
#include "policy.h"

typedef enum { OO_POST = 0, OO_DELETE = 1 } oo_method;

/* A job: one order (POST) or one cancel (DELETE) to deliver. */
typedef struct oo_job {
    struct oo_job *next, *prev; /* list links (prev: the in-flight list only) */
    long long id;               /* the caller's: batch index, spool row, ... */
    long long store_id;         /* the store's handle (hooks); 0: memory only */
    unsigned long long seq;     /* order of arrival in this scheduler */
    double created;             /* wall seconds when the order was queued (max_age) */
    double due;                 /* monotonic: not before (retrying) */
    double started_at;          /* monotonic: when the attempt in flight began */
    int load;                   /* requests in flight when it began, itself included */
    int attempts;               /* made so far (counted when each one finishes) */
    int started;                /* a request for it is or was in flight */
    int channel;                /* index into the scheduler's channels */
    int method;                 /* oo_method */
    int after_ref;              /* waits behind earlier jobs of its refCode */
    int after_ok;               /* and is not sent when an earlier DELETE of it dies (amend) */
    void *driver;               /* the driver's, while in flight */
    size_t body_len, ref_len, url_len, blob_len;
    char *ref;    /* never NULL ("" when none) */
    char *url;    /* NULL: the scheduler's URL */
    char *blob;   /* the caller's opaque bytes (the ledger's), NULL none */
    char data[1]; /* body '\0' ref '\0' [url '\0'] [blob] */
} oo_job;

/* What oo_job_new copies into a new job. */
typedef struct oo_job_spec {
    long long id, store_id;
    const char *body, *ref, *url, *blob; /* NULL: none */
    size_t body_len, ref_len, url_len, blob_len;
    int channel, method, after_ref, after_ok, attempts;
    double created; /* wall; <= 0: now */
} oo_job_spec;

/* Amend (after_ok): a POST queued behind the DELETE of the earlier
 * version of its refCode waits like an after_ref job, and when that DELETE
 * ends dead it ends dead too, never sent (why "amend"; its outcome is the
 * DELETE's, its message saying so): the new version is posted only once
 * the endpoint accepted the cancel. after_ok implies after_ref. */

/* What became of a job (or a scheduler event). */
typedef enum {
    OO_RES_SENT = 1, /* acknowledged by the endpoint */
    OO_RES_DEAD,     /* given up: rejected, attempts or age exhausted */
    OO_RES_STOPPED,  /* not sent: the credentials were refused (on_stop = drain) */
    OO_RES_DROPPED,  /* not sent: the queue closed first (memory only) */
    OO_RES_RETRY,    /* event: an attempt failed, another follows after `until` s */
    OO_RES_PAUSED,   /* event: sending paused (429 or credentials) */
    OO_RES_RESUMED   /* event: sending again */
} oo_res_kind;

typedef struct oo_result {
    struct oo_result *next;
    oo_res_kind what;
    long long id, store_id;
    int attempts, channel, method;
    double latency; /* of the last attempt, seconds (SENT) */
    double until;   /* RETRY: the delay; PAUSED: how long (-1: until further notice) */
    const char
        *why; /* DEAD: rejected, attempts, expired, memory, amend; PAUSED: throttled, credentials */
    char *ref;
    char *blob; /* the job's blob, NULL none */
    size_t blob_len;
    char *body; /* the response body (failures, warned or reported successes), capped */
    size_t body_len;
    oo_outcome o;
} oo_result;

/* A channel: its name (results, metrics) and token (scrubbed from stored
 * messages). The driver holds the request headers. */
typedef struct oo_channel {
    char *name;
    char *token;
} oo_channel;

struct oo_sched;

/* Hooks into a store. All optional; each runs in the driver's thread,
 * synchronously, never under mu; a hook may call oo_sched_take and
 * oo_sched_feed_by, nothing that waits long.
 *   feed     bring in up to `room` jobs due now (oo_sched_take); returns
 *            the monotonic time worth looking again (0: no idea)
 *   ack      the job was delivered (o: its outcome, warned or not)
 *   retry    keep the job for a retry at wall time next_at; 1 when the
 *            store holds it now (the scheduler frees its copy), 0 to let
 *            the scheduler keep it in memory
 *   dead     the job was given up (why: policy.h)
 *   release  give the job back unsent (credentials pause, shutdown)
 *   record   the ledger: a job reached its final outcome, what = SENT on
 *            ack or DEAD on dead — called for every job (store or memory),
 *            always just BEFORE ack/dead, so a store that writes both in
 *            one transaction (the spool with its ledger) can pair them
 * ack, retry, dead and release see only jobs with a store_id. */
typedef struct oo_sched_hooks {
    double (*feed)(struct oo_sched *s, int room, double now_mono);
    void (*ack)(struct oo_sched *s, oo_job *j, const oo_outcome *o);
    int (*retry)(struct oo_sched *s, oo_job *j, double next_at, const oo_outcome *o);
    void (*dead)(struct oo_sched *s, oo_job *j, const oo_outcome *o, const char *why);
    void (*release)(struct oo_sched *s, oo_job *j);
    void (*record)(struct oo_sched *s, const oo_job *j, oo_res_kind what, const oo_outcome *o);
} oo_sched_hooks;

typedef enum { OO_STOP_DRAIN = 0, OO_STOP_PAUSE = 1 } oo_stop_mode;

/* The most requests in flight one scheduler allows: the one limit, which
 * the Lua options read (core.sched_defaults().max_concurrency) for every
 * path's `concurrency`; the pool (pool.h) holds as many slots. */
#define OO_SCHED_MAX_CONCURRENCY 1024

typedef struct oo_sched_cfg {
    int concurrency;      /* most requests in flight, 1..OO_SCHED_MAX_CONCURRENCY */
    int adaptive;         /* grow/shrink the in-flight limit (limiter.h) */
    int initial_limit;    /* adaptive: where the limit starts (0: OO_LIM_INITIAL) */
    oo_stop_mode on_stop; /* DRAIN: fail what is left (batch, send); PAUSE: hold it (queues) */
    double auth_pause;    /* PAUSE: seconds before one job probes the credentials again */
    int report_all;       /* results for every job (else failures and events only) */
    int report_retries;   /* a RETRY event for every failed attempt that is retried */
    int no_metrics;       /* count nothing (the metrics-off baseline of the benches) */
    size_t max_results;   /* results kept for the caller; beyond, the oldest go */
} oo_sched_cfg;

/* The defaults of the fields above (concurrency 8, auth_pause 300,
 * max_results 100000): the Lua options' defaults read them. */
void oo_sched_defaults(oo_sched_cfg *cfg);

typedef struct oo_sched {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* results arrived, the scheduler went idle or settled */
    oo_policy policy;
    oo_sched_cfg cfg;
    char *url;
    oo_channel *chans;
    int nchan;
    const oo_sched_hooks *hooks;
    void *hook_ud;
    /* the driver's wake-up: called (any thread) when a job arrives for a
     * driver that may be waiting (`asleep`, set by the driver) */
    void (*wake)(void *ud);
    void *wake_ud;
    int asleep;
    /* the jitter of the backoff, a value in [0, 1) (NULL: the scheduler's
     * own xorshift; a Lua driver may give the client's `random`) */
    double (*jitter)(struct oo_sched *s);
    long long ahead_ns; /* oo_sched_advance: the scheduler's clock ahead of the monotonic one */
    /* under mu */
    oo_job *in_head, *in_tail;
    oo_job *ready_head, *ready_tail;
    oo_job *park_head, *park_tail; /* after_ref jobs waiting behind their refCode */
    oo_job *fly_head;              /* in flight */
    oo_job **heap;                 /* retries, earliest due first */
    size_t nin, nready, npark, nheap, capheap, in_flight;
    size_t n_after; /* after_ref jobs alive (0: no refCode checks at all) */
    unsigned long long next_seq;
    oo_result *out_head, *out_tail;
    size_t nout;
    long long results_dropped, removed;
    oo_metrics metrics;
    int stopped;           /* credentials refused */
    int limit_now;         /* the in-flight limit, as stats() reports it */
    unsigned long settles; /* progress to wait for: times it went idle, store writes done */
    double pause_until;    /* monotonic */
    int feed_hint;         /* the store has new jobs: feed at once */
    /* driver only (lim.limit is read under mu by the others) */
    oo_limiter lim;
    double probe_at; /* stopped + PAUSE: when one job may try again */
    int probing;
    double feed_at; /* monotonic: when feed is worth calling again */
    unsigned long long rng;
} oo_sched;

/* Sets up s; url and chans become the scheduler's (freed by
 * oo_sched_free). Returns 0, or -1 when out of memory. */
int oo_sched_init(oo_sched *s, const oo_sched_cfg *cfg, const oo_policy *p, char *url,
                  oo_channel *chans, int nchan);
void oo_sched_free(oo_sched *s);
void oo_channels_free(oo_channel *c, int n);

/* A new job (everything copied). NULL when out of memory. */
oo_job *oo_job_new(const oo_job_spec *spec);

/* Any thread: queue a job (the scheduler owns it from here), waking the
 * driver when it may be waiting. _bounded: unless max_pending (> 0) jobs
 * are pending already — then 0 and the job is still the caller's. */
void oo_sched_add(oo_sched *s, oo_job *j);
int oo_sched_add_bounded(oo_sched *s, oo_job *j, size_t max_pending);
/* n jobs queued as one step (all, or none when fewer than n places are
 * left below max_pending): no driver sees the first before the last is in,
 * so a job waiting behind another (after_ok: an amend's new version behind
 * its DELETE) always finds it there. */
int oo_sched_add_all(oo_sched *s, oo_job **jobs, size_t n, size_t max_pending);

/* The driver, from a feed hook: a job straight into the ready list (not
 * counted as pushed: the store counted it when it took it). */
void oo_sched_take(oo_sched *s, oo_job *j);

/* Jobs not yet settled (inbox + ready + parked + retrying + in flight). */
size_t oo_sched_pending(oo_sched *s);
size_t oo_sched_pending_locked(const oo_sched *s); /* the same, mu held */

/* The driver: the next job that may start now (inbox and due retries
 * taken in, the store fed, the limit, a pause, a credentials stop and
 * refCode order respected); the job is in flight from here. NULL when
 * none may start now: then ask oo_sched_wait. */
oo_job *oo_sched_next(oo_sched *s, double now);

/* oo_sched_next in two steps, for a driver that starts many jobs a round:
 * prepare once (inbox and due retries in, the end of a pause, a
 * credentials drain, the store's feed), then pick until NULL. */
void oo_sched_prepare(oo_sched *s, double now);
oo_job *oo_sched_pick(oo_sched *s, double now);

/* The driver: seconds until a job may be due (a retry, the end of a pause,
 * a probe, a look at the store); 1e9 when only an add can bring one. Set
 * `asleep` before asking, so an add in between wakes the driver. */
double oo_sched_wait(oo_sched *s, double now);

/* What came back for a job in flight. */
typedef struct oo_reply {
    int status;              /* HTTP status; 0: no answer (kind, message, code) */
    const char *retry_after; /* the raw header value, NULL none */
    const char *body;        /* body[body_len] == '\0'; NULL none */
    size_t body_len;
    const char *kind;    /* status 0: "network" | "timeout" | "tls" */
    const char *message; /* status 0: one line */
    int code;            /* status 0: the transport's error number, 0 none */
    int new_connection;  /* the attempt opened a connection (the limiter) */
} oo_reply;

/* The driver: classify the reply (classify.h) and settle the job. Returns
 * the policy's action (OO_ACK, OO_RETRY, OO_DEAD, OO_STOP). */
int oo_sched_done(oo_sched *s, oo_job *j, const oo_reply *r);

/* The reply as the one classifier sees it (what oo_sched_done does first). */
void oo_sched_classify(const oo_reply *r, oo_outcome *o);

/* oo_sched_done with an outcome already classified (a transport that broke
 * its contract, say); r may be NULL; *why (when why is not NULL) gets the
 * policy's reason (DEAD, STOP) or NULL. */
int oo_sched_settle(oo_sched *s, oo_job *j, const oo_outcome *o, const oo_reply *r,
                    const char **why);

/* Any thread: report what became of a job that left another way (dropped
 * at close; an amend's new version the spool ended dead with its DELETE,
 * why "amend"); counted as failed unless `what` is SENT (and dead when
 * DEAD). */
void oo_sched_report(oo_sched *s, oo_res_kind what, const oo_job *j, const oo_outcome *o,
                     const char *why);
/* An amend's new version a store ended dead with its DELETE (the spool's
 * dead letter): reported dead, why "amend", with the DELETE's outcome o
 * and the dead letter's message (NULL: o's). */
void oo_sched_report_amend_dead(oo_sched *s, const oo_job *j, const oo_outcome *o,
                                const char *message);

/* Any thread: take the results collected so far (free with oo_results_free). */
oo_result *oo_sched_collect(oo_sched *s);
void oo_results_free(oo_result *r);

/* Any thread: take every unstarted job of refCode `ref` (method -1: any,
 * else only that method) out of the scheduler — a cancel of an order that
 * was never sent. Returns them as a list (free each with free()); *flying
 * tells whether a job of that refCode is in flight now. Store hooks are not
 * called: the caller settles the store. */
oo_job *oo_sched_remove_ref(oo_sched *s, const char *ref, size_t len, int method, int *flying);

/* The driver: hand every unstarted job back (release hook) or, for memory
 * jobs, to fn (which takes it; NULL: freed). In-flight jobs are the
 * driver's: it aborts them and hands each to oo_sched_drop_flying. */
void oo_sched_drop_all(oo_sched *s, void (*fn)(void *ud, oo_job *j), void *ud);
void oo_sched_drop_flying(oo_sched *s, oo_job *j, void (*fn)(void *ud, oo_job *j), void *ud);

/* Any thread: the store behind the feed hook has new jobs (a put). */
void oo_sched_hint_feed(oo_sched *s);

/* The driver, from a hook: look at the store again no later than `at`
 * (monotonic). */
void oo_sched_feed_by(oo_sched *s, double at);

/* Any thread: clear a credentials stop and a pause (the user fixed them). */
void oo_sched_resume(oo_sched *s);

/* Any thread: every job waiting for a retry is due now and a 429 pause
 * ends (a credentials stop stays) — a memory queue's last chance before
 * its process exits (the nginx driver at worker exit). */
void oo_sched_hurry(oo_sched *s);

/* The scheduler's clock: monotonic seconds, plus what oo_sched_advance
 * added. Drivers pass it as `now`; every time the scheduler keeps (a
 * retry's due time, a pause, a probe, latency) is on it. */
double oo_sched_now(const oo_sched *s);

/* A driver whose sleep returned before the time it asked for (a test's
 * stub that records and returns) moves the clock ahead by what it did not
 * wait: what it waited for is due, and what comes later keeps its delay. */
void oo_sched_advance(oo_sched *s, double seconds);

/* Under nothing: wakes the driver if it may be waiting. */
void oo_sched_wake(oo_sched *s);

#endif
