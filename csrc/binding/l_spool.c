/* Lua binding of the spool (the store is spool.c): core.spool_open,
 * the spool userdata's methods. Runtime failures return
 * nil, {kind=, message=, retryable=, sqlite_code=?, bound=?} (spool.lua
 * makes them error objects); misuse raises, naming the argument. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "ledger.h"
#include "spool.h"

#define OO_SPOOL_ROWS_MT "optimizely.offline.spool.rows"

/* luaL_error with printf formats (%lld, %g, %zu), which lua_pushfstring
 * lacks on some Lua versions. */
static int raisef(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int raisef(lua_State *L, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s", buf);
}

typedef struct l_spool {
    oo_spool *s; /* NULL once closed */
} l_spool;

oo_spool *oo_spool_check(lua_State *L, int idx) {
    l_spool *b = (l_spool *)luaL_checkudata(L, idx, OO_SPOOL_MT);
    if (!b->s) raisef(L, "spool is closed");
    return b->s;
}

/* Runtime failure → nil, {kind, message, retryable, sqlite_code?, bound?}
 * (the one error shape, core.h: oo_push_error); misuse → raise. */
int oo_spool_push_err(lua_State *L, const oo_spool_err *e) {
    oo_error err = {NULL, NULL, 0, NULL, 0, 0};
    if (e->code == OO_SPOOL_MISUSE) return raisef(L, "%s", e->message);
    err.kind = oo_spool_kind(e->code);
    err.message = e->message;
    err.retryable = e->code == OO_SPOOL_BUSY;
    oo_push_error(L, &err);
    if (e->sqlite_code) oo_set_int(L, "sqlite_code", e->sqlite_code);
    if (e->bound) oo_set_str(L, "bound", e->bound);
    return 2;
}

/* true, or nil, err */
static int push_ok(lua_State *L, int code, const oo_spool_err *err) {
    if (code != OO_SPOOL_OK) return oo_spool_push_err(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Arguments                                                           */

static int is_finite(lua_Number n) { return n == n && n > -1e300 && n < 1e300; }

/* What a bad value was, for a message: numbers shown, else the type. */
static const char *shown(lua_State *L, int idx) {
    return lua_type(L, idx) == LUA_TNUMBER ? lua_tostring(L, idx) : luaL_typename(L, idx);
}

/* Optional "now" argument: a finite number, default the wall clock. */
static double opt_now(lua_State *L, int idx, const char *fn) {
    if (lua_isnoneornil(L, idx)) return oo_spool_now();
    if (lua_type(L, idx) != LUA_TNUMBER || !is_finite(lua_tonumber(L, idx)))
        raisef(L, "spool:%s: now must be a number (epoch seconds), got %s", fn, shown(L, idx));
    return (double)lua_tonumber(L, idx);
}

static long long check_id(lua_State *L, int idx, const char *fn) {
    long long id = 0;
    if (lua_type(L, idx) != LUA_TNUMBER || !oo_tointeger(L, idx, &id) || id < 1)
        raisef(L, "spool:%s: id must be a positive integer, got %s", fn, shown(L, idx));
    return id;
}

/* A string or nil at idx (len may be NULL). */
static const char *opt_string(lua_State *L, int idx, size_t *len, const char *fn,
                              const char *name) {
    size_t ignored;
    if (!len) len = &ignored;
    *len = 0;
    if (lua_isnoneornil(L, idx)) return NULL;
    if (lua_type(L, idx) != LUA_TSTRING)
        raisef(L, "%s: %s must be a string or nil, got %s", fn, name, luaL_typename(L, idx));
    return lua_tolstring(L, idx, len);
}

/* ------------------------------------------------------------------ */
/* Options tables                                                      */

/* One field of an options table, read into a C struct at `off`:
 * 'b' boolean → int, 'i' integer → long long, 'n' number → double,
 * 'c' one of `words` → its index (int). Numbers must lie in [lo, hi]
 * (or above lo when `above`). */
typedef struct field {
    const char *name;
    char type;
    size_t off;
    double lo, hi;
    int above;
    const char *const *words;
} field;

static void read_field(lua_State *L, const char *fn, const field *f, void *out) {
    char *p = (char *)out + f->off;
    int t = lua_type(L, -1), i;
    long long v = 0;
    lua_Number x;
    switch (f->type) {
    case 'b':
        if (t != LUA_TBOOLEAN)
            raisef(L, "%s: opts.%s must be a boolean, got %s", fn, f->name, shown(L, -1));
        *(int *)(void *)p = lua_toboolean(L, -1);
        return;
    case 'c':
        if (t == LUA_TSTRING)
            for (i = 0; f->words[i]; i++)
                if (strcmp(lua_tostring(L, -1), f->words[i]) == 0) {
                    *(int *)(void *)p = i;
                    return;
                }
        raisef(L, "%s: opts.%s must be \"%s\" or \"%s\", got %s", fn, f->name, f->words[0],
               f->words[1], t == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
        return;
    case 'i':
        if (t != LUA_TNUMBER || !oo_tointeger(L, -1, &v) || (double)v < f->lo || (double)v > f->hi)
            raisef(L, "%s: opts.%s must be an integer from %.0f to %.0f, got %s", fn, f->name,
                   f->lo, f->hi, shown(L, -1));
        *(long long *)(void *)p = v;
        return;
    default:
        x = lua_tonumber(L, -1);
        if (t != LUA_TNUMBER || !is_finite(x) || (f->above ? !(x > f->lo) : !(x >= f->lo)) ||
            x > f->hi)
            raisef(L, "%s: opts.%s must be a number %s %g and <= %g, got %s", fn, f->name,
                   f->above ? ">" : ">=", f->lo, f->hi, shown(L, -1));
        *(double *)(void *)p = (double)x;
    }
}

/* Reads the options table at idx (nil: nothing) into out; an unknown key
 * raises, listing the known ones. */
static void read_fields(lua_State *L, int idx, const char *fn, const field *fields, void *out) {
    const field *f;
    if (lua_isnoneornil(L, idx)) return;
    if (lua_type(L, idx) != LUA_TTABLE)
        raisef(L, "%s: opts must be a table or nil, got %s", fn, luaL_typename(L, idx));
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k;
        if (lua_type(L, -2) != LUA_TSTRING)
            raisef(L, "%s: opts keys must be strings, got %s", fn, luaL_typename(L, -2));
        k = lua_tostring(L, -2);
        for (f = fields; f->name && strcmp(f->name, k) != 0; f++) {}
        if (!f->name) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (f = fields; f->name; f++) {
                luaL_addstring(&b, f == fields ? "" : ", ");
                luaL_addstring(&b, f->name);
            }
            luaL_pushresult(&b);
            raisef(L, "%s: unknown option opts.%s (expected %s)", fn, k, lua_tostring(L, -1));
        }
        read_field(L, fn, f, out);
        lua_pop(L, 1);
    }
}

#define MAX_INT 1e15
static const char *const SYNC_WORDS[] = {"normal", "full", NULL};
static const char *const FULL_WORDS[] = {"refuse", "drop_oldest", NULL};

static const field OPEN_FIELDS[] = {
    {"busy_timeout", 'n', offsetof(oo_spool_opts, busy_timeout), 0, 86400, 0, NULL},
    {"sync", 'c', offsetof(oo_spool_opts, sync), 0, 0, 0, SYNC_WORDS},
    {"max_orders", 'i', offsetof(oo_spool_opts, max_orders), 1, MAX_INT, 0, NULL},
    {"max_bytes", 'i', offsetof(oo_spool_opts, max_bytes), 1, MAX_INT, 0, NULL},
    {"max_age", 'n', offsetof(oo_spool_opts, max_age), 0, 1e300, 1, NULL},
    {"on_full", 'c', offsetof(oo_spool_opts, on_full), 0, 0, 0, FULL_WORDS},
    {"max_file_bytes", 'i', offsetof(oo_spool_opts, max_file_bytes), 4096, MAX_INT, 0, NULL},
    {NULL, 0, 0, 0, 0, 0, NULL}};

/* the word index is the enum value: keep them in step */
typedef char sync_words_match[OO_SPOOL_SYNC_FULL == 1 && OO_SPOOL_DROP_OLDEST == 1 ? 1 : -1];

void oo_spool_read_opts(lua_State *L, int idx, oo_spool_opts *o) {
    oo_spool_opts_init(o);
    read_fields(L, idx, "spool.open", OPEN_FIELDS, o);
}

static const field LIST_FIELDS[] = {
    {"dead", 'b', offsetof(oo_spool_list_opts, dead), 0, 0, 0, NULL},
    {"limit", 'i', offsetof(oo_spool_list_opts, limit), 1, MAX_INT, 0, NULL},
    {"offset", 'i', offsetof(oo_spool_list_opts, offset), 0, MAX_INT, 0, NULL},
    {"after", 'i', offsetof(oo_spool_list_opts, after_id), 0, MAX_INT, 0, NULL},
    {"body", 'b', offsetof(oo_spool_list_opts, with_body), 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, 0, NULL}};

typedef struct purge_opts {
    int dead, queued;
    double older_than, now;
} purge_opts;

static const field PURGE_FIELDS[] = {
    {"dead", 'b', offsetof(purge_opts, dead), 0, 0, 0, NULL},
    {"queued", 'b', offsetof(purge_opts, queued), 0, 0, 0, NULL},
    {"older_than", 'n', offsetof(purge_opts, older_than), 0, 1e300, 0, NULL},
    {"now", 'n', offsetof(purge_opts, now), -1e300, 1e300, 0, NULL},
    {NULL, 0, 0, 0, 0, 0, NULL}};

/* ------------------------------------------------------------------ */
/* Rows                                                                */

/* A userdata box around oo_spool_rows: freed by __gc even if building the
 * Lua result raises (out of memory). */
static oo_spool_rows *new_rows_box(lua_State *L) {
    oo_spool_rows *r = (oo_spool_rows *)lua_newuserdata(L, sizeof *r);
    memset(r, 0, sizeof *r);
    oo_setmetatable(L, OO_SPOOL_ROWS_MT);
    return r;
}

static int l_rows_gc(lua_State *L) {
    oo_spool_rows_free((oo_spool_rows *)luaL_checkudata(L, 1, OO_SPOOL_ROWS_MT));
    return 0;
}

static void set_str(lua_State *L, const char *k, const char *v, size_t len) {
    if (!v) return;
    lua_pushlstring(L, v, len);
    lua_setfield(L, -2, k);
}

static void set_cstr(lua_State *L, const char *k, const char *v) {
    if (v) set_str(L, k, v, strlen(v));
}

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, long long v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* What a row table holds beyond {id, ref, body, attempts, created_at, channel}. */
enum { ROW_CLAIMED, ROW_QUEUED, ROW_DEAD };

static void push_row(lua_State *L, const oo_spool_row *w, int shape) {
    lua_createtable(L, 0, shape == ROW_CLAIMED ? 7 : 13);
    set_int(L, "id", w->id);
    lua_pushstring(L, w->op == OO_SPOOL_OP_CANCEL  ? "cancel"
                      : w->op == OO_SPOOL_OP_AMEND ? "amend"
                                                   : "create");
    lua_setfield(L, -2, "op");
    set_str(L, "ref", w->ref, w->ref_len);
    set_str(L, "body", w->body, w->body_len);
    set_int(L, "attempts", w->attempts);
    set_num(L, "created_at", w->created_at);
    set_str(L, "channel", w->channel, w->channel_len);
    if (shape == ROW_CLAIMED) return;
    set_int(L, "bytes", w->bytes);
    if (shape == ROW_DEAD) {
        set_num(L, "failed_at", w->failed_at);
        set_cstr(L, "kind", w->kind);
        if (w->status) set_int(L, "status", w->status);
        set_cstr(L, "code", w->code);
        set_cstr(L, "message", w->message);
    } else {
        set_num(L, "next_at", w->next_at);
        set_cstr(L, "claimed_by", w->claimed_by);
        if (w->claimed_by) set_num(L, "claimed_until", w->claimed_until);
        set_cstr(L, "last_error", w->last_error);
    }
}

/* The rows as an array of tables; frees them (the box stays for the GC). */
static int push_rows(lua_State *L, oo_spool_rows *rows, int shape) {
    size_t i;
    lua_createtable(L, (int)rows->n, 0);
    for (i = 0; i < rows->n; i++) {
        push_row(L, &rows->v[i], shape);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    oo_spool_rows_free(rows);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Methods                                                             */

/*** core.spool_open(path, opts) → spool | nil, err */
static int l_open(lua_State *L) {
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    oo_spool_opts o;
    oo_spool_err err;
    l_spool *b;
    if (plen == 0 || strlen(path) != plen)
        raisef(L, "spool.open: path must be a non-empty string without NUL");
    oo_spool_read_opts(L, 2, &o);
    b = (l_spool *)lua_newuserdata(L, sizeof *b);
    b->s = NULL;
    oo_setmetatable(L, OO_SPOOL_MT);
    if (oo_spool_open(path, &o, &b->s, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    return 1;
}

/* A body: a non-empty string at idx. */
static const char *check_body(lua_State *L, int idx, size_t *len, const char *what) {
    if (lua_type(L, idx) != LUA_TSTRING || oo_rawlen(L, idx) == 0)
        raisef(L, "%s must be a non-empty string, got %s", what,
               lua_type(L, idx) == LUA_TSTRING ? "an empty string" : luaL_typename(L, idx));
    return lua_tolstring(L, idx, len);
}

/*** sp:put(body, ref, now, channel) → id | nil, err */
static int l_put(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_item it;
    oo_spool_err err;
    long long id;
    double now;
    memset(&it, 0, sizeof it);
    it.body = check_body(L, 2, &it.body_len, "spool:put: body");
    it.ref = opt_string(L, 3, &it.ref_len, "spool:put", "ref");
    now = opt_now(L, 4, "put");
    it.channel = opt_string(L, 5, &it.channel_len, "spool:put", "channel");
    if (oo_spool_put_many(s, &it, 1, now, &id, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/* One field of the put_many entry on top of the stack (a string or nil). */
static const char *item_field(lua_State *L, size_t i, const char *k, size_t *len) {
    char name[48];
    const char *v;
    lua_getfield(L, -1, k);
    snprintf(name, sizeof name, "list[%zu].%s", i, k);
    /* stays alive after the pop: the list (argument 2) holds the entry */
    v = opt_string(L, -1, len, "spool:put_many", name);
    lua_pop(L, 1);
    return v;
}

static int item_op(lua_State *L, size_t i);

/* Is the put_many entry just below the top (its body on top) a cancel? */
static int item_cancel(lua_State *L, size_t i) {
    int op;
    lua_pushvalue(L, -2);
    op = item_op(L, i);
    lua_pop(L, 1);
    return op;
}

/* The op of the put_many entry on top of the stack: "create" (default),
 * "cancel" or "amend" (the new version, right after its cancel). */
static int item_op(lua_State *L, size_t i) {
    size_t n;
    const char *op = item_field(L, i, "op", &n);
    if (!op || strcmp(op, "create") == 0) return OO_SPOOL_OP_CREATE;
    if (strcmp(op, "cancel") == 0) return OO_SPOOL_OP_CANCEL;
    if (strcmp(op, "amend") == 0) return OO_SPOOL_OP_AMEND;
    return raisef(L, "spool:put_many: list[%zu].op must be \"create\", \"cancel\" or \"amend\"", i);
}

/* Entry i (1-based) of the put_many list, on top of the stack. */
static void read_item(lua_State *L, size_t i, oo_spool_item *it) {
    char name[48];
    memset(it, 0, sizeof *it);
    snprintf(name, sizeof name, "spool:put_many: list[%zu].body", i);
    if (lua_type(L, -1) == LUA_TSTRING) {
        it->body = check_body(L, -1, &it->body_len, name);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        lua_getfield(L, -1, "body");
        /* a cancel's body is optional */
        if (!lua_isnil(L, -1) || item_cancel(L, i) != OO_SPOOL_OP_CANCEL)
            it->body = check_body(L, -1, &it->body_len, name);
        lua_pop(L, 1);
        it->ref = item_field(L, i, "ref", &it->ref_len);
        it->channel = item_field(L, i, "channel", &it->channel_len);
        it->op = item_op(L, i);
    } else {
        raisef(L,
               "spool:put_many: list[%zu] must be a table {body=, ref=, channel=} or a string,"
               " got %s",
               i, luaL_typename(L, -1));
    }
}

/*** sp:put_many({ {body=, ref=, channel=} | body, ... }, now) → {ids} | nil, err
 * One transaction: all stored or none. */
static int l_put_many(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    size_t n, i;
    oo_spool_item *items;
    long long *ids;
    oo_spool_err err;
    double now;
    if (lua_type(L, 2) != LUA_TTABLE)
        raisef(L, "spool:put_many: list must be a table, got %s", luaL_typename(L, 2));
    now = opt_now(L, 3, "put_many");
    n = (size_t)oo_rawlen(L, 2);
    if (n > 1000000) raisef(L, "spool:put_many: at most 1000000 orders per call");
    /* scratch memory the GC owns, so a raise below leaks nothing */
    items = (oo_spool_item *)lua_newuserdata(L, (n ? n : 1) * (sizeof *items + sizeof *ids));
    ids = (long long *)(void *)(items + (n ? n : 1));
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)(i + 1));
        read_item(L, i + 1, &items[i]);
        lua_pop(L, 1);
    }
    if (oo_spool_put_many(s, items, n, now, ids, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        lua_pushinteger(L, (lua_Integer)ids[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/*** sp:claim(max_n, lease_seconds, now) → { {id, ref, body, attempts, created_at, channel}, ... } | nil, err */
static int l_claim(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    long long max_n = 0;
    lua_Number lease = 0;
    double now;
    oo_spool_rows *rows;
    oo_spool_err err;
    if (lua_type(L, 2) != LUA_TNUMBER || !oo_tointeger(L, 2, &max_n) || max_n < 1 || max_n > 100000)
        raisef(L, "spool:claim: max_n must be an integer from 1 to 100000, got %s", shown(L, 2));
    if (lua_type(L, 3) != LUA_TNUMBER || !is_finite(lease = lua_tonumber(L, 3)) || !(lease > 0))
        raisef(L, "spool:claim: lease_seconds must be a positive number, got %s", shown(L, 3));
    now = opt_now(L, 4, "claim");
    rows = new_rows_box(L);
    if (oo_spool_claim(s, (size_t)max_n, (double)lease, now, rows, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    return push_rows(L, rows, ROW_CLAIMED);
}

/* ack and release: an id, true | nil, err */
static int owned_call(lua_State *L, int (*op)(oo_spool *, long long, oo_spool_err *),
                      const char *fn) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    return push_ok(L, op(s, check_id(L, 2, fn), &err), &err);
}

/* An ack's outcome at idx: "sent" (default) or "warned". */
static int ack_outcome(lua_State *L, int idx, const char *fn) {
    const char *o = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : NULL;
    if (lua_isnoneornil(L, idx)) return OO_LEDGER_SENT;
    if (o && strcmp(o, "sent") == 0) return OO_LEDGER_SENT;
    if (o && strcmp(o, "warned") == 0) return OO_LEDGER_WARNED;
    return raisef(L, "spool:%s: outcome must be \"sent\" or \"warned\", got %s", fn,
                  o ? o : luaL_typename(L, idx));
}

/*** sp:ack(id, outcome) → true | nil, err (kind "lease" unless this handle holds the row) */
static int l_ack(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    long long id = check_id(L, 2, "ack");
    int outcome = ack_outcome(L, 3, "ack");
    return push_ok(L, oo_spool_ack_outcomes(s, &id, &outcome, 1, oo_spool_now(), &err), &err);
}

/*** sp:release(id) → true | nil, err */
static int l_release(lua_State *L) { return owned_call(L, oo_spool_release, "release"); }

/*** sp:ack_many({id, ...}, {outcome, ...}) → true | nil, err (one transaction;
 * kind "lease" when some were not ours: the others are acked all the same) */
static int l_ack_many(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    size_t n, i;
    long long *ids;
    int *outcomes;
    if (lua_type(L, 2) != LUA_TTABLE)
        raisef(L, "spool:ack_many: ids must be a table, got %s", luaL_typename(L, 2));
    if (!lua_isnoneornil(L, 3) && lua_type(L, 3) != LUA_TTABLE)
        raisef(L, "spool:ack_many: outcomes must be a table or nil, got %s", luaL_typename(L, 3));
    n = (size_t)oo_rawlen(L, 2);
    if (n > 1000000) raisef(L, "spool:ack_many: at most 1000000 ids per call");
    ids = (long long *)lua_newuserdata(L, (n ? n : 1) * (sizeof *ids + sizeof *outcomes));
    outcomes = (int *)(void *)(ids + (n ? n : 1));
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)(i + 1));
        ids[i] = check_id(L, -1, "ack_many");
        lua_pop(L, 1);
        if (lua_istable(L, 3)) lua_rawgeti(L, 3, (int)(i + 1));
        else lua_pushnil(L);
        outcomes[i] = ack_outcome(L, -1, "ack_many");
        lua_pop(L, 1);
    }
    return push_ok(L, oo_spool_ack_outcomes(s, ids, outcomes, n, oo_spool_now(), &err), &err);
}

/*** sp:put_cancel(ref, channel, now, body) → id | nil, err: a cancel row (a DELETE of ref) */
static int l_put_cancel(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_item it;
    oo_spool_err err;
    long long id;
    double now;
    memset(&it, 0, sizeof it);
    it.op = OO_SPOOL_OP_CANCEL;
    it.ref = opt_string(L, 2, &it.ref_len, "spool:put_cancel", "ref");
    if (!it.ref || it.ref_len == 0) raisef(L, "spool:put_cancel: ref must be a non-empty string");
    it.channel = opt_string(L, 3, &it.channel_len, "spool:put_cancel", "channel");
    now = opt_now(L, 4, "put_cancel");
    it.body = opt_string(L, 5, &it.body_len, "spool:put_cancel", "body");
    if (oo_spool_put_many(s, &it, 1, now, &id, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/*** sp:cancel_queued(ref, channel, now) → {removed=, in_flight=, seen=} | nil, err */
static int l_cancel_queued(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_cancelled c;
    oo_spool_err err;
    size_t rlen, clen;
    const char *ref = opt_string(L, 2, &rlen, "spool:cancel_queued", "ref");
    const char *chan = opt_string(L, 3, &clen, "spool:cancel_queued", "channel");
    double now = opt_now(L, 4, "cancel_queued");
    if (!ref || rlen == 0) raisef(L, "spool:cancel_queued: ref must be a non-empty string");
    if (oo_spool_cancel_queued(s, ref, rlen, chan, clen, now, &c, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_createtable(L, 0, 3);
    set_int(L, "removed", c.removed);
    set_int(L, "in_flight", c.in_flight);
    lua_pushboolean(L, c.seen);
    lua_setfield(L, -2, "seen");
    return 1;
}

/*** sp:purge_customer(email, user_id, now) → {queued=, dead=, in_flight=} | nil, err
 * (spool.lua's purge_user) */
static int l_purge_customer(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_purged p;
    oo_spool_err err;
    size_t elen, ulen;
    const char *email = opt_string(L, 2, &elen, "spool:purge_customer", "email");
    const char *uid = opt_string(L, 3, &ulen, "spool:purge_customer", "user_id");
    double now = opt_now(L, 4, "purge_customer");
    if (!email && !uid) raisef(L, "spool:purge_customer: give an e-mail or a user id");
    if (oo_spool_purge_customer(s, email, elen, uid, ulen, now, &p, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_createtable(L, 0, 3);
    set_int(L, "queued", p.queued);
    set_int(L, "dead", p.dead);
    set_int(L, "in_flight", p.in_flight);
    return 1;
}

/*** sp:retry(id, next_at, err_text) → true | nil, err */
static int l_retry(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    long long id = check_id(L, 2, "retry");
    lua_Number next_at = 0;
    if (lua_type(L, 3) != LUA_TNUMBER || !is_finite(next_at = lua_tonumber(L, 3)))
        raisef(L, "spool:retry: next_at must be a number (epoch seconds), got %s", shown(L, 3));
    return push_ok(L,
                   oo_spool_retry(s, id, (double)next_at,
                                  opt_string(L, 4, NULL, "spool:retry", "err_text"), &err),
                   &err);
}

/* Kills row id and pushes true[, deps] | nil, err (see sp:kill). */
static int kill_result(lua_State *L, oo_spool *s, long long id, const oo_spool_failure *f,
                       double now) {
    oo_spool_err err;
    oo_spool_rows *deps = new_rows_box(L);
    if (oo_spool_kill_deps(s, id, f, now, deps, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushboolean(L, 1);
    if (deps->n == 0) return 1;
    push_rows(L, deps, ROW_DEAD);
    return 2;
}

/*** sp:kill(id, err, now) → true[, deps] | nil, err
 * err: {kind=, status=, code=, message=} (an error object fits) or a message string.
 * deps: when the row was a cancel with an amend's new version behind it,
 * the dead letters that version became in the same transaction (rows:
 * id, ref, channel, attempts, kind, status, code, message). */
static int l_kill(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_failure f;
    long long id = check_id(L, 2, "kill");
    double now = opt_now(L, 4, "kill");
    memset(&f, 0, sizeof f);
    if (lua_type(L, 3) == LUA_TSTRING) {
        f.message = lua_tostring(L, 3);
    } else if (lua_type(L, 3) == LUA_TTABLE) {
        long long st = 0;
        /* the strings stay alive after the pops: the caller's table holds them */
        lua_getfield(L, 3, "kind");
        f.kind = opt_string(L, -1, NULL, "spool:kill", "err.kind");
        lua_getfield(L, 3, "code");
        f.code = opt_string(L, -1, NULL, "spool:kill", "err.code");
        lua_getfield(L, 3, "message");
        f.message = opt_string(L, -1, NULL, "spool:kill", "err.message");
        lua_getfield(L, 3, "status");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !oo_tointeger(L, -1, &st) || st < 0 || st > 999)
                raisef(L, "spool:kill: err.status must be an integer HTTP status or nil, got %s",
                       shown(L, -1));
            f.status = (int)st;
        }
        lua_pop(L, 4);
    } else if (!lua_isnoneornil(L, 3)) {
        raisef(L, "spool:kill: err must be a table, a string or nil, got %s", luaL_typename(L, 3));
    }
    return kill_result(L, s, id, &f, now);
}

/*** sp:stats(now) → {queued, due, claimed, dead, bytes, oldest_age} | nil, err */
static int l_stats(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_counts st;
    oo_spool_err err;
    if (oo_spool_stats(s, opt_now(L, 2, "stats"), &st, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_createtable(L, 0, 6);
    set_int(L, "queued", st.queued);
    set_int(L, "due", st.due);
    set_int(L, "claimed", st.claimed);
    set_int(L, "dead", st.dead);
    set_int(L, "bytes", st.bytes);
    set_num(L, "oldest_age", st.oldest_age);
    return 1;
}

/*** sp:next_due(now) → epoch seconds of the earliest unclaimed order | false | nil, err */
static int l_next_due(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    double at;
    int found;
    if (oo_spool_next_due(s, opt_now(L, 2, "next_due"), &at, &found, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    if (found) lua_pushnumber(L, (lua_Number)at);
    else lua_pushboolean(L, 0);
    return 1;
}

/*** sp:list{dead=, limit=100, offset=0, after=id, body=false} → rows | nil, err */
static int l_list(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_list_opts o;
    oo_spool_rows *rows;
    oo_spool_err err;
    memset(&o, 0, sizeof o);
    o.limit = 100;
    read_fields(L, 2, "spool:list", LIST_FIELDS, &o);
    rows = new_rows_box(L);
    if (oo_spool_list(s, &o, rows, &err) != OO_SPOOL_OK) return oo_spool_push_err(L, &err);
    return push_rows(L, rows, o.dead ? ROW_DEAD : ROW_QUEUED);
}

/*** sp:requeue_dead(id | "all", now) → n | nil, err */
static int l_requeue_dead(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    long long id = 0, n;
    if (lua_type(L, 2) == LUA_TNUMBER) id = check_id(L, 2, "requeue_dead");
    else if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "all") != 0)
        raisef(L, "spool:requeue_dead: expected an id or \"all\", got %s", luaL_typename(L, 2));
    if (oo_spool_requeue_dead(s, id, opt_now(L, 3, "requeue_dead"), &n, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*** sp:purge{dead=true, queued=true, older_than=secs, now=} → n | nil, err */
static int l_purge(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    purge_opts o;
    long long n;
    int which;
    if (lua_type(L, 2) != LUA_TTABLE)
        raisef(L, "spool:purge: opts must be a table {dead=true|queued=true, older_than=}");
    memset(&o, 0, sizeof o);
    o.older_than = -1;
    o.now = oo_spool_now();
    read_fields(L, 2, "spool:purge", PURGE_FIELDS, &o);
    which = (o.dead ? OO_SPOOL_PURGE_DEAD : 0) | (o.queued ? OO_SPOOL_PURGE_QUEUED : 0);
    if (!which)
        raisef(L, "spool:purge: say what to purge: opts.dead = true and/or opts.queued = true");
    if (oo_spool_purge(s, which, o.older_than, o.now, &n, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*** sp:due_now(now) → moved, waiting | nil, err */
static int l_due_now(lua_State *L) {
    oo_spool *s = oo_spool_check(L, 1);
    oo_spool_err err;
    long long moved, waiting;
    if (oo_spool_due_now(s, opt_now(L, 2, "due_now"), &moved, &waiting, &err) != OO_SPOOL_OK)
        return oo_spool_push_err(L, &err);
    lua_pushinteger(L, (lua_Integer)moved);
    lua_pushinteger(L, (lua_Integer)waiting);
    return 2;
}

/*** sp:owner() → this handle's lease token; sp:path() → the file */
static int l_owner(lua_State *L) {
    lua_pushstring(L, oo_spool_owner(oo_spool_check(L, 1)));
    return 1;
}

static int l_path(lua_State *L) {
    lua_pushstring(L, oo_spool_path(oo_spool_check(L, 1)));
    return 1;
}

static int l_close(lua_State *L) {
    l_spool *b = (l_spool *)luaL_checkudata(L, 1, OO_SPOOL_MT);
    oo_spool_close(b->s);
    b->s = NULL;
    return 0;
}

static int l_is_open(lua_State *L) {
    l_spool *b = (l_spool *)luaL_checkudata(L, 1, OO_SPOOL_MT);
    lua_pushboolean(L, b->s != NULL);
    return 1;
}

static int l_tostring(lua_State *L) {
    l_spool *b = (l_spool *)luaL_checkudata(L, 1, OO_SPOOL_MT);
    if (b->s) lua_pushfstring(L, "optimizely.offline.spool (%s)", oo_spool_path(b->s));
    else lua_pushliteral(L, "optimizely.offline.spool (closed)");
    return 1;
}

void oo_spool_register(lua_State *L) {
    static const luaL_Reg methods[] = {{"put", l_put},
                                       {"put_many", l_put_many},
                                       {"claim", l_claim},
                                       {"ack", l_ack},
                                       {"ack_many", l_ack_many},
                                       {"put_cancel", l_put_cancel},
                                       {"cancel_queued", l_cancel_queued},
                                       {"purge_customer", l_purge_customer},
                                       {"retry", l_retry},
                                       {"kill", l_kill},
                                       {"release", l_release},
                                       {"stats", l_stats},
                                       {"next_due", l_next_due},
                                       {"list", l_list},
                                       {"requeue_dead", l_requeue_dead},
                                       {"purge", l_purge},
                                       {"due_now", l_due_now},
                                       {"owner", l_owner},
                                       {"path", l_path},
                                       {"is_open", l_is_open},
                                       {"close", l_close},
                                       {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"spool_open", l_open}, {NULL, NULL}};
    oo_newclass(L, OO_SPOOL_MT, methods, l_close, l_close, l_tostring);
    if (luaL_newmetatable(L, OO_SPOOL_ROWS_MT)) {
        lua_pushcfunction(L, l_rows_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    oo_setfuncs(L, funcs, 0);
}
