/* The libcurl slot pool (see pool.h). */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define OO_POOL_MAX 1024

/* ------------------------------------------------------------------ */
/* curl's socket and timer callbacks                                   */

/* Keeps pfds in step with what curl wants watched ([0] is the wake-up pipe). */
static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
    oo_pool *p = (oo_pool *)userp;
    int i;
    short events = 0;
    (void)e;
    (void)socketp;
    for (i = 1; i < p->npfd; i++)
        if (p->pfds[i].fd == fd) break;
    if (what == CURL_POLL_REMOVE) {
        if (i < p->npfd) p->pfds[i] = p->pfds[--p->npfd];
        return 0;
    }
    if (what & CURL_POLL_IN) events |= POLLIN;
    if (what & CURL_POLL_OUT) events |= POLLOUT;
    if (i == p->npfd) {
        if (p->npfd == p->capfd) {
            int cap = p->capfd * 2;
            struct pollfd *a = (struct pollfd *)realloc(p->pfds, (size_t)cap * sizeof *a);
            struct pollfd *r;
            if (!a) return -1; /* curl fails the transfer: reported as an error */
            p->pfds = a;
            r = (struct pollfd *)realloc(p->ready, (size_t)cap * sizeof *r);
            if (!r) return -1;
            p->ready = r;
            p->capfd = cap;
        }
        p->pfds[p->npfd].fd = fd;
        p->pfds[p->npfd].revents = 0;
        p->npfd++;
    }
    p->pfds[i].events = events;
    return 0;
}

/* One non-repeating timer, fired by oo_pool_run. */
static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
    oo_pool *p = (oo_pool *)userp;
    (void)m;
    p->timer_at = timeout_ms < 0 ? -1.0 : oo_mono_now() + (double)timeout_ms / 1000.0;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */

static int env_set(const char *name) {
    const char *v = getenv(name);
    return v && *v;
}

static int fail(char *err, size_t errlen, const char *msg) {
    snprintf(err, errlen, "%s", msg);
    return -1;
}

int oo_pool_init(oo_pool *p, const oo_http_opts *o, int n, char *err, size_t errlen) {
    int i, fds[2];
    memset(p, 0, sizeof *p);
    p->wake_rd = p->wake_wr = -1;
    p->timer_at = -1.0;
    if (n < 1 || n > OO_POOL_MAX) return fail(err, errlen, "concurrency must be 1..1024");
    if (oo_http_global_init() != 0) return fail(err, errlen, "libcurl init failed");
    p->m = curl_multi_init();
    p->share = curl_share_init();
    p->slots = (oo_slot *)calloc((size_t)n, sizeof(oo_slot));
    p->free_stack = (int *)malloc((size_t)n * sizeof(int));
    p->capfd = 16;
    p->pfds = (struct pollfd *)malloc((size_t)p->capfd * sizeof(struct pollfd));
    p->ready = (struct pollfd *)malloc((size_t)p->capfd * sizeof(struct pollfd));
    if (!p->m || !p->share || !p->slots || !p->free_stack || !p->pfds || !p->ready) {
        oo_pool_free(p);
        return fail(err, errlen, "out of memory");
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        oo_pool_free(p);
        return fail(err, errlen, "cannot create the wake-up pipe");
    }
    p->wake_rd = fds[0];
    p->wake_wr = fds[1];
    p->pfds[0].fd = p->wake_rd;
    p->pfds[0].events = POLLIN;
    p->npfd = 1;
    p->n = n;
    p->no_proxy =
        !o->proxy && !(env_set("http_proxy") || env_set("https_proxy") || env_set("HTTPS_PROXY") ||
                       env_set("all_proxy") || env_set("ALL_PROXY") || env_set("HTTP_PROXY"));
    /* keep every connection of the pool cached between requests */
    curl_multi_setopt(p->m, CURLMOPT_MAXCONNECTS, (long)n + 4);
    curl_multi_setopt(p->m, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(p->m, CURLMOPT_SOCKETDATA, (void *)p);
    curl_multi_setopt(p->m, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(p->m, CURLMOPT_TIMERDATA, (void *)p);
    /* One TLS session cache for every slot: a connection opened after the
     * first handshake resumes its session (no certificate chain to check
     * again, no signature from the server) instead of a full handshake per
     * slot. The pool is driven by one thread: no lock callbacks. */
    curl_share_setopt(p->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    /* HTTP/2 (asked for, over ALPN): one connection carries up to
     * OO_POOL_H2_STREAMS requests, so n slots need ceil(n / streams)
     * connections. Without a cap libcurl opens one per request that finds
     * the others full or not yet confirmed (157 for 256 in flight). The cap
     * holds until the first answer: over HTTP/1.1 (the server declined h2)
     * it is lifted (oo_pool_run). */
    curl_multi_setopt(p->m, CURLMOPT_MAX_CONCURRENT_STREAMS, (long)OO_POOL_H2_STREAMS);
    if (o->http_version == CURL_HTTP_VERSION_2TLS || o->http_version == CURL_HTTP_VERSION_2_0) {
        p->h2_cap = 1;
        curl_multi_setopt(p->m, CURLMOPT_MAX_HOST_CONNECTIONS,
                          (long)((n + OO_POOL_H2_STREAMS - 1) / OO_POOL_H2_STREAMS));
    }
    for (i = 0; i < n; i++) {
        oo_slot *s = &p->slots[i];
        oo_http_xfer_init(&s->x, o->max_body);
        s->e = curl_easy_init();
        if (!s->e || oo_http_apply_opts(s->e, o) != CURLE_OK) {
            oo_pool_free(p);
            return fail(err, errlen, "cannot set up a curl handle");
        }
        /* the User-Agent goes in the header list (the caller adds it):
         * CURLOPT_USERAGENT is formatted anew on every request */
        curl_easy_setopt(s->e, CURLOPT_USERAGENT, (char *)NULL);
        /* no proxy anywhere: say so, or curl reads six variables per request */
        if (p->no_proxy) curl_easy_setopt(s->e, CURLOPT_PROXY, "");
        /* on HTTP/2, wait for the connection to multiplex instead of opening more */
        curl_easy_setopt(s->e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(s->e, CURLOPT_SHARE, p->share);
        /* Over TLS libcurl copies each request into an upload buffer it
         * allocates per transfer and frees when the transfer is done: 64 KB
         * by default, enough to make glibc trim the heap top after every
         * request (a madvise or brk, and a TLB flush on every CPU the
         * process ran on — 13 % of a spool drain's CPU). An order is far
         * smaller than the minimum, 16 KB; a larger body goes in pieces. */
        curl_easy_setopt(s->e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
        curl_easy_setopt(s->e, CURLOPT_PRIVATE, (void *)s);
        p->free_stack[p->nfree++] = n - 1 - i;
    }
    return 0;
}

void oo_pool_free(oo_pool *p) {
    int i;
    if (p->slots) {
        for (i = 0; i < p->n; i++) {
            oo_slot *s = &p->slots[i];
            if (s->e) {
                if (s->busy && p->m) curl_multi_remove_handle(p->m, s->e);
                curl_easy_cleanup(s->e);
            }
            oo_http_xfer_free(&s->x);
            free(s->prepared_url);
        }
        free(p->slots);
    }
    free(p->free_stack);
    if (p->m) curl_multi_cleanup(p->m);         /* may still call sock_cb: pfds after */
    if (p->share) curl_share_cleanup(p->share); /* after the handles that use it */
    free(p->pfds);
    free(p->ready);
    if (p->wake_rd >= 0) close(p->wake_rd);
    if (p->wake_wr >= 0) close(p->wake_wr);
    memset(p, 0, sizeof *p);
    p->wake_rd = p->wake_wr = -1;
}

/* ------------------------------------------------------------------ */
/* Transfers                                                           */

/* Sets the request on the slot's handle: a POST to the URL and headers it
 * was last prepared for needs only the new body; anything else all of it. */
static CURLcode prepare(oo_slot *s, const char *url, const struct curl_slist *headers,
                        const char *body, size_t len) {
    CURLcode rc;
    if (body && s->prepared_url && s->prepared_headers == headers &&
        strcmp(s->prepared_url, url) == 0) {
        rc = curl_easy_setopt(s->e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        if (rc == CURLE_OK) rc = curl_easy_setopt(s->e, CURLOPT_POSTFIELDS, body);
        return rc;
    }
    free(s->prepared_url);
    s->prepared_url = NULL;
    rc = oo_http_prepare(s->e, &s->x, body ? "POST" : "DELETE", url, body, len);
    if (rc == CURLE_OK) rc = curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, headers);
    if (rc == CURLE_OK && body) {      /* a DELETE leaves the handle unprepared for POSTs */
        s->prepared_url = strdup(url); /* NULL (no cache) is fine */
        s->prepared_headers = headers;
    }
    return rc;
}

oo_slot *oo_pool_start(oo_pool *p, void *job, const char *url, const struct curl_slist *headers,
                       const char *body, size_t len, CURLcode *rc) {
    oo_slot *s;
    CURLMcode mc;
    *rc = CURLE_OK;
    if (p->nfree == 0) return NULL;
    s = &p->slots[p->free_stack[p->nfree - 1]];
    oo_http_xfer_reset(&s->x);
    *rc = prepare(s, url, headers, body, len);
    if (*rc != CURLE_OK) return NULL;
    mc = curl_multi_add_handle(p->m, s->e);
    if (mc != CURLM_OK) {
        *rc = CURLE_FAILED_INIT;
        return NULL;
    }
    s->job = job;
    s->busy = 1;
    s->started = oo_mono_now();
    p->nfree--;
    return s;
}

static void release(oo_pool *p, oo_slot *s) {
    curl_multi_remove_handle(p->m, s->e);
    /* the body belongs to the caller's job, which may go now */
    curl_easy_setopt(s->e, CURLOPT_POSTFIELDS, (char *)NULL);
    s->busy = 0;
    s->job = NULL;
    p->free_stack[p->nfree++] = (int)(s - p->slots);
}

/* The first answer tells whether the server speaks HTTP/2; if it does not,
 * every slot needs a connection of its own again. */
static void h2_settle(oo_pool *p, CURL *e) {
    long v = 0;
    curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &v);
    if (v == CURL_HTTP_VERSION_2_0) {
        p->h2_cap = 0; /* multiplexing: the cap stays */
        return;
    }
    if (v == 0) return; /* no answer to tell */
    p->h2_cap = 0;
    curl_multi_setopt(p->m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
}

/* Hands every finished transfer to done(). */
static int drain(oo_pool *p, oo_pool_done_fn done, void *ud) {
    CURLMsg *msg;
    int left, count = 0;
    while ((msg = curl_multi_info_read(p->m, &left)) != NULL) {
        oo_slot *s = NULL;
        CURLcode rc;
        if (msg->msg != CURLMSG_DONE) continue;
        rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        if (p->h2_cap && rc == CURLE_OK) h2_settle(p, msg->easy_handle);
        if (rc == CURLE_OK) oo_http_distrust(msg->easy_handle);
        done(ud, s, rc);
        release(p, s);
        count++;
    }
    return count;
}

static void drain_wakeups(oo_pool *p) {
    char buf[64];
    while (read(p->wake_rd, buf, sizeof buf) > 0) {}
}

int oo_pool_run(oo_pool *p, double wait, oo_pool_done_fn done, void *ud, char *err, size_t errlen) {
    double now = oo_mono_now(), deadline = now + (wait > 0 ? wait : 0);
    int running = 0, count = 0;
    CURLMcode mc;
    for (;;) {
        int i, k, nready, ms = 0;
        if (p->timer_at >= 0 && p->timer_at <= now) {
            /* curl's timer is due (a request just added, a timeout, a
             * resolver poll): non-repeating, so clear it first */
            p->timer_at = -1.0;
            mc = curl_multi_socket_action(p->m, CURL_SOCKET_TIMEOUT, 0, &running);
            if (mc != CURLM_OK) {
                snprintf(err, errlen, "%s", curl_multi_strerror(mc));
                return -1;
            }
            count += drain(p, done, ud);
        }
        if (count == 0 && deadline > now) {
            double w = deadline - now;
            if (p->timer_at >= 0 && p->timer_at - now < w) w = p->timer_at - now;
            if (w > 0) ms = (int)ceil(w * 1000.0);
        }
        nready = poll(p->pfds, (nfds_t)p->npfd, ms);
        if (nready < 0) {
            if (errno == EINTR) return count; /* back to the caller: a Ctrl-C may be waiting */
            snprintf(err, errlen, "poll: %s", strerror(errno));
            return -1;
        }
        if (p->pfds[0].revents) {
            drain_wakeups(p);
            nready--;
            p->pfds[0].revents = 0;
            deadline = now; /* someone has work for us: return after this round */
        }
        for (i = 1, k = 0; i < p->npfd && k < nready; i++)
            if (p->pfds[i].revents) p->ready[k++] = p->pfds[i];
        for (i = 0; i < k; i++) {
            short r = p->ready[i].revents;
            int ev = 0;
            if (r & (POLLIN | POLLPRI | POLLHUP)) ev |= CURL_CSELECT_IN;
            if (r & POLLOUT) ev |= CURL_CSELECT_OUT;
            if (r & (POLLERR | POLLNVAL)) ev |= CURL_CSELECT_ERR;
            mc = curl_multi_socket_action(p->m, p->ready[i].fd, ev, &running);
            if (mc != CURLM_OK) {
                snprintf(err, errlen, "%s", curl_multi_strerror(mc));
                return -1;
            }
        }
        if (k > 0) count += drain(p, done, ud);
        now = oo_mono_now();
        if (count > 0 || now >= deadline) return count;
    }
}

void oo_pool_wakeup(oo_pool *p) {
    char c = 1;
    ssize_t r = write(p->wake_wr, &c, 1); /* a full pipe already wakes the poll */
    (void)r;
}

void oo_pool_abort(oo_pool *p, void (*gone)(void *ud, void *job), void *ud) {
    int i;
    for (i = 0; i < p->n; i++) {
        oo_slot *s = &p->slots[i];
        void *job = s->job;
        if (!s->busy) continue;
        release(p, s);
        if (gone) gone(ud, job);
    }
}
