/* Lua binding of the ledger (the store is ledger.c): core.ledger_open,
 * core.ledger_of_spool, core.ledger_fingerprint, core.ledger_entry and the
 * ledger userdata's methods. Runtime failures return nil, {kind=,
 * message=, ...} (ledger.lua makes them error objects); misuse raises,
 * naming the argument. The options were checked by ledger.lua. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "buf.h"
#include "date.h"
#include "hmac.h"
#include "ledger.h"
#include "spool_ledger.h"
#include "money.h"
#include "tz.h"

#define OO_LEDGER_MT "optimizely.offline.ledger"
#define ROWS_MT "optimizely.offline.ledger.rows"
#define GROUPS_MT "optimizely.offline.ledger.groups"

typedef struct l_ledger {
    oo_ledger *l; /* NULL once closed */
} l_ledger;

static oo_ledger *check_ledger(lua_State *L, int idx) {
    l_ledger *b = (l_ledger *)luaL_checkudata(L, idx, OO_LEDGER_MT);
    if (!b->l) luaL_error(L, "ledger is closed");
    return b->l;
}

oo_ledger *oo_ledger_arg(lua_State *L, int idx) { return check_ledger(L, idx); }

static int push_ok(lua_State *L, int code, const oo_spool_err *err) {
    if (code != OO_SPOOL_OK) return oo_spool_push_err(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* A non-empty string without NUL at idx (raises naming `what`). */
static const char *check_name(lua_State *L, int idx, const char *what, size_t max) {
    size_t n;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
    if (!s || n == 0 || n > max || strlen(s) != n)
        luaL_error(L, "%s must be a non-empty string of at most %d bytes", what, (int)max);
    return s;
}

static double opt_now(lua_State *L, int idx) {
    if (lua_isnoneornil(L, idx)) return oo_spool_now();
    return (double)luaL_checknumber(L, idx);
}

static void new_ledger(lua_State *L, l_ledger **b) {
    *b = (l_ledger *)lua_newuserdata(L, sizeof **b);
    (*b)->l = NULL;
    oo_setmetatable(L, OO_LEDGER_MT);
}

/*** core.ledger_open(path, keep_days, store_key, busy_timeout) → ledger | nil, err */
static int l_open(lua_State *L) {
    const char *path = check_name(L, 1, "ledger.open: path", 4096);
    oo_ledger_opts o;
    oo_spool_err err;
    l_ledger *b;
    oo_ledger_opts_init(&o);
    o.keep_days = (int)luaL_optinteger(L, 2, OO_LEDGER_KEEP_DAYS);
    o.store_key = lua_isnoneornil(L, 3) ? NULL : check_name(L, 3, "store_key", 256);
    o.busy_timeout = (double)luaL_optnumber(L, 4, 5.0);
    new_ledger(L, &b);
    if (oo_ledger_open(path, &o, &b->l, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    return 1;
}

/* Copies the string at idx into out[cap] (raises naming `what`). */
static void copy_name(lua_State *L, int idx, const char *what, char *out, size_t cap) {
    snprintf(out, cap, "%s", check_name(L, idx, what, cap - 1));
}

/*** core.ledger_of_spool(spool, host, site, channel, store_key, keep_days) → ledger | nil, err */
static int l_of_spool(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_ledger_cfg cfg;
    oo_spool_err err;
    l_ledger *b;
    memset(&cfg, 0, sizeof cfg);
    copy_name(L, 2, "ledger.of_spool: host", cfg.host, sizeof cfg.host);
    copy_name(L, 3, "ledger.of_spool: site", cfg.site, sizeof cfg.site);
    copy_name(L, 4, "ledger.of_spool: channel", cfg.channel, sizeof cfg.channel);
    if (!lua_isnoneornil(L, 5)) copy_name(L, 5, "store_key", cfg.store_key, sizeof cfg.store_key);
    cfg.keep_days = (int)luaL_optinteger(L, 6, OO_LEDGER_KEEP_DAYS);
    new_ledger(L, &b);
    if (oo_ledger_of_spool(s, &cfg, NULL, &b->l, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    return 1;
}

static void push_hex(lua_State *L, const unsigned char fp[OO_LEDGER_FP_LEN]) {
    char hex[2 * OO_LEDGER_FP_LEN];
    oo_pseudonym_encode(fp, OO_ENC_HEX, 2 * OO_LEDGER_FP_LEN, hex);
    lua_pushlstring(L, hex, sizeof hex);
}

/*** core.ledger_fingerprint(body) → 64 hex digits (SHA-256 of the bytes) */
static int l_fingerprint(lua_State *L) {
    size_t n;
    const char *body = luaL_checklstring(L, 1, &n);
    unsigned char fp[OO_LEDGER_FP_LEN];
    oo_ledger_fingerprint(body, n, fp);
    push_hex(L, fp);
    return 1;
}

/* Pushes amount (minor units) in the currency's decimals: "12.34". */
static void push_money(lua_State *L, long long amount, const char *currency) {
    oo_buf b;
    int minor = currency[0] ? oo_currency_minor(currency) : -1;
    oo_buf_init(&b);
    oo_money_emit(&b, amount, minor >= 0 ? minor : 0);
    if (b.oom) {
        oo_buf_free(&b);
        luaL_error(L, "out of memory");
    }
    lua_pushlstring(L, b.data, b.len);
    oo_buf_free(&b);
}

/* "YYYY-MM-DD" of an instant. */
static void push_date(lua_State *L, long long epoch) {
    char out[24];
    oo_date_format(epoch, out);
    lua_pushlstring(L, out, 10);
}

/*** core.ledger_entry(body, store_key) → {ref, fingerprint, order_at, currency,
 * total, total_minor, store} | nil, err {kind = "validation", message}: what
 * the ledger keeps of a body */
static int l_entry(lua_State *L) {
    size_t n;
    const char *body = luaL_checklstring(L, 1, &n);
    const char *key = luaL_optstring(L, 2, NULL);
    oo_ledger_entry e;
    char why[128];
    if (oo_ledger_entry_from_body(body, n, key, &e, why, sizeof why) != 0)
        return oo_push_errorf(L, "validation", "%s", why);
    lua_createtable(L, 0, 7);
    lua_pushlstring(L, e.ref, e.ref_len);
    lua_setfield(L, -2, "ref");
    push_hex(L, e.fp);
    lua_setfield(L, -2, "fingerprint");
    if (e.has_order_at) oo_set_int(L, "order_at", e.order_at);
    if (e.currency[0]) oo_set_str(L, "currency", e.currency);
    if (e.has_total) {
        oo_set_int(L, "total_minor", e.total);
        push_money(L, e.total, e.currency);
        lua_setfield(L, -2, "total");
    }
    if (e.store) {
        lua_pushlstring(L, e.store, e.store_len);
        lua_setfield(L, -2, "store");
    }
    oo_ledger_entry_free(&e);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Batches                                                             */

/* The scope table at idx: {host=, site=, channel=} (strings stay alive:
 * the table holds them). */
void oo_ledger_scope_read(lua_State *L, int idx, const char *fn, oo_ledger_scope *sc) {
    static const char *const keys[] = {"host", "site", "channel"};
    const char **out[3];
    char what[64];
    int i;
    out[0] = &sc->host;
    out[1] = &sc->site;
    out[2] = &sc->channel;
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s: scope must be a table {host=, site=, channel=}, got %s", fn,
                   luaL_typename(L, idx));
    for (i = 0; i < 3; i++) {
        lua_getfield(L, idx, keys[i]);
        snprintf(what, sizeof what, "%s: scope.%s", fn, keys[i]);
        *out[i] = check_name(L, -1, what, 255);
        lua_pop(L, 1);
    }
}

/* A string field of the list entry on top of the stack, or NULL. */
static const char *item_str(lua_State *L, const char *fn, size_t i, const char *k, size_t *len) {
    const char *v = NULL;
    *len = 0;
    lua_getfield(L, -1, k);
    if (lua_type(L, -1) == LUA_TSTRING) v = lua_tolstring(L, -1, len);
    else if (!lua_isnil(L, -1))
        luaL_error(L, "%s: list[%d].%s must be a string or nil, got %s", fn, (int)i, k,
                   luaL_typename(L, -1));
    lua_pop(L, 1); /* the list holds the string */
    return v;
}

/* Entry i (1-based) of the list, on top of the stack: a body string or
 * {body=, ref=, channel=, outcome=, force=}. record: the outcome of a body string,
 * and of a table without one, is outcome_default (0: none given). */
static void read_item(lua_State *L, const char *fn, size_t i, int record, int outcome_default,
                      oo_ledger_item *it) {
    memset(it, 0, sizeof *it);
    if (lua_type(L, -1) == LUA_TSTRING) {
        it->body = lua_tolstring(L, -1, &it->body_len);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        size_t n;
        const char *outcome;
        it->body = item_str(L, fn, i, "body", &it->body_len);
        it->ref = item_str(L, fn, i, "ref", &it->ref_len);
        it->channel = item_str(L, fn, i, "channel", &it->channel_len);
        lua_getfield(L, -1, "force");
        it->force = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (it->force && record)
            luaL_error(L, "%s: list[%d].force is for reserve only", fn, (int)i);
        if ((outcome = item_str(L, fn, i, "outcome", &n)) != NULL) {
            if (!record) luaL_error(L, "%s: list[%d].outcome is for record only", fn, (int)i);
            if (!(it->outcome = oo_ledger_outcome_of(outcome)))
                luaL_error(L,
                           "%s: list[%d].outcome must be \"sent\", \"warned\", \"dead\" or"
                           " \"cancelled\"",
                           fn, (int)i);
        }
    } else {
        luaL_error(L,
                   "%s: list[%d] must be a body string or a table {body=, ref=, channel=}, got %s",
                   fn, (int)i, luaL_typename(L, -1));
    }
    if (!it->outcome) it->outcome = outcome_default;
    if (!it->body && !it->ref) luaL_error(L, "%s: list[%d] needs a body or a ref", fn, (int)i);
    if (record && !it->outcome)
        luaL_error(L, "%s: list[%d] has no outcome (give one, or opts.outcome)", fn, (int)i);
    if (record && !it->body && it->outcome != OO_LEDGER_CANCELLED)
        luaL_error(L, "%s: list[%d] needs its body (only a cancel may go without)", fn, (int)i);
}

/* The list at idx as items (scratch memory the GC owns). */
oo_ledger_item *oo_ledger_items_read(lua_State *L, int idx, const char *fn, int record,
                                     int outcome_default, size_t *n) {
    oo_ledger_item *items;
    size_t i;
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s: list must be a table, got %s", fn, luaL_typename(L, idx));
    *n = (size_t)oo_rawlen(L, idx);
    if (*n > 1000000) luaL_error(L, "%s: at most 1000000 orders per call", fn);
    items = (oo_ledger_item *)lua_newuserdata(L, (*n ? *n : 1) * sizeof *items);
    for (i = 0; i < *n; i++) {
        lua_rawgeti(L, idx, (int)(i + 1));
        read_item(L, fn, i + 1, record, outcome_default, &items[i]);
        lua_pop(L, 1);
    }
    return items;
}

static const char *state_name(int state) {
    switch (state) {
    case OO_LEDGER_RESERVED: return "reserved";
    case OO_LEDGER_SAME: return "same";
    case OO_LEDGER_CHANGED: return "changed";
    case OO_LEDGER_SEEN: return "seen";
    case OO_LEDGER_IN_FLIGHT: return "in_flight";
    default: return "unknown";
    }
}

/* The answers: one table per item, {state=, outcome=, at=} or {state=, until=, mine=}. */
int oo_ledger_answers_push(lua_State *L, const oo_ledger_item *items, size_t n) {
    size_t i;
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        const oo_ledger_item *it = &items[i];
        lua_createtable(L, 0, 3);
        oo_set_str(L, "state", state_name(it->state));
        if (it->prev_outcome) {
            oo_set_str(L, "outcome", oo_ledger_outcome_name(it->prev_outcome));
            oo_set_int(L, "at", it->prev_at);
        }
        if (it->reserved) oo_set_bool(L, "reserved", 1);
        if (it->state == OO_LEDGER_IN_FLIGHT) {
            oo_set_num(L, "until", it->until);
            oo_set_bool(L, "mine", it->mine);
        }
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/* The answers in short where they can be (a run again on a file sent in
 * full gets 100k of them): `true` for an order reserved now, the number
 * `at` for one seen with the same bytes and sent (not reserved: not
 * forced), else the table oo_ledger_answers_push makes. */
int oo_ledger_answers_push_short(lua_State *L, const oo_ledger_item *items, size_t n) {
    size_t i;
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        const oo_ledger_item *it = &items[i];
        if (it->state == OO_LEDGER_RESERVED) {
            lua_pushboolean(L, 1);
        } else if (it->state == OO_LEDGER_SAME && !it->reserved &&
                   it->prev_outcome == OO_LEDGER_SENT) {
            lua_pushinteger(L, (lua_Integer)it->prev_at);
        } else {
            oo_ledger_answers_push(L, it, 1);
            lua_rawgeti(L, -1, 1);
            lua_remove(L, -2);
        }
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/*** L:check(scope, list, now) → answers | nil, err */
static int l_check(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    oo_ledger_scope sc;
    oo_spool_err err;
    size_t n;
    oo_ledger_item *items;
    double now = opt_now(L, 4);
    oo_ledger_scope_read(L, 2, "ledger:check", &sc);
    items = oo_ledger_items_read(L, 3, "ledger:check", 0, 0, &n);
    if (oo_ledger_check(l, &sc, items, n, now, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    return oo_ledger_answers_push(L, items, n);
}

/* refs (a table at idx, or nil): refs[i] the refCode of body string i,
 * which lets the ledger answer an order sent before with those same bytes
 * without reading it (oo_ledger_item.hint; the table keeps the strings). */
static void read_hints(lua_State *L, int idx, oo_ledger_item *items, size_t n) {
    size_t i;
    if (lua_isnoneornil(L, idx)) return;
    luaL_checktype(L, idx, LUA_TTABLE);
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (int)(i + 1));
        if (lua_type(L, -1) == LUA_TSTRING && items[i].body && !items[i].ref)
            items[i].hint = lua_tolstring(L, -1, &items[i].hint_len);
        lua_pop(L, 1);
    }
}

/*** L:reserve(scope, list, lease, now, short, refs) → answers | nil, err
 * (short: oo_ledger_answers_push_short's; refs: read_hints) */
static int l_reserve(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    oo_ledger_scope sc;
    oo_spool_err err;
    size_t n;
    oo_ledger_item *items;
    lua_Number lease = luaL_checknumber(L, 4);
    double now = opt_now(L, 5);
    oo_ledger_scope_read(L, 2, "ledger:reserve", &sc);
    items = oo_ledger_items_read(L, 3, "ledger:reserve", 0, 0, &n);
    read_hints(L, 7, items, n);
    if (!(lease > 0)) luaL_error(L, "ledger:reserve: lease must be positive");
    if (oo_ledger_reserve(l, &sc, items, n, (double)lease, now, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    if (lua_toboolean(L, 6)) return oo_ledger_answers_push_short(L, items, n);
    return oo_ledger_answers_push(L, items, n);
}

/*** L:record(scope, list, now, outcome) → true | nil, err
 * outcome: of the items that name none ("sent", ..., or nil). */
static int l_record(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    oo_ledger_scope sc;
    oo_spool_err err;
    size_t n;
    oo_ledger_item *items;
    double now = opt_now(L, 4);
    int outcome = 0;
    if (!lua_isnoneornil(L, 5) && !(outcome = oo_ledger_outcome_of(luaL_checkstring(L, 5))))
        luaL_error(L, "ledger:record: opts.outcome must be \"sent\", \"warned\", \"dead\" or"
                      " \"cancelled\"");
    oo_ledger_scope_read(L, 2, "ledger:record", &sc);
    items = oo_ledger_items_read(L, 3, "ledger:record", 1, outcome, &n);
    return push_ok(L, oo_ledger_record(l, &sc, items, n, now, &err), &err);
}

/*** L:release(scope, list) → true | nil, err */
static int l_release(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    oo_ledger_scope sc;
    oo_spool_err err;
    size_t n;
    oo_ledger_item *items;
    oo_ledger_scope_read(L, 2, "ledger:release", &sc);
    items = oo_ledger_items_read(L, 3, "ledger:release", 0, 0, &n);
    return push_ok(L, oo_ledger_release(l, &sc, items, n, &err), &err);
}

/* ------------------------------------------------------------------ */
/* Rows out                                                            */

static oo_ledger_rows *new_rows_box(lua_State *L) {
    oo_ledger_rows *r = (oo_ledger_rows *)lua_newuserdata(L, sizeof *r);
    memset(r, 0, sizeof *r);
    oo_setmetatable(L, ROWS_MT);
    return r;
}

static int l_rows_gc(lua_State *L) {
    oo_ledger_rows_free((oo_ledger_rows *)luaL_checkudata(L, 1, ROWS_MT));
    return 0;
}

static void set_opt_str(lua_State *L, const char *k, const char *v) {
    if (v) oo_set_str(L, k, v);
}

static void push_row(lua_State *L, const oo_ledger_row *w) {
    lua_createtable(L, 0, 12);
    set_opt_str(L, "host", w->host);
    set_opt_str(L, "site", w->site);
    set_opt_str(L, "channel", w->channel);
    if (w->ref) {
        lua_pushlstring(L, w->ref, w->ref_len);
        lua_setfield(L, -2, "ref");
    }
    if (!w->outcome) {
        oo_set_str(L, "outcome", "pending");
        set_opt_str(L, "owner", w->owner);
        oo_set_num(L, "until", w->until);
        return;
    }
    oo_set_str(L, "outcome", oo_ledger_outcome_name(w->outcome));
    oo_set_int(L, "at", w->at);
    if (w->fp[0] || memcmp(w->fp, w->fp + 1, OO_LEDGER_FP_LEN - 1) != 0) {
        push_hex(L, w->fp);
        lua_setfield(L, -2, "fingerprint");
    }
    if (w->has_order_at) {
        oo_set_int(L, "order_at", w->order_at);
        push_date(L, w->order_at);
        lua_setfield(L, -2, "order_date");
    }
    set_opt_str(L, "store", w->store);
    if (w->currency[0]) oo_set_str(L, "currency", w->currency);
    if (w->has_total) {
        oo_set_int(L, "total_minor", w->total);
        push_money(L, w->total, w->currency);
        lua_setfield(L, -2, "total");
    }
}

static int push_rows(lua_State *L, oo_ledger_rows *rows) {
    size_t i;
    lua_createtable(L, (int)rows->n, 0);
    for (i = 0; i < rows->n; i++) {
        push_row(L, &rows->v[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/*** L:show(ref) → rows | nil, err */
static int l_show(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    size_t n;
    const char *ref = luaL_checklstring(L, 2, &n);
    oo_ledger_rows *rows = new_rows_box(L);
    oo_spool_err err;
    if (oo_ledger_show(l, ref, n, rows, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    push_rows(L, rows);
    oo_ledger_rows_free(rows);
    return 1;
}

/*** L:page(after_scope, after_ref, limit) → rows, last_scope, last_ref | nil, err */
static int l_page(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    long long after = (long long)luaL_optinteger(L, 2, 0);
    size_t n = 0;
    const char *ref = luaL_optlstring(L, 3, NULL, &n);
    long long limit = (long long)luaL_checkinteger(L, 4);
    oo_ledger_rows *rows = new_rows_box(L);
    oo_spool_err err;
    if (oo_ledger_page(l, after, ref, n, limit, rows, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    push_rows(L, rows);
    if (rows->n == 0) {
        oo_ledger_rows_free(rows);
        return 1;
    }
    lua_pushinteger(L, (lua_Integer)rows->v[rows->n - 1].scope_id);
    lua_pushlstring(L, rows->v[rows->n - 1].ref, rows->v[rows->n - 1].ref_len);
    oo_ledger_rows_free(rows);
    return 3;
}

/*** L:forget(before) → n | nil, err */
static int l_forget(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    double before = (double)luaL_checknumber(L, 2);
    long long n;
    oo_spool_err err;
    if (oo_ledger_forget(l, before, &n, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*** L:prune(now, max) → n | nil, err */
static int l_prune(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    double now = opt_now(L, 2);
    long long max = (long long)luaL_optinteger(L, 3, 0), n;
    oo_spool_err err;
    if (oo_ledger_prune(l, now, max, &n, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*** L:span() → {created, oldest?, newest?, pruned_before?} | nil, err */
static int l_span(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    oo_ledger_span s;
    oo_spool_err err;
    if (oo_ledger_span_of(l, &s, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    lua_createtable(L, 0, 4);
    oo_set_int(L, "created", s.created);
    if (s.has_rows) {
        oo_set_int(L, "oldest", s.rows_oldest);
        oo_set_int(L, "newest", s.rows_newest);
    }
    if (s.has_pruned) oo_set_int(L, "pruned_before", s.pruned_before);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Reports                                                             */

static int l_groups_gc(lua_State *L) {
    oo_ledger_groups_free((oo_ledger_groups *)luaL_checkudata(L, 1, GROUPS_MT));
    return 0;
}

static long zone_offset(void *ctx, long long t) {
    return oo_tz_offset((const struct tz_zone *)ctx, t);
}

static void push_group(lua_State *L, const oo_ledger_group *g) {
    int k;
    lua_createtable(L, 0, 8);
    if (g->has_day) {
        push_date(L, g->day * 86400);
        lua_setfield(L, -2, "day");
    }
    set_opt_str(L, "store", g->store && g->store[0] ? g->store : NULL);
    set_opt_str(L, "channel", g->channel);
    if (g->currency[0]) oo_set_str(L, "currency", g->currency);
    for (k = 1; k <= OO_LEDGER_OUTCOMES; k++) {
        lua_createtable(L, 0, 3);
        oo_set_int(L, "orders", g->orders[k]);
        oo_set_int(L, "total_minor", g->minor[k]);
        push_money(L, g->minor[k], g->currency);
        lua_setfield(L, -2, "total");
        lua_setfield(L, -2, oo_ledger_outcome_name(k));
    }
}

/*** L:report(by, from_day, to_day, zone) → groups | nil, err
 * by: OO_LEDGER_BY_* bits; from_day/to_day: days since 1970-01-01 or nil;
 * zone: a core.tz_load zone or nil (UTC). */
static int l_report(lua_State *L) {
    oo_ledger *l = check_ledger(L, 1);
    oo_ledger_report_opts o;
    oo_ledger_groups *g;
    oo_spool_err err;
    size_t i;
    memset(&o, 0, sizeof o);
    o.by = (int)luaL_checkinteger(L, 2);
    if ((o.has_from = !lua_isnoneornil(L, 3))) o.from_day = (long long)luaL_checkinteger(L, 3);
    if ((o.has_to = !lua_isnoneornil(L, 4))) o.to_day = (long long)luaL_checkinteger(L, 4);
    if (!lua_isnoneornil(L, 5)) {
        o.offset = zone_offset;
        o.offset_ctx = (void *)oo_tz_check(L, 5);
    }
    g = (oo_ledger_groups *)lua_newuserdata(L, sizeof *g);
    memset(g, 0, sizeof *g);
    oo_setmetatable(L, GROUPS_MT);
    if (oo_ledger_report(l, &o, g, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    lua_createtable(L, (int)g->n, 0);
    for (i = 0; i < g->n; i++) {
        push_group(L, &g->v[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    oo_ledger_groups_free(g);
    return 1;
}

/*** core.ledger_day(y, m, d) → days since 1970-01-01 | nil (not a date) */
static int l_day(lua_State *L) {
    lua_Integer y = luaL_checkinteger(L, 1), m = luaL_checkinteger(L, 2),
                d = luaL_checkinteger(L, 3);
    if (y < 1970 || y > 9999 || m < 1 || m > 12 || d < 1 ||
        d > (lua_Integer)oo_days_in_month((long long)y, (unsigned)m)) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushinteger(L, (lua_Integer)oo_days_from_civil((long long)y, (unsigned)m, (unsigned)d));
    return 1;
}

/* ------------------------------------------------------------------ */

static int l_owner(lua_State *L) {
    lua_pushstring(L, oo_ledger_owner(check_ledger(L, 1)));
    return 1;
}

static int l_path(lua_State *L) {
    lua_pushstring(L, oo_ledger_path(check_ledger(L, 1)));
    return 1;
}

static int l_in_spool(lua_State *L) {
    lua_pushboolean(L, oo_ledger_in_spool(check_ledger(L, 1)));
    return 1;
}

static int l_close(lua_State *L) {
    l_ledger *b = (l_ledger *)luaL_checkudata(L, 1, OO_LEDGER_MT);
    oo_ledger_close(b->l);
    b->l = NULL;
    return 0;
}

static int l_is_open(lua_State *L) {
    l_ledger *b = (l_ledger *)luaL_checkudata(L, 1, OO_LEDGER_MT);
    lua_pushboolean(L, b->l != NULL);
    return 1;
}

static int l_tostring(lua_State *L) {
    l_ledger *b = (l_ledger *)luaL_checkudata(L, 1, OO_LEDGER_MT);
    if (b->l) lua_pushfstring(L, "optimizely.offline.ledger (%s)", oo_ledger_path(b->l));
    else lua_pushliteral(L, "optimizely.offline.ledger (closed)");
    return 1;
}

void oo_ledger_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"check", l_check},       {"reserve", l_reserve},
                                       {"record", l_record},     {"release", l_release},
                                       {"show", l_show},         {"page", l_page},
                                       {"forget", l_forget},     {"prune", l_prune},
                                       {"span", l_span},         {"report", l_report},
                                       {"owner", l_owner},       {"path", l_path},
                                       {"in_spool", l_in_spool}, {"is_open", l_is_open},
                                       {"close", l_close},       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"ledger_open", l_open},
                                     {"ledger_of_spool", l_of_spool},
                                     {"ledger_fingerprint", l_fingerprint},
                                     {"ledger_entry", l_entry},
                                     {"ledger_day", l_day},
                                     {NULL, NULL}};
    oo_newclass(L, OO_LEDGER_MT, methods, l_close, l_close, l_tostring);
    if (luaL_newmetatable(L, ROWS_MT)) {
        lua_pushcfunction(L, l_rows_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, GROUPS_MT)) {
        lua_pushcfunction(L, l_groups_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    oo_setfuncs(L, funcs, 0);
}
