/* The ledger behind a scheduler's record hook (sched.h): every job that
 * reaches its end is noted here by the driver's thread — a POST delivered
 * as "sent" or "warned", a POST given up as "dead", a DELETE delivered as
 * "cancelled" (a DELETE given up changes nothing) — and the notes are
 * written to the ledger in batches, one transaction per flush (ledger.h:
 * oo_ledger_record, which also drops the orders' reservations).
 *
 * Used by send_batch's engine (l_engine.c), the queue's thread without a
 * spool (worker.c) and the Lua drivers' schedulers (l_sched.c: client:send,
 * the nginx queue's memory and shared-dict stores). With a spool the spool
 * writes its ledger rows itself, in the transaction of each ack.
 *
 * When to write is the driver's: oo_ledger_sink_tick() flushes once
 * max_batch notes wait or the oldest waited `window` seconds (0: at
 * once); oo_ledger_sink_flush() now. A note not written yet is an order
 * the endpoint has but the ledger does not know: after a kill -9 it is one
 * of the orders in flight, which a later run may send again. A failed
 * flush keeps its notes for the next one (a busy file, a full disk) and is
 * counted; past OO_SINK_MAX notes waiting, the oldest are given up
 * (counted in `lost`).
 *
 * Threads: add, tick and flush from the driver's thread only; the counters
 * (oo_ledger_sink_stats) from any. */
#ifndef OO_LEDGER_SINK_H
#define OO_LEDGER_SINK_H

#include <pthread.h>
#include <stddef.h>

#include "ledger.h"
#include "sched.h"

#define OO_SINK_MAX 100000

typedef struct oo_sink_note {
    char *body; /* POST: the body sent (its refCode, fingerprint, report fields) */
    size_t body_len;
    char *ref; /* DELETE: the refCode cancelled */
    size_t ref_len;
    const char *channel; /* the scheduler's channel name (lives as long as it) */
    int outcome;         /* OO_LEDGER_* */
} oo_sink_note;

typedef struct oo_ledger_sink {
    oo_ledger *l; /* retained: closed by oo_ledger_sink_free */
    char host[256], site[256];
    oo_sink_note *v;
    size_t n, cap;
    double first;       /* monotonic: when the oldest note came */
    double retry_at;    /* monotonic: after a failed flush, not before */
    size_t max_batch;   /* default 256 */
    double window;      /* seconds, default 0.02 */
    pthread_mutex_t mu; /* the counters below */
    long long written, errors, lost;
    char error[512]; /* the last failure, "" none */
} oo_ledger_sink;

/* Sets up the sink on l (retained) under the scope's host and site. */
void oo_ledger_sink_init(oo_ledger_sink *k, oo_ledger *l, const char *host, const char *site);
/* Writes what waits (best effort) and frees everything. */
void oo_ledger_sink_free(oo_ledger_sink *k);

/* The record hook's body: notes the job's end (what: OO_RES_SENT or
 * OO_RES_DEAD). Copies what it keeps; 0, or -1 out of memory (counted lost). */
int oo_ledger_sink_add(oo_ledger_sink *k, const oo_sched *s, const oo_job *j, oo_res_kind what,
                       const oo_outcome *o);

/* Flushes when due (see above); returns how long until it may be due
 * (seconds; a large number when nothing waits). */
double oo_ledger_sink_tick(oo_ledger_sink *k, double now_mono);

/* Writes every note now: OO_SPOOL_OK, or the failure (kept in *err and in
 * the sink's error; the notes stay for the next flush). */
int oo_ledger_sink_flush(oo_ledger_sink *k, oo_spool_err *err);

typedef struct oo_sink_stats {
    long long written, errors, lost, waiting;
    char error[512];
} oo_sink_stats;
void oo_ledger_sink_stats(oo_ledger_sink *k, oo_sink_stats *out);

#endif
