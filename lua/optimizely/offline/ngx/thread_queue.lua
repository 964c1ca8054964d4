--- The libcurl engine inside an nginx worker: delivery off the event loop.
--
--     init_worker_by_lua_block {
--       ORDERS = require("optimizely.offline.ngx").queue(
--         { site = "demo", token = TOKEN, channel = "store", ca_file = "/etc/ssl/certs/ca-certificates.crt" },
--         { engine = "thread", spool = "/var/spool/oo/orders.db" })
--     }
--     log_by_lua_block { ORDERS:push(build_order()) }
--
-- The cosocket engine (optimizely.offline.ngx.queue) sends from the worker's
-- event loop: every order costs the loop a TLS write, a read, a wake-up and
-- the Lua around them. With `engine = "thread"` the worker instead starts the
-- threaded queue (optimizely.offline.queue: the libcurl engine on a C thread
-- of its own, started on the first push in this worker process): `push`
-- validates, encodes and hands the bytes over under a mutex — no I/O, no
-- yield, any phase — and the thread does the HTTPS. The event loop only
-- runs the callbacks, from a timer every `flush_interval` seconds.
--
-- Same options, `push` return and `stats()` keys as both queues; the client
-- config is libcurl's (`ca_file`, `proxy`, ... are honoured: the thread
-- does not use nginx's `lua_ssl_trusted_certificate`). At worker exit the
-- timer waits up to `shutdown_timeout` for the thread to deliver what it
-- holds; then what is left stays in the spool, or (memory) reaches
-- `on_failure` with kind "shutdown", counted in `dropped.shutdown`, and is
-- logged with its refCode — never silently lost.
-- @module optimizely.offline.ngx.thread_queue
local ngx = ngx
local core = require("optimizely.offline.core")
local opts = require("optimizely.offline.opts")
local common = require("optimizely.offline.queue").common

local log, ERR, WARN = require("optimizely.offline.errors").logger(ngx.log), ngx.ERR, ngx.WARN

local M = {}

local fields = {}
for k, v in pairs(common) do fields[k] = v end
fields.engine = { type = "choice", choices = { "thread" } }
fields.flush_interval = { type = "number", min = 0.01, max = 3600, default = 0.2 }
fields.shutdown_timeout = { type = "number", min = 0, max = 3600, default = 3 }
fields.spool_poll = { type = "number", min = 0.001, max = 60, default = 0.25 }
fields.metrics_shm = { type = "string", nonempty = true }

--- The options: the shared queue vocabulary plus `engine = "thread"`,
-- `flush_interval` (how often the event loop collects results and, with
-- `metrics_shm`, adds this worker's metrics to that lua_shared_dict),
-- `shutdown_timeout` and `spool_poll`.
M.schema = opts.schema("optimizely.offline.ngx.queue", "opts", fields)

local wait = require("optimizely.offline.ngx.wait")

local Queue = {}
Queue.__index = Queue

-- The user's on_failure, plus the log line nginx operators look for.
local function failure_logger(user)
  return function(ref, err)
    if err.kind == "shutdown" then
      log(ERR, "optimizely.offline queue: worker exiting, order ", core.quote(ref or ""), " not delivered: ",
        tostring(err))
    else
      log(WARN, "optimizely.offline queue: order ", core.quote(ref or ""), " failed for good: ", tostring(err))
    end
    if user then user(ref, err) end
  end
end

--- Create this worker's queue (in `init_worker_by_lua*`).
-- @param client_config the `offline.client` config (libcurl's)
-- @param o options (see `M.schema`)
-- @return queue, or nil, err (the spool could not be opened)
function M.new(client_config, o)
  if ngx.get_phase() == "init" then
    error("optimizely.offline.ngx.queue: create the queue in init_worker_by_lua*, not init_by_lua*"
      .. " (its thread and spool handle do not survive the fork)", 3)
  end
  o = M.schema:check(o, 3)
  local qopts = {}
  for k in pairs(common) do qopts[k] = o[k] end
  qopts.spool_poll = o.spool_poll
  qopts.on_failure = failure_logger(o.on_failure)
  local client = require("optimizely.offline").client(client_config)
  local q, err = client:queue(qopts)
  if not q then return nil, err end
  local self = setmetatable({ q = q, client = client, o = o }, Queue)
  if o.metrics_shm then
    local dict = ngx.shared[o.metrics_shm]
    if not dict then
      error("optimizely.offline.ngx.queue: opts.metrics_shm must name a lua_shared_dict (got "
        .. core.quote(o.metrics_shm) .. ")", 3)
    end
    self.metrics_publisher = require("optimizely.offline.metrics").shm_publisher(dict, { id = ngx.worker.pid(),
      ttl = math.max(10, 5 * o.flush_interval), spool_id = o.spool,
      on_error = function(e) log(ERR, "optimizely.offline queue: metrics_shm: ", tostring(e)) end })
  end
  local ok, terr = ngx.timer.every(o.flush_interval, function(premature)
    if premature then return self:final() end
    local pok, perr = pcall(self.tick, self)
    if not pok then log(ERR, "optimizely.offline queue: poll failed: ", tostring(perr)) end
  end)
  if not ok then
    q:close(0)
    return nil, require("optimizely.offline.errors").new({ kind = "internal",
      message = "cannot start the result timer: " .. tostring(terr) })
  end
  return self
end

--- The periodic timer's work, every `flush_interval`: run the callbacks of
-- the results the thread reported (`poll`), then add the metrics to
-- `metrics_shm` (when set).
-- @param exiting true at worker exit (the publisher's last delta)
-- @local
function Queue:tick(exiting)
  self.q:poll()
  if self.metrics_publisher then self.metrics_publisher(self.q:metrics(), exiting) end
end

--- Add this worker's metrics to `metrics_shm` now (a /metrics handler may).
function Queue:publish_metrics()
  if self.metrics_publisher then self.metrics_publisher(self.q:metrics()) end
end

--- Queue one order: no network I/O, no yield (any phase).
-- @return true, warnings  or  nil, err (as optimizely.offline.queue)
function Queue:push(payload, po)
  if self.closed then
    return nil, require("optimizely.offline.errors").new({ kind = "closed", retryable = false,
      message = "the queue is closed" })
  end
  return self.q:push(payload, po)
end

--- Hand over many orders (one spool transaction).
function Queue:push_many(list) return self.q:push_many(list) end

--- Counters: the keys of both queues.
function Queue:stats() return self.q:stats() end

--- Delivery metrics.
function Queue:metrics() return self.q:metrics() end

--- Try the credentials again now.
function Queue:resume() return self.q:resume() end

--- Waits, yielding, until everything pushed is settled and reported
-- (polling from every 5 ms to every 50 ms) or `timeout` passes (a step of
-- `flush` and `final`).
-- @param timeout seconds
-- @return true when settled, else false
-- @local
function Queue:settle(timeout)
  return (wait.until_done(function()
    self.q:poll()
    return self.q:idle()
  end, timeout, nil, 0.05))
end

--- Wait until every queued order is delivered or dead. Only where
-- yielding is allowed (timer, rewrite, access, content).
-- @param timeout seconds (default 10)
-- @return true, or nil, err (kind "timeout")
function Queue:flush(timeout)
  wait.check_phase("optimizely.offline.ngx.queue: flush", 2)
  timeout = timeout or 10
  if self:settle(timeout) then return true end
  local s = self.q:stats()
  return nil, require("optimizely.offline.errors").new({ kind = "timeout", retryable = true,
    message = ("queue not empty after %g s (%d queued, %d in flight)"):format(timeout, s.queued, s.in_flight) })
end

--- Worker exit (the timer runs prematurely): a grace of `shutdown_timeout`
-- for the thread, then close; what is left is reported to on_failure
-- (kind "shutdown") or stays in the spool, and the last metrics go to
-- `metrics_shm`.
-- @local
function Queue:final()
  if self.closed then return end
  self:settle(self.o.shutdown_timeout)
  self.closed = true
  local ok, err = self.q:close(0)
  if not ok then log(WARN, "optimizely.offline queue: ", tostring(err)) end
  if self.metrics_publisher then pcall(self.metrics_publisher, self.q:metrics(), true) end
end

--- Refuse further pushes; where yielding is allowed flush first.
function Queue:close(timeout)
  if self.closed then return true end
  local ok, err = wait.flush_first(self, timeout)
  self.closed = true
  self.q:close(0)
  return ok, err
end

function Queue:__tostring()
  return "optimizely.offline.ngx.queue{engine=thread, " .. (self.o.spool and ("spool=" .. self.o.spool) or "memory")
    .. (self.closed and ", closed" or "") .. "}"
end

M.Queue = Queue
return M
