--- The ledger at the door of delivery: what `client:send`,
-- `client:send_encoded`, `client:send_batch` and both queues do with the
-- `ledger` option (optimizely.offline.ledger keeps the rows; this module
-- decides, once, for every path).
--
-- **The option.** `ledger = true | "path" | a ledger object`:
-- `true` with a spool puts the ledger in the spool's file (every ack
-- writes its row in the ack's transaction); `true` without a spool opens
-- `ledger.default_path()`, the file the command line uses; a path opens
-- that file; an object (`ledger.open`, `ledger.of_spool`) is used as it
-- is and stays the caller's. `ledger_keep` (days, default 200) and
-- `ledger_store_key` (the `order.attributes` key of the store, default
-- "store") go with a path or `true`. Off by default.
--
-- **Per order** (`M.decide`), before anything is sent, the ledger is asked
-- under (the endpoint's host, the site, the order's channel, its refCode),
-- and the order is reserved for this run in the same transaction:
--
-- | the ledger has | result | counted |
-- |---|---|---|
-- | nothing (or a dead row) | sent, then recorded as sent / warned / dead | — |
-- | the same bytes, sent or warned | skipped "already sent" (not an error) | `skipped{reason="already_sent"}` |
-- | another version, sent or warned | not sent: `nil, err` kind "changed" | `changed` |
-- | a cancel of it | not sent: kind "changed", the message says it was cancelled | `changed` |
-- | a live run's reservation | skipped "already in flight" | `skipped{reason="in_flight"}` |
--
-- `force = true` sends it anyway (the record replaces the row);
-- `amend = true` sends the DELETE of the refCode first, then the new
-- version, which is posted only once the endpoint accepted the DELETE (a
-- refused DELETE fails the order, nothing is posted). An amend of a
-- cancelled order posts it again (no DELETE: nothing to cancel); an amend
-- of the same bytes is skipped "already sent". Neither overrides a
-- reservation another live run holds.
-- @module optimizely.offline.ledger_gate
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local ledger = require("optimizely.offline.ledger")
local delivery = require("optimizely.offline.delivery")

local M = {}

--- The `ledger` option's check: true, false, a non-empty path or a
-- ledger object.
-- @param v the option's value
-- @return true | nil, message
-- @local
local function check_ledger(v)
  if v == true or v == false then return true end
  if type(v) == "string" then
    if v == "" then return nil, "must not be an empty path" end
    return true
  end
  if getmetatable(v) == ledger.Ledger then return true end
  return nil, "must be true, a file path or a ledger object (optimizely.offline.ledger.open), got " .. type(v)
end

--- The ledger options every entry point shares (send_batch, the queues,
-- `client:send`): one vocabulary, added to each schema.
-- @table fields
-- @field ledger `true` (the spool's file, else `ledger.default_path()`), a file path, or a
--   ledger object (kept open: the caller's); `false`/nil: no ledger
-- @field ledger_keep days a row is kept (default 200), with `true` or a path
-- @field ledger_store_key the `order.attributes` key of the store (default "store"), with
--   `true` or a path
M.fields = {
  ledger = { type = "any", check = check_ledger },
  ledger_keep = { type = "integer", min = 1, max = 36500, requires = "ledger" },
  ledger_store_key = { type = "string", nonempty = true, requires = "ledger" },
}

--- The `force` option's check: not with `amend`.
-- @param v the value of `force`
-- @param all every option given
-- @return true | nil, message
-- @local
function M.force_alone(v, all)
  if v and all.amend then return nil, "and amend are exclusive: give one of them" end
  return true
end

--- The options of one send, batch or push with a ledger.
-- @table call_fields
-- @field force send it even when the ledger has it (sent, changed or cancelled)
-- @field amend when the ledger has another version: DELETE it, then POST this one
M.call_fields = {
  force = { type = "boolean", check = M.force_alone },
  amend = { type = "boolean" },
}

--- Adds `fields` (and `call_fields` when `with_call`) to a schema's field
-- table.
-- @param t a field table
-- @param with_call also `force` and `amend`
-- @return t
function M.add_fields(t, with_call)
  for k, v in pairs(M.fields) do t[k] = v end
  if with_call then
    for k, v in pairs(M.call_fields) do t[k] = v end
  end
  return t
end

--- Reservations last this long (seconds) for a send or a batch: longer
-- than any order's retries take. A reservation whose process died counts
-- as gone at once (optimizely.offline.ledger), so a long lease costs a
-- rerun nothing.
M.LEASE = 6 * 3600

--- The ledger an option names: opened, or reused from `cache` (a
-- client's, by path), or the object given.
-- @param o options with `ledger`, `ledger_keep`, `ledger_store_key`
-- @param spool an open spool (`ledger = true` puts it there), or nil
-- @param meta `{host =, site =, channel =}` for a spool's ledger
-- @param cache a table of ledgers by path to reuse and fill, or nil
-- @return ledger, owned (true when this call opened it: the caller closes
--   it) | nil (no ledger) | nil, err (kind "storage" or "foreign": naming
--   the file)
function M.open(o, spool, meta, cache)
  local v = o.ledger
  if v == nil or v == false then return nil end
  if type(v) == "table" then
    if not v:is_open() then error("optimizely.offline: opts.ledger is closed", 4) end
    return v, false
  end
  local lo = { keep = o.ledger_keep, store_key = o.ledger_store_key }
  if v == true and spool then
    return ledger.of_spool(spool, { host = meta.host, site = meta.site, channel = meta.channel,
      keep = lo.keep, store_key = lo.store_key })
  end
  local path = v ~= true and v or nil
  local key = (path or "") .. "\0" .. tostring(lo.keep) .. "\0" .. tostring(lo.store_key)
  local L = cache and cache[key]
  if L and L:is_open() then return L, false end
  local err
  L, err = ledger.open(path, lo)
  if not L then return nil, err end
  if cache then
    cache[key] = L
    return L, false
  end
  return L, true
end

--- The scope's host of a delivery context (the ledger's first key part).
-- @param st the client's delivery context
-- @return the host (with its port unless 443)
function M.host(st)
  return ledger.scope(st.post_url, st.site, "-").host
end

local Gate = {}
Gate.__index = Gate

--- A gate: a ledger as one delivery path uses it.
-- @param st the client's delivery context
-- @param L the ledger
-- @param lease seconds a reservation lasts (default `M.LEASE`)
-- @return the gate
function M.new(st, L, lease)
  return setmetatable({ st = st, L = L, host = M.host(st), site = st.site, lease = lease or M.LEASE }, Gate)
end

--- The scheduler's configuration fields that make its record hook write
-- to this ledger (csrc/delivery/ledger_sink.c): added to a `sched.config` table.
-- @param cfg the scheduler's configuration
-- @param window seconds a note may wait before it is written (nil: the default 0.02)
-- @return cfg
function Gate:configure(cfg, window)
  cfg.ledger, cfg.ledger_host, cfg.ledger_site, cfg.ledger_window = self.L.handle, self.host, self.site, window
  return cfg
end

--- The URL of the DELETE of a refCode (the client's cancel path).
-- @param ref the refCode
-- @return the URL
function Gate:cancel_url(ref)
  local st = self.st
  return st.cancel_prefix .. core.url_segment(ref) .. st.cancel_suffix
end

--- What to do with one order, given the ledger's answer.
-- @param ans the answer of `reserve` (forced when `call.force` or `call.amend`)
-- @param call `{force =, amend =}` (or nil)
-- @param channel the order's channel name
-- @param ref its refCode
-- @return "post" (send it), "amend" (DELETE, then POST), "skip", res (the
--   skipped result; `release` when the reservation must go back), or
--   "refuse", err (kind "changed")
function M.decide(ans, call, channel, ref)
  local state = ans.state
  if state == "reserved" then return "post" end
  if state == "in_flight" then return "skip", delivery.skipped("in_flight", ans, channel, ref) end
  local cancelled = ans.outcome == "cancelled"
  if ans.reserved then -- forced: the ledger has it, and we hold it now
    if call.force or (call.amend and cancelled) then return "post" end
    if state == "changed" then return "amend" end
    local res = delivery.skipped("already_sent", ans, channel, ref) -- an amend of the same bytes
    res.release = true
    return "skip", res
  end
  if state == "same" and not cancelled then return "skip", delivery.skipped("already_sent", ans, channel, ref) end
  return "refuse", delivery.changed(ans, channel, ref)
end

--- Looks a batch of orders up and reserves those to send (one
-- transaction); decides each (`M.decide`) and gives back, in the same
-- transaction's spirit, the reservations of the orders skipped after all.
-- @param items `{{body =, channel = name, ref =}, ...}`
-- @param call `{force =, amend =}` for all of them (or nil)
-- @return a list of `{action, res_or_err}` beside `items` | nil, err (the
--   ledger failed: kind "storage" or "busy", naming the file; nothing was
--   reserved)
function Gate:admit(items, call)
  local answers, err = self.L:reserve(self:scope(items), self:reserve_list(items, call), { lease = self.lease })
  if not answers then return nil, err end
  return self:decide_all(items, answers, call)
end

--- The scope of a batch of items (its first item's channel; each item
-- names its own).
-- @param items `{{channel =}, ...}`
-- @return the scope
function Gate:scope(items)
  return { host = self.host, site = self.site, channel = items[1].channel }
end

--- The list `reserve` takes for `items` (forced with `call.force` or
-- `call.amend`).
-- @param items `{{body =, channel =}, ...}`
-- @param call `{force =, amend =}` or nil
-- @return the list
function Gate:reserve_list(items, call)
  local forced = call and (call.force or call.amend) or nil
  local list, n, chan = {}, #items, items[1] and items[1].channel
  -- the usual batch (one channel, nothing forced): the bodies themselves,
  -- no table per order (the scope names the channel)
  local plain = not forced
  for i = 1, n do
    local it = items[i]
    if it.channel ~= chan then plain = false end
    list[i] = it.body
  end
  if plain then return list end
  for i = 1, n do list[i] = { body = items[i].body, channel = items[i].channel, force = forced } end
  return list
end

--- Decides each item by its answer (`M.decide`) and gives back the
-- reservations of those skipped after all (an amend of the same bytes).
-- @param items `{{body =, channel =, ref =}, ...}`
-- @param answers the answers of `reserve` beside them
-- @param call `{force =, amend =}` or nil
-- @return a list of `{action, res_or_err}` beside `items`
function Gate:decide_all(items, answers, call)
  local out = {}
  self:decide_each(items, answers, call, function(i, action, x) out[i] = { action, x } end)
  return out
end

--- Decides each item by its answer (`M.decide`), calling
-- `fn(i, action, res_or_err)` in order, and gives back the reservations of
-- those skipped after all (an amend of the same bytes). No table per
-- order: the path every batch of `send_batch` takes.
-- @param items `{{body =, channel =, ref =}, ...}`
-- @param answers the answers of `reserve` beside them
-- @param call `{force =, amend =}` or nil
-- @param fn called with (i, action, res_or_err, answer)
-- @param bare an order plainly sent before (the same bytes, not cancelled,
--   not forced) gets no result table: `fn(i, "skip", nil, answer)` (a run
--   again on a sent file skips every order: the caller builds a result
--   only if someone asks for one)
function Gate:decide_each(items, answers, call, fn, bare)
  call = call or {}
  local back = nil
  for i = 1, #answers do
    local ans, it = answers[i], items[i]
    local state = ans.state
    if state == "reserved" then -- the common case: ours to send
      fn(i, "post")
    elseif bare and state == "same" and not ans.reserved and ans.outcome ~= "cancelled" then
      fn(i, "skip", nil, ans) -- already sent (M.decide's "already_sent")
    else
      local action, x = M.decide(ans, call, it.channel, it.ref)
      if x and x.release then
        x.release = nil
        back = back or {}
        back[#back + 1] = { body = it.body, channel = it.channel }
      end
      fn(i, action, x)
    end
  end
  if back then self:release(back) end
end

--- Gives reservations back (orders not sent after all: stopped,
-- interrupted, removed). Best effort: a failure only leaves them to
-- expire (or to be taken over once this process is gone).
-- @param items `{{body =, channel =} | {ref =, channel =}, ...}`
-- @return true | nil, err
function Gate:release(items)
  if #items == 0 then return true end
  return self.L:release({ host = self.host, site = self.site, channel = items[1].channel }, items)
end

--- Records outcomes now (the synchronous path; the other paths record
-- through the scheduler's hook).
-- @param items `{{body =, channel =, outcome =} | {ref =, channel =, outcome = "cancelled"}, ...}`
-- @return true | nil, err
function Gate:record(items)
  if #items == 0 then return true end
  return self.L:record({ host = self.host, site = self.site, channel = items[1].channel }, items)
end

--- Counts and tells an order the ledger would not let a queue take:
-- skipped (`res`, not an error) or refused as changed (`err`). Both
-- queues' shape: `stats().skipped[reason]`, `stats().changed`, the
-- metrics' `skipped` and `changed`, an on_event `skipped` or `changed`.
-- @param action "skip" or "refuse" (`M.decide`'s)
-- @param x the skipped result or the changed error
-- @param counts the queue's counts (`skipped = {}`, `changed`)
-- @param ev the queue's events (optimizely.offline.events)
-- @return res | nil, err
function M.outcome(action, x, counts, ev)
  if action == "skip" then
    counts.skipped[x.reason] = (counts.skipped[x.reason] or 0) + 1
    ev:emit("skipped", { ref = x.ref, reason = x.reason, at = x.at })
    return x
  end
  counts.changed = counts.changed + 1
  ev:emit("changed", { ref = x.ref, at = x.at, outcome = x.outcome, error = x })
  return nil, x
end

--- The error of an unusable ledger as a delivery path returns it: kind
-- `"storage"` naming the file (a file that is not a ledger: `code =
-- "foreign"`, as `ledger.open`'s kind), or `"busy"` (retryable: another
-- process held the lock past `busy_timeout`), with `attempts = 0` (nothing
-- was sent).
-- @param err the ledger's error
-- @return err
function M.unusable(err)
  if type(err) ~= "table" then
    return errors.new({ kind = "storage", attempts = 0, message = "ledger: " .. tostring(err) })
  end
  if err.kind == "foreign" then err.kind, err.code = "storage", err.code or "foreign" end
  err.kind, err.attempts = err.kind or "storage", 0
  if errors.is(err) then return err end
  return errors.new(err) -- the C core's {kind, message, ...} (core.h: oo_push_error)
end

M.Gate = Gate
return M
