/* Concurrent transfers through one curl multi handle, for send_batch.
 *
 * A fixed pool of easy handles (one per slot of concurrency) is set up once
 * with the client's options and reused, so connections stay alive (and are
 * multiplexed when the server speaks HTTP/2). Lua adds requests into free
 * slots and collects finished ones with perform(); all policy — retries,
 * backoff, rate — stays on the Lua side, which also runs every callback:
 * nothing here calls into Lua while curl is running. */
#define _POSIX_C_SOURCE 200809L
#include "core.h"
#include "http.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OO_MULTI_MT "optimizely.offline.multi"
#define OO_MULTI_MAX 1024

typedef struct oo_slot {
    CURL *e;
    oo_http_xfer x;    /* response capture (x.headers unused: the list is shared) */
    oo_buf req;        /* our copy of the body: POSTFIELDS is not copied by curl */
    lua_Integer id;
    int busy;
    /* what the handle was last prepared for: a request to the same URL with
     * the same method and headers only needs its new body set */
    char *url;
    char method[17];
    unsigned hdr_gen;
} oo_slot;

typedef struct oo_multi {
    CURLM *m;
    oo_slot *slots;
    int *free_stack;
    int n, nfree;
    unsigned hdr_gen; /* bumped by set_headers: slots prepared earlier are stale */
    oo_http_xfer hdr; /* only hdr.headers: the request headers, shared by all slots */
    /* The sockets curl asks us to watch (CURLMOPT_SOCKETFUNCTION) and its
     * timer (CURLMOPT_TIMERFUNCTION): perform() polls exactly these and tells
     * curl which socket is ready (curl_multi_socket_action), so curl neither
     * walks every transfer nor polls each socket again on every wake-up. */
    struct pollfd *pfds;
    struct pollfd *ready; /* scratch copy: socket_action may change pfds */
    int npfd, capfd;
    double timer_at;      /* monotonic seconds; < 0 = no timer */
    char *ua_line;        /* "User-Agent: ..." sent as a listed header (see multi_new) */
    char *plain_ok;       /* set_plain_ok: a 200 with exactly this body is reported as its id */
    size_t plain_ok_len;
} oo_multi;

static double oo_multi_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CURLMOPT_SOCKETFUNCTION: keep pfds in step with what curl wants watched. */
static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
    oo_multi *mu = (oo_multi *)userp;
    int i;
    short events = 0;
    (void)e; (void)socketp;
    for (i = 0; i < mu->npfd; i++)
        if (mu->pfds[i].fd == fd) break;
    if (what == CURL_POLL_REMOVE) {
        if (i < mu->npfd) mu->pfds[i] = mu->pfds[--mu->npfd];
        return 0;
    }
    if (what & CURL_POLL_IN) events |= POLLIN;
    if (what & CURL_POLL_OUT) events |= POLLOUT;
    if (i == mu->npfd) {
        if (mu->npfd == mu->capfd) {
            int cap = mu->capfd ? mu->capfd * 2 : 16;
            struct pollfd *p = (struct pollfd *)realloc(mu->pfds, (size_t)cap * sizeof *p);
            struct pollfd *r;
            if (!p) return -1; /* curl fails the transfer: reported as an error */
            mu->pfds = p;
            r = (struct pollfd *)realloc(mu->ready, (size_t)cap * sizeof *r);
            if (!r) return -1;
            mu->ready = r;
            mu->capfd = cap;
        }
        mu->pfds[mu->npfd].fd = fd;
        mu->pfds[mu->npfd].revents = 0;
        mu->npfd++;
    }
    mu->pfds[i].events = events;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one non-repeating timer, fired by perform(). */
static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
    oo_multi *mu = (oo_multi *)userp;
    (void)m;
    mu->timer_at = timeout_ms < 0 ? -1.0 : oo_multi_now() + (double)timeout_ms / 1000.0;
    return 0;
}

static oo_multi *check_multi(lua_State *L) {
    oo_multi *mu = (oo_multi *)luaL_checkudata(L, 1, OO_MULTI_MT);
    if (!mu->m) luaL_error(L, "multi handle is closed");
    return mu;
}

static void multi_release(oo_multi *mu) {
    int i;
    if (mu->slots) {
        for (i = 0; i < mu->n; i++) {
            oo_slot *s = &mu->slots[i];
            if (s->e) {
                if (s->busy && mu->m) curl_multi_remove_handle(mu->m, s->e);
                curl_easy_cleanup(s->e);
            }
            oo_http_xfer_free(&s->x);
            oo_buf_free(&s->req);
            free(s->url);
        }
        free(mu->slots);
    }
    free(mu->free_stack);
    if (mu->m) curl_multi_cleanup(mu->m); /* may still call sock_cb: pfds last */
    oo_http_xfer_free(&mu->hdr);
    free(mu->pfds);
    free(mu->ready);
    free(mu->plain_ok);
    mu->plain_ok = NULL;
    free(mu->ua_line);
    mu->ua_line = NULL;
    mu->pfds = mu->ready = NULL;
    mu->npfd = mu->capfd = 0;
    mu->slots = NULL;
    mu->free_stack = NULL;
    mu->m = NULL;
    mu->n = mu->nfree = 0;
}

static int env_set(const char *name) {
    const char *v = getenv(name);
    return v && *v;
}

/*** multi_new(opts, concurrency) -> multi. opts as for http_new. */
static int l_multi_new(lua_State *L) {
    oo_http_opts o;
    oo_multi *mu;
    int i, proxy_env, n = (int)luaL_checkinteger(L, 2);
    oo_http_read_opts(L, 1, &o);
    luaL_argcheck(L, n >= 1 && n <= OO_MULTI_MAX, 2, "concurrency must be 1..1024");
    if (oo_http_global_init() != 0) return luaL_error(L, "multi_new: libcurl init failed");
    mu = (oo_multi *)lua_newuserdata(L, sizeof *mu);
    memset(mu, 0, sizeof *mu);
    oo_http_xfer_init(&mu->hdr, 0);
    oo_setmetatable(L, OO_MULTI_MT); /* from here __gc frees what we own */
    mu->m = curl_multi_init();
    mu->slots = (oo_slot *)calloc((size_t)n, sizeof(oo_slot));
    mu->free_stack = (int *)malloc((size_t)n * sizeof(int));
    if (!mu->m || !mu->slots || !mu->free_stack) {
        multi_release(mu);
        return luaL_error(L, "multi_new: out of memory");
    }
    mu->n = n;
    if (o.user_agent) {
        /* The User-Agent goes in the header list, not CURLOPT_USERAGENT: curl
         * formats that option into a fresh string on every request (~3% of
         * the CPU a small request costs). */
        size_t ualen = strlen(o.user_agent);
        if (strpbrk(o.user_agent, "\r\n")) {
            multi_release(mu);
            return luaL_error(L, "multi_new: opts.user_agent contains CR or LF");
        }
        mu->ua_line = (char *)malloc(ualen + sizeof "User-Agent: ");
        if (!mu->ua_line) { multi_release(mu); return luaL_error(L, "multi_new: out of memory"); }
        memcpy(mu->ua_line, "User-Agent: ", sizeof "User-Agent: " - 1);
        memcpy(mu->ua_line + sizeof "User-Agent: " - 1, o.user_agent, ualen + 1);
        /* sent even if set_headers is never called */
        mu->hdr.headers = curl_slist_append(NULL, mu->ua_line);
        if (!mu->hdr.headers) { multi_release(mu); return luaL_error(L, "multi_new: out of memory"); }
    }
    proxy_env = env_set("http_proxy") || env_set("https_proxy") || env_set("HTTPS_PROXY") ||
                env_set("all_proxy") || env_set("ALL_PROXY") || env_set("HTTP_PROXY");
    /* keep every connection of the pool cached between requests */
    curl_multi_setopt(mu->m, CURLMOPT_MAXCONNECTS, (long)n + 4);
    mu->timer_at = -1.0;
    curl_multi_setopt(mu->m, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(mu->m, CURLMOPT_SOCKETDATA, (void *)mu);
    curl_multi_setopt(mu->m, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(mu->m, CURLMOPT_TIMERDATA, (void *)mu);
    for (i = 0; i < n; i++) {
        oo_slot *s = &mu->slots[i];
        CURLcode rc;
        oo_http_xfer_init(&s->x, o.max_body);
        oo_buf_init(&s->req);
        s->e = curl_easy_init();
        if (!s->e) { multi_release(mu); return luaL_error(L, "multi_new: curl_easy_init failed"); }
        rc = oo_http_apply_opts(s->e, &o);
        if (rc != CURLE_OK) {
            multi_release(mu);
            return luaL_error(L, "multi_new: %s", curl_easy_strerror(rc));
        }
        if (mu->ua_line) curl_easy_setopt(s->e, CURLOPT_USERAGENT, (char *)NULL);
        /* No proxy configured and none in the environment: say so, or curl
         * scans the environment for six variables on every request. */
        if (!o.proxy && !proxy_env) curl_easy_setopt(s->e, CURLOPT_PROXY, "");
        /* on HTTP/2, wait for the connection to multiplex instead of opening more */
        curl_easy_setopt(s->e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(s->e, CURLOPT_PRIVATE, (void *)s);
        mu->free_stack[mu->nfree++] = n - 1 - i;
    }
    return 1;
}

/*** m:set_headers({"Name: value", ...}) — the headers of every request. */
static int l_set_headers(lua_State *L) {
    oo_multi *mu = check_multi(L);
    if (mu->nfree != mu->n) return luaL_error(L, "set_headers: transfers in flight");
    oo_http_build_headers(L, 2, &mu->hdr);
    if (mu->ua_line) {
        /* unless the caller lists its own User-Agent */
        const struct curl_slist *h;
        int own = 0;
        for (h = mu->hdr.headers; h && !own; h = h->next)
            own = curl_strnequal(h->data, "User-Agent:", 11);
        if (!own) {
            struct curl_slist *n = curl_slist_append(mu->hdr.headers, mu->ua_line);
            if (!n) return luaL_error(L, "set_headers: out of memory");
            mu->hdr.headers = n;
        }
    }
    mu->hdr_gen++;
    return 0;
}

/*** m:set_plain_ok(body | nil) — from now on a transfer answered 200 with
 * exactly these bytes appears in perform()'s results as its bare id instead
 * of a table. The caller decides what that answer means; this only spares
 * building a table per request. */
static int l_set_plain_ok(lua_State *L) {
    oo_multi *mu = check_multi(L);
    size_t len = 0;
    const char *b = luaL_optlstring(L, 2, NULL, &len);
    char *copy = NULL;
    if (b) {
        copy = (char *)malloc(len + 1);
        if (!copy) return luaL_error(L, "set_plain_ok: out of memory");
        memcpy(copy, b, len + 1);
    }
    free(mu->plain_ok);
    mu->plain_ok = copy;
    mu->plain_ok_len = len;
    return 0;
}

/*** m:add(id, method, url, body) -> true, or false when every slot is busy. */
static int l_add(lua_State *L) {
    oo_multi *mu = check_multi(L);
    lua_Integer id = luaL_checkinteger(L, 2);
    const char *method = luaL_checkstring(L, 3);
    const char *url = luaL_checkstring(L, 4);
    size_t blen = 0;
    const char *body = luaL_optlstring(L, 5, NULL, &blen);
    oo_slot *s;
    CURLcode rc;
    CURLMcode mc;
    size_t i, mlen = strlen(method);
    if (mlen == 0 || mlen > 16) luaL_argerror(L, 3, "bad HTTP method");
    for (i = 0; i < mlen; i++)
        if (method[i] < 'A' || method[i] > 'Z') luaL_argerror(L, 3, "bad HTTP method");
    if (mu->nfree == 0) { lua_pushboolean(L, 0); return 1; }
    s = &mu->slots[mu->free_stack[mu->nfree - 1]];
    s->req.len = 0;
    if (body) {
        oo_buf_add(&s->req, body, blen);
        if (s->req.oom) return luaL_error(L, "add: out of memory");
    }
    s->x.body.len = 0;
    s->x.body.oom = 0;
    s->x.too_big = 0;
    s->x.retry_after[0] = s->x.content_type[0] = s->x.errbuf[0] = '\0';
    if (body && s->url && s->hdr_gen == mu->hdr_gen && strcmp(s->method, method) == 0 &&
        strcmp(s->url, url) == 0) {
        /* options persist on the handle: only the body is new */
        rc = curl_easy_setopt(s->e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->req.len);
        if (rc == CURLE_OK) rc = curl_easy_setopt(s->e, CURLOPT_POSTFIELDS, s->req.data);
    } else {
        free(s->url);
        s->url = NULL;
        rc = oo_http_prepare(s->e, &s->x, method, url, body ? s->req.data : NULL, s->req.len);
        if (rc == CURLE_OK) rc = curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, mu->hdr.headers);
        if (rc == CURLE_OK && body) {
            s->url = strdup(url); /* NULL (no cache) is fine */
            memcpy(s->method, method, mlen + 1);
            s->hdr_gen = mu->hdr_gen;
        }
    }
    if (rc != CURLE_OK) return luaL_error(L, "add: %s", curl_easy_strerror(rc));
    mc = curl_multi_add_handle(mu->m, s->e);
    if (mc != CURLM_OK) return luaL_error(L, "add: %s", curl_multi_strerror(mc));
    s->id = id;
    s->busy = 1;
    mu->nfree--;
    lua_pushboolean(L, 1);
    return 1;
}

static void setstr(lua_State *L, const char *k, const char *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* Appends one finished transfer to the results table at index t. */
static void push_done(lua_State *L, oo_multi *mu, int t, int *count, oo_slot *s, CURLcode rc) {
    if (rc == CURLE_OK && mu->plain_ok && s->x.body.len == mu->plain_ok_len &&
        memcmp(s->x.body.data, mu->plain_ok, mu->plain_ok_len) == 0) {
        long status = 0;
        curl_easy_getinfo(s->e, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200) {
            lua_pushinteger(L, s->id);
            lua_rawseti(L, t, ++*count);
            return;
        }
    }
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, s->id);
    lua_setfield(L, -2, "id");
    if (rc == CURLE_OK) {
        long status = 0, connects = 0;
        curl_easy_getinfo(s->e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(s->e, CURLINFO_NUM_CONNECTS, &connects);
        lua_pushinteger(L, (lua_Integer)status);
        lua_setfield(L, -2, "status");
        lua_pushlstring(L, s->x.body.data, s->x.body.len);
        lua_setfield(L, -2, "body");
        if (s->x.retry_after[0]) setstr(L, "retry_after", s->x.retry_after);
        if (s->x.content_type[0]) setstr(L, "content_type", s->x.content_type);
        lua_pushboolean(L, connects == 0);
        lua_setfield(L, -2, "reused");
    } else {
        setstr(L, "kind", oo_http_kind(rc));
        /* the same words as the single-request path (http.c) */
        if (rc == CURLE_WRITE_ERROR && s->x.too_big)
            lua_pushfstring(L, "response body larger than %d bytes", (int)s->x.max_body);
        else if (rc == CURLE_WRITE_ERROR && s->x.body.oom)
            lua_pushliteral(L, "out of memory storing the response body");
        else
            lua_pushstring(L, s->x.errbuf[0] ? s->x.errbuf : curl_easy_strerror(rc));
        lua_setfield(L, -2, "message");
        lua_pushinteger(L, (lua_Integer)rc);
        lua_setfield(L, -2, "curl_code");
    }
    lua_rawseti(L, t, ++*count);
}

/* Moves every finished transfer into the results table; returns how many. */
static void drain(lua_State *L, oo_multi *mu, int t, int *count) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(mu->m, &left)) != NULL) {
        oo_slot *s = NULL;
        if (msg->msg != CURLMSG_DONE) continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        {
            CURLcode rc = msg->data.result;
            curl_multi_remove_handle(mu->m, s->e);
            s->busy = 0;
            mu->free_stack[mu->nfree++] = (int)(s - mu->slots);
            push_done(L, mu, t, count, s, rc);
        }
    }
}

/*** m:perform(timeout_seconds) -> results | nil, in_flight
 * Drives the transfers and waits, up to the timeout, until at least one has
 * finished (the waiting loop stays in C: socket activity that completes
 * nothing does not return to Lua). results: list of
 * {id, status, body, retry_after, content_type, reused} or
 * {id, kind, message, curl_code}, or a bare id (see set_plain_ok); nil when
 * nothing finished. */
static int l_perform(lua_State *L) {
    oo_multi *mu = check_multi(L);
    lua_Number timeout = luaL_optnumber(L, 2, 0);
    int running = 0, count = 0, t;
    CURLMcode mc;
    if (!(timeout >= 0)) timeout = 0;
    if (timeout > 86400) timeout = 86400;
    lua_newtable(L);
    t = lua_gettop(L);
    if (mu->nfree < mu->n) {
        double tnow = oo_multi_now(), deadline = tnow + (double)timeout;
        for (;;) {
            int i, k, nready, ms;
            if (mu->timer_at >= 0 && mu->timer_at <= tnow) {
                /* curl's timer is due (a request just added, a timeout, a
                 * resolver poll): non-repeating, so clear it first */
                mu->timer_at = -1.0;
                mc = curl_multi_socket_action(mu->m, CURL_SOCKET_TIMEOUT, 0, &running);
                if (mc != CURLM_OK) return luaL_error(L, "perform: %s", curl_multi_strerror(mc));
                drain(L, mu, t, &count);
            }
            ms = 0;
            if (count == 0 && deadline > tnow) {
                double wait = deadline - tnow;
                if (mu->timer_at >= 0 && mu->timer_at - tnow < wait) wait = mu->timer_at - tnow;
                if (wait > 0) ms = (int)ceil(wait * 1000.0);
            }
            nready = poll(mu->pfds, (nfds_t)mu->npfd, ms);
            if (nready < 0) {
                if (errno == EINTR) break; /* back to Lua: a Ctrl-C hook may be waiting */
                return luaL_error(L, "perform: poll: %s", strerror(errno));
            }
            for (i = 0, k = 0; i < mu->npfd && k < nready; i++) {
                if (mu->pfds[i].revents) mu->ready[k++] = mu->pfds[i];
            }
            for (i = 0; i < k; i++) {
                short r = mu->ready[i].revents;
                int ev = 0;
                if (r & (POLLIN | POLLPRI | POLLHUP)) ev |= CURL_CSELECT_IN;
                if (r & POLLOUT) ev |= CURL_CSELECT_OUT;
                if (r & (POLLERR | POLLNVAL)) ev |= CURL_CSELECT_ERR;
                mc = curl_multi_socket_action(mu->m, mu->ready[i].fd, ev, &running);
                if (mc != CURLM_OK) return luaL_error(L, "perform: %s", curl_multi_strerror(mc));
            }
            if (k > 0) drain(L, mu, t, &count);
            if (count > 0 || mu->nfree == mu->n) break;
            tnow = oo_multi_now();
            if (tnow >= deadline) break;
        }
    }
    if (count == 0) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    lua_pushinteger(L, mu->n - mu->nfree);
    return 2;
}

/*** m:free_slots() -> n, m:in_flight() -> n */
static int l_free_slots(lua_State *L) {
    oo_multi *mu = check_multi(L);
    lua_pushinteger(L, mu->nfree);
    return 1;
}

static int l_in_flight(lua_State *L) {
    oo_multi *mu = check_multi(L);
    lua_pushinteger(L, mu->n - mu->nfree);
    return 1;
}

/*** m:abort() -> ids — stops every transfer in flight (Ctrl-C); their
 * outcome is unknown: the server may or may not have the order. */
static int l_abort(lua_State *L) {
    oo_multi *mu = check_multi(L);
    int i, k = 0;
    lua_newtable(L);
    for (i = 0; i < mu->n; i++) {
        oo_slot *s = &mu->slots[i];
        if (!s->busy) continue;
        curl_multi_remove_handle(mu->m, s->e);
        s->busy = 0;
        mu->free_stack[mu->nfree++] = i;
        lua_pushinteger(L, s->id);
        lua_rawseti(L, -2, ++k);
    }
    return 1;
}

static int l_multi_close(lua_State *L) {
    oo_multi *mu = (oo_multi *)luaL_checkudata(L, 1, OO_MULTI_MT);
    multi_release(mu);
    return 0;
}

static int l_multi_tostring(lua_State *L) {
    oo_multi *mu = (oo_multi *)luaL_checkudata(L, 1, OO_MULTI_MT);
    if (!mu->m) lua_pushliteral(L, "optimizely.offline.multi (closed)");
    else lua_pushfstring(L, "optimizely.offline.multi (%d slots, %d in flight)", mu->n, mu->n - mu->nfree);
    return 1;
}

void oo_multi_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"set_headers", l_set_headers}, {"set_plain_ok", l_set_plain_ok},
        {"add", l_add}, {"perform", l_perform},
        {"free_slots", l_free_slots}, {"in_flight", l_in_flight}, {"abort", l_abort},
        {"close", l_multi_close}, {NULL, NULL}};
    oo_newclass(L, OO_MULTI_MT, methods, l_multi_close, l_multi_close, l_multi_tostring);
    lua_pushcfunction(L, l_multi_new);
    lua_setfield(L, -2, "multi_new");
}
