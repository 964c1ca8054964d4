/* The queue worker's Lua binding (worker.h holds the thread and the spool
 * hooks): core.worker_new(cfg) and its methods. The configuration was
 * checked by the Lua options layer (queue.lua's schema): C trusts it. */
#define _GNU_SOURCE
#include "worker.h"
#include "clock.h"
#include "core.h"
#include "l_engine.h"

#include <stdlib.h>
#include <string.h>

#define OO_WORKER_MT "optimizely.offline.worker"

typedef struct oo_worker_ud {
    oo_worker *w;
} oo_worker_ud;

static oo_worker *check_worker(lua_State *L) {
    oo_worker_ud *u = (oo_worker_ud *)luaL_checkudata(L, 1, OO_WORKER_MT);
    if (!u->w) luaL_error(L, "queue worker is closed");
    if (u->w->pid != oo_getpid())
        luaL_error(L, "queue worker belongs to another process (forked): make a new queue");
    return u->w;
}

static double opt_num(lua_State *L, int t, const char *k, double d) {
    double v;
    lua_getfield(L, t, k);
    v = lua_isnil(L, -1) ? d : (double)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static char *opt_dup(lua_State *L, int t, const char *k) {
    char *v;
    lua_getfield(L, t, k);
    v = lua_type(L, -1) == LUA_TSTRING ? strdup(lua_tostring(L, -1)) : NULL;
    lua_pop(L, 1);
    return v;
}

static void ensure_started(lua_State *L, oo_worker *w) {
    if (!w->started && oo_worker_start(w) != 0)
        luaL_error(L, "queue worker: cannot start its thread");
}

/*** worker_new(cfg) -> worker
 * cfg: the engine's (l_engine.h: http, url, channels, concurrency, policy,
 * on_stop, auth_pause, ...) plus max_queue, spool = <spool object or nil>,
 * lease, spool_poll, cancel_prefix and cancel_suffix (a spooled cancel's
 * URL is prefix .. the refCode as a path segment .. suffix); without a
 * spool, ledger, ledger_host, ledger_site (l_engine.h: oo_engine_ledger). */
static int l_worker_new(lua_State *L) {
    oo_worker_ud *u;
    oo_worker *w;
    luaL_checktype(L, 1, LUA_TTABLE);
    u = (oo_worker_ud *)lua_newuserdata(L, sizeof *u);
    u->w = NULL;
    oo_setmetatable(L, OO_WORKER_MT);
    w = (oo_worker *)calloc(1, sizeof *w);
    if (!w) return luaL_error(L, "worker_new: out of memory");
    oo_engine_setup(L, 1, &w->e); /* raises on misuse: w leaks only then */
    u->w = w;
    w->e.s.hook_ud = w;
    w->pid = oo_getpid();
    w->max_queue = (size_t)opt_num(L, 1, "max_queue", 10000);
    w->lease = opt_num(L, 1, "lease", 60);
    w->spool_poll = opt_num(L, 1, "spool_poll", 0.25);
    w->cancel_prefix = opt_dup(L, 1, "cancel_prefix");
    w->cancel_suffix = opt_dup(L, 1, "cancel_suffix");
    /* the spool: the thread gets its own connection to the caller's file */
    lua_getfield(L, 1, "spool");
    if (!lua_isnil(L, -1)) {
        oo_spool_err serr;
        oo_spool *main = oo_spool_check(L, lua_gettop(L));
        if (oo_worker_use_spool(w, main, &serr) != OO_SPOOL_OK)
            return luaL_error(L, "worker_new: %s", serr.message);
    } else {
        /* in memory, cfg.ledger: each end recorded through the record hook,
         * written on the sink's own thread (this thread never ticks it) */
        lua_pushboolean(L, 1);
        lua_setfield(L, 1, "ledger_thread");
        (void)oo_engine_ledger(L, 1, &w->e);
    }
    lua_pop(L, 1);
    return 1;
}

/*** w:push(body, ref, channel [, more [, then_body, then_more]]) -> true |
 * false (max_queue reached); more: the job's other fields (l_sched.h:
 * method, url, after_ref, after_ok, blob, id, created). With then_body a
 * second job of the same refCode and channel is queued with the first, in
 * one step (oo_sched_add_all): an amend's DELETE and its new version. */
static int l_push(lua_State *L) {
    oo_worker *w = check_worker(L);
    oo_job_spec sp;
    oo_job *j[2];
    size_t n = 1;
    oo_job_spec_args(L, 2, w->e.s.nchan, &sp);
    ensure_started(L, w); /* before the allocation: it may raise */
    j[0] = oo_job_new(&sp);
    if (!j[0]) return luaL_error(L, "push: out of memory");
    if (!lua_isnoneornil(L, 6)) {
        int at;
        lua_settop(L, 7);
        lua_pushvalue(L, 6);
        lua_pushvalue(L, 3);
        lua_pushvalue(L, 4);
        lua_pushvalue(L, 7);
        at = lua_gettop(L) - 3;
        oo_job_spec_args(L, at, w->e.s.nchan, &sp); /* may raise: j[0] leaks only then */
        if (!(j[1] = oo_job_new(&sp))) {
            free(j[0]);
            return luaL_error(L, "push: out of memory");
        }
        n = 2;
    }
    /* full: checked under the same lock as the add */
    if (!oo_sched_add_all(&w->e.s, j, n, w->max_queue)) {
        while (n) free(j[--n]);
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/*** w:remove_ref(ref [, method]) -> removed (job infos), in_flight — the
 * unstarted jobs of a refCode taken out (a cancel of an order never sent).
 * Spool rows among them stay leased: the caller settles them. */
static int l_remove_ref(lua_State *L) {
    oo_worker *w = check_worker(L);
    size_t len;
    const char *ref = luaL_checklstring(L, 2, &len);
    const char *m = luaL_optstring(L, 3, NULL);
    int method = !m ? -1 : strcmp(m, "DELETE") == 0 ? OO_DELETE : OO_POST, flying = 0;
    oo_push_removed(L, &w->e.s, oo_sched_remove_ref(&w->e.s, ref, len, method, &flying));
    lua_pushboolean(L, flying);
    return 2;
}

/*** w:notify([n]) — n orders (default 0) were put in the spool: the thread
 * (started if need be) claims at once instead of at its next spool_poll. */
static int l_notify(lua_State *L) {
    oo_worker *w = check_worker(L);
    lua_Integer n = luaL_optinteger(L, 2, 0);
    ensure_started(L, w);
    oo_worker_notify(w, (long long)n);
    return 0;
}

/*** w:results() -> list of result tables (l_engine.c) since the last call */
static int l_results(lua_State *L) {
    oo_worker *w = check_worker(L);
    return oo_push_results(L, &w->e.s, oo_sched_collect(&w->e.s));
}

/*** w:stats() -> the engine's stats plus running, storage_errors, storage_error */
static int l_stats(lua_State *L) {
    oo_worker *w = check_worker(L);
    oo_worker_stats st;
    oo_push_sched_stats(L, &w->e.s);
    oo_worker_read_stats(w, &st);
    oo_set_bool(L, "running", st.running);
    oo_set_num(L, "storage_errors", (double)st.storage_errors);
    if (st.storage_error[0]) oo_set_str(L, "storage_error", st.storage_error);
    return 1;
}

static int l_metrics(lua_State *L) {
    oo_push_sched_metrics(L, &check_worker(L)->e.s);
    return 1;
}

/*** w:wait(timeout [, seen]) -> idle, progress — returns at once when
 * results wait to be collected; else blocks until the thread reports
 * something (a result, going idle) or the timeout. `idle`: nothing is
 * queued, retrying or in flight in memory and, with a spool, the thread's
 * last look found nothing more due there (rows due later or leased by
 * another process are not seen here: the Lua side asks the spool).
 * `progress` counts the times the thread went idle and wrote its acks to
 * the spool; with `seen` (a progress value from an earlier call) it blocks
 * until the progress moves past it instead, even when idle — so a flush of
 * a spool does not spin while rows wait to be claimed or deleted. */
static int l_wait(lua_State *L) {
    oo_worker *w = check_worker(L);
    double timeout = (double)luaL_optnumber(L, 2, 0);
    int has_seen = !lua_isnoneornil(L, 3);
    unsigned long seen = has_seen ? (unsigned long)luaL_checknumber(L, 3) : 0, progress;
    int idle = oo_worker_wait(w, timeout, has_seen, seen, &progress);
    lua_pushboolean(L, idle);
    lua_pushnumber(L, (lua_Number)progress);
    return 2;
}

/*** w:resume() — clears a credentials stop: sending starts again now. */
static int l_resume(lua_State *L) {
    oo_sched_resume(&check_worker(L)->e.s); /* under its lock; wakes the thread */
    return 0;
}

/*** w:flush_ledger() -> true | nil, err — the ledger notes of the orders
 * settled so far written now (without a spool; with one, the acks write
 * them): a push after flush then finds them. */
static int l_flush_ledger(lua_State *L) {
    oo_worker *w = check_worker(L);
    oo_spool_err err;
    if (w->e.sink.l && oo_ledger_sink_flush(&w->e.sink, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/*** w:close(timeout) -> true, results | false (the thread did not stop in
 * time). results: what the thread reported while stopping (orders held
 * only in memory, as "dropped"). */
static int l_close(lua_State *L) {
    oo_worker_ud *u = (oo_worker_ud *)luaL_checkudata(L, 1, OO_WORKER_MT);
    double timeout = (double)luaL_optnumber(L, 2, 5);
    oo_worker *w = u->w;
    if (!w) {
        lua_pushboolean(L, 1);
        lua_newtable(L);
        return 2;
    }
    u->w = NULL;
    if (w->pid != oo_getpid()) {
        /* a forked copy: the thread lives in the parent; forget our copy */
        lua_pushboolean(L, 1);
        lua_newtable(L);
        return 2;
    }
    oo_worker_drop_unstarted(w);
    if (!oo_worker_stop(w, timeout)) {
        lua_pushboolean(L, 0);
        lua_newtable(L);
        return 2;
    }
    lua_pushboolean(L, 1);
    oo_push_results(L, &w->e.s, oo_sched_collect(&w->e.s));
    oo_worker_free(w);
    return 2;
}

static int l_gc(lua_State *L) {
    lua_settop(L, 1);
    lua_pushnumber(L, 2); /* give a running transfer two seconds */
    l_close(L);
    return 0;
}

void oo_worker_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"push", l_push},
                                       {"remove_ref", l_remove_ref},
                                       {"notify", l_notify},
                                       {"results", l_results},
                                       {"stats", l_stats},
                                       {"metrics", l_metrics},
                                       {"wait", l_wait},
                                       {"resume", l_resume},
                                       {"flush_ledger", l_flush_ledger},
                                       {"close", l_close},
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"worker_new", l_worker_new}, {NULL, NULL}};
    oo_newclass(L, OO_WORKER_MT, methods, l_gc, NULL, NULL);
    oo_setfuncs(L, funcs, 0);
}
