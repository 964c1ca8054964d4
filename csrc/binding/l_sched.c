/* The scheduler's Lua binding (see l_sched.h and sched.h). Sections: the
 * configuration, jobs, results and stats, the reply of a Lua transport,
 * store hooks as Lua functions, and the scheduler object (core.sched_new)
 * a Lua driver runs: optimizely.offline.sched documents it. */
#define _GNU_SOURCE
#include "l_sched.h"
#include "clock.h"
#include "core.h"
#include "spool.h" /* oo_spool_push_err: a ledger failure in the one error shape */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OO_SCHED_MT "optimizely.offline.sched"
#define OO_SLOT_BITS 2048.0 /* token = generation * 2048 + slot + 1 (slots <= 1024) */

/* ------------------------------------------------------------------ */
/* The configuration                                                   */

static double num_field(lua_State *L, int idx, const char *k, double dflt) {
    double v;
    lua_getfield(L, idx, k);
    v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : dflt;
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

static char *dup_field(lua_State *L, int idx, const char *k) {
    char *s = NULL;
    lua_getfield(L, idx, k);
    if (lua_type(L, -1) == LUA_TSTRING) s = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    return s;
}

static void read_cfg(lua_State *L, int idx, oo_sched_cfg *cfg, oo_policy *pol) {
    const char *on_stop;
    oo_sched_defaults(cfg);
    cfg->concurrency = (int)num_field(L, idx, "concurrency", cfg->concurrency);
    /* the options layer checked it; kept in range all the same because it
     * sizes arrays (memory safety) */
    if (cfg->concurrency < 1) cfg->concurrency = 1;
    if (cfg->concurrency > OO_SCHED_MAX_CONCURRENCY) cfg->concurrency = OO_SCHED_MAX_CONCURRENCY;
    cfg->adaptive = bool_field(L, idx, "adaptive");
    cfg->initial_limit = (int)num_field(L, idx, "initial_limit", 0);
    cfg->auth_pause = num_field(L, idx, "auth_pause", cfg->auth_pause);
    cfg->report_all = bool_field(L, idx, "report_all");
    cfg->report_retries = bool_field(L, idx, "report_retries");
    cfg->no_metrics = bool_field(L, idx, "no_metrics");
    cfg->max_results = (size_t)num_field(L, idx, "max_results", (double)cfg->max_results);
    lua_getfield(L, idx, "on_stop");
    on_stop = lua_tostring(L, -1);
    cfg->on_stop = on_stop && strcmp(on_stop, "pause") == 0 ? OO_STOP_PAUSE : OO_STOP_DRAIN;
    lua_pop(L, 1);
    lua_getfield(L, idx, "policy");
    oo_policy_read(L, lua_gettop(L), pol);
    lua_pop(L, 1);
}

/* The channels' names and tokens (the headers are the driver's). */
static oo_channel *read_channels(lua_State *L, int idx, int *n) {
    oo_channel *chans;
    int i, count;
    lua_getfield(L, idx, "channels");
    count = lua_type(L, -1) == LUA_TTABLE ? (int)oo_rawlen(L, -1) : 0;
    if (count < 1 || count > 64) {
        lua_pop(L, 1);
        return NULL;
    }
    chans = (oo_channel *)calloc((size_t)count, sizeof *chans);
    for (i = 0; chans && i < count; i++) {
        lua_rawgeti(L, -1, i + 1);
        if (lua_type(L, -1) == LUA_TTABLE) {
            chans[i].name = dup_field(L, lua_gettop(L), "name");
            chans[i].token = dup_field(L, lua_gettop(L), "token");
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    *n = count;
    return chans;
}

void oo_sched_setup(lua_State *L, int idx, oo_sched *s) {
    oo_sched_cfg cfg;
    oo_policy pol;
    oo_channel *chans;
    int nchan = 0;
    char *url;
    luaL_checktype(L, idx, LUA_TTABLE);
    read_cfg(L, idx, &cfg, &pol);
    chans = read_channels(L, idx, &nchan);
    if (!chans) luaL_error(L, "sched: channels must list 1..64 channels");
    url = dup_field(L, idx, "url");
    if (!url) {
        oo_channels_free(chans, nchan);
        luaL_error(L, "sched: url must be a string");
    }
    oo_sched_init(s, &cfg, &pol, url, chans, nchan);
}

/* ------------------------------------------------------------------ */
/* Jobs                                                                */

/* The value on top as an integer field of a job; raises otherwise. */
static long long int_value(lua_State *L, const char *k) {
    long long v = 0;
    if (lua_type(L, -1) != LUA_TNUMBER || !oo_tointeger(L, -1, &v))
        luaL_error(L, "sched: job.%s must be an integer", k);
    return v;
}

/* The value on top as a string field of a job (it stays alive in the
 * table); raises otherwise. */
static const char *str_value(lua_State *L, const char *k, size_t *len) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "sched: job.%s must be a string", k);
    return lua_tolstring(L, -1, len);
}

static int method_value(lua_State *L) {
    const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (strcmp(m, "POST") == 0) return OO_POST;
    if (strcmp(m, "DELETE") == 0) return OO_DELETE;
    return luaL_error(L, "sched: job.method must be \"POST\" or \"DELETE\"");
}

/* One field of a job table (value on top). Fields are read as they come
 * (lua_next): a job names three or four of the twelve. */
static void job_field(lua_State *L, const char *k, oo_job_spec *sp, long long *ch) {
    if (strcmp(k, "body") == 0) sp->body = str_value(L, k, &sp->body_len);
    else if (strcmp(k, "ref") == 0) sp->ref = str_value(L, k, &sp->ref_len);
    else if (strcmp(k, "id") == 0) sp->id = int_value(L, k);
    else if (strcmp(k, "channel") == 0) *ch = int_value(L, k);
    else if (strcmp(k, "method") == 0) sp->method = method_value(L);
    else if (strcmp(k, "url") == 0) sp->url = str_value(L, k, &sp->url_len);
    else if (strcmp(k, "after_ref") == 0) sp->after_ref = lua_toboolean(L, -1);
    else if (strcmp(k, "after_ok") == 0) sp->after_ok = lua_toboolean(L, -1);
    else if (strcmp(k, "blob") == 0) sp->blob = str_value(L, k, &sp->blob_len);
    else if (strcmp(k, "store_id") == 0) sp->store_id = int_value(L, k);
    else if (strcmp(k, "attempts") == 0) sp->attempts = (int)int_value(L, k);
    else if (strcmp(k, "created") == 0) sp->created = (double)luaL_checknumber(L, -1);
    else luaL_error(L, "sched: job.%s is not a field of a job", k);
}

/* The fields of the job table at idx into *sp; the channel into *ch. */
static void job_fields(lua_State *L, int idx, oo_job_spec *sp, long long *ch) {
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "sched: a job's keys are field names");
        job_field(L, lua_tostring(L, -2), sp, ch);
        lua_pop(L, 1);
    }
}

static void job_check(lua_State *L, int nchan, long long ch, oo_job_spec *sp) {
    if (ch < 1 || ch > nchan) luaL_error(L, "sched: job.channel: no such channel");
    sp->channel = (int)ch - 1;
    if (sp->method == OO_POST && !sp->body) luaL_error(L, "sched: job.body must be a string");
    if (sp->method == OO_DELETE && !sp->url) luaL_error(L, "sched: a DELETE job needs its url");
}

void oo_job_spec_args(lua_State *L, int idx, int nchan, oo_job_spec *sp) {
    long long ch;
    memset(sp, 0, sizeof *sp);
    sp->body = luaL_checklstring(L, idx, &sp->body_len);
    sp->ref = luaL_optlstring(L, idx + 1, NULL, &sp->ref_len);
    ch = luaL_optinteger(L, idx + 2, 1);
    if (!lua_isnoneornil(L, idx + 3)) {
        luaL_checktype(L, idx + 3, LUA_TTABLE);
        job_fields(L, idx + 3, sp, &ch);
    }
    job_check(L, nchan, ch, sp);
}

void oo_job_spec_read(lua_State *L, int idx, int nchan, oo_job_spec *sp) {
    long long ch = 1;
    luaL_checktype(L, idx, LUA_TTABLE);
    if (idx < 0) idx = lua_gettop(L) + idx + 1;
    memset(sp, 0, sizeof *sp);
    job_fields(L, idx, sp, &ch);
    job_check(L, nchan, ch, sp);
}

static oo_job *job_from(lua_State *L, int idx, const oo_sched *s) {
    oo_job_spec sp;
    oo_job *j;
    oo_job_spec_read(L, idx, s->nchan, &sp);
    j = oo_job_new(&sp);
    if (!j) luaL_error(L, "sched: out of memory");
    return j;
}

/* ------------------------------------------------------------------ */
/* Results and stats                                                   */

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

static void push_chan(lua_State *L, const oo_sched *s, int ch) {
    if (ch >= 0 && ch < s->nchan && s->chans[ch].name) oo_set_str(L, "channel", s->chans[ch].name);
    oo_set_int(L, "channel_index", ch + 1);
}

/* One result as a table: what, id, ref, attempts, channel (name),
 * channel_index, method, store_id, blob, latency, why, until, body, and the
 * record's fields (ok, kind, status, code, message, retryable,
 * retry_after, stop, warned, throttled, curl_code). */
static void push_result(lua_State *L, const oo_sched *s, const oo_result *r) {
    lua_createtable(L, 0, r->o.ok ? 12 : 20); /* sized once: no rehash as it fills */
    oo_outcome_fields(L, &r->o);
    oo_set_str(L, "what", what_name(r->what));
    if (r->what == OO_RES_PAUSED || r->what == OO_RES_RESUMED) {
        if (r->why) oo_set_str(L, "why", r->why);
        if (r->until >= 0) oo_set_num(L, "until", r->until);
        if (r->o.kind == NULL) {
            lua_pushnil(L);
            lua_setfield(L, -2, "ok");
        }
        return;
    }
    oo_set_int(L, "id", r->id);
    if (r->ref) oo_set_str(L, "ref", r->ref);
    oo_set_int(L, "attempts", r->attempts);
    push_chan(L, s, r->channel);
    oo_set_str(L, "method", r->method == OO_DELETE ? "DELETE" : "POST");
    if (r->store_id) oo_set_int(L, "store_id", r->store_id);
    if (r->blob) {
        lua_pushlstring(L, r->blob, r->blob_len);
        lua_setfield(L, -2, "blob");
    }
    if (r->why) oo_set_str(L, "why", r->why);
    if (r->latency > 0) oo_set_num(L, "latency", r->latency);
    if (r->until >= 0) oo_set_num(L, "until", r->until);
    if (r->body) {
        lua_pushlstring(L, r->body, r->body_len);
        lua_setfield(L, -2, "body");
    }
}

int oo_push_results(lua_State *L, const oo_sched *s, oo_result *list) {
    oo_result *r;
    int k = 0;
    lua_newtable(L);
    for (r = list; r; r = r->next) {
        push_result(L, s, r);
        lua_rawseti(L, -2, ++k);
    }
    oo_results_free(list);
    return 1;
}

void oo_push_sched_stats(lua_State *L, oo_sched *s) {
    double now = oo_sched_now(s);
    lua_createtable(L, 0, 16);
    pthread_mutex_lock(&s->mu);
#define F(name, v) oo_set_int(L, name, (long long)(v))
    F("queued", s->nin + s->nready + s->npark + s->nheap);
    F("retrying", s->nheap);
    F("in_flight", s->in_flight);
    F("sent", s->metrics.sent);
    F("retried", s->metrics.retried);
    F("throttled", s->metrics.throttled);
    F("dead", s->metrics.dead);
    F("failed", s->metrics.failed);
    F("pushed", s->metrics.queued);
    F("removed", s->removed);
    F("results_dropped", s->results_dropped);
    F("pending_results", s->nout);
    F("limit", s->limit_now);
#undef F
    oo_set_bool(L, "stopped", s->stopped);
    oo_set_num(L, "paused_for", s->pause_until > now ? s->pause_until - now : 0);
    pthread_mutex_unlock(&s->mu);
}

void oo_push_sched_metrics(lua_State *L, oo_sched *s) {
    oo_metrics m;
    pthread_mutex_lock(&s->mu);
    m = s->metrics;
    pthread_mutex_unlock(&s->mu);
    oo_metrics_push(L, &m);
}

void oo_push_sink_stats(lua_State *L, oo_ledger_sink *k) {
    oo_sink_stats st;
    oo_ledger_sink_stats(k, &st);
    lua_createtable(L, 0, 5);
    oo_set_int(L, "written", st.written);
    oo_set_int(L, "errors", st.errors);
    oo_set_int(L, "lost", st.lost);
    oo_set_int(L, "waiting", st.waiting);
    if (st.error[0]) oo_set_str(L, "error", st.error);
}

void oo_push_removed(lua_State *L, const oo_sched *s, oo_job *list) {
    int k = 0;
    lua_newtable(L);
    while (list) {
        oo_job *next = list->next;
        oo_push_job_info(L, s, list);
        lua_rawseti(L, -2, ++k);
        free(list);
        list = next;
    }
}

/* ------------------------------------------------------------------ */
/* The reply of a Lua transport                                        */

/* Reads what a transport returned, at idx..idx+3 (status, body, info or
 * nil, kind, message, code) — the transport contract of
 * optimizely.offline.delivery. 1 with *r filled (strings point into the
 * stack), or 0 with *o classified as a broken contract. */
static int read_failure(lua_State *L, int idx, oo_reply *r, oo_outcome *o) {
    if (lua_type(L, idx + 1) != LUA_TSTRING) {
        oo_classify_broken("a failure without a kind", o);
        return 0;
    }
    r->kind = lua_tostring(L, idx + 1);
    r->message = lua_type(L, idx + 2) == LUA_TSTRING ? lua_tostring(L, idx + 2) : r->kind;
    if (lua_type(L, idx + 3) == LUA_TNUMBER) r->code = (int)lua_tointeger(L, idx + 3);
    return 1;
}

static void read_info(lua_State *L, int info, oo_reply *r) {
    lua_getfield(L, info, "retry_after");
    if (lua_type(L, -1) == LUA_TNUMBER) lua_tostring(L, -1); /* in place: stays on the stack */
    if (lua_type(L, -1) == LUA_TSTRING) r->retry_after = lua_tostring(L, -1);
    lua_getfield(L, info, "reused");
    r->new_connection = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
    lua_pop(L, 1); /* retry_after stays: the caller's stack is released on return */
}

static int read_reply(lua_State *L, int idx, oo_reply *r, oo_outcome *o) {
    char what[64];
    long long status = 0;
    int t;
    memset(r, 0, sizeof *r);
    if (lua_isnil(L, idx)) return read_failure(L, idx, r, o);
    t = lua_type(L, idx);
    if (t != LUA_TNUMBER || !oo_tointeger(L, idx, &status) || status < 100 || status > 999) {
        if (t == LUA_TNUMBER)
            snprintf(what, sizeof what, "status is %.14g", (double)lua_tonumber(L, idx));
        else snprintf(what, sizeof what, "status is a %s", lua_typename(L, t));
        oo_classify_broken(what, o);
        return 0;
    }
    r->status = (int)status;
    t = lua_type(L, idx + 1);
    if (t != LUA_TNIL && t != LUA_TSTRING) {
        snprintf(what, sizeof what, "body is a %s", lua_typename(L, t));
        oo_classify_broken(what, o);
        return 0;
    }
    r->body = t == LUA_TSTRING ? lua_tolstring(L, idx + 1, &r->body_len) : "";
    t = lua_type(L, idx + 2);
    if (t != LUA_TNIL && t != LUA_TTABLE) {
        snprintf(what, sizeof what, "info is a %s", lua_typename(L, t));
        oo_classify_broken(what, o);
        return 0;
    }
    if (t == LUA_TTABLE) read_info(L, idx + 2, r);
    return 1;
}

/*** core.check_reply(status, body, info [, code]) -> record — what a
 * transport returned, checked against the contract and classified (the
 * same check as s:done). */
static int l_check_reply(lua_State *L) {
    oo_reply r;
    oo_outcome o;
    lua_settop(L, 4);
    if (read_reply(L, 1, &r, &o)) {
        if (r.status > 0) {
            oo_classify_response(r.status, r.retry_after, r.body, r.body_len, oo_wall_now(), &o,
                                 NULL);
        } else {
            oo_classify_failure(r.kind, r.message, &o);
            o.transport_code = r.code;
        }
    }
    oo_push_outcome(L, &o);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Store hooks as Lua functions                                        */

/* The object: the scheduler, the jobs in flight by token, and the Lua
 * values it keeps (a registry table: hooks, headers per channel). */
typedef struct l_sched {
    oo_sched s;
    int open, in_hook, ref;
    lua_State *L; /* the state of the call in progress (hooks run in it) */
    oo_job **fly;
    double *gen;
    int *free_slots, nfree, nslots;
    size_t max_pending;
    oo_sched_hooks hooks;
    oo_ledger_sink sink; /* cfg.ledger: every job's end recorded (sink.l NULL: none) */
    long long hook_errors;
    char hook_error[256];
} l_sched;

#define LS(s) ((l_sched *)(s)->hook_ud)

/* Pushes the hook `name` and returns 1, or 0 (nothing pushed). */
static int push_hook(l_sched *u, const char *name) {
    lua_State *L = u->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, u->ref);
    lua_getfield(L, -1, "hooks");
    lua_remove(L, -2);
    if (lua_type(L, -1) == LUA_TTABLE) lua_getfield(L, -1, name);
    else lua_pushnil(L);
    lua_remove(L, -2);
    if (lua_isfunction(L, -1)) return 1;
    lua_pop(L, 1);
    return 0;
}

/* The job as a hook sees it. */
void oo_push_job_info(lua_State *L, const oo_sched *s, const oo_job *j) {
    lua_createtable(L, 0, 10);
    oo_set_int(L, "id", j->id);
    if (j->store_id) oo_set_int(L, "store_id", j->store_id);
    lua_pushlstring(L, j->ref, j->ref_len);
    lua_setfield(L, -2, "ref");
    oo_set_int(L, "attempts", j->attempts);
    push_chan(L, s, j->channel);
    oo_set_str(L, "method", j->method == OO_DELETE ? "DELETE" : "POST");
    oo_set_num(L, "created", j->created);
    if (j->blob) {
        lua_pushlstring(L, j->blob, j->blob_len);
        lua_setfield(L, -2, "blob");
    }
}

/* Calls the hook with nargs pushed after it; a raise is counted (stats:
 * hook_errors, hook_error), never let through the scheduler. Leaves one
 * result (nil after an error). */
static void call_hook(l_sched *u, int nargs) {
    lua_State *L = u->L;
    u->in_hook = 1;
    if (lua_pcall(L, nargs, 1, 0) != 0) {
        const char *m = lua_tostring(L, -1);
        u->hook_errors++;
        snprintf(u->hook_error, sizeof u->hook_error, "%s", m ? m : "(error object)");
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    u->in_hook = 0;
}

static double hook_feed(oo_sched *s, int room, double now) {
    l_sched *u = LS(s);
    double at = now;
    if (!push_hook(u, "feed")) return now + 1;
    lua_pushinteger(u->L, room);
    call_hook(u, 1);
    if (lua_type(u->L, -1) == LUA_TNUMBER) at = now + (double)lua_tonumber(u->L, -1);
    lua_pop(u->L, 1);
    return at;
}

static void hook_plain(oo_sched *s, oo_job *j, const char *name) {
    l_sched *u = LS(s);
    if (!push_hook(u, name)) return;
    oo_push_job_info(u->L, s, j);
    call_hook(u, 1);
    lua_pop(u->L, 1);
}

static void hook_ack(oo_sched *s, oo_job *j, const oo_outcome *o) {
    l_sched *u = LS(s);
    if (!push_hook(u, "ack")) return;
    oo_push_job_info(u->L, s, j);
    oo_push_outcome(u->L, o);
    call_hook(u, 2);
    lua_pop(u->L, 1);
}
static void hook_release(oo_sched *s, oo_job *j) { hook_plain(s, j, "release"); }

static int hook_retry(oo_sched *s, oo_job *j, double next_at, const oo_outcome *o) {
    l_sched *u = LS(s);
    int kept;
    if (!push_hook(u, "retry")) return 0;
    oo_push_job_info(u->L, s, j);
    lua_pushnumber(u->L, next_at);
    oo_push_outcome(u->L, o);
    call_hook(u, 3);
    kept = lua_toboolean(u->L, -1);
    lua_pop(u->L, 1);
    return kept;
}

/* The integer field k of the table on top, or def. */
static long long opt_int(lua_State *L, const char *k, long long def) {
    long long v = def;
    lua_getfield(L, -1, k);
    if (lua_type(L, -1) != LUA_TNUMBER || !oo_tointeger(L, -1, &v)) v = def;
    lua_pop(L, 1);
    return v;
}

/* The dead letter at the top (`{id, ref, channel = index, attempts,
 * message}`) reported dead, why "amend", with the DELETE's outcome o and
 * its own message. Read without raising: a hook's answer never breaks the
 * scheduler. */
static void report_dead_letter(l_sched *u, const oo_outcome *o) {
    lua_State *L = u->L;
    oo_job_spec sp;
    oo_job *j;
    long long ch = opt_int(L, "channel", 1);
    memset(&sp, 0, sizeof sp);
    sp.id = sp.store_id = opt_int(L, "id", 0);
    sp.channel = ch >= 1 && ch <= u->s.nchan ? (int)ch - 1 : 0;
    sp.attempts = (int)opt_int(L, "attempts", 0);
    lua_getfield(L, -1, "ref");
    if (lua_type(L, -1) == LUA_TSTRING) sp.ref = lua_tolstring(L, -1, &sp.ref_len);
    lua_getfield(L, -2, "message");
    j = oo_job_new(&sp);
    if (j)
        oo_sched_report_amend_dead(&u->s, j, o,
                                   lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL);
    free(j);
    lua_pop(L, 2);
}

/* The dead hook's answer, on top: the dead letters its store made with
 * the job (an amend's new version, ended dead with its DELETE in the
 * spool: spool:kill's second value). Each is reported like the
 * scheduler's own (sched.c fail_dependents; the threaded queue's
 * worker.c report_amend_dead). */
static void report_amend_dead(l_sched *u, const oo_outcome *o) {
    lua_State *L = u->L;
    int i;
    if (lua_type(L, -1) != LUA_TTABLE) return;
    for (i = 1;; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TTABLE) break;
        report_dead_letter(u, o);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void hook_dead(oo_sched *s, oo_job *j, const oo_outcome *o, const char *why) {
    l_sched *u = LS(s);
    if (!push_hook(u, "dead")) return;
    oo_push_job_info(u->L, s, j);
    oo_push_outcome(u->L, o);
    lua_pushstring(u->L, why ? why : "rejected");
    call_hook(u, 3);
    report_amend_dead(u, o);
    lua_pop(u->L, 1);
}

static void hook_record(oo_sched *s, const oo_job *j, oo_res_kind what, const oo_outcome *o) {
    l_sched *u = LS(s);
    if (u->sink.l) oo_ledger_sink_add(&u->sink, s, j, what, o);
    if (!push_hook(u, "record")) return;
    oo_push_job_info(u->L, s, j);
    lua_pushstring(u->L, what_name(what));
    oo_push_outcome(u->L, o);
    call_hook(u, 3);
    lua_pop(u->L, 1);
}

/* The backoff's jitter from cfg.random (the client's `random` option): a
 * broken source must not break the policy (not a number: 0). */
static double hook_jitter(oo_sched *s) {
    l_sched *u = LS(s);
    lua_State *L = u->L;
    double r = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, u->ref);
    lua_getfield(L, -1, "random");
    lua_remove(L, -2);
    call_hook(u, 0);
    if (lua_type(L, -1) == LUA_TNUMBER) r = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(r >= 0)) r = 0;
    return r < 1 ? r : 0.999999999;
}

/* ------------------------------------------------------------------ */
/* The scheduler object                                                */

static l_sched *check_sched(lua_State *L) {
    l_sched *u = (l_sched *)luaL_checkudata(L, 1, OO_SCHED_MT);
    if (!u->open) luaL_error(L, "sched is closed");
    u->L = L;
    return u;
}

/* The calls that may run hooks: never from inside one. */
static l_sched *check_driver(lua_State *L) {
    l_sched *u = check_sched(L);
    if (u->in_hook)
        luaL_error(L, "sched: a hook cannot drive the scheduler (next, done, drop, close)");
    return u;
}

/* Keeps the hooks and every channel's header list in the registry table. */
static void keep_values(lua_State *L, int cfg, l_sched *u) {
    int i;
    lua_createtable(L, 0, 4);
    lua_getfield(L, cfg, "hooks");
    lua_setfield(L, -2, "hooks");
    lua_pushstring(L, u->s.url);
    lua_setfield(L, -2, "url");
    lua_getfield(L, cfg, "random");
    if (lua_isfunction(L, -1)) u->s.jitter = hook_jitter;
    lua_setfield(L, -2, "random");
    lua_createtable(L, u->s.nchan, 0);
    lua_getfield(L, cfg, "channels");
    for (i = 1; i <= u->s.nchan; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "headers");
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
        }
        lua_rawseti(L, -4, i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_setfield(L, -2, "headers");
    u->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Is hooks[name] (the table on top) a function? */
static int has_hook(lua_State *L, const char *name) {
    int f;
    lua_getfield(L, -1, name);
    f = lua_isfunction(L, -1);
    lua_pop(L, 1);
    return f;
}

/* The C hooks of the Lua functions given (a missing one is not called). */
static void setup_hooks(lua_State *L, int cfg, l_sched *u) {
    memset(&u->hooks, 0, sizeof u->hooks);
    lua_getfield(L, cfg, "hooks");
    if (lua_type(L, -1) == LUA_TTABLE) {
        if (has_hook(L, "feed")) u->hooks.feed = hook_feed;
        if (has_hook(L, "ack")) u->hooks.ack = hook_ack;
        if (has_hook(L, "retry")) u->hooks.retry = hook_retry;
        if (has_hook(L, "dead")) u->hooks.dead = hook_dead;
        if (has_hook(L, "release")) u->hooks.release = hook_release;
        if (has_hook(L, "record")) u->hooks.record = hook_record;
        u->s.hooks = &u->hooks;
    }
    lua_pop(L, 1);
    u->s.hook_ud = u;
}

/* cfg.ledger: the record hook writes every job's end to it (the sink). */
static void setup_ledger(lua_State *L, int cfg, l_sched *u) {
    const char *host, *site;
    lua_getfield(L, cfg, "ledger");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, cfg, "ledger_host");
    lua_getfield(L, cfg, "ledger_site");
    host = lua_tostring(L, -2);
    site = lua_tostring(L, -1);
    if (!host || !site) luaL_error(L, "sched: a ledger needs ledger_host and ledger_site");
    oo_ledger_sink_init(&u->sink, oo_ledger_arg(L, -3), host, site);
    u->sink.window = num_field(L, cfg, "ledger_window", u->sink.window);
    lua_pop(L, 3);
    u->hooks.record = hook_record;
    u->s.hooks = &u->hooks;
}

static void alloc_slots(lua_State *L, l_sched *u) {
    int i, n = u->s.cfg.concurrency;
    u->fly = (oo_job **)calloc((size_t)n, sizeof *u->fly);
    u->gen = (double *)calloc((size_t)n, sizeof *u->gen);
    u->free_slots = (int *)malloc((size_t)n * sizeof *u->free_slots);
    if (!u->fly || !u->gen || !u->free_slots) luaL_error(L, "sched: out of memory");
    for (i = 0; i < n; i++) u->free_slots[i] = n - 1 - i;
    u->nfree = u->nslots = n;
}

static void release_all(lua_State *L, l_sched *u) {
    free(u->fly);
    free(u->gen);
    free(u->free_slots);
    u->fly = NULL;
    u->gen = NULL;
    u->free_slots = NULL;
    if (u->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, u->ref);
    u->ref = LUA_NOREF;
}

/*** core.sched_new(cfg) -> sched (optimizely.offline.sched) */
static int l_sched_new(lua_State *L) {
    l_sched *u;
    luaL_checktype(L, 1, LUA_TTABLE);
    u = (l_sched *)lua_newuserdata(L, sizeof *u);
    memset(u, 0, sizeof *u);
    u->ref = LUA_NOREF;
    oo_setmetatable(L, OO_SCHED_MT);
    oo_sched_setup(L, 1, &u->s);
    u->open = 1; /* from here __gc frees it, whatever raises */
    u->L = L;
    u->max_pending = (size_t)num_field(L, 1, "max_pending", 0);
    setup_hooks(L, 1, u);
    setup_ledger(L, 1, u);
    keep_values(L, 1, u);
    alloc_slots(L, u);
    return 1;
}

/*** s:add(job) -> true | false (max_pending reached) */
static int l_add(lua_State *L) {
    l_sched *u = check_sched(L);
    oo_job *j = job_from(L, 2, &u->s);
    int ok = oo_sched_add_bounded(&u->s, j, u->max_pending);
    if (!ok) free(j);
    lua_pushboolean(L, ok);
    return 1;
}

/*** s:take(job) — from a feed hook: straight to the ready list */
static int l_take(lua_State *L) {
    l_sched *u = check_sched(L);
    oo_sched_take(&u->s, job_from(L, 2, &u->s));
    return 0;
}

/* t[k] = the bytes, or nil (a reused table keeps no stale field). */
static void set_bytes(lua_State *L, const char *k, const char *p, size_t n) {
    if (p) lua_pushlstring(L, p, n);
    else lua_pushnil(L);
    lua_setfield(L, -2, k);
}

/* The job a driver sends: token, id, method, url, headers, channel (its
 * name), body, ref, attempt, blob, store_id — in a new table, or
 * in the table at `reuse` (> 0: a driver that sends one job at a time
 * keeps one table instead of making one per attempt). */
static void push_job(lua_State *L, l_sched *u, const oo_job *j, double token, int reuse) {
    if (reuse) lua_pushvalue(L, reuse);
    else lua_createtable(L, 0, 10);
    oo_set_num(L, "token", token);
    oo_set_int(L, "id", j->id);
    oo_set_str(L, "method", j->method == OO_DELETE ? "DELETE" : "POST");
    lua_rawgeti(L, LUA_REGISTRYINDEX, u->ref); /* {url, headers = {...}, ...} */
    if (j->url) lua_pushlstring(L, j->url, j->url_len);
    else lua_getfield(L, -1, "url"); /* the scheduler's, made once: a long string is a copy */
    lua_setfield(L, -3, "url");
    lua_getfield(L, -1, "headers");
    lua_rawgeti(L, -1, j->channel + 1);
    lua_setfield(L, -4, "headers");
    lua_pop(L, 2);
    oo_set_str(L, "channel", u->s.chans[j->channel].name ? u->s.chans[j->channel].name : "");
    set_bytes(L, "body", j->method == OO_POST ? j->data : NULL, j->body_len);
    lua_pushlstring(L, j->ref, j->ref_len);
    lua_setfield(L, -2, "ref");
    oo_set_int(L, "attempt", j->attempts + 1);
    if (j->store_id) oo_set_int(L, "store_id", j->store_id);
    else if (reuse) set_bytes(L, "store_id", NULL, 0);
    set_bytes(L, "blob", j->blob, j->blob_len);
}

/*** s:next([t]) -> job | nil, wait (seconds until one may be due); with
 * t, the job's fields go in t */
static int l_next(lua_State *L) {
    l_sched *u = check_driver(L);
    int reuse = lua_type(L, 2) == LUA_TTABLE ? 2 : 0;
    double now = oo_sched_now(&u->s), token;
    oo_job *j = u->nfree ? oo_sched_next(&u->s, now) : NULL;
    int slot;
    if (!j) {
        lua_pushnil(L);
        lua_pushnumber(L, oo_sched_wait(&u->s, now));
        return 2;
    }
    slot = u->free_slots[--u->nfree];
    u->fly[slot] = j;
    u->gen[slot] += 1;
    token = u->gen[slot] * OO_SLOT_BITS + slot + 1;
    j->driver = &u->fly[slot];
    push_job(L, u, j, token, reuse);
    return 1;
}

/* The job in flight under a token; raises for an unknown or stale one. */
static oo_job *take_token(lua_State *L, l_sched *u, int idx) {
    double t = luaL_checknumber(L, idx);
    int slot = (int)((long long)t % (long long)OO_SLOT_BITS) - 1;
    oo_job *j;
    if (t < 1 || slot < 0 || slot >= u->nslots || !u->fly[slot] ||
        u->gen[slot] * OO_SLOT_BITS + slot + 1 != t)
        luaL_error(L, "sched: no job in flight with token %f", t);
    j = u->fly[slot];
    u->fly[slot] = NULL;
    u->free_slots[u->nfree++] = slot;
    return j;
}

static const char *const action_names[] = {"ack", "retry", "dead", "stop"};

/* Settles the job of the token at 2 with the reply at 3..6 (one place for
 * `done` and `settle`): the action, with *o the classified outcome. */
static int settle_args(lua_State *L, l_sched *u, oo_outcome *o, const char **why, int *attempts) {
    oo_job *j;
    oo_reply r;
    int action, ok;
    lua_settop(L, 6);
    j = take_token(L, u, 2);
    *attempts = j->attempts + 1; /* j may be gone once settled */
    ok = read_reply(L, 3, &r, o);
    if (ok) oo_sched_classify(&r, o);
    action = oo_sched_settle(&u->s, j, o, ok ? &r : NULL, why);
    if (u->sink.l) oo_ledger_sink_tick(&u->sink, oo_mono_now());
    return action;
}

/*** s:done(token, status, body, info) | s:done(token, nil, kind, message
 * [, code]) -> action ("ack" | "retry" | "dead" | "stop"), record (the
 * classified outcome), why (the policy's reason or nil), attempts */
static int l_done(lua_State *L) {
    l_sched *u = check_driver(L);
    oo_outcome o;
    const char *why = NULL;
    int attempts, action = settle_args(L, u, &o, &why, &attempts);
    lua_pushstring(L, action_names[action]);
    oo_push_outcome(L, &o);
    if (why) lua_pushstring(L, why);
    else lua_pushnil(L);
    lua_pushinteger(L, attempts);
    return 4;
}

/*** s:settle(token, status, body, info [, code]) — `done` for a driver
 * that needs only the action: "ack" | "retry" | "dead" | "stop" (no
 * outcome record is built: the nginx senders settle every order here) */
static int l_settle(lua_State *L) {
    l_sched *u = check_driver(L);
    oo_outcome o;
    const char *why = NULL;
    int attempts, action = settle_args(L, u, &o, &why, &attempts);
    lua_pushstring(L, action_names[action]);
    return 1;
}

/*** s:has_results() -> boolean: are there results for `results()` (a
 * look without building a table) */
static int l_has_results(lua_State *L) {
    l_sched *u = check_sched(L);
    int any;
    pthread_mutex_lock(&u->s.mu);
    any = u->s.out_head != NULL;
    pthread_mutex_unlock(&u->s.mu);
    lua_pushboolean(L, any);
    return 1;
}

static int l_results(lua_State *L) {
    l_sched *u = check_sched(L);
    return oo_push_results(L, &u->s, oo_sched_collect(&u->s));
}

static int l_pending(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)oo_sched_pending(&check_sched(L)->s));
    return 1;
}

static int l_stats(lua_State *L) {
    l_sched *u = check_sched(L);
    oo_push_sched_stats(L, &u->s);
    oo_set_int(L, "hook_errors", u->hook_errors);
    if (u->hook_error[0]) oo_set_str(L, "hook_error", u->hook_error);
    return 1;
}

static int l_metrics(lua_State *L) {
    oo_push_sched_metrics(L, &check_sched(L)->s);
    return 1;
}

/*** s:flush_ledger() -> true | nil, err — the ledger notes written now */
static int l_flush_ledger(lua_State *L) {
    l_sched *u = check_sched(L);
    oo_spool_err err;
    if (u->sink.l && oo_ledger_sink_flush(&u->sink, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/*** s:ledger_stats() -> {written, errors, lost, waiting, error?} | nil (no ledger) */
static int l_ledger_stats(lua_State *L) {
    l_sched *u = check_sched(L);
    if (!u->sink.l) return 0;
    oo_push_sink_stats(L, &u->sink);
    return 1;
}

/*** s:remove_ref(ref [, method]) -> removed (job infos), in_flight */
static int l_remove_ref(lua_State *L) {
    l_sched *u = check_sched(L);
    size_t len;
    const char *ref = luaL_checklstring(L, 2, &len);
    const char *m = luaL_optstring(L, 3, NULL);
    int method = !m ? -1 : strcmp(m, "DELETE") == 0 ? OO_DELETE : OO_POST, flying = 0;
    oo_push_removed(L, &u->s, oo_sched_remove_ref(&u->s, ref, len, method, &flying));
    lua_pushboolean(L, flying);
    return 2;
}

/*** s:advance(seconds) — the driver's sleep returned before the time it
 * asked for: the scheduler's clock moves ahead by what it did not wait */
static int l_advance(lua_State *L) {
    oo_sched_advance(&check_sched(L)->s, (double)luaL_checknumber(L, 2));
    return 0;
}

static int l_resume(lua_State *L) {
    oo_sched_resume(&check_sched(L)->s);
    return 0;
}

/*** s:hurry() — every retry due now and a 429 pause over (a last chance) */
static int l_hurry(lua_State *L) {
    oo_sched_hurry(&check_sched(L)->s);
    return 0;
}

static int l_hint_feed(lua_State *L) {
    oo_sched_hint_feed(&check_sched(L)->s);
    return 0;
}

/* drop's fn: the job's info into the table on top (attempted: -2, never
 * started: -1), then freed. */
static void collect_job(void *ud, oo_job *j) {
    l_sched *u = (l_sched *)ud;
    lua_State *L = u->L;
    int t = j->started ? -2 : -1;
    oo_push_job_info(L, &u->s, j);
    lua_rawseti(L, t - 1, (int)oo_rawlen(L, t - 1) + 1);
    free(j);
}

static void drop_flying(l_sched *u, void (*fn)(void *ud, oo_job *j)) {
    int i;
    for (i = 0; i < u->nslots; i++) {
        if (!u->fly[i]) continue;
        oo_sched_drop_flying(&u->s, u->fly[i], fn, u);
        u->fly[i] = NULL;
        u->free_slots[u->nfree++] = i;
    }
}

/*** s:drop() -> unknown, unsent — every job not settled, taken out (store
 * jobs released through the hook): `unknown` the memory jobs attempted (in
 * flight — their tokens are void now — or waiting for a retry), `unsent`
 * those never started; each a list of job infos. */
static int l_drop(lua_State *L) {
    l_sched *u = check_driver(L);
    lua_newtable(L);
    lua_newtable(L);
    drop_flying(u, collect_job);
    oo_sched_drop_all(&u->s, collect_job, u);
    return 2;
}

/*** s:drop_unstarted() -> attempted, unsent — as drop, but the jobs in
 * flight stay, their tokens valid: their answers still settle them (a
 * spool's rows in flight at worker exit keep their lease) */
static int l_drop_unstarted(lua_State *L) {
    l_sched *u = check_driver(L);
    lua_newtable(L);
    lua_newtable(L);
    oo_sched_drop_all(&u->s, collect_job, u);
    return 2;
}

static void free_job(void *ud, oo_job *j) {
    (void)ud;
    free(j);
}

static int l_close(lua_State *L) {
    l_sched *u = (l_sched *)luaL_checkudata(L, 1, OO_SCHED_MT);
    if (u->in_hook) return luaL_error(L, "sched: a hook cannot close the scheduler");
    if (u->open) {
        u->open = 0;
        u->s.hooks = NULL; /* a close releases nothing through Lua */
        if (u->fly) drop_flying(u, free_job);
        oo_ledger_sink_free(&u->sink); /* writes what waits */
        oo_sched_free(&u->s);
        release_all(L, u);
    }
    return 0;
}

/*** core.sched_defaults() -> {concurrency, max_concurrency, auth_pause,
 * max_results, on_stop} */
static int l_sched_defaults(lua_State *L) {
    oo_sched_cfg c;
    oo_sched_defaults(&c);
    lua_createtable(L, 0, 5);
    oo_set_int(L, "concurrency", c.concurrency);
    oo_set_int(L, "max_concurrency", OO_SCHED_MAX_CONCURRENCY);
    oo_set_num(L, "auth_pause", c.auth_pause);
    oo_set_int(L, "max_results", (long long)c.max_results);
    oo_set_str(L, "on_stop", "drain");
    return 1;
}

void oo_sched_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"add", l_add},
                                       {"take", l_take},
                                       {"next", l_next},
                                       {"done", l_done},
                                       {"settle", l_settle},
                                       {"results", l_results},
                                       {"has_results", l_has_results},
                                       {"pending", l_pending},
                                       {"stats", l_stats},
                                       {"metrics", l_metrics},
                                       {"flush_ledger", l_flush_ledger},
                                       {"ledger_stats", l_ledger_stats},
                                       {"remove_ref", l_remove_ref},
                                       {"resume", l_resume},
                                       {"hint_feed", l_hint_feed},
                                       {"advance", l_advance},
                                       {"drop", l_drop},
                                       {"drop_unstarted", l_drop_unstarted},
                                       {"hurry", l_hurry},
                                       {"close", l_close},
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"sched_new", l_sched_new},
                                     {"sched_defaults", l_sched_defaults},
                                     {"check_reply", l_check_reply},
                                     {NULL, NULL}};
    oo_newclass(L, OO_SCHED_MT, methods, l_close, l_close, NULL);
    oo_setfuncs(L, funcs, 0);
}
