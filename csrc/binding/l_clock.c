/* The clocks' Lua side (clock.h) and the small OS helpers Lua needs:
 * core.now, core.wall_now, core.sleep, core.getpid, core.thread_cputime. */
#define _POSIX_C_SOURCE 200809L
#include "clock.h"
#include "core.h"

#include <errno.h>
#include <time.h>

/*** core.now() → monotonic seconds (for durations, not dates). */
static int l_now(lua_State *L) {
    lua_pushnumber(L, (lua_Number)oo_mono_now());
    return 1;
}

/*** core.sleep(seconds): blocks the calling OS thread (not for nginx). */
static int l_sleep(lua_State *L) {
    lua_Number s = luaL_checknumber(L, 1);
    struct timespec ts, rem;
    if (!(s >= 0) || s > 86400.0 * 365) return luaL_argerror(L, 1, "seconds out of range");
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_nsec = 999999999L;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
    return 0;
}

/*** core.wall_now() (also core.spool_now: the spool's time base) → wall-clock
 * epoch seconds, for what is stored or compared across processes. */
static int l_wall_now(lua_State *L) {
    lua_pushnumber(L, (lua_Number)oo_wall_now());
    return 1;
}

/*** core.thread_cputime() → CPU seconds of the calling thread (benchmarks:
 * the cost of a push without the delivery thread's own work). */
static int l_thread_cputime(lua_State *L) {
    lua_pushnumber(L, (lua_Number)oo_thread_cputime());
    return 1;
}

/*** core.getpid() → the process id (a queue notices a fork by it). */
static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)oo_getpid());
    return 1;
}

void oo_clock_register(lua_State *L) {
    static const luaL_Reg funcs[] = {{"now", l_now},
                                     {"wall_now", l_wall_now},
                                     {"spool_now", l_wall_now},
                                     {"sleep", l_sleep},
                                     {"thread_cputime", l_thread_cputime},
                                     {"getpid", l_getpid},
                                     {NULL, NULL}};
    oo_setfuncs(L, funcs, 0);
}
