/* Time zones (tz.c) for other parts of the core: the ledger's reports
 * group orders by the day they were made in a zone the user names. */
#ifndef OO_TZ_H
#define OO_TZ_H

#include "compat.h"

struct tz_zone;

/* The zone in the userdata at idx (core.tz_load's); raises if it is not one. */
const struct tz_zone *oo_tz_check(lua_State *L, int idx);
/* Seconds east of UTC in effect at instant t (epoch seconds). */
long oo_tz_offset(const struct tz_zone *z, long long t);

#endif
