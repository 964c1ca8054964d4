/* Strict RFC 8259 JSON decoder: core.json_decode(s [, max_depth]).
 * Returns the value, or nil plus "... at character N" (1-based byte offset);
 * bad input never raises. JSON null is lightuserdata NULL (cjson.null). */
#ifndef OO_JSON_H
#define OO_JSON_H

#include "compat.h"

#define OO_JSON_DEFAULT_DEPTH 64
#define OO_JSON_MAX_DEPTH 1000

/* Decodes s[0..len) and pushes one value (or nil + message: returns 2).
 * s[len] must be '\0' (Lua strings always are): it is the scan sentinel. */
int oo_json_decode(lua_State *L, const char *s, size_t len, int max_depth);

void oo_json_register(lua_State *L);

#endif
