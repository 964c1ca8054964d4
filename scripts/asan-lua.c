/* A minimal Lua 5.4 interpreter linked with ASan+UBSan, so the sanitized
 * C core can be loaded without LD_PRELOAD (which would leak into every
 * child process a spec starts: curl, nginx). Runs `asan-lua script args...`
 * like `lua5.4 script args...` — enough for busted. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* Ctrl-C as in the stock interpreter: the first SIGINT makes the running
 * Lua code raise "interrupted!" at its next instruction (the specs check
 * that the CLI stops cleanly); a second one kills the process. */
static lua_State *global_L;

static void stop_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
    int flags = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
    signal(sig, SIG_DFL);
    lua_sethook(global_L, stop_hook, flags, 1);
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int main(int argc, char **argv) {
    lua_State *L;
    int i, status;
    if (argc < 2) { fprintf(stderr, "usage: %s script [args]\n", argv[0]); return 2; }
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_createtable(L, argc, 1);
    for (i = 0; i < argc; i++) { lua_pushstring(L, argv[i]); lua_rawseti(L, -2, i - 1); }
    lua_setglobal(L, "arg");
    lua_pushcfunction(L, traceback);
    if (luaL_loadfile(L, argv[1]) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    global_L = L;
    signal(SIGINT, on_sigint);
    status = lua_pcall(L, argc - 2, 0, 1);
    signal(SIGINT, SIG_DFL);
    if (status != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
