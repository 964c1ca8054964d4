/* libFuzzer target for the ledger's body reader: oo_json_pick_values
 * (csrc/payload/json.c, the strict walker without a Lua state) and
 * oo_ledger_entry_from_body (csrc/store/ledger_entry.c). Invariants, not just
 * crashes:
 *  - the walker accepts exactly the JSON objects the full decoder accepts
 *    (differential, for inputs nested less deep than both limits);
 *  - every picked slice lies inside the input, and a picked string's text
 *    is valid UTF-8 and equals the decoder's value;
 *  - an entry's refCode and store are the decoder's order.refCode and
 *    order.attributes.store, and its total has the currency's decimals.
 *   make -C fuzz run-ledger   (bounded: FUZZ_SECONDS, default 60) */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../csrc/payload/json.h"
#include "../csrc/store/ledger.h"
#include "../csrc/payload/money.h"
#include "../csrc/base/utf8.h"

/* Deepest nesting of the input (strings skipped). */
static int depth_of(const uint8_t *p, size_t n) {
    int d = 0, max = 0, in_str = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        if (in_str) {
            if (p[i] == '\\') i++;
            else if (p[i] == '"') in_str = 0;
        } else if (p[i] == '"') {
            in_str = 1;
        } else if (p[i] == '{' || p[i] == '[') {
            if (++d > max) max = d;
        } else if (p[i] == '}' || p[i] == ']') {
            d--;
        }
    }
    return max;
}

/* t[k1][k2]... of the decoded value at idx, pushed (nil when absent). */
static void get_path(lua_State *L, int idx, const char *const *path) {
    lua_pushvalue(L, idx);
    for (; *path; path++) {
        if (lua_type(L, -1) != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        lua_getfield(L, -1, *path);
        lua_remove(L, -2);
    }
}

/* A picked string: its text is the decoder's value at the same path. */
static void check_pick(lua_State *L, const oo_json_pick *k, const char *s, size_t size) {
    static char text[1 << 16];
    size_t n, dn;
    const char *dv;
    if (!k->type) return;
    assert(k->raw >= s && k->raw + k->raw_len <= s + size);
    get_path(L, 2, k->path);
    if (k->type == 's' && k->raw_len < sizeof text) {
        n = oo_json_pick_text(k, text, sizeof text);
        assert(n <= k->raw_len);
        assert(oo_utf8_check(text, n) == 0);
        dv = lua_tolstring(L, -1, &dn);
        assert(lua_type(L, -1) == LUA_TSTRING && dn == n && memcmp(dv, text, n) == 0);
    }
    lua_pop(L, 1);
}

static void check_entry(lua_State *L, const char *s, size_t size) {
    static const char *const ref_path[] = {"order", "refCode", NULL};
    static const char *const store_path[] = {"order", "attributes", "store", NULL};
    oo_ledger_entry e;
    char why[128];
    size_t n;
    const char *v;
    if (oo_ledger_entry_from_body(s, size, NULL, &e, why, sizeof why) != 0) return;
    get_path(L, 2, ref_path);
    v = lua_tolstring(L, -1, &n);
    assert(lua_type(L, -1) == LUA_TSTRING && n == e.ref_len && n > 0 && memcmp(v, e.ref, n) == 0);
    lua_pop(L, 1);
    get_path(L, 2, store_path);
    if (lua_type(L, -1) == LUA_TSTRING) {
        v = lua_tolstring(L, -1, &n);
        assert(e.store && n == e.store_len && memcmp(v, e.store, n) == 0);
    }
    lua_pop(L, 1);
    if (e.has_total) assert(e.currency[0] && oo_currency_minor(e.currency) >= 0 && e.total >= 0);
    oo_ledger_entry_free(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lua_State *L;
    oo_json_pick k[4];
    const char *s;
    int nret, valid, i;
    if (!L) L = luaL_newstate();
    lua_settop(L, 0);
    /* a Lua string: the '\0' the walker needs is there */
    lua_pushlstring(L, (const char *)data, size);
    s = lua_tostring(L, 1);
    memset(k, 0, sizeof k);
    k[0].path[0] = k[1].path[0] = k[2].path[0] = "order";
    k[0].path[1] = "refCode";
    k[1].path[1] = "attributes";
    k[1].path[2] = "store";
    k[2].path[1] = "total";
    k[3].path[0] = "user";
    k[3].path[1] = "email";
    valid = oo_json_pick_values(s, size, k, 4);
    nret = oo_json_decode(L, s, size, OO_JSON_DEFAULT_DEPTH);
    if (depth_of(data, size) < 60)
        assert(valid == (nret == 1 && lua_type(L, 2) == LUA_TTABLE && size > 0 &&
                         s[strspn(s, " \t\r\n")] == '{'));
    if (!valid) {
        for (i = 0; i < 4; i++) assert(k[i].type == 0);
        return 0;
    }
    assert(nret == 1);
    for (i = 0; i < 4; i++) check_pick(L, &k[i], s, size);
    check_entry(L, s, size);
    return 0;
}
