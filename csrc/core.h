/* Each concern registers its functions into the module table (on top of the
 * stack) through oo_<part>_register; core.c only wires them together.
 * OO_PARTS is the one list of parts: adding a concern = a C file in
 * CMakeLists.txt's OO_SOURCES and its name here. */
#ifndef OO_CORE_H
#define OO_CORE_H

#include "compat.h"

#define OO_VERSION "0.2.0"

#define OO_PARTS(X)                                                                       \
    X(encode) X(http) X(spool) X(worker) X(json) X(text) X(fs) X(clock) X(classify)        \
    X(policy) X(metrics) X(sched) X(engine) X(hmac) X(jsonw) X(tz) X(csv) X(decode) X(signals) X(ledger)

#define OO_DECLARE_PART(name) void oo_##name##_register(lua_State *L);
OO_PARTS(OO_DECLARE_PART)
#undef OO_DECLARE_PART

#endif
