--- optimizely.offline under OpenResty / nginx + ngx_http_lua_module.
--
-- Inside an nginx worker libcurl would block the event loop, so this module
-- gives the client a cosocket transport and a per-worker queue delivered by
-- timers:
--
--     # nginx.conf: `env OPTIMIZELY_SITE_TOKEN;` in the main context, then (http block)
--     lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
--     lua_ssl_verify_depth 5;
--     init_worker_by_lua_block {
--       local q, err = require("optimizely.offline.ngx").queue(
--         { site = "demo", token = os.getenv("OPTIMIZELY_SITE_TOKEN"), channel = "store" },
--         { spool = "/var/lib/optimizely-offline/orders.db" })
--       if not q then error(tostring(err), 0) end  -- nginx prints a raised table as "unknown error"
--       ORDERS = q
--     }
--     # any phase, log_by_lua included
--     log_by_lua_block { if ORDERS then ORDERS:push(build_order()) end }
--
-- nginx prints an error that is not a string (an error object raised with
-- `error(err)` or `assert(q, err)`) as "unknown error" / "unknown reason":
-- whatever fails in `queue`, `flush` and `close` is therefore also logged
-- here, at level ERR, as text, so `assert(ngxo.queue(...))` shows why in
-- the error log; print any other `err` with `tostring(err)`.
--
-- or, where cosockets are available (content, access, rewrite, timer):
--
--     local c = require("optimizely.offline.ngx").client{ site = ..., token = ..., channel = ... }
--     local res, err = c:send(payload)
--
-- Loaded only under nginx (it raises elsewhere).
-- @module optimizely.offline.ngx
local transport = require("optimizely.offline.ngx.transport")
local context = require("optimizely.offline.ngx.context")
local queue = require("optimizely.offline.ngx.queue")
local client = require("optimizely.offline.client")
local errors = require("optimizely.offline.errors")
local ngx = ngx

local M = {}

--- Logs a failure as text, at level ERR: `what: <tostring(err)>`, control
-- characters escaped. nginx shows a raised error object as "unknown error"
-- (it prints only strings), so every failure the facade hands back is also
-- in the error log, however the caller raises or asserts it.
-- @param what who failed ("optimizely.offline.ngx.queue")
-- @param err the error (an error object or a message)
function M.log_failure(what, err)
  ngx.log(ngx.ERR, what, ": ", errors.clean(err))
end

-- The queue's methods that hand back `nil, err` after something failed
-- (not `push`: a refused order is the caller's to report, and it may be
-- refused thousands of times a second).
local LOGGED = { "flush", "close" }

-- Wraps a queue so its flush and close failures are logged too.
local function logged(q)
  for _, name in ipairs(LOGGED) do
    local method = q[name]
    if type(method) == "function" then
      q[name] = function(self, ...)
        local ok, err = method(self, ...)
        if not ok and err ~= nil then M.log_failure("optimizely.offline.ngx.queue:" .. name, err) end
        return ok, err
      end
    end
  end
  return q
end

--- A cosocket transport for `offline.client{transport = ...}`.
-- @param opts `{timeout = 10, connect_timeout = 5, keepalive_timeout = 60,
--   pool_size = 16, max_body = 1 MiB, user_agent}`
-- @see optimizely.offline.ngx.transport
function M.transport(opts)
  return transport.new(opts)
end

--- A client for the content/access/rewrite/timer phases: `offline.client`
-- with the cosocket transport and `ngx.sleep` between retries (the default
-- sleep would block the whole worker).
-- @param config the client config; `transport` may be a table of transport
--   options instead of a transport
-- @return client
function M.client(config)
  local cfg = context.client_config(config, "optimizely.offline.ngx.client: config", nil, nil, 2)
  cfg.sleep = cfg.sleep or ngx.sleep
  return client.client(cfg)
end

--- This worker's delivery queue (create it in `init_worker_by_lua*`): the
-- C scheduler driven by light threads over cosockets.
-- @param client_config the client's config (site, token, channel, base_url, ...)
-- @param opts the queue options shared with the threaded queue
--   (optimizely.offline.queue: `max_queue, concurrency, spool, spool_max_orders,
--   spool_max_bytes, spool_on_full, spool_sync, lease, max_attempts, max_age,
--   auth_pause, channel, on_success, on_failure, on_event, logger`) plus
--   `flush_interval, shutdown_timeout, pipeline, send_delay, transport, shm,
--   deliverer, poll_interval, metrics_shm` (`shm`: shared delivery, one
--   process sends for all workers; `metrics_shm`: a lua_shared_dict every
--   worker adds its metrics to, read by
--   `optimizely.offline.metrics.prometheus(ngx.shared[name])`)
-- @return queue, or nil, err (the spool could not be opened; also logged,
--   see `log_failure`)
-- @raise on bad options; `engine` (the removed delivery thread) names why
-- @see optimizely.offline.ngx.queue
function M.queue(client_config, opts)
  if type(opts) == "table" and opts.engine ~= nil then
    error("optimizely.offline.ngx.queue: opts.engine is gone: the delivery thread (engine = \"thread\") cost more"
      .. " CPU per order than the cosocket queue on every measure (doc/topics/openresty.md); drop the option", 2)
  end
  local q, err = queue.new(client_config, opts)
  if not q then
    M.log_failure("optimizely.offline.ngx.queue", err)
    return nil, err
  end
  return logged(q), nil
end

return M
