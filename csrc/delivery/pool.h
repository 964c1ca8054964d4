/* The libcurl slot pool: a fixed set of easy handles (one per request in
 * flight) on one curl multi handle, driven by socket events. The one place
 * easy handles are set up for concurrent delivery: the libcurl driver
 * (driver_curl.h) uses it for send_batch and for the queue's thread alike.
 * A finished transfer's connection follows the reuse rule (oo_http_distrust)
 * before done() sees it.
 *
 * Not thread-safe by itself: one thread drives it; another may only call
 * oo_pool_wakeup(). */
#ifndef OO_POOL_H
#define OO_POOL_H

#include <poll.h>
#include "http.h"

typedef struct oo_slot {
    CURL *e;
    oo_http_xfer x; /* response capture; x.headers unused (lists belong to the caller) */
    void *job;      /* the caller's pointer while busy */
    double started; /* monotonic seconds, for latency */
    int busy;
    /* what the handle was last prepared for: the same URL and header list
     * need only the new body set */
    const struct curl_slist *prepared_headers;
    char *prepared_url; /* NULL: not prepared (or last prepared for another method) */
} oo_slot;

typedef void (*oo_pool_done_fn)(void *ud, oo_slot *s, CURLcode rc);

typedef struct oo_pool {
    CURLM *m;
    CURLSH *share; /* the slots' one TLS session cache */
    oo_slot *slots;
    int n, nfree;
    int *free_stack;
    /* the sockets curl asks us to watch, plus the wake-up pipe at [0] */
    struct pollfd *pfds, *ready;
    int npfd, capfd;
    double timer_at;      /* monotonic; < 0 = no timer */
    int wake_rd, wake_wr; /* a pipe: oo_pool_wakeup() makes a waiting run return */
    int no_proxy;         /* no proxy configured or in the environment */
    int asleep;           /* the driver may be in (or entering) poll: adders wake it */
    int h2_cap; /* HTTP/2 asked for: connections capped until an answer tells the protocol */
} oo_pool;

/* Streams one HTTP/2 connection carries (CURLMOPT_MAX_CONCURRENT_STREAMS,
 * libcurl's default; RFC 9113 asks servers to allow at least 100). */
#define OO_POOL_H2_STREAMS 100

#include "clock.h"

/* Sets up n slots (1..1024) with the per-handle options. 0 on success,
 * else -1 with a message in err. */
int oo_pool_init(oo_pool *p, const oo_http_opts *o, int n, char *err, size_t errlen);
void oo_pool_free(oo_pool *p);

/* Starts a POST of body (not copied: it must live until the transfer is
 * done) — or, with body NULL, a DELETE — with the given header list (not
 * copied either) in a free slot. Returns the slot, or NULL when none is
 * free or curl refused (*rc set). */
oo_slot *oo_pool_start(oo_pool *p, void *job, const char *url, const struct curl_slist *headers,
                       const char *body, size_t len, CURLcode *rc);

/* Drives the transfers, waiting up to `wait` seconds until at least one
 * finishes or oo_pool_wakeup() is called; done() runs for each finished
 * transfer (the slot is free again when it returns). Returns how many
 * finished, or -1 on an unexpected curl/poll error (err filled). An
 * interrupted poll (EINTR) returns early with what it has. */
int oo_pool_run(oo_pool *p, double wait, oo_pool_done_fn done, void *ud, char *err, size_t errlen);

/* From any thread: makes a waiting oo_pool_run return. */
void oo_pool_wakeup(oo_pool *p);

/* Stops every transfer in flight; calls gone(ud, job) for each. */
void oo_pool_abort(oo_pool *p, void (*gone)(void *ud, void *job), void *ud);

static inline int oo_pool_busy(const oo_pool *p) { return p->n - p->nfree; }

#endif
