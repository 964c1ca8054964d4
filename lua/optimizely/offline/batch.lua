--- Concurrent batch sending: `client:send_batch(source, opts)`.
--
-- The scheduler (csrc/sched.c) decides — the retry schedule, the 429 pause,
-- the in-flight limit, the classifier and the policy are the ones the
-- queue's thread and `client:send` use — and the libcurl driver
-- (csrc/driver_curl.c, its slot pool on curl multi) sends. This module
-- feeds it
-- from the source — streamed, so only the orders in flight or waiting for a
-- retry are held and memory stays flat however long the source is — and
-- turns what comes back into results and callbacks. Callbacks run in Lua
-- between engine turns (never inside curl), protected: an error in one is
-- recorded in `summary.callback_errors` and the batch goes on.
--
-- Credentials refused (kind "auth": a 401/403 or an envelope naming the
-- site, token or channel) stop the batch: nothing more is sent with them,
-- and every order not tried yet ends as failed with that error (counted in
-- `summary.not_sent`, told by `not_sent(err)`), never as lost.
--
-- Ctrl-C: the transfers stop; `summary.interrupted` is set, `unknown` lists
-- the orders whose outcome is not known (in flight or waiting for a
-- retry) and `unsent` those never started; then the interrupt is raised
-- again (an `errors.Interrupted` carrying the summary) so a script does not
-- go on as if nothing happened — unless `on_interrupt = "return"`.
-- @module optimizely.offline.batch
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")
local delivery = require("optimizely.offline.delivery")
local events = require("optimizely.offline.events")
local sched = require("optimizely.offline.sched")
local context = require("optimizely.offline.context")

local M = {}

local now, sleep = core.now, core.sleep
local min, max, floor, huge = math.min, math.max, math.floor, math.huge
local type, pcall, tostring = type, pcall, tostring
local is_interrupt = errors.is_interrupt

--- The options of `send_batch`.
M.schema = opts.schema("send_batch", "opts", {
  concurrency = { type = "integer", min = 1, max = sched.MAX_CONCURRENCY, default = 8 },
  rate = { type = "number", above = 0 },
  on_result = { type = "function" },
  progress = { type = "function" },
  progress_interval = { type = "number", min = 0, max = 86400, default = 0.2 },
  on_event = { type = "function" },
  channel = { type = "string", nonempty = true },
  on_interrupt = { type = "choice", choices = { "raise", "return" }, default = "raise" },
  adaptive = { type = "boolean", default = true },
  pseudonymise = { type = "any" },
})

-- An array or an iterator function as an iterator of payload, channel.
-- An array item may be `{payload = p, channel = name}` (a payload never has
-- a `payload` key).
local function source_iter(source)
  local t = type(source)
  if t == "function" then return source end
  if t == "table" then
    local i = 0
    return function()
      i = i + 1
      local item = source[i]
      if type(item) == "table" and rawget(item, "payload") ~= nil then
        return rawget(item, "payload"), rawget(item, "channel")
      end
      return item
    end
  end
  -- level 5: source_iter < Batch.new < M.run < Client:send_batch < the caller
  error("send_batch: source must be an array of payloads or an iterator function, got " .. t, 5)
end

local Batch = {}
Batch.__index = Batch

--- Is `err` the failure of an order that was never tried because refused
-- credentials stopped the batch? Those are the orders `summary.not_sent`
-- counts (the order whose own request was refused is not one of them).
-- @param err an order's error (from `on_result` or `summary.failures`)
-- @return boolean
function M.not_sent(err)
  return type(err) == "table" and err.stop == true and (err.attempts or 0) == 0
end

local function new_summary(concurrency)
  return { sent = 0, failed = 0, retried = 0, invalid = 0, not_sent = 0, elapsed = 0,
    failures = {}, callback_errors = {}, read = 0, throttled = 0,
    in_flight = 0, concurrency = concurrency }
end

function Batch.new(st, source, o)
  local self = setmetatable({
    st = st, o = o, next_item = source_iter(source),
    summary = new_summary(o.concurrency),
    warnings_of = {},    -- encoder warnings of orders in the engine, by index
    exhausted = false, index = 0,
    started = now(),
    -- the batch's own pseudonymiser, else the client's
    pseudonym = o.pseudonymise ~= nil and context.pseudonymiser(o.pseudonymise, 3) or nil,
  }, Batch)
  self.last_progress = self.started
  -- the batch's on_event, else the client's; the client's logger
  self.events = events.new({ on_event = o.on_event or st.on_event, logger = st.logger,
    prefix = "optimizely.offline send_batch: " })
  -- a token bucket of at most `burst` tokens (no catch-up burst after a
  -- pause), refilled at `rate` per second
  if o.rate and o.rate ~= huge then
    self.rate = o.rate
    self.burst = max(1, min(o.concurrency, floor(o.rate / 50)))
    self.tokens, self.refilled = 1, self.started
  end
  local cfg = sched.config(st, { http = st.http_opts, concurrency = o.concurrency, adaptive = o.adaptive,
    on_stop = "drain", report_all = o.on_result ~= nil,
    report_retries = (self.events.on_event or self.events.logger) ~= nil })
  self.engine = core.engine_new(cfg)
  return self
end

-- -------------------------------------------------------------- callbacks

function Batch:callback(fn, ...)
  return errors.callback(fn, ...)
end

function Batch:result_callback(i, res, err)
  local on_result = self.o.on_result
  if not on_result then return end
  local msg = self:callback(on_result, i, res, err)
  if msg then
    local list = self.summary.callback_errors
    list[#list + 1] = { index = i, message = msg }
  end
end

function Batch:emit(kind, fields)
  self.events:emit(kind, fields)
end

function Batch:fail(i, err)
  local s = self.summary
  s.failed = s.failed + 1
  s.failures[#s.failures + 1] = { index = i, err = err }
  self:result_callback(i, nil, err)
end

-- ----------------------------------------------------------------- feeding

-- The next payload and its channel; a failing source ends the batch early
-- (what is in flight still finishes).
function Batch:pull()
  local ok, payload, channel = pcall(self.next_item)
  if ok then return payload, channel end
  if is_interrupt(payload) then error(payload, 0) end
  self.summary.error = "send_batch: the source raised an error: " .. tostring(payload)
  return nil
end

function Batch:rejected(i, err, invalid)
  err.attempts = 0
  if invalid then self.summary.invalid = self.summary.invalid + 1 end
  self:fail(i, err)
end

-- One order from the source into the engine (or refused on the spot).
function Batch:admit(payload, channel)
  local i = self.index + 1
  self.index = i
  self.summary.read = i
  local ch, cerr = context.channel_of(self.st, channel or self.o.channel)
  if not ch then return self:rejected(i, cerr, false) end
  local json, w = context.prepare(self.st, payload, self.pseudonym)
  if not json then return self:rejected(i, w, true) end
  if w[1] then self.warnings_of[i] = w end
  self.engine:add({ id = i, body = json, channel = ch, ref = core.ref_string(payload) })
end

function Batch:rate_allows(t)
  if not self.rate then return true end
  self.tokens = min(self.burst, self.tokens + (t - self.refilled) * self.rate)
  self.refilled = t
  return self.tokens >= 1
end

-- Keep the engine supplied: up to twice its slots waiting or in flight,
-- within the rate.
function Batch:feed(t)
  local budget = self.o.concurrency * 2
  while not self.exhausted and not self.stopped and self.engine:pending() < budget and self:rate_allows(t) do
    local payload, channel = self:pull()
    if payload == nil then
      self.exhausted = true
      return
    end
    self:admit(payload, channel)
    if self.rate then self.tokens = self.tokens - 1 end
  end
end

-- After a stop, every order still in the source ends as not sent, with
-- the error that stopped the batch.
function Batch:drain_not_sent()
  local why = self.stopped
  while not self.exhausted do
    local payload = self:pull()
    if payload == nil then
      self.exhausted = true
      return
    end
    self.index = self.index + 1
    self.summary.read = self.index
    self.summary.not_sent = self.summary.not_sent + 1
    self.drained = (self.drained or 0) + 1
    local err = errors.new({ kind = why.kind, status = why.status, code = why.code, retryable = false,
      stop = true, attempts = 0, channel = why.channel,
      message = "not sent: " .. why.message })
    self:fail(self.index, err)
    self:emit("failure", { index = self.index, ref = type(payload) == "table" and core.ref_string(payload) or nil,
      attempt = 0, error = err, reason = "credentials" })
  end
end

-- ----------------------------------------------------------------- results

function Batch:handle(r)
  local what, i = r.what, r.id
  if what == "sent" then
    local w = self.warnings_of[i]
    self.warnings_of[i] = nil
    self:result_callback(i, delivery.success(r, r.body, r.attempts, nil, r.channel, w), nil)
  elseif what == "dead" or what == "stopped" then
    self.warnings_of[i] = nil
    local err = delivery.failure(r, r.body, r.attempts, r.channel, self.st.secrets)
    if what == "stopped" then
      err.stop = true
      if M.not_sent(err) then self.summary.not_sent = self.summary.not_sent + 1 end
      if not self.stopped then
        self.stopped = err
        self.summary.stopped = err
        self:emit("paused", { reason = "credentials", error = err })
      end
    end
    self:fail(i, err)
    self:emit("failure", { index = i, ref = r.ref, attempt = r.attempts, error = err,
      reason = what == "stopped" and "credentials" or r.why })
  elseif what == "retry" then
    self:emit("retry", { index = i, ref = r.ref, attempt = r.attempts, delay = r["until"],
      error = delivery.failure(r, nil, r.attempts, r.channel, self.st.secrets) })
  elseif what == "paused" then
    self:emit("paused", { reason = r.why, seconds = r["until"],
      error = r.kind and delivery.failure(r, nil, 0, nil, self.st.secrets) or nil })
  elseif what == "resumed" then
    self:emit("resumed", { reason = r.why })
  end
end

function Batch:collect()
  local results = self.engine:results()
  for k = 1, #results do self:handle(results[k]) end
end

-- ----------------------------------------------------------------- the loop

function Batch:refresh()
  local s, e = self.summary, self.engine:stats()
  s.sent, s.retried, s.throttled = e.sent, e.retried, e.throttled
  s.in_flight, s.concurrency = e.in_flight, e.limit
  s.elapsed = now() - self.started
end

function Batch:report(t)
  self.last_progress = t
  self:refresh()
  if self.finishing then self.summary.in_flight = 0 end
  local msg = self:callback(self.o.progress, self.summary)
  if msg then
    local list = self.summary.callback_errors
    list[#list + 1] = { progress = true, message = msg }
  end
end

-- How long the engine may wait: completions wake it anyway; a rate token
-- or the next progress report may be due first.
function Batch:wait_time(t)
  local wake = 1
  if self.rate and self.tokens < 1 and not self.exhausted then wake = min(wake, (1 - self.tokens) / self.rate) end
  if self.o.progress then wake = min(wake, max(0, self.last_progress + self.o.progress_interval - t)) end
  return max(wake, 0)
end

function Batch:loop()
  local engine = self.engine
  while true do
    local t = now()
    self:feed(t)
    if self.exhausted and engine:pending() == 0 then break end
    if self.stopped and engine:pending() == 0 then break end
    engine:turn(self:wait_time(t))
    self:collect()
    if self.o.progress and now() - self.last_progress >= self.o.progress_interval then self:report(now()) end
  end
  self:collect()
  if self.stopped then self:drain_not_sent() end
end

-- After an interrupt (or a bug): stop the transfers and say what is unknown.
function Batch:abandon(lerr)
  local s = self.summary
  s.interrupted = true
  s.error = tostring(lerr)
  local unknown, unsent = self.engine:drop()
  table.sort(unknown)
  table.sort(unsent)
  s.unknown, s.unsent = unknown, unsent
  self:collect()
end

function Batch:finish(ok, lerr)
  if not ok then self:abandon(lerr) end
  self.finishing = true
  if self.o.progress then self:report(now()) end
  self:refresh()
  self.summary.in_flight = 0
  if self.st.metrics then
    local m = self.engine:metrics()
    -- the orders refused before the engine, and those a stop left in the source
    m.invalid = self.summary.invalid
    if self.drained then
      local why = self.stopped
      m.failed = m.failed + self.drained
      m.failures[#m.failures + 1] = { kind = why.kind, status = why.status, code = why.code, n = self.drained }
    end
    self.st.metrics:merge(m)
  end
  self.engine:close()
  if not ok and is_interrupt(lerr) and self.o.on_interrupt == "raise" then
    error(errors.interrupted(self.summary), 0)
  end
  return self.summary
end

--- Run a batch. Called by `client:send_batch`.
-- @param st the client's delivery context
-- @param source array of payloads (or `{payload =, channel =}` items), or
--   an iterator function returning `payload [, channel]` until nil
-- @param o options: `{concurrency = 8, rate = orders/s, on_result =
--   fn(i, res, err), progress = fn(summary), progress_interval = 0.2,
--   on_event = fn(event), channel = name (default: config.channel),
--   on_interrupt = "raise" | "return", adaptive = true}`. `concurrency`
--   is the most requests in flight. `adaptive` (the default): the number
--   in flight starts at 8 (at most `concurrency`), doubles per round trip
--   until the first sign of overload, then grows by about 6 % a round trip
--   (+1 per 16 round trips within one of the limit that last backed off);
--   it backs off on a 429 to 0.9 x the limit and at most the number the
--   server held when it refused, on a retryable 5xx or a timeout to 0.9 x,
--   and when a round trip's mean latency exceeds 3 x the baseline and the
--   baseline + 20 ms (csrc/limiter.h; doc/topics/performance.md).
--   `adaptive = false`: `concurrency` in flight, halved by a 429 and
--   growing back by one per window of successes.
-- @return summary `{sent, failed, retried, invalid, not_sent, elapsed,
--   failures = {{index, err}}, callback_errors = {{index | progress, message}},
--   read, throttled, in_flight, concurrency}`: `failed` counts every order
--   not sent (invalid and not_sent included), so `failed == #failures` and
--   `sent + failed == read`; `retried` attempts repeated; `throttled` 429
--   answers; `in_flight` and `concurrency` (the current in-flight limit,
--   which the adaptive limit moves) are for progress callbacks. When the
--   batch stopped early also `error`; after refused credentials `stopped`
--   (the error); after an interruption `interrupted`, `unknown` and
--   `unsent` (indexes, sorted).
function M.run(st, source, o)
  if o ~= nil and type(o) ~= "table" then error("send_batch: opts must be a table, got " .. type(o), 3) end
  o = M.schema:check(o, 3)
  local self = Batch.new(st, source, o)
  local ok, lerr = pcall(self.loop, self)
  return self:finish(ok, lerr)
end

-- the block kept for callers that drive a sleep themselves (benchmarks)
M.sleep = sleep

return M
