--- Asynchronous delivery outside nginx: `client:queue(opts)`.
-- `push` validates and encodes at once, then hands the bytes to a background
-- C thread (csrc/worker.c) without any network I/O; with a spool the order
-- is in SQLite — durable — before `push` returns, and the thread delivers
-- from the spool, so a restart (or `kill -9`) loses nothing: what was not
-- acknowledged is still there, with its retry count and next attempt time.
--
-- Results come back to Lua when you call `poll`, `flush` or `close`: the
-- `on_success(order_ref, res)` / `on_failure(order_ref, err)` callbacks run
-- there, protected. Delivery itself (and retrying) goes on in the thread
-- whether or not you poll.
--
-- The thread is started by the first push (or at once when the spool
-- already holds orders), and again in a forked child (the pid is checked on
-- every call). Several processes may share one spool file: each claims
-- orders under a lease (`lease`, longer than the client's timeout), so an
-- order is never sent by two of them at once; `flush` waits for the whole
-- file. Callbacks run in the process that delivered the order.
-- @module optimizely.offline.queue
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local retry = require("optimizely.offline.retry")

local M = {}

local Queue = {}
Queue.__index = Queue

local OPTS = {
  max_queue = "number", concurrency = "number", spool = "string", on_success = "function",
  on_failure = "function", lease = "number", max_attempts = "number",
  spool_max_orders = "number", spool_max_bytes = "number", spool_max_age = "number",
  spool_on_full = "string", spool_sync = "string", spool_poll = "number",
}
local CHOICES = {
  spool_on_full = { refuse = true, drop_oldest = true },
  spool_sync = { normal = true, full = true },
}
-- integer options and their ranges (seconds options below)
local INTEGERS = { max_queue = { 1, 1e9 }, concurrency = { 1, 256 }, max_attempts = { 1, 100 },
  spool_max_orders = { 1, 1e15 }, spool_max_bytes = { 1, 1e15 } }
local SECONDS = { lease = { 0.001, 86400 * 7 }, spool_max_age = { 0.001, 86400 * 3650 },
  spool_poll = { 0.001, 60 } }

local function check_opts(opts, st)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("queue: opts must be a table, got " .. type(opts), 3) end
  for k, v in pairs(opts) do
    local want = OPTS[k]
    if not want then error("queue: unknown option opts." .. tostring(k), 3) end
    if type(v) ~= want then error(("queue: opts.%s must be a %s, got %s"):format(k, want, type(v)), 3) end
    if want == "number" and (v ~= v or v == math.huge or v == -math.huge) then
      error(("queue: opts.%s must be a finite number"):format(k), 3)
    end
    local r = INTEGERS[k]
    if r and (v ~= math.floor(v) or v < r[1] or v > r[2]) then
      error(("queue: opts.%s must be an integer in %d..%.0f (got %s)"):format(k, r[1], r[2], tostring(v)), 3)
    end
    r = SECONDS[k]
    if r and (v < r[1] or v > r[2]) then
      error(("queue: opts.%s must be %g..%g seconds (got %s)"):format(k, r[1], r[2], tostring(v)), 3)
    end
    if CHOICES[k] and not CHOICES[k][v] then
      local names = {}
      for c in pairs(CHOICES[k]) do names[#names + 1] = '"' .. c .. '"' end
      table.sort(names)
      error(("queue: opts.%s must be one of %s (got %q)"):format(k, table.concat(names, ", "), v), 3)
    end
  end
  if not opts.spool then
    for k in pairs(opts) do
      if k:match("^spool_") then error("queue: opts." .. k .. " needs opts.spool", 3) end
    end
  end
  -- A lease shorter than a request would let another process claim an
  -- order that is still being sent: a duplicate for nothing.
  local timeout = st.http_opts and st.http_opts.timeout or 10
  if opts.lease and opts.lease <= timeout then
    error(("queue: opts.lease (%gs) must be longer than the client's timeout (%gs)"):format(
      opts.lease, timeout), 3)
  end
  return opts
end

local function list_keys(set)
  local out = {}
  for k, v in pairs(set) do if v then out[#out + 1] = k end end
  table.sort(out, function(a, b) return tostring(a) < tostring(b) end)
  return out
end

-- The order's refCode as a string, for the spool and the callbacks.
local function ref_of(payload)
  local o = type(payload) == "table" and rawget(payload, "order")
  local r = type(o) == "table" and rawget(o, "refCode")
  if r == nil then return "" end
  if type(r) == "number" and r == math.floor(r) then return string.format("%d", r) end
  return tostring(r)
end

local function start_worker(self)
  local st, o = self.st, self.opts
  local spool
  if o.spool then
    local sp, err = require("optimizely.offline.spool").open(o.spool, {
      max_orders = o.spool_max_orders, max_bytes = o.spool_max_bytes, max_age = o.spool_max_age,
      on_full = o.spool_on_full, sync = o.spool_sync,
    })
    if not sp then return nil, err end
    spool = sp
  end
  local policy = st.policy
  local ok, w = pcall(core.worker_new, {
    http = st.http_opts, url = st.post_url, headers = st.headers,
    concurrency = o.concurrency or 4, max_queue = o.max_queue or 10000,
    max_attempts = o.max_attempts or policy.max_attempts,
    backoff_base = policy.backoff_base, backoff_max = policy.backoff_max,
    backoff_floor = policy.backoff_floor, retry_after_max = policy.retry_after_max,
    retry_status = list_keys(retry.RETRYABLE_STATUS), retry_kinds = list_keys(retry.RETRYABLE_KIND),
    spool = spool and spool.handle or nil, lease = o.lease, spool_poll = o.spool_poll,
  })
  if not ok then
    if spool then spool:close() end
    return nil, errors.new({ kind = "storage", message = "queue: " .. errors.redact(tostring(w), st.token) })
  end
  self.spool, self.worker = spool, w
  self.pid = core.getpid()
  -- Orders left in the spool by an earlier run (or another process) are
  -- delivered from now on, without waiting for the first push.
  if spool then
    local s = spool:stats()
    if s and s.queued > 0 then w:notify() end
  end
  return true
end

-- After fork(): the thread and the SQLite connection stay with the parent.
-- The child gets its own (in-memory orders pushed before the fork belong
-- to the parent, which delivers them).
local function check_pid(self)
  if self.pid ~= core.getpid() then
    self.worker:close(0) -- only forgets the parent's copy
    self.worker, self.spool = nil, nil -- the inherited handle is abandoned, never used
    local ok, err = start_worker(self)
    if not ok then error("queue: cannot restart after fork: " .. tostring(err), 3) end
  end
end

--- Create a queue. Called by `client:queue(opts)` / `offline.queue(client, opts)`.
-- @param st the client's private state; outcome: the client's response classifier
-- @param opts {max_queue=10000 (in-memory bound), concurrency=4, spool=path,
--   spool_max_orders=, spool_max_bytes=, spool_max_age=,
--   spool_on_full="refuse"|"drop_oldest", spool_sync="normal"|"full",
--   on_success=fn(ref, res), on_failure=fn(ref, err), lease=60 (seconds a
--   claimed spool order stays ours), max_attempts=(client's), spool_poll=0.25
--   (seconds between looks for other processes' orders)}; bad options raise
-- @return queue, or nil, err (the spool could not be opened)
function M.new(st, outcome, opts)
  opts = check_opts(opts, st)
  local self = setmetatable({ st = st, outcome = outcome, opts = opts, encode = st.encode,
    counts = { invalid = 0, full = 0, failed = 0, callback_errors = 0 } }, Queue)
  local ok, err = start_worker(self)
  if not ok then return nil, err end
  return self
end

--- Validate, encode and hand over one order. No network I/O.
-- @return true, or nil, err (kind "validation", "full", or a spool error)
function Queue:push(payload)
  if self.closed then error("queue: push on a closed queue", 2) end
  check_pid(self)
  local json, w = self.encode(payload)
  if not json then
    self.counts.invalid = self.counts.invalid + 1
    return nil, w
  end
  local ref = ref_of(payload)
  if self.spool then
    local id, err = self.spool:put(json, ref)
    if not id then
      if err.kind == "full" then
        self.counts.full = self.counts.full + 1
        err.option = err.bound and ("spool_" .. err.bound) or nil
      end
      return nil, err
    end
    self.worker:notify(1)
    return true
  end
  if not self.worker:push(json, ref) then
    self.counts.full = self.counts.full + 1
    return nil, errors.new({ kind = "full", retryable = true, bound = "max_queue",
      option = "max_queue", message = ("queue full: %d orders waiting (max_queue); the order"
        .. " was not queued"):format(self.opts.max_queue or 10000) })
  end
  return true
end

--- Hand over many orders; with a spool they are stored in one transaction
-- (group commit). All are validated first; invalid ones are skipped.
-- @return number accepted, list of {index, err} for the refused ones
function Queue:push_many(list)
  if self.closed then error("queue: push_many on a closed queue", 2) end
  if type(list) ~= "table" then error("queue: push_many expects an array of payloads, got " .. type(list), 2) end
  check_pid(self)
  local refused, batch = {}, {}
  for i, payload in ipairs(list) do
    local json, w = self.encode(payload)
    if json then
      batch[#batch + 1] = { body = json, ref = ref_of(payload), index = i }
    else
      self.counts.invalid = self.counts.invalid + 1
      refused[#refused + 1] = { index = i, err = w }
    end
  end
  if not self.spool then
    local n = 0
    for _, b in ipairs(batch) do
      if self.worker:push(b.body, b.ref) then n = n + 1
      else
        self.counts.full = self.counts.full + 1
        refused[#refused + 1] = { index = b.index, err = errors.new({ kind = "full", retryable = true,
          bound = "max_queue", option = "max_queue", message = "queue full (max_queue)" }) }
      end
    end
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

--- Run the callbacks for every result the worker reported since last time.
-- @return how many results were processed
function Queue:poll()
  if self.closed then return 0 end
  check_pid(self)
  local results = self.worker:results()
  local st, outcome, o = self.st, self.outcome, self.opts
  for i = 1, #results do
    local r = results[i]
    local res, err
    if r.status then
      res, err = outcome(st, r.status, r.body or "", r, nil)
    else
      res, err = outcome(st, nil, r.kind or "network", r.message or "transport failure", r.curl_code)
    end
    if r.outcome == "sent" and res then
      res.attempts = r.attempts
      if o.on_success and not pcall(o.on_success, r.ref, res) then
        self.counts.callback_errors = self.counts.callback_errors + 1
      end
    else
      if res then -- the C side saw a fail envelope the Lua decoder did not: keep it an error
        err = errors.new({ kind = "api", status = r.status, message = "order rejected", retryable = false })
      end
      err.attempts = r.attempts
      err.retryable = false -- it is dead: retries are over
      self.counts.failed = self.counts.failed + 1
      if o.on_failure and not pcall(o.on_failure, r.ref, err) then
        self.counts.callback_errors = self.counts.callback_errors + 1
      end
    end
  end
  return #results
end

local function spool_backlog(self)
  if not self.spool then return 0 end
  local s = self.spool:stats()
  return s and s.queued or 0
end

--- Wait until everything pushed so far is delivered or failed (dead).
-- With a spool, "everything" is every order in the spool file (also those
-- other processes put there).
-- @param timeout seconds (default 10)
-- @return true, or nil, err (kind "timeout", with `queued`)
function Queue:flush(timeout)
  if self.closed then return true end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("queue: flush timeout must be a number of seconds >= 0", 2)
  end
  check_pid(self)
  timeout = timeout or 10
  local w = self.worker
  if self.spool then w:notify() end -- claim now (and start the thread if need be)
  local deadline = core.now() + timeout
  while true do
    self:poll()
    -- memory first (cheap); the spool count only once memory is idle
    if w:wait(0) and spool_backlog(self) == 0 then
      self:poll()
      if w:stats().pending_results == 0 then return true end
    end
    local left = deadline - core.now()
    if left <= 0 then
      local s = self:stats()
      return nil, errors.new({ kind = "timeout", retryable = true, queued = s.queued,
        in_flight = s.in_flight, message = ("flush: %d orders still queued and %d in flight after %gs"):format(
          s.queued, s.in_flight, timeout) })
    end
    -- sleeps until the thread reports something (a result, a retry, idle)
    w:wait(math.min(left, 0.5))
  end
end

--- Flush, then stop the worker. Undelivered orders stay in the spool (if
-- any); without a spool they are reported in the error. Closing twice is
-- fine; pushing after close raises.
-- @param timeout seconds for the flush (default 10)
-- @return true, or nil, err
function Queue:close(timeout)
  if self.closed then return true end
  local ok, err = self:flush(timeout or 10)
  local stats = self:stats()
  self.closed = true
  -- the flush had its time: in-flight transfers are abandoned (their spool
  -- rows go back at once), the thread is given 2 s to notice
  self.worker:close(2)
  self.worker = nil
  if self.spool then self.spool:close() end
  stats.running = false
  self.final_stats = stats
  if ok then return true end
  if not self.spool then
    err.message = err.message .. "; without a spool these orders are lost"
  else
    err.message = err.message .. "; they stay in the spool " .. self.opts.spool
  end
  return nil, err
end

--- Counters: queued, in_flight, sent, retried, failed, dead, invalid,
-- dropped = {full = refused pushes, results = callbacks lost (over 100000 unpolled)}.
function Queue:stats()
  if self.closed then return self.final_stats end
  check_pid(self)
  local w = self.worker:stats()
  local queued = w.queued
  local sp
  if self.spool then
    sp = self.spool:stats()
    if sp then queued = math.max(0, sp.queued - w.in_flight) end
  end
  return {
    queued = queued, in_flight = w.in_flight, sent = w.sent, retried = w.retried,
    dead = w.dead + 0, failed = self.counts.failed, invalid = self.counts.invalid,
    pushed = w.pushed, running = w.running, callback_errors = self.counts.callback_errors,
    dropped = { full = self.counts.full, invalid = self.counts.invalid, results = w.results_dropped },
    spool = sp,
  }
end

function Queue:__tostring()
  local s = self.closed and "closed" or ("%d queued"):format(self:stats().queued)
  return "optimizely.offline.queue (" .. s .. (self.opts.spool and (", spool " .. self.opts.spool) or "") .. ")"
end

M.Queue = Queue

--- `offline.queue(client, opts)`: the same as `client:queue(opts)`.
function M.queue(client, opts)
  return client:queue(opts)
end

return M
