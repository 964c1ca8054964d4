--- What the nginx queue tells its user: the scheduler's results turned
-- into `on_success` / `on_failure` calls, events and log lines; the counts
-- only the Lua side can see (refused pushes, orders lost or unknown at
-- worker exit, raising callbacks, spool failures); and the metrics, this
-- worker's and, with `metrics_shm`, every worker's in one shared dict.
--
-- The scheduler counts every delivery (sent, dead, retried, throttled,
-- requests, latency); nothing here counts them again.
--
-- **At worker exit** every order still held in memory ends as exactly one of:
--
--  - reported not delivered (never attempted, or waiting for a retry):
--    `on_failure(ref, err)` with kind "shutdown", counted in
--    `dropped.shutdown` (and `failed`), one log line naming its refCode;
--  - unknown (in flight when the shutdown grace ended: the endpoint may or
--    may not have it): counted in `unknown` (`optimizely_offline_orders_unknown_total`),
--    one log line naming its refCode and an `unknown` event — not passed to
--    `on_failure`, not counted as dropped. Its answer, if it comes before
--    the process ends, is logged (and not counted: the order is accounted).
-- @module optimizely.offline.ngx.report
local ngx = ngx
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local delivery = require("optimizely.offline.delivery")
local metrics = require("optimizely.offline.metrics")

local log, ERR = errors.logger(ngx.log), ngx.ERR
local quote, max = core.quote, math.max

local M = {}

local Report = {}
Report.__index = Report

--- A reporter for queue `q` (its `o`, `st`, `events`; `s` once set).
-- @param q the queue
-- @return the reporter
function M.new(q)
  return setmetatable({ q = q, meter = core.metrics_new(),
    counters = { invalid = 0, dropped = {}, callback_errors = 0, storage_errors = 0, unknown = 0, pushed = 0 },
  }, Report)
end

--- Adds one to a counter: `counters[key]`, or `counters[key][sub]`.
-- @param key the counter
-- @param sub the sub-key, or nil
function Report:bump(key, sub)
  local c = self.counters
  if sub then c[key][sub] = (c[key][sub] or 0) + 1 else c[key] = c[key] + 1 end
  local store = self.q.store
  if store and store.counted then store:counted(key, sub) end
end

--- A raising callback: counted in `callback_errors` and logged, never
-- breaking delivery.
-- @param name the callback's name
-- @param err what it raised
function Report:callback_failed(name, err)
  self.counters.callback_errors = self.counters.callback_errors + 1
  log(ERR, "optimizely.offline queue: ", name, " raised: ", tostring(err))
end

--- Calls the user's callback `o[name]`, protected.
-- @param name "on_success" or "on_failure"
-- @param ... its arguments
function Report:call(name, ...)
  local fn = self.q.o[name]
  local err = fn and errors.callback(fn, ...)
  if err then self:callback_failed(name, err) end
end

--- A spool operation failed (a full disk, say): counted
-- (`storage_errors`, `storage_error`), logged and emitted as a `storage`
-- event; it never stops delivery silently.
-- @param what the operation ("claim", "ack", "retry", "kill", "release", "put")
-- @param err its error
function Report:storage_failed(what, err)
  self.counters.storage_errors = self.counters.storage_errors + 1
  self.storage_error = tostring(err)
  self.q.events:emit("storage", { operation = what, error = err })
end

-- ------------------------------------------------------------ results

-- The error object of a result (redacted: no token in it).
local function failure_of(q, r)
  return delivery.failure(r, r.body, r.attempts, r.channel, q.st.secrets)
end

local HANDLERS = {
  sent = function(self, r)
    self:call("on_success", r.ref, delivery.success(r, r.body, r.attempts, { latency = r.latency }, r.channel))
  end,
  dead = function(self, r)
    local err = failure_of(self.q, r)
    err.retryable = false -- it is dead: retries are over
    self:call("on_failure", r.ref, err)
    self.q.events:emit("dead", { ref = r.ref, attempt = r.attempts, error = err, reason = r.why })
  end,
  retry = function(self, r)
    self.q.events:emit("retry", { ref = r.ref, attempt = r.attempts, delay = r["until"],
      error = failure_of(self.q, r) })
  end,
  paused = function(self, r)
    local err = r.kind and failure_of(self.q, r) or nil
    self.q.events:emit("paused", { reason = r.why, seconds = r["until"], error = err })
  end,
  resumed = function(self, r)
    self.q.events:emit("resumed", { reason = r.why })
  end,
}
HANDLERS.stopped = HANDLERS.dead

--- Takes the scheduler's results collected so far and reports each one
-- (callbacks, events, log lines). Cheap when there are none.
function Report:drain()
  local s = self.q.s
  if not s then return end
  local rs = s:results()
  for i = 1, #rs do
    local r = rs[i]
    local h = HANDLERS[r.what]
    if h then
      local ok, err = pcall(h, self, r)
      if not ok then log(ERR, "optimizely.offline queue: reporting a result raised: ", tostring(err)) end
    end
  end
end

-- -------------------------------------------------------------- at exit

--- An order the exiting worker could not deliver: counted in
-- `dropped.shutdown` and `failed`, `on_failure(ref, err)` (kind
-- "shutdown"), and its own log line (never rate-limited).
-- @param job the job info (`ref`, `attempts`, `channel`)
-- @param why what kept it back
function Report:not_delivered(job, why)
  self:bump("dropped", "shutdown")
  local e = errors.new({ kind = "shutdown", retryable = false, attempts = job.attempts, channel = job.channel,
    message = "worker exiting before the order was delivered (" .. why .. ")" })
  self.meter:failed(e, false, job.channel)
  self:call("on_failure", job.ref, e)
  self.q.events:emit("dropped", { reason = "shutdown", ref = job.ref, attempt = job.attempts, error = e },
    "worker exiting, order " .. quote(job.ref or "") .. " not delivered: " .. why)
end

--- An order in flight when the shutdown grace ended: counted in
-- `unknown`, its own log line and an `unknown` event; not dropped, not
-- passed to on_failure.
-- @param job the job in flight (`ref`, `attempt`)
function Report:unknown(job)
  self:bump("unknown")
  self.q.events:emit("unknown", { ref = job.ref, attempt = job.attempt, reason = "shutdown" },
    "worker exiting, order " .. quote(job.ref or "") .. " still in flight when the shutdown grace ended"
      .. " (shutdown_timeout " .. self.q.o.shutdown_timeout .. " s): the endpoint may or may not have it"
      .. " (counted unknown)")
end

--- The answer to an order counted unknown came after all: logged, nothing
-- counted (the order is accounted already).
-- @param job the job
-- @param status what the transport returned: the status (nil: a failure)
-- @param body the body, or the failure's kind
-- @param info the transfer info, or the failure's message
-- @param code the failure's own error number, or nil
function Report:late(job, status, body, info, code)
  local rec = core.check_reply(status, body, info, code)
  local what = "was delivered after all"
  if not rec.ok then
    what = "was not delivered: " .. tostring(delivery.failure(rec, type(body) == "string" and body or nil,
      job.attempt, job.channel, self.q.st.secrets))
  end
  self.q.events:log("warn", "order " .. quote(job.ref or "") .. " (counted unknown at worker exit) " .. what
    .. " (its answer came after the shutdown grace)", false)
end

--- At exit, the orders of a worker that keeps them only in memory: those
-- in flight are unknown, every other one is reported not delivered.
-- @param flying the jobs in flight, by token
-- @param attempted job infos attempted before (waiting for a retry) or in flight
-- @param unsent job infos never attempted
function Report:exit_memory(flying, attempted, unsent)
  local in_flight, list = {}, {}
  for _, job in pairs(flying) do
    in_flight[job.id] = true
    list[#list + 1] = job
  end
  table.sort(list, function(a, b) return tostring(a.ref) < tostring(b.ref) end)
  for _, job in ipairs(list) do self:unknown(job) end
  for _, info in ipairs(attempted) do
    if not in_flight[info.id] then
      self:not_delivered(info, info.attempts .. " attempt" .. (info.attempts == 1 and "" or "s")
        .. " failed; the next one was not due before the worker exited")
    end
  end
  for _, info in ipairs(unsent) do
    self:not_delivered(info, "the worker exited before the order could be sent")
  end
  local lost = self.counters.dropped.shutdown or 0
  if lost > 0 then
    log(ERR, "optimizely.offline queue: worker exiting, ", lost, " order(s) not delivered, ", #list,
      " unknown (no spool configured)")
  end
end

-- ---------------------------------------------------------------- metrics

--- The metrics of this worker's queue: the scheduler's counts, plus what
-- only the Lua side sees, plus the gauges.
-- @param gauges `{depth, in_flight, paused, spool}` (the store's and scheduler's)
-- @return the metrics table (optimizely.offline.metrics)
function Report:metrics(gauges)
  local q, c = self.q, self.counters
  local m = q.s and metrics.merge(q.s:metrics(), self.meter:get()) or self.meter:get()
  m.invalid, m.callback_errors, m.storage_errors = c.invalid, c.callback_errors, c.storage_errors
  m.unknown = c.unknown
  m.dropped = {}
  for k, v in pairs(c.dropped) do m.dropped[k] = v end
  for k, v in pairs(gauges) do m[k] = v end
  return m
end

--- Adds the metrics' deltas since the last time to `metrics_shm`, and
-- this worker's gauges (removed at exit). No-op without `metrics_shm`.
-- @param exiting true at worker exit
function Report:publish(exiting)
  local q = self.q
  local dict = q.metrics_dict
  if not dict then return end
  self.publisher = self.publisher or metrics.shm_publisher(dict, { id = ngx.worker.pid(),
    ttl = max(10, 5 * q.o.flush_interval), spool_id = q.o.spool,
    on_error = function(ierr)
      q.events:log("error", "metrics_shm " .. quote(q.o.metrics_shm) .. ": " .. tostring(ierr)
        .. " (make the lua_shared_dict larger)", "metrics_shm")
    end })
  local ok, err = pcall(function() self.publisher(q:metrics(), exiting) end)
  if not ok then log(ERR, "optimizely.offline queue: metrics flush failed: ", tostring(err)) end
end

M.Report = Report
return M
