/* The libcurl engine's Lua side: a scheduler (sched.h) driven by the
 * libcurl driver (driver_curl.h) — send_batch's engine object driven from
 * the calling thread (core.engine_new), and the queue's thread (l_worker.c),
 * which sets it up the same way. */
#ifndef OO_L_ENGINE_H
#define OO_L_ENGINE_H

#include "engine.h"
#include "l_sched.h"
#include "ledger_sink.h"

/* Reads the configuration table at idx — the scheduler's (l_sched.h) plus
 * http = <http options> (core.http_new's) — and sets up the scheduler and
 * the driver; each channel's headers get the User-Agent line unless they
 * carry their own. Raises; after a raise e needs no freeing. */
void oo_engine_setup(lua_State *L, int idx, oo_engine *e);

/* With cfg.ledger (a ledger userdata, retained) and cfg.ledger_host,
 * cfg.ledger_site at idx: every job's end is recorded in it through the
 * record hook (ledger_sink.h), which this installs as the scheduler's only
 * hook (a store with hooks of its own — the spool — records itself).
 * Returns 1 when a ledger was set up, else 0. Raises on misuse. */
int oo_engine_ledger(lua_State *L, int idx, oo_engine *e);

void oo_engine_register(lua_State *L);

#endif
