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
 * drops what was pushed and returns nil + message. */
#include "json.h"

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
    long values, max_values;          /* values so far; the cap (0: none) */
    const char *what;                 /* error: what was expected / wrong */
    const unsigned char *at;          /* error: where */
    int found;                        /* error: show the byte found at `at` */
} J;

/* String bytes: 0 plain ASCII, 1 '"', 2 '\\', 3 control (incl. the '\0'
 * sentinel), 4 first byte of a multi-byte UTF-8 sequence (or invalid). */
static const unsigned char str_class[256] = {
    3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3, 3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,
    0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,2,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
};

static const double pow10_exact[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

#define IS_WS(c) ((c) == ' ' || (c) == '\n' || (c) == '\r' || (c) == '\t')
#define IS_DIGIT(c) ((unsigned)((c) - '0') < 10u)

static inline const unsigned char *skip_ws(const unsigned char *p) {
    while (IS_WS(*p)) p++; /* '\0' sentinel stops it */
    return p;
}

static int fail(J *j, const char *what, const unsigned char *at, int found) {
    j->what = what;
    j->at = at;
    j->found = found;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at p (first byte >= 0x80), or 0.
 * No overlongs, no surrogates, nothing above U+10FFFF. Never reads past a
 * '\0' (it is not a continuation byte). */
static inline int utf8_seq(const unsigned char *p) {
    unsigned c = p[0];
#define CONT(x) (((x) & 0xC0u) == 0x80u)
    if (c >= 0xC2 && c <= 0xDF) return CONT(p[1]) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned c1 = p[1];
        if (c == 0xE0 ? (c1 < 0xA0 || c1 > 0xBF) : c == 0xED ? (c1 < 0x80 || c1 > 0x9F) : !CONT(c1))
            return 0;
        return CONT(p[2]) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned c1 = p[1];
        if (c == 0xF0 ? (c1 < 0x90 || c1 > 0xBF) : c == 0xF4 ? (c1 < 0x80 || c1 > 0x8F) : !CONT(c1))
            return 0;
        if (!CONT(p[2])) return 0;
        return CONT(p[3]) ? 4 : 0;
    }
    return 0;
#undef CONT
}

static inline int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0; /* also stops at the '\0' sentinel */
        v = (v << 4) | d;
    }
    *out = v;
    return 1;
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

    if (*p == '-') { neg = 1; p++; }
    if (*p == '0') {
        p++;
        if (IS_DIGIT(*p)) return fail(j, "Invalid number (leading zero)", start, 0);
    } else if (IS_DIGIT(*p)) {
        do {
            if (nd < 19) { m = m * 10 + (uint64_t)(*p - '0'); nd++; } else many++;
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
                if (frac < 100000) frac++; else many++;
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
        else if (*p == '-') { esign = -1; p++; }
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
        if (*p == ',') { p = skip_ws(p + 1); continue; }
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
        if (*p == ',') { p++; continue; }
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
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        return parse_number(j, p);
    case 't':
        if (j->end - p >= 4 && memcmp(p, "true", 4) == 0) {
            lua_pushboolean(j->L, 1); j->p = p + 4; return 1;
        }
        break;
    case 'f':
        if (j->end - p >= 5 && memcmp(p, "false", 5) == 0) {
            lua_pushboolean(j->L, 0); j->p = p + 5; return 1;
        }
        break;
    case 'n':
        if (j->end - p >= 4 && memcmp(p, "null", 4) == 0) {
            lua_pushlightuserdata(j->L, NULL); j->p = p + 4; return 1;
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
        else if (*j.at >= 0x20 && *j.at < 0x7F) snprintf(found, sizeof found, " but found '%c'", *j.at);
        else snprintf(found, sizeof found, " but found byte 0x%02X", *j.at);
    }
    lua_pushfstring(L, "%s%s at character %d", j.what, found, (int)(j.at - j.start) + 1);
    return 2;
}

/* ------------------------------------------------------------------ */
/* The response envelope, without a Lua state (see json.h)             */

typedef struct {
    const unsigned char *p, *end;
    int depth;
    oo_envelope *env;
    oo_env_item *cur_error;    /* the errors[] item being read, or NULL */
    const char **cur_warning;  /* the warnings[] item being read, or NULL */
    int lenient;               /* tolerate one trailing comma (the envelope only) */
    oo_json_pick *picks;       /* oo_json_pick_values: what to pick, */
    unsigned live;             /* which picks the current object's path matches, */
    int level;                 /* and the current object's depth (0: the top) */
    unsigned short plen[OO_JSON_PICK_MAX][OO_JSON_PICK_DEPTH]; /* the picks' key lengths */
} E;

#define ENV_MAX_DEPTH 64
#define ENV_TEXT_CAP 500
/* Keys are copied up to this many bytes: more than OO_JSON_PICK_KEY_MAX,
 * so a longer key, cut, can never equal one we look for. */
#define KEY_CAP (OO_JSON_PICK_KEY_MAX + 8)

/* Copies n bytes into the arena (as much as fits); returns where. */
static const char *env_put(oo_envelope *env, const char *s, size_t n) {
    char *at = env->arena + env->used;
    size_t room = OO_ENV_ARENA - env->used;
    if (room == 0) return NULL;
    if (n >= room) n = room - 1;
    memcpy(at, s, n);
    at[n] = '\0';
    env->used += n + 1;
    return at;
}

/* UTF-8 encoding of cp into out (at least 4 bytes); returns the length. */
static int env_utf8(unsigned cp, unsigned char *out) {
    if (cp < 0x80) { out[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* e->p just after the opening quote. Validates the string with the
 * decoder's rules and copies up to `cap` bytes of its unescaped text into
 * buf (when buf is not NULL; whole characters only); *n gets their count.
 * 0 on bad JSON. */
static int env_string(E *e, char *buf, size_t cap, size_t *n) {
    const unsigned char *p = e->p;
    size_t k = 0;
    int full = 0;
    for (;;) {
        unsigned c = *p;
        unsigned char u[4];
        int ul;
        if (!str_class[c]) {
            ul = 1;
            u[0] = (unsigned char)c;
            p++;
        } else if (c == '"') {
            break;
        } else if (c >= 0x80) {
            ul = utf8_seq(p);
            if (!ul) return 0;
            memcpy(u, p, (size_t)ul);
            p += ul;
        } else if (c == '\\') {
            unsigned cp, lo;
            ul = 1;
            switch (p[1]) {
            case '"': case '\\': case '/': u[0] = p[1]; break;
            case 'b': u[0] = '\b'; break;
            case 'f': u[0] = '\f'; break;
            case 'n': u[0] = '\n'; break;
            case 'r': u[0] = '\r'; break;
            case 't': u[0] = '\t'; break;
            case 'u':
                if (!hex4(p + 2, &cp) || (cp >= 0xDC00 && cp <= 0xDFFF)) return 0;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return 0;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
                ul = env_utf8(cp, u);
                p += 4;
                break;
            default: return 0;
            }
            p += 2;
        } else {
            return 0; /* a control byte, or the end ('\0' sentinel) */
        }
        if (buf && !full && k + (size_t)ul <= cap) {
            memcpy(buf + k, u, (size_t)ul);
            k += (size_t)ul;
        } else {
            full = 1; /* whole characters, and no gap: the text stops here */
        }
    }
    if (p >= e->end) return 0;
    e->p = p + 1;
    if (n) *n = k;
    return 1;
}

static int env_value(E *e);

/* A number with the decoder's grammar; the text stays where it is. */
static int env_number(E *e) {
    const unsigned char *p = e->p;
    if (*p == '-') p++;
    if (*p == '0') {
        p++;
    } else if (IS_DIGIT(*p)) {
        while (IS_DIGIT(*p)) p++;
    } else {
        return 0;
    }
    if (*p == '.') {
        p++;
        if (!IS_DIGIT(*p)) return 0;
        while (IS_DIGIT(*p)) p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!IS_DIGIT(*p)) return 0;
        while (IS_DIGIT(*p)) p++;
    }
    e->p = p;
    return 1;
}

/* The members of an object (e->p after '{'), calling `member` with each
 * key (cut at KEY_CAP bytes: longer than any key we look for), or skipping
 * the values when it is NULL. Lenient: tolerates one trailing comma. */
typedef int (*env_member_fn)(E *e, const char *key, size_t klen);

static int env_object(E *e, env_member_fn member) {
    const unsigned char *p;
    if (++e->depth > ENV_MAX_DEPTH) return 0;
    p = skip_ws(e->p);
    if (*p != '}') {
        for (;;) {
            char key[KEY_CAP];
            size_t klen = 0;
            if (*p != '"') return 0;
            e->p = p + 1;
            if (!env_string(e, member ? key : NULL, sizeof key, &klen)) return 0;
            p = skip_ws(e->p);
            if (*p != ':') return 0;
            e->p = skip_ws(p + 1);
            if (member ? !member(e, key, klen) : !env_value(e)) return 0;
            p = skip_ws(e->p);
            if (*p == ',') {
                p = skip_ws(p + 1);
                if (*p == '}' && e->lenient) break; /* the docs' {"status":"OK",} */
                continue;
            }
            if (*p == '}') break;
            return 0;
        }
    }
    e->p = p + 1;
    e->depth--;
    return 1;
}

/* The items of an array (e->p after '['), calling `item(e, index)`, or
 * skipping them when it is NULL. Tolerates one trailing comma. */
typedef int (*env_item_fn)(E *e, int index);

static int env_array(E *e, env_item_fn item) {
    const unsigned char *p;
    int i = 0;
    if (++e->depth > ENV_MAX_DEPTH) return 0;
    p = skip_ws(e->p);
    if (*p != ']') {
        for (;;) {
            e->p = p;
            if (item ? !item(e, i) : !env_value(e)) return 0;
            i++;
            p = skip_ws(e->p);
            if (*p == ',') {
                p = skip_ws(p + 1);
                if (*p == ']' && e->lenient) break;
                continue;
            }
            if (*p == ']') break;
            return 0;
        }
    }
    e->p = p + 1;
    e->depth--;
    return 1;
}

/* Any value at e->p (whitespace skipped), validated and skipped. */
static int env_value(E *e) {
    const unsigned char *p = skip_ws(e->p);
    e->p = p;
    switch (*p) {
    case '"': e->p = p + 1; return env_string(e, NULL, 0, NULL);
    case '{': e->p = p + 1; return env_object(e, NULL);
    case '[': e->p = p + 1; return env_array(e, NULL);
    case 't': if (e->end - p >= 4 && memcmp(p, "true", 4) == 0) { e->p = p + 4; return 1; } return 0;
    case 'f': if (e->end - p >= 5 && memcmp(p, "false", 5) == 0) { e->p = p + 5; return 1; } return 0;
    case 'n': if (e->end - p >= 4 && memcmp(p, "null", 4) == 0) { e->p = p + 4; return 1; } return 0;
    default: return env_number(e);
    }
}

/* A scalar as text into the arena: a string's content, or a number or
 * boolean as written (a `code` may come as 404). null, objects and arrays:
 * skipped, *out stays NULL. */
static int env_text(E *e, const char **out, size_t cap) {
    char buf[ENV_TEXT_CAP];
    size_t n = 0;
    const unsigned char *p = skip_ws(e->p), *start = p;
    if (cap > sizeof buf) cap = sizeof buf;
    *out = NULL;
    e->p = p;
    if (*p == '"') {
        e->p = p + 1;
        if (!env_string(e, buf, cap, &n)) return 0;
        *out = env_put(e->env, buf, n);
        return 1;
    }
    if (*p == '{' || *p == '[' || *p == 'n') return env_value(e);
    if (!env_value(e)) return 0;
    n = (size_t)(e->p - start);
    *out = env_put(e->env, (const char *)start, n < cap ? n : cap);
    return 1;
}

static int key_is(const char *key, size_t klen, const char *name) {
    size_t n = strlen(name);
    return klen == n && memcmp(key, name, n) == 0;
}

static int env_error_member(E *e, const char *key, size_t klen) {
    oo_env_item *it = e->cur_error;
    if (it && key_is(key, klen, "code") && !it->code) return env_text(e, &it->code, 64);
    if (it && key_is(key, klen, "message") && !it->message) return env_text(e, &it->message, ENV_TEXT_CAP);
    return env_value(e);
}

static int env_error_item(E *e, int i) {
    const unsigned char *p = skip_ws(e->p);
    oo_env_item *it = i < OO_ENV_ITEMS ? &e->env->errors[i] : NULL;
    e->env->nerrors = i + 1;
    if (it) it->code = it->message = NULL;
    if (*p == '{') {
        int ok;
        e->cur_error = it;
        e->p = p + 1;
        ok = env_object(e, env_error_member);
        e->cur_error = NULL;
        return ok;
    }
    if (!it) return env_value(e);
    e->p = p;
    return env_text(e, &it->message, ENV_TEXT_CAP);
}

static int env_warning_member(E *e, const char *key, size_t klen) {
    const char **w = e->cur_warning;
    if (w && !*w && (key_is(key, klen, "warning") || key_is(key, klen, "message")))
        return env_text(e, w, ENV_TEXT_CAP);
    return env_value(e);
}

static int env_warning_item(E *e, int i) {
    const unsigned char *p = skip_ws(e->p);
    const char **w = i < OO_ENV_ITEMS ? &e->env->warnings[i] : NULL;
    e->env->nwarnings = i + 1;
    if (w) *w = NULL;
    if (*p == '{') {
        int ok;
        e->cur_warning = w;
        e->p = p + 1;
        ok = env_object(e, env_warning_member);
        e->cur_warning = NULL;
        return ok;
    }
    if (!w) return env_value(e);
    e->p = p;
    return env_text(e, w, ENV_TEXT_CAP);
}

/* Nested objects are read by env_object(e, NULL): only these three keys
 * of the top level matter. */
static int env_top_member(E *e, const char *key, size_t klen) {
    const unsigned char *p = skip_ws(e->p);
    e->p = p;
    if (key_is(key, klen, "status")) {
        e->env->status_present = 1;
        e->env->status = NULL;
        if (*p == '"') return env_text(e, &e->env->status, 32);
        return env_value(e);
    }
    if (key_is(key, klen, "errors") && *p == '[') {
        e->env->nerrors = 0;
        e->p = p + 1;
        return env_array(e, env_error_item);
    }
    if (key_is(key, klen, "warnings") && *p == '[') {
        e->env->nwarnings = 0;
        e->p = p + 1;
        return env_array(e, env_warning_item);
    }
    return env_value(e);
}

int oo_json_envelope(const char *s, size_t len, oo_envelope *env) {
    E e;
    const unsigned char *p;
    memset(env, 0, offsetof(oo_envelope, arena));
    env->arena[0] = '\0';
    e.p = (const unsigned char *)s;
    e.end = e.p + len;
    e.depth = 0;
    e.env = env;
    e.cur_error = NULL;
    e.cur_warning = NULL;
    e.lenient = 1;
    e.picks = NULL;
    e.live = 0;
    e.level = 0;
    p = skip_ws(e.p);
    if (*p != '{') return 0;
    e.p = p + 1;
    if (env_object(&e, env_top_member) && skip_ws(e.p) == e.end) {
        env->object = 1;
        return 1;
    }
    memset(env, 0, offsetof(oo_envelope, arena));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Picking values by path, without a Lua state (see json.h)           */

static int pick_member(E *e, const char *key, size_t klen);

static int pick_key_is(const E *e, int i, int level, const char *key, size_t klen) {
    const char *want = e->picks[i].path[level];
    return e->plen[i][level] == klen && want[0] == key[0] && memcmp(want, key, klen) == 0;
}

/* Notes the value at [start, end) as pick k's. */
static void pick_set(oo_json_pick *k, const unsigned char *start, const unsigned char *end) {
    switch (*start) {
    case '"': k->type = 's'; break;
    case '{': k->type = 'o'; break;
    case '[': k->type = 'a'; break;
    case 't': k->type = 't'; break;
    case 'f': k->type = 'f'; break;
    case 'n': k->type = 'z'; break;
    default: k->type = 'n'; break;
    }
    if (k->type == 's') {
        start++;
        end--;
    }
    k->raw = (const char *)start;
    k->raw_len = (size_t)(end - start);
    k->escaped = k->type == 's' && memchr(start, '\\', k->raw_len) != NULL;
}

/* One member of an object whose path the picks in e->live match so far:
 * the picks ending at this key take its value, the ones going deeper
 * descend into it when it is an object. */
static int pick_member(E *e, const char *key, size_t klen) {
    unsigned live = e->live, deeper = 0, leaves = 0;
    int level = e->level, i, ok;
    const unsigned char *start = skip_ws(e->p);
    for (i = 0; i < OO_JSON_PICK_MAX; i++) {
        if (!(live & (1u << i)) || !pick_key_is(e, i, level, key, klen)) continue;
        if (level + 1 < OO_JSON_PICK_DEPTH && e->picks[i].path[level + 1]) deeper |= 1u << i;
        else leaves |= 1u << i;
    }
    /* a later duplicate of a key replaces what an earlier one held */
    for (i = 0; i < OO_JSON_PICK_MAX; i++)
        if (deeper & (1u << i)) e->picks[i].type = 0;
    e->p = start;
    if (deeper && *start == '{') {
        e->live = deeper;
        e->level = level + 1;
        e->p = start + 1;
        ok = env_object(e, pick_member);
        e->live = live;
        e->level = level;
    } else {
        ok = env_value(e);
    }
    if (!ok) return 0;
    for (i = 0; i < OO_JSON_PICK_MAX; i++)
        if (leaves & (1u << i)) pick_set(&e->picks[i], start, e->p);
    return 1;
}

int oo_json_pick_values(const char *s, size_t len, oo_json_pick *picks, int n) {
    E e;
    const unsigned char *p;
    int i;
    unsigned live = 0;
    memset(&e, 0, sizeof e);
    for (i = 0; i < n && i < OO_JSON_PICK_MAX; i++) {
        int d;
        picks[i].type = 0;
        picks[i].raw = NULL;
        picks[i].raw_len = 0;
        picks[i].escaped = 0;
        if (picks[i].path[0]) live |= 1u << i;
        for (d = 0; d < OO_JSON_PICK_DEPTH && picks[i].path[d]; d++) {
            size_t len = strlen(picks[i].path[d]);
            if (len > OO_JSON_PICK_KEY_MAX || len == 0) live &= ~(1u << i); /* never matches */
            e.plen[i][d] = (unsigned short)len;
        }
    }
    e.p = (const unsigned char *)s;
    e.end = e.p + len;
    e.picks = picks;
    e.live = live;
    p = skip_ws(e.p);
    if (*p != '{') return 0;
    e.p = p + 1;
    if (env_object(&e, pick_member) && skip_ws(e.p) == e.end) return 1;
    for (i = 0; i < n && i < OO_JSON_PICK_MAX; i++) picks[i].type = 0;
    return 0;
}

size_t oo_json_pick_text(const oo_json_pick *k, char *out, size_t cap) {
    E e;
    size_t n = 0;
    if (k->type != 's') return 0;
    if (!k->escaped) {
        n = k->raw_len < cap ? k->raw_len : cap;
        /* whole characters only */
        while (n < k->raw_len && n > 0 && ((unsigned char)k->raw[n] & 0xC0u) == 0x80u) n--;
        memcpy(out, k->raw, n);
        return n;
    }
    memset(&e, 0, sizeof e);
    e.p = (const unsigned char *)k->raw;
    e.end = e.p + k->raw_len + 1; /* the closing quote */
    return env_string(&e, out, cap, &n) ? n : 0;
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
