--- The example OpenResty application: a POS upload endpoint, a checkout
-- log hook and a stats page, all feeding one per-worker queue.
--
--   init_by_lua_block        require("offline_app").configure("/path/to/app.lua")
--   init_worker_by_lua_block require("offline_app").init_worker()
--   location = /pos/orders   content_by_lua_block { require("offline_app").pos_orders() }
--   location = /checkout     log_by_lua_block     { require("offline_app").checkout_log() }
--   location = /queue/stats  content_by_lua_block { require("offline_app").stats() }
--   location = /metrics      content_by_lua_block { require("offline_app").metrics() }
--
-- The config file returns a table: the client config (`site`, `channel`,
-- `base_url` or `env`, `token`, `timeout`, ...) plus the queue options under
-- `queue` (`spool`, `max_queue`, `concurrency`, `metrics_shm`, ...). Any
-- client key may instead come from the environment: `token_env = "NAME"`
-- (or `base_url_env`, `site_env`, ...) reads `NAME` in each worker, which
-- needs `env NAME;` in nginx.conf; a variable nginx did not pass stops the
-- worker's queue at init_worker with a message naming the directive.
local offline = require("optimizely.offline")
local offline_ngx = require("optimizely.offline.ngx")
local metrics = require("optimizely.offline.metrics")
local cjson = require("cjson.safe").new()

local ngx = ngx
local M = {}

local config   -- loaded in the master by configure(), inherited by the workers
M.queue = nil  -- this worker's queue, made by init_worker()

local MAX_UPLOAD = 1000 -- orders per POS request
local METRICS_SHM = "optimizely_offline_metrics" -- the lua_shared_dict of nginx.conf

local CLIENT_KEYS = {
  "site", "token", "channel", "allow_custom_channel", "env", "sitename", "base_url",
  "cancel_path", "allow_http", "timeout", "connect_timeout", "max_attempts",
  "backoff_base", "backoff_max", "retry_after_max",
}

--- Load the config file (init_by_lua: once, in the master). It is Lua:
-- trusted code, like the nginx.conf that names it (keep it the deployer's,
-- 0600); loaded as source text only, never as bytecode.
function M.configure(path)
  local c = assert(loadfile(path, "t"))()
  assert(type(c) == "table", "offline_app: " .. path .. " must return a table")
  config = c
  local q = c.queue
  if q and q.deliverer == "agent" then
    -- the privileged agent delivers: needs OpenResty's patched nginx core
    local ok, err = require("ngx.process").enable_privileged_agent()
    assert(ok, "offline_app: queue.deliverer = \"agent\" but no privileged agent: " .. tostring(err)
      .. " (use a worker id, e.g. deliverer = 0, on a stock nginx)")
  end
end

-- Fail loudly: a critical line in the error log, then the error itself.
local function fatal(msg)
  ngx.log(ngx.CRIT, msg)
  error(msg, 0)
end

-- The client config, `X_env` keys read from this worker's environment.
-- Read here, not in init_by_lua: the master's environment is whole at the
-- first start but cleared on reload, so a missing `env` directive would
-- only show after the first `nginx -s reload` (as a queue sending with no
-- token, or to the default URL).
local NUMERIC = { timeout = true, connect_timeout = true, max_attempts = true, backoff_base = true,
  backoff_max = true, retry_after_max = true }

local function client_config()
  local cfg = {}
  for _, k in ipairs(CLIENT_KEYS) do
    local name = config[k .. "_env"]
    if config[k] == nil and name ~= nil then
      local v = os.getenv(name)
      if v == nil or v == "" then
        fatal("offline_app: config." .. k .. "_env names the environment variable " .. name
          .. ", which this nginx worker does not have: declare it with `env " .. name .. ";` in the main"
          .. " context of nginx.conf (nginx clears the environment of its workers otherwise) and set it"
          .. " where nginx starts")
      end
      cfg[k] = NUMERIC[k] and tonumber(v) or v
    else
      cfg[k] = config[k]
    end
  end
  return cfg
end

--- Create this worker's queue (init_worker_by_lua). Raises, after a
-- critical log line, on missing configuration.
function M.init_worker()
  assert(config, "offline_app: configure() was not called in init_by_lua")
  local client_cfg = client_config()
  local qopts = {}
  for k, v in pairs(config.queue or {}) do qopts[k] = v end
  -- every worker adds its metrics to the dict of nginx.conf (false: don't)
  if qopts.metrics_shm == nil and ngx.shared[METRICS_SHM] then qopts.metrics_shm = METRICS_SHM end
  if qopts.metrics_shm == false then qopts.metrics_shm = nil end
  qopts.on_failure = function(ref, err)
    ngx.log(ngx.ERR, "order ", ref, " was not delivered: ", tostring(err))
  end
  local q, err = offline_ngx.queue(client_cfg, qopts)
  if not q then
    ngx.log(ngx.ERR, "offline_app: cannot create the queue: ", tostring(err))
    return
  end
  M.queue = q
end

local function reply(status, doc, headers)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  ngx.say(cjson.encode(doc))
  return ngx.exit(ngx.HTTP_OK)
end

local function problem_list(err)
  local out = {}
  for i, p in ipairs(err.problems or {}) do out[i] = { path = p.path, message = p.message } end
  return out
end

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  local file = ngx.req.get_body_file()
  if not file then return nil end
  local f = io.open(file, "rb")
  if not f then return nil end
  body = f:read("*a")
  f:close()
  return body
end

--- POST /pos/orders: one payload or an array of them.
-- 400 with every order's problems (nothing queued) when any order is
-- invalid; 202 when all are queued; 503 with per-order results when the
-- queue refused some (resend those).
function M.pos_orders()
  if ngx.req.get_method() ~= "POST" then
    return reply(405, { error = "use POST with a JSON order or array of orders" }, { Allow = "POST" })
  end
  local q = M.queue
  if not q then return reply(503, { error = "the order queue is not available" }) end
  local body = read_body()
  if not body or body == "" then return reply(400, { error = "empty body: send a JSON order or array" }) end
  local doc, jerr = cjson.decode(body)
  if type(doc) ~= "table" then
    return reply(400, { error = "body is not a JSON object or array: " .. tostring(jerr or "") })
  end
  local list = doc
  if doc[1] == nil and next(doc) ~= nil then list = { doc } end
  if #list == 0 then return reply(400, { error = "no orders in the body" }) end
  if #list > MAX_UPLOAD then
    return reply(413, { error = "at most " .. MAX_UPLOAD .. " orders per request" })
  end
  -- validate everything first: an upload is queued whole or not at all, so
  -- the till can fix and resend it without duplicates
  local invalid = {}
  for i, payload in ipairs(list) do
    local ok, err = offline.validate(payload)
    if not ok then
      invalid[#invalid + 1] = { index = i - 1, error = err.message, problems = problem_list(err) }
    end
  end
  if #invalid > 0 then
    return reply(400, { error = "invalid orders, nothing was queued", invalid = invalid })
  end
  local results, refused = {}, 0
  for i, payload in ipairs(list) do
    local ok, err = q:push(payload)
    local ref = payload.order.refCode
    if ok then
      results[i] = { index = i - 1, refCode = ref, queued = true }
      if type(err) == "table" and #err > 0 then -- push's second value: the encoder's warnings
        local w = {}
        for j, x in ipairs(err) do w[j] = { path = x.path, message = x.message } end
        results[i].warnings = w
      end
    else
      refused = refused + 1
      results[i] = { index = i - 1, refCode = ref, queued = false, kind = err.kind, error = err.message }
    end
  end
  if refused > 0 then
    return reply(503, { queued = #list - refused, refused = refused, results = results },
      { ["Retry-After"] = "1" })
  end
  return reply(202, { queued = #list, results = results })
end

-- Warnings from the log hook, at most one line a second.
local hook_skipped, hook_warned = 0, 0

--- log_by_lua hook of /checkout: turn a successful checkout into an order.
-- Query args: order (refCode; default the request id), sku, qty, price,
-- currency (GBP), user.
function M.checkout_log()
  local q = M.queue
  if not q or ngx.status >= 400 then return end
  local args = ngx.req.get_uri_args(20)
  local qty = args.qty or "1"
  local price = args.price
  local total = args.total
  if total == nil and tonumber(price) and tonumber(qty) then total = tonumber(price) * tonumber(qty) end
  local payload = {
    order = {
      refCode = args.order or ngx.var.request_id,
      orderDate = ngx.utctime(),
      currency = args.currency or "GBP",
      total = total or price,
      items = { { refCode = args.sku, qty = tonumber(qty) or qty, price = price } },
    },
  }
  if args.user then payload.user = { id = args.user } end
  local ok, err = q:push(payload)
  if not ok then
    hook_skipped = hook_skipped + 1
    local t = ngx.now()
    if t - hook_warned >= 1 then
      ngx.log(ngx.WARN, "checkout order not queued (", hook_skipped, " since last report): ", tostring(err))
      hook_warned, hook_skipped = t, 0
    end
  end
end

--- GET /metrics: the Prometheus text of every worker's queue (the
-- metrics_shm dict: totals since nginx started, reloads included).
function M.metrics()
  local q = M.queue
  if q then q:publish_metrics() end -- this worker's latest numbers first
  local name = q and q.o.metrics_shm or METRICS_SHM
  local dict = ngx.shared[name]
  if not dict and not q then return reply(503, { error = "the order queue is not available" }) end
  ngx.header["Content-Type"] = metrics.CONTENT_TYPE
  ngx.print(metrics.prometheus(dict or q))
end

--- GET /queue/stats: this worker's counters (JSON).
function M.stats()
  if not M.queue then return reply(503, { error = "the order queue is not available" }) end
  local st = M.queue:stats()
  st.worker = ngx.worker.id()
  st.pid = ngx.worker.pid()
  return reply(200, st)
end

return M
