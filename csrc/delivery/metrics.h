/* Delivery metrics, counted once in the one core: the libcurl engine
 * counts here directly, the nginx engine and the synchronous send loop
 * through core.metrics_new() (the same struct, the same rules). The table
 * shape, the Prometheus names and their meanings: optimizely.offline.metrics
 * (Lua). Counters only grow. */
#ifndef OO_METRICS_H
#define OO_METRICS_H

#include "classify.h"

/* Request latency buckets, upper bounds in seconds (+Inf implied). */
#define OO_LAT_BUCKETS 12
extern const double oo_lat_bounds[OO_LAT_BUCKETS];

#define OO_FAIL_LABELS 32 /* distinct {kind, status, code, channel} kept; the rest counted apart */
#define OO_CHAN_LABELS 16 /* distinct channels kept (the engine allows 64; more is unusual) */
#define OO_LABEL_MAX 40   /* bytes in a label value */
#define OO_CHAN_NAME (OO_LABEL_MAX + 1)
#define OO_SECRETS 64 /* secrets a metrics object keeps out of its labels */

typedef struct oo_fail_label {
    char kind[OO_LABEL_MAX + 1];
    int status;
    char code[OO_LABEL_MAX + 1];
    char channel[OO_CHAN_NAME];
    long long n;
} oo_fail_label;

/* What is kept of a secret to tell whether a label echoes it: its length
 * and hashes of its lower-cased whole, first and last OO_ECHO_MIN bytes
 * (never the secret itself: the token stays in the headers). */
#define OO_ECHO_MIN 8
typedef struct oo_secret_print {
    size_t len;
    unsigned long long whole, head, tail;
} oo_secret_print;

typedef struct oo_chan_count {
    char name[OO_CHAN_NAME]; /* the label */
    char raw[OO_CHAN_NAME];  /* the name it was first counted under: the fast lookup */
    long long sent, failed;
} oo_chan_count;

/* Why an order was skipped (the ledger had it: never sent again), as
 * the metric's `reason` label says it: "already_sent" (acknowledged
 * before, the same bytes), "in_flight" (another run or process holds it
 * now), "other" (a reason this version does not know: never a free-form
 * label value). */
#define OO_SKIP_REASONS 3
extern const char *const oo_skip_reasons[OO_SKIP_REASONS];

typedef struct oo_metrics {
    long long queued;  /* orders accepted for delivery */
    long long sent;    /* orders the endpoint acknowledged */
    long long failed;  /* orders given up (dead, or not sent after a stop, or dropped) */
    long long dead;    /* of which dead-lettered / rejected for good */
    long long invalid; /* orders refused by validation before any request */
    long long skipped[OO_SKIP_REASONS]; /* not sent: the ledger had them (by reason) */
    long long changed;                  /* not sent: the ledger had another version (or a cancel) */
    long long retried;                  /* attempts scheduled again */
    long long throttled;                /* 429 answers */
    long long requests;                 /* HTTP requests made (attempts) */
    long long bytes_sent;               /* request body bytes */
    long long lat_count;
    double lat_sum;
    long long lat_buckets[OO_LAT_BUCKETS + 1]; /* non-cumulative; last = +Inf */
    int nfail, nchan;
    oo_fail_label fail[OO_FAIL_LABELS];
    long long fail_other; /* failures whose label did not fit */
    oo_chan_count chan[OO_CHAN_LABELS];
    int nsecrets;
    oo_secret_print secrets[OO_SECRETS];
} oo_metrics;

void oo_metrics_init(oo_metrics *m);

/* Keeps `secret` (a site token; NULL or "" ignored) out of m's labels. */
void oo_metrics_secret(oo_metrics *m, const char *secret);

/* The label value to show for s (NULL: ""): s itself when it is 1 to
 * OO_LABEL_MAX bytes of [A-Za-z0-9_.-] and echoes none of m's secrets (m may
 * be NULL), "" for "", else "other". out has OO_LABEL_MAX + 1 bytes. Every
 * label of the metrics passes here, so the Prometheus text is always valid
 * UTF-8 without control bytes, and no secret reaches it. */
const char *oo_metrics_label(const oo_metrics *m, const char *s, char *out);

/* One attempt: its latency (seconds) and request bytes. */
void oo_metrics_attempt(oo_metrics *m, double latency, size_t bytes);

/* One order acknowledged; channel may be NULL (unknown). */
void oo_metrics_sent(oo_metrics *m, const char *channel);

/* One order skipped for `reason` (an oo_skip_reasons name; another counts
 * as "other"). */
void oo_metrics_skipped(oo_metrics *m, const char *reason);

/* One order given up, by its last outcome; channel may be NULL. */
void oo_metrics_failed(oo_metrics *m, const oo_outcome *o, int dead, const char *channel);

/* Pushes the metrics as a Lua table (see optimizely.offline.metrics). */
void oo_metrics_push(lua_State *L, const oo_metrics *m);

void oo_metrics_register(lua_State *L);

#endif
