--- Per-worker delivery queue inside nginx: push in any phase, deliver from
-- timers over the cosocket transport.
--
--     -- init_worker_by_lua_block (one queue per worker):
--     Q = require("optimizely.offline.ngx").queue(
--       { site = "demo", token = TOKEN, channel = "store" },
--       { spool = "/var/spool/oo/orders.db", on_failure = function(ref, err) ... end })
--     -- any phase, log_by_lua included:
--     local ok, err = Q:push(payload)
--
-- `push` validates and encodes at once (a bad order is refused there, with the
-- usual validation error), then only appends the bytes to a Lua ring buffer
-- (or, with a spool, writes them to SQLite: durable when push returns) and
-- either wakes an idle sender of the running flush (a semaphore post) or, if
-- no flush is running, starts one with `ngx.timer.at(0)`. No network I/O and
-- no yielding, so it works in log_by_lua.
--
-- Delivery: ONE flush in flight per worker; it runs `concurrency` light
-- threads, each taking orders and sending them with `client:send_encoded` on
-- a client whose transport is the cosocket one and whose `max_attempts` is 1.
-- A sender with nothing to do lingers a second for the next push, so a
-- steady trickle costs no timer per order. The queue schedules retries itself
-- (`retry.lua` decides what and when), so one slow order never holds the
-- others: a retryable failure waits until `next_at`; a periodic timer
-- (`flush_interval`) hands due retries (and, with a spool, due rows of any
-- worker) to the senders; after `max_attempts` or a permanent failure the
-- order is dead (counted, passed to `on_failure`, moved to the spool's dead
-- letters). A 429 pauses the whole queue until its Retry-After.
--
-- Worker exit (reload, stop): the periodic timer runs prematurely and makes a
-- final attempt within `shutdown_timeout`: without a spool for every order in
-- memory, retries not yet due included, and what still fails is lost
-- (counted as dropped.shutdown, logged, passed to on_failure with kind
-- "shutdown"); with a spool for the rows due now, and everything else stays
-- on disk for the next worker to claim (leases make sharing one file safe).
-- With a spool, pushes from requests still finishing are accepted until the
-- process ends.
--
-- Shared mode (`opts.shm`): pushes append "attempts, ref, json" to a list in
-- a lua_shared_dict (bounded by max_queue and the dict's size, kind "full")
-- and never start a timer; only the deliverer process runs the machinery
-- above, fed from the list by a poll timer. At its exit what it could not
-- send goes back to the list (kept across a reload, lost on stop).
-- @module optimizely.offline.ngx.queue
local ngx = ngx
local errors = require("optimizely.offline.errors")
local retry = require("optimizely.offline.retry")
local transport = require("optimizely.offline.ngx.transport")
local semaphore = require("ngx.semaphore")

local now, update_time, log, ERR, WARN = ngx.now, ngx.update_time, ngx.log, ngx.ERR, ngx.WARN
local timer_at, spawn, wait = ngx.timer.at, ngx.thread.spawn, ngx.thread.wait
local max, min, floor = math.max, math.min, math.floor

local M = {}

M.DEFAULTS = {
  max_queue = 10000,
  concurrency = 4,
  flush_interval = 1,
  max_attempts = 4,
  shutdown_timeout = 3,
}

local KNOWN = {
  max_queue = true, concurrency = true, flush_interval = true, max_attempts = true,
  on_success = true, on_failure = true, spool = true, spool_options = true, lease = true,
  shutdown_timeout = true, transport = true, shm = true, deliverer = true, poll_interval = true,
}

-- Options of the libcurl client that mean nothing here; refusing them beats
-- silently ignoring a TLS setting.
local CURL_ONLY = { sleep = "the queue schedules its own retries" }
for k, why in pairs(transport.CURL_ONLY) do CURL_ONLY[k] = why end

local YIELDABLE = { rewrite = true, access = true, content = true, timer = true }

local Queue = {}
Queue.__index = Queue

local function bad(field, msg)
  error("optimizely.offline.ngx.queue: " .. field .. " " .. msg, 3)
end

local function want_number(opts, field, dflt, lo, hi, integer)
  local v = opts[field]
  if v == nil then return dflt end
  if type(v) ~= "number" or v ~= v or v < lo or v > hi then
    bad("opts." .. field, "must be a number in " .. lo .. ".." .. hi .. " (got " .. tostring(v) .. ")")
  end
  if integer and v ~= floor(v) then bad("opts." .. field, "must be an integer") end
  return v
end

-- pcall a user callback; its failure must not break delivery.
local function call(self, name, ref, x)
  local fn = self[name]
  if not fn then return end
  local ok, err = pcall(fn, ref, x)
  if not ok then log(ERR, "optimizely.offline queue: ", name, " raised: ", tostring(err)) end
end

local function count(t, key)
  t[key] = (t[key] or 0) + 1
end

-- Shared mode (opts.shm): every worker appends encoded orders to one list in
-- a lua_shared_dict; one process (the deliverer) drains it. Counters live in
-- the dict so that stats() means the same in every worker.
local LIST, HELD, INFLIGHT = "q", "c:held", "c:in_flight"

-- Count one event: in this process, and in the dict when shared.
local function bump(self, key, sub)
  local st = self.counters
  if sub then count(st[key], sub) else st[key] = st[key] + 1 end
  local shm = self.shm
  if shm then shm:incr("c:" .. key .. (sub and ("." .. sub) or ""), 1, 0) end
end

-- List item: "<attempts> <#ref> <ref><json>" (the ref may hold any byte).
local function pack(attempts, ref, json)
  return attempts .. " " .. #ref .. " " .. ref .. json
end

local function unpack_item(s)
  local attempts, rlen, p = s:match("^(%d+) (%d+) ()")
  if not attempts then return nil end
  rlen = tonumber(rlen)
  return { attempts = tonumber(attempts), ref = s:sub(p, p + rlen - 1), json = s:sub(p + rlen), next_at = 0 }
end

-- The deliverer says how many orders it holds (ready, waiting, in flight).
local function publish(self)
  local shm = self.shm
  if not shm or not self.deliverer then return end
  shm:set(HELD, self.tail - self.head + 1 + #self.waiting + self.in_flight)
  shm:set(INFLIGHT, self.in_flight)
end

local function shared_len(self)
  return self.shm:llen(LIST) or 0
end

---------------------------------------------------------------------------
-- In-memory store: a ring of ready orders plus a list waiting for next_at

local function ready_size(self)
  return self.tail - self.head + 1
end

local function ready_push(self, it)
  local t = self.tail + 1
  self.tail = t
  self.ready[t] = it
end

local function ready_pop(self)
  local h = self.head
  if h > self.tail then return nil end
  local it = self.ready[h]
  self.ready[h] = nil
  if h == self.tail then
    self.head, self.tail = 1, 0
  else
    self.head = h + 1
  end
  return it
end

-- Move waiting orders whose time has come (all of them when `all`) to the ring.
local function promote(self, all)
  local w = self.waiting
  if #w == 0 then return end
  local t = now()
  local keep = {}
  for i = 1, #w do
    local it = w[i]
    if all or it.next_at <= t then ready_push(self, it) else keep[#keep + 1] = it end
  end
  self.waiting = keep
end

---------------------------------------------------------------------------
-- Taking orders (shared by the light threads of one flush)

local function stopping(self)
  if self.deadline then
    update_time()
    return now() >= self.deadline
  end
  return false
end

local function paused(self, final)
  if final and not self.spool then return false end -- memory: last chance, try anyway
  return self.paused_until > now()
end

-- The next order to send: it, or nil and why ("empty" when there is simply
-- nothing due; "stop" when paused, past the exit deadline or on error).
local function take_memory(self, final)
  if stopping(self) or paused(self, final) then return nil, "stop" end
  if final and not self.final_promoted then
    self.final_promoted = true
    promote(self, true) -- one last attempt for everything waiting in memory
  end
  local it = ready_pop(self)
  if it then return it end
  if self.shm then
    for _ = 1, 10 do -- skips (and logs) items this version cannot read
      local s = self.shm:lpop(LIST)
      if not s then break end
      it = unpack_item(s)
      if it then return it end
      log(ERR, "optimizely.offline queue: unreadable item in the shared list dropped")
    end
  end
  return nil, "empty"
end

local function take_spool(self, final)
  if self.closed or stopping(self) or paused(self, final) then return nil, "stop" end
  if self.claimed_next > self.claimed_n then
    local rows, err = self.spool:claim(self.concurrency, self.lease)
    if not rows then
      log(ERR, "optimizely.offline queue: spool claim failed: ", tostring(err))
      return nil, "stop"
    end
    self.claimed, self.claimed_next, self.claimed_n = rows, 1, #rows
    if #rows == 0 then return nil, "empty" end
  end
  local i = self.claimed_next
  local row = self.claimed[i]
  self.claimed[i] = false
  self.claimed_next = i + 1
  return { id = row.id, ref = row.ref, json = row.body, attempts = row.attempts }
end

-- Rows claimed but not started go back without counting an attempt.
local function release_claimed(self)
  if not self.spool then return end
  local buf = self.claimed
  for i = self.claimed_next, self.claimed_n do
    local row = buf[i]
    if row then
      local ok, err = self.spool:release(row.id)
      if not ok then log(WARN, "optimizely.offline queue: spool release failed: ", tostring(err)) end
    end
  end
  self.claimed, self.claimed_next, self.claimed_n = {}, 1, 0
end

---------------------------------------------------------------------------
-- Outcomes

local function dead(self, it, err)
  bump(self, "dead")
  bump(self, "failed")
  err.retryable = false -- it is dead: retries are over
  if self.spool then
    local ok, kerr = self.spool:kill(it.id, err)
    if not ok then log(ERR, "optimizely.offline queue: spool kill failed: ", tostring(kerr)) end
  end
  log(WARN, "optimizely.offline queue: order ", tostring(it.ref), " failed for good: ", tostring(err))
  call(self, "on_failure", it.ref, err)
end

local function settle(self, it, res, err, final)
  local attempts = it.attempts + 1
  if res then
    bump(self, "sent")
    if self.spool then
      local ok, aerr = self.spool:ack(it.id)
      -- lease lost: another worker may send it again (at-least-once)
      if not ok then log(WARN, "optimizely.offline queue: spool ack failed: ", tostring(aerr)) end
    end
    res.attempts = attempts
    call(self, "on_success", it.ref, res)
    return
  end
  err.attempts = attempts
  update_time()
  local t = now()
  local wait_s
  if err.kind == "http" and err.status == 429 then
    -- the server asked everyone to slow down: pause the whole queue
    local ra = retry.parse_retry_after(err.retry_after)
    wait_s = ra and min(ra, self.policy.retry_after_max) or self.policy:delay(attempts)
    self.paused_until = max(self.paused_until, t + wait_s)
  end
  if not (err.retryable and attempts < self.max_attempts) then
    return dead(self, it, err)
  end
  if final and self.shm then
    -- the shared dict outlives this worker on reload: the next deliverer
    -- sends it (on stop it is lost with the dict)
    bump(self, "retried")
    local ok, perr = self.shm:rpush(LIST, pack(attempts, it.ref, it.json))
    if ok then
      log(WARN, "optimizely.offline queue: worker exiting, order ", tostring(it.ref),
        " put back in the shared dict (lost if nginx is stopping): ", tostring(err))
      return
    end
    log(ERR, "optimizely.offline queue: cannot put order ", tostring(it.ref), " back: ", tostring(perr))
  end
  if final and not self.spool then
    -- shutting down without a spool: nowhere to keep it
    bump(self, "dropped", "shutdown")
    bump(self, "failed")
    log(ERR, "optimizely.offline queue: worker exiting, order ", tostring(it.ref),
      " not delivered: ", tostring(err))
    call(self, "on_failure", it.ref, errors.new({ kind = "shutdown", retryable = false,
      attempts = attempts, cause = err,
      message = "worker exiting before the order was delivered (last error: " .. tostring(err) .. ")" }))
    return
  end
  bump(self, "retried")
  local next_at = t + (wait_s or self.policy:delay(attempts, err.retry_after))
  if self.spool then
    local ok, rerr = self.spool:retry(it.id, next_at, err)
    if not ok then log(ERR, "optimizely.offline queue: spool retry failed: ", tostring(rerr)) end
  else
    it.attempts, it.next_at = attempts, next_at
    local w = self.waiting
    w[#w + 1] = it
  end
end

---------------------------------------------------------------------------
-- The flush: light threads sharing one take()

-- One light thread of a flush. When the queue runs dry it lingers on the
-- semaphore (push posts to it) instead of ending, so a steady trickle of
-- orders does not cost a new timer and new threads per order.
local function sender(self, final)
  local take = self.spool and take_spool or take_memory
  local client = self.client
  while true do
    local fin = final or self.exiting
    local it, why = take(self, fin)
    if not it then
      if why ~= "empty" or fin or self.closed then return end
      if not self.sema:wait(self.linger) then return end -- idle long enough
    else
      self.in_flight = self.in_flight + 1
      publish(self)
      local ok, res, err = pcall(client.send_encoded, client, it.json)
      self.in_flight = self.in_flight - 1
      if not ok then
        -- a bug, not the network: keep the order and say why
        log(ERR, "optimizely.offline queue: send raised: ", tostring(res))
        res, err = nil, errors.new({ kind = "internal", message = tostring(res), retryable = true })
      end
      local sok, serr = pcall(settle, self, it, res, err, fin)
      if not sok then log(ERR, "optimizely.offline queue: settle raised: ", tostring(serr)) end
      publish(self)
    end
  end
end

local function run_flush(self, final)
  local threads = {}
  for _ = 1, self.concurrency do
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
  release_claimed(self)
end

-- Wake one lingering sender, if any (any phase: posting never yields).
local function wake(self)
  if self.sema:count() < 0 then self.sema:post(1) end
end

-- Wake every lingering sender (exit, close).
local function wake_all(self)
  local c = self.sema:count()
  if c < 0 then self.sema:post(-c) end
end

-- Is anything due right now?
local function has_due(self)
  if self.paused_until > now() then return false end
  if self.spool then
    local at = self.spool:next_due()
    return at and at <= now() + 0.001 or false
  end
  promote(self)
  return ready_size(self) > 0 or (self.shm ~= nil and shared_len(self) > 0)
end

-- Runs flushes until nothing that arrived meanwhile is left (bounded).
local function flush_loop(self, final)
  for _ = 1, 1000 do
    self.again = false
    run_flush(self, final)
    if stopping(self) then return end
    if not self.again and not (not self.spool and (ready_size(self) > 0 or (self.shm and shared_len(self) > 0))
        and not paused(self, final)) then
      return
    end
  end
end

local function begin_exit(self)
  if self.exiting then return end
  self.exiting = true
  update_time()
  self.deadline = now() + self.shutdown_timeout
end

local function flush_timer(premature, self)
  local final = premature or ngx.worker.exiting()
  if final then begin_exit(self) end
  local ok, err = pcall(flush_loop, self, final)
  self.flushing = false
  if not ok then log(ERR, "optimizely.offline queue: flush failed: ", tostring(err)) end
end

-- Start a flush unless one is running (any phase: only creates a timer).
local function kick(self)
  if self.exiting or self.shm and not self.deliverer then return end -- the final flush is running or done
  if self.flushing then
    self.again = true
    wake(self)
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

-- What is left in memory at exit is lost: count and report each order.
local function report_lost(self)
  if self.spool then return end
  promote(self, true)
  while true do
    local it = ready_pop(self)
    if not it then break end
    -- shared: handed back to the list for the next deliverer (reload)
    if not (self.shm and self.shm:rpush(LIST, pack(it.attempts, it.ref, it.json))) then
      bump(self, "dropped", "shutdown")
      bump(self, "failed")
      call(self, "on_failure", it.ref, errors.new({ kind = "shutdown", retryable = false,
        attempts = it.attempts, message = "worker exiting before the order could be sent" }))
    end
  end
  publish(self)
  local lost = self.counters.dropped.shutdown
  if lost and lost > 0 then
    log(ERR, "optimizely.offline queue: worker exiting, ", lost,
      " order(s) not delivered (no spool configured)")
  end
end

local function final_flush(self)
  begin_exit(self)
  wake_all(self)
  while self.flushing and not stopping(self) do ngx.sleep(0.02) end
  if not self.flushing then
    self.flushing = true
    local ok, err = pcall(flush_loop, self, true)
    self.flushing = false
    if not ok then log(ERR, "optimizely.offline queue: final flush failed: ", tostring(err)) end
  end
  report_lost(self)
  -- the spool stays open: requests still finishing may push (durably) until
  -- the process ends; the next worker sends those
end

local tick

local function arm(self)
  local ok, err = timer_at(self.flush_interval, tick, self)
  if not ok and not ngx.worker.exiting() then
    log(ERR, "optimizely.offline queue: cannot arm the periodic timer: ", tostring(err))
  end
end

tick = function(premature, self)
  if premature then return final_flush(self) end
  if self.closed and not self.shm and not self.flushing and self.in_flight == 0 then
    if self.spool then
      -- what is left stays in the spool for the next worker
      release_claimed(self)
      if self.spool:is_open() then self.spool:close() end
      return
    end
    if ready_size(self) == 0 and #self.waiting == 0 then return end
  end
  arm(self) -- first, so an error below cannot stop the loop
  if self.closed and self.spool then return end
  local ok, due = pcall(has_due, self)
  if not ok then
    log(ERR, "optimizely.offline queue: ", tostring(due))
    return
  end
  if self.flushing then
    if due then wake(self) end -- retries now due, senders lingering
  elseif due then
    self.flushing = true
    local fok, err = pcall(flush_loop, self, false)
    self.flushing = false
    if not fok then log(ERR, "optimizely.offline queue: flush failed: ", tostring(err)) end
  end
end

-- Workers start together and open one file: SQLite can answer "busy" at
-- once (without waiting busy_timeout) when two connections set WAL mode on a
-- new file, so a busy open is retried for up to ~2 s. init_worker cannot
-- yield; a short blocking wait there delays only this worker's start.
local function open_spool(path, sopts, phase)
  local spool = require("optimizely.offline.spool")
  local pause = YIELDABLE[phase] and ngx.sleep or require("optimizely.offline.core").sleep
  local sp, err
  for i = 1, 40 do
    sp, err = spool.open(path, sopts)
    if sp or err.kind ~= "busy" then break end
    pause(min(0.01 * i, 0.1))
  end
  return sp, err
end

---------------------------------------------------------------------------
-- Public API

--- Create this worker's queue (call it in `init_worker_by_lua*`).
-- @param client_config the `offline.client` config (site, token, channel,
--   base_url/env, timeout, connect_timeout, backoff_*, retry_after_max,
--   max_attempts as the queue's default); `transport` defaults to the
--   cosocket one. libcurl-only options (ca_file, proxy, ...) are refused.
-- @param opts `{max_queue = 10000, concurrency = 4, flush_interval = 1,
--   max_attempts = 4, on_success = fn(ref, res), on_failure = fn(ref, err),
--   spool = path, spool_options = {...}, lease = seconds, shutdown_timeout = 3,
--   transport = {keepalive_timeout, pool_size, max_body, user_agent},
--   shm = lua_shared_dict name, deliverer = 0 | worker id | "agent",
--   poll_interval = 0.02}`. With `shm` (not with `spool`) every worker only
--   encodes and appends to a list in that dict and the `deliverer` (a worker,
--   or the privileged agent, which needs OpenResty) sends for all; stats are
--   shared, `max_queue` bounds the list.
-- @return queue, or nil, err when the spool cannot be opened
function M.new(client_config, opts)
  local phase = ngx.get_phase()
  if phase == "init" then
    error("optimizely.offline.ngx.queue: create the queue in init_worker_by_lua*, not init_by_lua*"
      .. " (timers and spool handles do not survive the fork)", 2)
  end
  if type(client_config) ~= "table" then bad("client_config", "must be a table, got " .. type(client_config)) end
  if opts ~= nil and type(opts) ~= "table" then bad("opts", "must be a table, got " .. type(opts)) end
  opts = opts or {}
  for k in pairs(opts) do
    if not KNOWN[k] then bad("opts." .. tostring(k), "is not a known option") end
  end
  for k, why in pairs(CURL_ONLY) do
    if client_config[k] ~= nil then bad("client_config." .. k, "is not used under nginx: " .. why) end
  end
  if client_config.http_version ~= nil and client_config.http_version ~= "1.1" then
    bad("client_config.http_version", "must be \"1.1\" under nginx")
  end
  for _, f in ipairs({ "on_success", "on_failure" }) do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then bad("opts." .. f, "must be a function") end
  end
  if opts.spool ~= nil and (type(opts.spool) ~= "string" or opts.spool == "") then
    bad("opts.spool", "must be a file path")
  end
  if opts.spool_options ~= nil and type(opts.spool_options) ~= "table" then
    bad("opts.spool_options", "must be a table")
  end
  local shm, deliverer
  if opts.shm ~= nil then
    if type(opts.shm) ~= "string" or not ngx.shared[opts.shm] then
      bad("opts.shm", "must name a lua_shared_dict (got " .. tostring(opts.shm) .. ")")
    end
    if opts.spool ~= nil then bad("opts.shm", "cannot be combined with opts.spool") end
    shm = ngx.shared[opts.shm]
    local d = opts.deliverer
    if d == nil then d = 0 end
    local ptype = require("ngx.process").type()
    if d == "agent" then
      deliverer = ptype == "privileged agent"
    elseif type(d) == "number" and d >= 0 and d == floor(d) then
      if d >= ngx.worker.count() then
        bad("opts.deliverer", "is worker " .. d .. " but there are " .. ngx.worker.count() .. " workers")
      end
      deliverer = ptype == "worker" and ngx.worker.id() == d
    else
      bad("opts.deliverer", "must be \"agent\" or a worker id (got " .. tostring(d) .. ")")
    end
  else
    for _, k in ipairs({ "deliverer", "poll_interval" }) do
      if opts[k] ~= nil then bad("opts." .. k, "needs opts.shm") end
    end
  end
  local cfg_attempts = client_config.max_attempts
  local self = setmetatable({
    max_queue = want_number(opts, "max_queue", M.DEFAULTS.max_queue, 1, 1e9, true),
    concurrency = want_number(opts, "concurrency", M.DEFAULTS.concurrency, 1, 256, true),
    flush_interval = want_number(opts, "flush_interval", M.DEFAULTS.flush_interval, 0.01, 3600),
    max_attempts = want_number(opts, "max_attempts",
      type(cfg_attempts) == "number" and cfg_attempts or M.DEFAULTS.max_attempts, 1, 100, true),
    shutdown_timeout = want_number(opts, "shutdown_timeout", M.DEFAULTS.shutdown_timeout, 0, 3600),
    on_success = opts.on_success, on_failure = opts.on_failure,
    ready = {}, head = 1, tail = 0, waiting = {},
    claimed = {}, claimed_next = 1, claimed_n = 0,
    sema = semaphore.new(0),
    linger = 1, -- seconds an idle sender waits for the next push
    in_flight = 0, flushing = false, again = false, closed = false,
    paused_until = 0, timer_warned = 0,
    counters = { sent = 0, retried = 0, failed = 0, dead = 0, invalid = 0, dropped = {} },
    shm = shm, deliverer = deliverer,
    poll_interval = want_number(opts, "poll_interval", 0.02, 0.001, 60),
  }, Queue)

  -- The client does the config checks, header building and outcome rules.
  local cfg = {}
  for k, v in pairs(client_config) do cfg[k] = v end
  if cfg.transport == nil then
    local topts = {}
    for k, v in pairs(opts.transport or {}) do topts[k] = v end
    topts.timeout = topts.timeout or client_config.timeout
    topts.connect_timeout = topts.connect_timeout or client_config.connect_timeout
    cfg.transport = transport.new(topts)
  end
  cfg.max_attempts = 1 -- the queue retries, not the client
  self.client = require("optimizely.offline.client").client(cfg)
  self.policy = retry.new({
    max_attempts = self.max_attempts, backoff_base = client_config.backoff_base,
    backoff_max = client_config.backoff_max, retry_after_max = client_config.retry_after_max,
    random = client_config.random,
  })
  self.encode = require("optimizely.offline").encode
  local timeout = (client_config.timeout or 10) + (client_config.connect_timeout or 5)
  self.lease = want_number(opts, "lease", max(30, 2 * timeout), 1, 86400)

  if opts.spool then
    local sp, err = open_spool(opts.spool, opts.spool_options, phase)
    if not sp then return nil, err end
    self.spool = sp
  end
  if shm and not deliverer then return self end -- pushes only: no timers here
  arm(self)
  if self.spool then kick(self) end -- orders left by an earlier run
  if shm then
    -- other processes cannot post our semaphore: look at the list often
    -- (an llen, no allocation) and wake or start the senders
    local ok, err = ngx.timer.every(self.poll_interval, function(premature)
      if premature or self.exiting then return end
      if shared_len(self) > 0 then kick(self) end
    end)
    if not ok then return nil, errors.new({ kind = "internal", message = "cannot start the poll timer: " .. tostring(err) }) end
    kick(self) -- orders left by the previous deliverer
  end
  return self
end

local function refuse(self, err)
  local kind = err.kind == "validation" and "invalid" or err.kind or "error"
  bump(self, "dropped", kind)
  if kind == "invalid" then bump(self, "invalid") end
  if kind == "full" and err.bound and not err.option then
    err.option = self.spool and ("spool_" .. err.bound) or err.bound
  end
  return nil, err
end

--- Queue one order. No network I/O, no yield: any phase, log_by_lua included.
-- @param payload `{lang?, user?, order}` as accepted by `offline.encode`
-- @return true, warnings  or  nil, err (kind "validation" with problems,
--   "full" when `max_queue` (or a spool bound) is reached — checked first,
--   so a full queue refuses without validating —, "closed", or a spool kind)
function Queue:push(payload)
  local shm = self.shm
  if shm then return self:push_shared(payload, shm) end
  if self.closed or (self.exiting and not self.spool) then
    return refuse(self, errors.new({ kind = "closed", retryable = false,
      message = self.closed and "the queue is closed" or "the worker is exiting" }))
  end
  if not self.spool then
    -- checked before encoding: shedding load must be cheap
    local n = ready_size(self) + #self.waiting + self.in_flight
    if n >= self.max_queue then
      return refuse(self, errors.new({ kind = "full", bound = "max_queue", retryable = true,
        message = "queue full: " .. n .. " orders waiting (max_queue " .. self.max_queue .. ")" }))
    end
  end
  local json, warnings = self.encode(payload)
  if not json then return refuse(self, warnings) end
  local ref = payload.order.refCode
  ref = type(ref) == "number" and string.format("%.17g", ref) or tostring(ref)
  if self.spool then
    local id, err = self.spool:put(json, ref)
    if not id then return refuse(self, err) end
  else
    ready_push(self, { json = json, ref = ref, attempts = 0, next_at = 0 })
  end
  kick(self)
  return true, warnings
end

-- Shared mode: encode here, append the bytes to the dict's list; the
-- deliverer's poll timer picks them up. The dict outlives a reload, so an
-- exiting worker still accepts.
function Queue:push_shared(payload, shm)
  if self.closed then
    return refuse(self, errors.new({ kind = "closed", retryable = false, message = "the queue is closed" }))
  end
  local n = shm:llen(LIST) or 0 -- O(1): shedding load must be cheap
  if n >= self.max_queue then
    return refuse(self, errors.new({ kind = "full", bound = "max_queue", retryable = true,
      message = "queue full: " .. n .. " orders waiting (max_queue " .. self.max_queue .. ")" }))
  end
  local json, warnings = self.encode(payload)
  if not json then return refuse(self, warnings) end
  local ref = payload.order.refCode
  ref = type(ref) == "number" and string.format("%.17g", ref) or tostring(ref)
  local ok, err = shm:rpush(LIST, pack(0, ref, json))
  if not ok then
    -- "no memory": the dict is the bound here
    return refuse(self, errors.new({ kind = "full", bound = "shm", option = "shm", retryable = true,
      message = "queue full: the lua_shared_dict has no room (" .. tostring(err) .. ")" }))
  end
  if self.deliverer then kick(self) end
  return true, warnings
end

--- Counters of this worker's queue (the names of the threaded queue's).
-- @return `{queued, in_flight, sent, retried, failed, dead, invalid,
--   dropped = {invalid =, full =, closed =, shutdown =}, paused_for,
--   spool = spool:stats() (with a spool)}`: `retried` counts rescheduled
--   attempts, `dead` orders given up after their attempts or a permanent
--   failure, `failed` every order passed to on_failure (dead, and lost at
--   exit without a spool), `invalid` pushes refused by validation
function Queue:stats()
  local shm = self.shm
  if shm then
    -- every worker reports the same (shared) numbers
    local function c(k) return shm:get("c:" .. k) or 0 end
    local dropped = {}
    for _, k in ipairs(shm:get_keys(0)) do
      local sub = k:match("^c:dropped%.(.+)$")
      if sub then dropped[sub] = shm:get(k) end
    end
    local fl = c("in_flight")
    return { shared = true, deliverer = self.deliverer, queued = shared_len(self) + c("held") - fl,
      in_flight = fl, sent = c("sent"), retried = c("retried"), failed = c("failed"), dead = c("dead"),
      invalid = c("invalid"), dropped = dropped, paused_for = max(0, self.paused_until - now()) }
  end
  local st = self.counters
  local out = {
    in_flight = self.in_flight, sent = st.sent, retried = st.retried, failed = st.failed,
    dead = st.dead, invalid = st.invalid, dropped = {},
    paused_for = max(0, self.paused_until - now()),
  }
  for k, v in pairs(st.dropped) do out.dropped[k] = v end
  if self.spool and self.spool:is_open() then
    local sst, err = self.spool:stats()
    if sst then
      out.spool = sst
      out.queued = sst.queued - sst.claimed -- claimed rows are in flight (here or elsewhere)
    else
      out.spool_error = tostring(err)
    end
  else
    out.queued = ready_size(self) + #self.waiting
  end
  return out
end

local function left(self)
  if self.shm then return shared_len(self) + (self.shm:get(HELD) or 0) end
  if self.spool then
    if not self.spool:is_open() then return 0 end
    local st = self.spool:stats()
    return st and st.queued or 1
  end
  return ready_size(self) + #self.waiting + self.in_flight
end

--- Wait until every queued order is delivered or dead (with a spool: until
-- the spool holds no queued order, whichever worker queued it).
-- Only where yielding is allowed (timer, rewrite, access, content).
-- @param timeout seconds (default 10)
-- @return true, or nil, err (kind "timeout")
function Queue:flush(timeout)
  local phase = ngx.get_phase()
  if not YIELDABLE[phase] then
    error("optimizely.offline.ngx.queue: flush cannot wait in the " .. tostring(phase)
      .. " phase (use it in a timer, rewrite, access or content handler)", 2)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("optimizely.offline.ngx.queue: flush timeout must be a number >= 0", 2)
  end
  update_time()
  local deadline = now() + (timeout or 10)
  local pause = 0.005
  while true do
    local n = left(self)
    if n == 0 then return true end
    update_time()
    if now() >= deadline then
      return nil, errors.new({ kind = "timeout", retryable = true,
        message = "queue not empty after " .. (timeout or 10) .. " s (" .. n .. " orders left)" })
    end
    if not self.flushing and has_due(self) then kick(self) end
    ngx.sleep(min(pause, max(0.001, deadline - now())))
    pause = min(pause * 2, 0.1)
  end
end

--- Refuse further pushes and, where yielding is allowed, flush first.
-- What is still queued afterwards: delivered by the periodic timer (memory)
-- or left in the spool for the next worker (spool).
-- @param timeout seconds for the flush (default 10)
-- @return true, or nil, err (kind "timeout")
function Queue:close(timeout)
  if self.closed then return true end
  local ok, err = true, nil
  if YIELDABLE[ngx.get_phase()] then ok, err = self:flush(timeout) end
  self.closed = true
  wake_all(self) -- lingering senders end; the periodic timer closes the spool
  return ok, err
end

function Queue:__tostring()
  return "optimizely.offline.ngx.queue{" .. (self.spool and ("spool=" .. self.spool.path) or "memory")
    .. (self.closed and ", closed" or "") .. "}"
end

M.Queue = Queue
return M
