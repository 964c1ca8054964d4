/* The one error helper (core.h: oo_push_error): every binding that returns
 * a runtime failure to Lua pushes it here, so the shape is decided once. */
#include "core.h"

#include <stdarg.h>

/* nil, then the table with its kind (the message is set by the caller). */
static void push_head(lua_State *L, const char *kind, int nrec) {
    lua_pushnil(L);
    lua_createtable(L, 0, nrec);
    oo_set_str(L, "kind", kind ? kind : "internal");
}

int oo_push_error(lua_State *L, const oo_error *e) {
    push_head(L, e->kind, 6);
    oo_set_str(L, "message", e->message ? e->message : "unknown error");
    if (e->status) oo_set_int(L, "status", e->status);
    if (e->code) oo_set_str(L, "code", e->code);
    if (e->retryable != OO_ERR_UNSET) oo_set_bool(L, "retryable", e->retryable);
    if (e->sys_errno) oo_set_int(L, "errno", e->sys_errno);
    return 2;
}

int oo_push_errorf(lua_State *L, const char *kind, const char *fmt, ...) {
    va_list ap;
    push_head(L, kind, 2);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_setfield(L, -2, "message");
    return 2;
}
