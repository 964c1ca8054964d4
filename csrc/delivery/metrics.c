/* Delivery metrics (see metrics.h). Lua: core.metrics_new([secrets]) -> m with
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
/* ------------------------------------------------------------------ */
/* Label values                                                        */

/* FNV-1a of the ASCII-lower-cased bytes: secrets are matched in any case. */
static unsigned long long hash_lower(const char *s, size_t n) {
    unsigned long long h = 1469598103934665603ULL;
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        h = (h ^ c) * 1099511628211ULL;
    }
    return h;
}

void oo_metrics_secret(oo_metrics *m, const char *secret) {
    oo_secret_print p;
    size_t k;
    int i;
    if (!secret || !secret[0]) return;
    p.len = strlen(secret);
    k = p.len < OO_ECHO_MIN ? p.len : OO_ECHO_MIN;
    p.whole = hash_lower(secret, p.len);
    p.head = hash_lower(secret, k);
    p.tail = hash_lower(secret + p.len - k, k);
    for (i = 0; i < m->nsecrets; i++)
        if (m->secrets[i].len == p.len && m->secrets[i].whole == p.whole) return;
    if (m->nsecrets < OO_SECRETS) m->secrets[m->nsecrets++] = p;
}

/* Does l (n bytes) echo the secret: the whole of it, or OO_ECHO_MIN bytes
 * of its start or end (a server that cuts the token short), as errors.lua's
 * redact reads an echo? */
static int echoes(const oo_secret_print *p, const char *l, size_t n) {
    size_t i, k = p->len < OO_ECHO_MIN ? p->len : OO_ECHO_MIN;
    for (i = 0; i + p->len <= n; i++)
        if (hash_lower(l + i, p->len) == p->whole) return 1;
    for (i = 0; i + k <= n; i++) {
        unsigned long long h = hash_lower(l + i, k);
        if (h == p->head || h == p->tail) return 1;
    }
    return 0;
}

static int label_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

/* oo_metrics_label for s of n bytes (a Lua string may hold a NUL). */
static const char *label_n(const oo_metrics *m, const char *s, size_t n, char *out) {
    size_t i;
    int j;
    if (!s || n == 0) {
        out[0] = '\0';
        return out;
    }
    if (n > OO_LABEL_MAX) goto other;
    for (i = 0; i < n; i++)
        if (!label_char((unsigned char)s[i])) goto other;
    for (j = 0; m && j < m->nsecrets; j++)
        if (echoes(&m->secrets[j], s, n)) goto other;
    memcpy(out, s, n);
    out[n] = '\0';
    return out;
other:
    memcpy(out, "other", sizeof "other");
    return out;
}

const char *oo_metrics_label(const oo_metrics *m, const char *s, char *out) {
    size_t n = 0;
    while (s && n <= OO_LABEL_MAX && s[n]) n++;
    return label_n(m, s, n, out);
}

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
    char label[OO_LABEL_MAX + 1];
    int i;
    if (!name || !name[0]) return NULL;
    /* every order counts here: a name seen before skips the label check */
    for (i = 0; i < m->nchan; i++)
        if (strcmp(m->chan[i].raw, name) == 0) return &m->chan[i];
    oo_metrics_label(m, name, label);
    for (i = 0; i < m->nchan; i++)
        if (strcmp(m->chan[i].name, label) == 0) return &m->chan[i];
    if (m->nchan == OO_CHAN_LABELS) return NULL;
    memcpy(m->chan[m->nchan].name, label, sizeof label);
    if (strlen(name) < sizeof m->chan[m->nchan].raw) strcpy(m->chan[m->nchan].raw, name);
    return &m->chan[m->nchan++];
}

void oo_metrics_sent(oo_metrics *m, const char *channel) {
    oo_chan_count *c = chan_slot(m, channel);
    m->sent++;
    if (c) c->sent++;
}

/* n failures under one label (the order totals are the caller's); every
 * value of the label is checked by oo_metrics_label first. */
static void fail_add(oo_metrics *m, const char *kind, int status, const char *code,
                     const char *channel, long long n) {
    char k[OO_LABEL_MAX + 1], c[OO_LABEL_MAX + 1], ch[OO_LABEL_MAX + 1];
    int i;
    oo_metrics_label(m, kind, k);
    if (!k[0]) memcpy(k, "unknown", sizeof "unknown");
    oo_metrics_label(m, code, c);
    oo_metrics_label(m, channel, ch);
    for (i = 0; i < m->nfail; i++) {
        oo_fail_label *f = &m->fail[i];
        if (f->status == status && strcmp(f->kind, k) == 0 && strcmp(f->code, c) == 0 &&
            strcmp(f->channel, ch) == 0) {
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
        memcpy(f->kind, k, sizeof k);
        memcpy(f->code, c, sizeof c);
        memcpy(f->channel, ch, sizeof ch);
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

#define COUNTER(name)                                                                              \
    static int l_##name(lua_State *L) {                                                            \
        oo_metrics *m = check(L);                                                                  \
        m->name += (long long)luaL_optinteger(L, 2, 1);                                            \
        return 0;                                                                                  \
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
    /* checked whole here: a long code (or one holding a NUL) must not be cut into a label */
    if (code) label_n(m, code, oo_rawlen(L, -1), o.code);
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
                m->lat_buckets[i] +=
                    lua_type(L, -1) == LUA_TNUMBER ? (long long)lua_tonumber(L, -1) : 0;
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The label of the string at idx (whole: a NUL inside makes it "other"),
 * or NULL when it is not a string. */
static const char *lua_label(lua_State *L, const oo_metrics *m, int idx, char *out) {
    size_t n;
    const char *s;
    if (lua_type(L, idx) != LUA_TSTRING) return NULL;
    s = lua_tolstring(L, idx, &n);
    return label_n(m, s, n, out);
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
                char kind[OO_LABEL_MAX + 1], code[OO_LABEL_MAX + 1], channel[OO_LABEL_MAX + 1];
                lua_getfield(L, ft, "kind");
                lua_getfield(L, ft, "code");
                lua_getfield(L, ft, "channel");
                fail_add(m, lua_label(L, m, -3, kind), (int)get_count(L, ft, "status"),
                         lua_label(L, m, -2, code), lua_label(L, m, -1, channel),
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
            char name[OO_LABEL_MAX + 1];
            if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1)) {
                oo_chan_count *c = chan_slot(m, lua_label(L, m, -2, name));
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

/*** core.metrics_new([secrets]) -> m; secrets: a list of strings (the site
 * tokens) no label may echo */
static int l_metrics_new(lua_State *L) {
    oo_metrics *m = (oo_metrics *)lua_newuserdata(L, sizeof *m);
    oo_metrics_init(m);
    if (lua_istable(L, 1)) {
        int i, n = (int)oo_rawlen(L, 1);
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, 1, i);
            if (lua_type(L, -1) == LUA_TSTRING) oo_metrics_secret(m, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    oo_setmetatable(L, OO_METRICS_MT);
    return 1;
}

/*** core.metric_label(s) -> s when it is a label value (1..40 of
 * [A-Za-z0-9_.-]), "" for "", else "other" */
static int l_metric_label(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char out[OO_LABEL_MAX + 1];
    lua_pushstring(L, label_n(NULL, s, n, out));
    return 1;
}

void oo_metrics_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"attempt", l_attempt},
                                       {"queued", l_queued},
                                       {"sent", l_sent},
                                       {"retried", l_retried},
                                       {"throttled", l_throttled},
                                       {"invalid", l_invalid},
                                       {"failed", l_failed},
                                       {"merge", l_merge},
                                       {"skipped", l_skipped},
                                       {"changed", l_changed},
                                       {"get", l_get},
                                       {NULL, NULL}};
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
    lua_pushcfunction(L, l_metric_label);
    lua_setfield(L, -2, "metric_label");
}
