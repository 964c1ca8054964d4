/* The background delivery worker behind optimizely.offline.queue (outside
 * nginx). A thread of its own owns a curl multi handle with a pool of easy
 * handles and never touches the Lua state: the Lua side hands it encoded
 * bytes through a mutex-protected queue (or the SQLite spool) and collects
 * results from another list when it polls/flushes.
 *
 * Retry decisions are made here, so delivery goes on while Lua is busy
 * elsewhere; *what* is retryable comes from optimizely.offline.retry (the
 * Lua side passes its status and kind tables in), and the delay follows the
 * same formula (full jitter, Retry-After capped). Signals are blocked in the
 * thread; curl_global_init runs before it exists; a forked child gets a new
 * thread (the pid is checked) and never inherits the parent's queue.
 *
 * With a spool the file is the queue: the thread claims due rows under a
 * lease (plus a small prefetch), acks a delivered row, stores a retry's
 * attempt count and next time in the row, and moves permanent failures to
 * the dead letters. Leased rows go back when the thread stops. Counting
 * rule: a job is always in exactly one of ready / retry / in_flight (taken
 * off a list and counted under one lock), so "idle" is never seen early. */
#define _GNU_SOURCE
#include "core.h"
#include "http.h"
#include "spool.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define OO_WORKER_MT "optimizely.offline.worker"
#define OO_RESULTS_MAX 100000 /* notifications kept for Lua; beyond, counted as dropped */
#define OO_RESULTS_BYTES_MAX (64u << 20) /* and their bodies at most this many bytes */
#define OO_RESULT_BODY_MAX 65536

typedef struct oo_job {
    struct oo_job *next;
    long long spool_id; /* 0: in-memory job */
    double next_at;
    int attempts;
    size_t body_len, ref_len;
    char *ref;
    char data[1]; /* body, NUL, ref, NUL */
} oo_job;

enum { OUT_SENT = 1, OUT_DEAD = 2 };

typedef struct oo_result {
    struct oo_result *next;
    int outcome, attempts, curl_code;
    long status;
    const char *kind; /* static string or NULL */
    char *ref, *body;
    size_t body_len;
    char retry_after[OO_HTTP_CAPTURE];
    char message[256];
} oo_result;

typedef struct oo_wslot {
    CURL *e;
    oo_http_xfer x;
    oo_job *job;
} oo_wslot;

typedef struct oo_worker {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* results arrived or the worker went idle */
    pthread_t thread;
    int started, stop, exited;
    int abandoned; /* close timed out: the thread frees the worker when it ends */
    int polling; /* the thread sleeps in curl_multi_poll: a push must wake it */
    int claim_hint; /* the Lua side put orders in the spool: claim now */
    pid_t pid;
    /* queues (under mu) */
    oo_job *ready_head, *ready_tail;
    oo_job *retry_head; /* sorted by next_at */
    size_t nready, nretry, in_flight, max_queue;
    oo_result *res_head, *res_tail;
    size_t nresults, results_bytes;
    double pause_until; /* a 429 holds back every request until then */
    /* counters (under mu) */
    long long pushed, sent, retried, dead, results_dropped;
    /* owned by the thread once started */
    CURLM *multi;
    oo_wslot *slots;
    int concurrency;
    oo_spool *spool; /* the worker's own connection, or NULL */
    double lease, spool_poll;
    double next_claim_at; /* no claim before then unless hinted (thread only) */
    double last_claim;    /* when the last claim ran (thread only) */
    oo_job *pre_head, *pre_tail; /* claimed rows waiting for a slot (thread only) */
    int npre;
    /* immutable configuration */
    char *url;
    char *token; /* the siteToken header's value: scrubbed from dead-letter messages */
    struct curl_slist *headers;
    int max_attempts;
    double backoff_base, backoff_max, backoff_floor, retry_after_max;
    unsigned char retry_status[600];
    int retry_network, retry_timeout;
    unsigned long long rng;
} oo_worker;

typedef struct oo_worker_ud {
    oo_worker *w;
} oo_worker_ud;

/* ------------------------------------------------------------- helpers */

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double rnd(oo_worker *w) { /* xorshift64*, per worker */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return (double)((w->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* The delay of optimizely.offline.retry.delay: a usable Retry-After wins
 * (capped); else full jitter over min(max, base * 2^(attempt-1)), floored. */
static double retry_delay(oo_worker *w, int attempt, const char *retry_after) {
    double cap, d;
    if (retry_after && retry_after[0]) {
        const char *p = retry_after;
        double ra = -1;
        while (*p == ' ') p++;
        if (*p >= '0' && *p <= '9') {
            char *end;
            ra = strtod(p, &end);
            while (*end == ' ') end++;
            if (*end) ra = -1;
        } else {
            time_t t = curl_getdate(p, NULL);
            if (t != -1) ra = (double)t - wall_now();
            if (ra < 0 && t != -1) ra = 0;
        }
        if (ra >= 0) return ra < w->retry_after_max ? ra : w->retry_after_max;
    }
    cap = w->backoff_base * pow(2.0, attempt - 1);
    if (cap > w->backoff_max) cap = w->backoff_max;
    d = rnd(w) * cap;
    {
        double fl = w->backoff_floor < cap ? w->backoff_floor : cap;
        return d > fl ? d : fl;
    }
}

/* A 2xx body is a failure only when its envelope says "status":"fail". */
static int envelope_fail(const char *b, size_t n) {
    const char *p = b, *end = b + n;
    if (!b || n == 0) return 0;
    while (p < end) {
        const char *k = memmem(p, (size_t)(end - p), "\"status\"", 8);
        if (!k) return 0;
        p = k + 8;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
        if (p >= end || *p != ':') continue;
        p++;
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
        if (end - p >= 6 && p[0] == '"' && strncasecmp(p + 1, "fail", 4) == 0 && p[5] == '"') return 1;
        return 0;
    }
    return 0;
}

static oo_job *job_new(const char *body, size_t blen, const char *ref, size_t rlen) {
    oo_job *j = (oo_job *)malloc(sizeof(oo_job) + blen + rlen + 1);
    if (!j) return NULL;
    memset(j, 0, sizeof *j);
    memcpy(j->data, body, blen);
    j->data[blen] = '\0';
    j->body_len = blen;
    j->ref = j->data + blen + 1;
    if (ref) memcpy(j->ref, ref, rlen);
    j->ref[rlen] = '\0';
    j->ref_len = rlen;
    return j;
}

static void ready_push(oo_worker *w, oo_job *j) {
    j->next = NULL;
    if (w->ready_tail) w->ready_tail->next = j; else w->ready_head = j;
    w->ready_tail = j;
    w->nready++;
}

static oo_job *ready_pop(oo_worker *w) {
    oo_job *j = w->ready_head;
    if (!j) return NULL;
    w->ready_head = j->next;
    if (!w->ready_head) w->ready_tail = NULL;
    w->nready--;
    return j;
}

static void retry_insert(oo_worker *w, oo_job *j) {
    oo_job **pp = &w->retry_head;
    while (*pp && (*pp)->next_at <= j->next_at) pp = &(*pp)->next;
    j->next = *pp;
    *pp = j;
    w->nretry++;
}

/* Adds a result for the Lua side (under mu). Nobody polling must not mean
 * unbounded memory: past OO_RESULTS_MAX results or OO_RESULTS_BYTES_MAX of
 * bodies the oldest go, counted in results_dropped (the orders themselves
 * were delivered or dead-lettered all the same). */
static void result_add(oo_worker *w, oo_result *r) {
    while (w->res_head && (w->nresults >= OO_RESULTS_MAX ||
                           w->results_bytes + r->body_len > OO_RESULTS_BYTES_MAX)) {
        oo_result *old = w->res_head;
        w->res_head = old->next;
        if (!w->res_head) w->res_tail = NULL;
        w->nresults--;
        w->results_bytes -= old->body_len;
        free(old->ref); free(old->body); free(old);
        w->results_dropped++;
    }
    r->next = NULL;
    if (w->res_tail) w->res_tail->next = r; else w->res_head = r;
    w->res_tail = r;
    w->nresults++;
    w->results_bytes += r->body_len;
}

static char *dupn(const char *s, size_t n) {
    char *p = (char *)malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* -------------------------------------------------------------- thread */

static void worker_free(oo_worker *w);
static void pre_release(oo_worker *w);

/* Starts j in slot s. The caller counted j in in_flight already, in the
 * same critical section that took it off a list: a job is never in no
 * count at all, or flush() could see "idle" while it is on its way. */
static void start_transfer(oo_worker *w, oo_wslot *s, oo_job *j) {
    CURLcode rc;
    s->job = j;
    s->x.body.len = 0;
    s->x.too_big = 0;
    s->x.retry_after[0] = s->x.content_type[0] = '\0';
    rc = oo_http_prepare(s->e, &s->x, "POST", w->url, j->data, j->body_len);
    if (rc == CURLE_OK) rc = curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, w->headers);
    curl_easy_setopt(s->e, CURLOPT_PRIVATE, (void *)s);
    if (rc != CURLE_OK || curl_multi_add_handle(w->multi, s->e) != CURLM_OK) {
        /* cannot happen with valid options; treat as a network failure next round */
        s->job = NULL;
        j->next_at = wall_now() + 1;
        pthread_mutex_lock(&w->mu);
        w->in_flight--;
        retry_insert(w, j);
        pthread_mutex_unlock(&w->mu);
    }
}

/* Copies src into dst (size n) as one printable line with every occurrence
 * of the token replaced: a dead letter's message may be shown anywhere. */
static void scrub_line(char *dst, size_t n, const char *src, size_t len, const char *token) {
    size_t i = 0, o = 0, tl = token ? strlen(token) : 0;
    static const char mark[] = "[REDACTED]";
    if (n == 0) return;
    while (i < len && o + 1 < n) {
        if (tl && len - i >= tl && memcmp(src + i, token, tl) == 0) {
            size_t k;
            for (k = 0; mark[k] && o + 1 < n; k++) dst[o++] = mark[k];
            i += tl;
            continue;
        }
        {
            unsigned char c = (unsigned char)src[i++];
            dst[o++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
        }
    }
    dst[o] = '\0';
}

static void finish_transfer(oo_worker *w, oo_wslot *s, CURLcode rc) {
    oo_job *j = s->job;
    long status = 0;
    int retryable, outcome = 0;
    const char *kind = NULL;
    double now = wall_now(), delay = 0;
    oo_spool_err serr;
    oo_result *r;
    s->job = NULL;
    curl_multi_remove_handle(w->multi, s->e);
    /* the body pointer is about to be freed with the job */
    curl_easy_setopt(s->e, CURLOPT_POSTFIELDS, (char *)NULL);
    j->attempts++;
    if (rc != CURLE_OK) {
        kind = oo_http_kind(rc);
        retryable = (strcmp(kind, "network") == 0 && w->retry_network) ||
                    (strcmp(kind, "timeout") == 0 && w->retry_timeout);
    } else {
        curl_easy_getinfo(s->e, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            if (envelope_fail(s->x.body.data, s->x.body.len)) { kind = "api"; retryable = 0; }
            else { outcome = OUT_SENT; retryable = 0; }
        } else {
            kind = "http";
            retryable = status > 0 && status < 600 && w->retry_status[status];
        }
    }
    if (!outcome && retryable && j->attempts < w->max_attempts) {
        delay = retry_delay(w, j->attempts, s->x.retry_after);
        j->next_at = now + delay;
        if (j->spool_id) {
            char why[64];
            if (status) snprintf(why, sizeof why, "%s %ld", kind, status);
            else snprintf(why, sizeof why, "%s (curl %d)", kind, (int)rc);
            /* attempts and next attempt time live in the row: a restart keeps
             * the backoff. If this fails the lease runs out and the row is
             * claimed again: late, never lost. */
            oo_spool_retry(w->spool, j->spool_id, j->next_at, why, &serr);
            if (j->next_at < w->next_claim_at) w->next_claim_at = j->next_at;
            free(j);
            j = NULL;
        }
        pthread_mutex_lock(&w->mu);
        w->in_flight--;
        w->retried++;
        if (status == 429 && now + delay > w->pause_until) w->pause_until = now + delay;
        if (j) retry_insert(w, j);
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        /* a pause may outlast the prefetched rows' lease: give them back */
        if (status == 429 && w->spool) pre_release(w);
        return;
    }
    if (!outcome) outcome = OUT_DEAD;
    r = (oo_result *)calloc(1, sizeof *r);
    if (r) {
        r->outcome = outcome;
        r->attempts = j->attempts;
        r->status = status;
        r->curl_code = (int)rc;
        r->kind = kind;
        r->ref = dupn(j->ref, j->ref_len);
        if (rc == CURLE_OK) {
            size_t n = s->x.body.len < OO_RESULT_BODY_MAX ? s->x.body.len : OO_RESULT_BODY_MAX;
            r->body = dupn(s->x.body.data ? s->x.body.data : "", n);
            r->body_len = r->body ? n : 0;
        } else {
            const char *m = s->x.errbuf[0] ? s->x.errbuf : curl_easy_strerror(rc);
            scrub_line(r->message, sizeof r->message, m, strlen(m), w->token);
        }
        memcpy(r->retry_after, s->x.retry_after, sizeof r->retry_after);
    }
    if (j->spool_id) {
        if (outcome == OUT_SENT) {
            oo_spool_ack(w->spool, j->spool_id, &serr);
        } else {
            /* the dead letter says why: the transport error, or the status
             * and the start of the response body (token scrubbed) */
            oo_spool_failure f;
            char msg[400], snippet[240];
            memset(&f, 0, sizeof f);
            f.kind = kind;
            f.status = (int)status;
            if (rc != CURLE_OK) {
                const char *m = s->x.errbuf[0] ? s->x.errbuf : curl_easy_strerror(rc);
                scrub_line(snippet, sizeof snippet, m, strlen(m), w->token);
                snprintf(msg, sizeof msg, "%s after %d attempt%s", snippet, j->attempts,
                         j->attempts == 1 ? "" : "s");
            } else {
                scrub_line(snippet, sizeof snippet, s->x.body.data ? s->x.body.data : "",
                           s->x.body.len, w->token);
                snprintf(msg, sizeof msg, "%s HTTP %ld after %d attempt%s%s%s",
                         strcmp(kind, "api") == 0 ? "order rejected:" : "server answered",
                         status, j->attempts, j->attempts == 1 ? "" : "s",
                         snippet[0] ? ": " : "", snippet);
            }
            f.message = msg;
            oo_spool_kill(w->spool, j->spool_id, &f, now, &serr);
        }
    }
    free(j);
    pthread_mutex_lock(&w->mu);
    w->in_flight--;
    if (outcome == OUT_SENT) w->sent++; else w->dead++;
    if (r) result_add(w, r);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int free_slots(oo_worker *w) {
    int i, n = 0;
    for (i = 0; i < w->concurrency; i++) if (!w->slots[i].job) n++;
    return n;
}

/* Claims are write transactions on the file the Lua side writes too, and
 * SQLite makes a writer that finds the lock taken sleep for a millisecond
 * or more. So a claim also fills a small prefetch list (up to `concurrency`
 * rows, started as slots free up: each waits for at most one transfer,
 * which the lease outlasts), and a claim that only follows a push waits
 * until CLAIM_GAP after the previous one: a pusher's puts then meet one
 * claim per few milliseconds instead of one per put. */
#define CLAIM_GAP 0.002

static void pre_push(oo_worker *w, oo_job *j) {
    j->next = NULL;
    if (w->pre_tail) w->pre_tail->next = j; else w->pre_head = j;
    w->pre_tail = j;
    w->npre++;
}

static oo_job *pre_pop(oo_worker *w) {
    oo_job *j = w->pre_head;
    if (!j) return NULL;
    w->pre_head = j->next;
    if (!w->pre_head) w->pre_tail = NULL;
    w->npre--;
    return j;
}

/* Prefetched rows go back to the spool (stop, or a 429 pause that may
 * outlast their lease). The in-flight count covered them: it drops too. */
static void pre_release(oo_worker *w) {
    oo_job *j;
    int n = 0;
    while ((j = pre_pop(w)) != NULL) {
        oo_spool_err serr;
        oo_spool_release(w->spool, j->spool_id, &serr);
        free(j);
        n++;
    }
    if (n) {
        pthread_mutex_lock(&w->mu);
        w->in_flight -= (size_t)n;
        pthread_mutex_unlock(&w->mu);
        w->next_claim_at = 0;
    }
}

/* Starts prefetched rows in the free slots. */
static void pre_start(oo_worker *w) {
    int i;
    for (i = 0; i < w->concurrency && w->pre_head; i++) {
        if (!w->slots[i].job) {
            start_transfer(w, &w->slots[i], pre_pop(w));
        }
    }
}

/* When the next claim may run (1e300: none needed now). room: rows wanted. */
static double claim_due(oo_worker *w, int nfree, int hint, int *room) {
    double due = w->next_claim_at;
    *room = nfree + (w->concurrency - w->npre);
    /* nothing to fill, or the prefetch still more than half full */
    if (*room <= 0 || (nfree == 0 && w->npre * 2 > w->concurrency)) return 1e300;
    if (hint && w->last_claim + CLAIM_GAP < due) due = w->last_claim + CLAIM_GAP;
    if (nfree == 0 && due < w->last_claim + CLAIM_GAP) due = w->last_claim + CLAIM_GAP;
    return due;
}

/* The spool is the queue: lease what is due into the free slots and the
 * prefetch list. Claims run only when there may be something to take: the
 * Lua side put orders (hint), slots free up after a full claim, a retry
 * fell due, or spool_poll passed (other processes' orders, expired leases). */
static void claim_from_spool(oo_worker *w, oo_spool_rows *rows, int room, double now) {
    oo_spool_err serr;
    size_t k;
    int i;
    w->last_claim = now;
    if (oo_spool_claim(w->spool, (size_t)room, w->lease, now, rows, &serr) != OO_SPOOL_OK) {
        w->next_claim_at = now + w->spool_poll; /* busy or failing: try again later */
        return;
    }
    /* leased rows count as in flight (prefetched ones too) */
    pthread_mutex_lock(&w->mu);
    w->in_flight += rows->n;
    pthread_mutex_unlock(&w->mu);
    for (k = 0; k < rows->n; k++) {
        oo_spool_row *row = &rows->v[k];
        oo_job *j = job_new(row->body, row->body_len, row->ref, row->ref ? row->ref_len : 0);
        if (!j) {
            oo_spool_release(w->spool, row->id, &serr);
            pthread_mutex_lock(&w->mu);
            w->in_flight--;
            pthread_mutex_unlock(&w->mu);
            continue;
        }
        j->spool_id = row->id;
        j->attempts = (int)row->attempts;
        for (i = 0; i < w->concurrency; i++) {
            if (!w->slots[i].job) { start_transfer(w, &w->slots[i], j); break; }
        }
        if (i == w->concurrency) pre_push(w, j);
    }
    if (rows->n >= (size_t)room) {
        w->next_claim_at = now; /* there may be more */
    } else {
        /* drained what is due: sleep until the next retry falls due (or poll) */
        double at;
        int found = 0;
        w->next_claim_at = now + w->spool_poll;
        if (oo_spool_next_due(w->spool, now, &at, &found, &serr) == OO_SPOOL_OK && found &&
            at < w->next_claim_at)
            w->next_claim_at = at > now ? at : now + 0.01;
    }
    oo_spool_rows_free(rows);
}

static void *worker_main(void *arg) {
    oo_worker *w = (oo_worker *)arg;
    oo_spool_rows rows;
    int i, abandoned;
    memset(&rows, 0, sizeof rows);
    w->next_claim_at = 0;
    w->last_claim = 0;
    for (;;) {
        int nfree = 0, hint, running = 0, left;
        double now = wall_now(), wait = w->spool ? w->spool_poll : 1.0;
        CURLMsg *msg;
        pthread_mutex_lock(&w->mu);
        if (w->stop) { pthread_mutex_unlock(&w->mu); break; }
        while (w->retry_head && w->retry_head->next_at <= now) {
            oo_job *j = w->retry_head;
            w->retry_head = j->next;
            w->nretry--;
            ready_push(w, j);
        }
        if (now >= w->pause_until) {
            for (i = 0; i < w->concurrency && w->ready_head; i++) {
                if (w->slots[i].job) continue;
                {
                    oo_job *j = ready_pop(w);
                    w->in_flight++; /* with the pop: never in no count */
                    pthread_mutex_unlock(&w->mu);
                    start_transfer(w, &w->slots[i], j);
                    pthread_mutex_lock(&w->mu);
                }
            }
        }
        hint = w->claim_hint;
        if (w->retry_head && w->retry_head->next_at - now < wait) wait = w->retry_head->next_at - now;
        if (w->pause_until > now && w->pause_until - now < wait) wait = w->pause_until - now;
        pthread_mutex_unlock(&w->mu);
        if (w->spool && now >= w->pause_until) {
            int room;
            pre_start(w);
            nfree = free_slots(w);
            if (now >= claim_due(w, nfree, hint, &room)) {
                if (hint) {
                    pthread_mutex_lock(&w->mu);
                    w->claim_hint = 0; /* this claim covers every put so far */
                    pthread_mutex_unlock(&w->mu);
                    hint = 0;
                }
                claim_from_spool(w, &rows, room, now);
                nfree = free_slots(w);
            }
            /* a claim due while there is room: wake for it (busy slots wake
             * us through their sockets when they finish) */
            {
                double due = claim_due(w, nfree, hint, &room);
                if (due - now < wait) wait = due - now;
            }
        }
        curl_multi_perform(w->multi, &running);
        while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
            oo_wslot *s = NULL;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            finish_transfer(w, s, msg->data.result);
            wait = 0;
        }
        if (wait < 0) wait = 0;
        pthread_mutex_lock(&w->mu);
        if (w->in_flight == 0 && w->nready == 0) pthread_cond_broadcast(&w->cv); /* idle */
        if (w->ready_head || w->stop) wait = 0; /* pushed while we worked */
        if (w->claim_hint && !hint && w->spool) { /* put while we worked */
            int room;
            double due = claim_due(w, free_slots(w), 1, &room) - wall_now();
            if (due < wait) wait = due;
        }
        w->polling = 1; /* from here a push wakes us (checked under the same lock) */
        pthread_mutex_unlock(&w->mu);
        if (wait > 0 || running > 0)
            curl_multi_poll(w->multi, NULL, 0, (int)(wait * 1000) + (wait > 0 ? 1 : 0), NULL);
        pthread_mutex_lock(&w->mu);
        w->polling = 0;
        pthread_mutex_unlock(&w->mu);
    }
    oo_spool_rows_free(&rows);
    /* Rows we hold leases on go back now, not when the lease runs out: a
     * queue reopened on the spool (or another process) takes them at once.
     * The server may have seen some of them: delivery is at-least-once. */
    if (w->spool) {
        pre_release(w);
        for (i = 0; i < w->concurrency; i++) {
            oo_wslot *s = &w->slots[i];
            if (s->job && s->job->spool_id) {
                oo_spool_err serr;
                oo_spool_release(w->spool, s->job->spool_id, &serr);
            }
        }
    }
    pthread_mutex_lock(&w->mu);
    w->exited = 1;
    abandoned = w->abandoned;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (abandoned) worker_free(w); /* nobody else holds it any more */
    return NULL;
}

/* ------------------------------------------------------------ lifetime */

static void free_jobs(oo_job *j) {
    while (j) { oo_job *n = j->next; free(j); j = n; }
}

static void free_results(oo_result *r) {
    while (r) { oo_result *n = r->next; free(r->ref); free(r->body); free(r); r = n; }
}

/* Frees everything the worker owns; the thread must be gone. */
static void worker_free(oo_worker *w) {
    int i;
    if (w->slots) {
        for (i = 0; i < w->concurrency; i++) {
            oo_wslot *s = &w->slots[i];
            if (s->job) { curl_multi_remove_handle(w->multi, s->e); free(s->job); }
            if (s->e) curl_easy_cleanup(s->e);
            oo_http_xfer_free(&s->x);
        }
        free(w->slots);
    }
    if (w->multi) curl_multi_cleanup(w->multi);
    if (w->spool) oo_spool_close(w->spool);
    free_jobs(w->pre_head);
    free_jobs(w->ready_head);
    free_jobs(w->retry_head);
    free_results(w->res_head);
    if (w->headers) curl_slist_free_all(w->headers);
    free(w->url);
    if (w->token) {
        memset(w->token, 0, strlen(w->token));
        free(w->token);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static int worker_start(oo_worker *w) {
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    /* the thread inherits a mask with every signal blocked: Ctrl-C and
     * friends stay with the Lua side's thread */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) w->started = 1;
    return rc;
}

/* Stops the thread; waits up to timeout seconds. 1 when it is gone (the
 * caller frees the worker); 0 when it is still running (a transfer or a
 * SQLite lock outlived the timeout): it is detached and frees the worker
 * itself when it ends, so the caller must not touch the worker again. */
static int worker_stop(oo_worker *w, double timeout) {
    struct timespec dl;
    pthread_t t;
    double end;
    if (!w->started) return 1;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_mutex_unlock(&w->mu);
    curl_multi_wakeup(w->multi);
    end = wall_now() + (timeout > 0 ? timeout : 0);
    dl.tv_sec = (time_t)end;
    dl.tv_nsec = (long)((end - (double)dl.tv_sec) * 1e9);
    if (dl.tv_nsec >= 1000000000L) dl.tv_nsec = 999999999L;
    if (pthread_timedjoin_np(w->thread, NULL, &dl) == 0) {
        w->started = 0;
        return 1;
    }
    pthread_mutex_lock(&w->mu);
    if (w->exited) { /* it ended just now */
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
        w->started = 0;
        return 1;
    }
    t = w->thread;
    w->abandoned = 1;
    pthread_mutex_unlock(&w->mu);
    pthread_detach(t);
    return 0;
}

/* ------------------------------------------------------------- Lua API */

static oo_worker *check_worker(lua_State *L) {
    oo_worker_ud *u = (oo_worker_ud *)luaL_checkudata(L, 1, OO_WORKER_MT);
    if (!u->w) luaL_error(L, "queue worker is closed");
    if (u->w->pid != getpid()) luaL_error(L, "queue worker belongs to another process (forked): make a new queue");
    return u->w;
}

static double opt_num(lua_State *L, int t, const char *k, double d) {
    double v;
    lua_getfield(L, t, k);
    v = lua_isnil(L, -1) ? d : (double)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/*** worker_new(cfg) -> worker
 * cfg = {http = <http_new opts>, url, headers = {...}, concurrency, max_attempts,
 *        backoff_base, backoff_max, backoff_floor, retry_after_max,
 *        retry_status = {503, ...}, retry_kinds = {"network", "timeout"},
 *        max_queue, spool = <spool object or nil>, lease, spool_poll} */
static int l_worker_new(lua_State *L) {
    oo_http_opts ho;
    oo_worker_ud *u;
    oo_worker *w;
    oo_http_xfer hx;
    int i, conc;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "http");
    oo_http_read_opts(L, lua_gettop(L), &ho); /* strings stay referenced by cfg */
    conc = (int)opt_num(L, 1, "concurrency", 4);
    luaL_argcheck(L, conc >= 1 && conc <= 256, 1, "concurrency must be 1..256");
    if (oo_http_global_init() != 0) return luaL_error(L, "worker_new: libcurl init failed");
    u = (oo_worker_ud *)lua_newuserdata(L, sizeof *u);
    u->w = NULL;
    oo_setmetatable(L, OO_WORKER_MT);
    w = (oo_worker *)calloc(1, sizeof *w);
    if (!w) return luaL_error(L, "worker_new: out of memory");
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    u->w = w;
    w->pid = getpid();
    w->concurrency = conc;
    w->max_attempts = (int)opt_num(L, 1, "max_attempts", 4);
    w->backoff_base = opt_num(L, 1, "backoff_base", 0.25);
    w->backoff_max = opt_num(L, 1, "backoff_max", 10);
    w->backoff_floor = opt_num(L, 1, "backoff_floor", 0.05);
    w->retry_after_max = opt_num(L, 1, "retry_after_max", 60);
    w->max_queue = (size_t)opt_num(L, 1, "max_queue", 10000);
    w->lease = opt_num(L, 1, "lease", 60);
    w->spool_poll = opt_num(L, 1, "spool_poll", 0.25);
    w->rng = (unsigned long long)(wall_now() * 1e6) ^ ((unsigned long long)getpid() << 32) ^ (uintptr_t)w;
    if (!w->rng) w->rng = 88172645463325252ULL;
    lua_getfield(L, 1, "url");
    w->url = strdup(luaL_checkstring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, 1, "retry_status");
    if (lua_istable(L, -1)) {
        int n = (int)oo_rawlen(L, -1);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            {
                long st = (long)lua_tointeger(L, -1);
                if (st > 0 && st < 600) w->retry_status[st] = 1;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "retry_kinds");
    if (lua_istable(L, -1)) {
        int n = (int)oo_rawlen(L, -1);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) == LUA_TSTRING) {
                if (strcmp(lua_tostring(L, -1), "network") == 0) w->retry_network = 1;
                if (strcmp(lua_tostring(L, -1), "timeout") == 0) w->retry_timeout = 1;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    /* headers: validated (no CR/LF) and built once */
    oo_http_xfer_init(&hx, 0);
    lua_getfield(L, 1, "headers");
    oo_http_build_headers(L, lua_gettop(L), &hx);
    lua_pop(L, 1);
    w->headers = hx.headers;
    {
        struct curl_slist *h;
        for (h = w->headers; h; h = h->next) {
            if (strncasecmp(h->data, "siteToken:", 10) == 0) {
                const char *v = h->data + 10;
                while (*v == ' ' || *v == '\t') v++;
                if (*v) w->token = strdup(v);
            }
        }
    }
    /* the spool: the worker gets its own connection to the caller's file */
    lua_getfield(L, 1, "spool");
    if (!lua_isnil(L, -1)) {
        oo_spool_err serr;
        oo_spool *main = oo_spool_check(L, lua_gettop(L));
        if (oo_spool_reopen(main, &w->spool, &serr) != OO_SPOOL_OK)
            return luaL_error(L, "worker_new: %s", serr.message);
    }
    lua_pop(L, 1);
    /* curl handles are made here, before the thread exists; it owns them after */
    w->multi = curl_multi_init();
    w->slots = (oo_wslot *)calloc((size_t)conc, sizeof(oo_wslot));
    if (!w->multi || !w->slots) return luaL_error(L, "worker_new: out of memory");
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, (long)conc + 2);
    for (i = 0; i < conc; i++) {
        oo_http_xfer_init(&w->slots[i].x, ho.max_body);
        w->slots[i].e = curl_easy_init();
        if (!w->slots[i].e || oo_http_apply_opts(w->slots[i].e, &ho) != CURLE_OK)
            return luaL_error(L, "worker_new: cannot set up a curl handle");
    }
    return 1; /* the userdata, above cfg and cfg.http (whose strings we used) */
}

static int ensure_started(lua_State *L, oo_worker *w) {
    if (w->started) return 1;
    if (worker_start(w) != 0) return luaL_error(L, "queue worker: cannot start its thread");
    return 1;
}

/*** w:push(body, ref) -> true | false (memory queue full) */
static int l_push(lua_State *L) {
    oo_worker *w = check_worker(L);
    size_t blen, rlen = 0;
    const char *body = luaL_checklstring(L, 2, &blen);
    const char *ref = luaL_optlstring(L, 3, "", &rlen);
    oo_job *j;
    int wake;
    pthread_mutex_lock(&w->mu);
    if (w->nready + w->nretry + w->in_flight >= w->max_queue) {
        pthread_mutex_unlock(&w->mu);
        lua_pushboolean(L, 0);
        return 1;
    }
    pthread_mutex_unlock(&w->mu);
    ensure_started(L, w); /* before the allocation: it may raise */
    j = job_new(body, blen, ref, rlen);
    if (!j) return luaL_error(L, "push: out of memory");
    pthread_mutex_lock(&w->mu);
    ready_push(w, j);
    w->pushed++;
    wake = w->polling;
    pthread_mutex_unlock(&w->mu);
    /* a busy worker sees the job on its next round; only a sleeping one
     * needs the (syscall) wake-up */
    if (wake) curl_multi_wakeup(w->multi);
    lua_pushboolean(L, 1);
    return 1;
}

/*** w:notify([n]) — n orders (default 0) were put in the spool: the worker
 * (started if need be) claims at once instead of at its next spool_poll. */
static int l_notify(lua_State *L) {
    oo_worker *w = check_worker(L);
    lua_Integer n = luaL_optinteger(L, 2, 0);
    int wake;
    ensure_started(L, w);
    pthread_mutex_lock(&w->mu);
    w->claim_hint = 1;
    if (n > 0) w->pushed += (long long)n;
    wake = w->polling;
    pthread_mutex_unlock(&w->mu);
    if (wake) curl_multi_wakeup(w->multi);
    return 0;
}

/*** w:results() -> list of {ref, outcome = "sent"|"dead", status, body,
 * kind, message, curl_code, attempts, retry_after} collected since last call */
static int l_results(lua_State *L) {
    oo_worker *w = check_worker(L);
    oo_result *r, *list;
    int k = 0;
    pthread_mutex_lock(&w->mu);
    list = w->res_head;
    w->res_head = w->res_tail = NULL;
    w->nresults = 0;
    w->results_bytes = 0;
    pthread_mutex_unlock(&w->mu);
    lua_newtable(L);
    for (r = list; r; r = r->next) {
        lua_createtable(L, 0, 9);
        lua_pushstring(L, r->outcome == OUT_SENT ? "sent" : "dead");
        lua_setfield(L, -2, "outcome");
        if (r->ref) { lua_pushstring(L, r->ref); lua_setfield(L, -2, "ref"); }
        if (r->status) { lua_pushinteger(L, (lua_Integer)r->status); lua_setfield(L, -2, "status"); }
        if (r->body) { lua_pushlstring(L, r->body, r->body_len); lua_setfield(L, -2, "body"); }
        if (r->kind) { lua_pushstring(L, r->kind); lua_setfield(L, -2, "kind"); }
        if (r->message[0]) { lua_pushstring(L, r->message); lua_setfield(L, -2, "message"); }
        if (r->curl_code) { lua_pushinteger(L, r->curl_code); lua_setfield(L, -2, "curl_code"); }
        if (r->retry_after[0]) { lua_pushstring(L, r->retry_after); lua_setfield(L, -2, "retry_after"); }
        lua_pushinteger(L, r->attempts);
        lua_setfield(L, -2, "attempts");
        lua_rawseti(L, -2, ++k);
    }
    free_results(list);
    return 1;
}

/*** w:stats() -> {queued, retrying, in_flight, pushed, sent, retried, dead,
 * results_dropped, running} */
static int l_stats(lua_State *L) {
    oo_worker *w = check_worker(L);
    lua_createtable(L, 0, 9);
    pthread_mutex_lock(&w->mu);
#define F(name, v) lua_pushinteger(L, (lua_Integer)(v)); lua_setfield(L, -2, name)
    F("queued", w->nready + w->nretry);
    F("retrying", w->nretry);
    F("in_flight", w->in_flight);
    F("pushed", w->pushed);
    F("sent", w->sent);
    F("retried", w->retried);
    F("dead", w->dead);
    F("results_dropped", w->results_dropped);
    F("pending_results", w->nresults);
#undef F
    lua_pushboolean(L, w->started && !w->exited);
    lua_setfield(L, -2, "running");
    pthread_mutex_unlock(&w->mu);
    return 1;
}

/*** w:wait(timeout) -> idle — returns at once when results wait to be
 * collected; else blocks until the thread reports something (a result, a
 * retry scheduled, going idle) or the timeout. `idle`: nothing is queued,
 * retrying or in flight in memory (spool rows not yet claimed are not seen
 * here: the Lua side asks the spool). */
static int l_wait(lua_State *L) {
    oo_worker *w = check_worker(L);
    double timeout = luaL_optnumber(L, 2, 0), t;
    struct timespec dl;
    int idle;
    if (!(timeout > 0)) timeout = 0;
    if (timeout > 3600) timeout = 3600;
    t = wall_now() + timeout;
    dl.tv_sec = (time_t)t;
    dl.tv_nsec = (long)((t - (double)dl.tv_sec) * 1e9);
    if (dl.tv_nsec >= 1000000000L) dl.tv_nsec = 999999999L;
    pthread_mutex_lock(&w->mu);
    if (timeout > 0 && w->nresults == 0 && w->started && !w->exited)
        pthread_cond_timedwait(&w->cv, &w->mu, &dl);
    idle = w->nready == 0 && w->nretry == 0 && w->in_flight == 0;
    pthread_mutex_unlock(&w->mu);
    lua_pushboolean(L, idle);
    return 1;
}

/*** w:close(timeout) -> true | false (the thread did not stop in time) */
static int l_close(lua_State *L) {
    oo_worker_ud *u = (oo_worker_ud *)luaL_checkudata(L, 1, OO_WORKER_MT);
    double timeout = luaL_optnumber(L, 2, 5);
    oo_worker *w = u->w;
    if (!w) { lua_pushboolean(L, 1); return 1; }
    if (w->pid != getpid()) {
        /* a forked copy: the thread lives in the parent; forget our copy */
        u->w = NULL;
        lua_pushboolean(L, 1);
        return 1;
    }
    u->w = NULL;
    if (!worker_stop(w, timeout)) {
        /* the thread is stuck (a transfer or a lock past the timeout): it
         * is detached and frees the worker itself when it ends */
        lua_pushboolean(L, 0);
        return 1;
    }
    worker_free(w);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L) {
    lua_settop(L, 1);
    lua_pushnumber(L, 2); /* give a running transfer two seconds */
    l_close(L);
    return 0;
}

/* CPU seconds used by the calling thread (benchmarks: the cost of push
 * without the worker thread's own work). */
static int l_thread_cputime(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

void oo_worker_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"push", l_push}, {"notify", l_notify}, {"results", l_results}, {"stats", l_stats},
        {"wait", l_wait}, {"close", l_close}, {NULL, NULL}};
    oo_newclass(L, OO_WORKER_MT, methods, l_gc, NULL, NULL);
    lua_pushcfunction(L, l_worker_new);
    lua_setfield(L, -2, "worker_new");
    lua_pushcfunction(L, l_thread_cputime);
    lua_setfield(L, -2, "thread_cputime");
    lua_pushcfunction(L, l_getpid);
    lua_setfield(L, -2, "getpid");
}
