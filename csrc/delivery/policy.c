/* The one retry policy (see policy.h). Lua: core.policy_new(opts) ->
 * policy with :decide(record, attempts, age [, r]) and :delay(attempt,
 * retry_after [, r]). Retry-After itself is read by the classifier
 * (classify.h: oo_retry_after). */
#include "policy.h"
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define OO_POLICY_MT "optimizely.offline.policy"

/* The Lua object: the settings and its own jitter source, seeded per
 * object (a fleet of workers must not back off in step). */
typedef struct oo_policy_ud {
    oo_policy p;
    unsigned long long rng;
} oo_policy_ud;

double oo_jitter(unsigned long long *state) {
    unsigned long long x = *state ? *state : 88172645463325252ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

unsigned long long oo_jitter_seed(const void *salt) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((unsigned long long)ts.tv_nsec << 20) ^ (unsigned long long)ts.tv_sec ^
           ((unsigned long long)getpid() << 40) ^ (unsigned long long)(size_t)salt;
}

void oo_policy_defaults(oo_policy *p) {
    p->max_attempts = 4;
    p->max_age = 0;
    p->backoff_base = 0.25;
    p->backoff_max = 10;
    p->backoff_floor = 0.05;
    p->retry_after_max = 60;
}

/* ------------------------------------------------------------------ */
/* Decisions                                                           */

double oo_policy_delay(const oo_policy *p, int attempt, double retry_after, double r) {
    double cap, d, floor_;
    if (retry_after >= 0) {
        d = retry_after < p->retry_after_max ? retry_after : p->retry_after_max;
        return d > p->backoff_floor ? d : p->backoff_floor;
    }
    cap = p->backoff_base * pow(2.0, attempt > 1 ? attempt - 1 : 0);
    if (cap > p->backoff_max) cap = p->backoff_max;
    if (!(r >= 0)) r = 0;
    if (r > 1) r = 1;
    d = r * cap;
    floor_ = p->backoff_floor < cap ? p->backoff_floor : cap;
    return d > floor_ ? d : floor_;
}

void oo_policy_decide(const oo_policy *p, const oo_outcome *o, int attempts, double age, double r,
                      oo_decision *d) {
    d->action = OO_ACK;
    d->delay = d->pause = 0;
    d->slow_down = 0;
    d->why = NULL;
    if (o->ok) return;
    if (o->stop) {
        d->action = OO_STOP;
        d->why = "credentials";
        return;
    }
    if (!o->retryable) {
        d->action = OO_DEAD;
        d->why = "rejected";
        return;
    }
    d->delay = oo_policy_delay(p, attempts, o->retry_after, r);
    if (o->throttled) { /* the server asked everyone to slow down */
        d->pause = d->delay;
        d->slow_down = 1;
    }
    if (p->max_attempts > 0 && attempts >= p->max_attempts) {
        d->action = OO_DEAD;
        d->why = "attempts";
    } else if (p->max_age > 0 && age + d->delay > p->max_age) {
        d->action = OO_DEAD;
        d->why = "expired";
    } else {
        d->action = OO_RETRY;
    }
}

/* ------------------------------------------------------------------ */
/* Lua                                                                 */

/* The policy's fields were checked by the Lua options (retry.schema, and
 * the client's and the queues' schemas, which build them): C trusts them
 * and reads a missing field (or one of another type) as its default. */
static double field_num(lua_State *L, int idx, const char *k, double dflt) {
    double v;
    lua_getfield(L, idx, k);
    v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : dflt;
    lua_pop(L, 1);
    return v;
}

void oo_policy_read(lua_State *L, int idx, oo_policy *p) {
    double n;
    oo_policy_defaults(p);
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    /* max_attempts false/0: no limit (durable queues live by max_age) */
    lua_getfield(L, idx, "max_attempts");
    if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) p->max_attempts = 0;
    lua_pop(L, 1);
    /* the one check kept: the conversion to int must not overflow */
    n = field_num(L, idx, "max_attempts", 4);
    if (p->max_attempts) p->max_attempts = n >= 1 && n <= 1e9 ? (int)n : 4;
    p->max_age = field_num(L, idx, "max_age", 0);
    p->backoff_base = field_num(L, idx, "backoff_base", p->backoff_base);
    p->backoff_max = field_num(L, idx, "backoff_max", p->backoff_max);
    p->backoff_floor = field_num(L, idx, "backoff_floor", p->backoff_floor);
    p->retry_after_max = field_num(L, idx, "retry_after_max", p->retry_after_max);
}

static const char *const action_names[] = {"ack", "retry", "dead", "stop"};

/* Reads the record table at idx into an outcome (only what decide uses). */
static void outcome_from(lua_State *L, int idx, oo_outcome *o) {
    memset(o, 0, sizeof *o);
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "ok");
    o->ok = lua_toboolean(L, -1);
    lua_getfield(L, idx, "stop");
    o->stop = lua_toboolean(L, -1);
    lua_getfield(L, idx, "retryable");
    o->retryable = lua_toboolean(L, -1);
    lua_getfield(L, idx, "status");
    o->status = lua_type(L, -1) == LUA_TNUMBER ? (int)lua_tointeger(L, -1) : 0;
    lua_getfield(L, idx, "retry_after");
    o->retry_after = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1;
    lua_getfield(L, idx, "throttled");
    o->throttled = lua_toboolean(L, -1);
    lua_pop(L, 6);
}

/*** p:decide(record, attempts, age [, r]) -> action, delay, pause, slow_down, why */
static int l_decide(lua_State *L) {
    oo_policy_ud *u = (oo_policy_ud *)luaL_checkudata(L, 1, OO_POLICY_MT);
    oo_outcome o;
    oo_decision d;
    int attempts = (int)luaL_checkinteger(L, 3);
    double age = (double)luaL_optnumber(L, 4, 0);
    double r = lua_isnoneornil(L, 5) ? oo_jitter(&u->rng) : (double)luaL_checknumber(L, 5);
    outcome_from(L, 2, &o);
    oo_policy_decide(&u->p, &o, attempts, age, r, &d);
    lua_pushstring(L, action_names[d.action]);
    lua_pushnumber(L, d.delay);
    lua_pushnumber(L, d.pause);
    lua_pushboolean(L, d.slow_down);
    if (d.why) lua_pushstring(L, d.why);
    else lua_pushnil(L);
    return 5;
}

/*** p:delay(attempt, retry_after_raw_or_seconds [, r [, now]]) -> seconds */
static int l_delay(lua_State *L) {
    oo_policy_ud *u = (oo_policy_ud *)luaL_checkudata(L, 1, OO_POLICY_MT);
    oo_policy *p = &u->p;
    int attempt = (int)luaL_checkinteger(L, 2);
    double r = lua_isnoneornil(L, 4) ? oo_jitter(&u->rng) : (double)luaL_checknumber(L, 4);
    double now = (double)luaL_optnumber(L, 5, (double)time(NULL));
    double ra = -1;
    if (lua_type(L, 3) == LUA_TNUMBER)
        ra = lua_tonumber(L, 3) >= 0 ? (double)lua_tonumber(L, 3) : -1;
    else if (lua_type(L, 3) == LUA_TSTRING) ra = oo_retry_after(lua_tostring(L, 3), now);
    lua_pushnumber(L, oo_policy_delay(p, attempt, ra, r));
    return 1;
}

/*** core.policy_new(opts) -> policy */
static int l_policy_new(lua_State *L) {
    oo_policy_ud *u = (oo_policy_ud *)lua_newuserdata(L, sizeof *u);
    oo_policy_read(L, 1, &u->p);
    u->rng = oo_jitter_seed(u);
    oo_setmetatable(L, OO_POLICY_MT);
    return 1;
}

/*** core.policy_defaults() -> {max_attempts, max_age, backoff_base,
 * backoff_max, backoff_floor, retry_after_max}: the defaults, declared
 * once (here) for every path and for the Lua options' docs */
static int l_policy_defaults(lua_State *L) {
    oo_policy p;
    oo_policy_defaults(&p);
    lua_createtable(L, 0, 6);
    oo_set_int(L, "max_attempts", p.max_attempts);
    oo_set_num(L, "max_age", p.max_age);
    oo_set_num(L, "backoff_base", p.backoff_base);
    oo_set_num(L, "backoff_max", p.backoff_max);
    oo_set_num(L, "backoff_floor", p.backoff_floor);
    oo_set_num(L, "retry_after_max", p.retry_after_max);
    return 1;
}

void oo_policy_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"decide", l_decide}, {"delay", l_delay}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"policy_new", l_policy_new}, {"policy_defaults", l_policy_defaults}, {NULL, NULL}};
    oo_newclass(L, OO_POLICY_MT, methods, NULL, NULL, NULL);
    oo_setfuncs(L, funcs, 0);
}
