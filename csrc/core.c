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
    oo_encode_register(L);
    oo_http_register(L);
    oo_spool_register(L);
    oo_multi_register(L);
    oo_worker_register(L);
    oo_json_register(L);
    oo_text_register(L);
    oo_fs_register(L);
    oo_csv_register(L);
    return 1;
}
