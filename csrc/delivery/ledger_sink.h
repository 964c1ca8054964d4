/* The ledger behind a scheduler's record hook (sched.h): every job that
 * reaches its end is noted here by the driver's thread — a POST delivered
 * as "sent" or "warned", a POST given up as "dead", a DELETE delivered as
 * "cancelled" (a DELETE given up changes nothing) — and the notes are
 * written to the ledger in batches, one transaction per write (ledger.h:
 * oo_ledger_record, which also drops the orders' reservations).
 *
 * Used by send_batch's engine (l_engine.c), the queue's thread without a
 * spool (worker.c) and the Lua drivers' schedulers (l_sched.c: client:send,
 * the nginx queue's memory and shared-dict stores). With a spool the spool
 * writes its ledger rows itself, in the transaction of each ack.
 *
 * Two ways to write:
 *   - in the driver's thread (the default): oo_ledger_sink_tick() writes
 *     once max_batch notes wait or the oldest waited `window` seconds (0:
 *     at once), oo_ledger_sink_flush() now;
 *   - on a thread of its own (oo_ledger_sink_start: send_batch), so that
 *     the SQLite work overlaps the requests in flight instead of holding
 *     the driver up: add only queues a note, the thread writes on the same
 *     rule, flush asks it to write everything now and waits. The thread
 *     also looks batches up and reserves them (oo_ledger_sink_reserve,
 *     then _answers): the next batch is reserved while the current one is
 *     being sent.
 *
 * What the thread derived from a body when it reserved it (refCode,
 * fingerprint, report fields: oo_ledger_entry) is kept, keyed by the body's
 * bytes, until that order's note is written: the body is parsed once, not
 * at reserve and again at record. The memo is bounded (the oldest entries
 * go: their notes are then parsed again).
 *
 * A note not written yet is an order the endpoint has but the ledger does
 * not know: after a kill -9 it is one of the orders in flight, which a
 * later run may send again. A failed write keeps its notes for the next
 * one (a busy file, a full disk), OO_SINK_RETRY seconds later unless a
 * flush asks, and is counted; past OO_SINK_MAX notes waiting, the oldest
 * are given up (counted in `lost`).
 *
 * Threads: add, tick, flush, reserve and answers from the driver's thread
 * (one at a time); the counters (oo_ledger_sink_stats) from any. */
#ifndef OO_LEDGER_SINK_H
#define OO_LEDGER_SINK_H

#include <pthread.h>
#include <stddef.h>

#include "ledger.h"
#include "sched.h"

#define OO_SINK_MAX 100000
#define OO_SINK_RETRY 1.0 /* seconds between writes after one failed */

typedef struct oo_sink_note {
    char *body; /* POST: the body sent (its refCode, fingerprint, report fields) */
    size_t body_len;
    char *ref; /* DELETE: the refCode cancelled */
    size_t ref_len;
    const char *channel; /* the scheduler's channel name (lives as long as it) */
    int outcome;         /* OO_LEDGER_* */
} oo_sink_note;

/* A batch to look up and reserve on the sink's thread (copies of the
 * caller's strings: the items point into `data`). */
typedef struct oo_sink_request {
    oo_ledger_item *items;
    size_t n;
    char *data;
    char channel[256]; /* the scope's */
    double lease;
    int state; /* 0 none, 1 asked, 2 answered */
    int code;  /* answered: OO_SPOOL_OK or the failure (err) */
    oo_spool_err err;
} oo_sink_request;

typedef struct oo_ledger_sink {
    oo_ledger *l; /* retained: closed by oo_ledger_sink_free */
    char host[256], site[256];
    size_t max_batch;   /* default 256 */
    double window;      /* seconds, default 0.02 */
    pthread_mutex_t mu; /* below, and with a thread everything */
    pthread_cond_t cv;  /* work for the thread; work done */
    oo_sink_note *v;
    size_t n, cap;
    double first;    /* monotonic: when the oldest note came */
    double retry_at; /* monotonic: after a failed write, not before (unless flushed) */
    int threaded, stop, writing, flush_asked;
    pthread_t thread;
    oo_sink_request req;
    struct oo_sink_memo *memo; /* the thread's: entries of the orders it reserved */
    long long written, errors, lost;
    char error[512]; /* the last failure, "" none */
} oo_ledger_sink;

/* Sets up the sink on l (retained) under the scope's host and site. */
void oo_ledger_sink_init(oo_ledger_sink *k, oo_ledger *l, const char *host, const char *site);
/* Starts the sink's own thread: 0, or -1 (then it writes in the driver's
 * thread, as before). */
int oo_ledger_sink_start(oo_ledger_sink *k);
/* Writes what waits (best effort), stops the thread, frees everything. */
void oo_ledger_sink_free(oo_ledger_sink *k);

/* The record hook's body: notes the job's end (what: OO_RES_SENT or
 * OO_RES_DEAD). Copies what it keeps; 0, or -1 out of memory (counted lost). */
int oo_ledger_sink_add(oo_ledger_sink *k, const oo_sched *s, const oo_job *j, oo_res_kind what,
                       const oo_outcome *o);

/* Without a thread: writes when due (see above). Returns how long until a
 * write may be due (seconds; a large number when nothing waits). With a
 * thread: 1e9 (the thread keeps its own time). */
double oo_ledger_sink_tick(oo_ledger_sink *k, double now_mono);

/* Writes every note now (with a thread: has it written and waits):
 * OO_SPOOL_OK, or the failure (in *err and in the sink's error; the notes
 * stay for the next write). */
int oo_ledger_sink_flush(oo_ledger_sink *k, oo_spool_err *err);

/* With a thread: looks items[0..n) up and reserves them there (ledger.h:
 * oo_ledger_reserve under sc, for lease seconds); the strings are copied.
 * One request at a time: 0, or -1 when one is still unanswered or out of
 * memory. */
int oo_ledger_sink_reserve(oo_ledger_sink *k, const oo_ledger_scope *sc,
                           const oo_ledger_item *items, size_t n, double lease);
/* Waits for the answer: the items (state, prev_outcome, prev_at, until,
 * mine, reserved filled; valid until the next request) and their count,
 * or NULL with *err. */
const oo_ledger_item *oo_ledger_sink_answers(oo_ledger_sink *k, size_t *n, oo_spool_err *err);

typedef struct oo_sink_stats {
    long long written, errors, lost, waiting;
    char error[512];
} oo_sink_stats;
void oo_ledger_sink_stats(oo_ledger_sink *k, oo_sink_stats *out);

#endif
