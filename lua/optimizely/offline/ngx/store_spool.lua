--- The nginx queue's spool store: SQLite behind the scheduler's hooks.
-- A push writes the order to the spool (durable when `push` returns) and
-- hints the scheduler, which claims due rows under the queue's lease
-- (`feed`) as it has room for them; an answer acks the row, a retry puts
-- it back with its next time, a dead letter stays in the spool's dead
-- letters. Several workers (and processes) may share one file: leases make
-- sure a row is never sent by two of them at once.
--
-- At worker exit the rows claimed but not started go back at once; the
-- rows in flight keep their lease: their answer, if it comes before the
-- process ends, settles them (counted sent, or retried by the next worker).
-- Nothing is lost and nothing is unknown: what is not acked stays in the
-- file for the next worker.
-- @module optimizely.offline.ngx.store_spool
local ngx = ngx
local core = require("optimizely.offline.core")
local delivery = require("optimizely.offline.delivery")
local spool = require("optimizely.offline.spool")

local now, min = ngx.now, math.min

local M = {}

local Store = {}
Store.__index = Store

-- Workers start together and open one file: SQLite can answer "busy" at
-- once (without waiting busy_timeout) when two connections set WAL mode on
-- a new file, so a busy open is retried for up to ~2 s. init_worker cannot
-- yield; a short blocking wait there delays only this worker's start.
local function open(o, yieldable)
  local pause = yieldable and ngx.sleep or core.sleep
  local sopts = { max_orders = o.spool_max_orders, max_bytes = o.spool_max_bytes, max_age = o.max_age,
    on_full = o.spool_on_full, sync = o.spool_sync }
  local sp, err
  for i = 1, 40 do
    sp, err = spool.open(o.spool, sopts)
    if sp or err.kind ~= "busy" then break end
    pause(min(0.01 * i, 0.1))
  end
  return sp, err
end

--- Opens the spool of queue `q` (`q.o.spool`).
-- @param q the queue
-- @param yieldable true when the phase may yield (a busy file is waited for with ngx.sleep)
-- @param lease seconds a claimed row stays this worker's
-- @return the store | nil, err (the spool's kinds: "foreign", "storage", "busy")
function M.new(q, yieldable, lease)
  local sp, err = open(q.o, yieldable)
  if not sp then return nil, err end
  return setmetatable({ q = q, spool = sp, lease = lease, name = "spool" }, Store)
end

-- The error stored with a row: the outcome as an error object (redacted).
local function failure(q, job, rec)
  return delivery.failure(rec, nil, job.attempts, job.channel, q.st.secrets)
end

--- Claims up to `room` due rows and hands them to the scheduler.
-- @param room how many the scheduler can take
-- @return seconds until worth looking again
function Store:feed(room)
  local q = self.q
  local rows, err = self.spool:claim(room, self.lease)
  if not rows then
    q.report:storage_failed("claim", err)
    return q.o.flush_interval
  end
  local st, s = q.st, q.s
  for i = 1, #rows do
    local row = rows[i]
    local job = { id = row.id, store_id = row.id, body = row.body, ref = row.ref or "",
      channel = st.channel_index[row.channel or st.default_channel] or 1, attempts = row.attempts,
      created = row.created_at }
    if row.op == "cancel" then -- a cancel row: the DELETE of its refCode (the threaded queue's rule, worker.c)
      job.method, job.body = "DELETE", ""
      job.url = st.cancel_prefix .. core.url_segment(job.ref) .. st.cancel_suffix
    end
    s:take(job)
  end
  if #rows >= room then return 0 end
  local at = self.spool:next_due()
  if not at then return q.o.flush_interval end
  return min(q.o.flush_interval, at - now())
end

--- The scheduler's hooks into the spool (`feed`, `ack`, `retry`, `dead`,
-- `release`): a failed spool call is a `storage` event, never a stop.
-- @return the hooks table
function Store:hooks()
  local q, sp = self.q, self.spool
  local function check(what, ok, err)
    if not ok then q.report:storage_failed(what, err) end
  end
  return {
    feed = function(room) return self:feed(room) end,
    -- a lost lease: another worker may send it again (at-least-once)
    -- with the ledger on, the ack writes its row: "warned" when the answer had warnings
    ack = function(job, rec) check("ack", sp:ack(job.store_id, rec and rec.warned and "warned" or nil)) end,
    retry = function(job, next_at, rec)
      check("retry", sp:retry(job.store_id, next_at, failure(q, job, rec)))
      return true -- the row holds it (or, its lease lost, another worker does)
    end,
    -- an amend's DELETE: the new version behind it ends dead with it (spool:kill's
    -- dead letters), reported by the scheduler (l_sched.c) as the memory store's
    dead = function(job, rec)
      local ok, deps = sp:kill(job.store_id, failure(q, job, rec))
      check("kill", ok, deps)
      if ok and deps then return self:dead_jobs(deps) end
    end,
    release = function(job) check("release", sp:release(job.store_id)) end,
  }
end

--- The dead letters `spool:kill` made with a row (an amend's new version)
-- as the dead hook returns them to the scheduler: `{id, ref, channel =
-- index, attempts, message}` each.
-- @param deps the dead letters
-- @return the list
function Store:dead_jobs(deps)
  local st, out = self.q.st, {}
  for i, d in ipairs(deps) do
    out[i] = { id = d.id, ref = d.ref, attempts = d.attempts, message = d.message,
      channel = st.channel_index[d.channel or st.default_channel] or 1 }
  end
  return out
end

--- Orders pending against `max_queue`: the spool has its own bounds.
-- @return 0
function Store.pending() return 0 end

--- Writes a pushed order to the spool and hints the scheduler.
-- @param job `{body, ref}`
-- @param channel_name the order's channel
-- @return true | nil, err (kind "full" names the spool's bound)
function Store:put(job, channel_name)
  local id, err = self.spool:put(job.body, job.ref, nil, channel_name)
  if not id then return nil, err end
  if self.q.s then self.q.s:hint_feed() end
  return true
end

--- Writes an amend to the spool: the cancel of the refCode and the new
-- version (op "amend") in one transaction. The spool claims the new
-- version only once the cancel is acked; when the cancel ends dead the
-- new version ends dead with it, never posted (the `dead` hook).
-- @param job `{body, ref}` (the new version)
-- @param channel_name the order's channel
-- @return true | nil, err (kind "full" names the spool's bound)
function Store:put_amend(job, channel_name)
  local ids, err = self.spool:put_many({ { ref = job.ref, channel = channel_name, op = "cancel" },
    { body = job.body, ref = job.ref, channel = channel_name, op = "amend" } })
  if not ids then return nil, err end
  if self.q.s then self.q.s:hint_feed() end
  return true
end

--- Orders waiting in the file (not claimed by any worker), and its stats.
-- @return depth, spool stats | 0, nil, err
function Store:depth()
  local sp = self.spool
  if not sp:is_open() then return 0 end
  local sst, err = sp:stats()
  if not sst then return 0, nil, err end
  return math.max(0, sst.queued - sst.claimed), sst
end

--- Orders the file holds, whichever worker queued them (1 when its stats
-- cannot be read, so that flush does not claim success).
-- @return count
function Store:left()
  local sp = self.spool
  if not sp:is_open() then return 0 end
  local sst = sp:stats()
  return sst and sst.queued or 1
end

--- Are rows due in the file (another worker's included)? Hints the
-- scheduler when so.
-- @return boolean
function Store:has_due()
  local at = self.spool:is_open() and self.spool:next_due()
  if at and at <= now() + 0.001 then
    if self.q.s then self.q.s:hint_feed() end
    return true
  end
  return false
end

--- Nothing to hurry: the rows wait in the file for the next worker.
function Store.final() end

--- The grace ended: the rows claimed but not started go back to the file;
-- those in flight keep their lease until their answer settles them.
function Store:at_exit()
  self.q.s:drop_unstarted()
end

--- Pushes go on at exit: the row waits for the next worker.
-- @return false
function Store.refuses_at_exit() return false end

--- For the startup line.
-- @return text
function Store:describe() return "spool " .. self.q.o.spool end

--- Closes the file (the queue is closed and nothing is in flight).
function Store:close()
  if self.spool:is_open() then self.spool:close() end
end

M.Store = Store
return M
