/* The queue's delivery thread (optimizely.offline.queue, outside nginx).
 * It drives one engine (engine.h): the same scheduler (sched.h),
 * classifier and policy send_batch uses, with the libcurl driver
 * (driver_curl.h), from a thread of its own that never touches a Lua
 * state. The caller pushes encoded orders into the scheduler's inbox
 * (memory mode) or into the SQLite spool (the scheduler's feed hook claims
 * them); it collects results when it polls. Its Lua binding is l_worker.c.
 *
 * Signals are blocked in the thread; curl_global_init runs before it
 * exists; a forked child gets a new worker (the binding checks the pid)
 * and never inherits the parent's jobs. */
#ifndef OO_WORKER_H
#define OO_WORKER_H

#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

#include "engine.h"
#include "spool.h"

typedef struct oo_worker {
    oo_engine e;
    pthread_t thread;
    int started, stop, exited; /* under e.s.mu */
    int abandoned;             /* close timed out: the thread frees the worker when it ends */
    pid_t pid;
    size_t max_queue;
    /* the spool: the thread's own connection (NULL in memory mode) */
    oo_spool *spool;
    double lease, spool_poll;
    double last_claim; /* monotonic (thread only) */
    oo_spool_rows rows;
    oo_spool_rows deps; /* an amend's new versions ended dead with their DELETE (thread only) */
    /* acks not written yet (thread only): row ids and their outcomes for
     * the ledger (OO_LEDGER_SENT or _WARNED), written in one transaction */
    long long *acks;
    int *ack_outcomes;
    size_t nacks, capacks;
    /* a cancel row's URL: prefix .. the refCode as a path segment .. suffix */
    char *cancel_prefix, *cancel_suffix;
    double ack_since;  /* monotonic: when the oldest of them came */
    int store_drained; /* under e.s.mu: the last claim found nothing more due (and no put since) */
    long long storage_errors;                                 /* under e.s.mu */
    char storage_error[sizeof(((oo_spool_err *)0)->message)]; /* the last one, under e.s.mu */
} oo_worker;

/* What the caller sets before the thread starts: e (set up), pid,
 * max_queue, lease, spool_poll, cancel_prefix and cancel_suffix
 * (malloc'd: the worker frees them); e.s.hook_ud must be the worker. */

/* Durable jobs: the thread gets its own connection to main's file
 * (oo_spool_reopen) and the scheduler the spool hooks. OO_SPOOL_OK or an
 * error in err. */
int oo_worker_use_spool(oo_worker *w, oo_spool *main, oo_spool_err *err);

/* Starts the thread (every signal blocked in it). 0, or pthread_create's
 * error. */
int oo_worker_start(oo_worker *w);

/* Stops the thread; waits up to timeout seconds. 1 when it is gone (the
 * caller frees the worker); 0 when it is still running (a transfer or a
 * SQLite lock outlived the timeout): it is detached and frees the worker
 * itself when it ends, so the caller must not touch the worker again. */
int oo_worker_stop(oo_worker *w, double timeout);

/* A worker whose thread never started: its memory jobs reported as
 * dropped (collected with oo_sched_collect). */
void oo_worker_drop_unstarted(oo_worker *w);

void oo_worker_free(oo_worker *w);

/* n orders were put in the spool: they count as queued, and the thread
 * claims at once instead of at its next spool_poll. */
void oo_worker_notify(oo_worker *w, long long n);

/* Returns at once when results wait to be collected; else blocks until
 * the thread reports something (a result, going idle) or the timeout
 * (seconds, at most an hour). With has_seen, blocks until the progress
 * (settles) moves past `seen` instead, even when idle. Returns idle:
 * nothing queued, retrying or in flight in memory and, with a spool, the
 * thread's last look found nothing more due there; *progress: the count of
 * the times the thread went idle and wrote its acks. */
int oo_worker_wait(oo_worker *w, double timeout, int has_seen, unsigned long seen,
                   unsigned long *progress);

typedef struct oo_worker_stats {
    int running;
    long long storage_errors;
    char storage_error[sizeof(((oo_spool_err *)0)->message)]; /* "" when none */
} oo_worker_stats;

/* The worker's own counters, read under its lock. */
void oo_worker_read_stats(oo_worker *w, oo_worker_stats *st);

#endif
