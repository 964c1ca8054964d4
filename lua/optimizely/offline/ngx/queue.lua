--- The nginx engine: a per-worker delivery queue inside nginx. Push in any
-- phase, deliver from timers over the cosocket transport.
--
--     -- init_worker_by_lua_block (one queue per worker):
--     Q = require("optimizely.offline.ngx").queue(
--       { site = "demo", token = TOKEN, channel = "store" },
--       { spool = "/var/spool/oo/orders.db", on_failure = function(ref, err) ... end })
--     -- any phase, log_by_lua included:
--     local ok, err = Q:push(payload)
--
-- The same semantics as the threaded queue (optimizely.offline.queue): the
-- same options (`queue.common`), the same `push` return, the same `stats()`
-- keys, and every decision from the one classifier and policy in the C
-- core (optimizely.offline.delivery, retry): a retryable failure waits its
-- backoff, without an attempt limit unless `max_attempts` asks, until the
-- order is `max_age` old; a 429 pauses the whole queue and halves the
-- senders in flight; refused credentials pause it until one order, every
-- `auth_pause` seconds, gets through.
--
-- `push` validates and encodes at once, then only appends the bytes to a
-- Lua ring buffer (or, with a spool, writes them to SQLite: durable when
-- push returns) and wakes an idle sender (a semaphore post) or starts a
-- flush with `ngx.timer.at(0)`. No network I/O and no yielding, so it works
-- in log_by_lua.
--
-- Delivery: ONE flush in flight per worker; it runs `concurrency` light
-- threads, each taking orders and making one attempt at a time. A sender
-- with nothing to do lingers a second for the next push, so a steady
-- trickle costs no timer per order. A periodic timer (`flush_interval`)
-- hands due retries (and, with a spool, due rows of any worker) to the
-- senders.
--
-- Worker exit (reload, stop): the periodic timer runs prematurely and makes
-- a final attempt within `shutdown_timeout`: without a spool for every
-- order in memory, retries not yet due included, and what still fails —
-- or is still in flight when the grace ends (tracked while it is) — is
-- reported: logged with its refCode, counted as `dropped.shutdown`,
-- passed to on_failure with kind "shutdown" (an answer that comes later is
-- logged too); with a spool the rows stay on disk for the next worker
-- (leases make sharing one file safe). nginx does not tell Lua its
-- `worker_shutdown_timeout`: keep `shutdown_timeout` below it.
--
-- Observability: `metrics()` (this worker), `metrics_shm` (every worker's
-- counts in one lua_shared_dict, surviving reloads), `on_event` and
-- `logger` (default `ngx.log`, rate-limited), one startup line naming the
-- URL and channels (optimizely.offline.events, doc/topics/operating.md).
--
-- Shared mode (`opts.shm`): pushes append "attempts, ref, channel, json" to
-- a list in a lua_shared_dict (bounded by max_queue and the dict's size,
-- kind "full") and never start a timer; only the deliverer process runs
-- the machinery above, fed from the list by a poll timer.
-- @module optimizely.offline.ngx.queue
local ngx = ngx
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")
local delivery = require("optimizely.offline.delivery")
local common = require("optimizely.offline.queue").common
local transport = require("optimizely.offline.ngx.transport")
local events = require("optimizely.offline.events")
local metrics = require("optimizely.offline.metrics")
local semaphore = require("ngx.semaphore")
local waiting = require("optimizely.offline.ngx.wait")

local now, update_time, log, ERR, WARN = ngx.now, ngx.update_time, errors.logger(ngx.log), ngx.ERR, ngx.WARN
local timer_at, spawn, wait = ngx.timer.at, ngx.thread.spawn, ngx.thread.wait
local max, min, floor = math.max, math.min, math.floor

local M = {}

local fields = {}
for k, v in pairs(common) do fields[k] = v end
fields.flush_interval = { type = "number", min = 0.01, max = 3600, default = 1 }
fields.shutdown_timeout = { type = "number", min = 0, max = 3600, default = 3 }
fields.transport = { type = "table" }
fields.shm = { type = "string", nonempty = true }
fields.deliverer = { type = "any" }
fields.poll_interval = { type = "number", min = 0.001, max = 60, default = 0.02, requires = "shm" }
fields.metrics_shm = { type = "string", nonempty = true }

--- The nginx queue's options: the shared vocabulary plus `flush_interval`,
-- `shutdown_timeout`, `transport` (cosocket transport options), `shm`,
-- `deliverer`, `poll_interval`, `metrics_shm` (a `lua_shared_dict` every
-- worker adds its metrics to, every `flush_interval` and at exit: it
-- outlives reloads; `optimizely.offline.metrics.prometheus(ngx.shared[name])`
-- reads it).
M.schema = opts.schema("optimizely.offline.ngx.queue", "opts", fields)

local YIELDABLE = waiting.YIELDABLE

local Queue = {}
Queue.__index = Queue

-- ------------------------------------------------------------ counting

-- Shared mode: the list and the counters live in the dict so that stats()
-- means the same in every worker.
local LIST, HELD, INFLIGHT = "q", "c:held", "c:in_flight"

--- Adds one to a counter of `stats()`: `counters[key]`, or with `sub`
-- `counters[key][sub]` (`dropped.shutdown`, say). In shared mode the dict's
-- copy too, so that every worker's `stats()` says the same.
-- @param key the counter
-- @param sub the sub-key, or nil
-- @local
function Queue:bump(key, sub)
  local st = self.counters
  if sub then st[key][sub] = (st[key][sub] or 0) + 1 else st[key] = st[key] + 1 end
  local shm = self.shm
  if shm then shm:incr("c:" .. key .. (sub and ("." .. sub) or ""), 1, 0) end
end

--- Calls the user's callback `opts[name]`, protected: a raise is counted
-- in `callback_errors` and logged, and never breaks delivery (Ctrl-C still
-- goes through).
-- @param name "on_success" or "on_failure"
-- @param ... its arguments
-- @local
function Queue:call(name, ...)
  local fn = self.o[name]
  local err = fn and errors.callback(fn, ...)
  if err then
    self.counters.callback_errors = self.counters.callback_errors + 1
    log(ERR, "optimizely.offline queue: ", name, " raised: ", err)
  end
end

--- Emits an event: `on_event` (protected) and a log line
-- (optimizely.offline.events).
-- @param kind the event type ("retry", "dead", "dropped", "paused", ...)
-- @param ev its fields
-- @param line the log line instead of the default one (optional)
-- @local
function Queue:event(kind, ev, line)
  self.events:emit(kind, ev, line)
end

-- List item: "<attempts> <created> <#ref> <ref><#ch> <ch><json>" (any byte in ref).
local function pack(it)
  local ch = it.channel or ""
  return it.attempts .. " " .. floor(it.created) .. " " .. #it.ref .. " " .. it.ref .. #ch .. " " .. ch .. it.json
end

local function unpack_item(s)
  local attempts, created, rlen, p = s:match("^(%d+) (%d+) (%d+) ()")
  if not attempts then return nil end
  rlen = tonumber(rlen)
  local ref = s:sub(p, p + rlen - 1)
  local clen, q = s:match("^(%d+) ()", p + rlen)
  if not clen then return nil end
  clen = tonumber(clen)
  local ch = s:sub(q, q + clen - 1)
  return { attempts = tonumber(attempts), created = tonumber(created), ref = ref,
    channel = ch ~= "" and ch or nil, json = s:sub(q + clen), next_at = 0 }
end

--- Shared mode, in the deliverer: writes how many orders it holds (ready,
-- waiting, in flight) and how many are in flight to the dict, for every
-- worker's `stats()`.
-- @local
function Queue:publish()
  local shm = self.shm
  if not shm or not self.deliverer then return end
  shm:set(HELD, self.tail - self.head + 1 + #self.waiting + self.in_flight)
  shm:set(INFLIGHT, self.in_flight)
end

--- Shared mode: the length of the dict's list (orders pushed, not yet
-- taken by the deliverer).
-- @local
function Queue:shared_len()
  return self.shm:llen(LIST) or 0
end

-- --------------------------------------------------- the in-memory store

--- Orders in the in-memory ring, ready to send.
-- @local
function Queue:ready_size() return self.tail - self.head + 1 end

--- Appends an order to the in-memory ring.
-- @param it the order item (`json`, `ref`, `channel`, `attempts`, `created`)
-- @local
function Queue:ready_push(it)
  local t = self.tail + 1
  self.tail = t
  self.ready[t] = it
end

--- Takes the first order of the in-memory ring.
-- @return the item, or nil when the ring is empty
-- @local
function Queue:ready_pop()
  local h = self.head
  if h > self.tail then return nil end
  local it = self.ready[h]
  self.ready[h] = nil
  if h == self.tail then self.head, self.tail = 1, 0 else self.head = h + 1 end
  return it
end

--- Moves the waiting orders whose retry is due (all of them with `all`) to
-- the ring.
-- @param all true: every waiting order (the last chance before exit)
-- @local
function Queue:promote(all)
  local w = self.waiting
  if #w == 0 then return end
  local t = now()
  local keep = {}
  for i = 1, #w do
    local it = w[i]
    if all or it.next_at <= t then self:ready_push(it) else keep[#keep + 1] = it end
  end
  self.waiting = keep
end

-- ------------------------------------------- taking orders (the senders)

--- Has the exit deadline (`shutdown_timeout` after the worker began to
-- exit) passed?
-- @local
function Queue:stopping()
  if self.deadline then
    update_time()
    return now() >= self.deadline
  end
  return false
end

--- Are the senders held back: a 429 pause, refused credentials (one probe
-- at a time, once its time has come) or the in-flight limit? At the last
-- chance before exit (`final`) orders held only in memory are tried anyway.
-- @param final the worker is exiting
-- @local
function Queue:held(final)
  if final and not self.spool then return false end
  local t = now()
  if self.paused_until > t then return true end
  if self.stopped then return self.probing or t < self.probe_at end
  return self.in_flight >= self.limit
end

--- Marks an order as taken: while the credentials are in doubt it is the
-- one probe.
-- @return it
-- @local
function Queue:taken(it)
  if self.stopped then self.probing = true end
  return it
end

--- The next order to send without a spool: from the ring or, in shared
-- mode, the dict's list (an item this version cannot read is dropped and
-- logged). At the last chance before exit every waiting order is made
-- ready first.
-- @param final the worker is exiting
-- @return the item | nil, why ("empty" when nothing is due, "stop" when
--   held or past the exit deadline)
-- @local
function Queue:take_memory(final)
  if self:stopping() or self:held(final) then return nil, "stop" end
  if final and not self.final_promoted then
    self.final_promoted = true
    self:promote(true) -- one last attempt for everything waiting in memory
  end
  local it = self:ready_pop()
  if it then return self:taken(it) end
  if self.shm then
    for _ = 1, 10 do -- skips (and logs) items this version cannot read
      local s = self.shm:lpop(LIST)
      if not s then break end
      it = unpack_item(s)
      if it then return self:taken(it) end
      log(ERR, "optimizely.offline queue: unreadable item in the shared list dropped")
    end
  end
  return nil, "empty"
end

--- The next order to send with a spool: claims up to `concurrency` due
-- rows at a time under the queue's lease and hands them out one by one.
-- @param final the worker is exiting
-- @return the item (with the row's `id`) | nil, why ("empty", or "stop"
--   when closed, held, past the exit deadline or when the claim failed: a
--   storage event)
-- @local
function Queue:take_spool(final)
  if self.closed or self:stopping() or self:held(final) then return nil, "stop" end
  if self.claimed_next > self.claimed_n then
    local rows, err = self.spool:claim(self.o.concurrency, self.lease)
    if not rows then
      self:storage_failed("claim", err)
      return nil, "stop"
    end
    self.claimed, self.claimed_next, self.claimed_n = rows, 1, #rows
    if #rows == 0 then return nil, "empty" end
  end
  local i = self.claimed_next
  local row = self.claimed[i]
  self.claimed[i] = false
  self.claimed_next = i + 1
  return self:taken({ id = row.id, ref = row.ref, json = row.body, attempts = row.attempts,
    channel = row.channel, created = row.created_at or now() })
end

--- Gives back the rows claimed but not started, without counting an
-- attempt (at the end of a flush).
-- @local
function Queue:release_claimed()
  if not self.spool then return end
  local buf = self.claimed
  for i = self.claimed_next, self.claimed_n do
    local row = buf[i]
    if row then
      local ok, err = self.spool:release(row.id)
      if not ok then self:storage_failed("release", err) end
    end
  end
  self.claimed, self.claimed_next, self.claimed_n = {}, 1, 0
end

--- A spool call failed (a full disk, say): it must not stop delivery
-- silently, so it is counted (`storage_errors`, `storage_error`), logged
-- and emitted as a `storage` event.
-- @param what the operation ("claim", "ack", "retry", "kill", "release")
-- @param err its error
-- @local
function Queue:storage_failed(what, err)
  self.counters.storage_errors = self.counters.storage_errors + 1
  self.storage_error = tostring(err)
  self:event("storage", { operation = what, error = err })
end

-- -------------------------------------------------------------- outcomes

--- The one attempt of a sender: POSTs the order with its channel's
-- headers through the cosocket transport and classifies the answer
-- (optimizely.offline.delivery), counting the request in the metrics. A
-- raise is a bug, not the network: the order is kept (a retryable
-- "internal" outcome) and the raise logged.
-- @param it the order item
-- @return the outcome record, the body, the transfer info
-- @local
function Queue:attempt(it)
  local st = self.st
  local ch = st.channel_index[it.channel or st.default_channel] or 1
  local headers = st.channels[ch].headers
  update_time()
  local ok, rec, body, info, took = pcall(delivery.attempt, st.transport, "POST", st.post_url, headers, it.json)
  if not ok then
    -- a bug, not the network: keep the order (retryable) and say why
    log(ERR, "optimizely.offline queue: send raised: ", tostring(rec))
    return { ok = false, kind = "internal", retryable = true, message = tostring(rec) }, "", {}
  end
  self.meter:attempt(took, #it.json)
  if rec.status == 429 then self.meter:throttled() end
  return rec, body, info
end

--- An order the endpoint accepted: counted, its spool row deleted (a lost
-- lease is a storage event: another worker may send it again), the
-- in-flight limit grown by one after `limit` successes while below
-- `concurrency`, a credentials pause ended (`resumed` event), then
-- `on_success(ref, result)`.
-- @param it the order item
-- @param rec the outcome record
-- @param body the response body
-- @param info the transfer info
-- @param attempts attempts made, this one included
-- @local
function Queue:acked(it, rec, body, info, attempts)
  self:bump("sent")
  self.meter:sent(it.channel)
  if self.spool then
    local ok, err = self.spool:ack(it.id)
    -- lease lost: another worker may send it again (at-least-once)
    if not ok then self:storage_failed("ack", err) end
  end
  if self.limit < self.o.concurrency then
    self.grow = self.grow + 1
    if self.grow >= self.limit then self.limit, self.grow = self.limit + 1, 0 end
  end
  if self.stopped then
    self.stopped, self.probing = false, false
    self:event("resumed", { reason = "credentials" })
  end
  self:call("on_success", it.ref, delivery.success(rec, body, attempts, info, it.channel, nil))
end

--- An order given up (a dead letter): counted, killed in the spool (kept
-- there as a dead letter), `on_failure(ref, err)` with `err` no longer
-- retryable, and a `dead` event.
-- @param it the order item
-- @param err its error
-- @param why the policy's reason ("rejected", "attempts", "expired")
-- @local
function Queue:dead(it, err, why)
  self:bump("dead")
  self:bump("failed")
  self.meter:failed(err, true, it.channel)
  err.retryable = false -- it is dead: retries are over
  if self.spool then
    local ok, kerr = self.spool:kill(it.id, err)
    if not ok then self:storage_failed("kill", kerr) end
  end
  self:call("on_failure", it.ref, err)
  self:event("dead", { ref = it.ref, attempt = err.attempts, error = err, reason = why })
end

--- Keeps an order for a later attempt: its spool row rescheduled, or
-- without a spool the in-memory waiting list.
-- @param it the order item
-- @param attempts attempts made so far
-- @param next_at when it is due (ngx.now() time)
-- @param err the last error (stored with a spool row)
-- @local
function Queue:later(it, attempts, next_at, err)
  if self.spool then
    local ok, rerr = self.spool:retry(it.id, next_at, err)
    if not ok then self:storage_failed("retry", rerr) end
  else
    it.attempts, it.next_at = attempts, next_at
    self.waiting[#self.waiting + 1] = it
  end
end

--- At exit, an order held only in memory has nowhere to wait: in shared
-- mode it goes back to the dict's list (the next deliverer sends it), else
-- it is reported lost: counted in `dropped.shutdown`, `on_failure` with
-- kind "shutdown", and a `dropped` event logged for every order (never
-- rate-limited) with its refCode.
-- @param it the order item
-- @param attempts attempts made
-- @param err the last error, or why it was not sent
-- @return "requeued" or "lost"
-- @local
function Queue:lost(it, attempts, err)
  if self.shm then
    -- the shared dict outlives this worker on reload: the next deliverer sends it
    it.attempts = attempts
    if self.shm:rpush(LIST, pack(it)) then
      self.events:log("warn", "worker exiting, order " .. core.quote(it.ref)
        .. " put back in the shared dict (lost if nginx is stopping)", false)
      return "requeued"
    end
  end
  self:bump("dropped", "shutdown")
  self:bump("failed")
  local e = errors.new({ kind = "shutdown", retryable = false, attempts = attempts, cause = err,
    message = "worker exiting before the order was delivered (last error: " .. tostring(err) .. ")" })
  self.meter:failed(e, false, it.channel)
  self:call("on_failure", it.ref, e)
  -- every lost order gets its line (never rate-limited), with its refCode
  self:event("dropped", { reason = "shutdown", ref = it.ref, attempt = attempts, error = e },
    "worker exiting, order " .. core.quote(it.ref) .. " not delivered: " .. tostring(err))
  return "lost"
end

--- Pauses every sender for `seconds` (a 429): the pause is extended, never
-- shortened; a `paused` event when it begins.
-- @param seconds the pause
-- @param err the answer that asked for it
-- @local
function Queue:pause_for(seconds, err)
  local t = now()
  local was = self.paused_until > t
  self.paused_until = max(self.paused_until, t + seconds)
  if not was then self:event("paused", { reason = "throttled", seconds = seconds, error = err }) end
end

--- The endpoint refused the credentials: the queue pauses, and one order
-- probes again every `auth_pause` seconds (a `paused` event the first
-- time). The order waits first in line: its spool row released, or back at
-- the head of the ring.
-- @param it the order item
-- @param err the refusal
-- @local
function Queue:stop_for_credentials(it, err)
  local first = not self.stopped
  self.stopped, self.probing = true, false
  self.probe_at = now() + self.o.auth_pause
  if first then self:event("paused", { reason = "credentials", error = err, seconds = self.o.auth_pause }) end
  -- the order waits with the others, first in line to probe next time
  if self.spool then
    local ok, rerr = self.spool:release(it.id)
    if not ok then self:storage_failed("release", rerr) end
  else
    self.head = self.head - 1
    self.ready[self.head] = it
  end
end

--- The answer to an order already reported at exit (lost, or put back in
-- the dict: it was still in flight when the grace ended) came after all:
-- logged, counted as sent when it was, its spool row acked.
-- @param it the order item (`reported` says how it was reported)
-- @param rec the outcome record
-- @param body the response body
-- @local
function Queue:settle_late(it, rec, body)
  local action = self.policy:decide(rec, it.attempts + 1, 0)
  if action == "ack" then
    self.meter:sent(it.channel)
    if self.spool then self.spool:ack(it.id) end
    self.events:log("warn", "order " .. core.quote(it.ref) .. " was delivered after all (its answer came after"
      .. " the shutdown grace; it was " .. (it.reported == "lost" and "reported lost" or "put back in the shared dict")
      .. ")", false)
  else
    self.events:log("warn", "order " .. core.quote(it.ref) .. " (" .. (it.reported == "lost" and "reported lost"
      or "put back in the shared dict") .. " at exit): the late answer was "
      .. tostring(delivery.failure(rec, body, it.attempts + 1, it.channel, self.st.secrets)), false)
  end
  self:flush_metrics(true) -- the worker is exiting: its gauges stay removed
end

--- After one attempt: the policy's decision, carried out: ack, a pause
-- and a halved in-flight limit (a 429), the credentials stop, a dead
-- letter, or a retry later (at exit, without a spool: lost). A probe for the credentials that neither succeeds nor is
-- refused schedules the next probe.
-- @param it the order item
-- @param rec the outcome record
-- @param body the response body
-- @param info the transfer info
-- @param final the worker is exiting (no later attempt for a memory order)
-- @local
function Queue:settle(it, rec, body, info, final)
  if it.reported then return self:settle_late(it, rec, body) end
  final = final or self.exit_reported
  local attempts = it.attempts + 1
  local st = self.st
  local action, delay, pause, slow_down, why = self.policy:decide(rec, attempts, os.time() - (it.created or 0))
  if self.probing then
    -- the probe is over; neither a success nor a refusal says nothing new
    -- about the credentials: probe again later
    self.probing = false
    if action ~= "ack" and action ~= "stop" then self.probe_at = now() + self.o.auth_pause end
  end
  if action == "ack" then return self:acked(it, rec, body, info, attempts) end
  local err = delivery.failure(rec, body, attempts, it.channel, st.secrets)
  if pause and pause > 0 then self:pause_for(pause, err) end
  if slow_down then self.limit, self.grow = max(1, floor(self.limit / 2)), 0 end
  if action == "stop" then
    self.meter:retried()
    return self:stop_for_credentials(it, err)
  end
  if action == "dead" then return self:dead(it, err, why) end
  if final and not self.spool then return self:lost(it, attempts, err) end
  self:bump("retried")
  self.meter:retried()
  self:event("retry", { ref = it.ref, attempt = attempts, delay = delay, error = err })
  update_time()
  self:later(it, attempts, now() + delay, err)
end

-- ---------------------------------------------- the flush: light threads

-- One light thread of a flush. When the queue runs dry it lingers on the
-- semaphore (push posts to it) instead of ending, so a steady trickle of
-- orders does not cost a new timer and new threads per order.
local function sender(self, final)
  local take = self.spool and self.take_spool or self.take_memory
  while true do
    local fin = final or self.exiting
    local it, why = take(self, fin)
    if not it then
      if why ~= "empty" or fin or self.closed then return end
      if not self.sema:wait(self.linger) then return end -- idle long enough
    else
      self.in_flight = self.in_flight + 1
      self.flying[it] = true -- accounted at exit even when its answer never comes
      self:publish()
      local rec, body, info = self:attempt(it)
      self.flying[it] = nil
      self.in_flight = self.in_flight - 1
      local sok, serr = pcall(self.settle, self, it, rec, body, info, fin)
      if not sok then log(ERR, "optimizely.offline queue: settle raised: ", tostring(serr)) end
      self:publish()
    end
  end
end

--- One flush: `concurrency` light threads (`sender`) taking and sending
-- orders until none is due, then the claimed rows not started go back.
-- @param final the worker is exiting
-- @local
function Queue:run_flush(final)
  local threads = {}
  for _ = 1, self.o.concurrency do
    local th, err = spawn(sender, self, final)
    if not th then
      log(ERR, "optimizely.offline queue: cannot spawn a sender: ", tostring(err))
      break
    end
    threads[#threads + 1] = th
  end
  for i = 1, #threads do
    local ok, err = wait(threads[i])
    if not ok then log(ERR, "optimizely.offline queue: sender failed: ", tostring(err)) end
  end
  self:release_claimed()
end

--- Wakes one lingering sender, if any (any phase: posting never yields).
-- @local
function Queue:wake()
  if self.sema:count() < 0 then self.sema:post(1) end
end

--- Wakes every lingering sender (exit, close).
-- @local
function Queue:wake_all()
  local c = self.sema:count()
  if c < 0 then self.sema:post(-c) end
end

--- Is an order due right now (no pause in the way): a spool row due, or a
-- ready or due waiting order, or an item in the dict's list?
-- @local
function Queue:has_due()
  local t = now()
  if self.paused_until > t then return false end
  if self.stopped and t < self.probe_at then return false end
  if self.spool then
    local at = self.spool:next_due()
    return at and at <= t + 0.001 or false
  end
  self:promote()
  return self:ready_size() > 0 or (self.shm ~= nil and self:shared_len() > 0)
end

--- Runs flushes until nothing that arrived meanwhile is left (at most
-- 1,000), stopping at the exit deadline.
-- @param final the worker is exiting
-- @local
function Queue:flush_loop(final)
  for _ = 1, 1000 do
    self.again = false
    self:run_flush(final)
    if self:stopping() then return end
    local more = not self.spool and (self:ready_size() > 0 or (self.shm and self:shared_len() > 0))
    if not self.again and not (more and not self:held(final)) then return end
  end
end

--- Marks the worker as exiting (once) and sets the deadline:
-- `shutdown_timeout` seconds from now.
-- @local
function Queue:begin_exit()
  if self.exiting then return end
  self.exiting = true
  update_time()
  self.deadline = now() + self.o.shutdown_timeout
end

local function flush_timer(premature, self)
  local final = premature or ngx.worker.exiting()
  if final then self:begin_exit() end
  local ok, err = pcall(self.flush_loop, self, final)
  self.flushing = false
  if not ok then log(ERR, "optimizely.offline queue: flush failed: ", tostring(err)) end
end

--- Starts a flush (a zero-delay timer) unless one is running, which is then
-- asked to go round again and a lingering sender woken. Any phase: it only
-- creates a timer. Nothing during a 429 pause, at exit, or in a process
-- that only pushes (shared mode).
-- @local
function Queue:kick()
  if self.exiting or self.shm and not self.deliverer then return end -- the final flush is running or done
  if self.flushing then
    self.again = true
    self:wake()
    return
  end
  if self.paused_until > now() then return end
  self.flushing = true
  local ok, err = timer_at(0, flush_timer, self)
  if not ok then
    self.flushing = false
    -- the periodic timer will try again; say so at most once a second
    if now() - self.timer_warned > 1 then
      self.timer_warned = now()
      log(WARN, "optimizely.offline queue: cannot start a flush timer: ", tostring(err))
    end
  end
end

--- At exit, without a spool: reports what is left in memory, one order at
-- a time (`lost`): the orders waiting, then those still in flight when the
-- grace ended (their answer may still come: `settle_late` says so). With
-- a spool the rows stay in it.
-- @local
function Queue:report_lost()
  self.exit_reported = true
  if self.spool then return end
  self:promote(true)
  while true do
    local it = self:ready_pop()
    if not it then break end
    self:lost(it, it.attempts, "the worker exited before the order could be sent")
  end
  local flying = {}
  for it in pairs(self.flying) do flying[#flying + 1] = it end
  table.sort(flying, function(a, b) return tostring(a.ref) < tostring(b.ref) end)
  for _, it in ipairs(flying) do
    -- its answer, if it comes, is only said: the order is accounted now
    it.reported = self:lost(it, it.attempts + 1, "still in flight when the shutdown grace (shutdown_timeout "
      .. self.o.shutdown_timeout .. " s) ended: the endpoint may or may not have it")
  end
  self:publish()
  local lost = self.counters.dropped.shutdown
  if lost and lost > 0 then
    log(ERR, "optimizely.offline queue: worker exiting, ", lost, " order(s) not delivered (no spool configured)")
  end
end

--- Worker exit (the periodic timer runs prematurely): wakes the senders,
-- waits for the running flush or makes a final one until the deadline,
-- reports what is left and publishes the last metrics.
-- @local
function Queue:final_flush()
  self:begin_exit()
  self:wake_all()
  while self.flushing and not self:stopping() do ngx.sleep(0.02) end
  if not self.flushing then
    self.flushing = true
    local ok, err = pcall(self.flush_loop, self, true)
    self.flushing = false
    if not ok then log(ERR, "optimizely.offline queue: final flush failed: ", tostring(err)) end
  end
  self:report_lost()
  self:flush_metrics(true)
  -- the spool stays open: requests still finishing may push (durably) until
  -- the process ends; the next worker sends those
end

local tick

--- Arms the periodic timer (`flush_interval`) once more; a failure is
-- logged unless the worker is exiting.
-- @local
function Queue:arm()
  local ok, err = timer_at(self.o.flush_interval, tick, self)
  if not ok and not ngx.worker.exiting() then
    log(ERR, "optimizely.offline queue: cannot arm the periodic timer: ", tostring(err))
  end
end

tick = function(premature, self)
  if premature then return self:final_flush() end
  self:flush_metrics()
  if self.closed and not self.shm and not self.flushing and self.in_flight == 0 then
    if self.spool then
      -- what is left stays in the spool for the next worker
      self:release_claimed()
      if self.spool:is_open() then self.spool:close() end
      return
    end
    if self:ready_size() == 0 and #self.waiting == 0 then return end
  end
  self:arm() -- first, so an error below cannot stop the loop
  if self.closed and self.spool then return end
  local ok, due = pcall(self.has_due, self)
  if not ok then
    log(ERR, "optimizely.offline queue: ", tostring(due))
    return
  end
  if self.flushing then
    if due then self:wake() end -- retries now due, senders lingering
  elseif due then
    self.flushing = true
    local fok, err = pcall(self.flush_loop, self, false)
    self.flushing = false
    if not fok then log(ERR, "optimizely.offline queue: flush failed: ", tostring(err)) end
  end
end

-- Workers start together and open one file: SQLite can answer "busy" at
-- once (without waiting busy_timeout) when two connections set WAL mode on a
-- new file, so a busy open is retried for up to ~2 s. init_worker cannot
-- yield; a short blocking wait there delays only this worker's start.
local function open_spool(o, phase)
  local spool = require("optimizely.offline.spool")
  local pause = YIELDABLE[phase] and ngx.sleep or core.sleep
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

-- ------------------------------------------------------------ the constructor

-- The shared-mode role of this process: the deliverer (true) or a pusher.
local function deliverer_role(o)
  local d = o.deliverer
  if d == nil then d = 0 end
  local ptype = require("ngx.process").type()
  if d == "agent" then return ptype == "privileged agent" end
  if type(d) == "number" and d >= 0 and d == floor(d) then
    if d >= ngx.worker.count() then
      error("optimizely.offline.ngx.queue: opts.deliverer is worker " .. d .. " but there are "
        .. ngx.worker.count() .. " workers", 5)
    end
    return ptype == "worker" and ngx.worker.id() == d
  end
  error("optimizely.offline.ngx.queue: opts.deliverer must be \"agent\" or a worker id (got "
    .. tostring(d) .. ")", 5)
end

-- Missing credentials under nginx are almost always an environment
-- variable nginx did not pass: it clears the environment of its workers
-- except for the variables named by `env` directives.
local function check_credentials(cc)
  if cc.token == nil and cc.tokens == nil then
    error("optimizely.offline.ngx.queue: client_config.token is missing (nil). If the config reads it with"
      .. " os.getenv(\"NAME\"), declare the variable in the main context of nginx.conf with `env NAME;`:"
      .. " nginx clears the environment of its workers otherwise", 4)
  end
end

local function check_opts(o)
  if o.metrics_shm ~= nil and not ngx.shared[o.metrics_shm] then
    error("optimizely.offline.ngx.queue: opts.metrics_shm must name a lua_shared_dict (got "
      .. core.quote(o.metrics_shm) .. ")", 4)
  end
  if o.shm ~= nil then
    if not ngx.shared[o.shm] then
      error("optimizely.offline.ngx.queue: opts.shm must name a lua_shared_dict (got " .. core.quote(o.shm) .. ")", 4)
    end
    if o.spool ~= nil then error("optimizely.offline.ngx.queue: opts.shm cannot be combined with opts.spool", 4) end
  elseif o.deliverer ~= nil then
    error("optimizely.offline.ngx.queue: opts.deliverer needs opts.shm", 4)
  end
end

-- The client whose context (transport, headers per channel, secrets)
-- the senders use; its cosocket transport built from opts.transport.
-- Options of the libcurl client that mean nothing here are refused
-- (transport.client_config): that beats silently ignoring a TLS setting.
local function make_client(cc, o)
  local cfg = transport.client_config(cc, "optimizely.offline.ngx.queue: client_config", o.transport,
    { sleep = "the queue schedules its own retries" }, 4)
  local client = require("optimizely.offline.client")
  local c = client.client(cfg)
  return c, client.state(c)
end

--- Logs the one startup line: the URL, site and channels (never a token)
-- and how orders are held (spool, shared dict, memory).
-- @local
function Queue:started()
  local o = self.o
  local how = self.spool and ("spool " .. o.spool)
    or (self.shm and ("shared dict " .. o.shm .. (self.deliverer and ", delivering" or ", pushing only")))
    or "in memory"
  if self.metrics_dict then how = how .. "; metrics in " .. o.metrics_shm end
  local c = self.st.config
  if c.env == nil and c.base_url == "https://uat.peerius.com" then
    how = how .. "; if base_url comes from os.getenv, declare the variable with `env NAME;` in nginx.conf"
  end
  self.events:started("queue of worker " .. tostring(ngx.worker.id()), self.st, how)
end

--- A process that only pushes (shared mode) has no delivery timer: with
-- `metrics_shm` its metrics go to the dict on a timer of their own (and at
-- exit).
-- @return self
-- @local
function Queue:pusher_timer()
  if not self.metrics_dict then return self end
  local ok, err = ngx.timer.every(self.o.flush_interval, function(premature) self:flush_metrics(premature) end)
  if not ok then log(ERR, "optimizely.offline queue: cannot start the metrics timer: ", tostring(err)) end
  return self
end

--- Create this worker's queue (call it in `init_worker_by_lua*`).
-- @param client_config the `offline.client` config (site, token or tokens,
--   channel, base_url/env, timeout, connect_timeout, backoff_*,
--   retry_after_max); `transport` defaults to the cosocket one.
--   libcurl-only options (ca_file, proxy, ...) are refused.
-- @param o the options of `M.schema` (see optimizely.offline.queue for the
--   shared ones)
-- @return queue, or nil, err when the spool cannot be opened
function M.new(client_config, o)
  local phase = ngx.get_phase()
  if phase == "init" then
    error("optimizely.offline.ngx.queue: create the queue in init_worker_by_lua*, not init_by_lua*"
      .. " (timers and spool handles do not survive the fork)", 2)
  end
  check_credentials(client_config)
  o = M.schema:check(o, 2)
  check_opts(o)
  local shm = o.shm and ngx.shared[o.shm]
  local client, st = make_client(client_config, o)
  local timeout = (client_config.timeout or 10) + (client_config.connect_timeout or 5)
  local self = setmetatable({
    o = o, client = client, st = st,
    policy = require("optimizely.offline.retry").new({ max_attempts = o.max_attempts or false,
      max_age = o.max_age, backoff_base = client_config.backoff_base, backoff_max = client_config.backoff_max,
      retry_after_max = client_config.retry_after_max, random = client_config.random }),
    meter = client_config.metrics == false and metrics.null() or core.metrics_new(), -- the counts
    metrics_dict = o.metrics_shm and ngx.shared[o.metrics_shm], flying = {},
    ready = {}, head = 1, tail = 0, waiting = {},
    claimed = {}, claimed_next = 1, claimed_n = 0,
    sema = semaphore.new(0),
    linger = 1, -- seconds an idle sender waits for the next push
    in_flight = 0, flushing = false, again = false, closed = false,
    limit = o.concurrency, grow = 0,
    paused_until = 0, stopped = false, probe_at = 0, probing = false, timer_warned = 0,
    counters = { sent = 0, retried = 0, failed = 0, dead = 0, invalid = 0, dropped = {},
      callback_errors = 0, storage_errors = 0, pushed = 0 },
    shm = shm, deliverer = shm and deliverer_role(o),
    lease = o.lease or max(30, 2 * timeout),
  }, Queue)
  self.events = events.new({ on_event = o.on_event, logger = o.logger, prefix = "optimizely.offline queue: ",
    on_error = function(name, err)
      self.counters.callback_errors = self.counters.callback_errors + 1
      log(ERR, "optimizely.offline queue: ", name, " raised: ", tostring(err))
    end })
  self.pseudonym = o.pseudonymise ~= nil and require("optimizely.offline.client").pseudonymiser(o.pseudonymise, 2)
    or nil
  if o.spool then
    local sp, err = open_spool(o, phase)
    if not sp then return nil, err end
    self.spool = sp
  end
  self:started()
  if shm and not self.deliverer then return self:pusher_timer() end -- pushes only: no delivery timers
  self:arm()
  if self.spool then self:kick() end -- orders left by an earlier run
  if shm then
    -- other processes cannot post our semaphore: look at the list often
    -- (an llen, no allocation) and wake or start the senders
    local ok, err = ngx.timer.every(o.poll_interval, function(premature)
      if premature or self.exiting then return end
      if self:shared_len() > 0 then self:kick() end
    end)
    if not ok then
      return nil, errors.new({ kind = "internal", message = "cannot start the poll timer: " .. tostring(err) })
    end
    self:kick() -- orders left by the previous deliverer
  end
  return self
end

-- ------------------------------------------------------------------ push

--- Counts a refused push in `stats().dropped` under its kind ("invalid"
-- for a validation error, also counted in `invalid`) and names the bound's
-- option of a "full" error.
-- @param err the error
-- @return nil, err
-- @local
function Queue:refuse(err)
  local kind = err.kind == "validation" and "invalid" or err.kind or "error"
  self:bump("dropped", kind)
  if kind == "invalid" then self:bump("invalid") end
  if kind == "full" and err.bound and not err.option then
    err.option = self.spool and ("spool_" .. err.bound) or err.bound
  end
  return nil, err
end

local PUSH_OPTS = opts.schema("optimizely.offline.ngx.queue", "push opts",
  { channel = { type = "string", nonempty = true } })

--- The error of a push refused because `max_queue` orders wait.
-- @param n how many wait
-- @return the error (kind "full", `bound` "max_queue", retryable)
-- @local
function Queue:full_error(n)
  return errors.new({ kind = "full", bound = "max_queue", retryable = true,
    message = "queue full: " .. n .. " orders waiting (max_queue " .. self.o.max_queue .. ")" })
end

--- The channel of a push: `po.channel`, else the queue's `channel`, else
-- the client's.
-- @param po the push options, or nil
-- @return the channel's name | nil, err (kind "config")
-- @local
function Queue:channel_of(po)
  local name = (po and po.channel) or self.o.channel
  local i, err = require("optimizely.offline.client").channel_of(self.st, name)
  if not i then return nil, err end
  return self.st.channels[i].name
end

--- Queue one order. No network I/O, no yield: any phase, log_by_lua included.
-- @param payload `{lang?, user?, order}` as accepted by `offline.encode`
-- @param po optional `{channel = name}`
-- @return true, warnings  or  nil, err (kind "validation" with problems,
--   "full" when `max_queue` (or a spool bound) is reached — checked first,
--   so a full queue refuses without validating —, "config" (no token for
--   the channel), "closed", or a spool kind)
function Queue:push(payload, po)
  if po ~= nil then po = PUSH_OPTS:check(po, 2) end
  local shm = self.shm
  if self.closed or (self.exiting and not self.spool and not shm) then
    return self:refuse(errors.new({ kind = "closed", retryable = false,
      message = self.closed and "the queue is closed" or "the worker is exiting" }))
  end
  -- checked before encoding: shedding load must be cheap
  local n = shm and (shm:llen(LIST) or 0)
    or (not self.spool and (self:ready_size() + #self.waiting + self.in_flight))
  if n and n >= self.o.max_queue then return self:refuse(self:full_error(n)) end
  local channel, cerr = self:channel_of(po)
  if not channel then return self:refuse(cerr) end
  local json, warnings = require("optimizely.offline.client").prepare(self.st, payload, self.pseudonym)
  if not json then return self:refuse(warnings) end
  local it = { json = json, ref = core.ref_string(payload) or "", attempts = 0, next_at = 0,
    channel = channel, created = os.time() }
  local ok, err = self:store(it)
  if not ok then return self:refuse(err) end
  self:bump("pushed")
  self.meter:queued()
  if not shm or self.deliverer then self:kick() end
  return true, warnings
end

--- Stores a pushed order: the dict's list (shared mode), the spool, or the
-- in-memory ring.
-- @param it the order item
-- @return true | nil, err (kind "full" when the dict has no room, `bound`
--   and `option` "shm"; or the spool's error)
-- @local
function Queue:store(it)
  if self.shm then
    local ok, err = self.shm:rpush(LIST, pack(it))
    if not ok then
      -- "no memory": the dict is the bound here
      return nil, errors.new({ kind = "full", bound = "shm", option = "shm", retryable = true,
        message = "queue full: the lua_shared_dict has no room (" .. tostring(err) .. ")" })
    end
    return true
  end
  if self.spool then
    local id, err = self.spool:put(it.json, it.ref, nil, it.channel)
    if not id then return nil, err end
    return true
  end
  self:ready_push(it)
  return true
end

-- ------------------------------------------------------------------ stats

--- `stats()` in shared mode: the dict's counts, the same in every worker,
-- plus `shared` and `deliverer`.
-- @local
function Queue:shared_stats()
  local shm = self.shm
  local function c(k) return shm:get("c:" .. k) or 0 end
  local dropped = {}
  for _, k in ipairs(shm:get_keys(0)) do
    local sub = k:match("^c:dropped%.(.+)$")
    if sub then dropped[sub] = shm:get(k) end
  end
  local fl = c("in_flight")
  return { shared = true, deliverer = self.deliverer, queued = self:shared_len() + c("held") - fl,
    in_flight = fl, sent = c("sent"), retried = c("retried"), failed = c("failed"), dead = c("dead"),
    invalid = c("invalid"), pushed = c("pushed"), dropped = dropped,
    paused_for = max(0, self.paused_until - now()) }
end

--- Counters of this worker's queue: the same keys as the threaded queue's
-- (`{queued, in_flight, sent, retried, failed, dead, invalid, pushed,
-- paused_for, paused, callback_errors, storage_errors, storage_error?,
-- dropped = {invalid =, full =, closed =, shutdown =, config =}, spool =
-- spool:stats() (with a spool)}`; in shared mode the dict's numbers, the
-- same in every worker, plus `shared` and `deliverer`).
function Queue:stats()
  if self.shm then return self:shared_stats() end
  local st = self.counters
  local out = {
    in_flight = self.in_flight, sent = st.sent, retried = st.retried, failed = st.failed,
    dead = st.dead, invalid = st.invalid, pushed = st.pushed, dropped = {},
    paused_for = max(0, self.paused_until - now()),
    paused = self.stopped and "credentials" or (self.paused_until > now() and "throttled" or nil),
    callback_errors = st.callback_errors, storage_errors = st.storage_errors,
    storage_error = self.storage_error, running = not self.closed,
  }
  for k, v in pairs(st.dropped) do out.dropped[k] = v end
  local serr
  out.queued, out.spool, serr = self:depth()
  if serr then out.spool_error = tostring(serr) end
  return out
end

--- Orders waiting (not in flight) and, with a spool, its stats, or the
-- error reading them. A spool's claimed rows are in flight, here or in
-- another worker.
-- @return depth, spool stats or nil, err or nil
-- @local
function Queue:depth()
  if not self.spool then return self:ready_size() + #self.waiting end
  if not self.spool:is_open() then return 0 end
  local sst, err = self.spool:stats()
  if not sst then return 0, nil, err end
  return max(0, sst.queued - sst.claimed), sst
end

--- Delivery metrics of this worker's queue: the counters plus `invalid`,
-- `dropped`, `callback_errors`, `storage_errors` and the gauges `depth`,
-- `in_flight`, `paused` and, with a spool, `spool` (the shape:
-- optimizely.offline.metrics). Per worker; `metrics_shm` sums every worker's.
-- @return the metrics table
function Queue:metrics()
  local m = self.meter:get()
  local c = self.counters
  m.invalid, m.callback_errors, m.storage_errors = c.invalid, c.callback_errors, c.storage_errors
  m.dropped = {}
  for k, v in pairs(c.dropped) do m.dropped[k] = v end
  m.in_flight = self.in_flight
  local t = now()
  m.paused = { throttled = self.paused_until > t and 1 or 0, credentials = self.stopped and 1 or 0 }
  if self.shm then
    -- the shared list is the deliverer's to report (once, not per worker)
    m.depth = self.deliverer and max(0, self:shared_len() + self:ready_size() + #self.waiting) or 0
    return m
  end
  local sst
  m.depth, sst = self:depth()
  if sst then m.spool = { orders = sst.queued, bytes = sst.bytes, dead = sst.dead } end
  return m
end

--- Add this worker's metrics to the `metrics_shm` dict now (the queue does
-- it every `flush_interval` and at exit; a `/metrics` handler may call it
-- first so that its own worker's numbers are current). No-op without
-- `metrics_shm`.
function Queue:publish_metrics()
  self:flush_metrics()
end

--- Adds the metrics' deltas since the last time to `metrics_shm`, and this
-- worker's gauges (removed at exit). A spool's gauges are the file's, kept
-- under its path, so that workers sharing it are not counted twice. No-op
-- without `metrics_shm`.
-- @param exiting true at worker exit
-- @local
function Queue:flush_metrics(exiting)
  local dict = self.metrics_dict
  if not dict then return end
  self.metrics_publisher = self.metrics_publisher or metrics.shm_publisher(dict, { id = ngx.worker.pid(),
    ttl = max(10, 5 * self.o.flush_interval), spool_id = self.spool and self.spool.path,
    on_error = function(ierr)
      self.events:log("error", "metrics_shm " .. core.quote(self.o.metrics_shm) .. ": " .. tostring(ierr)
        .. " (make the lua_shared_dict larger)", "metrics_shm")
    end })
  local ok, err = pcall(self.metrics_publisher, self:metrics(), exiting)
  if not ok then log(ERR, "optimizely.offline queue: metrics flush failed: ", tostring(err)) end
end

--- Orders not settled yet, for `flush`: the dict's list and what the
-- deliverer holds (shared mode), the spool's queued rows (1 when its stats
-- cannot be read, so that flush does not claim success), or the ring,
-- waiting list and in-flight orders.
-- @local
function Queue:left()
  if self.shm then return self:shared_len() + (self.shm:get(HELD) or 0) end
  if self.spool then
    if not self.spool:is_open() then return 0 end
    local st = self.spool:stats()
    return st and st.queued or 1
  end
  return self:ready_size() + #self.waiting + self.in_flight
end

--- Wait until every queued order is delivered or dead (with a spool: until
-- the spool holds no queued order, whichever worker queued it).
-- Only where yielding is allowed (timer, rewrite, access, content).
-- @param timeout seconds (default 10)
-- @return true, or nil, err (kind "timeout")
function Queue:flush(timeout)
  waiting.check_phase("optimizely.offline.ngx.queue: flush", 2)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("optimizely.offline.ngx.queue: flush timeout must be a number >= 0", 2)
  end
  local left
  local ok = waiting.until_done(function()
    left = self:left()
    return left == 0
  end, timeout or 10, function()
    if not self.flushing and self:has_due() then self:kick() end
  end)
  if ok then return true end
  return nil, errors.new({ kind = "timeout", retryable = true,
    message = "queue not empty after " .. (timeout or 10) .. " s (" .. left .. " orders left)" })
end

--- Refuse further pushes and, where yielding is allowed, flush first.
-- What is still queued afterwards: delivered by the periodic timer (memory)
-- or left in the spool for the next worker (spool).
-- @param timeout seconds for the flush (default 10)
-- @return true, or nil, err (kind "timeout")
function Queue:close(timeout)
  if self.closed then return true end
  local ok, err = waiting.flush_first(self, timeout)
  self.closed = true
  self:wake_all() -- lingering senders end; the periodic timer closes the spool
  return ok, err
end

--- Try the credentials again now (after a pause for refused credentials).
function Queue:resume()
  self.probe_at = 0
  self.paused_until = 0
  self:kick()
end

function Queue:__tostring()
  return "optimizely.offline.ngx.queue{" .. (self.spool and ("spool=" .. self.spool.path) or "memory")
    .. (self.closed and ", closed" or "") .. "}"
end

M.Queue = Queue
return M
