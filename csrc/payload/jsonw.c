/* JSON writer for the files the command line writes (rejects lines, the
 * report): core.json_encode(value [, opts]) -> string | nil, err {kind =
 * "validation", message}.
 *
 * What it writes, and why:
 *  - strings through oo_json_string (the encoder's): '"', '\\' and control
 *    characters escaped, '/' and every other byte as is. A string that is
 *    not valid UTF-8 keeps its bytes, so a strict reader refuses the line
 *    rather than read back a silently altered order;
 *  - integers (Lua integers, and whole floats below 2^53) exactly; other
 *    numbers with 14 significant digits (what lua-cjson wrote: 19.9 stays
 *    19.9); NaN and infinities as null, as the lenient lua-cjson did;
 *  - a table whose keys are exactly 1..n is an array; any other table an
 *    object (number keys written as strings, so a sparse array keeps its
 *    holes as missing keys instead of losing entries); {} for an empty one;
 *  - lightuserdata NULL (the decoders' null) as null.
 * A function, a coroutine, a full userdata, a key that is neither a string
 * nor a number, or nesting deeper than 100 levels (a cycle) is refused with
 * nil + message: the caller decides what to keep. Tables are read raw (no
 * metamethods), so no Lua code runs while the buffer is in use.
 *
 * opts (all optional): sort = true (object keys in byte order, for
 * reproducible files), first = {keys...} (these keys first, in that order,
 * at every level; the rest after them), indent = n (objects one member a
 * line, indented by n spaces per level; an array stays on one line, what
 * it holds written compact). */
#include "buf.h"
#include "core.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSONW_MAX_DEPTH 100
#define JSONW_MT "optimizely.offline.jsonw"

typedef struct {
    const char *s;
    size_t n;
    int idx;   /* position of the original key in the key list table */
    int rank;  /* < 0: position in opts.first (earlier first); 0 for the rest */
    int bytes; /* order the rest by bytes (opts.sort), else as pairs() gave them */
} key_ref;

typedef struct {
    lua_State *L;
    oo_buf *b;
    int sort, indent, first_idx; /* first_idx: stack index of opts.first, or 0 */
    const char *err;
    char errbuf[96];
} W;

static int value(W *w, int idx, int depth);

static void fail(W *w, const char *msg) {
    if (!w->err) w->err = msg;
}

static void number(oo_buf *b, lua_State *L, int idx) {
    long long iv;
    char tmp[40];
    lua_Number v = lua_tonumber(L, idx);
    int n, i;
    if (oo_tointeger(L, idx, &iv)) {
        oo_buf_addint(b, iv);
        return;
    }
    if (v != v || isinf(v)) {
        oo_buf_addlit(b, "null");
        return;
    }
    n = snprintf(tmp, sizeof tmp, "%.14g", (double)v);
    for (i = 0; i < n; i++)
        if (tmp[i] == ',') tmp[i] = '.'; /* a decimal comma from the C locale of an embedder */
    oo_buf_add(b, tmp, (size_t)n);
}

static void newline(W *w, int depth) {
    int i;
    oo_buf_addc(w->b, '\n');
    for (i = 0; i < depth * w->indent; i++) oo_buf_addc(w->b, ' ');
}

/* Array length if the table at idx has exactly the keys 1..n, else -1;
 * 0 for an empty table. Also counts the keys into *count. */
static long long array_length(lua_State *L, int idx, long long *count) {
    long long n = 0, max = 0, k;
    int only_ints = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n++;
        if (only_ints && lua_type(L, -1) == LUA_TNUMBER && oo_tointeger(L, -1, &k) && k >= 1) {
            if (k > max) max = k;
        } else {
            only_ints = 0;
        }
    }
    *count = n;
    if (n == 0) return 0;
    return only_ints && max == n ? n : -1;
}

static int array(W *w, int idx, long long n, int depth) {
    long long i;
    int indent = w->indent;
    w->indent = 0; /* what an array holds is written compact, on its line */
    oo_buf_addc(w->b, '[');
    for (i = 1; i <= n; i++) {
        if (i > 1) {
            oo_buf_addc(w->b, ',');
            if (indent) oo_buf_addc(w->b, ' ');
        }
        lua_rawgeti(w->L, idx, (int)i);
        if (!value(w, lua_gettop(w->L), depth + 1)) return 0;
        lua_pop(w->L, 1);
    }
    oo_buf_addc(w->b, ']');
    w->indent = indent;
    return 1;
}

/* The key at the top of the stack as text: a string, or a number written
 * as a number. Leaves the text on the stack (replacing nothing). */
static int key_text(W *w) {
    lua_State *L = w->L;
    if (lua_type(L, -1) == LUA_TSTRING) {
        lua_pushvalue(L, -1);
        return 1;
    }
    if (lua_type(L, -1) == LUA_TNUMBER) {
        oo_buf tmp;
        oo_buf_init(&tmp);
        number(&tmp, L, -1);
        lua_pushlstring(L, tmp.data, tmp.len);
        oo_buf_free(&tmp);
        return 1;
    }
    snprintf(w->errbuf, sizeof w->errbuf, "cannot write a table key of type %s",
             luaL_typename(L, -1));
    fail(w, w->errbuf);
    return 0;
}

static int rank_of(W *w, const char *s, size_t n) {
    int i, len;
    if (!w->first_idx) return 0;
    len = (int)oo_rawlen(w->L, w->first_idx);
    for (i = 1; i <= len; i++) {
        size_t fn;
        const char *f;
        lua_rawgeti(w->L, w->first_idx, i);
        f = lua_tolstring(w->L, -1, &fn);
        lua_pop(w->L, 1);
        if (f && fn == n && memcmp(f, s, n) == 0) return i - len - 1; /* before every other key */
    }
    return 0;
}

static int cmp_keys(const void *pa, const void *pb) {
    const key_ref *a = pa, *b = pb;
    int c;
    if (a->rank != b->rank) return a->rank < b->rank ? -1 : 1;
    if (!a->bytes) return (a->idx > b->idx) - (a->idx < b->idx);
    c = memcmp(a->s, b->s, a->n < b->n ? a->n : b->n);
    return c ? c : (a->n > b->n) - (a->n < b->n);
}

static void member_head(W *w, int i, int depth, const char *s, size_t n) {
    if (i > 0) oo_buf_addc(w->b, ',');
    if (w->indent) newline(w, depth + 1);
    oo_json_string(w->b, s, n);
    oo_buf_addc(w->b, ':');
    if (w->indent) oo_buf_addc(w->b, ' ');
}

/* Members in pairs() order (no sorting asked for). */
static int object_plain(W *w, int idx, int depth) {
    lua_State *L = w->L;
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t n;
        const char *s;
        lua_pushvalue(L, -2);
        if (!key_text(w)) return 0;
        s = lua_tolstring(L, -1, &n);
        member_head(w, i++, depth, s, n);
        if (!value(w, lua_gettop(L) - 2, depth + 1)) return 0;
        lua_pop(L, 3); /* text, key copy, value */
    }
    return 1;
}

/* Members in the asked-for order: keys collected into a list table (text
 * and original key side by side), sorted by pointer into it. */
static int object_ordered(W *w, int idx, long long count, int depth) {
    lua_State *L = w->L;
    key_ref *keys;
    int list, i = 0, k;
    keys = (key_ref *)lua_newuserdata(L, (size_t)count * sizeof *keys);
    lua_createtable(L, (int)(2 * count), 0);
    list = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        if (!key_text(w)) return 0;
        lua_rawseti(L, list, 2 * i + 1); /* text */
        lua_pop(L, 1);                   /* the key copy */
        lua_pushvalue(L, -1);
        lua_rawseti(L, list, 2 * i + 2); /* original key */
        i++;
    }
    for (k = 0; k < i; k++) {
        lua_rawgeti(L, list, 2 * k + 1);
        keys[k].s = lua_tolstring(L, -1, &keys[k].n); /* kept alive by `list` */
        lua_pop(L, 1);
        keys[k].idx = k;
        keys[k].rank = rank_of(w, keys[k].s, keys[k].n);
        keys[k].bytes = w->sort;
    }
    qsort(keys, (size_t)i, sizeof *keys, cmp_keys);
    for (k = 0; k < i; k++) {
        member_head(w, k, depth, keys[k].s, keys[k].n);
        lua_rawgeti(L, list, 2 * keys[k].idx + 2);
        lua_rawget(L, idx);
        if (!value(w, lua_gettop(L), depth + 1)) return 0;
        lua_pop(L, 1);
    }
    lua_pop(L, 2); /* list, keys */
    return 1;
}

static int table(W *w, int idx, int depth) {
    long long count, n;
    int ok;
    if (depth >= JSONW_MAX_DEPTH) {
        fail(w, "nested more than 100 levels deep (a table that contains itself?)");
        return 0;
    }
    if (!lua_checkstack(w->L, 12)) {
        fail(w, "nested too deep for the Lua stack");
        return 0;
    }
    n = array_length(w->L, idx, &count);
    if (count == 0) {
        oo_buf_addlit(w->b, "{}");
        return 1;
    }
    if (n > 0) return array(w, idx, n, depth);
    oo_buf_addc(w->b, '{');
    ok = (w->sort || w->first_idx) ? object_ordered(w, idx, count, depth)
                                   : object_plain(w, idx, depth);
    if (!ok) return 0;
    if (w->indent) newline(w, depth);
    oo_buf_addc(w->b, '}');
    return 1;
}

static int value(W *w, int idx, int depth) {
    lua_State *L = w->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: oo_buf_addlit(w->b, "null"); return 1;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx)) oo_buf_addlit(w->b, "true");
        else oo_buf_addlit(w->b, "false");
        return 1;
    case LUA_TNUMBER: number(w->b, L, idx); return 1;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        oo_json_string(w->b, s, n);
        return 1;
    }
    case LUA_TTABLE: return table(w, idx, depth);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            oo_buf_addlit(w->b, "null");
            return 1;
        }
        break;
    default: break;
    }
    snprintf(w->errbuf, sizeof w->errbuf, "cannot write a value of type %s", luaL_typename(L, idx));
    fail(w, w->errbuf);
    return 0;
}

static void read_opts(W *w, lua_State *L) {
    if (lua_isnoneornil(L, 2)) return;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "sort");
    w->sort = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 2, "indent");
    if (!lua_isnil(L, -1)) {
        lua_Integer n = luaL_checkinteger(L, -1);
        luaL_argcheck(L, n >= 0 && n <= 16, 2, "opts.indent must be 0..16");
        w->indent = (int)n;
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "first");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
    } else {
        luaL_argcheck(L, lua_type(L, -1) == LUA_TTABLE, 2,
                      "opts.first must be a list of key names");
        w->first_idx = lua_gettop(L); /* stays on the stack for the whole call */
    }
}

/** Writes one value as JSON. @function json_encode
 * @param value a string, number, boolean, nil, null or table of those
 * @tparam[opt] table opts `sort`, `first`, `indent` (see the file header)
 * @return the JSON text, or nil and a message (a value JSON cannot hold) */
static int l_json_encode(lua_State *L) {
    oo_buf *b = (oo_buf *)lua_touserdata(L, lua_upvalueindex(1));
    W w;
    int ok;
    memset(&w, 0, sizeof w);
    lua_settop(L, 2);
    w.L = L;
    w.b = b;
    read_opts(&w, L);
    b->len = 0;
    b->oom = 0;
    ok = value(&w, 1, 0);
    if (b->oom) {
        oo_buf_free(b);
        return luaL_error(L, "json_encode: out of memory");
    }
    if (ok) lua_pushlstring(L, b->data, b->len);
    if (b->cap > (1u << 18)) oo_buf_free(b); /* do not pin a huge buffer */
    if (ok) return 1;
    return oo_push_errorf(L, "validation", "%s", w.err ? w.err : "cannot write this value as JSON");
}

static int l_buf_gc(lua_State *L) {
    oo_buf_free((oo_buf *)lua_touserdata(L, 1));
    return 0;
}

void oo_jsonw_register(lua_State *L) {
    oo_buf *b = (oo_buf *)lua_newuserdata(L, sizeof(oo_buf));
    oo_buf_init(b);
    if (luaL_newmetatable(L, JSONW_MT)) {
        lua_pushcfunction(L, l_buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_pushcclosure(L, l_json_encode, 1);
    lua_setfield(L, -2, "json_encode");
}
