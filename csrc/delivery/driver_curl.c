/* The libcurl driver (see driver_curl.h). */
#define _GNU_SOURCE
#include "driver_curl.h"
#include "clock.h"

#include <stdlib.h>
#include <string.h>

static void wake(void *ud) { oo_pool_wakeup((oo_pool *)ud); }

int oo_curl_init(oo_curl *d, oo_sched *s, const oo_http_opts *ho, struct curl_slist **headers,
                 int nchan, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    d->s = s;
    d->headers = headers;
    d->nchan = nchan;
    if (oo_pool_init(&d->pool, ho, s->cfg.concurrency, err, errlen) != 0) {
        oo_curl_free(d);
        return -1;
    }
    s->wake = wake;
    s->wake_ud = &d->pool;
    return 0;
}

void oo_curl_free(oo_curl *d) {
    int i;
    if (d->s) {
        d->s->wake = NULL;
        d->s->wake_ud = NULL;
    }
    oo_pool_abort(&d->pool, NULL, NULL);
    oo_pool_free(&d->pool);
    for (i = 0; d->headers && i < d->nchan; i++)
        if (d->headers[i]) curl_slist_free_all(d->headers[i]);
    free(d->headers);
    d->headers = NULL;
    d->nchan = 0;
}

void oo_curl_wakeup(oo_curl *d) { oo_pool_wakeup(&d->pool); }

/* A transfer finished: its answer (or failure) to the scheduler. */
static void on_done(void *ud, oo_slot *sl, CURLcode rc) {
    oo_curl *d = (oo_curl *)ud;
    oo_reply r;
    long status = 0, connects = 0;
    char msg[CURL_ERROR_SIZE + 64];
    memset(&r, 0, sizeof r);
    curl_easy_getinfo(sl->e, CURLINFO_NUM_CONNECTS, &connects);
    r.new_connection = connects > 0;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(sl->e, CURLINFO_RESPONSE_CODE, &status);
        r.status = (int)status;
        r.retry_after = sl->x.retry_after;
        r.body = sl->x.body.len ? sl->x.body.data : "";
        r.body_len = sl->x.body.len;
    } else {
        oo_http_failure_message(rc, &sl->x, msg, sizeof msg);
        r.kind = oo_http_kind(rc);
        r.message = msg;
        r.code = (int)rc;
    }
    oo_sched_done(d->s, (oo_job *)sl->job, &r);
}

/* Starts one job in a free slot; a job curl refuses (cannot happen with
 * valid options) fails as a transport failure, retried by the policy. */
static void start(oo_curl *d, oo_job *j) {
    CURLcode rc;
    oo_slot *sl;
    int ch = j->channel >= 0 && j->channel < d->nchan ? j->channel : 0;
    const char *url = j->url ? j->url : d->s->url;
    const char *body = j->method == OO_DELETE ? NULL : j->data;
    sl = oo_pool_start(&d->pool, j, url, d->headers[ch], body, j->body_len, &rc);
    if (sl) {
        j->driver = sl;
        return;
    }
    {
        oo_reply r;
        memset(&r, 0, sizeof r);
        r.kind = "network";
        r.message = curl_easy_strerror(rc);
        r.code = (int)rc;
        oo_sched_done(d->s, j, &r);
    }
}

int oo_curl_turn(oo_curl *d, double max_wait) {
    oo_sched *s = d->s;
    double now = oo_sched_now(s), w;
    oo_job *j;
    int n;
    oo_sched_prepare(s, now);
    while ((j = oo_sched_pick(s, now)) != NULL) start(d, j);
    /* asleep before the last look (oo_sched_wait): an add in between wakes us */
    __atomic_store_n(&s->asleep, 1, __ATOMIC_SEQ_CST);
    w = oo_sched_wait(s, oo_sched_now(s));
    n = oo_pool_run(&d->pool, w < max_wait ? w : max_wait, on_done, d, d->err, sizeof d->err);
    __atomic_store_n(&s->asleep, 0, __ATOMIC_SEQ_CST);
    return n;
}

struct drop_ctx {
    oo_sched *s;
    void (*fn)(void *ud, oo_job *j);
    void *ud;
};

static void drop_aborted(void *ud, void *job) {
    struct drop_ctx *c = (struct drop_ctx *)ud;
    oo_sched_drop_flying(c->s, (oo_job *)job, c->fn, c->ud);
}

void oo_curl_drop_all(oo_curl *d, void (*fn)(void *ud, oo_job *j), void *ud) {
    struct drop_ctx c;
    c.s = d->s;
    c.fn = fn;
    c.ud = ud;
    oo_pool_abort(&d->pool, drop_aborted, &c);
    oo_sched_drop_all(d->s, fn, ud);
}
