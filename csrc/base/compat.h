/* Lua 5.1 / LuaJIT / 5.2 / 5.3 / 5.4 differences. Every helper carries the
 * oo_ prefix so it can never collide with a real luaL_* of a newer Lua. */
#ifndef OO_COMPAT_H
#define OO_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM >= 502
#define oo_rawlen(L, i) lua_rawlen((L), (i))
#else
#define oo_rawlen(L, i) lua_objlen((L), (i))
#endif

/* Register funcs into the table on top of the stack (with nup upvalues). */
static inline void oo_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
#if LUA_VERSION_NUM >= 502
    luaL_setfuncs(L, l, nup);
#else
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
#endif
}

/* Is the value at idx an integer-valued number? Stores it in *out.
 * Floats count when they are whole and exactly representable (|v| < 2^53). */
static inline int oo_tointeger(lua_State *L, int idx, long long *out) {
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
        *out = (long long)lua_tointeger(L, idx);
        return 1;
    }
#endif
    {
        lua_Number n = lua_tonumber(L, idx);
        if (n != n) return 0;
        if (n >= -9007199254740992.0 && n <= 9007199254740992.0 && (lua_Number)(long long)n == n) {
            *out = (long long)n;
            return 1;
        }
    }
    return 0;
}

/* luaL_newmetatable + __name-free setup that works on every version. */
static inline void oo_setmetatable(lua_State *L, const char *tname) {
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}

/* Creates the metatable `tname` once: `methods` as __index, and __gc,
 * __close (Lua 5.4) and __tostring when given (NULL to leave one out).
 * Leaves the stack as it was. Every userdata class of the core uses it. */
static inline void oo_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
                               lua_CFunction gc, lua_CFunction close, lua_CFunction tostring) {
    if (luaL_newmetatable(L, tname)) {
        lua_newtable(L);
        oo_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
        if (gc) {
            lua_pushcfunction(L, gc);
            lua_setfield(L, -2, "__gc");
        }
#if LUA_VERSION_NUM >= 504
        if (close) {
            lua_pushcfunction(L, close);
            lua_setfield(L, -2, "__close");
        }
#else
        (void)close;
#endif
        if (tostring) {
            lua_pushcfunction(L, tostring);
            lua_setfield(L, -2, "__tostring");
        }
    }
    lua_pop(L, 1);
}

/* t[k] = v for the table on top of the stack: the one way the core fills
 * the tables it returns (results, stats, rows). */
static inline void oo_set_str(lua_State *L, const char *k, const char *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}
static inline void oo_set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, k);
}
static inline void oo_set_int(lua_State *L, const char *k, long long v) {
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}
static inline void oo_set_bool(lua_State *L, const char *k, int v) {
    lua_pushboolean(L, v);
    lua_setfield(L, -2, k);
}

#if LUA_VERSION_NUM >= 502
#define oo_testudata(L, i, t) luaL_testudata((L), (i), (t))
#else
static inline void *oo_testudata(lua_State *L, int i, const char *tname) {
    void *p = lua_touserdata(L, i);
    if (p != NULL && lua_getmetatable(L, i)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2)) p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}
#endif

#endif
