/* Stopping a program on SIGINT, SIGTERM and SIGHUP the way the stock
 * interpreter stops on Ctrl-C: core.trap_signals, core.untrap_signals,
 * core.signalled.
 *
 * The library never installs a handler (http.c); a program asks for this
 * one (the command line does, for the length of a command). The handler
 * records the first signal and, unless the program said it polls instead,
 * arms a count hook on the main Lua thread that raises "interrupted!" at
 * the next instruction, exactly as lua.c and luajit.c do for SIGINT: every
 * path that handles Ctrl-C (errors.is_interrupt) handles these too. A
 * signal also puts its own disposition back to the default, so the same
 * signal again ends the process as it normally would.
 *
 * Signals are process-wide, so this file holds the one piece of global
 * state the core has besides libcurl's init: the handlers in place before,
 * the Lua state to interrupt and the signal caught. */
#define _POSIX_C_SOURCE 200809L
#include "core.h"

#include <signal.h>
#include <string.h>

static const int trapped[] = {SIGINT, SIGTERM, SIGHUP};
#define NTRAPPED ((int)(sizeof trapped / sizeof trapped[0]))

static struct sigaction previous[NTRAPPED];
static int installed;
static lua_State *volatile trap_L;
static volatile sig_atomic_t caught;       /* the first signal caught, 0 for none */
static volatile sig_atomic_t raise_on = 1; /* raise at once, or only record it */

static void stop_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

static void on_signal(int sig) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    if (!caught) caught = sig;
    if (raise_on && trap_L)
        lua_sethook(trap_L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    }
    return "signal";
}

/* The thread the hook goes on: the main one (a hook is per thread in PUC
 * Lua; LuaJIT has one for the whole state). */
static lua_State *main_thread(lua_State *L) {
#if LUA_VERSION_NUM >= 502
    lua_State *m;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    m = lua_tothread(L, -1);
    lua_pop(L, 1);
    return m ? m : L;
#else
    return L;
#endif
}

/*** core.trap_signals([raise]) → true. Installs the handler for SIGINT,
 * SIGTERM and SIGHUP (the first call; it also forgets a signal caught
 * before) and sets what a signal does: `raise` true (the default) makes the
 * running Lua code raise "interrupted!" at its next instruction; false only
 * records it for core.signalled (a program that polls, to finish what is
 * in flight first). Called again while installed it only changes `raise`.
 * For programs (the command line), never for a library. */
static int l_trap_signals(lua_State *L) {
    struct sigaction sa;
    int i;
    raise_on = lua_isnoneornil(L, 1) ? 1 : lua_toboolean(L, 1);
    if (installed) {
        lua_pushboolean(L, 1);
        return 1;
    }
    trap_L = main_thread(L);
    caught = 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (i = 0; i < NTRAPPED; i++) sigaddset(&sa.sa_mask, trapped[i]);
    for (i = 0; i < NTRAPPED; i++) sigaction(trapped[i], &sa, &previous[i]);
    installed = 1;
    lua_pushboolean(L, 1);
    return 1;
}

/*** core.untrap_signals(): puts back the handlers that were in place
 * before core.trap_signals, and removes a hook armed and not yet run. The
 * signal caught stays readable (core.signalled). */
static int l_untrap_signals(lua_State *L) {
    int i;
    if (!installed) return 0;
    for (i = 0; i < NTRAPPED; i++) sigaction(trapped[i], &previous[i], NULL);
    installed = 0;
    if (trap_L && lua_gethook(trap_L) == stop_hook) lua_sethook(trap_L, NULL, 0, 0);
    trap_L = NULL;
    (void)L;
    return 0;
}

/*** core.signalled() → the number and name ("SIGTERM") of the first signal
 * caught since core.trap_signals, or nil. */
static int l_signalled(lua_State *L) {
    int sig = caught;
    if (!sig) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushinteger(L, sig);
    lua_pushstring(L, signal_name(sig));
    return 2;
}

void oo_signals_register(lua_State *L) {
    static const luaL_Reg funcs[] = {{"trap_signals", l_trap_signals},
                                     {"untrap_signals", l_untrap_signals},
                                     {"signalled", l_signalled},
                                     {NULL, NULL}};
    oo_setfuncs(L, funcs, 0);
}
