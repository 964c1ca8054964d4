--- How an nginx queue is put together: its options, the checks a
-- misconfigured nginx fails loudly on, the scheduler's configuration, the
-- store for the options, and the shared-mode role of this process.
-- @module optimizely.offline.ngx.setup
local ngx = ngx
local process = require("ngx.process")
local core = require("optimizely.offline.core")
local queue_opts = require("optimizely.offline.queue_opts")
local waiting = require("optimizely.offline.ngx.wait")
local store_memory = require("optimizely.offline.ngx.store_memory")
local store_spool = require("optimizely.offline.ngx.store_spool")
local store_shm = require("optimizely.offline.ngx.store_shm")

local floor = math.floor

local M = {}

--- The nginx queue's options: the shared vocabulary (optimizely.offline.queue_opts)
-- plus `flush_interval`, `shutdown_timeout`, `pipeline` (requests written
-- at once on one connection, their answers read in order; `concurrency`
-- requests in flight in all, over `ceil(concurrency / pipeline)`
-- connections), `transport` (cosocket transport options), `shm`,
-- `deliverer`, `poll_interval`, `metrics_shm` (a `lua_shared_dict` every
-- worker adds its metrics to, every `flush_interval` and at exit: it
-- outlives reloads; `optimizely.offline.metrics.prometheus(ngx.shared[name])`
-- reads it).
M.schema = queue_opts.schema("optimizely.offline.ngx.queue", {
  flush_interval = { type = "number", min = 0.01, max = 3600, default = 1 },
  shutdown_timeout = { type = "number", min = 0, max = 3600, default = 3 },
  pipeline = { type = "integer", min = 1, max = 64, default = 1 },
  send_delay = { type = "number", min = 0, max = 1, default = 0 },
  transport = { type = "table" },
  shm = { type = "string", nonempty = true },
  deliverer = { type = "any" },
  poll_interval = { type = "number", min = 0.001, max = 60, default = 0.02, requires = "shm" },
  metrics_shm = { type = "string", nonempty = true },
})

--- Missing credentials under nginx are almost always an environment
-- variable nginx did not pass: it clears the environment of its workers
-- except for the variables named by `env` directives.
-- @param cc the client config
-- @param level as error's
function M.check_credentials(cc, level)
  if type(cc) == "table" and cc.token == nil and cc.tokens == nil then
    error("optimizely.offline.ngx.queue: client_config.token is missing (nil). If the config reads it with"
      .. " os.getenv(\"NAME\"), declare the variable in the main context of nginx.conf with `env NAME;`:"
      .. " nginx clears the environment of its workers otherwise", level + 1)
  end
end

--- The dicts the options name must exist; `shm` excludes `spool`;
-- `deliverer` needs `shm`.
-- @param o the checked options
-- @param level as error's
function M.check_opts(o, level)
  level = level + 1
  if o.metrics_shm ~= nil and not ngx.shared[o.metrics_shm] then
    error("optimizely.offline.ngx.queue: opts.metrics_shm must name a lua_shared_dict (got "
      .. core.quote(o.metrics_shm) .. ")", level)
  end
  if o.shm ~= nil then
    if not ngx.shared[o.shm] then
      error("optimizely.offline.ngx.queue: opts.shm must name a lua_shared_dict (got " .. core.quote(o.shm) .. ")",
        level)
    end
    if o.spool ~= nil then error("optimizely.offline.ngx.queue: opts.shm cannot be combined with opts.spool", level) end
  elseif o.deliverer ~= nil then
    error("optimizely.offline.ngx.queue: opts.deliverer needs opts.shm", level)
  end
end

--- The shared-mode role of this process: the deliverer (true) or a pusher.
-- @param o the options
-- @param level as error's
-- @return boolean
function M.deliverer_role(o, level)
  local d = o.deliverer
  if d == nil then d = 0 end
  local ptype = process.type()
  if d == "agent" then return ptype == "privileged agent" end
  if type(d) == "number" and d >= 0 and d == floor(d) then
    if d >= ngx.worker.count() then
      error("optimizely.offline.ngx.queue: opts.deliverer is worker " .. d .. " but there are "
        .. ngx.worker.count() .. " workers", level + 1)
    end
    return ptype == "worker" and ngx.worker.id() == d
  end
  error("optimizely.offline.ngx.queue: opts.deliverer must be \"agent\" or a worker id (got "
    .. tostring(d) .. ")", level + 1)
end

--- The scheduler of a queue (csrc/delivery/sched.c): the client's URL and channels
-- (with their headers), the queue's policy (no attempt limit unless
-- `max_attempts`, the age limit), a fixed in-flight limit of
-- `concurrency` (halved by a 429, growing back), a pause of `auth_pause`
-- after refused credentials, and the store's hooks.
-- @param st the delivery context
-- @param o the queue's options
-- @param hooks the store's hooks, or nil
-- @param max_pending `add` refuses beyond (0: no bound)
-- @param g the ledger gate whose file the record hook writes (memory and
--   shm stores; the spool records in its acks), or nil
-- @return the scheduler
function M.scheduler(st, o, hooks, max_pending, g)
  local cfg = { url = st.post_url, channels = st.channels, policy = queue_opts.policy(st, o),
    concurrency = o.concurrency, adaptive = false, on_stop = "pause", auth_pause = o.auth_pause,
    report_all = o.on_success ~= nil, report_retries = true, no_metrics = st.config.metrics == false,
    max_pending = max_pending, hooks = hooks }
  if g then g:configure(cfg) end
  return core.sched_new(cfg)
end

--- The store the options ask for, opened.
-- @param q the queue
-- @param phase the phase the queue is made in
-- @return the store | nil, err (the spool could not be opened)
function M.store(q, phase)
  local o = q.o
  if o.shm then return store_shm.new(q, ngx.shared[o.shm], M.deliverer_role(o, 4)) end
  if o.spool then
    local timeout = (q.st.config.timeout or 10) + (q.st.config.connect_timeout or 5)
    return store_spool.new(q, waiting.YIELDABLE[phase], o.lease or math.max(30, 2 * timeout))
  end
  return store_memory.new(q)
end

return M
