/* The schema walk: validates a payload table, normalises it and writes the
 * compact JSON body in one pass. Problems carry the field path
 * (order.items[2].qty) and are collected in document order: the spec's key
 * order within a fixed table, unknown keys after the known ones, free maps
 * in key order, items by index. The walk never calls back into Lua (raw
 * access only), so metatables and cycles cannot run code or loop: a table
 * where a scalar belongs is simply a problem. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "buf.h"
#include "clock.h"
#include "date.h"
#include "hmac.h"
#include "money.h"
#include "utf8.h"
#include "text.h"

/* Caps (documented in the README). */
#define MAX_PROBLEMS 100     /* problems reported per payload */
#define MAX_ITEMS 1000       /* items per order */
#define MAX_MAP 256          /* entries in info / attributes */
#define MAX_SEGMENTS 256     /* user.segments entries */
#define MAX_ID 256           /* bytes in refCode, customerId, user.id, a segment */
#define MAX_EMAIL 254        /* bytes in user.email (RFC 5321 path limit) */
#define MAX_KEY 256          /* bytes in a free-map key */
#define MAX_VALUE 4096       /* bytes in a free-map value */
#define MAX_QTY 2147483647LL /* a Java int: the server is Java */
#define MAX_BODY (1u << 20)  /* encoded payload size */
#define MAX_UNKNOWN 16       /* unknown keys listed per fixed table */

#define ENC_MT "optimizely.offline.encoder"

typedef struct map_entry {
    const char *k, *v;
    size_t klen, vlen;
    const char *bad;        /* NULL, or what is wrong (message prefix) */
    int k_in_num, v_in_num; /* k / v live in num (re-pointed after sorting moves entries) */
    char num[40];           /* number rendering, or the bad key's description */
} map_entry;

typedef struct enc {
    lua_State *L;
    oo_buf out;
    oo_buf path;
    int nproblems, truncated, nwarnings, too_big;
    int problems_idx, warnings_idx; /* stack slots */
    int minor;                      /* money decimals of the order's currency */
    map_entry map[MAX_MAP];
} enc;

typedef struct unknown_key {
    const char *k; /* string key, or NULL for a non-string key */
    size_t klen;
    char desc[48];
} unknown_key;

typedef struct unknown_list {
    int n, more;
    unknown_key keys[MAX_UNKNOWN];
} unknown_list;

/* ---------------------------------------------------------------- paths */

static size_t path_push(enc *e, const char *s, size_t n) {
    size_t mark = e->path.len;
    if (mark > 0 || s[0] != '.') oo_buf_add(&e->path, s, n);
    else oo_buf_add(&e->path, s + 1, n - 1); /* no leading dot at the root */
    return mark;
}
#define path_pushlit(e, lit) path_push((e), (lit), sizeof(lit) - 1)

static size_t path_push_index(enc *e, long long i) {
    size_t mark = e->path.len;
    oo_buf_addc(&e->path, '[');
    oo_buf_addint(&e->path, i);
    oo_buf_addc(&e->path, ']');
    return mark;
}

static void path_pop(enc *e, size_t mark) { e->path.len = mark; }

/* A key in a field path: `.key` when it reads safely in a message (valid
 * UTF-8, at most 64 bytes, no control character, quote, backslash or
 * bracket), else `["key"]` quoted by oo_buf_quote (control characters
 * escaped, length capped), so a key can never forge a line of a report or
 * reach the terminal as an escape sequence. */
static size_t path_push_key(enc *e, const char *k, size_t n) {
    size_t mark = e->path.len, i;
    int plain = n > 0 && n <= 64 && oo_utf8_check(k, n) == 0;
    for (i = 0; plain && i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\' || c == '[' || c == ']') plain = 0;
        /* C1 controls (U+0080..U+009F) are terminal controls too */
        if (c == 0xC2 && i + 1 < n && (unsigned char)k[i + 1] < 0xA0) plain = 0;
    }
    if (plain) {
        if (mark > 0) oo_buf_addc(&e->path, '.');
        oo_buf_add(&e->path, k, n);
    } else {
        oo_buf_addc(&e->path, '[');
        oo_buf_quote(&e->path, k, n, 48);
        oo_buf_addc(&e->path, ']');
    }
    return mark;
}

/* ------------------------------------------------------------- messages */

/* A short, printable rendering of a value for "got ..." (never raw bytes:
 * the input may be invalid UTF-8). */
static void quote_bytes(char *out, size_t cap, const char *s, size_t n) {
    size_t o = 0, i;
    int utf8 = oo_utf8_check(s, n) == 0; /* valid text is shown as text */
    out[o++] = '"';
    for (i = 0; i < n && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) out[o++] = (char)c;
        else if (c >= 0x80 && utf8) {
            size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            if (o + len + 8 >= cap) break; /* never cut a character in half */
            memcpy(out + o, s + i, len);
            o += len;
            i += len - 1;
        } else o += (size_t)snprintf(out + o, cap - o, "\\x%02X", c);
    }
    if (i < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = 0;
}

static void describe_number(lua_State *L, int idx, char *out, size_t cap) {
    long long iv;
    lua_Number n = lua_tonumber(L, idx);
    if (oo_tointeger(L, idx, &iv)) snprintf(out, cap, "%lld", iv);
    else if (n != n) snprintf(out, cap, "nan");
    else if (isinf(n)) snprintf(out, cap, n > 0 ? "inf" : "-inf");
    else snprintf(out, cap, "%.14g", (double)n);
}

static void describe(lua_State *L, int idx, char *out, size_t cap) {
    switch (lua_type(L, idx)) {
    case LUA_TNIL: snprintf(out, cap, "nil"); break;
    case LUA_TBOOLEAN: snprintf(out, cap, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER: describe_number(L, idx, out, cap); break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        quote_bytes(out, cap < 48 ? cap : 48, s, n);
        break;
    }
    case LUA_TTABLE: snprintf(out, cap, "a table"); break;
    case LUA_TFUNCTION: snprintf(out, cap, "a function"); break;
    case LUA_TLIGHTUSERDATA:
        snprintf(out, cap, lua_touserdata(L, idx) == NULL ? "null" : "a userdata");
        break;
    case LUA_TTHREAD: snprintf(out, cap, "a coroutine"); break;
    default: snprintf(out, cap, "a %s", lua_typename(L, lua_type(L, idx))); break;
    }
}

static void add_entry(enc *e, int list, int count, const char *msg) {
    lua_State *L = e->L;
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, e->path.data, e->path.len);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
    lua_rawseti(L, list, count);
}

static void problem(enc *e, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    if (e->nproblems >= MAX_PROBLEMS) {
        e->truncated = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (e->nproblems == 0) {
        lua_createtable(e->L, 4, 0);
        lua_replace(e->L, e->problems_idx);
    }
    add_entry(e, e->problems_idx, ++e->nproblems, msg);
}

/* "must be X, got <value>" for the value at idx */
static void problem_got(enc *e, int idx, const char *must) {
    char got[64];
    describe(e->L, idx, got, sizeof got);
    problem(e, "%s, got %s", must, got);
}

static void warning(enc *e, const char *msg) { add_entry(e, e->warnings_idx, ++e->nwarnings, msg); }

/* Tables are read raw (no __index, __pairs...), so a table with a metatable
 * could silently lose what its metamethods would supply: refuse it. */
static int plain_table(enc *e, int idx, const char *must) {
    lua_State *L = e->L;
    if (lua_type(L, idx) != LUA_TTABLE) {
        problem_got(e, idx, must);
        return 0;
    }
    if (lua_getmetatable(L, idx)) {
        lua_pop(L, 1);
        problem(e, "must be a plain table (it has a metatable, and metamethods are not followed)");
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------- fixed tables */

typedef struct schema {
    const char *const *names;
    int n;
} schema;

static const char *const top_names[] = {"lang", "user", "order"};
static const char *const user_names[] = {"id", "email", "segments", "info"};
static const char *const order_names[] = {"refCode",  "orderDate", "customerId",
                                          "currency", "shipping",  "subTotal",
                                          "total",    "items",     "attributes"};
static const char *const item_names[] = {"refCode", "qty", "price", "attributes"};

enum { T_LANG, T_USER, T_ORDER };
enum { U_ID, U_EMAIL, U_SEGMENTS, U_INFO };
enum { O_REF, O_DATE, O_CUSTOMER, O_CURRENCY, O_SHIPPING, O_SUBTOTAL, O_TOTAL, O_ITEMS, O_ATTRS };
enum { I_REF, I_QTY, I_PRICE, I_ATTRS };

static const schema top_schema = {top_names, 3};
static const schema user_schema = {user_names, 4};
static const schema order_schema = {order_names, 9};
static const schema item_schema = {item_names, 4};

static int slot_of(const schema *sc, const char *k, size_t n) {
    int i;
    for (i = 0; i < sc->n; i++) {
        const char *f = sc->names[i];
        if (f[0] == k[0] && strlen(f) == n && memcmp(f, k, n) == 0) return i;
    }
    return -1;
}

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static const char *suggest(const schema *sc, const char *k, size_t n) {
    return oo_suggest(k, n, sc->names, sc->n);
}

/* Moves the known fields of table t into slots base..base+n-1 (nil when
 * absent) and remembers the unknown keys for reporting after the known ones. */
static void collect_fixed(enc *e, int t, const schema *sc, int base, unknown_list *u) {
    lua_State *L = e->L;
    u->n = u->more = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t n;
            const char *k = lua_tolstring(L, -2, &n);
            int s = slot_of(sc, k, n);
            if (s >= 0) {
                lua_replace(L, base + s);
                continue;
            }
            if (u->n < MAX_UNKNOWN) {
                u->keys[u->n].k = k;
                u->keys[u->n].klen = n;
                u->n++;
            } else {
                u->more++;
            }
        } else if (u->n < MAX_UNKNOWN) {
            u->keys[u->n].k = NULL;
            describe(L, -2, u->keys[u->n].desc, sizeof u->keys[u->n].desc);
            u->n++;
        } else {
            u->more++;
        }
        lua_pop(L, 1);
    }
}

static int cmp_unknown(const void *pa, const void *pb) {
    const unknown_key *a = pa, *b = pb;
    const char *ka = a->k ? a->k : a->desc, *kb = b->k ? b->k : b->desc;
    size_t na = a->k ? a->klen : strlen(a->desc), nb = b->k ? b->klen : strlen(b->desc);
    int c = memcmp(ka, kb, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

static void report_unknown(enc *e, const schema *sc, unknown_list *u) {
    int i;
    if (u->n > 1) qsort(u->keys, (size_t)u->n, sizeof u->keys[0], cmp_unknown);
    for (i = 0; i < u->n; i++) {
        unknown_key *k = &u->keys[i];
        if (k->k) {
            size_t ok = oo_utf8_check(k->k, k->klen) == 0 && k->klen > 0 && k->klen <= 64;
            const char *hint = suggest(sc, k->k, k->klen);
            if (ok) {
                size_t mark = path_push_key(e, k->k, k->klen);
                if (hint) problem(e, "unknown field (did you mean %s?)", hint);
                else problem(e, "unknown field");
                path_pop(e, mark);
            } else {
                char d[64];
                quote_bytes(d, sizeof d, k->k, k->klen);
                problem(e, "unknown field %s", d);
            }
        } else {
            problem(e, "unknown key %s (fields are named by strings)", k->desc);
        }
    }
    if (u->more) problem(e, "%d more unknown keys", u->more);
}

/* ------------------------------------------------------------- scalars */

static int is_blank(const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* Checks a string value at idx: valid UTF-8, within max bytes, optionally
 * not empty/blank. Reports and returns NULL on failure. */
static const char *check_string(enc *e, int idx, size_t max, int nonblank, size_t *len) {
    size_t n, bad;
    const char *s = lua_tolstring(e->L, idx, &n);
    if (nonblank && n == 0) {
        problem(e, "must not be empty");
        return NULL;
    }
    if (n > max) {
        problem(e, "must be at most %zu bytes, got %zu", max, n);
        return NULL;
    }
    if ((bad = oo_utf8_check(s, n)) != 0) {
        problem(e, "must be valid UTF-8 (bad byte 0x%02X at offset %zu)", (unsigned char)s[bad - 1],
                bad - 1);
        return NULL;
    }
    if (nonblank && is_blank(s, n)) {
        problem(e, "must not be blank");
        return NULL;
    }
    *len = n;
    return s;
}

static void emit_key(enc *e, int *first, const char *lit, size_t n) {
    if (!*first) oo_buf_addc(&e->out, ',');
    *first = 0;
    oo_buf_add(&e->out, lit, n);
}
#define KEY(e, first, lit) emit_key((e), (first), "\"" lit "\":", sizeof(lit) + 2)

/* refCode / customerId: a non-empty string, or an integer written as a string. */
static void enc_ident(enc *e, int idx) {
    long long iv;
    size_t n;
    const char *s;
    switch (lua_type(e->L, idx)) {
    case LUA_TSTRING:
        if ((s = check_string(e, idx, MAX_ID, 1, &n)) != NULL) oo_json_string(&e->out, s, n);
        return;
    case LUA_TNUMBER:
        if (oo_tointeger(e->L, idx, &iv)) {
            oo_buf_addc(&e->out, '"');
            oo_buf_addint(&e->out, iv);
            oo_buf_addc(&e->out, '"');
            return;
        }
        /* fallthrough */
    default: problem_got(e, idx, "must be a non-empty string or an integer");
    }
}

static void enc_string_field(enc *e, int idx, size_t max) {
    size_t n;
    const char *s;
    if (lua_type(e->L, idx) != LUA_TSTRING) {
        problem_got(e, idx, "must be a non-empty string");
        return;
    }
    if ((s = check_string(e, idx, max, 1, &n)) != NULL) oo_json_string(&e->out, s, n);
}

/* Money: a finite number >= 0 or a plain decimal string, to minor units. */
static int enc_money(enc *e, int idx, long long *amount) {
    lua_State *L = e->L;
    oo_money_status st;
    int minor = e->minor;
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: {
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, idx))
            st = oo_money_from_integer((long long)lua_tointeger(L, idx), minor, amount);
        else
#endif
            st = oo_money_from_double((double)lua_tonumber(L, idx), minor, amount);
        break;
    }
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        st = oo_money_from_string(s, n, minor, amount);
        break;
    }
    default: problem_got(e, idx, "must be a number or a decimal string like \"12.50\""); return 0;
    }
    switch (st) {
    case OO_MONEY_OK: oo_money_emit(&e->out, *amount, minor); return 1;
    case OO_MONEY_NEGATIVE: problem_got(e, idx, "must not be negative"); break;
    case OO_MONEY_NOT_FINITE: problem_got(e, idx, "must be a finite number"); break;
    case OO_MONEY_TOO_LARGE: problem_got(e, idx, "must be at most 1000000000000"); break;
    default: /* OO_MONEY_SYNTAX (the till forms are never read here) */
        problem_got(e, idx,
                    "must be a plain decimal like \"12.50\" (digits and one '.', no sign, spaces, "
                    "commas or symbols)");
        break;
    }
    return 0;
}

static void enc_lang(enc *e, int idx) {
    char tmp[40];
    size_t n, i, seg = 0;
    const char *s;
    int ok = 1;
    if (lua_type(e->L, idx) != LUA_TSTRING) {
        problem_got(e, idx, "must be a string like \"en-gb\"");
        return;
    }
    s = lua_tolstring(e->L, idx, &n);
    if (n < 2 || n > 35) ok = 0;
    for (i = 0; ok && i < n; i++) tmp[i] = (char)lower((unsigned char)s[i]);
    /* ^[a-z][a-z][a-z]?(-[a-z0-9]{2,8})*$ */
    for (i = 0; ok && i < n && tmp[i] != '-'; i++) ok = tmp[i] >= 'a' && tmp[i] <= 'z';
    if (ok && (i < 2 || i > 3)) ok = 0;
    while (ok && i < n) {
        size_t j = ++i; /* skip '-' */
        while (i < n && tmp[i] != '-') {
            if (!((tmp[i] >= 'a' && tmp[i] <= 'z') || (tmp[i] >= '0' && tmp[i] <= '9'))) ok = 0;
            i++;
        }
        seg = i - j;
        if (seg < 2 || seg > 8) ok = 0;
    }
    if (!ok) {
        problem_got(e, idx, "must be a language code like \"en-gb\"");
        return;
    }
    oo_json_string(&e->out, tmp, n);
}

/* An order dated later than this after now is refused: no till sells in
 * the future, so its clock or the export's date format (a day and a month
 * swapped) is wrong, and the endpoint would store the nonsense. A day
 * leaves room for clocks and time zones that are off. */
#define FUTURE_SLACK 86400.0

/* The instant of an orderDate value as the encoder reads it: a number of
 * epoch seconds (in range), or one of the date strings of date.h. */
static oo_date_status date_value(lua_State *L, int idx, long long *t, const char **why) {
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(L, idx);
        if (v != v || v < (lua_Number)OO_DATE_MIN || v > (lua_Number)OO_DATE_MAX)
            return OO_DATE_RANGE;
        *t = (long long)floor(v);
        return OO_DATE_OK;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        return oo_date_parse(s, n, t, why);
    }
    return OO_DATE_SYNTAX;
}

static void enc_date(enc *e, int idx) {
    lua_State *L = e->L;
    long long t;
    char out[24];
    const char *why = NULL;
    oo_date_status st = date_value(L, idx, &t, &why);
    if (lua_type(L, idx) == LUA_TNUMBER) {
        if (st != OO_DATE_OK) {
            problem_got(e, idx, "must be epoch seconds between 0 and 253402300799 (1970..9999)");
            return;
        }
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        switch (st) {
        case OO_DATE_OK: break;
        case OO_DATE_IMPOSSIBLE: {
            char got[64];
            describe(L, idx, got, sizeof got);
            problem(e, "impossible date or time (%s), got %s", why, got);
            return;
        }
        case OO_DATE_RANGE: problem_got(e, idx, "must be between 1970 and 9999"); return;
        default:
            problem_got(e, idx,
                        "must be a date like \"2016-05-16T14:25:00 GMT\", ISO 8601 with Z or an "
                        "offset, \"YYYY-MM-DD HH:MM:SS\" (UTC) or epoch seconds");
            return;
        }
    } else {
        problem_got(e, idx, "must be a date string or epoch seconds");
        return;
    }
    if ((double)t > oo_wall_now() + FUTURE_SLACK) {
        problem_got(e, idx,
                    "must not be more than a day in the future (is the till's clock right, or "
                    "are the day and the month swapped?)");
        return;
    }
    oo_date_format(t, out);
    oo_buf_addc(&e->out, '"');
    oo_buf_add(&e->out, out, 23);
    oo_buf_addc(&e->out, '"');
}

/* Returns the minor-unit digits of a valid currency, or -1 (reported). */
static int enc_currency(enc *e, int idx) {
    char code[3];
    size_t n;
    const char *s;
    int i, minor;
    if (lua_type(e->L, idx) != LUA_TSTRING) {
        problem_got(e, idx, "must be a 3-letter ISO 4217 code like \"GBP\"");
        return -1;
    }
    s = lua_tolstring(e->L, idx, &n);
    if (n != 3) {
        problem_got(e, idx, "must be a 3-letter ISO 4217 code like \"GBP\"");
        return -1;
    }
    for (i = 0; i < 3; i++) {
        int c = (unsigned char)s[i];
        if (c >= 'a' && c <= 'z') c -= 32;
        if (c < 'A' || c > 'Z') {
            problem_got(e, idx, "must be a 3-letter ISO 4217 code like \"GBP\"");
            return -1;
        }
        code[i] = (char)c;
    }
    if ((minor = oo_currency_minor(code)) < 0) {
        problem_got(e, idx, "is not an ISO 4217 currency code");
        return -1;
    }
    oo_buf_addc(&e->out, '"');
    oo_buf_add(&e->out, code, 3);
    oo_buf_addc(&e->out, '"');
    return minor;
}

/* qty: a whole number >= 1 (number or digits string), emitted as an integer. */
static int enc_qty(enc *e, int idx, long long *qty) {
    lua_State *L = e->L;
    long long v = 0;
    int ok = 0;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        ok = oo_tointeger(L, idx, &v);
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n, i;
        const char *s = lua_tolstring(L, idx, &n);
        ok = n > 0 && n <= 12;
        for (i = 0; ok && i < n; i++) {
            if (s[i] < '0' || s[i] > '9') ok = 0;
            else v = v * 10 + (s[i] - '0');
        }
    }
    if (!ok || v < 1) {
        problem_got(e, idx, "must be a positive integer");
        return 0;
    }
    if (v > MAX_QTY) {
        problem_got(e, idx, "must be at most 2147483647");
        return 0;
    }
    oo_buf_addint(&e->out, v);
    *qty = v;
    return 1;
}

/* ----------------------------------------------------------- free maps */

static int cmp_entry(const void *pa, const void *pb) {
    const map_entry *a = pa, *b = pb;
    const char *ka = a->k_in_num ? a->num : a->k, *kb = b->k_in_num ? b->num : b->k;
    int c = memcmp(ka, kb, a->klen < b->klen ? a->klen : b->klen);
    return c ? c : (a->klen > b->klen) - (a->klen < b->klen);
}

static const char bad_value_type[] = "value must be a string, number or boolean";

/* info / attributes: string keys to string, number or boolean values, all
 * emitted as strings, sorted by key so output is deterministic. */
static void enc_map(enc *e, int t) {
    lua_State *L = e->L;
    int n = 0, extra = 0, i, first = 1;
    if (!plain_table(e, t, "must be a table of string keys to strings")) return;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        map_entry *m;
        if (n == MAX_MAP) {
            extra++;
            lua_pop(L, 1);
            continue;
        }
        m = &e->map[n++];
        m->bad = NULL;
        m->k_in_num = m->v_in_num = 0;
        if (lua_type(L, -2) == LUA_TSTRING) {
            m->k = lua_tolstring(L, -2, &m->klen);
            if (m->klen == 0) m->bad = "keys must be non-empty strings";
            else if (m->klen > MAX_KEY) m->bad = "key longer than 256 bytes";
            else if (oo_utf8_check(m->k, m->klen)) m->bad = "key must be valid UTF-8";
        } else {
            m->bad = "keys must be non-empty strings";
        }
        if (m->bad) {
            describe(L, -2, m->num, sizeof m->num);
            m->k = m->num; /* sort bad keys by their description */
            m->k_in_num = 1;
            m->klen = strlen(m->num);
            lua_pop(L, 1);
            continue;
        }
        switch (lua_type(L, -1)) {
        case LUA_TSTRING:
            m->v = lua_tolstring(L, -1, &m->vlen);
            if (m->vlen > MAX_VALUE) m->bad = "value longer than 4096 bytes";
            else if (oo_utf8_check(m->v, m->vlen)) m->bad = "value must be valid UTF-8";
            break;
        case LUA_TNUMBER: {
            lua_Number v = lua_tonumber(L, -1);
            long long iv;
            if (v != v || isinf(v)) {
                m->bad = "value must be a finite number";
                break;
            }
            if (!oo_tointeger(L, -1, &iv) && (v >= 1e15 || v <= -1e15)) {
                m->bad = "value must be a number below 1e15 (write big identifiers as strings)";
                break;
            }
            describe_number(L, -1, m->num, sizeof m->num);
            m->v = m->num;
            m->v_in_num = 1;
            m->vlen = strlen(m->num);
            break;
        }
        case LUA_TBOOLEAN:
            m->v = lua_toboolean(L, -1) ? "true" : "false";
            m->vlen = strlen(m->v);
            break;
        default: m->bad = bad_value_type; describe(L, -1, m->num, sizeof m->num);
        }
        lua_pop(L, 1);
    }
    if (n > 1) qsort(e->map, (size_t)n, sizeof e->map[0], cmp_entry);
    oo_buf_addc(&e->out, '{');
    for (i = 0; i < n; i++) {
        map_entry *m = &e->map[i];
        if (m->k_in_num) m->k = m->num;
        if (m->v_in_num) m->v = m->num;
        if (m->bad) {
            if (m->k_in_num) {
                problem(e, "%s, got key %s", m->bad, m->num);
            } else {
                size_t mark = path_push_key(e, m->k, m->klen);
                if (m->bad == bad_value_type) problem(e, "%s, got %s", m->bad, m->num);
                else problem(e, "%s", m->bad);
                path_pop(e, mark);
            }
            continue;
        }
        if (e->out.len > MAX_BODY) {
            e->too_big = 1;
            break;
        }
        if (!first) oo_buf_addc(&e->out, ',');
        first = 0;
        oo_json_string(&e->out, m->k, m->klen);
        oo_buf_addc(&e->out, ':');
        oo_json_string(&e->out, m->v, m->vlen);
    }
    oo_buf_addc(&e->out, '}');
    if (extra) problem(e, "too many entries (%d, max %d)", n + extra, MAX_MAP);
}

/* ----------------------------------------------------------- sequences */

/* Counts the elements of a proper sequence 1..n; reports and returns -1 for
 * holes or non-integer keys. */
static long long seq_len(enc *e, int t) {
    lua_State *L = e->L;
    long long count = 0, max = 0, k;
    char bad[64];
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER || !oo_tointeger(L, -1, &k) || k < 1) {
            describe(L, -1, bad, sizeof bad);
            lua_pop(L, 1);
            problem(e, "must be an array (a sequence 1..n), found key %s", bad);
            return -1;
        }
        count++;
        if (k > max) max = k;
    }
    if (max != count) {
        problem(e, "must be an array without holes (%lld elements, highest index %lld)", count,
                max);
        return -1;
    }
    return count;
}

/* ------------------------------------------------------------- objects */

static void enc_user(enc *e, int t) {
    lua_State *L = e->L;
    unknown_list u;
    int base = lua_gettop(L) + 1, first = 1;
    size_t mark;
    if (!plain_table(e, t, "must be a table")) return;
    luaL_checkstack(L, 8, NULL);
    lua_settop(L, base + 3);
    collect_fixed(e, t, &user_schema, base, &u);
    oo_buf_addc(&e->out, '{');
    if (!lua_isnil(L, base + U_ID)) {
        KEY(e, &first, "id");
        mark = path_pushlit(e, ".id");
        enc_string_field(e, base + U_ID, MAX_ID);
        path_pop(e, mark);
    }
    if (!lua_isnil(L, base + U_EMAIL)) {
        size_t n;
        const char *s;
        char why[96];
        KEY(e, &first, "email");
        mark = path_pushlit(e, ".email");
        if (lua_type(L, base + U_EMAIL) != LUA_TSTRING) {
            problem_got(e, base + U_EMAIL, "must be an e-mail address");
        } else if ((s = check_string(e, base + U_EMAIL, MAX_EMAIL, 1, &n)) != NULL) {
            /* the one rule (hmac.c); the address itself is not echoed */
            if (oo_email_check(s, n, why, sizeof why) != 0)
                problem(e, "must be an e-mail address: %s", why);
            else {
                oo_json_string(&e->out, s, n);
                warning(e, "deprecated: send a pseudonymised user.id instead of user.email");
            }
        }
        path_pop(e, mark);
    }
    if (!lua_isnil(L, base + U_SEGMENTS)) {
        int st = base + U_SEGMENTS;
        KEY(e, &first, "segments");
        mark = path_pushlit(e, ".segments");
        if (plain_table(e, st, "must be an array of strings")) {
            long long n = seq_len(e, st), i;
            if (n == 0) problem(e, "must not be empty");
            else if (n > MAX_SEGMENTS)
                problem(e, "too many segments (%lld, max %d)", n, MAX_SEGMENTS);
            else if (n > 0) {
                oo_buf_addc(&e->out, '[');
                for (i = 1; i <= n; i++) {
                    size_t m2 = path_push_index(e, i);
                    if (i > 1) oo_buf_addc(&e->out, ',');
                    lua_rawgeti(L, st, (int)i);
                    enc_string_field(e, lua_gettop(L), MAX_ID);
                    lua_pop(L, 1);
                    path_pop(e, m2);
                }
                oo_buf_addc(&e->out, ']');
            }
        }
        path_pop(e, mark);
    }
    if (lua_isnil(L, base + U_ID) && lua_isnil(L, base + U_EMAIL) &&
        lua_isnil(L, base + U_SEGMENTS))
        problem(e, "needs an id, email or segments (an empty user identifies nobody)");
    if (!lua_isnil(L, base + U_INFO)) {
        KEY(e, &first, "info");
        mark = path_pushlit(e, ".info");
        enc_map(e, base + U_INFO);
        path_pop(e, mark);
    }
    report_unknown(e, &user_schema, &u);
    oo_buf_addc(&e->out, '}');
    lua_settop(L, base - 1);
}

/* Returns the item's line amount (qty * price) in minor units, or -1. */
static long long enc_item(enc *e, int t) {
    lua_State *L = e->L;
    unknown_list u;
    int base = lua_gettop(L) + 1, first = 1, ok = 1;
    long long qty = 0, price = 0, line = -1;
    size_t mark;
    if (!plain_table(e, t, "must be a table")) return -1;
    luaL_checkstack(L, 8, NULL);
    lua_settop(L, base + 3);
    collect_fixed(e, t, &item_schema, base, &u);
    oo_buf_addc(&e->out, '{');
    KEY(e, &first, "refCode");
    mark = path_pushlit(e, ".refCode");
    if (lua_isnil(L, base + I_REF)) problem(e, "is required");
    else enc_ident(e, base + I_REF);
    path_pop(e, mark);
    KEY(e, &first, "qty");
    mark = path_pushlit(e, ".qty");
    if (lua_isnil(L, base + I_QTY)) {
        problem(e, "is required");
        ok = 0;
    } else ok &= enc_qty(e, base + I_QTY, &qty);
    path_pop(e, mark);
    KEY(e, &first, "price");
    mark = path_pushlit(e, ".price");
    if (lua_isnil(L, base + I_PRICE)) {
        problem(e, "is required");
        ok = 0;
    } else ok &= enc_money(e, base + I_PRICE, &price);
    path_pop(e, mark);
    if (!lua_isnil(L, base + I_ATTRS)) {
        KEY(e, &first, "attributes");
        mark = path_pushlit(e, ".attributes");
        enc_map(e, base + I_ATTRS);
        path_pop(e, mark);
    }
    report_unknown(e, &item_schema, &u);
    oo_buf_addc(&e->out, '}');
    lua_settop(L, base - 1);
    if (ok && __builtin_mul_overflow(qty, price, &line)) line = -1;
    return ok ? line : -1;
}

static void fmt_amount(char *out, size_t cap, long long v, int minor) {
    oo_buf b;
    oo_buf_init(&b);
    oo_money_emit(&b, v, minor);
    snprintf(out, cap, "%.*s", (int)b.len, b.data);
    oo_buf_free(&b);
}

static void enc_order(enc *e, int t) {
    lua_State *L = e->L;
    unknown_list u;
    int base = lua_gettop(L) + 1, first = 1, minor, items_ok = 0;
    long long shipping = 0, subtotal = 0, total = 0, sum = 0;
    int have_shipping = 0, have_subtotal = 0, have_total = 0;
    size_t mark;
    if (!plain_table(e, t, "must be a table")) return;
    luaL_checkstack(L, 16, NULL);
    lua_settop(L, base + 8);
    collect_fixed(e, t, &order_schema, base, &u);
    oo_buf_addc(&e->out, '{');

#define REQUIRED(slot, lit, call)                                                                  \
    KEY(e, &first, lit);                                                                           \
    mark = path_pushlit(e, "." lit);                                                               \
    if (lua_isnil(L, base + (slot))) problem(e, "is required");                                    \
    else call;                                                                                     \
    path_pop(e, mark)

    REQUIRED(O_REF, "refCode", enc_ident(e, base + O_REF));
    REQUIRED(O_DATE, "orderDate", enc_date(e, base + O_DATE));
    if (!lua_isnil(L, base + O_CUSTOMER)) {
        KEY(e, &first, "customerId");
        mark = path_pushlit(e, ".customerId");
        enc_ident(e, base + O_CUSTOMER);
        path_pop(e, mark);
    }
    minor = -1;
    REQUIRED(O_CURRENCY, "currency", minor = enc_currency(e, base + O_CURRENCY));
    /* Without a valid currency, still check the amounts' syntax (at 2 decimals). */
    e->minor = minor < 0 ? 2 : minor;
    if (!lua_isnil(L, base + O_SHIPPING)) {
        KEY(e, &first, "shipping");
        mark = path_pushlit(e, ".shipping");
        have_shipping = enc_money(e, base + O_SHIPPING, &shipping);
        path_pop(e, mark);
    }
    if (!lua_isnil(L, base + O_SUBTOTAL)) {
        KEY(e, &first, "subTotal");
        mark = path_pushlit(e, ".subTotal");
        have_subtotal = enc_money(e, base + O_SUBTOTAL, &subtotal);
        path_pop(e, mark);
    }
    REQUIRED(O_TOTAL, "total", have_total = enc_money(e, base + O_TOTAL, &total));

    KEY(e, &first, "items");
    mark = path_pushlit(e, ".items");
    if (lua_isnil(L, base + O_ITEMS)) {
        problem(e, "is required");
    } else if (plain_table(e, base + O_ITEMS, "must be an array of items")) {
        int it = base + O_ITEMS;
        long long n = seq_len(e, it), i;
        if (n == 0) problem(e, "must not be empty (an order needs at least one item)");
        else if (n > MAX_ITEMS) problem(e, "too many items (%lld, max %d)", n, MAX_ITEMS);
        else if (n > 0) {
            items_ok = 1;
            oo_buf_addc(&e->out, '[');
            for (i = 1; i <= n; i++) {
                size_t m2 = path_push_index(e, i);
                long long line;
                if (i > 1) oo_buf_addc(&e->out, ',');
                lua_rawgeti(L, it, (int)i);
                line = enc_item(e, lua_gettop(L));
                lua_pop(L, 1);
                path_pop(e, m2);
                if (line < 0 || __builtin_add_overflow(sum, line, &sum)) items_ok = 0;
                if (e->out.len > MAX_BODY) {
                    e->too_big = 1;
                    break;
                }
            }
            oo_buf_addc(&e->out, ']');
        }
    }
    path_pop(e, mark);
    if (!lua_isnil(L, base + O_ATTRS)) {
        KEY(e, &first, "attributes");
        mark = path_pushlit(e, ".attributes");
        enc_map(e, base + O_ATTRS);
        path_pop(e, mark);
    }
    report_unknown(e, &order_schema, &u);
    oo_buf_addc(&e->out, '}');
#undef REQUIRED

    /* Totals that disagree are worth a warning, never an error: the docs
     * state no rule, and discounts or tax may explain a difference. */
    if (e->nproblems == 0 && minor >= 0 && items_ok && have_total) {
        char a[32], b[32];
        long long expect;
        if (have_subtotal && subtotal != sum) {
            fmt_amount(a, sizeof a, subtotal, minor);
            fmt_amount(b, sizeof b, sum, minor);
            mark = path_pushlit(e, ".subTotal");
            {
                char msg[128];
                snprintf(msg, sizeof msg,
                         "subTotal %s differs from the items' sum of qty x price %s", a, b);
                warning(e, msg);
            }
            path_pop(e, mark);
        }
        expect = (have_subtotal ? subtotal : sum);
        if (!__builtin_add_overflow(expect, have_shipping ? shipping : 0, &expect) &&
            expect != total) {
            char msg[160];
            fmt_amount(a, sizeof a, total, minor);
            fmt_amount(b, sizeof b, expect, minor);
            mark = path_pushlit(e, ".total");
            snprintf(msg, sizeof msg, "total %s differs from %s + shipping = %s", a,
                     have_subtotal ? "subTotal" : "the items' sum", b);
            warning(e, msg);
            path_pop(e, mark);
        }
    }
    lua_settop(L, base - 1);
}

static void enc_payload(enc *e, int t) {
    lua_State *L = e->L;
    unknown_list u;
    int base = lua_gettop(L) + 1, first = 1;
    size_t mark;
    if (!plain_table(e, t, "payload must be a table {lang?, user?, order}")) return;
    luaL_checkstack(L, 8, NULL);
    lua_settop(L, base + 2);
    collect_fixed(e, t, &top_schema, base, &u);
    oo_buf_addc(&e->out, '{');
    if (!lua_isnil(L, base + T_LANG)) {
        KEY(e, &first, "lang");
        mark = path_pushlit(e, "lang");
        enc_lang(e, base + T_LANG);
        path_pop(e, mark);
    }
    mark = path_pushlit(e, "user");
    if (!lua_isnil(L, base + T_USER)) {
        KEY(e, &first, "user");
        enc_user(e, base + T_USER);
    } else {
        warning(e, "no user: the order will not be attached to any person");
    }
    path_pop(e, mark);
    KEY(e, &first, "order");
    mark = path_pushlit(e, "order");
    if (lua_isnil(L, base + T_ORDER)) problem(e, "is required");
    else enc_order(e, base + T_ORDER);
    path_pop(e, mark);
    report_unknown(e, &top_schema, &u);
    oo_buf_addc(&e->out, '}');
    if (e->too_big || e->out.len > MAX_BODY)
        problem(e, "encoded order is larger than %u bytes", MAX_BODY);
    lua_settop(L, base - 1);
}

/* ------------------------------------------------------------ Lua API */

/* encode(payload) -> json, warnings | nil, err
 * validate(payload) -> true, warnings | nil, err
 * err: {kind = "validation", message, problems, truncated, retryable =
 * false} (core.h: oo_push_error); optimizely.offline words the message of
 * the problem list (errors.validation) and gives it the errors' metatable. */
static int run(lua_State *L, int want_json) {
    enc *e = (enc *)lua_touserdata(L, lua_upvalueindex(1));
    int oom;
    lua_settop(L, 1);
    lua_createtable(L, 0, 0); /* 2: warnings */
    lua_pushnil(L);           /* 3: problems (created on the first one) */
    e->L = L;
    e->out.len = 0;
    e->out.oom = 0;
    e->path.len = 0;
    e->path.oom = 0;
    e->nproblems = e->truncated = e->nwarnings = e->too_big = 0;
    e->warnings_idx = 2;
    e->problems_idx = 3;
    e->minor = 2;
    enc_payload(e, 1);
    oom = e->out.oom || e->path.oom;
    if (e->out.cap > (1u << 18)) oo_buf_free(&e->out); /* do not pin a huge buffer */
    if (oom) return luaL_error(L, "optimizely.offline: out of memory while encoding");
    if (e->nproblems > 0) {
        oo_error err = {"validation", "invalid order", 0, NULL, 0, 0};
        oo_push_error(L, &err);
        lua_pushvalue(L, 3);
        lua_setfield(L, -2, "problems");
        if (e->truncated) oo_set_bool(L, "truncated", 1);
        return 2;
    }
    if (want_json) lua_pushlstring(L, e->out.data, e->out.len);
    else lua_pushboolean(L, 1);
    lua_pushvalue(L, 2);
    return 2;
}

/* Reads core.money's options: {decimal_comma = bool, currency_symbols = bool}. */
static unsigned money_flags(lua_State *L, int idx) {
    unsigned flags = 0;
    if (lua_isnoneornil(L, idx)) return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "decimal_comma");
    if (lua_toboolean(L, -1)) flags |= OO_MONEY_DECIMAL_COMMA;
    lua_getfield(L, idx, "currency_symbols");
    if (lua_toboolean(L, -1)) flags |= OO_MONEY_SYMBOLS;
    lua_pop(L, 2);
    return flags;
}

/* nil, {kind = "validation", message, code, retryable = false} for a money
 * status (code: the status's name; core.h: oo_push_error). */
static int push_money_error(lua_State *L, oo_money_status st, unsigned flags, const char *found) {
    oo_error err = {"validation", NULL, 0, NULL, 0, 0};
    switch (st) {
    case OO_MONEY_NEGATIVE:
        lua_pushliteral(L, "must not be negative");
        lua_pushliteral(L, "negative");
        break;
    case OO_MONEY_TOO_LARGE:
        lua_pushliteral(L, "must be at most 1000000000000");
        lua_pushliteral(L, "too_large");
        break;
    case OO_MONEY_NOT_FINITE:
        lua_pushliteral(L, "must be a finite number");
        lua_pushliteral(L, "not_finite");
        break;
    case OO_MONEY_OTHER_CURRENCY:
        lua_pushfstring(L, "has the currency %s, which is not the order's currency",
                        found ? found : "?");
        lua_pushliteral(L, "other_currency");
        break;
    case OO_MONEY_GROUPING:
        lua_pushstring(
            L, (flags & OO_MONEY_DECIMAL_COMMA)
                   ? "must group thousands in threes with '.', blanks or ' and end with a decimal "
                     "comma, like \"1.234,56\""
                   : "must group thousands in threes with ',', blanks or ' and end with a decimal "
                     "point, like \"1,234.56\"");
        lua_pushliteral(L, "grouping");
        break;
    default:
        if (flags)
            lua_pushstring(L, (flags & OO_MONEY_DECIMAL_COMMA)
                                  ? "must be an amount like \"12,50\" or \"1.234,56\""
                                  : "must be an amount like \"12.50\" or \"1,234.56\"");
        else lua_pushliteral(L, "must be a number or a plain decimal string like \"12.50\"");
        lua_pushliteral(L, "syntax");
    }
    /* the message (at -2) and the code (at -1) stay on the stack meanwhile */
    err.message = lua_tostring(L, -2);
    err.code = lua_tostring(L, -1);
    oo_push_error(L, &err);
    lua_remove(L, -4); /* the message, copied into the error */
    lua_remove(L, -3); /* the code, likewise */
    return 2;
}

/* money(value, currency [, opts]) -> minor_units, decimals, normalised_string
 * | nil, err {kind = "validation", message, code}. The same rules as the encoder, for script helpers that
 * need exact arithmetic (optimizely.offline.order); with opts, a string may be
 * written as tills write it (oo_money_from_till: decimal_comma,
 * currency_symbols). */
static int l_money(lua_State *L) {
    size_t n;
    const char *code = luaL_checklstring(L, 2, &n);
    char up[3], found[16];
    int i, minor;
    unsigned flags = money_flags(L, 3);
    long long amount = 0;
    oo_money_status st = OO_MONEY_SYNTAX;
    oo_buf b;
    found[0] = '\0';
    for (i = 0; i < 3 && n == 3; i++)
        up[i] = (char)(code[i] >= 'a' && code[i] <= 'z' ? code[i] - 32 : code[i]);
    if (n != 3 || (minor = oo_currency_minor(up)) < 0) {
        oo_error err = {"validation", "currency is not an ISO 4217 code", 0, "currency", 0, 0};
        return oo_push_error(L, &err);
    }
    if (lua_type(L, 1) == LUA_TNUMBER) {
#if LUA_VERSION_NUM >= 503
        if (lua_isinteger(L, 1))
            st = oo_money_from_integer((long long)lua_tointeger(L, 1), minor, &amount);
        else
#endif
            st = oo_money_from_double((double)lua_tonumber(L, 1), minor, &amount);
    } else if (lua_type(L, 1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, 1, &n);
        st = flags ? oo_money_from_till(s, n, minor, up, flags, &amount, found)
                   : oo_money_from_string(s, n, minor, &amount);
    }
    if (st != OO_MONEY_OK) return push_money_error(L, st, flags, found);
    lua_pushnumber(L, (lua_Number)amount);
#if LUA_VERSION_NUM >= 503
    lua_pushinteger(L, (lua_Integer)amount);
    lua_replace(L, -2);
#endif
    lua_pushinteger(L, minor);
    oo_buf_init(&b);
    oo_money_emit(&b, amount, minor);
    lua_pushlstring(L, b.data, b.len);
    oo_buf_free(&b);
    return 3;
}

/* format_money(minor_units, decimals) -> "90.00" */
static int l_format_money(lua_State *L) {
    long long v;
    int minor = (int)luaL_checkinteger(L, 2);
    oo_buf b;
    if (!oo_tointeger(L, 1, &v) || v < 0)
        return luaL_argerror(L, 1, "a non-negative integer expected");
    if (minor < 0 || minor > 4) return luaL_argerror(L, 2, "0..4 expected");
    oo_buf_init(&b);
    oo_money_emit(&b, v, minor);
    lua_pushlstring(L, b.data, b.len);
    oo_buf_free(&b);
    return 1;
}

/*** core.order_time(value) → epoch seconds of an order.orderDate value
 * as the encoder reads it (a date string or epoch seconds), or nil when it
 * is not one. For checks on an order's age (the command line's
 * --max-order-age warning); whether the date is allowed is the encoder's. */
static int l_order_time(lua_State *L) {
    long long t;
    const char *why = NULL;
    if (date_value(L, 1, &t, &why) != OO_DATE_OK) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushnumber(L, (lua_Number)t);
    return 1;
}

static int l_encode(lua_State *L) { return run(L, 1); }
static int l_validate(lua_State *L) { return run(L, 0); }

static int l_enc_gc(lua_State *L) {
    enc *e = (enc *)lua_touserdata(L, 1);
    oo_buf_free(&e->out);
    oo_buf_free(&e->path);
    return 0;
}

/*** core.ref_string(payload) -> the order's refCode as the encoder writes
 * it (a string as is, an integer in decimal), or nil when it has none of
 * those. The one conversion every queue, report and message uses. */
static int l_ref_string(lua_State *L) {
    long long iv;
    char buf[32];
    lua_settop(L, 1);
    if (lua_type(L, 1) != LUA_TTABLE) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushliteral(L, "order");
    lua_rawget(L, 1);
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushliteral(L, "refCode");
    lua_rawget(L, -2);
    switch (lua_type(L, -1)) {
    case LUA_TSTRING: return 1;
    case LUA_TNUMBER:
        if (oo_tointeger(L, -1, &iv)) {
            snprintf(buf, sizeof buf, "%lld", iv);
            lua_pushstring(L, buf);
            return 1;
        }
        /* fallthrough */
    default: lua_pushnil(L); return 1;
    }
}

void oo_encode_register(lua_State *L) {
    static const luaL_Reg fns[] = {{"encode", l_encode}, {"validate", l_validate}, {NULL, NULL}};
    enc *e = (enc *)lua_newuserdata(L, sizeof(enc));
    memset(e, 0, sizeof *e);
    oo_buf_init(&e->out);
    oo_buf_init(&e->path);
    if (luaL_newmetatable(L, ENC_MT)) {
        lua_pushcfunction(L, l_enc_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    /* one encoder state per loaded module, shared as an upvalue */
    oo_setfuncs(L, fns, 1);
    lua_pushcfunction(L, l_money);
    lua_setfield(L, -2, "money");
    lua_pushcfunction(L, l_ref_string);
    lua_setfield(L, -2, "ref_string");
    lua_pushcfunction(L, l_format_money);
    lua_setfield(L, -2, "format_money");
    lua_pushcfunction(L, l_order_time);
    lua_setfield(L, -2, "order_time");
    lua_createtable(L, 0, 12);
#define CAP(name)                                                                                  \
    lua_pushinteger(L, name);                                                                      \
    lua_setfield(L, -2, #name)
    CAP(MAX_PROBLEMS);
    CAP(MAX_ITEMS);
    CAP(MAX_MAP);
    CAP(MAX_SEGMENTS);
    CAP(MAX_ID);
    CAP(MAX_EMAIL);
    CAP(MAX_KEY);
    CAP(MAX_VALUE);
    CAP(MAX_QTY);
    CAP(MAX_BODY);
#undef CAP
    lua_setfield(L, -2, "limits");
}
