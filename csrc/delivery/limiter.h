/* The in-flight limit of the libcurl engine: how many requests it keeps
 * in flight, between 1 and the configured concurrency (the pool's slots).
 * One place, used by the engine for send_batch and the queue alike; the
 * driver thread alone calls these (the engine publishes `limit` to other
 * threads under its mutex).
 *
 * Fixed (adaptive off): the limit starts at the maximum; a 429 halves it
 * and it grows back by one per `limit` successes.
 *
 * Adaptive (on): AIMD with a slow start, a latency check and a cautious
 * probe near the last limit that was too high. A *window* is `limit`
 * finished requests, about one round trip when the engine uses its limit.
 *   start       limit = initial (OO_LIM_INITIAL, at most the maximum)
 *   slow start  until the first back-off, a window without a signal in
 *               which the limit was reached doubles the limit
 *   growth      then by max(1, limit / OO_LIM_GROWTH) per such window (about
 *               +6 % a round trip: 8 to 256 in slow start, back from a
 *               back-off in a few dozen round trips), up to one below the
 *               limit that last backed off (`w_max`); within one of w_max,
 *               +1 per OO_LIM_PROBE_WINDOWS windows only (the edge is
 *               probed rarely, so few requests hit it); past w_max + 2 the
 *               edge is forgotten (the capacity moved)
 *   windows     only requests started since the window began count toward
 *               it: the verdict is on the current limit (a doubling is
 *               judged by what was sent at the doubled limit)
 *   back-off    a 429, a retryable 5xx or a timeout — from a request started
 *               after the previous back-off (older ones tell nothing new) —
 *               or a window whose mean latency exceeds OO_LIM_LAT_RATIO times
 *               the baseline and the baseline by OO_LIM_LAT_SLACK seconds
 *               (windows in which connections opened are not judged: the
 *               handshakes' CPU shows in the other requests' latency):
 *               limit = floor(limit * OO_LIM_BACKOFF) (at least one less,
 *               at least 1), and for a 429 at most the number of requests
 *               that were in flight before the refused one was sent (the
 *               server held those); w_max = the limit before
 *   baseline    the smallest window mean latency over the last one or two
 *               epochs of OO_LIM_EPOCH windows (it may rise when the path
 *               does); only requests on reused connections count (a new
 *               connection's TCP and TLS handshakes are not queueing)
 * The limit never exceeds the maximum. */
#ifndef OO_LIMITER_H
#define OO_LIMITER_H

#define OO_LIM_INITIAL 8
#define OO_LIM_BACKOFF 0.9
#define OO_LIM_GROWTH 16
#define OO_LIM_PROBE_WINDOWS 16
#define OO_LIM_LAT_RATIO 3.0
#define OO_LIM_LAT_SLACK 0.02
#define OO_LIM_EPOCH 64

/* What a finished request says about the load. */
typedef enum {
    OO_LIM_OK = 0,    /* delivered */
    OO_LIM_NEUTRAL,   /* failed for a reason that is not load (a 400, a refused connection) */
    OO_LIM_THROTTLED, /* 429 */
    OO_LIM_OVERLOAD   /* a retryable 5xx or a timeout */
} oo_lim_signal;

typedef struct oo_limiter {
    int max, limit, adaptive;
    int grow; /* fixed: successes toward +1 */
    /* adaptive */
    int slow_start;       /* no back-off yet */
    int w_max;            /* the limit that last backed off; 0 none */
    int probe;            /* windows spent near w_max */
    double backed_off_at; /* monotonic */
    int win_target, win_done, win_full, win_signal, win_new;
    double win_since; /* monotonic: the window counts requests started since */
    int lat_n;
    double lat_sum;
    double base_cur, base_prev; /* per-epoch minima of window mean latency; 0 none */
    int epoch_windows;
} oo_limiter;

/* max: the pool's slots (>= 1); initial: where an adaptive limit starts
 * (<= 0: OO_LIM_INITIAL), capped at max. */
void oo_limiter_init(oo_limiter *l, int max, int adaptive, int initial);

/* One finished request: when it started (monotonic) and how many were in
 * flight then (itself included), when it finished, whether it opened a
 * connection, what it says, and how many requests are in flight now
 * (itself included). */
void oo_limiter_done(oo_limiter *l, double started, int load, double now, int new_connection,
                     oo_lim_signal sig, int in_flight);

#endif
