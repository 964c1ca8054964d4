/* Strict JSON decoder for the NDJSON reader (faster than cjson.decode on
 * order lines; see bench/json.lua).
 *
 * Why it is fast:
 *  - the input is a Lua string, so s[len] == '\0' acts as a sentinel: the hot
 *    scanning loops need no bounds check, '\0' simply stops them;
 *  - strings without escapes are pushed straight from the input;
 *  - members of an object / elements of an array are first left on the Lua
 *    stack (up to a batch), so the table is created at its final size with
 *    lua_createtable instead of being rehashed as it grows;
 *  - numbers: int64 integers and short decimals (Clinger's exact fast path)
 *    are converted inline; strtod only for the rest.
 * Bad input never raises: every failure unwinds to oo_json_decode, which
 * drops what was pushed and returns nil + message. The walks without a Lua
 * state (the envelope, picking values) are json_walk.c. */
#include "json.h"
#include "json_scan.h"

#include <locale.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Members kept on the stack before the table is created. */
#define OBJ_BATCH 32
#define ARR_BATCH 64
/* A string this short (escaped form) is unescaped in a C stack buffer. */
#define STR_LOCAL 256

typedef struct {
    lua_State *L;
    const unsigned char *start, *end; /* *end == '\0' */
    const unsigned char *p;           /* current position */
    int depth, max_depth;
    long values, max_values; /* values so far; the cap (0: none) */
    const char *what;        /* error: what was expected / wrong */
    const unsigned char *at; /* error: where */
    int found;               /* error: show the byte found at `at` */
} J;

static const double pow10_exact[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

static int fail(J *j, const char *what, const unsigned char *at, int found) {
    j->what = what;
    j->at = at;
    j->found = found;
    return 0;
}

/* Slow path of a string with escapes: s is the first content byte, p the
 * first backslash. Unescaped text is never longer than its escaped form. */
static int parse_string_escaped(J *j, const unsigned char *s, const unsigned char *p) {
    lua_State *L = j->L;
    const unsigned char *q = p, *end = j->end;
    char local[STR_LOCAL];
    char *buf, *o;
    size_t cap;
    int boxed = 0;

    /* find the closing quote to size the buffer */
    while (q < end && *q != '"') q += (*q == '\\') ? 2 : 1;
    if (q >= end) return fail(j, "Unterminated string", s - 1, 0);
    cap = (size_t)(q - s);
    if (cap <= STR_LOCAL) {
        buf = local;
    } else {
        buf = (char *)lua_newuserdata(L, cap);
        boxed = 1;
    }
    memcpy(buf, s, (size_t)(p - s));
    o = buf + (p - s);
    for (;;) {
        const unsigned char *r = p;
        unsigned c;
        while (!str_class[*p]) p++;
        memcpy(o, r, (size_t)(p - r));
        o += p - r;
        c = *p;
        if (c == '"') break;
        if (c >= 0x80) {
            int n = utf8_seq(p);
            if (!n) return fail(j, "Invalid UTF-8 in string", p, 0);
            memcpy(o, p, (size_t)n);
            o += n;
            p += n;
            continue;
        }
        if (c != '\\') return fail(j, "Control character in string", p, 0);
        switch (p[1]) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(p + 2, &cp)) return fail(j, "Invalid unicode escape code", p, 0);
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return fail(j, "Invalid unicode escape code (lone low surrogate)", p, 0);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return fail(j, "Invalid unicode escape code (lone high surrogate)", p, 0);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xC0 | (cp >> 6));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | (cp >> 12));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (cp >> 18));
                *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            p += 6;
            continue;
        }
        default: return fail(j, "Invalid escape code", p, 0);
        }
        p += 2;
    }
    lua_pushlstring(L, buf, (size_t)(o - buf));
    if (boxed) lua_remove(L, -2);
    j->p = p + 1;
    return 1;
}

/* j->p is just after the opening quote. Pushes the string. */
static inline int parse_string(J *j) {
    const unsigned char *s = j->p, *p = s;
    for (;;) {
        unsigned c;
        while (!str_class[*p]) p++;
        c = *p;
        if (c == '"') {
            lua_pushlstring(j->L, (const char *)s, (size_t)(p - s));
            j->p = p + 1;
            return 1;
        }
        if (c >= 0x80) {
            int n = utf8_seq(p);
            if (!n) return fail(j, "Invalid UTF-8 in string", p, 0);
            p += n;
            continue;
        }
        if (c == '\\') return parse_string_escaped(j, s, p);
        if (p >= j->end) return fail(j, "Unterminated string", s - 1, 0);
        return fail(j, "Control character in string", p, 0);
    }
}

static int parse_number(J *j, const unsigned char *p) {
    lua_State *L = j->L;
    const unsigned char *start = p;
    uint64_t m = 0;
    int nd = 0, many = 0, isfloat = 0, neg = 0, frac = 0, e10 = 0;
    double d;

    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (*p == '0') {
        p++;
        if (IS_DIGIT(*p)) return fail(j, "Invalid number (leading zero)", start, 0);
    } else if (IS_DIGIT(*p)) {
        do {
            if (nd < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                nd++;
            } else many++;
            p++;
        } while (IS_DIGIT(*p));
    } else {
        return fail(j, "Invalid number", start, 0);
    }
    if (*p == '.') {
        p++;
        if (!IS_DIGIT(*p)) return fail(j, "Invalid number (digit expected after '.')", start, 0);
        isfloat = 1;
        do {
            if (nd < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                if (m) nd++; /* leading zeros of 0.000x are not significant */
                if (frac < 100000) frac++;
                else many++;
            } else {
                many++; /* dropped: only the strtod path sees it */
            }
            p++;
        } while (IS_DIGIT(*p));
    }
    if (*p == 'e' || *p == 'E') {
        int esign = 1;
        p++;
        if (*p == '+') p++;
        else if (*p == '-') {
            esign = -1;
            p++;
        }
        if (!IS_DIGIT(*p)) return fail(j, "Invalid number (digit expected in exponent)", start, 0);
        isfloat = 1;
        do {
            if (e10 < 100000) e10 = e10 * 10 + (*p - '0');
            p++;
        } while (IS_DIGIT(*p));
        e10 *= esign;
    }
    j->p = p;

    if (!isfloat && !many && !(neg && m == 0)) { /* -0 stays the float -0.0 */
        if (m <= (uint64_t)INT64_MAX || (neg && m == (uint64_t)INT64_MAX + 1)) {
            int64_t v = (m == (uint64_t)INT64_MAX + 1) ? INT64_MIN : neg ? -(int64_t)m : (int64_t)m;
#if LUA_VERSION_NUM >= 503
            lua_pushinteger(L, (lua_Integer)v);
#else
            lua_pushnumber(L, (lua_Number)v);
#endif
            return 1;
        }
    }
    if (!many && m <= ((uint64_t)1 << 53)) {
        int e = e10 - frac;
        /* Clinger: m and 10^|e| are exact doubles, so one IEEE operation
         * gives the correctly rounded result, the same as strtod. */
        if (e >= -22 && e <= 22) {
            d = (double)m;
            d = e < 0 ? d / pow10_exact[-e] : d * pow10_exact[e];
            lua_pushnumber(L, (lua_Number)(neg ? -d : d));
            return 1;
        }
    }
    {
        char *endp;
        d = strtod((const char *)start, &endp);
        if ((const unsigned char *)endp != p) {
            /* a locale whose decimal point is not '.': retry on a copy */
            size_t n = (size_t)(p - start), i;
            char dp = localeconv()->decimal_point[0];
            char *tmp = (char *)lua_newuserdata(L, n + 1);
            for (i = 0; i < n; i++) tmp[i] = start[i] == '.' ? dp : (char)start[i];
            tmp[n] = '\0';
            d = strtod(tmp, NULL);
            lua_pop(L, 1);
        }
        lua_pushnumber(L, (lua_Number)d);
        return 1;
    }
}

static int parse_value(J *j);

/* Moves n key/value pairs from the stack (above slot) into a new table
 * placed at slot; pairs are applied in order so the last duplicate wins. */
static void flush_object(lua_State *L, int slot, int n) {
    int i;
    lua_createtable(L, 0, n);
    lua_replace(L, slot);
    for (i = 0; i < n; i++) {
        lua_pushvalue(L, slot + 1 + 2 * i);
        lua_pushvalue(L, slot + 2 + 2 * i);
        lua_rawset(L, slot);
    }
    lua_settop(L, slot);
}

static void flush_array(lua_State *L, int slot, int n) {
    int i;
    lua_createtable(L, n, 0);
    lua_replace(L, slot);
    for (i = n; i >= 1; i--) lua_rawseti(L, slot, i); /* pops the top */
}

/* Room for a container: batch mode if the stack can grow by `batch`, else
 * set members straight into the table (direct mode, a few slots). */
static int open_container(J *j, int batch, int *direct) {
    if (++j->depth > j->max_depth)
        return fail(j, "Found too many nested data structures", j->p - 1, 0);
    if (lua_checkstack(j->L, batch + 8)) {
        *direct = 0;
        lua_pushnil(j->L); /* placeholder for the table */
        return 1;
    }
    if (!lua_checkstack(j->L, 8))
        return fail(j, "Found too many nested data structures (Lua stack full)", j->p - 1, 0);
    *direct = 1;
    lua_newtable(j->L);
    return 1;
}

/* "{}" or "[]" (p at the closing bracket): still one level of nesting. */
static int empty_container(J *j, const unsigned char *p) {
    if (j->depth + 1 > j->max_depth)
        return fail(j, "Found too many nested data structures", j->p - 1, 0);
    j->p = p + 1;
    lua_createtable(j->L, 0, 0);
    return 1;
}

/* j->p is just after '{'. */
static int parse_object(J *j) {
    lua_State *L = j->L;
    const unsigned char *p = skip_ws(j->p);
    int slot, n = 0, direct;

    if (*p == '}') return empty_container(j, p);
    if (!open_container(j, 2 * OBJ_BATCH, &direct)) return 0;
    slot = lua_gettop(L);
    for (;;) {
        if (*p != '"') return fail(j, "Expected object key string", p, 1);
        j->p = p + 1;
        if (!parse_string(j)) return 0;
        p = skip_ws(j->p);
        if (*p != ':') return fail(j, "Expected colon", p, 1);
        j->p = p + 1;
        if (!parse_value(j)) return 0;
        n++;
        if (direct) {
            lua_rawset(L, slot);
        } else if (n == OBJ_BATCH) {
            flush_object(L, slot, n);
            direct = 1;
        }
        p = skip_ws(j->p);
        if (*p == ',') {
            p = skip_ws(p + 1);
            continue;
        }
        if (*p == '}') break;
        return fail(j, "Expected comma or object end", p, 1);
    }
    if (!direct) flush_object(L, slot, n);
    j->p = p + 1;
    j->depth--;
    return 1;
}

/* j->p is just after '['. */
static int parse_array(J *j) {
    lua_State *L = j->L;
    const unsigned char *p = skip_ws(j->p);
    int slot, n = 0, direct;

    if (*p == ']') return empty_container(j, p);
    if (!open_container(j, ARR_BATCH, &direct)) return 0;
    slot = lua_gettop(L);
    for (;;) {
        j->p = p;
        if (!parse_value(j)) return 0;
        n++;
        if (direct) {
            lua_rawseti(L, slot, n);
        } else if (n == ARR_BATCH) {
            flush_array(L, slot, n);
            direct = 1;
        }
        p = skip_ws(j->p);
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == ']') break;
        return fail(j, "Expected comma or array end", p, 1);
    }
    if (!direct) flush_array(L, slot, n);
    j->p = p + 1;
    j->depth--;
    return 1;
}

static int parse_value(J *j) {
    const unsigned char *p = skip_ws(j->p);
    if (++j->values > j->max_values && j->max_values > 0)
        return fail(j, "Found too many values", p, 0);
    switch (*p) {
    case '"': j->p = p + 1; return parse_string(j);
    case '{': j->p = p + 1; return parse_object(j);
    case '[': j->p = p + 1; return parse_array(j);
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9': return parse_number(j, p);
    case 't':
        if (j->end - p >= 4 && memcmp(p, "true", 4) == 0) {
            lua_pushboolean(j->L, 1);
            j->p = p + 4;
            return 1;
        }
        break;
    case 'f':
        if (j->end - p >= 5 && memcmp(p, "false", 5) == 0) {
            lua_pushboolean(j->L, 0);
            j->p = p + 5;
            return 1;
        }
        break;
    case 'n':
        if (j->end - p >= 4 && memcmp(p, "null", 4) == 0) {
            lua_pushlightuserdata(j->L, NULL);
            j->p = p + 4;
            return 1;
        }
        break;
    default: break;
    }
    return fail(j, "Expected value", p, 1);
}

int oo_json_decode(lua_State *L, const char *s, size_t len, int max_depth) {
    return oo_json_decode_capped(L, s, len, max_depth, 0);
}

int oo_json_decode_capped(lua_State *L, const char *s, size_t len, int max_depth, long max_values) {
    J j;
    int base = lua_gettop(L);
    char found[32];

    luaL_checkstack(L, 8, "json_decode");
    j.L = L;
    j.start = (const unsigned char *)s;
    j.end = j.start + len;
    j.p = j.start;
    j.depth = 0;
    j.max_depth = max_depth;
    j.values = 0;
    j.max_values = max_values;
    j.what = NULL;
    j.at = j.start;
    j.found = 0;
    if (parse_value(&j)) {
        const unsigned char *p = skip_ws(j.p);
        if (p == j.end) return 1;
        fail(&j, "Expected the end", p, 1);
    }
    lua_settop(L, base);
    lua_pushnil(L);
    found[0] = '\0';
    if (j.found) {
        if (j.at >= j.end) snprintf(found, sizeof found, " but found the end");
        else if (*j.at >= 0x20 && *j.at < 0x7F)
            snprintf(found, sizeof found, " but found '%c'", *j.at);
        else snprintf(found, sizeof found, " but found byte 0x%02X", *j.at);
    }
    lua_pushfstring(L, "%s%s at character %d", j.what, found, (int)(j.at - j.start) + 1);
    return 2;
}

/** Decodes one JSON text. @function json_decode
 * @tparam string s @tparam[opt=64] int max_depth nesting limit (1..1000)
 * @tparam[opt] int max_values the most values (objects, arrays and scalars
 * alike) the text may hold: past it, "Found too many values" (the memory a
 * hostile text can take stays bounded)
 * @return the value, or nil and a message with the byte offset */
static int l_json_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Number md = luaL_optnumber(L, 2, OO_JSON_DEFAULT_DEPTH);
    lua_Number mv = luaL_optnumber(L, 3, 0);
    luaL_argcheck(L, md >= 1 && md <= OO_JSON_MAX_DEPTH, 2, "max_depth must be 1..1000");
    luaL_argcheck(L, mv >= 0 && mv <= 1e15, 3, "max_values must be >= 0");
    return oo_json_decode_capped(L, s, len, (int)md, (long)mv);
}

void oo_json_register(lua_State *L) {
    lua_pushcfunction(L, l_json_decode);
    lua_setfield(L, -2, "json_decode");
}
