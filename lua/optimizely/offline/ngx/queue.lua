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
-- **One scheduler, the nginx driver.** Every decision — what may start
-- now, the in-flight limit, the pause after a 429, the credentials stop and
-- its probe, backoff, Retry-After, the age limit, how an answer is
-- classified and settled, the counts — is the C scheduler's (csrc/delivery/sched.c,
-- the one the libcurl engine runs on too). This queue is its nginx driver:
-- light threads take the next job, send it over the cosocket transport and
-- hand the answer back (optimizely.offline.ngx.sender), timers run them
-- (optimizely.offline.ngx.flusher), the stores sit behind the scheduler's
-- hooks (optimizely.offline.ngx.store_memory, store_spool, store_shm) and
-- the results reach the user as callbacks, events and metrics
-- (optimizely.offline.ngx.report). The same options (optimizely.offline.queue_opts), the
-- same `push` return and the same `stats()` keys as the threaded queue.
--
-- `push` validates and encodes at once, then hands the bytes to the store
-- (the scheduler's list, the spool — durable when push returns —, or the
-- shared dict) and wakes a sender. No network I/O and no yielding, so it
-- works in log_by_lua.
--
-- **Accounting.** Every order pushed ends as exactly one of: sent,
-- dead (`on_failure`), or — at worker exit without a spool — reported not
-- delivered (`on_failure` with kind "shutdown", `dropped.shutdown`) or
-- unknown (in flight when the grace ended: `unknown`, logged with its
-- refCode). With a spool nothing is lost or unknown: the file keeps what
-- was not acknowledged for the next worker. sent + dead + dropped.shutdown +
-- unknown + pending = pushed.
--
-- Observability: `metrics()` (this worker), `metrics_shm` (every worker's
-- counts in one lua_shared_dict, surviving reloads), `on_event` and
-- `logger` (default `ngx.log`, rate-limited), one startup line naming the
-- URL and channels (optimizely.offline.events, doc/topics/operating.md).
--
-- Shared mode (`opts.shm`): pushes append to a list in a lua_shared_dict
-- and start no timer; only the deliverer process runs a scheduler, fed
-- from the list.
-- @module optimizely.offline.ngx.queue
local ngx = ngx
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")
local ctx = require("optimizely.offline.context")
local events = require("optimizely.offline.events")
local context = require("optimizely.offline.ngx.context")
local setup = require("optimizely.offline.ngx.setup")
local report = require("optimizely.offline.ngx.report")
local sender = require("optimizely.offline.ngx.sender")
local flusher = require("optimizely.offline.ngx.flusher")
local waiting = require("optimizely.offline.ngx.wait")
local nledger = require("optimizely.offline.ngx.ledger")
local queue_opts = require("optimizely.offline.queue_opts")

local log, ERR = errors.logger(ngx.log), ngx.ERR -- control characters escaped: no forged line

local M = {}

--- The nginx queue's options (optimizely.offline.ngx.setup).
M.schema = setup.schema

local Queue = {}
Queue.__index = Queue

--- Logs the one startup line: the URL, site and channels (never a token)
-- and how orders are held.
-- @local
function Queue:started()
  local how = self.store:describe()
  if self.metrics_dict then how = how .. "; metrics in " .. self.o.metrics_shm end
  local c = self.st.config
  if c.env == nil and c.base_url == "https://uat.peerius.com" then
    how = how .. "; if base_url comes from os.getenv, declare the variable with `env NAME;` in nginx.conf"
  end
  self.events:started("queue of worker " .. tostring(ngx.worker.id()), self.st, how)
end

--- Starts delivery: the scheduler, the flusher and its timers; in a
-- process that only pushes (shared mode), a metrics timer at most.
-- @return self | nil, err
-- @local
function Queue:start()
  local store, o = self.store, self.o
  if store.name == "shm" and not store.deliverer then
    if not self.metrics_dict then return self end
    local ok, err = ngx.timer.every(o.flush_interval, function(premature) self.report:publish(premature) end)
    if not ok then log(ERR, "optimizely.offline queue: cannot start the metrics timer: ", tostring(err)) end
    return self
  end
  self.s = setup.scheduler(self.st, o, store:hooks(), store.name == "memory" and o.max_queue or 0,
    store.name ~= "spool" and self.gate or nil)
  self.flusher = flusher.new(self, sender)
  self.flusher:start()
  if store.name == "shm" then
    -- other processes cannot post our semaphore: look at the list often
    -- (an llen, no allocation) and wake or start the senders
    local ok, err = ngx.timer.every(o.poll_interval, function(premature)
      if premature or self.flusher.exiting then return end
      if store:has_due() then self.flusher:kick() end
    end)
    if not ok then
      return nil, errors.new({ kind = "internal", message = "cannot start the poll timer: " .. tostring(err) })
    end
  end
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
  setup.check_credentials(client_config, 3)
  o = M.schema:check(o, 2)
  setup.check_opts(o, 3)
  queue_opts.check_ledger(o, 3)
  local c, st = context.new(client_config, "optimizely.offline.ngx.queue: client_config", o.transport,
    { sleep = "the queue schedules its own retries" }, 3)
  local self = setmetatable({ o = o, client = c, st = st, flying = {}, void = {}, ids = 0, closed = false,
    ledger_counts = { skipped = {}, changed = 0 },
    metrics_dict = o.metrics_shm and ngx.shared[o.metrics_shm] }, Queue)
  self.report = report.new(self)
  self.events = events.new({ on_event = o.on_event, logger = o.logger, prefix = "optimizely.offline queue: ",
    on_error = function(name, err) self.report:callback_failed(name, err) end })
  self.pseudonym = o.pseudonymise ~= nil and ctx.pseudonymiser(o.pseudonymise, 2) or nil
  local store, err = setup.store(self, phase)
  if not store then return nil, err end
  self.store = store
  local lok, lerr = nledger.open(self)
  if not lok then return nil, lerr end
  self:started()
  return self:start()
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
  self.report:bump("dropped", kind)
  if kind == "invalid" then
    self.report:bump("invalid")
    self.report.meter:invalid()
  end
  if kind == "full" and err.bound and not err.option then
    err.option = self.store.name == "spool" and ("spool_" .. err.bound) or err.bound
  end
  return nil, err
end

local PUSH_OPTS = opts.schema("optimizely.offline.ngx.queue", "push opts", queue_opts.push_fields)

--- The error of a push refused because `max_queue` orders wait.
-- @param n how many wait
-- @return the error (kind "full", `bound` "max_queue", retryable)
-- @local
function Queue:full_error(n)
  return errors.new({ kind = "full", bound = "max_queue", retryable = true,
    message = "queue full: " .. n .. " orders waiting (max_queue " .. self.o.max_queue .. ")" })
end

--- Queue one order. No network I/O, no yield: any phase, log_by_lua included.
-- With a ledger (`opts.ledger`), as the threaded queue's push
-- (optimizely.offline.queue): an order sent before is not queued and its
-- skipped result is returned; a changed one is refused (kind "changed");
-- `po.force` queues it anyway; `po.amend` (memory or spool store; with
-- `shm` it raises) queues the DELETE and the new version behind it.
-- @param payload `{lang?, user?, order}` as accepted by `offline.encode`
-- @param po optional `{channel = name, force =, amend =}`
-- @return true, warnings; the skipped result; or nil, err (kind
--   "validation" with problems, "full" when `max_queue` (or a spool bound)
--   is reached — checked first, so a full queue refuses without validating
--   —, "config" (no token for the channel), "closed", "changed", or a
--   spool or ledger kind)
function Queue:push(payload, po)
  if po ~= nil then
    po = PUSH_OPTS:check(po, 2)
    if (po.force or po.amend) and not self.gate then
      error("optimizely.offline.ngx.queue: push: force and amend need the queue's opts.ledger", 2)
    end
  end
  local store = self.store
  if self.closed or (self.flusher and self.flusher.exiting and store:refuses_at_exit()) then
    return self:refuse(errors.new({ kind = "closed", retryable = false,
      message = self.closed and "the queue is closed" or "the worker is exiting" }))
  end
  -- checked before encoding: shedding load must be cheap
  local n = store:pending()
  if n >= self.o.max_queue then return self:refuse(self:full_error(n)) end
  local st = self.st
  local ch, cerr = ctx.channel_of(st, (po and po.channel) or self.o.channel)
  if not ch then return self:refuse(cerr) end
  local json, warnings = ctx.prepare(st, payload, self.pseudonym)
  if not json then return self:refuse(warnings) end
  local ref = core.ref_string(payload) or ""
  local ok, err = self:put(json, ref, ch, po)
  if ok ~= true then return ok, err end
  if store.name ~= "memory" then
    self.report.meter:queued() -- the scheduler counts what it is given; a store's pushes are counted here
    self.report:bump("pushed")
  end
  if self.flusher then self.flusher:kick() end
  return true, warnings
end

--- Through the ledger (when on), into the store: true, or what push
-- returns (the skipped result | nil, err).
-- @local
function Queue:put(json, ref, ch, po)
  local action, item = "post", nil
  if self.gate then
    local x, e
    item = { body = json, ref = ref, channel = self.st.channels[ch].name }
    action, x, e = nledger.admit(self, item, po)
    if action == "done" then return x, e end
  end
  local ok, err
  if action == "amend" then
    ok, err = nledger.put_amend(self, json, ref, ch)
  else
    self.ids = self.ids + 1
    ok, err = self.store:put({ id = self.ids, body = json, ref = ref, channel = ch, created = os.time() },
      self.st.channels[ch].name)
  end
  if ok then return true end
  if item then self.gate:release({ item }) end
  return self:refuse(err == "full" and self:full_error(self.store:pending()) or err)
end

--- Cancel an order (as the threaded queue's `cancel`): the DELETE waits
-- behind any create of the refCode still queued, spooled or in flight; a
-- create never sent is removed here instead and nothing is sent (counted
-- in `stats().dropped.cancelled`); with a ledger the cancel is recorded
-- `"cancelled"` and a later push of the refCode is refused unless forced.
-- Not in shared mode (`shm`): the orders are in the dict's list.
-- @param ref the refCode
-- @param co optional `{channel = name}`
-- @return `{ok = true, removed = n, queued = true | nil, attempts = 0}` | nil, err
function Queue:cancel(ref, co)
  if co ~= nil then co = queue_opts.CANCEL_OPTS:check(co, 2) end
  if self.store.name == "shm" then error("optimizely.offline.ngx.queue: cancel is not supported with opts.shm", 2) end
  if self.closed then
    return self:refuse(errors.new({ kind = "closed", retryable = false, message = "the queue is closed" }))
  end
  local rerr
  ref, rerr = queue_opts.check_ref(ref)
  if not ref then return nil, rerr end
  local ch, cerr = ctx.channel_of(self.st, (co and co.channel) or self.o.channel)
  if not ch then return self:refuse(cerr) end
  return nledger.cancel(self, ref, ch)
end

-- ------------------------------------------------------------------ stats

--- Counters of this worker's queue: the same keys as the threaded queue's
-- (`{queued, in_flight, limit (the requests the scheduler lets be in
-- flight now), sent, retried, failed, dead, invalid, pushed, unknown,
-- paused_for, paused, callback_errors, storage_errors,
-- storage_error?, dropped = {invalid =, full =, closed =, shutdown =,
-- config =}, spool = spool:stats() (with a spool)}`; in shared mode the
-- dict's numbers, the same in every process, plus `shared` and
-- `deliverer`).
function Queue:stats()
  local s, c = self.s, self.report.counters
  local ss = s and s:stats() or { sent = 0, retried = 0, failed = 0, dead = 0, pushed = 0, in_flight = 0,
    paused_for = 0 }
  if self.store.name == "shm" then return self.store:shared_stats(ss.paused_for) end
  local out = {
    in_flight = ss.in_flight, limit = ss.limit, sent = ss.sent, retried = ss.retried,
    failed = ss.failed + (c.dropped.shutdown or 0),
    dead = ss.dead, invalid = c.invalid, pushed = ss.pushed + c.pushed, unknown = c.unknown, dropped = {},
    paused_for = ss.paused_for,
    paused = ss.stopped and "credentials" or (ss.paused_for > 0 and "throttled" or nil),
    callback_errors = c.callback_errors, storage_errors = c.storage_errors,
    storage_error = self.report.storage_error, running = not self.closed,
  }
  for k, v in pairs(c.dropped) do out.dropped[k] = v end
  out.skipped, out.changed = {}, self.ledger_counts.changed
  for k, v in pairs(self.ledger_counts.skipped) do out.skipped[k] = v end
  local serr
  out.queued, out.spool, serr = self.store:depth()
  if serr then out.spool_error = tostring(serr) end
  return out
end

--- Delivery metrics of this worker's queue: the scheduler's counters plus
-- `invalid`, `dropped`, `unknown`, `callback_errors`, `storage_errors` and
-- the gauges `depth`, `in_flight`, `paused` and, with a spool, `spool`
-- (the shape: optimizely.offline.metrics). Per worker; `metrics_shm` sums
-- every worker's.
-- @return the metrics table
function Queue:metrics()
  local ss = self.s and self.s:stats()
  local gauges = { in_flight = ss and ss.in_flight or 0,
    paused = { throttled = ss and ss.paused_for > 0 and 1 or 0, credentials = ss and ss.stopped and 1 or 0 } }
  local depth, sst = self.store:depth()
  gauges.depth = depth
  if sst then gauges.spool = { orders = sst.queued, bytes = sst.bytes, dead = sst.dead } end
  return self.report:metrics(gauges)
end

--- Add this worker's metrics to the `metrics_shm` dict now (the queue does
-- it every `flush_interval` and at exit; a `/metrics` handler may call it
-- first so that its own worker's numbers are current). No-op without
-- `metrics_shm`.
function Queue:publish_metrics()
  if self.store.publish then self.store:publish() end
  self.report:publish()
end

--- After each round of a sender: once the exit grace is over, the answers
-- that still come settle orders (a spool's late acks): published at once,
-- as no periodic timer runs any more.
-- @local
function Queue:after_round()
  local f = self.flusher
  if f.grace_over then self.report:publish(true) end
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
    if self.s then self.report:drain() end
    left = self.store:left()
    return left == 0
  end, timeout or 10, function()
    local f = self.flusher
    if f and (self.store:has_due() or self.s:pending() > 0) then f:kick() end
  end)
  if ok then return nledger.flush(self) end
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
  if self.flusher then self.flusher:wake_all() end -- lingering senders end; the periodic timer closes the spool
  return ok, err
end

--- Try the credentials again now (after a pause for refused credentials).
function Queue:resume()
  if not self.s then return end
  self.s:resume()
  self.flusher:kick()
end

function Queue:__tostring()
  return "optimizely.offline.ngx.queue{" .. (self.o.spool and ("spool=" .. self.o.spool) or "memory")
    .. (self.closed and ", closed" or "") .. "}"
end

M.Queue = Queue
return M
