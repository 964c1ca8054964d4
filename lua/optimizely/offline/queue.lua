--- Asynchronous delivery outside nginx: `client:queue(opts)`.
-- `push` validates and encodes at once, then hands the bytes to the libcurl
-- engine running on a thread of its own (csrc/delivery/worker.c) without any network
-- I/O; with a spool the order is in SQLite — durable — before `push`
-- returns, and the thread delivers from the spool, so a restart (or `kill
-- -9`) loses nothing: what was not acknowledged is still there, with its
-- attempt count and next attempt time.
--
-- A queue outlasts outages: retryable failures are retried with capped
-- backoff until the order is `max_age` old (default 3 days), not a small
-- number of attempts; dead letters are for orders the endpoint rejects or
-- that outlive `max_age`. Refused credentials pause the queue (the orders
-- wait) and one order tries again every `auth_pause` seconds, or at once
-- after `queue:resume()`.
--
-- Results come back to Lua when you call `poll`, `flush` or `close`: the
-- `on_success(ref, res)` / `on_failure(ref, err)` / `on_event(ev)` callbacks
-- run there, protected, and the `logger(level, message)` (the queue's, else
-- the client's) gets one rate-limited line per event (optimizely.offline.events).
-- Delivery itself goes on in the thread whether or not you poll. The
-- queue logs one line when it starts (URL, site, channels; never the
-- token); `metrics()` returns its counters and gauges.
--
-- Several processes may share one spool file: each claims orders under a
-- lease (`lease`, longer than the client's timeout), so an order is never
-- sent by two of them at once; `flush` waits for the whole file. The thread
-- is started by the first push (or at once when the spool holds orders),
-- and again in a forked child (the pid is checked on every call).
-- @module optimizely.offline.queue
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")
local delivery = require("optimizely.offline.delivery")
local events = require("optimizely.offline.events")
local sched = require("optimizely.offline.sched")
local spool = require("optimizely.offline.spool")
local metrics = require("optimizely.offline.metrics")
local context = require("optimizely.offline.context")
local queue_opts = require("optimizely.offline.queue_opts")
local gate = require("optimizely.offline.ledger_gate")

local M = {}

--- This queue's options: the shared ones (optimizely.offline.queue_opts),
-- `spool_poll`, and `adaptive` (the libcurl engine's adaptive in-flight
-- limit, as send_batch's: up to `concurrency` in flight, fewer while the
-- endpoint answers 429/5xx or slows down; doc/topics/performance.md).
M.schema = queue_opts.schema("queue", {
  spool_poll = { type = "number", min = 0.001, max = 60, default = 0.25 },
  adaptive = { type = "boolean", default = true },
})

local Queue = {}
Queue.__index = Queue

-- A lease shorter than a request would let another process claim an
-- order that is still being sent: a duplicate for nothing.
local function check_lease(o, st)
  local timeout = st.http_opts.timeout or 10
  if o.lease and o.lease <= timeout then
    error(("queue: opts.lease (%gs) must be longer than the client's timeout (%gs)"):format(o.lease, timeout), 4)
  end
end

--- Opens the spool named by `opts.spool` (nothing without one) with the
-- queue's bounds, into `self.spool` (a step of `start_worker`).
-- @return true | nil, err (optimizely.offline.spool's kinds: "foreign",
--   "storage", "busy")
-- @local
function Queue:open_spool()
  local o = self.o
  if not o.spool then return true end
  local sp, err = spool.open(o.spool, {
    max_orders = o.spool_max_orders, max_bytes = o.spool_max_bytes, max_age = o.max_age,
    on_full = o.spool_on_full, sync = o.spool_sync,
  })
  if not sp then return nil, err end
  self.spool = sp
  return true
end

--- Opens the ledger named by `opts.ledger` (nothing without one) into
-- `self.gate`: with a spool, in the spool's file (every ack writes its row
-- in the ack's transaction); without, the file or object named, recorded
-- by the thread's record hook. Reservations last `max_age` and a day: a
-- queued order may wait that long (a dead process's go at once).
-- @return true | nil, err (kind "storage" naming the file, code "foreign" for a file that is not a ledger; or "busy")
-- @local
function Queue:open_ledger()
  local o, st = self.o, self.st
  self.gate = nil
  if not o.ledger then return true end
  local L, err = gate.open(o, self.spool, { host = gate.host(st), site = st.site, channel = st.default_channel },
    st.ledgers)
  if not L then return nil, gate.unusable(err) end
  self.gate = gate.new(st, L, o.max_age + 86400)
  return true
end

--- Opens the spool and starts the delivery thread (csrc/delivery/worker.c) with the
-- client's HTTP options, channels and policy; logs the startup line, and
-- wakes the thread at once when the spool already holds orders. Run by
-- `new`, and again in a forked child (`check_pid`).
-- @return true | nil, err (a spool error, or kind "storage" when the thread
--   could not be made; the spool is closed again)
-- @local
function Queue:start_worker()
  local st, o = self.st, self.o
  local ok, err = self:open_spool()
  if ok then ok, err = self:open_ledger() end
  if not ok then
    if self.spool then self.spool:close() end
    return nil, err
  end
  local cfg = sched.config(st, {
    http = st.http_opts, concurrency = o.concurrency, adaptive = o.adaptive, on_stop = "pause",
    auth_pause = o.auth_pause, report_all = o.on_success ~= nil,
    report_retries = (self.events.on_event or self.events.logger) ~= nil, policy = queue_opts.policy(st, o),
    max_queue = o.max_queue, spool = self.spool and self.spool.handle or nil,
    lease = o.lease, spool_poll = o.spool_poll,
    cancel_prefix = st.cancel_prefix, cancel_suffix = st.cancel_suffix,
  })
  if self.gate and not self.spool then self.gate:configure(cfg) end
  local wok, w = pcall(core.worker_new, cfg)
  if not wok then
    if self.spool then self.spool:close() end
    return nil, errors.new({ kind = "storage", message = "queue: " .. errors.redact_all(tostring(w), st.secrets) })
  end
  self.worker = w
  self.pid = core.getpid()
  self.events:started("queue", st, self.spool and ("spool " .. self.o.spool) or "in memory")
  -- orders left in the spool by an earlier run (or another process) are
  -- delivered from now on, without waiting for the first push
  if self.spool then
    local s = self.spool:stats()
    if s and s.queued > 0 then w:notify() end
  end
  return true
end

--- Create a queue. Called by `client:queue(opts)` / `offline.queue(client, opts)`.
-- @param st the client's delivery context
-- @param o options (see `M.schema` and doc/topics/queue.md); bad options raise
-- @return queue, or nil, err (the spool could not be opened)
function M.new(st, o)
  if o ~= nil and type(o) ~= "table" then error("queue: opts must be a table, got " .. type(o), 3) end
  o = M.schema:check(o, 3)
  check_lease(o, st)
  queue_opts.check_ledger(o, 4)
  local self = setmetatable({ st = st, o = o,
    pseudonym = o.pseudonymise ~= nil and context.pseudonymiser(o.pseudonymise, 3) or nil,
    counts = { invalid = 0, full = 0, failed = 0, callback_errors = 0, dropped = {}, skipped = {}, changed = 0 },
    storage_seen = 0 }, Queue)
  -- the queue's logger, else the client's
  local logger = o.logger
  if logger == nil then logger = st.logger end
  self.events = events.new({ on_event = o.on_event, logger = logger, prefix = "optimizely.offline queue: ",
    on_error = function() self.counts.callback_errors = self.counts.callback_errors + 1 end })
  local ok, err = self:start_worker()
  if not ok then return nil, err end
  return self
end

--- After fork(), a queue used in the child starts a thread and a SQLite
-- connection of its own: the parent's stay with the parent (in-memory
-- orders pushed before the fork belong to the parent, which delivers
-- them). Called by every public method; raises when the restart fails.
-- @local
function Queue:check_pid()
  if self.pid ~= core.getpid() then
    self.worker:close(0) -- only forgets the parent's copy
    self.worker, self.spool = nil, nil -- the inherited handle is abandoned, never used
    local ok, err = self:start_worker()
    if not ok then error("queue: cannot restart after fork: " .. tostring(err), 3) end
  end
end

local PUSH_OPTS = opts.schema("queue", "push opts", queue_opts.push_fields)

--- Pseudonymises (the queue's `pseudonymise` option, else the client's)
-- and encodes one order: `context.prepare`.
-- @param payload the order
-- @return json, warnings | nil, err (kind "validation")
-- @local
function Queue:prepare(payload)
  return context.prepare(self.st, payload, self.pseudonym)
end

--- Counts a refused push in `stats().dropped[kind]` and returns its error.
-- @param kind the `dropped` key ("full", "invalid", "config", a spool kind)
-- @param err the error returned to the caller
-- @return nil, err
-- @local
function Queue:refuse(kind, err)
  local d = self.counts.dropped
  d[kind] = (d[kind] or 0) + 1
  return nil, err
end

--- Hands one encoded order to the spool (then wakes the thread) or, without
-- a spool, to the thread's inbox.
-- @param json the request body
-- @param ref its refCode as a string
-- @param ch the channel's index in the client's channels
-- @return true | nil, err (kind "full", with `bound` and `option`
--   ("max_queue", "spool_max_orders", "spool_max_bytes"), or a spool kind)
-- @local
function Queue:hand_over(json, ref, ch)
  if self.spool then
    local id, err = self.spool:put(json, ref, nil, self.st.channels[ch].name)
    if not id then return self:spool_refused(err) end
    self.worker:notify(1)
    return true
  end
  return self:hand_over_job(json, ref, ch)
end

--- The spool refused a put: counted (full) and returned as push's error.
-- @local
function Queue:spool_refused(err)
  if err.kind == "full" then
    self.counts.full = self.counts.full + 1
    err.option = err.bound and ("spool_" .. err.bound) or nil
    return self:refuse("full", err)
  end
  return self:refuse(err.kind, err)
end

--- Hands one job to the thread's inbox (no spool).
-- @param json the request body
-- @param ref its refCode
-- @param ch the channel's index
-- @param more the job's other fields (`after_ok`), or nil
-- @return true | nil, err (kind "full")
-- @local
function Queue:hand_over_job(json, ref, ch, more)
  if not self.worker:push(json, ref, ch, more) then return self:refuse_full() end
  return true
end

--- max_queue reached: the order is refused, and counted.
-- @local
function Queue:refuse_full()
  self.counts.full = self.counts.full + 1
  return self:refuse("full", errors.new({ kind = "full", retryable = true, bound = "max_queue",
    option = "max_queue", message = ("queue full: %d orders waiting (max_queue); the order"
      .. " was not queued"):format(self.o.max_queue) }))
end

--- Asks the ledger about one order and reserves it: "post" or "amend"
-- and the reserved item, or "done" and what push returns (the skipped res
-- | nil, err changed or storage).
-- @local
function Queue:admit(json, ref, ch, po)
  local g = self.gate
  local item = { body = json, ref = ref, channel = self.st.channels[ch].name }
  local d, err = g:admit({ item }, po)
  if not d then return "done", self:refuse(err.kind or "storage", gate.unusable(err)) end
  local action, x = d[1][1], d[1][2]
  if action == "post" or action == "amend" then return action, item end
  return "done", gate.outcome(action, x, self.counts, self.events)
end

--- Validate, encode and hand over one order. No network I/O.
--
-- With a ledger (`opts.ledger`), the order is looked up and reserved
-- first: one acknowledged before with the same bytes is not queued and
-- push returns its skipped result (`{ok = true, skipped = "already sent",
-- reason, at, attempts = 0}`, truthy, not an error); another version of it
-- (or its cancel) is refused with kind "changed" (the message says when
-- the earlier version was sent); `po.force` queues it anyway, `po.amend`
-- queues the DELETE of the refCode and the new version behind it, posted
-- only once the DELETE is accepted. With a spool both are stored in one
-- transaction; when the DELETE is refused or given up, the new version
-- ends dead in the DELETE's transaction, never posted: a dead letter,
-- `on_failure` ("amend: not sent, the DELETE of the earlier version
-- failed: ..."), a `dead` event with reason "amend", counted failed.
-- @param payload `{lang?, user?, order}` as accepted by `offline.encode`
-- @param po optional `{channel = name (default: opts.channel, then the
--   client's), force = false, amend = false}`; `force`/`amend` need `opts.ledger`
-- @return true, warnings; the skipped result; or nil, err (kind
--   "validation", "config" (no token for the channel), "full", "changed",
--   or a spool or ledger kind)
function Queue:push(payload, po)
  if self.closed then error("queue: push on a closed queue", 2) end
  if po ~= nil then
    po = PUSH_OPTS:check(po, 2)
    if (po.force or po.amend) and not self.gate then
      error("queue: push: " .. (po.force and "force" or "amend") .. " needs the queue's opts.ledger", 2)
    end
  end
  self:check_pid()
  local ch, cerr = context.channel_of(self.st,
    (po and po.channel) or self.o.channel)
  if not ch then return self:refuse("config", cerr) end
  local json, w = self:prepare(payload)
  if not json then
    self.counts.invalid = self.counts.invalid + 1
    return self:refuse("invalid", w)
  end
  local ref = core.ref_string(payload) or ""
  local action, item = "post", nil
  if self.gate then
    local e
    action, item, e = self:admit(json, ref, ch, po)
    if action == "done" then return item, e end
  end
  local ok, err
  if action == "amend" then
    ok, err = self:hand_over_amend(json, ref, ch)
  else
    ok, err = self:hand_over(json, ref, ch)
  end
  if not ok then
    if item then self.gate:release({ item }) end
    return nil, err
  end
  return true, w
end

--- An amend: the DELETE of the refCode, then the new version, posted
-- only once the DELETE is accepted (after_ok; with a spool, a cancel row
-- and an "amend" row put in one transaction).
-- @local
function Queue:hand_over_amend(json, ref, ch)
  if self.spool then
    local name = self.st.channels[ch].name
    local ids, err = self.spool:put_many({ { ref = ref, channel = name, op = "cancel" },
      { body = json, ref = ref, channel = name, op = "amend" } })
    if not ids then return self:spool_refused(err) end
    self.worker:notify(2)
    return true
  end
  -- both in one step: the thread never sees the DELETE (and its refusal)
  -- before the new version waiting behind it is in
  if not self.worker:push("", ref, ch, { method = "DELETE", url = self.gate:cancel_url(ref), after_ref = true },
      json, { after_ok = true }) then
    return self:refuse_full()
  end
  return true
end

--- Hand over many orders; with a spool they are stored in one transaction
-- (group commit). All are validated first; invalid ones are skipped. With
-- a ledger each goes through `push` (its look-up and reservation).
-- @param list array of payloads (or `{payload =, channel =}` items)
-- @return number accepted, list of {index, err} for the refused ones, and
--   with a ledger a list of {index, res} for the skipped ones
function Queue:push_many(list)
  if self.closed then error("queue: push_many on a closed queue", 2) end
  if type(list) ~= "table" then error("queue: push_many expects an array of payloads, got " .. type(list), 2) end
  self:check_pid()
  if self.gate then return self:push_each(list) end
  local refused, batch = {}, {}
  for i, item in ipairs(list) do
    local payload, channel = item, nil
    if type(item) == "table" and rawget(item, "payload") ~= nil then payload, channel = item.payload, item.channel end
    local ch, cerr = context.channel_of(self.st, channel or self.o.channel)
    local json, w
    if ch then json, w = self:prepare(payload) else w = cerr end
    if json then
      batch[#batch + 1] = { body = json, ref = core.ref_string(payload) or "", index = i, ch = ch,
        channel = self.st.channels[ch].name }
    else
      if ch then self.counts.invalid = self.counts.invalid + 1 end
      refused[#refused + 1] = { index = i, err = w }
    end
  end
  if not self.spool then
    local n = 0
    for _, b in ipairs(batch) do
      local ok, err = self:hand_over(b.body, b.ref, b.ch)
      if ok then n = n + 1 else refused[#refused + 1] = { index = b.index, err = err } end
    end
    table.sort(refused, function(a, b) return a.index < b.index end)
    return n, refused
  end
  if #batch == 0 then return 0, refused end
  local ids, err = self.spool:put_many(batch)
  if not ids then
    if err.kind == "full" then
      self.counts.full = self.counts.full + #batch
      err.option = err.bound and ("spool_" .. err.bound) or nil
    end
    for _, b in ipairs(batch) do refused[#refused + 1] = { index = b.index, err = err } end
    table.sort(refused, function(a, b) return a.index < b.index end)
    return 0, refused
  end
  self.worker:notify(#batch)
  return #batch, refused
end

--- push_many with a ledger: each order through `push` (looked up,
-- reserved, queued one at a time).
-- @local
function Queue:push_each(list)
  local n, refused, skipped = 0, {}, {}
  for i, item in ipairs(list) do
    local payload, po = item, nil
    if type(item) == "table" and rawget(item, "payload") ~= nil then
      payload, po = item.payload, item.channel and { channel = item.channel } or nil
    end
    local res, err = self:push(payload, po)
    if res == true then
      n = n + 1
    elseif res then
      skipped[#skipped + 1] = { index = i, res = res }
    else
      refused[#refused + 1] = { index = i, err = err }
    end
  end
  return n, refused, skipped
end

-- ---------------------------------------------------------------- cancel

--- Takes the creates of `ref` that were never sent out of this process
-- (the thread's memory) and, with a spool, gives their rows back so that
-- `cancel_queued` may remove them.
-- @return removed (never tried), tried (some had been attempted), in_flight
-- @local
function Queue:take_unsent(ref)
  local removed, flying = self.worker:remove_ref(ref, "POST")
  local tried = false
  for _, j in ipairs(removed) do
    if (j.attempts or 0) > 0 then tried = true end
    if j.store_id and self.spool then self.spool:release(j.store_id) end
  end
  return removed, tried, flying
end

--- Cancel an order through the queue: it waits behind any create of the
-- same refCode still queued, spooled or in flight (the DELETE is sent
-- after it). A create never sent is removed here instead and nothing is
-- sent (counted in `stats().dropped.cancelled`). With a ledger the cancel
-- is recorded as `"cancelled"` (once the DELETE is accepted, or at once
-- when nothing was sent), and a later push of the refCode is refused
-- (kind "changed") unless forced. The DELETE's end comes back as any
-- order's (`on_success` / `on_failure`, events).
-- @param ref the refCode (a string, or an integer)
-- @param co optional `{channel = name}`: the channel the order was sent with
-- @return `{ok = true, removed = n, queued = true | nil, attempts = 0}`:
--   `removed` creates taken out (never sent), `queued` when a DELETE was
--   queued; or nil, err (kind "validation", "config", "full", or a spool
--   or ledger kind)
function Queue:cancel(ref, co)
  if self.closed then error("queue: cancel on a closed queue", 2) end
  if co ~= nil then co = queue_opts.CANCEL_OPTS:check(co, 2) end
  self:check_pid()
  local rerr
  ref, rerr = queue_opts.check_ref(ref)
  if not ref then return nil, rerr end
  local ch, cerr = context.channel_of(self.st, (co and co.channel) or self.o.channel)
  if not ch then return self:refuse("config", cerr) end
  local name = self.st.channels[ch].name
  local removed, tried, flying = self:take_unsent(ref)
  local n, must_send = #removed, flying or tried or #removed == 0
  if self.spool then
    local r, err = self.spool:cancel_queued(ref, name)
    if not r then return self:refuse(err.kind, err) end
    n = r.removed
    must_send = tried or r.in_flight > 0 or r.seen or r.removed == 0
  elseif not must_send and self.gate then
    local ok, err = self.gate:record({ { ref = ref, channel = name, outcome = "cancelled" } })
    if not ok then return self:refuse(err.kind or "storage", gate.unusable(err)) end
  end
  if n > 0 then
    local d = self.counts.dropped
    d.cancelled = (d.cancelled or 0) + n
  end
  if not must_send then return { ok = true, removed = n, attempts = 0 } end
  local ok, err = self:hand_over_cancel(ref, ch, name)
  if not ok then return nil, err end
  return { ok = true, removed = n, queued = true, attempts = 0 }
end

--- Queues the DELETE of `ref`: a spool cancel row (claimed only once no
-- earlier row of the refCode is left), or a job after its create.
-- @local
function Queue:hand_over_cancel(ref, ch, name)
  if self.spool then
    local id, err = self.spool:put_cancel(ref, name)
    if not id then return self:refuse(err.kind, err) end
    self.worker:notify(1)
    return true
  end
  local url = self.st.cancel_prefix .. core.url_segment(ref) .. self.st.cancel_suffix
  return self:hand_over_job("", ref, ch, { method = "DELETE", url = url, after_ref = true })
end

-- --------------------------------------------------------------- results

--- Calls the user's callback `opts[name]`, protected: a raise is counted in
-- `callback_errors` and never stops delivery (Ctrl-C still goes through).
-- @param name "on_success" or "on_failure"
-- @param ... its arguments
-- @local
function Queue:call(name, ...)
  local fn = self.o[name]
  if fn and errors.callback(fn, ...) then self.counts.callback_errors = self.counts.callback_errors + 1 end
end

--- Settles an order given up (a dead letter, an order refused with the
-- credentials, or one dropped at shutdown): counts it, calls `on_failure`
-- with `err` (no longer retryable) and emits a `dead` or `dropped` event.
-- @param r the thread's result record
-- @param err its error (optimizely.offline.delivery's failure)
-- @local
function Queue:failed(r, err)
  self.counts.failed = self.counts.failed + 1
  if r.what == "dropped" then
    local d = self.counts.dropped
    d.shutdown = (d.shutdown or 0) + 1
  end
  if r.what ~= "dead" and self.gate and not self.spool and r.ref and r.ref ~= "" then
    -- not sent after all: its reservation goes back (a dead one is recorded)
    self.gate:release({ { ref = r.ref, channel = r.channel } })
  end
  err.retryable = false -- settled: retries are over
  self:call("on_failure", r.ref, err)
  if r.what == "dropped" then
    self.events:emit("dropped", { ref = r.ref, attempt = r.attempts, error = err, reason = "shutdown" })
  else
    self.events:emit("dead", { ref = r.ref, attempt = r.attempts, error = err,
      reason = r.what == "stopped" and "credentials" or r.why })
  end
end

--- Turns one result record of the thread into callbacks and events:
-- "sent" calls `on_success`; "dead", "dropped" and "stopped" go to
-- `failed`; "retry", "paused" and "resumed" become events.
-- @param r the record (`what`, `ref`, `attempts`, `channel`, status and
--   body or kind, `until`, `why`)
-- @local
function Queue:handle(r)
  local what = r.what
  if what == "sent" then
    self:call("on_success", r.ref, delivery.success(r, r.body, r.attempts, nil, r.channel, nil))
  elseif what == "dead" or what == "dropped" or what == "stopped" then
    self:failed(r, delivery.failure(r, r.body, r.attempts, r.channel, self.st.secrets))
  elseif what == "retry" then
    self.events:emit("retry", { ref = r.ref, attempt = r.attempts, delay = r["until"],
      error = delivery.failure(r, nil, r.attempts, r.channel, self.st.secrets) })
  elseif what == "paused" or what == "resumed" then
    local ev = { reason = r.why, seconds = r["until"] }
    if r.kind then ev.error = delivery.failure(r, nil, 0, nil, self.st.secrets) end
    self.events:emit(what, ev)
  end
end

--- Reports the spool calls of the thread that failed since the last look
-- (a full disk, say) as one `storage` event (on_event and an error log
-- line) with their count and the last message: delivery must not stop
-- silently. The thread keeps the count and the last message.
-- @local
function Queue:storage_check()
  if not self.spool then return end
  local w = self.worker:stats()
  if w.storage_errors > self.storage_seen then
    local n = w.storage_errors - self.storage_seen
    self.storage_seen = w.storage_errors
    self.events:emit("storage", { operation = "delivery", count = n, error = errors.new({ kind = "storage",
      message = errors.redact_all(tostring(w.storage_error or "spool write failed"), self.st.secrets) }) })
  end
end

--- Handles a list of result records (see `handle`).
-- @param results the records
-- @return how many there were
-- @local
function Queue:take_results(results)
  for i = 1, #results do self:handle(results[i]) end
  return #results
end

--- Run the callbacks for every result the thread reported since last time.
-- @return how many results were processed
function Queue:poll()
  if self.closed then return 0 end
  self:check_pid()
  local n = self:take_results(self.worker:results())
  self:storage_check()
  return n
end

--- Orders in the spool file, from every process sharing it (0 without a
-- spool, or when the spool cannot be read).
-- @local
function Queue:spool_backlog()
  if not self.spool then return 0 end
  local s = self.spool:stats()
  return s and s.queued or 0
end

--- Is everything pushed so far settled and reported (nothing in memory,
-- nothing in the spool, no result waiting for poll)? Never blocks.
function Queue:idle()
  if self.closed then return true end
  self:check_pid()
  local w = self.worker
  return w:wait(0) and self:spool_backlog() == 0 and w:stats().pending_results == 0
end

--- Wait until everything pushed so far is delivered or failed (dead).
-- With a spool, "everything" is every order in the spool file (also those
-- other processes put there).
-- @param timeout seconds (default 10)
-- @return true, or nil, err (kind "timeout", with `queued` and `in_flight`)
function Queue:flush(timeout)
  if self.closed then return true end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("queue: flush timeout must be a number of seconds >= 0", 2)
  end
  self:check_pid()
  timeout = timeout or 10
  local w = self.worker
  if self.spool then w:notify() end -- claim now (and start the thread if need be)
  local deadline = core.now() + timeout
  while true do
    self:poll()
    -- memory first (cheap); the spool count only once memory is idle
    local idle, progress = w:wait(0)
    if idle and self:spool_backlog() == 0 then
      self:poll()
      if w:stats().pending_results == 0 then return self:flush_ledger() end
    end
    local left = deadline - core.now()
    if left <= 0 then
      local s = self:stats()
      return nil, errors.new({ kind = "timeout", retryable = true, queued = s.queued, in_flight = s.in_flight,
        message = ("flush: %d orders still queued and %d in flight after %gs"):format(s.queued, s.in_flight,
          timeout) })
    end
    w:wait(math.min(left, 0.5), progress) -- until the thread gets something done
  end
end

--- With a ledger and no spool: the outcomes recorded so far written now
-- (a push after `flush` finds them); a failed write is the flush's error.
-- @return true | nil, err (kind "storage" or "busy", naming the file)
-- @local
function Queue:flush_ledger()
  if not self.gate or self.spool then return true end
  local ok, err = self.worker:flush_ledger()
  if not ok then return nil, gate.unusable(err) end
  return true
end

--- Flush, then stop the thread. Undelivered orders stay in the spool (if
-- any); without a spool each is reported to on_failure (kind "shutdown",
-- counted in `dropped.shutdown`) — never lost silently. Closing twice is
-- fine; pushing after close raises.
-- @param timeout seconds for the flush (default 10)
-- @return true, or nil, err
function Queue:close(timeout)
  if self.closed then return true end
  local ok, err = self:flush(timeout or 10)
  self:poll()
  local stats = self:stats()
  local final = self.worker:metrics()
  self.closed = true
  -- the flush had its time: in-flight transfers are abandoned (their spool
  -- rows go back at once), the thread is given 2 s to notice
  self.results_dropped = self.worker:stats().results_dropped
  local _, leftovers = self.worker:close(2)
  self.worker = nil
  self:take_results(leftovers or {})
  stats.failed, stats.dropped = self.counts.failed, self:dropped_counts()
  if self.spool then self.spool:close() end
  stats.running = false
  self.final_stats = stats
  -- the thread's last counts (the orders dropped while it stopped included)
  local m = metrics.merge(metrics.empty(), self:complete_metrics(final, stats))
  for _, r in ipairs(leftovers or {}) do
    if r.what == "dropped" then
      metrics.merge(m, { failed = 1, failures = { { kind = "shutdown", channel = r.channel, n = 1 } },
        channels = r.channel and { [r.channel] = { failed = 1 } } or nil })
    end
  end
  m.depth, m.in_flight = 0, 0
  if m.paused then m.paused = { throttled = 0, credentials = 0 } end
  self.final_metrics = m
  if ok then return true end
  if not self.spool then
    err.message = err.message .. "; without a spool these orders are reported to on_failure (kind shutdown)"
  else
    err.message = err.message .. "; they stay in the spool " .. self.o.spool
  end
  return nil, err
end

--- Try the credentials again now (after a pause for refused credentials).
function Queue:resume()
  if self.closed then return end
  self:check_pid()
  self.worker:resume()
end

--- The `dropped` table of `stats()`: `full`, `invalid`, `results` (result
-- records the thread let go, oldest first, while nobody polled: the orders
-- were settled all the same, their callbacks are lost) and the refusals by
-- kind (`config`, spool kinds, `shutdown`).
-- @local
function Queue:dropped_counts()
  local d = { full = self.counts.full, invalid = self.counts.invalid,
    results = self.worker and self.worker:stats().results_dropped or self.results_dropped or 0 }
  for k, v in pairs(self.counts.dropped) do if d[k] == nil then d[k] = v end end
  return d
end

--- The `skipped` table of `stats()`: orders the ledger had, by reason.
-- @local
function Queue:skipped_counts()
  local t = {}
  for k, v in pairs(self.counts.skipped) do t[k] = v end
  return t
end

--- Counters, the same keys as the nginx queue's: `{queued, in_flight,
-- sent, retried, failed, dead, invalid, pushed, paused_for, paused =
-- reason | nil, running, callback_errors, storage_errors, storage_error?,
-- dropped = {full, invalid, results, shutdown?, config?, cancelled?},
-- skipped = {[reason] = n} and changed (the ledger's), spool = spool
-- stats (with a spool)}`, and `limit`: the requests the scheduler lets be
-- in flight now (at most `concurrency`; lowered by a 429, see `adaptive`).
function Queue:stats()
  if self.closed then return self.final_stats end
  self:check_pid()
  local w = self.worker:stats()
  local queued = w.queued
  local sp
  if self.spool then
    sp = self.spool:stats()
    if sp then queued = math.max(0, sp.queued - w.in_flight) end
  end
  return {
    queued = queued, in_flight = w.in_flight, limit = w.limit, sent = w.sent, retried = w.retried,
    dead = w.dead, failed = self.counts.failed, invalid = self.counts.invalid,
    pushed = w.pushed, running = w.running, callback_errors = self.counts.callback_errors,
    paused_for = w.paused_for, paused = w.stopped and "credentials" or (w.paused_for > 0 and "throttled" or nil),
    storage_errors = w.storage_errors, storage_error = w.storage_error,
    dropped = self:dropped_counts(), spool = sp,
    skipped = self:skipped_counts(), changed = self.counts.changed,
  }
end

--- Adds the Lua side's counts (`invalid`, `dropped`, `callback_errors`,
-- `storage_errors`) and the gauges (`depth`, `in_flight`, `paused`,
-- `spool`) to the thread's metrics.
-- @param m the thread's metrics table (completed in place)
-- @param stats `stats()` of the same moment
-- @return m
-- @local
function Queue:complete_metrics(m, stats)
  m.invalid = self.counts.invalid
  m.dropped = stats.dropped
  m.skipped, m.changed = stats.skipped, stats.changed
  m.callback_errors, m.storage_errors = self.counts.callback_errors, stats.storage_errors or 0
  m.depth, m.in_flight = stats.queued or 0, stats.in_flight or 0
  m.paused = { throttled = stats.paused == "throttled" and 1 or 0,
    credentials = stats.paused == "credentials" and 1 or 0 }
  if stats.spool then m.spool = { orders = stats.spool.queued, bytes = stats.spool.bytes, dead = stats.spool.dead } end
  return m
end

--- Delivery metrics of this queue: the thread's counters plus `invalid`,
-- `dropped`, `callback_errors`, `storage_errors` and the gauges `depth`,
-- `in_flight`, `paused` and `spool` (see optimizely.offline.metrics for the
-- shape). After `close`, the last values.
-- @return the metrics table
function Queue:metrics()
  if self.closed then return self.final_metrics or metrics.empty() end
  self:check_pid()
  return self:complete_metrics(self.worker:metrics(), self:stats())
end

function Queue:__tostring()
  local s = self.closed and "closed" or ("%d queued"):format(self:stats().queued)
  return "optimizely.offline.queue (" .. s .. (self.o.spool and (", spool " .. self.o.spool) or "") .. ")"
end

M.Queue = Queue

--- `offline.queue(client, opts)`: the same as `client:queue(opts)`.
function M.queue(client, o)
  return client:queue(o)
end

return M
