/* libFuzzer target for core.json_decode (csrc/payload/json.c). Invariants, not just
 * crashes: the decoder returns exactly one value, or nil plus a message that
 * names a byte offset inside (or just past) the input; every string it
 * produces (keys and values) is well-formed UTF-8; the stack is balanced.
 * One Lua state is reused across runs (the harness's, not the library's).
 *   make -C fuzz run-json   (bounded: FUZZ_SECONDS, default 60) */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../csrc/payload/json.h"
#include "../csrc/base/utf8.h"

static void check_value(lua_State *L, int idx, int depth) {
    size_t n;
    const char *s;
    assert(depth <= OO_JSON_DEFAULT_DEPTH + 1);
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        assert(oo_utf8_check(s, n) == 0);
        break;
    case LUA_TTABLE:
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            int top = lua_gettop(L);
            assert(lua_type(L, top - 1) == LUA_TSTRING || lua_type(L, top - 1) == LUA_TNUMBER);
            check_value(L, top - 1, depth + 1);
            check_value(L, top, depth + 1);
            lua_pop(L, 1);
        }
        break;
    case LUA_TNUMBER: case LUA_TBOOLEAN: break;
    case LUA_TLIGHTUSERDATA: assert(lua_touserdata(L, idx) == NULL); break;
    default: assert(0 && "unexpected type");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lua_State *L;
    static unsigned runs;
    int nret;
    if (!L) L = luaL_newstate();
    lua_settop(L, 0);
    /* a Lua string, so the decoder's '\0' sentinel is there */
    lua_pushlstring(L, (const char *)data, size);
    nret = oo_json_decode(L, lua_tostring(L, 1), size, OO_JSON_DEFAULT_DEPTH);
    if (nret == 1) {
        assert(lua_gettop(L) == 2);
        check_value(L, 2, 0);
    } else {
        const char *msg, *at;
        long off;
        assert(nret == 2 && lua_gettop(L) == 3 && lua_isnil(L, 2));
        msg = lua_tostring(L, 3);
        at = strstr(msg, " at character ");
        assert(at != NULL);
        off = strtol(at + 14, NULL, 10);
        assert(off >= 1 && (size_t)off <= size + 1);
    }
    if (++runs % 4096 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
