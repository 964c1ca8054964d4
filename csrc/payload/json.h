/* Strict RFC 8259 JSON decoder: core.json_decode(s [, max_depth [, max_values]]).
 * Returns the value, or nil plus "... at character N" (1-based byte offset);
 * bad input never raises. JSON null is lightuserdata NULL (cjson.null).
 * The walks without a Lua state are json_walk.h. */
#ifndef OO_JSON_H
#define OO_JSON_H

#include "compat.h"
#include "json_walk.h"

#define OO_JSON_DEFAULT_DEPTH 64
#define OO_JSON_MAX_DEPTH 1000

/* Decodes s[0..len) and pushes one value (or nil + message: returns 2).
 * s[len] must be '\0' (Lua strings always are): it is the scan sentinel. */
int oo_json_decode(lua_State *L, const char *s, size_t len, int max_depth);

/* oo_json_decode with a cap on the values (objects, arrays and scalars
 * alike) one text may hold, so the memory of a hostile line stays bounded
 * (0: no cap). */
int oo_json_decode_capped(lua_State *L, const char *s, size_t len, int max_depth, long max_values);

void oo_json_register(lua_State *L);

#endif
