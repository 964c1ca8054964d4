/* Each concern registers its functions into the module table (on top of the
 * stack) through one of these; core.c only wires them together. */
#ifndef OO_CORE_H
#define OO_CORE_H

#include "compat.h"

#define OO_VERSION "0.1.0"

void oo_encode_register(lua_State *L);
void oo_http_register(lua_State *L);
void oo_spool_register(lua_State *L);
void oo_multi_register(lua_State *L);
void oo_worker_register(lua_State *L);
void oo_json_register(lua_State *L);
void oo_text_register(lua_State *L);
void oo_fs_register(lua_State *L);
void oo_csv_register(lua_State *L);

#endif
