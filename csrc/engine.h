/* The libcurl delivery engine: one scheduler for send_batch (driven by the
 * calling Lua thread) and for the queue (driven by its own thread,
 * worker.c). It owns the slot pool (pool.h), the jobs waiting to start or
 * to be retried, the pause after a 429, the stop after refused credentials
 * and the in-flight limit, and it asks the one classifier (classify.h) and
 * the one policy (policy.h) about every finished request. What it cannot
 * know — where jobs come from and go to durably (the spool) — it leaves to
 * hooks.
 *
 * Threads: the driver (whoever calls oo_engine_turn) owns the scheduling
 * state; any thread may add jobs, collect results or read stats (under mu).
 * Counting rule: a job is always counted in exactly one of inbox, ready,
 * retrying, in flight — moved between them under mu — so "idle" is never
 * seen while a job is on its way. */
#ifndef OO_ENGINE_H
#define OO_ENGINE_H

#include <pthread.h>
#include "limiter.h"
#include "metrics.h"
#include "policy.h"
#include "pool.h"

typedef struct oo_job {
    struct oo_job *next;
    long long id;        /* the caller's id: batch index, or the spool row id */
    long long spool_id;  /* 0: held in memory only */
    double created;      /* wall seconds when the order was queued (max_age) */
    double due;          /* monotonic: not before */
    int attempts;        /* made so far (counted when each one finishes) */
    int started;         /* a request for it is or was in flight */
    int channel;         /* index into the engine's channels */
    size_t body_len, ref_len;
    char *ref;
    char data[1];        /* body '\0' ref '\0' */
} oo_job;

/* What became of a job (or an engine event) for the Lua side. */
typedef enum {
    OO_RES_SENT = 1,     /* acknowledged by the endpoint */
    OO_RES_DEAD,         /* given up: rejected, attempts or age exhausted */
    OO_RES_STOPPED,      /* not sent: the credentials were refused (batch) */
    OO_RES_DROPPED,      /* not sent: the queue closed first (memory only) */
    OO_RES_RETRY,        /* event: an attempt failed, another follows after `until` seconds */
    OO_RES_PAUSED,       /* event: the engine paused (429 or credentials) */
    OO_RES_RESUMED       /* event: sending again */
} oo_res_kind;

typedef struct oo_result {
    struct oo_result *next;
    oo_res_kind what;
    long long id;
    int attempts, channel, reused;
    double latency;      /* of the last attempt, seconds */
    double until;        /* PAUSED: seconds the pause lasts (-1 until further notice) */
    const char *why;     /* DEAD: rejected | attempts | expired; PAUSED: throttled | credentials */
    char *ref;
    char *body;          /* the response body (failures, warned successes), capped */
    size_t body_len;
    oo_outcome o;
} oo_result;

typedef struct oo_channel {
    char *name;
    char *token;                   /* scrubbed from dead-letter messages */
    struct curl_slist *headers;
} oo_channel;

struct oo_engine;

/* Hooks for a durable store (the spool). Each is optional; a job with
 * spool_id 0 never reaches them. */
typedef struct oo_engine_hooks {
    /* Bring in up to `room` jobs due now (oo_engine_take); returns the
     * monotonic time worth looking again (0: no idea). */
    double (*feed)(struct oo_engine *e, int room, double now_mono);
    void (*ack)(struct oo_engine *e, oo_job *j);
    /* Keep the job for a retry at wall time next_at; returns 1 when the
     * store holds it now (the engine frees its copy). */
    int (*retry)(struct oo_engine *e, oo_job *j, double next_at, const oo_outcome *o);
    void (*dead)(struct oo_engine *e, oo_job *j, const oo_outcome *o, const char *why);
    /* Give a job back unsent (pause, stop, shutdown). */
    void (*release)(struct oo_engine *e, oo_job *j);
} oo_engine_hooks;

typedef enum { OO_STOP_DRAIN = 0, OO_STOP_PAUSE = 1 } oo_stop_mode;

typedef struct oo_engine_cfg {
    int concurrency;        /* slots, 1..1024 */
    int adaptive;           /* grow/shrink the in-flight limit (limiter.h) */
    int initial_limit;      /* adaptive: where the limit starts (0: OO_LIM_INITIAL) */
    oo_stop_mode on_stop;   /* DRAIN: fail what is left (batch); PAUSE: hold it (queue) */
    double auth_pause;      /* PAUSE: seconds before one order probes the credentials again */
    int report_all;         /* results for every job (else failures and events only) */
    int report_retries;     /* a RETRY event for every failed attempt that is retried */
    int no_metrics;         /* count nothing (the metrics-off baseline of the benches) */
    size_t max_results;     /* results kept for the Lua side; beyond, the oldest go */
} oo_engine_cfg;

typedef struct oo_engine {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* results arrived or the engine went idle */
    oo_pool pool;
    oo_policy policy;
    oo_engine_cfg cfg;
    char *url;
    oo_channel *chans;
    int nchan;
    const oo_engine_hooks *hooks;
    void *hook_ud;
    /* under mu */
    oo_job *in_head, *in_tail;
    oo_job *ready_head, *ready_tail;
    oo_job **heap;          /* retries, earliest due first */
    size_t nin, nready, nheap, capheap, in_flight;
    oo_result *out_head, *out_tail;
    size_t nout;
    long long results_dropped;
    oo_metrics metrics;
    int stopped;            /* credentials refused */
    int limit_now;          /* the in-flight limit, as stats() reports it */
    unsigned long settles;  /* progress to wait for: times the engine went idle, spool writes done */
    double pause_until;     /* monotonic */
    /* driver only (lim.limit is read under mu by the others) */
    oo_limiter lim;         /* the in-flight limit */
    double probe_at;        /* stopped + PAUSE: when one job may try again */
    int probing;
    double feed_at;         /* monotonic: when feed is worth calling again */
    int feed_hint;          /* under mu: the store has new jobs, feed at once */
    unsigned long long rng;
    char err[256];          /* the last pool error */
} oo_engine;

/* Sets up the engine; 0 on success, else -1 with a message in err. The
 * channels array (names, tokens, header lists) and url become the engine's. */
int oo_engine_init(oo_engine *e, const oo_http_opts *ho, const oo_engine_cfg *cfg, const oo_policy *p,
                   char *url, oo_channel *chans, int nchan, char *err, size_t errlen);
void oo_engine_free(oo_engine *e);

/* A new job (body and ref copied). NULL when out of memory. */
oo_job *oo_job_new(long long id, const char *body, size_t blen, const char *ref, size_t rlen, int channel,
                   double created_wall);

/* Any thread: queue a job (the engine owns it from here); wakes the
 * driver when it is waiting. */
void oo_engine_add(oo_engine *e, oo_job *j);
/* The same, unless max_pending (> 0) jobs are pending already: then 0 and
 * the job is still the caller's. One lock for the check and the add. */
int oo_engine_add_bounded(oo_engine *e, oo_job *j, size_t max_pending);

/* The driver, from a feed hook: put a job straight into the ready list. */
void oo_engine_take(oo_engine *e, oo_job *j);

/* The driver: one round — start what may start, wait up to max_wait
 * seconds for transfers (or oo_pool_wakeup), settle what finished.
 * Returns -1 on an unexpected pool error (e->err), else how many settled. */
int oo_engine_turn(oo_engine *e, double max_wait);

/* Any thread: report what became of a job that left the engine another
 * way (e.g. dropped at close); counted as failed unless `what` is SENT. */
void oo_engine_report(oo_engine *e, oo_res_kind what, const oo_job *j, const oo_outcome *o);

/* Any thread: take the results collected so far (a list to free with
 * oo_results_free). */
oo_result *oo_engine_collect(oo_engine *e);
void oo_results_free(oo_result *r);

/* Jobs not yet settled (inbox + ready + retrying + in flight), under mu. */
size_t oo_engine_pending(oo_engine *e);

/* The driver: hand every unstarted job back (release hook) or, for memory
 * jobs, report them to fn (ud) and free them. In-flight transfers are
 * aborted and treated the same. */
void oo_engine_drop_all(oo_engine *e, void (*fn)(void *ud, oo_job *j), void *ud);

/* Any thread: the store behind the feed hook has new jobs (a put): the
 * driver calls feed on its next turn, woken if it waits. */
void oo_engine_hint_feed(oo_engine *e);

/* The driver, from a hook: look at the store again no later than `at`
 * (monotonic). */
void oo_engine_feed_by(oo_engine *e, double at);

/* The driver: clear a credentials stop (e.g. after the user fixed them). */
void oo_engine_resume(oo_engine *e);

#endif
