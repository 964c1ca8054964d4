/* The libcurl engine's Lua side (l_engine.h): the configuration (the
 * scheduler's reader, l_sched.c, plus the HTTP options and the channels'
 * header lists for the driver) and the engine object send_batch drives
 * from the calling thread (core.engine_new). */
#define _GNU_SOURCE
#include "l_engine.h"
#include "clock.h"
#include "core.h"
#include "spool.h" /* oo_spool_push_err: a ledger failure in the one error shape */

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define OO_ENGINE_MT "optimizely.offline.engine"

/* ------------------------------------------------------------------ */
/* Configuration                                                       */

static double num_opt(lua_State *L, int idx, const char *k, double dflt) {
    double v;
    lua_getfield(L, idx, k);
    v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

/* "User-Agent: <ua>" appended to the list (the pool's handles send no
 * CURLOPT_USERAGENT: it would be formatted anew on every request). */
static struct curl_slist *add_user_agent(struct curl_slist *h, const char *ua) {
    static const char prefix[] = "User-Agent: ";
    size_t n = strlen(ua);
    char *line = (char *)malloc(sizeof prefix + n);
    struct curl_slist *l2;
    if (!line) return NULL;
    memcpy(line, prefix, sizeof prefix - 1);
    memcpy(line + sizeof prefix - 1, ua, n + 1);
    l2 = curl_slist_append(h, line);
    free(line);
    return l2;
}

/* The channels' header lists while they are built: a userdata, so that a
 * raise (a header with CR/LF) leaves nothing behind (its __gc frees them). */
typedef struct oo_headers_box {
    oo_http_xfer x; /* the list being built */
    struct curl_slist *lists[64];
    int n;
} oo_headers_box;

#define OO_HBOX_MT "optimizely.offline.headers_box"

static int hbox_gc(lua_State *L) {
    oo_headers_box *b = (oo_headers_box *)luaL_checkudata(L, 1, OO_HBOX_MT);
    int i;
    for (i = 0; i < b->n; i++)
        if (b->lists[i]) curl_slist_free_all(b->lists[i]);
    b->n = 0;
    oo_http_xfer_free(&b->x);
    return 0;
}

/* channels[i + 1].headers into b->lists[i], with the User-Agent line
 * unless the channel has its own (the channels table is on top). */
static void channel_headers(lua_State *L, oo_headers_box *b, int i, const char *ua) {
    const struct curl_slist *h;
    int own_ua = 0;
    lua_rawgeti(L, -1, i + 1);
    lua_getfield(L, -1, "headers");
    oo_http_build_headers(L, lua_gettop(L), &b->x); /* raises on CR/LF; b owns the list */
    lua_pop(L, 2);
    b->lists[i] = b->x.headers;
    b->x.headers = NULL;
    for (h = b->lists[i]; h; h = h->next)
        if (strncasecmp(h->data, "User-Agent:", 11) == 0) own_ua = 1;
    if (ua && !own_ua) {
        struct curl_slist *l2;
        if (strpbrk(ua, "\r\n")) luaL_error(L, "engine: user_agent contains CR or LF");
        l2 = add_user_agent(b->lists[i], ua);
        if (!l2) luaL_error(L, "engine: out of memory");
        b->lists[i] = l2;
    }
}

/* The channels' header lists for the driver (a malloc'd array). */
static struct curl_slist **read_headers(lua_State *L, int idx, int nchan, const char *ua) {
    oo_headers_box *b = (oo_headers_box *)lua_newuserdata(L, sizeof *b);
    struct curl_slist **hs;
    int i;
    memset(b, 0, sizeof *b);
    oo_http_xfer_init(&b->x, 0);
    oo_setmetatable(L, OO_HBOX_MT);
    b->n = nchan;
    lua_getfield(L, idx, "channels");
    for (i = 0; i < nchan; i++) channel_headers(L, b, i, ua);
    lua_pop(L, 1);
    hs = (struct curl_slist **)calloc((size_t)nchan, sizeof *hs);
    if (!hs) luaL_error(L, "engine: out of memory");
    memcpy(hs, b->lists, (size_t)nchan * sizeof *hs);
    b->n = 0; /* handed over */
    lua_pop(L, 1);
    return hs;
}

void oo_engine_setup(lua_State *L, int idx, oo_engine *e) {
    oo_http_opts ho;
    struct curl_slist **hs;
    char err[256];
    int http_idx, nchan;
    luaL_checktype(L, idx, LUA_TTABLE);
    memset(e, 0, sizeof *e);
    lua_getfield(L, idx, "http"); /* stays on the stack: ho's strings point into it */
    http_idx = lua_gettop(L);
    oo_http_read_opts(L, http_idx, &ho);
    lua_getfield(L, idx, "channels");
    nchan = lua_type(L, -1) == LUA_TTABLE ? (int)oo_rawlen(L, -1) : 0;
    lua_pop(L, 1);
    /* the options layer built the channels; this bound is kept because the
     * header box holds 64 lists (memory safety) */
    if (nchan < 1 || nchan > 64) luaL_error(L, "engine: channels must list 1..64 channels");
    hs = read_headers(L, idx, nchan, ho.user_agent);
    oo_sched_setup(L, idx, &e->s); /* raises only before it allocates */
    if (oo_curl_init(&e->d, &e->s, &ho, hs, e->s.nchan, err, sizeof err) != 0) {
        oo_sched_free(&e->s);
        luaL_error(L, "engine: %s", err);
    }
    lua_pop(L, 1);
}

/* The record hook: the engine is the scheduler's container (s first). */
static void engine_record(oo_sched *s, const oo_job *j, oo_res_kind what, const oo_outcome *o) {
    oo_engine *e = (oo_engine *)s;
    oo_ledger_sink_add(&e->sink, s, j, what, o);
}

static const oo_sched_hooks record_hooks = {NULL, NULL, NULL, NULL, NULL, engine_record};

int oo_engine_ledger(lua_State *L, int idx, oo_engine *e) {
    oo_ledger *l;
    const char *host, *site;
    lua_getfield(L, idx, "ledger");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    l = oo_ledger_arg(L, lua_gettop(L));
    lua_getfield(L, idx, "ledger_host");
    lua_getfield(L, idx, "ledger_site");
    host = lua_tostring(L, -2);
    site = lua_tostring(L, -1);
    if (!host || !site) luaL_error(L, "engine: a ledger needs ledger_host and ledger_site");
    oo_ledger_sink_init(&e->sink, l, host, site);
    e->sink.window = num_opt(L, idx, "ledger_window", e->sink.window);
    lua_pop(L, 3);
    e->s.hooks = &record_hooks;
    lua_getfield(L, idx, "ledger_thread");
    /* no thread: the notes are written in the driver's thread, as before */
    if (lua_toboolean(L, -1)) (void)oo_ledger_sink_start(&e->sink);
    lua_pop(L, 1);
    return 1;
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
    oo_engine_ledger(L, 1, &u->e);
    return 1;
}

/*** e:add(job) — a job table (l_sched.h: id, body, channel, ref, method,
 * url, after_ref, blob, created) */
static int l_add(lua_State *L) {
    oo_engine *e = check_engine(L);
    oo_job_spec sp;
    oo_job *j;
    oo_job_spec_read(L, 2, e->s.nchan, &sp);
    j = oo_job_new(&sp);
    if (!j) return luaL_error(L, "engine: out of memory");
    oo_sched_add(&e->s, j);
    return 0;
}

/*** e:turn(wait) -> settled (drives the transfers up to `wait` seconds) */
static int l_turn(lua_State *L) {
    oo_engine *e = check_engine(L);
    double wait = (double)luaL_optnumber(L, 2, 0);
    int n;
    if (!(wait >= 0)) wait = 0;
    if (wait > 86400) wait = 86400;
    if (e->sink.l) { /* a ledger note due soon bounds the wait */
        double due = oo_ledger_sink_tick(&e->sink, oo_mono_now());
        if (due < wait) wait = due;
    }
    n = oo_curl_turn(&e->d, wait);
    if (n < 0) return luaL_error(L, "engine: %s", e->d.err);
    if (e->sink.l) oo_ledger_sink_tick(&e->sink, oo_mono_now());
    lua_pushinteger(L, n);
    return 1;
}

/*** e:flush_ledger() -> true | nil, err — the ledger notes written now */
static int l_flush_ledger(lua_State *L) {
    oo_engine *e = check_engine(L);
    oo_spool_err err;
    if (e->sink.l && oo_ledger_sink_flush(&e->sink, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/*** e:ledger_reserve(scope, list, lease) -> true | false (no ledger thread,
 * or a request unanswered) — looks the list up and reserves it on the
 * ledger's thread (as ledger:reserve); the answers come with
 * e:ledger_answers() */
static int l_ledger_reserve(lua_State *L) {
    oo_engine *e = check_engine(L);
    oo_ledger_scope sc;
    oo_ledger_item *items;
    size_t n;
    double lease = (double)luaL_checknumber(L, 4);
    if (!e->sink.l || !e->sink.threaded) {
        lua_pushboolean(L, 0);
        return 1;
    }
    oo_ledger_scope_read(L, 2, "engine:ledger_reserve", &sc);
    items = oo_ledger_items_read(L, 3, "engine:ledger_reserve", 0, 0, &n);
    if (!(lease > 0)) luaL_error(L, "engine:ledger_reserve: lease must be positive");
    lua_pushboolean(L, oo_ledger_sink_reserve(&e->sink, &sc, items, n, lease) == 0);
    return 1;
}

/*** e:ledger_answers([short]) -> answers (as ledger:reserve's) | nil, err —
 * waits for the answer of the last e:ledger_reserve; `short`: true for a
 * reservation, the number `at` for an order sent before with the same
 * bytes (outcome "sent"), else the table (oo_ledger_answers_push_short) */
static int l_ledger_answers(lua_State *L) {
    oo_engine *e = check_engine(L);
    oo_spool_err err;
    size_t n = 0;
    const oo_ledger_item *items;
    if (!e->sink.l) return luaL_error(L, "engine: no ledger");
    items = oo_ledger_sink_answers(&e->sink, &n, &err);
    if (!items) return oo_spool_push_err(L, &err);
    if (lua_toboolean(L, 2)) return oo_ledger_answers_push_short(L, items, n);
    return oo_ledger_answers_push(L, items, n);
}

/*** e:ledger_stats() -> {written, errors, lost, waiting, error?} | nil (no ledger) */
static int l_ledger_stats(lua_State *L) {
    oo_engine *e = check_engine(L);
    if (!e->sink.l) return 0;
    oo_push_sink_stats(L, &e->sink);
    return 1;
}

static int l_results(lua_State *L) {
    oo_engine *e = check_engine(L);
    return oo_push_results(L, &e->s, oo_sched_collect(&e->s));
}

static int l_pending(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)oo_sched_pending(&check_engine(L)->s));
    return 1;
}

static int l_stats(lua_State *L) {
    oo_push_sched_stats(L, &check_engine(L)->s);
    return 1;
}

static int l_metrics(lua_State *L) {
    oo_push_sched_metrics(L, &check_engine(L)->s);
    return 1;
}

/*** e:remove_ref(ref [, method]) -> removed (job infos), in_flight */
static int l_remove_ref(lua_State *L) {
    oo_engine *e = check_engine(L);
    size_t len;
    const char *ref = luaL_checklstring(L, 2, &len);
    const char *m = luaL_optstring(L, 3, NULL);
    int method = !m ? -1 : strcmp(m, "DELETE") == 0 ? OO_DELETE : OO_POST, flying = 0;
    oo_push_removed(L, &e->s, oo_sched_remove_ref(&e->s, ref, len, method, &flying));
    lua_pushboolean(L, flying);
    return 2;
}

typedef struct drop_ctx {
    lua_State *L;
    const oo_sched *s;
    int infos;
} drop_ctx;

/* Sorts a dropped job into the table at -2 (attempted: outcome unknown or
 * failed so far) or -1 (never started): its id, or its job info. */
static void collect_id(void *ud, oo_job *j) {
    drop_ctx *c = (drop_ctx *)ud;
    lua_State *L = c->L;
    int t = j->started ? -2 : -1;
    int n = (int)oo_rawlen(L, t);
    if (c->infos) oo_push_job_info(L, c->s, j);
    else lua_pushinteger(L, (lua_Integer)j->id);
    lua_rawseti(L, t - 1, n + 1);
    free(j);
}

/* The two tables a drop fills (unknown, unsent) pushed, and c set up to
 * fill them: e:drop's and e:drop_waiting's shared start. */
static void drop_begin(lua_State *L, oo_engine *e, drop_ctx *c) {
    c->L = L;
    c->s = &e->s;
    c->infos = lua_toboolean(L, 2);
    lua_newtable(L);
    lua_newtable(L);
}

/*** e:drop([infos]) -> unknown, unsent — every job not settled, taken out:
 * `unknown` those attempted (in flight when aborted, or waiting for a
 * retry: the server may or may not have the order), `unsent` those never
 * started; their ids, or with `infos` their job infos (id, ref, channel,
 * method, ...). (Ctrl-C.) */
static int l_drop(lua_State *L) {
    oo_engine *e = check_engine(L);
    drop_ctx c;
    drop_begin(L, e, &c);
    oo_curl_drop_all(&e->d, collect_id, &c);
    return 2;
}

/*** e:drop_waiting([infos]) -> unknown, unsent — the jobs not in flight
 * (waiting to start, parked, or waiting for a retry), taken out; those in
 * flight go on. Tables as e:drop's. */
static int l_drop_waiting(lua_State *L) {
    oo_engine *e = check_engine(L);
    drop_ctx c;
    drop_begin(L, e, &c);
    oo_sched_drop_all(&e->s, collect_id, &c);
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
    static const luaL_Reg methods[] = {{"add", l_add},
                                       {"turn", l_turn},
                                       {"results", l_results},
                                       {"pending", l_pending},
                                       {"stats", l_stats},
                                       {"metrics", l_metrics},
                                       {"drop", l_drop},
                                       {"drop_waiting", l_drop_waiting},
                                       {"remove_ref", l_remove_ref},
                                       {"flush_ledger", l_flush_ledger},
                                       {"ledger_stats", l_ledger_stats},
                                       {"ledger_reserve", l_ledger_reserve},
                                       {"ledger_answers", l_ledger_answers},
                                       {"close", l_close},
                                       {NULL, NULL}};
    static const luaL_Reg none[] = {{NULL, NULL}};
    oo_newclass(L, OO_ENGINE_MT, methods, l_close, l_close, NULL);
    oo_newclass(L, OO_HBOX_MT, none, hbox_gc, NULL, NULL);
    lua_pushcfunction(L, l_engine_new);
    lua_setfield(L, -2, "engine_new");
}
