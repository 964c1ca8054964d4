/* The scheduler's Lua side (sched.h): the one reader of a delivery
 * configuration table, the one job reader, the one result shape, stats and
 * metrics — used by the scheduler object (core.sched_new, a Lua driver),
 * send_batch's engine (l_engine.c) and the queue's thread (l_worker.c). */
#ifndef OO_L_SCHED_H
#define OO_L_SCHED_H

#include "compat.h"
#include "ledger_sink.h"
#include "sched.h"

/* Reads the configuration table at idx (checked by the Lua options layer:
 * C trusts it) and sets up s (oo_sched_init):
 *   url = "...", channels = {{name =, token =, headers = {...}}, ...},
 *   concurrency, adaptive, initial_limit, on_stop = "drain" | "pause",
 *   auth_pause, report_all, report_retries, no_metrics, max_results,
 *   policy = {max_attempts, max_age, backoff_base, backoff_max,
 *   backoff_floor, retry_after_max}
 * Missing fields take oo_sched_defaults / oo_policy_defaults. Raises
 * without url/channels. The scheduler object (core.sched_new) also reads
 * max_pending, hooks = {feed, ack, retry, dead, release, record} (Lua
 * functions), random (the backoff's jitter source) and ledger,
 * ledger_host, ledger_site, ledger_window (the record hook writes every
 * job's end to that ledger: ledger_sink.h). */
void oo_sched_setup(lua_State *L, int idx, oo_sched *s);

/* Reads a job table at idx into *sp (strings point into the table's
 * values: use it before they can be collected):
 *   {id, body, channel = index (1), ref, method = "POST" | "DELETE", url,
 *    after_ref, after_ok, blob, created, store_id, attempts}
 * Raises on misuse (a DELETE without url, a channel out of range, ...). */
void oo_job_spec_read(lua_State *L, int idx, int nchan, oo_job_spec *sp);

/* The same from arguments: body, ref, channel at idx, idx + 1, idx + 2
 * and optionally a table of the other fields at idx + 3 — the queue's
 * push, one order at a time, needs no table of its own. */
void oo_job_spec_args(lua_State *L, int idx, int nchan, oo_job_spec *sp);

/* Pushes a job as the hooks and removals show it: {id, store_id, ref,
 * attempts, channel, channel_index, method, created, blob}. */
void oo_push_job_info(lua_State *L, const oo_sched *s, const oo_job *j);

/* Pushes the jobs oo_sched_remove_ref took out as an array of job infos
 * and frees them. */
void oo_push_removed(lua_State *L, const oo_sched *s, oo_job *list);

/* Pushes the list as an array of result tables and frees it. */
int oo_push_results(lua_State *L, const oo_sched *s, oo_result *list);

/* {queued, retrying, in_flight, sent, retried, throttled, dead, failed,
 *  pushed, removed, results_dropped, pending_results, limit, stopped,
 *  paused_for} */
void oo_push_sched_stats(lua_State *L, oo_sched *s);
void oo_push_sched_metrics(lua_State *L, oo_sched *s);
/* {written, errors, lost, waiting, error?} of a ledger sink. */
void oo_push_sink_stats(lua_State *L, oo_ledger_sink *k);

void oo_sched_register(lua_State *L);

#endif
