/* The libcurl driver: moves the scheduler's jobs (sched.h) over the slot
 * pool (pool.h, curl multi) and hands every answer back. It knows no HTTP
 * status, no retry and no pause: the scheduler decides all of that.
 *
 * Used by send_batch from the calling thread (l_engine.c: core.engine_new)
 * and by the queue's own thread (worker.c). One thread drives it (turn,
 * drop_all, free); any thread may add jobs to the scheduler, which wakes
 * the driver through oo_pool_wakeup when it may be waiting. */
#ifndef OO_DRIVER_CURL_H
#define OO_DRIVER_CURL_H

#include "pool.h"
#include "sched.h"

typedef struct oo_curl {
    oo_sched *s;
    oo_pool pool;
    struct curl_slist **headers; /* per channel of s: its request headers */
    int nchan;
    char err[256]; /* the last pool error */
} oo_curl;

/* Sets up the driver for s: a pool of s->cfg.concurrency slots with the
 * HTTP options, and the channels' header lists (taken: freed by
 * oo_curl_free, also on failure). Installs the wake-up in s. 0 on
 * success, else -1 with a message in err. */
int oo_curl_init(oo_curl *d, oo_sched *s, const oo_http_opts *ho, struct curl_slist **headers,
                 int nchan, char *err, size_t errlen);

/* Stops every transfer (their jobs stay the scheduler's, freed by
 * oo_sched_free) and frees the pool and the header lists. */
void oo_curl_free(oo_curl *d);

/* One round: start what may start, wait up to max_wait seconds for
 * transfers (or a wake-up), hand back what finished. Returns how many
 * finished, or -1 on an unexpected pool error (d->err). */
int oo_curl_turn(oo_curl *d, double max_wait);

/* Aborts the transfers in flight and takes every unsettled job out of the
 * scheduler: store jobs released, memory jobs handed to fn (which takes
 * each; NULL frees them). */
void oo_curl_drop_all(oo_curl *d, void (*fn)(void *ud, oo_job *j), void *ud);

/* From any thread: makes a waiting turn return. */
void oo_curl_wakeup(oo_curl *d);

#endif
