--- Test-suite helper: run a Debian nginx (+ ngx_http_lua_module) with a given
-- configuration on a free 127.0.0.1 port, and the Lua handlers of the test
-- locations that nginx_spec adds to the example config.
--
--   local nginx = require("support.nginx")
--   local inst = nginx.start{ dir = tmp, write = function(port) return conf_path end,
--                             health = "/queue/stats" }
--   inst:get("/queue/stats")  -- {status, body, headers}
--   inst:quit()               -- graceful stop (SIGQUIT), waits for every process
--   inst:start()              -- again, same port and conf
--
-- Plain Lua for busted (5.4 / LuaJIT); `M.handlers` run inside nginx.
-- @module support.nginx
local M = {}

local sys = require("optimizely.offline.sys")
local q, read_file, run, capture = sys.q, sys.read_file, sys.run, sys.capture

M.capture, M.run, M.q, M.read_file = capture, run, q, read_file

--- Sleep (seconds) without a C module.
function M.sleep(s) run("sleep " .. s) end

--- Poll `fn` until it returns a truthy value or `timeout` seconds pass.
-- @return fn's value, or nil on timeout
function M.wait_until(fn, timeout, step)
  local deadline = os.time() + (timeout or 20)
  step = step or 0.1
  repeat
    local v = fn()
    if v then return v end
    M.sleep(step)
  until os.time() > deadline
  return fn()
end

-- Ports in LISTEN state (Linux /proc).
local function listening()
  local used = {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    for port, state in (read_file(f) or ""):gmatch("%x+:(%x+) %x+:%x+ (%x%x)") do
      if state == "0A" then used[tonumber(port, 16)] = true end
    end
  end
  return used
end

local taken = {}

--- A loopback port nothing listens on (and not handed out before here).
function M.free_port()
  local used = listening()
  local f = io.open("/dev/urandom", "rb")
  local b = f and f:read(3) or ""
  if f then f:close() end
  local seed = #b == 3 and (b:byte(1) * 65536 + b:byte(2) * 256 + b:byte(3)) or os.time()
  for i = 0, 500 do
    local p = 20000 + (seed + i * 7919) % 40000
    if not used[p] and not taken[p] then
      taken[p] = true
      return p
    end
  end
  error("no free port")
end

--- A fresh temp directory.
function M.mktemp(tag)
  return (capture("mktemp -d /tmp/oo-" .. tag .. ".XXXXXX"):gsub("%s+$", ""))
end

local function alive(pid)
  local st = read_file("/proc/" .. pid .. "/stat")
  if st then return not st:match("^%d+ %b() Z") end
  return false
end

-- pids of the master's children (the workers).
local function children(pid)
  local out = {}
  for c in capture("cat /proc/" .. pid .. "/task/*/children 2>/dev/null"):gmatch("%d+") do
    out[#out + 1] = tonumber(c)
  end
  return out
end

--- Lua code (for init_worker) that stops nginx once process `owner` is gone,
-- so a crashed test run leaves no nginx behind.
function M.watchdog_lua(owner)
  return ([[
    if ngx.worker.id() == 0 then
      local ffi = require("ffi")
      pcall(ffi.cdef, "int kill(int pid, int sig); int getppid(void);")
      ngx.timer.every(1, function(premature)
        if premature then return end
        if ffi.C.kill(%d, 0) ~= 0 and ffi.errno() == 3 then
          -- an orphaned worker (master killed) must not signal init: quit itself
          local master = ffi.C.getppid()
          ffi.C.kill(master > 1 and master or ngx.worker.pid(), 3)
        end
      end)
    end]]):format(owner)
end

local Inst = {}
Inst.__index = Inst

--- Start nginx. @param o `{dir, write = function(port) -> conf path, health = path}`
-- @return instance (raises when nginx does not come up)
function M.start(o)
  local self = setmetatable({ dir = o.dir, health = o.health or "/" }, Inst)
  for attempt = 1, 5 do
    self.port = M.free_port()
    self.conf = o.write(self.port)
    local ok, err = pcall(self.start, self)
    if ok then return self end
    -- another process took the port between the check and the bind
    if attempt == 5 or not tostring(err):find("in use", 1, true) then error(err, 0) end
  end
end

function Inst:url(path) return "http://127.0.0.1:" .. self.port .. path end

function Inst:pid()
  return tonumber((read_file(self.dir .. "/nginx.pid") or ""):match("%d+"))
end

function Inst:error_log()
  return read_file(self.dir .. "/logs/error.log") or ""
end

--- (Re)start with the same port and configuration.
function Inst:start()
  local log = self.dir .. "/logs/error.log"
  os.remove(self.dir .. "/logs/nginx.out")
  -- no inherited descriptors: nginx must not hold busted's pipes
  local closefds = [[for f in /proc/$$/fd/*; do f=${f##*/}; case $f in 0|1|2) ;; *) eval "exec $f>&-" ;; esac; done; exec "$@"]]
  local ok = run("bash -c " .. q(closefds) .. " x nginx -p " .. q(self.dir) .. " -c " .. q(self.conf)
    .. " -e " .. q(log) .. " </dev/null >>" .. q(self.dir .. "/logs/nginx.out") .. " 2>&1")
  if not ok then error("nginx failed to start:\n" .. self:error_log() .. (read_file(self.dir .. "/logs/nginx.out") or "")) end
  local up = M.wait_until(function()
    return self:get(self.health, { timeout = 2 }).status == 200
  end, 15)
  if not up then error("nginx did not answer on " .. self:url(self.health) .. ":\n" .. self:error_log()) end
  return self
end

-- Wait until the master and its workers are gone.
function Inst:wait_gone(pids, timeout)
  return M.wait_until(function()
    for _, p in ipairs(pids) do if alive(p) then return false end end
    return true
  end, timeout or 20, 0.05)
end

--- Graceful stop (SIGQUIT: workers finish, timers run prematurely).
function Inst:quit(timeout)
  local pid = self:pid()
  if not pid or not alive(pid) then return true end
  local pids = children(pid)
  pids[#pids + 1] = pid
  run("kill -QUIT " .. pid)
  if not self:wait_gone(pids, timeout) then
    run("kill -KILL " .. table.concat(pids, " ") .. " 2>/dev/null")
    return false
  end
  return true
end

--- Crash: SIGKILL the master and every worker at once.
function Inst:kill9()
  local pid = self:pid()
  if not pid then return end
  local workers = children(pid)
  -- the master first: a master that sees a worker die respawns it
  run("kill -KILL " .. pid)
  self:wait_gone({ pid }, 10)
  if #workers > 0 then run("kill -KILL " .. table.concat(workers, " ") .. " 2>/dev/null") end
  workers[#workers + 1] = pid
  self:wait_gone(workers, 10)
  os.remove(self.dir .. "/nginx.pid")
end

--- HTTP request with the curl CLI. @param r `{method, body, timeout, headers}`
-- @return `{status, body}`
function Inst:request(path, r)
  r = r or {}
  local base = os.tmpname()
  local args = { "timeout -k 1", tostring((r.timeout or 30) + 5), "curl -sS -o", q(base .. ".body"),
    "-w '%{http_code}'", "--max-time", tostring(r.timeout or 30), "-X", r.method or "GET" }
  for k, v in pairs(r.headers or {}) do args[#args + 1] = "-H " .. q(k .. ": " .. v) end
  if r.body then
    local f = assert(io.open(base .. ".in", "wb"))
    f:write(r.body)
    f:close()
    args[#args + 1] = "-H 'Content-Type: application/json' --data-binary @" .. q(base .. ".in")
  end
  args[#args + 1] = q(self:url(path))
  local out = capture(table.concat(args, " ") .. " 2>/dev/null")
  local res = { status = tonumber(out:match("(%d+)%s*$")) or 0, body = read_file(base .. ".body") or "" }
  os.remove(base)
  os.remove(base .. ".body")
  os.remove(base .. ".in")
  return res
end

function Inst:get(path, r) return self:request(path, r) end

---------------------------------------------------------------------------
-- Handlers of the test locations (run inside nginx, LuaJIT)

local H = {}
M.handlers = H

local function reply(doc)
  local cjson = require("cjson.safe")
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(doc))
  return ngx.exit(200)
end

local function err_doc(err)
  if type(err) ~= "table" then return { kind = "raised", message = tostring(err) } end
  return { kind = err.kind, message = err.message, status = err.status, attempts = err.attempts,
    text = tostring(err) }
end

--- Test settings, set from init_worker: {site, token, channel, base_url, ...}.
H.config = {}

local function auth_headers()
  local c = H.config
  return { "site: " .. c.site, "siteToken: " .. c.token, "channel: " .. c.channel,
    "Content-Type: application/json", "Accept: application/json" }
end

--- /test/transport?url=&n=&timeout=&connect_timeout=&method=&body=
-- Raw transport requests; reports each outcome.
function H.transport()
  local args = ngx.req.get_uri_args()
  local t = require("optimizely.offline.ngx").transport({
    timeout = tonumber(args.timeout), connect_timeout = tonumber(args.connect_timeout) })
  local out = {}
  for i = 1, tonumber(args.n) or 1 do
    local status, body, info, code = t:request(args.method or "POST", args.url, auth_headers(), args.body)
    if status then
      out[i] = { status = status, body = body, body_len = #body, reused = info.reused,
        content_type = info.content_type, retry_after = info.retry_after, http_version = info.http_version }
    else
      out[i] = { kind = body, message = info, code = code }
    end
  end
  return reply(out)
end

--- /test/client?op=send|send_encoded|cancel|invalid&ref=&max_attempts=
-- The unchanged client over cosockets.
function H.client()
  local args = ngx.req.get_uri_args()
  local cfg = {}
  for k, v in pairs(H.config) do cfg[k] = v end
  cfg.max_attempts = tonumber(args.max_attempts) or 1
  cfg.backoff_base = 0.05
  local c = require("optimizely.offline.ngx").client(cfg)
  local payload = {
    user = { id = "u-ngx" },
    order = { refCode = args.ref or "X", orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP",
      total = "12.50", items = { { refCode = "sku-1", qty = 1, price = "12.50" } } },
  }
  local res, err
  if args.op == "cancel" then
    res, err = c:cancel(args.ref)
  elseif args.op == "send_encoded" then
    res, err = c:send_encoded((require("optimizely.offline").encode(payload)))
  elseif args.op == "invalid" then
    payload.order.currency = "pounds"
    res, err = c:send(payload)
  elseif args.op == "batch" then
    local ok, e = pcall(c.send_batch, c, { payload })
    return reply({ raised = not ok, message = tostring(e) })
  else
    res, err = c:send(payload)
  end
  if res then
    return reply({ ok = true, status = res.status, attempts = res.attempts, reused = res.info and res.info.reused })
  end
  return reply({ ok = false, err = err_doc(err), problems = err.problems })
end

--- /test/contract?max_attempts=&timeout=&retry_after_max= : one order
-- through the client over cosockets (the nginx path of the transport
-- contract spec); reports the result record's fields.
function H.contract()
  local args = ngx.req.get_uri_args()
  local cfg = {}
  for k, v in pairs(H.config) do cfg[k] = v end
  cfg.max_attempts = tonumber(args.max_attempts) or 3
  cfg.backoff_base, cfg.backoff_max = 0.01, 0.05
  cfg.retry_after_max = tonumber(args.retry_after_max) or 2
  cfg.timeout = tonumber(args.timeout) or 1
  local c = require("optimizely.offline.ngx").client(cfg)
  local payload = {
    user = { id = "u-contract" },
    order = { refCode = args.ref or "C", orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP",
      total = "12.50", items = { { refCode = "sku-1", qty = 1, price = "12.50" } } },
  }
  local res, err = c:send(payload)
  local r = res or err
  local w = res and res.warnings and res.warnings[1]
  return reply({ ok = res ~= nil, kind = err and err.kind, status = r.status, code = err and err.code,
    retryable = err and err.retryable, stop = err and err.stop, attempts = r.attempts,
    message = err and err.message, warning_code = w and w.code })
end

--- /test/push?n=&prefix= : push n orders to TEST_QUEUE without yielding in between.
function H.push()
  local args = ngx.req.get_uri_args()
  local q = H.queues[args.queue or "full"]
  local out = {}
  for i = 1, tonumber(args.n) or 1 do
    local ok, err = q:push({
      order = { refCode = (args.prefix or "P") .. "-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
        currency = "GBP", total = 5, items = { { refCode = "sku-1", qty = 1, price = 5 } } },
    })
    out[i] = ok and { ok = true }
      or { ok = false, kind = err.kind, message = err.message, bound = err.bound, option = err.option }
  end
  return reply({ results = out, stats = q:stats() })
end

--- /test/flush?timeout= : the app queue's flush from a content handler.
function H.flush()
  local args = ngx.req.get_uri_args()
  local ok, err = require("offline_app").queue:flush(tonumber(args.timeout) or 10)
  return reply({ ok = ok == true, err = err and err_doc(err) })
end

--- log phase: what the transport and flush do there (stored for /test/logphase-result).
function H.logphase()
  local t = require("optimizely.offline.ngx").transport()
  local ok1, e1 = pcall(t.request, t, "POST", H.config.base_url, {}, "x")
  local ok2, e2 = pcall(function() return require("offline_app").queue:flush(1) end)
  H.logphase_result = { request_raised = not ok1, request_error = tostring(e1),
    flush_raised = not ok2, flush_error = tostring(e2) }
end

function H.logphase_result_handler()
  return reply(H.logphase_result or {})
end

--- /test/close: push two orders to the "closing" queue, close it, push again.
function H.close()
  local q = H.queues.closing
  local args = ngx.req.get_uri_args()
  local pushed = {}
  for i = 1, 2 do
    pushed[i] = q:push({ order = { refCode = args.prefix .. "-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
      currency = "GBP", total = 5, items = { { refCode = "sku-1", qty = 1, price = 5 } } } }) == true
  end
  local ok, err = q:close(10)
  local again, aerr = q:push({ order = { refCode = args.prefix .. "-3" } })
  return reply({ pushed = pushed, closed = ok == true, close_err = err and err_doc(err),
    again = again == true, again_kind = aerr and aerr.kind, stats = q:stats() })
end

--- /test/badopts: what queue() says about bad arguments (it must raise, naming the field).
function H.badopts()
  local ngxo = require("optimizely.offline.ngx")
  local base = H.config
  local function try(cfg, opts)
    local ok, e = pcall(ngxo.queue, cfg, opts)
    return ok and "no error" or tostring(e)
  end
  local function with(extra)
    local c = {}
    for k, v in pairs(base) do c[k] = v end
    for k, v in pairs(extra) do c[k] = v end
    return c
  end
  return reply({
    unknown = try(base, { max_qeue = 5 }),
    concurrency = try(base, { concurrency = 0 }),
    ca_file = try(with({ ca_file = "/etc/ssl/certs/ca-certificates.crt" }), {}),
    channel = try(with({ channel = "web", token = "tok-S3CRET-42" }), {}),
    callback = try(base, { on_failure = "log" }),
    shm = try(base, { shm = "no_such_dict" }),
    shm_spool = try(base, { shm = "optimizely_offline", spool = "/tmp/x.db" }),
    deliverer = try(base, { shm = "optimizely_offline", deliverer = 99 }),
    poll = try(base, { poll_interval = 0.1 }),
  })
end

H.queues = {}

return M
