/* The in-flight limit (see limiter.h for the algorithm and its constants). */
#include "limiter.h"

#include <string.h>

void oo_limiter_init(oo_limiter *l, int max, int adaptive, int initial) {
    memset(l, 0, sizeof *l);
    l->max = max > 0 ? max : 1;
    l->adaptive = adaptive;
    if (!adaptive) {
        l->limit = l->max;
        return;
    }
    if (initial <= 0) initial = OO_LIM_INITIAL;
    l->limit = initial < l->max ? initial : l->max;
    l->slow_start = 1;
    l->backed_off_at = -1.0;
    l->win_since = -1.0;
    l->win_target = l->limit;
}

/* ------------------------------------------------------------------ */
/* Fixed: halve on a 429, +1 per `limit` successes                     */

static void fixed_done(oo_limiter *l, oo_lim_signal sig) {
    if (sig == OO_LIM_THROTTLED) {
        l->limit = l->limit > 1 ? l->limit / 2 : 1;
        l->grow = 0;
    } else if (sig == OO_LIM_OK && l->limit < l->max && ++l->grow >= l->limit) {
        l->limit++;
        l->grow = 0;
    }
}

/* ------------------------------------------------------------------ */
/* Adaptive                                                            */

static void new_window(oo_limiter *l, double now) {
    l->win_target = l->limit;
    l->win_since = now;
    l->win_done = l->win_full = l->win_signal = l->win_new = 0;
    l->lat_n = 0;
    l->lat_sum = 0;
}

/* `cap`: what the signal says the server held (< 1: nothing). */
static void back_off(oo_limiter *l, double now, int cap) {
    int before = l->limit;
    int next = (int)((double)before * OO_LIM_BACKOFF);
    if (next >= before) next = before - 1;
    if (cap >= 1 && cap < next) next = cap;
    l->limit = next > 1 ? next : 1;
    l->w_max = before;
    l->probe = 0;
    l->slow_start = 0;
    l->backed_off_at = now;
    new_window(l, now);
}

static double baseline(const oo_limiter *l) {
    if (l->base_cur > 0 && (l->base_prev <= 0 || l->base_cur < l->base_prev)) return l->base_cur;
    return l->base_prev;
}

/* The window's mean latency against the baseline: 1 when it rose. */
static int latency_rose(oo_limiter *l) {
    double mean, base;
    /* too few to say; or connections were opened: their handshakes cost
     * the client CPU time that shows in the others' latency, not queueing */
    if (l->lat_n < 4 || l->win_new) return 0;
    mean = l->lat_sum / l->lat_n;
    if (l->base_cur <= 0 || mean < l->base_cur) l->base_cur = mean;
    if (++l->epoch_windows >= OO_LIM_EPOCH) { /* a path that got slower for good becomes the norm */
        l->base_prev = l->base_cur;
        l->base_cur = 0;
        l->epoch_windows = 0;
    }
    base = baseline(l);
    return base > 0 && mean > base * OO_LIM_LAT_RATIO && mean - base > OO_LIM_LAT_SLACK;
}

static void grow(oo_limiter *l) {
    int next;
    if (l->limit >= l->max) return;
    if (l->slow_start) {
        next = l->limit * 2;
    } else if (l->w_max && l->limit >= l->w_max - 1 && l->limit <= l->w_max + 1) {
        if (++l->probe < OO_LIM_PROBE_WINDOWS) return; /* near the edge: rarely */
        l->probe = 0;
        next = l->limit + 1;
    } else {
        next = l->limit + (l->limit / OO_LIM_GROWTH > 1 ? l->limit / OO_LIM_GROWTH : 1);
        if (l->w_max && l->limit < l->w_max - 1 && next > l->w_max - 1) next = l->w_max - 1;
    }
    l->limit = next < l->max ? next : l->max;
    if (l->w_max && l->limit > l->w_max + 2) l->w_max = 0; /* the edge moved */
}

static void window_end(oo_limiter *l, double now) {
    if (latency_rose(l)) {
        back_off(l, now, 0);
        return;
    }
    if (!l->win_signal && l->win_full) grow(l);
    new_window(l, now);
}

void oo_limiter_done(oo_limiter *l, double started, int load, double now, int new_connection,
                     oo_lim_signal sig, int in_flight) {
    if (!l->adaptive) {
        fixed_done(l, sig);
        return;
    }
    if (sig == OO_LIM_THROTTLED || sig == OO_LIM_OVERLOAD) {
        /* a request sent before the last back-off reports the old limit;
         * a 429 says the server held the `load - 1` sent before it */
        if (started >= l->backed_off_at) back_off(l, now, sig == OO_LIM_THROTTLED ? load - 1 : 0);
        else l->win_signal = 1;
        return;
    }
    /* a window judges the current limit: what was sent before it began
     * (under a smaller limit) does not count toward it */
    if (started < l->win_since) return;
    if (in_flight >= l->win_target) l->win_full = 1;
    if (new_connection) l->win_new = 1;
    if (sig == OO_LIM_OK && !new_connection) {
        l->lat_sum += now - started;
        l->lat_n++;
    }
    if (++l->win_done >= l->win_target) window_end(l, now);
}
