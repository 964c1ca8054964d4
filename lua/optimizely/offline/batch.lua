--- Concurrent batch sending: `client:send_batch(source, opts)`.
--
-- The scheduler (csrc/delivery/sched.c) decides — the retry schedule, the 429 pause,
-- the in-flight limit, the classifier and the policy are the ones the
-- queue's thread and `client:send` use — and the libcurl driver
-- (csrc/delivery/driver_curl.c, its slot pool on curl multi) sends. This module
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
local gate = require("optimizely.offline.ledger_gate")
local context = require("optimizely.offline.context")

local M = {}

local now, sleep = core.now, core.sleep
local min, max, floor, huge = math.min, math.max, math.floor, math.huge
local type, pcall, tostring = type, pcall, tostring
local is_interrupt = errors.is_interrupt

--- The options of `send_batch`.
M.schema = opts.schema("send_batch", "opts", gate.add_fields({
  concurrency = { type = "integer", min = 1, max = sched.MAX_CONCURRENCY, default = 8 },
  rate = { type = "number", above = 0 },
  on_result = { type = "function" },
  on_skipped = { type = "function" },
  progress = { type = "function" },
  progress_interval = { type = "number", min = 0, max = 86400, default = 0.2 },
  on_event = { type = "function" },
  channel = { type = "string", nonempty = true },
  on_interrupt = { type = "choice", choices = { "raise", "return" }, default = "raise" },
  adaptive = { type = "boolean", default = true },
  pseudonymise = { type = "any" },
  halt = { type = "function" },
  ledger_window = { type = "number", min = 0, max = 60, requires = "ledger" },
}, true))

-- Seconds between two calls of a caller's `halt()` at most (a signal
-- handled through it starts no request later than this).
local HALT_POLL = 0.02

-- Orders looked up (and reserved) in the ledger per transaction: one
-- write per AHEAD orders, while the requests already in flight go on.
-- Without the ledger's thread (ledger_window = 0: the command line) the
-- lookup is here, between reads, and fewer: a request's orders (their
-- decoded tables, kept until answered) then die before the generational
-- GC makes them old, where each would cost a major collection's trace
-- (a run again on a sent file: 3.5x fewer major collections than at 128).
local AHEAD, AHEAD_HERE = 128, 32

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

-- A refCode, or the payload to take it from.
local function ref_of(r)
  if type(r) == "table" then return core.ref_string(r) end
  return r
end

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
    skipped = 0, changed = 0,
    failures = {}, callback_errors = {}, read = 0, throttled = 0,
    in_flight = 0, concurrency = concurrency }
end

function Batch.new(st, source, o, L)
  local self = setmetatable({
    st = st, o = o, next_item = source_iter(source),
    summary = new_summary(o.concurrency),
    warnings_of = {},    -- encoder warnings of orders in the engine, by index
    exhausted = false, index = 0,
    started = now(),
    -- the ledger: orders looked up and reserved, waiting for the engine
    gate = L and gate.new(st, L) or nil, ahead = {}, ahead_at = 1, ahead_n = 0,
    skipped_by = {}, amended = {},
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
  if self.gate then
    self.gate:configure(cfg, o.ledger_window)
    -- the ledger's SQLite work overlaps the requests in flight, unless each
    -- end must be written as it comes (ledger_window = 0: the command line,
    -- whose kill -9 may then resend no more than the requests in flight)
    cfg.ledger_thread = o.ledger_window ~= 0
  end
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

-- The next order from the source, prepared, with no table made for it:
-- its index, body, channel index, warnings (nil when none) and payload;
-- or its index, false, the error that refused it and whether it is
-- invalid; nil at the end of the source.
function Batch:prepare()
  if self.exhausted then return nil end
  local payload, channel = self:pull()
  if payload == nil then
    self.exhausted = true
    return nil
  end
  return self:prepare_one(payload, channel)
end

-- Up to `most` orders from the source, each handed to `each(self, a,
-- payload, channel)` as soon as it is read (one protected call for all
-- of them): a source may hand back the same table, changed, so an order
-- is encoded before the next is read. Returns true when the source ended
-- (or failed: as `pull`, the batch then ends early). What `each` raises
-- is not the source's and goes on up.
local function read_source(self, a, most, each)
  local next_item = self.next_item
  for _ = 1, most do
    self.reading = true
    local p, c = next_item()
    self.reading = false
    if p == nil then return true end
    each(self, a, p, c)
  end
  return false
end

function Batch:pull_many(a, most, each)
  local ok, ended = pcall(read_source, self, a, most, each)
  if ok then return ended end
  local from_source = self.reading
  self.reading = false
  if is_interrupt(ended) or not from_source then error(ended, 0) end
  self.summary.error = "send_batch: the source raised an error: " .. tostring(ended)
  return true
end

-- One payload read, prepared (see `prepare`).
function Batch:prepare_one(payload, channel)
  local i = self.index + 1
  self.index = i
  self.summary.read = i
  local ch = channel == nil and self.default_ch or nil
  if not ch then
    local cerr
    ch, cerr = context.channel_of(self.st, channel or self.o.channel)
    if not ch then return i, false, cerr, false end
    if channel == nil then self.default_ch = ch end -- the same for every order naming none
  end
  local json, w = context.prepare(self.st, payload, self.pseudonym)
  if not json then return i, false, w, true end
  return i, json, ch, w[1] and w or nil, payload
end

-- The next order as an item `{i, body, ch, ref, w}`; or false, its index,
-- the error that refused it and whether it is invalid; nil at the end.
function Batch:prepare_next()
  local i, json, ch, w, payload = self:prepare()
  if i == nil then return nil end
  if not json then return false, i, ch, w end
  return { i = i, body = json, ch = ch, ref = core.ref_string(payload), w = w }
end

-- An order into the engine: a POST, or for an amend the DELETE of the
-- earlier version and the POST behind it (posted once the DELETE is
-- accepted: after_ok).
function Batch:add(it)
  if it.w then self.warnings_of[it.i] = it.w end
  local engine = self.engine
  if it.amend then
    self.amended[it.i] = true
    engine:add({ id = it.i, method = "DELETE", url = self.gate:cancel_url(it.ref), channel = it.ch, ref = it.ref })
    engine:add({ id = it.i, body = it.body, channel = it.ch, ref = it.ref, after_ok = true })
  else
    engine:add({ id = it.i, body = it.body, channel = it.ch, ref = it.ref })
  end
end

-- The next order to send without a ledger: read, prepared, added (or
-- refused on the spot). Returns "added", "done" (refused) or nil (the end).
function Batch:next_plain()
  local it, i, err, invalid = self:prepare_next()
  if it == nil then return nil end
  if not it then
    self:rejected(i, err, invalid)
    return "done"
  end
  self:add(it)
  return "added"
end

-- A skipped order (not an error), counted: told to `on_skipped`, else
-- to `on_result` (its result, built when `res` is nil: an order plainly
-- sent before, at `at`), and as an event. `ref` is its refCode or its
-- payload (the refCode is taken from it only when asked for): no table
-- is made for it when no one asks (a run again on a file sent in full).
function Batch:skip(i, res, at, channel, ref)
  local s, o = self.summary, self.o
  local reason = "already_sent"
  if res then reason, at = res.reason, res.at end
  s.skipped = s.skipped + 1
  local by = self.skipped_by
  by[reason] = (by[reason] or 0) + 1
  local on_skipped = o.on_skipped
  if on_skipped then
    local ok, err = pcall(on_skipped, i, reason, at)
    if not ok then
      if is_interrupt(err) then error(err, 0) end
      s.callback_errors[#s.callback_errors + 1] = { index = i, message = tostring(err) }
    end
  elseif o.on_result then
    self:result_callback(i, res or delivery.skipped(reason, { outcome = "sent", at = at }, channel, ref_of(ref)), nil)
  end
  local ev = self.events
  if ev.on_event or ev.logger then
    self:emit("skipped", { index = i, ref = res and res.ref or ref_of(ref), reason = reason, at = at })
  end
end

-- Orders sent before (`idx`, sent at `at`), counted and told to
-- `on_skipped` when no one else listens: one protected call for them all
-- (an error in it is a callback error, and the next is told).
function Batch:skip_many(idx, at, n)
  local s, fn, k = self.summary, self.o.on_skipped, 0
  local function tell()
    while k < n do
      k = k + 1
      fn(idx[k], "already_sent", at[k])
    end
  end
  while k < n do
    local ok, err = pcall(tell)
    if not ok then
      if is_interrupt(err) then
        self:count_skipped(k) -- those after it were not told: not counted
        error(err, 0)
      end
      s.callback_errors[#s.callback_errors + 1] = { index = idx[k], message = tostring(err) }
    end
  end
  self:count_skipped(n)
end

function Batch:count_skipped(n)
  local s, by = self.summary, self.skipped_by
  s.skipped = s.skipped + n
  by.already_sent = (by.already_sent or 0) + n
end

-- An order the ledger has another version (or the cancel) of: refused.
function Batch:refuse_changed(it, err)
  self.summary.changed = self.summary.changed + 1
  self:fail(it.i, err)
  self:emit("changed", { index = it.i, ref = it.ref, at = err.at, outcome = err.outcome, error = err })
end

-- A request to the ledger: up to AHEAD orders read, as arrays beside each
-- other (index, body, channel index, warnings, refCode) — no table per
-- order: a run again on a file sent in full skips every one of them.
local function new_asked()
  return { n = 0, i = {}, body = {}, ch = {}, w = {}, ref = {} }
end

-- One order read into request `a`: prepared, or refused on the spot.
function Batch:ask_one(a, payload, channel)
  local i, json, ch, w = self:prepare_one(payload, channel)
  if json then
    local n = a.n + 1
    a.n = n
    a.i[n], a.body[n], a.ch[n], a.ref[n] = i, json, ch, core.ref_string(payload)
    if w then a.w[n] = w end
    local one = a.one
    if one == nil then a.one = ch elseif one ~= ch then a.one = false end
  elseif i then
    self:rejected(i, ch, w)
  end
end

-- Order k of a request as an item `{i, body, ch, channel, ref, w}`: made
-- for the orders to send and those the ledger has news of.
function Batch:item_of(a, k)
  local ch = a.ch[k]
  return { i = a.i[k], body = a.body[k], ch = ch, channel = self.st.channels[ch].name,
    ref = a.ref[k], w = a.w[k] }
end

-- Every order of a request as items.
function Batch:items_of(a)
  local items = {}
  for k = 1, a.n do items[k] = self:item_of(a, k) end
  return items
end

-- Reads up to AHEAD orders and asks the ledger to look them up and
-- reserve them, on the engine's ledger thread (the answer is waited for by
-- `answered`), or here when there is no such thread. The usual request
-- (one channel, nothing forced) is the bodies themselves.
function Batch:ask()
  if self.exhausted then return end
  local a = new_asked()
  if self:pull_many(a, self.o.ledger_window == 0 and AHEAD_HERE or AHEAD, Batch.ask_one) then
    self.exhausted = true
  end
  local n, one = a.n, a.one
  if n == 0 then return end
  local g, o = self.gate, self.o
  local list, scope
  if one and not (o.force or o.amend) then
    list, scope = a.body, { host = g.host, site = g.site, channel = self.st.channels[one].name }
  else
    local items = self:items_of(a)
    list, scope = g:reserve_list(items, o), g:scope(items)
  end
  self.asked = a
  if not self.engine:ledger_reserve(scope, list, g.lease) then
    -- the refCodes beside the bodies: an order sent before is found
    -- without the ledger reading its body again
    self.sync_answers = { g.L:reserve(scope, list, { lease = g.lease, short = true,
      refs = list == a.body and a.ref or nil }) }
  end
end

-- The request asked last and the ledger's answers, in short (true:
-- reserved; a number: sent before at that time; else a table) | the
-- request, nil, err when it failed.
function Batch:answered()
  local a = self.asked
  self.asked = nil
  local sync = self.sync_answers
  self.sync_answers = nil
  if sync then return a, sync[1], sync[2] end
  local answers, err = self.engine:ledger_answers(true)
  -- the engine's failure in the ledger's shape (ledger.lua: an error object)
  if not answers and not errors.is(err) then err = errors.new(err) end
  return a, answers, err
end

-- Queues in `ahead` the orders the ledger reserved (asked last time),
-- and asks about the next ones at once: they are looked up and reserved
-- on the ledger's thread while these are sent. An order sent before is
-- counted as skipped there and then, with no table made for it. A ledger
-- that fails fails the orders asked about (and ends the batch: nothing
-- more is read); the first time, before anything was sent, `run` returns
-- nil, err.
function Batch:fill_ahead()
  if not self.asked then self:ask() end
  if not self.asked then return end
  -- asked here (no ledger thread): the next orders are read once these
  -- are handled, so an order's tables die young (a read ahead would only
  -- keep two requests alive at once, for the GC to promote and trace)
  local overlap = not self.sync_answers
  local a, answers, lerr = self:answered()
  if not answers then return self:ledger_failed(a, lerr) end
  self.admitted = true
  if overlap then self:ask() end
  local ahead, n = {}, 0
  local ai, aref, channels = a.i, a.ref, self.st.channels
  -- orders sent before, told together when only on_skipped listens
  local ev = self.events
  local quick = self.o.on_skipped and not (ev.on_event or ev.logger)
  local si, sat, ns = quick and {}, quick and {}, 0
  for k = 1, a.n do
    local ans = answers[k]
    if ans == true then
      n = n + 1
      ahead[n] = self:item_of(a, k)
    elseif type(ans) == "number" then
      if quick then
        ns = ns + 1
        si[ns], sat[ns] = ai[k], ans
      else
        self:skip(ai[k], nil, ans, channels[a.ch[k]].name, aref[k])
      end
    else
      n = self:decide(self:item_of(a, k), ans, ahead, n)
    end
  end
  self.ahead, self.ahead_at, self.ahead_n = ahead, 1, n
  if ns > 0 then self:skip_many(si, sat, ns) end
end

-- One order the ledger answered in full (forced, in flight elsewhere,
-- changed, cancelled): decided by the gate; queued in `ahead` when it is
-- to be sent. Returns the new length of `ahead`.
function Batch:decide(it, ans, ahead, n)
  self.gate:decide_each({ it }, { ans }, self.o, function(_, action, x, bare_ans)
    if action == "post" or action == "amend" then
      it.amend = action == "amend" or nil
      n = n + 1
      ahead[n] = it
    elseif action == "skip" then
      x = x or delivery.skipped("already_sent", bare_ans, it.channel, it.ref)
      self:skip(it.i, x, nil, it.channel, it.ref)
    else
      self:refuse_changed(it, x)
    end
  end, true)
  return n
end

-- The ledger failed: the orders read fail with its error, and the batch
-- reads no more.
function Batch:ledger_failed(a, err)
  err = gate.unusable(err)
  self.exhausted = true
  self.summary.ledger_error = err
  self.summary.error = self.summary.error or tostring(err)
  if not self.admitted then
    self.unusable = err -- nothing was sent: run returns nil, err
    return
  end
  for k = 1, a.n do self:fail(a.i[k], err) end
end

-- The next order to send with a ledger (see `next_plain`).
function Batch:next_ledgered()
  if self.ahead_at > self.ahead_n then
    if self.exhausted and not self.asked then return nil end
    self:fill_ahead()
    if self.ahead_at > self.ahead_n then
      if self.exhausted and not self.asked then return nil end
      return "done" -- all of them skipped or refused: read on
    end
  end
  local at = self.ahead_at
  local it = self.ahead[at]
  self.ahead[at] = false -- gone (a hole would make the length undefined)
  self.ahead_at = at + 1
  self:add(it)
  return "added"
end

-- Orders read and reserved (or being looked up) but not handed to the
-- engine yet: taken back (their reservations are the caller's to give back).
function Batch:take_ahead()
  local list = {}
  for k = self.ahead_at, self.ahead_n do list[#list + 1] = self.ahead[k] end
  self.ahead, self.ahead_at, self.ahead_n = {}, 1, 0
  if self.asked then
    -- the answer must come before the reservations can go back: only
    -- those reserved now are ours (a duplicate in flight is not)
    local a, answers = self:answered()
    for k = 1, a.n do
      local it, ans = self:item_of(a, k), answers and answers[k]
      it.held = ans == true or (type(ans) == "table" and ans.reserved == true)
      list[#list + 1] = it
    end
  end
  return list
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
  local next_order = self.gate and self.next_ledgered or self.next_plain
  while not self.stopped and not self.halted and self.engine:pending() < budget and self:rate_allows(t) do
    local got = next_order(self)
    if got == nil then return end
    if got == "added" and self.rate then self.tokens = self.tokens - 1 end
  end
end

-- Are orders left to read or to hand to the engine?
function Batch:more()
  return not self.exhausted or self.ahead_at <= self.ahead_n or self.asked ~= nil
end

-- One order not sent after a stop, with the error that stopped the batch.
function Batch:not_sent(i, ref)
  local why = self.stopped
  self.summary.not_sent = self.summary.not_sent + 1
  self.drained = (self.drained or 0) + 1
  local err = errors.new({ kind = why.kind, status = why.status, code = why.code, retryable = false,
    stop = true, attempts = 0, channel = why.channel,
    message = "not sent: " .. why.message })
  self:fail(i, err)
  self:emit("failure", { index = i, ref = ref, attempt = 0, error = err, reason = "credentials" })
end

-- After a stop, every order still in the source (or looked up in the
-- ledger and waiting) ends as not sent, with the error that stopped the
-- batch; their reservations go back.
function Batch:drain_not_sent()
  local waiting = self:take_ahead()
  for _, it in ipairs(waiting) do self:not_sent(it.i, it.ref) end
  self:release(waiting)
  while not self.exhausted do
    local payload = self:pull()
    if payload == nil then
      self.exhausted = true
      return
    end
    self.index = self.index + 1
    self.summary.read = self.index
    self:not_sent(self.index, type(payload) == "table" and core.ref_string(payload) or nil)
  end
end

-- Gives the reservations of orders not sent after all back to the
-- ledger (best effort: a failure only leaves them until this process ends).
-- @param list items with `body` or `ref`, and `channel` (a name) or `ch` (an index)
function Batch:release(list)
  if not self.gate or #list == 0 then return end
  local items, chans = {}, self.st.channels
  for _, it in ipairs(list) do
    if it.held ~= false then
      items[#items + 1] = { body = it.body, ref = not it.body and it.ref or nil,
        channel = it.channel or (it.ch and chans[it.ch].name) }
    end
  end
  self.gate:release(items)
end

-- ----------------------------------------------------------------- results

function Batch:handle(r)
  local what, i = r.what, r.id
  if r.method == "DELETE" and what ~= "retry" then
    -- an amend's DELETE: its order's result is the POST's (posted once the
    -- DELETE was accepted, or dead with its error), a stop ends both
    if what == "stopped" then self:release({ { ref = r.ref, channel = r.channel } }) end
    return
  end
  if what == "sent" then
    local w = self.warnings_of[i]
    self.warnings_of[i] = nil
    local res = delivery.success(r, r.body, r.attempts, nil, r.channel, w)
    if self.amended[i] then res.amended, self.amended[i] = true, nil end
    self:result_callback(i, res, nil)
  elseif what == "dead" or what == "stopped" then
    self.warnings_of[i] = nil
    self.amended[i] = nil
    local err = delivery.failure(r, r.body, r.attempts, r.channel, self.st.secrets)
    if what == "stopped" then
      err.stop = true
      if M.not_sent(err) then self.summary.not_sent = self.summary.not_sent + 1 end
      if not self.stopped then
        self.stopped = err
        self.summary.stopped = err
        self:emit("paused", { reason = "credentials", error = err })
      end
      self:release({ { ref = r.ref, channel = r.channel } })
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
  if self.o.halt and not self.halted then wake = min(wake, HALT_POLL) end
  return max(wake, 0)
end

function Batch:loop()
  local engine = self.engine
  while true do
    local t = now()
    if self.halted or (self.o.halt and self:halt_asked()) then self:halt() end
    self:feed(t)
    if self.unusable then return end
    if not self:more() and engine:pending() == 0 then break end
    if self.stopped and engine:pending() == 0 then break end
    engine:turn(self:wait_time(t))
    self:collect()
    if self.o.progress and now() - self.last_progress >= self.o.progress_interval then self:report(now()) end
  end
  self:collect()
  if self.stopped then self:drain_not_sent() end
end

-- Ids of job infos, sorted and without repeats (an amend is two jobs).
local function ids_of(infos)
  local ids, seen = {}, {}
  for _, j in ipairs(infos) do
    if not seen[j.id] then
      seen[j.id] = true
      ids[#ids + 1] = j.id
    end
  end
  table.sort(ids)
  return ids
end

-- Does the caller's `halt()` say stop? (An error in it is a callback
-- error, and does not stop the batch.)
function Batch:halt_asked()
  local ok, yes = pcall(self.o.halt)
  if ok then return yes and true or false end
  if is_interrupt(yes) then error(yes, 0) end
  local list = self.summary.callback_errors
  list[#list + 1] = { halt = true, message = tostring(yes) }
  return false
end

-- The caller's `halt()` said so: nothing more is read or started. Called
-- again after each turn: the orders read but not started are `unsent`,
-- those waiting for a retry (a retry scheduled since included) `unknown`,
-- and their reservations go back; those in flight go on.
function Batch:halt()
  local unknown, unsent = self.engine:drop_waiting(true)
  if not self.halted then
    self.halted, self.exhausted = true, true
    self.halted_unknown, self.halted_unsent = {}, {}
    for _, it in ipairs(self:take_ahead()) do
      unsent[#unsent + 1] = { id = it.i, ref = it.ref, channel = self.st.channels[it.ch].name }
    end
  end
  if #unknown + #unsent == 0 then return end
  if self.gate then
    self:release(unknown)
    self:release(unsent)
  end
  local hu, hs = self.halted_unknown, self.halted_unsent
  for _, j in ipairs(unknown) do hu[#hu + 1] = j end
  for _, j in ipairs(unsent) do hs[#hs + 1] = j end
  local s = self.summary
  s.halted, s.unknown, s.unsent = true, ids_of(hu), ids_of(hs)
end

-- After an interrupt (or a bug): stop the transfers and say what is
-- unknown. The ledger keeps what was acknowledged; the reservations of
-- the orders not acknowledged go back (a run again sends them).
function Batch:abandon(lerr)
  local s = self.summary
  s.interrupted = true
  s.error = tostring(lerr)
  local unknown, unsent = self.engine:drop(true)
  local waiting = self:take_ahead()
  for _, it in ipairs(waiting) do
    unsent[#unsent + 1] = { id = it.i, ref = it.ref, channel = self.st.channels[it.ch].name }
  end
  self:collect()
  if self.gate then
    self:flush_ledger()
    self:release(unknown)
    self:release(unsent)
  end
  -- and those a halt took out before (released then)
  for _, j in ipairs(self.halted_unknown or {}) do unknown[#unknown + 1] = j end
  for _, j in ipairs(self.halted_unsent or {}) do unsent[#unsent + 1] = j end
  s.unknown, s.unsent = ids_of(unknown), ids_of(unsent)
end

-- Writes the ledger's notes waiting in the engine; a failure is the
-- summary's `ledger_error` (those orders were sent but are not recorded:
-- a run again would send them again).
function Batch:flush_ledger()
  local ok, err = self.engine:flush_ledger()
  if not ok then
    err = gate.unusable(err)
    self.summary.ledger_error = err
    self.summary.error = self.summary.error or tostring(err)
  end
end

function Batch:finish(ok, lerr)
  if not ok then self:abandon(lerr) end
  if ok and self.gate then self:flush_ledger() end
  self.finishing = true
  if self.o.progress then self:report(now()) end
  self:refresh()
  self.summary.in_flight = 0
  if self.st.metrics then
    local m = self.engine:metrics()
    -- the orders refused before the engine, and those a stop left in the source
    m.invalid = self.summary.invalid
    m.changed, m.skipped = self.summary.changed, self.skipped_by
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
--   baseline + 20 ms (csrc/delivery/limiter.h; doc/topics/performance.md).
--   `adaptive = false`: `concurrency` in flight, halved by a 429 and
--   growing back by one per window of successes.
--   `halt = fn()`: asked between turns (at least every 20 ms); once it
--   returns true nothing more is read or started — the orders read but not
--   started end in `unsent`, those waiting for a retry in `unknown` (their
--   ledger reservations go back), the requests in flight finish, and the
--   summary has `halted = true` (how the command line stops on a signal:
--   an interrupt raised later still abandons what is in flight).
--   **The ledger** (optimizely.offline.ledger_gate): `ledger = true` (the
--   command line's file, `ledger.default_path()`), a path, or a ledger
--   object (the caller's, left open); `ledger_keep` (days, default 200) and
--   `ledger_store_key` (default "store") with `true` or a path; `force =
--   true` sends orders the ledger has anyway; `amend = true` replaces a
--   changed order (DELETE, then POST once the DELETE is accepted). Orders
--   are looked up and reserved 128 at a time as they are read; each
--   delivered one is recorded as the engine settles it (a few at a time,
--   one transaction each, at most `ledger_window` seconds after its answer:
--   default 0.02; 0 writes after each turn of the engine, so that after a
--   kill -9 only the requests in flight are unknown to the ledger); the reservations of orders not sent after all
--   (a stop, an interrupt) go back. An order the ledger has is not sent:
--   `on_result(i, res)` with `res.skipped` ("already sent", "already in
--   flight"), counted in `skipped` — or, when `on_skipped = fn(i, reason,
--   at)` is given, that instead (`reason` "already_sent" or "in_flight",
--   `at` when it was sent, or nil): no result table per skipped order, the
--   cheap way to hear of them when a file is sent again; another version of it (or its cancel)
--   is `on_result(i, nil, err)` with `err.kind == "changed"`, counted in
--   `changed` and `failed`.
-- @return summary `{sent, skipped, failed, changed, retried, invalid,
--   not_sent, elapsed, failures = {{index, err}}, callback_errors = {{index |
--   progress, message}}, read, throttled, in_flight, concurrency}`: `failed`
--   counts every order not sent that is an error (invalid, changed and
--   not_sent included), so `failed == #failures` and `sent + skipped +
--   failed == read`; `skipped` the orders the ledger had (not errors);
--   `retried` attempts repeated; `throttled` 429 answers; `in_flight` and
--   `concurrency` (the current in-flight limit, which the adaptive limit
--   moves) are for progress callbacks. After `halt`: `halted`, `unknown`
--   and `unsent` (indexes, sorted). When the batch stopped early also
--   `error`; after refused credentials `stopped` (the error); after an
--   interruption `interrupted`, `unknown` and `unsent` (indexes, sorted);
--   when the ledger failed during the run `ledger_error` (kind "storage" or
--   "busy": orders it could not look up failed with it, and nothing more
--   was read; or, at the end, orders delivered but not recorded).
--   Or nil, err when the ledger is unusable before anything is sent (kind
--   "storage" naming the file, code "foreign" for a file that is not a ledger; or "busy"):
--   nothing was sent.
function M.run(st, source, o)
  if o ~= nil and type(o) ~= "table" then error("send_batch: opts must be a table, got " .. type(o), 3) end
  o = M.schema:check(o, 3)
  if (o.force or o.amend) and not o.ledger then
    error("send_batch: opts." .. (o.force and "force" or "amend") .. " needs opts.ledger", 3)
  end
  local L, lerr = gate.open(o, nil, nil, st.ledgers)
  if lerr then return nil, gate.unusable(lerr) end
  local self = Batch.new(st, source, o, L)
  local ok, err = pcall(self.loop, self)
  if self.unusable then
    self.engine:close()
    return nil, self.unusable
  end
  return self:finish(ok, err)
end

-- the block kept for callers that drive a sleep themselves (benchmarks)
M.sleep = sleep

return M
