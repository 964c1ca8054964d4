--- The delivery ledger of an nginx queue (issue 17): opened beside the
-- store, asked by `push`, and the queue's `cancel`. The decisions are the
-- ledger gate's (optimizely.offline.ledger_gate), as for every path; this
-- module only wires them to the nginx queue's store and scheduler.
--
-- With the spool store the ledger lives in the spool's file (`ledger =
-- true`): each ack writes its row in the ack's transaction. With the
-- memory or shared-dict store it is a file (`ledger = "path"`, or `true`
-- for `ledger.default_path()`), written by the scheduler's record hook in
-- the delivering process, at the latest every `flush_interval`. Every
-- worker asks the same file on push (SQLite: short blocking calls, no
-- yield, so push still works in log_by_lua).
-- @module optimizely.offline.ngx.ledger
local core = require("optimizely.offline.core")
local gate = require("optimizely.offline.ledger_gate")

local M = {}

--- Opens the queue's ledger into `q.gate` (nothing without `opts.ledger`).
-- @param q the queue (its store opened)
-- @return true | nil, err (kind "storage" naming the file, code "foreign" for a file that is not a ledger; or "busy")
function M.open(q)
  local o, st = q.o, q.st
  if not o.ledger then return true end
  local sp = q.store.name == "spool" and q.store.spool or nil
  local L, err = gate.open(o, sp, { host = gate.host(st), site = st.site, channel = st.default_channel })
  if not L then return nil, gate.unusable(err) end
  q.gate = gate.new(st, L, o.max_age + 86400)
  return true
end

--- Asks the ledger about one order and reserves it.
-- @param q the queue
-- @param item `{body =, ref =, channel = name}`
-- @param po the push options (`force`, `amend`) or nil
-- @return "post" or "amend" | "done" and what push returns (the skipped
--   result | nil, err of kind "changed" or the ledger's)
function M.admit(q, item, po)
  if po and po.amend and q.store.name == "shm" then
    error("optimizely.offline.ngx.queue: push: amend is not supported with opts.shm (the shared dict's list"
      .. " could not hold the new version back behind a refused DELETE); use the memory store or opts.spool", 4)
  end
  local d, err = q.gate:admit({ item }, po)
  if not d then return "done", q:refuse(gate.unusable(err)) end
  local action, x = d[1][1], d[1][2]
  if action == "post" or action == "amend" then return action end
  if action == "skip" then
    q.report.meter:skipped(x.reason)
  else
    q.report.meter:changed()
  end
  return "done", gate.outcome(action, x, q.ledger_counts, q.events)
end

--- A job of the queue's: the next id, with the fields given.
local function job(q, t)
  q.ids = q.ids + 1
  t.id, t.created = q.ids, os.time()
  return t
end

--- Puts an amend in the store: the DELETE of the refCode, then the new
-- version, posted only once the DELETE is accepted (the memory store:
-- after_ok; the spool: a cancel row and an "amend" row in one
-- transaction, see optimizely.offline.ngx.store_spool).
-- @param q the queue
-- @param json the new version's body
-- @param ref its refCode
-- @param ch the channel's index
-- @return true | nil, err ("full", or the spool's error)
function M.put_amend(q, json, ref, ch)
  if q.store.put_amend then return q.store:put_amend({ body = json, ref = ref }, q.st.channels[ch].name) end
  local s = q.s
  if not s:add(job(q, { method = "DELETE", url = q.gate:cancel_url(ref), ref = ref, channel = ch, body = "",
    after_ref = true })) then
    return nil, "full"
  end
  if not s:add(job(q, { body = json, ref = ref, channel = ch, after_ok = true })) then
    s:remove_ref(ref, "DELETE") -- no DELETE without its new version
    return nil, "full"
  end
  return true
end

-- The creates of `ref` the scheduler holds unsent, taken out (a spool's
-- rows given back for `cancel_queued`): how many, and whether one was
-- tried or is in flight.
local function take_unsent(q, ref)
  local removed, flying = q.s:remove_ref(ref, "POST")
  local tried = flying
  local sp = q.store.name == "spool" and q.store.spool or nil
  for _, j in ipairs(removed) do
    if (j.attempts or 0) > 0 then tried = true end
    if j.store_id and sp then sp:release(j.store_id) end
  end
  return #removed, tried
end

--- `q:cancel(ref, co)` (see optimizely.offline.ngx.queue).
-- @param q the queue
-- @param ref the refCode (checked)
-- @param ch the channel's index
-- @return `{ok = true, removed = n, queued = true | nil, attempts = 0}` | nil, err
function M.cancel(q, ref, ch)
  local name = q.st.channels[ch].name
  local n, must_send = take_unsent(q, ref)
  must_send = must_send or n == 0
  local sp = q.store.name == "spool" and q.store.spool or nil
  if sp then
    local r, err = sp:cancel_queued(ref, name)
    if not r then return q:refuse(err) end
    n = r.removed
    must_send = r.in_flight > 0 or r.seen or r.removed == 0 or (must_send and n == 0)
  elseif not must_send and q.gate then
    local ok, err = q.gate:record({ { ref = ref, channel = name, outcome = "cancelled" } })
    if not ok then return q:refuse(gate.unusable(err)) end
  end
  for _ = 1, n do q.report:bump("dropped", "cancelled") end
  if not must_send then return { ok = true, removed = n, attempts = 0 } end
  if sp then
    local id, err = sp:put_cancel(ref, name)
    if not id then return q:refuse(err) end
  elseif not q.s:add(job(q, { method = "DELETE", ref = ref, channel = ch, body = "", after_ref = true,
    url = q.st.cancel_prefix .. core.url_segment(ref) .. q.st.cancel_suffix })) then
    return q:refuse(q:full_error(q.store:pending()))
  end
  if q.flusher then q.flusher:kick() end
  return { ok = true, removed = n, queued = true, attempts = 0 }
end

--- Writes the outcomes the scheduler's record hook noted (memory and shm
-- stores: the spool writes its own in the acks); a failure is a `storage`
-- event. Every `flush_interval`, and by `flush`.
-- @param q the queue
-- @return true | nil, err
function M.flush(q)
  if not (q.gate and q.s) or q.store.name == "spool" then return true end
  local ok, err = q.s:flush_ledger()
  if ok then return true end
  err = gate.unusable(err)
  q.report:storage_failed("ledger", err)
  return nil, err
end

return M
