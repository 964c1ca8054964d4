/* Text helpers (see text.h): suggestions and message-safe quoting.
 * Lua: core.suggest(word, names) and core.quote(s [, cap]). */
#include "text.h"
#include "core.h"
#include "utf8.h"

#include <string.h>

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Length of the well-formed UTF-8 sequence at s (n bytes left), or 0. */
static int utf8_seq(const unsigned char *s, size_t n) {
    size_t len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : 2;
    if (len > n || oo_utf8_check((const char *)s, len) != 0) return 0;
    return (int)len;
}

int oo_edit_distance(const char *a, size_t n, const char *b, size_t m) {
    int d[40][40];
    size_t i, j;
    if (n >= 40 || m >= 40) return 99;
    for (i = 0; i <= n; i++) d[i][0] = (int)i;
    for (j = 0; j <= m; j++) d[0][j] = (int)j;
    for (i = 1; i <= n; i++) {
        for (j = 1; j <= m; j++) {
            int cost = lower((unsigned char)a[i - 1]) != lower((unsigned char)b[j - 1]);
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 &&
                lower((unsigned char)a[i - 1]) == lower((unsigned char)b[j - 2]) &&
                lower((unsigned char)a[i - 2]) == lower((unsigned char)b[j - 1]) &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[n][m];
}

const char *oo_suggest(const char *k, size_t n, const char *const *names, int count) {
    int i, best = 99, limit = n < 4 ? 1 : 2;
    const char *hit = NULL;
    for (i = 0; i < count; i++) {
        int dist = oo_edit_distance(k, n, names[i], strlen(names[i]));
        if (dist <= limit && dist < best) {
            best = dist;
            hit = names[i];
        }
    }
    return hit;
}

void oo_buf_quote(oo_buf *b, const char *s, size_t n, size_t cap) {
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, shown = n > cap ? cap : n;
    oo_buf_addc(b, '"');
    while (i < shown) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            int len = utf8_seq((const unsigned char *)s + i, n - i);
            if (len > 0 && i + (size_t)len <= shown) {
                oo_buf_add(b, s + i, (size_t)len);
                i += (size_t)len;
                continue;
            }
            if (len > 0) break; /* a character cut by the cap: stop before it */
        }
        if (c == '"' || c == '\\') {
            oo_buf_addc(b, '\\');
            oo_buf_addc(b, (char)c);
        } else if (c == '\n') {
            oo_buf_addlit(b, "\\n");
        } else if (c == '\r') {
            oo_buf_addlit(b, "\\r");
        } else if (c == '\t') {
            oo_buf_addlit(b, "\\t");
        } else if (c < 0x20 || c >= 0x7f) {
            char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            oo_buf_add(b, e, 4);
        } else {
            oo_buf_addc(b, (char)c);
        }
        i++;
    }
    oo_buf_addc(b, '"');
    if (n > shown) {
        oo_buf_addlit(b, "...(");
        oo_buf_addint(b, (long long)n);
        oo_buf_addlit(b, " bytes)");
    }
}

/*** core.suggest(word, names) -> the closest name, or nil */
static int l_suggest(lua_State *L) {
    size_t n;
    const char *k = luaL_checklstring(L, 1, &n);
    const char *names[256];
    int i, count = 0, len;
    const char *hit;
    luaL_checktype(L, 2, LUA_TTABLE);
    len = (int)oo_rawlen(L, 2);
    if (len > 256) len = 256;
    for (i = 1; i <= len; i++) {
        lua_rawgeti(L, 2, i);
        if (lua_type(L, -1) == LUA_TSTRING) names[count++] = lua_tostring(L, -1);
        lua_pop(L, 1); /* the string stays referenced by the table */
    }
    hit = oo_suggest(k, n, names, count);
    if (hit) lua_pushstring(L, hit);
    else lua_pushnil(L);
    return 1;
}

/*** core.quote(s [, cap]) -> "\"...\"" safe to print in one line */
static int l_quote(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_Integer cap = luaL_optinteger(L, 2, OO_QUOTE_CAP);
    oo_buf b;
    if (cap < 0) cap = 0;
    oo_buf_init(&b);
    oo_buf_quote(&b, s, n, (size_t)cap);
    if (b.oom) {
        oo_buf_free(&b);
        return luaL_error(L, "quote: out of memory");
    }
    lua_pushlstring(L, b.data, b.len);
    oo_buf_free(&b);
    return 1;
}

void oo_text_register(lua_State *L) {
    static const luaL_Reg funcs[] = {{"suggest", l_suggest}, {"quote", l_quote}, {NULL, NULL}};
    oo_setfuncs(L, funcs, 0);
}
