/* The engine's Lua side: reading its configuration from a (checked) Lua
 * table, handing results to Lua, and the engine object send_batch drives
 * from the calling thread (core.engine_new). The queue's thread (worker.c)
 * uses the same configuration reader and result format. */
#define _GNU_SOURCE
#include "l_engine.h"
#include "core.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define OO_ENGINE_MT "optimizely.offline.engine"

/* ------------------------------------------------------------------ */
/* Configuration                                                       */

static double num_field(lua_State *L, int idx, const char *k, double dflt) {
    double v;
    lua_getfield(L, idx, k);
    v = lua_isnil(L, -1) ? dflt : (double)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static int bool_field(lua_State *L, int idx, const char *k) {
    int v;
    lua_getfield(L, idx, k);
    v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static char *dup_field(lua_State *L, int idx, const char *k, int required) {
    char *s = NULL;
    lua_getfield(L, idx, k);
    if (lua_type(L, -1) == LUA_TSTRING) s = strdup(lua_tostring(L, -1));
    else if (required) luaL_error(L, "engine: %s must be a string", k);
    lua_pop(L, 1);
    return s;
}

/* The channels: {{name=, token=, headers={"Name: value", ...}}, ...}; each
 * header list gets the User-Agent line unless it has its own. Raises. */
static oo_channel *read_channels(lua_State *L, int idx, const char *user_agent, int *n) {
    oo_channel *chans;
    int i, count;
    lua_getfield(L, idx, "channels");
    luaL_checktype(L, -1, LUA_TTABLE);
    count = (int)oo_rawlen(L, -1);
    if (count < 1 || count > 64) luaL_error(L, "engine: channels must list 1..64 channels");
    chans = (oo_channel *)calloc((size_t)count, sizeof *chans);
    if (!chans) luaL_error(L, "engine: out of memory");
    for (i = 0; i < count; i++) {
        oo_http_xfer hx;
        int top, own_ua = 0;
        const struct curl_slist *h;
        lua_rawgeti(L, -1, i + 1);
        top = lua_gettop(L);
        luaL_checktype(L, top, LUA_TTABLE);
        chans[i].name = dup_field(L, top, "name", 0);
        chans[i].token = dup_field(L, top, "token", 0);
        oo_http_xfer_init(&hx, 0);
        lua_getfield(L, top, "headers");
        oo_http_build_headers(L, lua_gettop(L), &hx); /* raises on CR/LF; hx owns the list */
        lua_pop(L, 1);
        for (h = hx.headers; h; h = h->next)
            if (strncasecmp(h->data, "User-Agent:", 11) == 0) own_ua = 1;
        if (user_agent && !own_ua) {
            size_t n2 = strlen(user_agent) + sizeof "User-Agent: ";
            char *line = (char *)malloc(n2);
            struct curl_slist *l2;
            if (!line) luaL_error(L, "engine: out of memory");
            if (strpbrk(user_agent, "\r\n")) { free(line); luaL_error(L, "engine: user_agent contains CR or LF"); }
            memcpy(line, "User-Agent: ", sizeof "User-Agent: " - 1);
            memcpy(line + sizeof "User-Agent: " - 1, user_agent, strlen(user_agent) + 1);
            l2 = curl_slist_append(hx.headers, line);
            free(line);
            if (!l2) luaL_error(L, "engine: out of memory");
            hx.headers = l2;
        }
        chans[i].headers = hx.headers;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *n = count;
    return chans;
}

static void free_channels(oo_channel *c, int n) {
    int i;
    for (i = 0; i < n; i++) {
        free(c[i].name);
        if (c[i].token) {
            memset(c[i].token, 0, strlen(c[i].token));
            free(c[i].token);
        }
        if (c[i].headers) curl_slist_free_all(c[i].headers);
    }
    free(c);
}

void oo_engine_read_cfg(lua_State *L, int idx, oo_engine_cfg *cfg, oo_policy *pol) {
    const char *on_stop;
    memset(cfg, 0, sizeof *cfg);
    cfg->concurrency = (int)num_field(L, idx, "concurrency", 8);
    if (cfg->concurrency < 1 || cfg->concurrency > 1024) luaL_error(L, "engine: concurrency must be 1..1024");
    cfg->adaptive = bool_field(L, idx, "adaptive");
    cfg->initial_limit = (int)num_field(L, idx, "initial_limit", 0);
    cfg->auth_pause = num_field(L, idx, "auth_pause", 300);
    cfg->report_all = bool_field(L, idx, "report_all");
    cfg->report_retries = bool_field(L, idx, "report_retries");
    cfg->no_metrics = bool_field(L, idx, "no_metrics");
    cfg->max_results = (size_t)num_field(L, idx, "max_results", 100000);
    lua_getfield(L, idx, "on_stop");
    on_stop = lua_tostring(L, -1);
    cfg->on_stop = on_stop && strcmp(on_stop, "pause") == 0 ? OO_STOP_PAUSE : OO_STOP_DRAIN;
    lua_pop(L, 1);
    lua_getfield(L, idx, "policy");
    oo_policy_read(L, lua_gettop(L), pol);
    lua_pop(L, 1);
}

int oo_engine_setup(lua_State *L, int idx, oo_engine *e) {
    oo_http_opts ho;
    oo_engine_cfg cfg;
    oo_policy pol;
    oo_channel *chans;
    int nchan, http_idx, i;
    char *url, err[256];
    luaL_checktype(L, idx, LUA_TTABLE);
    oo_engine_read_cfg(L, idx, &cfg, &pol);
    lua_getfield(L, idx, "http"); /* stays on the stack: ho's strings point into it */
    http_idx = lua_gettop(L);
    oo_http_read_opts(L, http_idx, &ho);
    chans = read_channels(L, idx, ho.user_agent, &nchan);
    url = dup_field(L, idx, "url", 0);
    if (!url) {
        free_channels(chans, nchan);
        return luaL_error(L, "engine: url must be a string");
    }
    if (oo_engine_init(e, &ho, &cfg, &pol, url, chans, nchan, err, sizeof err) != 0) {
        oo_engine_free(e); /* frees url and chans too */
        return luaL_error(L, "engine: %s", err);
    }
    /* no label of the engine's metrics may echo a token */
    for (i = 0; i < nchan; i++) oo_metrics_secret(&e->metrics, chans[i].token);
    lua_pop(L, 1);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static const char *what_name(oo_res_kind k) {
    switch (k) {
    case OO_RES_SENT: return "sent";
    case OO_RES_DEAD: return "dead";
    case OO_RES_STOPPED: return "stopped";
    case OO_RES_DROPPED: return "dropped";
    case OO_RES_RETRY: return "retry";
    case OO_RES_PAUSED: return "paused";
    case OO_RES_RESUMED: return "resumed";
    }
    return "?";
}

/* One result as a table: what, id, ref, attempts, channel (name), latency,
 * why, until, body, and the record's fields (ok, kind, status, code,
 * message, retryable, retry_after, stop, warned). */
static void push_result(lua_State *L, const oo_engine *e, const oo_result *r) {
    oo_push_outcome(L, &r->o);
    oo_set_str(L, "what", what_name(r->what));
    if (r->what == OO_RES_PAUSED || r->what == OO_RES_RESUMED) {
        if (r->why) oo_set_str(L, "why", r->why);
        if (r->until >= 0) oo_set_num(L, "until", r->until);
        if (r->o.kind == NULL) { lua_pushnil(L); lua_setfield(L, -2, "ok"); }
        return;
    }
    oo_set_int(L, "id", r->id);
    if (r->ref) oo_set_str(L, "ref", r->ref);
    oo_set_int(L, "attempts", r->attempts);
    if (r->channel >= 0 && r->channel < e->nchan && e->chans[r->channel].name)
        oo_set_str(L, "channel", e->chans[r->channel].name);
    oo_set_int(L, "channel_index", r->channel + 1);
    if (r->why) oo_set_str(L, "why", r->why);
    if (r->latency > 0) oo_set_num(L, "latency", r->latency);
    if (r->until >= 0) oo_set_num(L, "until", r->until);
    if (r->body) {
        lua_pushlstring(L, r->body, r->body_len);
        lua_setfield(L, -2, "body");
    }
}

int oo_push_results(lua_State *L, const oo_engine *e, oo_result *list) {
    oo_result *r;
    int k = 0;
    lua_newtable(L);
    for (r = list; r; r = r->next) {
        push_result(L, e, r);
        lua_rawseti(L, -2, ++k);
    }
    oo_results_free(list);
    return 1;
}

void oo_push_engine_stats(lua_State *L, oo_engine *e) {
    lua_createtable(L, 0, 12);
    pthread_mutex_lock(&e->mu);
#define F(name, v) oo_set_int(L, name, (long long)(v))
    F("queued", e->nin + e->nready + e->nheap);
    F("retrying", e->nheap);
    F("in_flight", e->in_flight);
    F("sent", e->metrics.sent);
    F("retried", e->metrics.retried);
    F("throttled", e->metrics.throttled);
    F("dead", e->metrics.dead);
    F("failed", e->metrics.failed);
    F("pushed", e->metrics.queued);
    F("results_dropped", e->results_dropped);
    F("pending_results", e->nout);
    F("limit", e->limit_now);
#undef F
    oo_set_bool(L, "stopped", e->stopped);
    oo_set_num(L, "paused_for", e->pause_until > oo_mono_now() ? e->pause_until - oo_mono_now() : 0);
    pthread_mutex_unlock(&e->mu);
}

void oo_push_engine_metrics(lua_State *L, oo_engine *e) {
    oo_metrics m;
    pthread_mutex_lock(&e->mu);
    m = e->metrics;
    pthread_mutex_unlock(&e->mu);
    oo_metrics_push(L, &m);
}

/* ------------------------------------------------------------------ */
/* The engine object (driven by the calling thread: send_batch)        */

typedef struct oo_engine_ud {
    oo_engine e;
    int open;
} oo_engine_ud;

static oo_engine *check_engine(lua_State *L) {
    oo_engine_ud *u = (oo_engine_ud *)luaL_checkudata(L, 1, OO_ENGINE_MT);
    if (!u->open) luaL_error(L, "engine is closed");
    return &u->e;
}

/*** core.engine_new(cfg) -> engine (see oo_engine_setup for cfg) */
static int l_engine_new(lua_State *L) {
    oo_engine_ud *u;
    luaL_checktype(L, 1, LUA_TTABLE);
    u = (oo_engine_ud *)lua_newuserdata(L, sizeof *u);
    u->open = 0;
    oo_setmetatable(L, OO_ENGINE_MT);
    oo_engine_setup(L, 1, &u->e);
    u->open = 1;
    return 1;
}

/*** e:add(id, body, channel_index [, ref [, created]]) */
static int l_add(lua_State *L) {
    oo_engine *e = check_engine(L);
    lua_Integer id = luaL_checkinteger(L, 2);
    size_t blen, rlen = 0;
    const char *body = luaL_checklstring(L, 3, &blen);
    lua_Integer ch = luaL_optinteger(L, 4, 1);
    const char *ref = luaL_optlstring(L, 5, NULL, &rlen);
    double created = (double)luaL_optnumber(L, 6, 0);
    oo_job *j;
    luaL_argcheck(L, ch >= 1 && ch <= e->nchan, 4, "no such channel");
    j = oo_job_new((long long)id, body, blen, ref, rlen, (int)ch - 1, created);
    if (!j) return luaL_error(L, "engine: out of memory");
    if (created <= 0) j->created = oo_wall_now();
    oo_engine_add(e, j);
    return 0;
}

/*** e:turn(wait) -> settled (drives the transfers up to `wait` seconds) */
static int l_turn(lua_State *L) {
    oo_engine *e = check_engine(L);
    double wait = (double)luaL_optnumber(L, 2, 0);
    int n;
    if (!(wait >= 0)) wait = 0;
    if (wait > 86400) wait = 86400;
    n = oo_engine_turn(e, wait);
    if (n < 0) return luaL_error(L, "engine: %s", e->err);
    lua_pushinteger(L, n);
    return 1;
}

static int l_results(lua_State *L) {
    oo_engine *e = check_engine(L);
    return oo_push_results(L, e, oo_engine_collect(e));
}

static int l_pending(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)oo_engine_pending(check_engine(L)));
    return 1;
}

static int l_stats(lua_State *L) {
    oo_push_engine_stats(L, check_engine(L));
    return 1;
}

static int l_metrics(lua_State *L) {
    oo_push_engine_metrics(L, check_engine(L));
    return 1;
}

/* Sorts a dropped job into the table at -2 (attempted: outcome unknown or
 * failed so far) or -1 (never started). */
static void collect_id(void *ud, oo_job *j) {
    lua_State *L = (lua_State *)ud;
    int t = j->started ? -2 : -1;
    int n = (int)oo_rawlen(L, t);
    lua_pushinteger(L, (lua_Integer)j->id);
    lua_rawseti(L, t - 1, n + 1);
    free(j);
}

/*** e:drop() -> unknown, unsent — every job not settled, taken out:
 * `unknown` the ids of those attempted (in flight when aborted, or waiting
 * for a retry: the server may or may not have the order), `unsent` the ids
 * of those never started. (Ctrl-C.) */
static int l_drop(lua_State *L) {
    oo_engine *e = check_engine(L);
    lua_newtable(L);
    lua_newtable(L);
    oo_engine_drop_all(e, collect_id, L);
    return 2;
}

static int l_close(lua_State *L) {
    oo_engine_ud *u = (oo_engine_ud *)luaL_checkudata(L, 1, OO_ENGINE_MT);
    if (u->open) {
        u->open = 0;
        oo_engine_free(&u->e);
    }
    return 0;
}

void oo_engine_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"add", l_add}, {"turn", l_turn}, {"results", l_results}, {"pending", l_pending},
        {"stats", l_stats}, {"metrics", l_metrics}, {"drop", l_drop}, {"close", l_close},
        {NULL, NULL}};
    oo_newclass(L, OO_ENGINE_MT, methods, l_close, l_close, NULL);
    lua_pushcfunction(L, l_engine_new);
    lua_setfield(L, -2, "engine_new");
}
