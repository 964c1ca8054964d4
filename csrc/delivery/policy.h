/* The one retry policy: given a classified outcome (classify.h), how many
 * attempts were made and how old the order is, decide what happens next.
 * The libcurl engine (thread or not) calls it in C; the nginx engine and
 * the synchronous send loop call it through Lua (core.policy_new). The
 * jitter value r in [0, 1) comes from the caller so tests can fix it.
 *
 *   delivered                    ACK
 *   stop (bad credentials)       STOP: nothing more with these credentials
 *   not retryable                DEAD ("rejected")
 *   retryable, within limits     RETRY after delay(attempts, Retry-After)
 *   past max_attempts            DEAD ("attempts")
 *   next try past max_age        DEAD ("expired")
 *
 * delay: a usable Retry-After (seconds or an HTTP date; capped at
 * retry_after_max) else full jitter r * min(backoff_max, base * 2^(n-1));
 * never below backoff_floor (a Retry-After of 0 included).
 * The 429 rule, the same for every engine: a 429 holds back every new
 * request of the engine for the order's delay (`pause`: its Retry-After or
 * the backoff) and lowers the number of requests in flight (`slow_down`:
 * halved, growing back by one per window of successes; the libcurl
 * engine's adaptive limit backs off its own way, limiter.h). Another
 * retryable answer (a 503 with Retry-After, say) delays only its own order. */
#ifndef OO_POLICY_H
#define OO_POLICY_H

#include "classify.h"

typedef struct oo_policy {
    int max_attempts; /* attempts in all, the first included; 0 = no limit */
    double max_age;   /* seconds since the order was queued; 0 = no limit */
    double backoff_base, backoff_max, backoff_floor, retry_after_max;
} oo_policy;

typedef enum { OO_ACK = 0, OO_RETRY, OO_DEAD, OO_STOP } oo_action;

typedef struct oo_decision {
    oo_action action;
    double delay;    /* RETRY: seconds until the next attempt */
    double pause;    /* seconds every new request of the engine waits; 0 none */
    int slow_down;   /* 1: halve the requests in flight (a 429) */
    const char *why; /* DEAD: "rejected" | "attempts" | "expired"; STOP: "credentials" */
} oo_decision;

void oo_policy_defaults(oo_policy *p);

/* Seconds before attempt `attempt` + 1, given the Retry-After seconds
 * (-1 none) and r in [0, 1). */
double oo_policy_delay(const oo_policy *p, int attempt, double retry_after, double r);

void oo_policy_decide(const oo_policy *p, const oo_outcome *o, int attempts, double age, double r,
                      oo_decision *d);

/* A jitter value in [0, 1) from a per-owner xorshift state, and a seed for
 * one (time, pid and an address: distinct per process and object). */
double oo_jitter(unsigned long long *state);
unsigned long long oo_jitter_seed(const void *salt);

/* Reads a policy from the Lua table at idx (missing fields: defaults),
 * trusting the Lua options layer to have checked it (retry.schema). */
void oo_policy_read(lua_State *L, int idx, oo_policy *p);

void oo_policy_register(lua_State *L);

#endif
