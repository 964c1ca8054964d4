/* Strict RFC 8259 JSON decoder: core.json_decode(s [, max_depth [, max_values]]).
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

/* oo_json_decode with a cap on the values (objects, arrays and scalars
 * alike) one text may hold, so the memory of a hostile line stays bounded
 * (0: no cap). */
int oo_json_decode_capped(lua_State *L, const char *s, size_t len, int max_depth, long max_values);

/* The response envelope, read without a Lua state (the delivery thread
 * classifies responses too): one strict walk of the body with the
 * decoder's grammar, tolerating only the docs' trailing comma
 * (`{"status":"OK",}`), that keeps the TOP-LEVEL `status` and the first
 * items of the top-level `errors` and `warnings` arrays. Strings are
 * unescaped into `arena` (cut short when it is full). */
#define OO_ENV_ITEMS 16
#define OO_ENV_ARENA 4096

typedef struct oo_env_item {
    const char *code;    /* NULL when absent */
    const char *message; /* NULL when absent */
} oo_env_item;

typedef struct oo_envelope {
    int object;          /* the body is one JSON object */
    const char *status;  /* the top-level "status" when it is a string, else NULL */
    int status_present;  /* a top-level "status" of any type */
    int nerrors;         /* items in "errors" (only the first OO_ENV_ITEMS are kept) */
    int nwarnings;       /* items in "warnings" */
    oo_env_item errors[OO_ENV_ITEMS];
    const char *warnings[OO_ENV_ITEMS];
    size_t used;
    char arena[OO_ENV_ARENA];
} oo_envelope;

/* Reads s[0..len) (s[len] must be '\0'). Returns env->object: 1 when the
 * body is a JSON object, 0 when it is empty, not JSON or another value. */
int oo_json_envelope(const char *s, size_t len, oo_envelope *env);

void oo_json_register(lua_State *L);

#endif
