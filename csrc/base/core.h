/* Each concern registers its functions into the module table (on top of the
 * stack) through oo_<part>_register; core.c only wires them together.
 * OO_PARTS is the one list of parts: adding a concern = a C file in
 * CMakeLists.txt's OO_SOURCES and its name here. */
#ifndef OO_CORE_H
#define OO_CORE_H

#include "compat.h"

#define OO_VERSION "0.2.0"

/* clang-format changes its own layout of this list on every run */
// clang-format off
#define OO_PARTS(X)                                                                  \
    X(encode) X(http) X(spool) X(worker) X(json) X(text) X(fs) X(clock) X(classify) \
    X(policy) X(metrics) X(sched) X(engine) X(hmac) X(jsonw) X(tz) X(csv) X(decode) \
    X(signals) X(ledger)
// clang-format on

/* The one shape of a runtime failure from C to Lua (as luv's luv_error):
 * oo_push_error pushes nil and an error table {kind, message [, status,
 * code, retryable, errno]} (the fields of optimizely.offline.errors; absent
 * ones left out) and returns 2. A binding may set fields of its own on the
 * table (at -1) before it returns, e.g. problems for a validation error;
 * the Lua layer gives it the errors' metatable where the error reaches the
 * user. Programmer errors raise instead (luaL_error). Multiple returns stay
 * only where a contract needs them (a transport's nil, kind, message). */
#define OO_ERR_UNSET (-1)
typedef struct oo_error {
    const char *kind;    /* required: "io", "validation", "storage", ... */
    const char *message; /* required: one line */
    int status;          /* HTTP status, 0: absent */
    const char *code;    /* NULL: absent */
    int retryable;       /* 0 / 1, OO_ERR_UNSET: absent */
    int sys_errno;       /* errno, 0: absent (the field "errno") */
} oo_error;

int oo_push_error(lua_State *L, const oo_error *e);

/* oo_push_error with a kind and a formatted message (lua_pushfstring's
 * formats), nothing else. */
int oo_push_errorf(lua_State *L, const char *kind, const char *fmt, ...);

#define OO_DECLARE_PART(name) void oo_##name##_register(lua_State *L);
OO_PARTS(OO_DECLARE_PART)
#undef OO_DECLARE_PART

#endif
