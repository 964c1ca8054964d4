/* Concurrent transfers through one curl multi handle, for send_batch.
 *
 * A fixed pool of easy handles (one per slot of concurrency) is set up once
 * with the client's options and reused, so connections stay alive (and are
 * multiplexed when the server speaks HTTP/2). Lua adds requests into free
 * slots and collects finished ones with perform(); all policy — retries,
 * backoff, rate — stays on the Lua side, which also runs every callback:
 * nothing here calls into Lua while curl is running. */
#include "core.h"
#include "http.h"

#include <stdlib.h>
#include <string.h>

#define OO_MULTI_MT "optimizely.offline.multi"
#define OO_MULTI_MAX 1024

typedef struct oo_slot {
    CURL *e;
    oo_http_xfer x;    /* response capture (x.headers unused: the list is shared) */
    oo_buf req;        /* our copy of the body: POSTFIELDS is not copied by curl */
    lua_Integer id;
    int busy;
} oo_slot;

typedef struct oo_multi {
    CURLM *m;
    oo_slot *slots;
    int *free_stack;
    int n, nfree;
    oo_http_xfer hdr; /* only hdr.headers: the request headers, shared by all slots */
} oo_multi;

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
        }
        free(mu->slots);
    }
    free(mu->free_stack);
    if (mu->m) curl_multi_cleanup(mu->m);
    oo_http_xfer_free(&mu->hdr);
    mu->slots = NULL;
    mu->free_stack = NULL;
    mu->m = NULL;
    mu->n = mu->nfree = 0;
}

/*** multi_new(opts, concurrency) -> multi. opts as for http_new. */
static int l_multi_new(lua_State *L) {
    oo_http_opts o;
    oo_multi *mu;
    int i, n = (int)luaL_checkinteger(L, 2);
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
    /* keep every connection of the pool cached between requests */
    curl_multi_setopt(mu->m, CURLMOPT_MAXCONNECTS, (long)n + 4);
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
        /* on HTTP/2, wait for the connection to multiplex instead of opening more */
        curl_easy_setopt(s->e, CURLOPT_PIPEWAIT, 1L);
        mu->free_stack[mu->nfree++] = n - 1 - i;
    }
    return 1;
}

/*** m:set_headers({"Name: value", ...}) — the headers of every request. */
static int l_set_headers(lua_State *L) {
    oo_multi *mu = check_multi(L);
    if (mu->nfree != mu->n) return luaL_error(L, "set_headers: transfers in flight");
    oo_http_build_headers(L, 2, &mu->hdr);
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
    if (mu->nfree == 0) { lua_pushboolean(L, 0); return 1; }
    s = &mu->slots[mu->free_stack[mu->nfree - 1]];
    s->req.len = 0;
    if (body) {
        oo_buf_add(&s->req, body, blen);
        if (s->req.oom) return luaL_error(L, "add: out of memory");
    }
    s->x.body.len = 0;
    s->x.too_big = 0;
    s->x.retry_after[0] = s->x.content_type[0] = '\0';
    rc = oo_http_prepare(s->e, &s->x, method, url, body ? s->req.data : NULL, s->req.len);
    if (rc == CURLE_OK) rc = curl_easy_setopt(s->e, CURLOPT_HTTPHEADER, mu->hdr.headers);
    if (rc != CURLE_OK) return luaL_error(L, "add: %s", curl_easy_strerror(rc));
    curl_easy_setopt(s->e, CURLOPT_PRIVATE, (void *)s);
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
static void push_done(lua_State *L, int t, int *count, oo_slot *s, CURLcode rc) {
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
        if (rc == CURLE_WRITE_ERROR && s->x.too_big) setstr(L, "message", "response body too large");
        else setstr(L, "message", s->x.errbuf[0] ? s->x.errbuf : curl_easy_strerror(rc));
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
            push_done(L, t, count, s, rc);
        }
    }
}

/*** m:perform(timeout_seconds) -> results, in_flight
 * Drives the transfers; waits up to the timeout for at least one to finish.
 * results: list of {id, status, body, retry_after, content_type, reused}
 * or {id, kind, message, curl_code}. */
static int l_perform(lua_State *L) {
    oo_multi *mu = check_multi(L);
    lua_Number timeout = luaL_optnumber(L, 2, 0);
    int running = 0, count = 0, t;
    CURLMcode mc;
    lua_newtable(L);
    t = lua_gettop(L);
    mc = curl_multi_perform(mu->m, &running);
    if (mc != CURLM_OK) return luaL_error(L, "perform: %s", curl_multi_strerror(mc));
    drain(L, mu, t, &count);
    if (count == 0 && running > 0 && timeout > 0) {
        int ms = timeout > 86400 ? 86400000 : (int)(timeout * 1000 + 0.5);
        mc = curl_multi_poll(mu->m, NULL, 0, ms, NULL);
        if (mc != CURLM_OK) return luaL_error(L, "perform: %s", curl_multi_strerror(mc));
        mc = curl_multi_perform(mu->m, &running);
        if (mc != CURLM_OK) return luaL_error(L, "perform: %s", curl_multi_strerror(mc));
        drain(L, mu, t, &count);
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
        {"set_headers", l_set_headers}, {"add", l_add}, {"perform", l_perform},
        {"free_slots", l_free_slots}, {"in_flight", l_in_flight}, {"abort", l_abort},
        {"close", l_multi_close}, {NULL, NULL}};
    if (luaL_newmetatable(L, OO_MULTI_MT)) {
        lua_newtable(L);
        oo_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_multi_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_multi_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_multi_new);
    lua_setfield(L, -2, "multi_new");
}
