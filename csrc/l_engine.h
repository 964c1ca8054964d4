/* The engine's Lua glue shared by send_batch's engine object (l_engine.c)
 * and the queue's thread (worker.c). */
#ifndef OO_L_ENGINE_H
#define OO_L_ENGINE_H

#include "engine.h"

/* Reads the engine configuration table at idx (already checked by the Lua
 * options layer; raises on what slipped through):
 *   http = <http options>, url = "...", channels = {{name, token, headers}...},
 *   concurrency, adaptive, initial_limit, on_stop = "drain" | "pause",
 *   auth_pause, report_all, report_retries, no_metrics, max_results, policy = {max_attempts, max_age,
 *   backoff_base, backoff_max, backoff_floor, retry_after_max}
 * and sets up e (oo_engine_init). */
int oo_engine_setup(lua_State *L, int idx, oo_engine *e);
void oo_engine_read_cfg(lua_State *L, int idx, oo_engine_cfg *cfg, oo_policy *pol);

/* Pushes the list as an array of result tables and frees it. */
int oo_push_results(lua_State *L, const oo_engine *e, oo_result *list);

/* {queued, retrying, in_flight, sent, retried, dead, failed, pushed,
 *  results_dropped, pending_results, limit, stopped, paused_for} */
void oo_push_engine_stats(lua_State *L, oo_engine *e);
void oo_push_engine_metrics(lua_State *L, oo_engine *e);

void oo_engine_register(lua_State *L);

#endif
