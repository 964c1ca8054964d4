--- When the nginx queue's senders run: timers, light threads, and the
-- worker's exit.
--
-- A push wakes a lingering sender (a semaphore post) or, when none runs,
-- starts a flush with `ngx.timer.at(0)`: no I/O and no yield in the push,
-- so it works in any phase. A flush runs the senders (optimizely.offline.ngx.sender),
-- light threads that linger `linger` seconds for the next push before
-- ending, so a steady trickle costs no timer per order. A periodic timer
-- (`flush_interval`) reports results, publishes metrics, looks at the
-- store (due spool rows of any worker, the shared list) and restarts the
-- senders when something waits.
--
-- **Worker exit** (reload, stop): the periodic timer runs prematurely and
-- the queue gets `shutdown_timeout` seconds, the grace: the store's last
-- chance (memory: every retry due now), then the senders run until nothing
-- may start or the grace ends. Then the store accounts for what is left
-- (`at_exit`): memory orders in flight are unknown and the others reported
-- not delivered; shared-dict orders go back to the dict; spool rows stay in
-- the file. nginx does not tell Lua its `worker_shutdown_timeout`: keep
-- `shutdown_timeout` below it.
-- @module optimizely.offline.ngx.flusher
local ngx = ngx
local semaphore = require("ngx.semaphore")
local nledger = require("optimizely.offline.ngx.ledger")

local now, update_time, log, ERR, WARN = ngx.now, ngx.update_time,
  require("optimizely.offline.errors").logger(ngx.log), ngx.ERR, ngx.WARN
local timer_at, spawn = ngx.timer.at, ngx.thread.spawn

local M = {}

local Flusher = {}
Flusher.__index = Flusher

--- The flusher of queue `q`.
-- @param q the queue (`o`, `s`, `store`, `report`, `flying`)
-- @param sender the sender module (its `run(q, flusher)`)
-- @return the flusher
function M.new(q, sender)
  return setmetatable({ q = q, sender = sender, sema = semaphore.new(0),
    linger = 1, -- seconds an idle sender waits for the next push
    running = 0, starting = false, exiting = false, timer_warned = 0,
    senders = math.ceil(q.o.concurrency / q.o.pipeline) }, Flusher)
end

--- Has the grace (`shutdown_timeout` after the worker began to exit) ended?
-- @return boolean
function Flusher:stopping()
  if not self.deadline then return false end
  update_time()
  return now() >= self.deadline
end

--- Does a sender with nothing to take end now (rather than linger)? At
-- exit and after close.
-- @return boolean
function Flusher:idle_ends()
  return self.exiting or self.q.closed
end

--- Wakes one lingering sender, if any (any phase: posting never yields).
function Flusher:wake()
  if self.sema:count() < 0 then self.sema:post(1) end
end

--- Wakes every lingering sender (exit, close).
function Flusher:wake_all()
  local c = self.sema:count()
  if c < 0 then self.sema:post(-c) end
end

-- One sender's light thread; `running` counts the live ones.
local function sender_thread(self)
  local ok, err = pcall(self.sender.run, self.q, self)
  self.running = self.running - 1
  if not ok then log(ERR, "optimizely.offline queue: sender failed: ", tostring(err)) end
end

--- Spawns the senders in the current (timer) context; they outlive the
-- handler that spawned them (nginx keeps its context until they end).
function Flusher:spawn_senders()
  for _ = 1, self.senders do
    self.running = self.running + 1 -- before: the thread may end before spawn returns
    local th, err = spawn(sender_thread, self)
    if not th then
      self.running = self.running - 1
      log(ERR, "optimizely.offline queue: cannot spawn a sender: ", tostring(err))
      break
    end
  end
  self.starting = false
end

local function flush_timer(premature, self)
  if premature then
    self.starting = false
    return self:final()
  end
  local ok, err = pcall(self.spawn_senders, self)
  if not ok then
    self.starting = false
    log(ERR, "optimizely.offline queue: flush failed: ", tostring(err))
  end
end

--- Gets the senders going: wakes one that lingers, or starts a flush (a
-- zero-delay timer). Any phase: it only posts or creates a timer. Nothing
-- at exit (the final flush is running or done).
function Flusher:kick()
  if self.exiting then return end
  if self.running > 0 then return self:wake() end
  if self.starting then return end
  self.starting = true
  local ok, err = timer_at(0, flush_timer, self)
  if not ok then
    self.starting = false
    -- the periodic timer will try again; say so at most once a second
    if now() - self.timer_warned > 1 then
      self.timer_warned = now()
      log(WARN, "optimizely.offline queue: cannot start a flush timer: ", tostring(err))
    end
  end
end

local tick

--- Arms the periodic timer once more; a failure is logged unless the
-- worker is exiting.
function Flusher:arm()
  local ok, err = timer_at(self.q.o.flush_interval, tick, self)
  if not ok and not ngx.worker.exiting() then
    log(ERR, "optimizely.offline queue: cannot arm the periodic timer: ", tostring(err))
  end
end

--- The periodic work: results, metrics, the store, the senders. Returns
-- false when the queue is closed and settled (the timer stops).
-- @return boolean
function Flusher:periodic()
  local q = self.q
  q.report:drain()
  q:publish_metrics()
  nledger.flush(q)
  if q.closed and self.running == 0 and not self.starting then
    if q.store.name == "spool" then
      q.s:drop_unstarted() -- what is left waits in the file for the next worker
      q.store:close()
      return false
    end
    if q.s:pending() == 0 then return false end
  end
  if q.store:has_due() or q.s:pending() > 0 then
    if self.running > 0 then self:wake() elseif not q.closed or q.store.name ~= "spool" then self:kick() end
  end
  return true
end

tick = function(premature, self)
  if premature then return self:final() end
  local ok, more = pcall(self.periodic, self)
  if not ok then log(ERR, "optimizely.offline queue: ", tostring(more)) end
  if not ok or more then self:arm() end
end

--- Starts the periodic timer (and, with work waiting, the senders).
function Flusher:start()
  self:arm()
  if self.q.store:has_due() then self:kick() end
end

--- Worker exit (the periodic timer runs prematurely): the grace of
-- `shutdown_timeout`, then the store accounts for what is left and the
-- last metrics are published. Runs once.
function Flusher:final()
  if self.exiting then return end
  self.exiting = true
  update_time()
  self.deadline = now() + self.q.o.shutdown_timeout
  local q = self.q
  local ok, err = pcall(function()
    q.store:final()
    self:wake_all()
    if self.running == 0 then self:spawn_senders() end
    while self.running > 0 and not self:stopping() do ngx.sleep(0.01) end
  end)
  if not ok then log(ERR, "optimizely.offline queue: final flush failed: ", tostring(err)) end
  self:end_grace()
end

--- The grace is over: tokens of memory orders in flight are void (their
-- answers are only logged), the store accounts for what is left, and the
-- metrics are published for the last time (again after each late answer).
function Flusher:end_grace()
  local q = self.q
  self.grace_over = true
  if q.store.name ~= "spool" then
    for token in pairs(q.flying) do q.void[token] = true end
  end
  local ok, err = pcall(q.store.at_exit, q.store, q.flying)
  if not ok then log(ERR, "optimizely.offline queue: accounting at exit failed: ", tostring(err)) end
  q.report:drain()
  q.report:publish(true)
end

M.Flusher = Flusher
return M
