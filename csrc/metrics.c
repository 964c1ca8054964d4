/* Delivery metrics (see metrics.h). Lua: core.metrics_new() -> m with
 * :attempt(latency, bytes), :queued([n]), :sent([channel]), :retried([n]),
 * :throttled([n]), :invalid([n]), :skipped(reason [, n]), :changed([n]),
 * :failed(record, dead [, channel]), :merge(t), :get() (the nginx engine
 * and the synchronous send loop); core.SKIP_REASONS lists the reasons. */
#include "metrics.h"
#include "core.h"

#include <stdio.h>
#include <string.h>

#define OO_METRICS_MT "optimizely.offline.metrics"

const double oo_lat_bounds[OO_LAT_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                              0.5,   1,    2.5,   5,    10,  30};

void oo_metrics_init(oo_metrics *m) { memset(m, 0, sizeof *m); }

const char *const oo_skip_reasons[OO_SKIP_REASONS] = {"already_sent", "in_flight", "other"};

static int skip_index(const char *reason) {
    int i;
    for (i = 0; reason && i < OO_SKIP_REASONS - 1; i++)
        if (strcmp(oo_skip_reasons[i], reason) == 0) return i;
    return OO_SKIP_REASONS - 1;
}

void oo_metrics_skipped(oo_metrics *m, const char *reason) { m->skipped[skip_index(reason)]++; }

void oo_metrics_attempt(oo_metrics *m, double latency, size_t bytes) {
    int i;
    m->requests++;
    m->bytes_sent += (long long)bytes;
    m->lat_count++;
    m->lat_sum += latency;
    for (i = 0; i < OO_LAT_BUCKETS && latency > oo_lat_bounds[i]; i++) {}
    m->lat_buckets[i]++;
}

/* The channel's counters; NULL when the name is unknown or the table is full
 * (the totals still count). */
static oo_chan_count *chan_slot(oo_metrics *m, const char *name) {
    int i;
    if (!name || !name[0]) return NULL;
    for (i = 0; i < m->nchan; i++)
        if (strncmp(m->chan[i].name, name, OO_CHAN_NAME - 1) == 0) return &m->chan[i];
    if (m->nchan == OO_CHAN_LABELS) return NULL;
    snprintf(m->chan[m->nchan].name, OO_CHAN_NAME, "%s", name);
    return &m->chan[m->nchan++];
}

void oo_metrics_sent(oo_metrics *m, const char *channel) {
    oo_chan_count *c = chan_slot(m, channel);
    m->sent++;
    if (c) c->sent++;
}

/* n failures under one label (the order totals are the caller's). */
static void fail_add(oo_metrics *m, const char *kind, int status, const char *code, const char *channel,
                     long long n) {
    int i;
    const char *ch = channel ? channel : "";
    code = code ? code : "";
    for (i = 0; i < m->nfail; i++) {
        oo_fail_label *f = &m->fail[i];
        if (f->status == status && strncmp(f->kind, kind, sizeof f->kind - 1) == 0 &&
            strncmp(f->code, code, sizeof f->code - 1) == 0 &&
            strncmp(f->channel, ch, sizeof f->channel - 1) == 0) {
            f->n += n;
            return;
        }
    }
    if (m->nfail == OO_FAIL_LABELS) {
        m->fail_other += n;
        return;
    }
    {
        oo_fail_label *f = &m->fail[m->nfail++];
        snprintf(f->kind, sizeof f->kind, "%s", kind);
        snprintf(f->code, sizeof f->code, "%s", code);
        snprintf(f->channel, sizeof f->channel, "%s", ch);
        f->status = status;
        f->n = n;
    }
}

void oo_metrics_failed(oo_metrics *m, const oo_outcome *o, int dead, const char *channel) {
    oo_chan_count *c = chan_slot(m, channel);
    m->failed++;
    if (dead) m->dead++;
    if (c) c->failed++;
    fail_add(m, o->kind ? o->kind : "unknown", o->status, o->code, channel, 1);
}

#define set_int oo_set_int

static void push_latency(lua_State *L, const oo_metrics *m) {
    int i;
    lua_createtable(L, 0, 4);
    lua_createtable(L, OO_LAT_BUCKETS, 0);
    for (i = 0; i < OO_LAT_BUCKETS; i++) {
        lua_pushnumber(L, oo_lat_bounds[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "bounds");
    lua_createtable(L, OO_LAT_BUCKETS + 1, 0);
    for (i = 0; i <= OO_LAT_BUCKETS; i++) {
        lua_pushinteger(L, (lua_Integer)m->lat_buckets[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "counts");
    oo_set_num(L, "sum", m->lat_sum);
    set_int(L, "count", m->lat_count);
    lua_setfield(L, -2, "latency");
}

void oo_metrics_push(lua_State *L, const oo_metrics *m) {
    int i;
    lua_createtable(L, 0, 16);
    set_int(L, "queued", m->queued);
    set_int(L, "sent", m->sent);
    set_int(L, "failed", m->failed);
    set_int(L, "dead", m->dead);
    set_int(L, "invalid", m->invalid);
    set_int(L, "changed", m->changed);
    lua_createtable(L, 0, OO_SKIP_REASONS); /* skipped = {[reason] = n}, the non-zero ones */
    for (i = 0; i < OO_SKIP_REASONS; i++)
        if (m->skipped[i]) set_int(L, oo_skip_reasons[i], m->skipped[i]);
    lua_setfield(L, -2, "skipped");
    set_int(L, "retried", m->retried);
    set_int(L, "throttled", m->throttled);
    set_int(L, "requests", m->requests);
    set_int(L, "bytes_sent", m->bytes_sent);
    /* the latency histogram: bounds, non-cumulative counts (+Inf last), sum, count */
    push_latency(L, m);
    /* failures by label */
    lua_createtable(L, m->nfail, 0);
    for (i = 0; i < m->nfail; i++) {
        const oo_fail_label *f = &m->fail[i];
        lua_createtable(L, 0, 5);
        oo_set_str(L, "kind", f->kind);
        if (f->status) set_int(L, "status", f->status);
        if (f->code[0]) oo_set_str(L, "code", f->code);
        if (f->channel[0]) oo_set_str(L, "channel", f->channel);
        set_int(L, "n", f->n);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "failures");
    set_int(L, "failures_unlabelled", m->fail_other);
    /* per channel */
    lua_createtable(L, 0, m->nchan);
    for (i = 0; i < m->nchan; i++) {
        lua_createtable(L, 0, 2);
        set_int(L, "sent", m->chan[i].sent);
        set_int(L, "failed", m->chan[i].failed);
        lua_setfield(L, -2, m->chan[i].name);
    }
    lua_setfield(L, -2, "channels");
}

/* ------------------------------------------------------------------ */
/* The Lua object (nginx engine, synchronous send loop)                */

static oo_metrics *check(lua_State *L) {
    return (oo_metrics *)luaL_checkudata(L, 1, OO_METRICS_MT);
}

static int l_attempt(lua_State *L) {
    oo_metrics *m = check(L);
    oo_metrics_attempt(m, (double)luaL_checknumber(L, 2), (size_t)luaL_optinteger(L, 3, 0));
    return 0;
}

#define COUNTER(name)                                            \
    static int l_##name(lua_State *L) {                          \
        oo_metrics *m = check(L);                                \
        m->name += (long long)luaL_optinteger(L, 2, 1);          \
        return 0;                                                \
    }
COUNTER(queued)
COUNTER(retried)
COUNTER(throttled)
COUNTER(invalid)
COUNTER(changed)
#undef COUNTER

/*** m:skipped(reason [, n]) — reason: one of core.SKIP_REASONS (another: "other") */
static int l_skipped(lua_State *L) {
    oo_metrics *m = check(L);
    m->skipped[skip_index(luaL_checkstring(L, 2))] += (long long)luaL_optinteger(L, 3, 1);
    return 0;
}

/*** m:sent([channel]) */
static int l_sent(lua_State *L) {
    oo_metrics_sent(check(L), luaL_optstring(L, 2, NULL));
    return 0;
}

/*** m:failed(record, dead [, channel]) — record as from core.classify
 * (or an error object: kind, status, code) */
static int l_failed(lua_State *L) {
    oo_metrics *m = check(L);
    oo_outcome o;
    const char *kind, *code;
    memset(&o, 0, sizeof o);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "kind");
    lua_getfield(L, 2, "status");
    lua_getfield(L, 2, "code");
    kind = lua_tostring(L, -3);
    o.status = lua_type(L, -2) == LUA_TNUMBER ? (int)lua_tointeger(L, -2) : 0;
    code = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    o.kind = kind ? kind : "unknown";
    if (code) snprintf(o.code, sizeof o.code, "%s", code);
    oo_metrics_failed(m, &o, lua_toboolean(L, 3), luaL_optstring(L, 4, NULL));
    lua_pop(L, 3);
    return 0;
}

static long long get_count(lua_State *L, int t, const char *k) {
    long long v;
    lua_getfield(L, t, k);
    v = lua_type(L, -1) == LUA_TNUMBER ? (long long)lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    return v;
}

static void merge_latency(lua_State *L, oo_metrics *m, int t) {
    int i;
    lua_getfield(L, t, "latency");
    if (lua_istable(L, -1)) {
        int lt = lua_gettop(L);
        m->lat_count += get_count(L, lt, "count");
        lua_getfield(L, lt, "sum");
        m->lat_sum += lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : 0;
        lua_pop(L, 1);
        lua_getfield(L, lt, "counts");
        if (lua_istable(L, -1)) {
            for (i = 0; i <= OO_LAT_BUCKETS; i++) {
                lua_rawgeti(L, -1, i + 1);
                m->lat_buckets[i] += lua_type(L, -1) == LUA_TNUMBER ? (long long)lua_tonumber(L, -1) : 0;
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void merge_failures(lua_State *L, oo_metrics *m, int t) {
    int i, n;
    lua_getfield(L, t, "failures");
    if (lua_istable(L, -1)) {
        n = (int)oo_rawlen(L, -1);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            if (lua_istable(L, -1)) {
                int ft = lua_gettop(L);
                const char *kind, *code, *channel;
                lua_getfield(L, ft, "kind");
                lua_getfield(L, ft, "code");
                lua_getfield(L, ft, "channel");
                kind = lua_tostring(L, -3);
                code = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
                channel = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
                fail_add(m, kind ? kind : "unknown", (int)get_count(L, ft, "status"), code, channel,
                         get_count(L, ft, "n"));
                lua_pop(L, 3);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* skipped = {[reason] = n}: a reason this version does not know counts as "other". */
static void merge_skipped(lua_State *L, oo_metrics *m, int t) {
    lua_getfield(L, t, "skipped");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TNUMBER)
                m->skipped[skip_index(lua_tostring(L, -2))] += (long long)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static void merge_channels(lua_State *L, oo_metrics *m, int t) {
    lua_getfield(L, t, "channels");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
                oo_chan_count *c = chan_slot(m, lua_tostring(L, -2));
                if (c) {
                    c->sent += get_count(L, lua_gettop(L), "sent");
                    c->failed += get_count(L, lua_gettop(L), "failed");
                }
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/*** m:merge(t) — adds a metrics table (as :get() returns, e.g. a finished
 * batch's engine) into m. */
static int l_merge(lua_State *L) {
    oo_metrics *m = check(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    m->queued += get_count(L, 2, "queued");
    m->sent += get_count(L, 2, "sent");
    m->failed += get_count(L, 2, "failed");
    m->dead += get_count(L, 2, "dead");
    m->invalid += get_count(L, 2, "invalid");
    m->changed += get_count(L, 2, "changed");
    m->retried += get_count(L, 2, "retried");
    m->throttled += get_count(L, 2, "throttled");
    m->requests += get_count(L, 2, "requests");
    m->bytes_sent += get_count(L, 2, "bytes_sent");
    m->fail_other += get_count(L, 2, "failures_unlabelled");
    merge_latency(L, m, 2);
    merge_failures(L, m, 2);
    merge_channels(L, m, 2);
    merge_skipped(L, m, 2);
    return 0;
}

static int l_get(lua_State *L) {
    oo_metrics_push(L, check(L));
    return 1;
}

static int l_metrics_new(lua_State *L) {
    oo_metrics *m = (oo_metrics *)lua_newuserdata(L, sizeof *m);
    oo_metrics_init(m);
    oo_setmetatable(L, OO_METRICS_MT);
    return 1;
}

void oo_metrics_register(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"attempt", l_attempt}, {"queued", l_queued},   {"sent", l_sent},   {"retried", l_retried},
        {"throttled", l_throttled}, {"invalid", l_invalid}, {"failed", l_failed}, {"merge", l_merge},
        {"skipped", l_skipped}, {"changed", l_changed}, {"get", l_get},   {NULL, NULL}};
    int i;
    oo_newclass(L, OO_METRICS_MT, methods, NULL, NULL, NULL);
    lua_pushcfunction(L, l_metrics_new);
    lua_setfield(L, -2, "metrics_new");
    lua_createtable(L, OO_SKIP_REASONS, 0);
    for (i = 0; i < OO_SKIP_REASONS; i++) {
        lua_pushstring(L, oo_skip_reasons[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "SKIP_REASONS");
}
