/* optimizely.offline.core: the C half of the library.
 * No global mutable state lives here; libcurl's one-time init is in http.c. */
#include "core.h"

#if defined(__GNUC__)
#define OO_EXPORT __attribute__((visibility("default")))
#else
#define OO_EXPORT
#endif

OO_EXPORT int luaopen_optimizely_offline_core(lua_State *L) {
    lua_newtable(L);
    lua_pushliteral(L, OO_VERSION);
    lua_setfield(L, -2, "VERSION");
#define OO_REGISTER_PART(name) oo_##name##_register(L);
    OO_PARTS(OO_REGISTER_PART)
#undef OO_REGISTER_PART
    return 1;
}
