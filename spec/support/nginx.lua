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

-- The specs' wait helper (spec/support/wait.lua). This file is also loaded
-- inside nginx for its handlers, where spec/ is not on the path and nothing
-- here waits: hence the pcall.
local has_wait, wait = pcall(require, "support.wait")

--- Sleep (seconds).
function M.sleep(s)
  if has_wait then return wait.sleep(s) end
  run("sleep " .. s)
end

--- Poll `fn` until it returns a truthy value or `timeout` seconds (20) pass
-- (every `step` seconds, 0.1): support.wait's `poll`.
-- @return fn's value, or nil on timeout
function M.wait_until(fn, timeout, step)
  if not has_wait then error(wait, 2) end
  return wait.poll(fn, timeout, step or 0.1)
end

-- Local ports with a socket in any state (Linux /proc): a listener, or a
-- connection's own end, which a bind() would collide with too.
local function ports_in_use()
  local used = {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    for port in (read_file(f) or ""):gmatch("\n%s*%d+: %x+:(%x+) ") do used[tonumber(port, 16)] = true end
  end
  return used
end

-- The range free_port picks from: $OO_TEST_PORTS ("lo-hi"), which the test
-- runner gives each lane (scripts/test_lanes.lua), else 20000-32767. Either
-- is below the kernel's ephemeral range, so a port is never some client's
-- source port (nor connects to itself while nothing listens on it).
local function port_range()
  local lo, hi = (os.getenv("OO_TEST_PORTS") or ""):match("^(%d+)%-(%d+)$")
  lo, hi = tonumber(lo), tonumber(hi)
  if lo and hi and hi >= lo then return lo, hi end
  return 20000, 32767
end

local taken = {}

--- A loopback port no socket uses (and not handed out before here).
function M.free_port()
  local used = ports_in_use()
  local lo, hi = port_range()
  local f = io.open("/dev/urandom", "rb")
  local b = f and f:read(3) or ""
  if f then f:close() end
  local seed = #b == 3 and (b:byte(1) * 65536 + b:byte(2) * 256 + b:byte(3)) or os.time()
  local span = hi - lo + 1
  for i = 0, span - 1 do
    local p = lo + (seed + i * 7919) % span
    if not used[p] and not taken[p] then
      taken[p] = true
      return p
    end
  end
  error("no free port in " .. lo .. "-" .. hi)
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

--- Start nginx. @param o `{dir, write = function(port) -> conf path, health = path,
--   env = {NAME = value} (nginx's environment besides ours)}`
-- @return instance (raises when nginx does not come up)
function M.start(o)
  local self = setmetatable({ dir = o.dir, health = o.health or "/", env = o.env }, Inst)
  for attempt = 1, 5 do
    self.port = M.free_port()
    self.conf = o.write(self.port)
    local ok, err = pcall(self.start, self)
    if ok then return self end
    -- another process took the port between the check and the bind
    if attempt == 5 or not tostring(err):find("in use", 1, true) then error(err, 0) end
  end
end

--- Start the example app (examples/openresty) in a new temporary directory,
-- with this module's test handlers loaded as TEST (TEST.config = the
-- sandbox's client settings) and a watchdog on the test process.
-- @param o `{tag, info (the sandbox's), app (the app config), workers,
--   init (more init_worker Lua), locations (more location blocks)}`
-- @return instance (`:destroy()` stops it and removes its directory)
function M.start_example(o)
  local launch = dofile("examples/openresty/launch.lua")
  local info = o.info
  local dir = M.mktemp(o.tag or "nginx")
  local init = ("TEST = dofile(%q).handlers\n    TEST.config = { site = %q, token = %q, channel = %q,"
    .. " base_url = %q }\n    %s\n    %s"):format(launch.root() .. "/spec/support/nginx.lua", info.site, info.token,
    info.channel, info.base_url, M.watchdog_lua(require("support.sandbox").self_pid()), o.init or "")
  return M.start({ dir = dir, health = "/queue/stats", write = function(port)
    return launch.write({ dir = dir, port = port, app = o.app, ca_file = info.ca_file,
      vars = { workers = o.workers or 1, extra_init_worker = init, extra_locations = o.locations or "" } })
  end })
end

--- Stop (SIGQUIT) and remove the directory (kept with OO_KEEP set).
function Inst:destroy()
  self:quit()
  if not os.getenv("OO_KEEP") then M.run("rm -rf " .. M.q(self.dir)) end
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
  local closefds = [[for f in /proc/$$/fd/*; do f=${f##*/}; ]]
    .. [[case $f in 0|1|2) ;; *) eval "exec $f>&-" ;; esac; done; exec "$@"]]
  local env = ""
  for k, v in pairs(self.env or {}) do env = env .. k .. "=" .. q(v) .. " " end
  local ok = run(env .. "bash -c " .. q(closefds) .. " x nginx -p " .. q(self.dir) .. " -c " .. q(self.conf)
    .. " -e " .. q(log) .. " </dev/null >>" .. q(self.dir .. "/logs/nginx.out") .. " 2>&1")
  if not ok then
    error("nginx failed to start:\n" .. self:error_log() .. (read_file(self.dir .. "/logs/nginx.out") or ""))
  end
  local up = M.wait_until(function()
    return self:get(self.health, { timeout = 2 }).status == 200
  end, 15)
  if not up then
    local errors = self:error_log()
    self:quit(5) -- a master whose workers died must not linger
    error("nginx did not answer on " .. self:url(self.health) .. ":\n" .. errors)
  end
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

--- /test/transport?url=&n=&timeout=&connect_timeout=&method=&body=&body_size=
-- Raw transport requests; reports each outcome (a raise too, as kind
-- "raised") and its `elapsed` seconds. `body_size` sends that many bytes.
local function transport_results()
  local args = ngx.req.get_uri_args()
  local t = require("optimizely.offline.ngx").transport({
    timeout = tonumber(args.timeout), connect_timeout = tonumber(args.connect_timeout) })
  local body = args.body or (args.body_size and string.rep("b", tonumber(args.body_size)))
  local out = {}
  for i = 1, tonumber(args.n) or 1 do
    ngx.update_time()
    local t0 = ngx.now()
    local ok, status, rbody, info, code = pcall(t.request, t, args.method or "POST", args.url, auth_headers(), body)
    ngx.update_time()
    local elapsed = ngx.now() - t0
    if not ok then
      out[i] = { kind = "raised", message = tostring(status), elapsed = elapsed }
    elseif status then
      out[i] = { status = status, body = rbody, body_len = #rbody, reused = info.reused,
        content_type = info.content_type, retry_after = info.retry_after, http_version = info.http_version,
        elapsed = elapsed }
    else
      out[i] = { kind = rbody, message = info, code = code, elapsed = elapsed }
    end
  end
  return out
end

function H.transport()
  return reply(transport_results())
end

--- /test/pipeline?url=&n=&method=&body= : n requests pipelined on one
-- connection (transport:pipeline); each reply as /test/transport reports it.
function H.pipeline()
  local args = ngx.req.get_uri_args()
  local t = require("optimizely.offline.ngx").transport({ timeout = tonumber(args.timeout) })
  local jobs = {}
  for i = 1, tonumber(args.n) or 2 do
    jobs[i] = { method = args.method or "POST", url = args.url, headers = auth_headers(), body = args.body }
  end
  local out = {}
  for i, r in ipairs(t:pipeline(jobs, #jobs)) do
    local status, rbody, info = r[1], r[2], r[3]
    out[i] = status and { status = status, body = rbody, reused = info.reused }
      or { kind = rbody, message = info }
  end
  return reply(out)
end

--- /test/transport-raising-handshake?url= : the transport while sslhandshake
-- raises (as lua-resty-core's internal assertions do).
function H.transport_raising_handshake()
  local mt = debug.getregistry().__tcp_cosocket_mt
  local orig = mt.sslhandshake
  mt.sslhandshake = function() error("assertion failed!") end
  local ok, out = pcall(transport_results)
  mt.sslhandshake = orig
  if not ok then error(out, 0) end
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
    return reply({ raised = not ok, message = not ok and tostring(e) or nil, sent = ok and e.sent or nil })
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

--- /test/contract-queue?n=&conc=&max_attempts=&max_age=&timeout=&retry_after_max=&auth_pause=
-- `n` orders (refCodes contract-1..n) through a new nginx queue — the
-- scheduler's nginx driver, light threads over cosockets — with those
-- settings, flushed, then closed: each order's result fields (as
-- /test/contract reports them, plus `reason`: a dead letter's), and the
-- in-flight limit at the end.
local function contract_fields(res, err, reason)
  local r = res or err
  local w = res and res.warnings and res.warnings[1]
  return { ok = res ~= nil, kind = err and err.kind, status = r.status, code = err and err.code,
    retryable = err and err.retryable, stop = err and err.stop, attempts = r.attempts,
    message = err and err.message, warning_code = w and w.code, reason = reason }
end

function H.contract_queue()
  local args = ngx.req.get_uri_args()
  local cfg = {}
  for k, v in pairs(H.config) do cfg[k] = v end
  cfg.backoff_base, cfg.backoff_max = 0.01, 0.05
  cfg.retry_after_max, cfg.timeout = tonumber(args.retry_after_max), tonumber(args.timeout)
  local got, reasons = {}, {}
  local queue = assert(require("optimizely.offline.ngx").queue(cfg, { concurrency = tonumber(args.conc),
    max_attempts = tonumber(args.max_attempts), max_age = tonumber(args.max_age),
    auth_pause = tonumber(args.auth_pause), flush_interval = 0.05,
    on_success = function(ref, res) got[ref] = { res } end,
    on_failure = function(ref, err) got[ref] = { nil, err } end,
    on_event = function(ev) if ev.type == "dead" and ev.ref then reasons[ev.ref] = ev.reason end end }))
  local n = tonumber(args.n) or 1
  for i = 1, n do
    assert(queue:push({ user = { id = "u-contract" }, order = { refCode = "contract-" .. i,
      orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP", total = "12.50",
      items = { { refCode = "sku-1", qty = 1, price = "12.50" } } } }))
  end
  local flushed, ferr = queue:flush(30)
  local limit = queue:stats().limit
  queue:close(1)
  local out = {}
  for i = 1, n do
    local ref = "contract-" .. i
    local g = got[ref] or {}
    out[i] = (g[1] or g[2]) and contract_fields(g[1], g[2], reasons[ref]) or { kind = "no result" }
  end
  return reply({ got = out, limit = limit, flushed = flushed == true, flush_error = ferr and tostring(ferr) })
end

--- /test/push?n=&prefix= : push n orders to TEST_QUEUE without yielding in between.
function H.push()
  local args = ngx.req.get_uri_args()
  local queue = H.queues[args.queue or "full"]
  local out = {}
  for i = 1, tonumber(args.n) or 1 do
    local ok, err = queue:push({
      order = { refCode = (args.prefix or "P") .. "-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
        currency = "GBP", total = 5, items = { { refCode = "sku-1", qty = 1, price = 5 } } },
    })
    out[i] = ok and { ok = true }
      or { ok = false, kind = err.kind, message = err.message, bound = err.bound, option = err.option }
  end
  return reply({ results = out, stats = queue:stats() })
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
  local queue = H.queues.closing
  local args = ngx.req.get_uri_args()
  local pushed = {}
  for i = 1, 2 do
    pushed[i] = queue:push({ order = { refCode = args.prefix .. "-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
      currency = "GBP", total = 5, items = { { refCode = "sku-1", qty = 1, price = 5 } } } }) == true
  end
  local ok, err = queue:close(10)
  local again, aerr = queue:push({ order = { refCode = args.prefix .. "-3" } })
  return reply({ pushed = pushed, closed = ok == true, close_err = err and err_doc(err),
    again = again == true, again_kind = aerr and aerr.kind, stats = queue:stats() })
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
    engine = try(base, { engine = "thread" }),
  })
end

H.queues = {}

---------------------------------------------------------------------------
-- A hostile endpoint (run inside nginx): each handler answers on the raw
-- request socket with bytes no honest server sends. Streams are capped
-- (`STREAM_CAP`) and then hang, so an unbounded reader shows as a timeout,
-- not as gigabytes of memory on a shared machine.

local HOSTILE = {}
H.hostile = HOSTILE

local STREAM_CAP = 4 * 1024 * 1024
local OK_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"

local function raw()
  ngx.req.read_body()
  local sock = assert(ngx.req.socket(true))
  sock:settimeout(5000)
  return sock
end

-- Wait (up to `seconds`) for the client to close, then end the handler.
local function hang(sock, seconds)
  sock:settimeout(250)
  for _ = 1, (seconds or 30) * 4 do
    local _, err = sock:receive(1)
    if err and err ~= "timeout" then return end
  end
end

-- `head`, then `filler` repeated up to STREAM_CAP bytes, then hang.
local function stream(head, filler)
  local sock = raw()
  if not sock:send(head) then return end
  local piece = string.rep(filler, math.ceil(16384 / #filler))
  local sent = 0
  while sent < STREAM_CAP do
    if not sock:send(piece) then return end
    sent = sent + #piece
  end
  return hang(sock)
end

-- `head`, then one byte of `trickle` every `every` seconds.
local function trickle(head, bytes, every)
  local sock = raw()
  if not sock:send(head) then return end
  for i = 1, #bytes do
    ngx.sleep(every)
    if not sock:send(bytes:sub(i, i)) then return end
  end
  return hang(sock)
end

function HOSTILE.status_line() return stream("HTTP/1.1 200 OK", "a") end
function HOSTILE.header_line() return stream(OK_HEAD .. "X-Long: ", "a") end
function HOSTILE.headers() return stream(OK_HEAD, "X-Many: a\r\n") end
function HOSTILE.many_headers()
  local sock = raw()
  sock:send(OK_HEAD .. string.rep("X-Many: a\r\n", 300) .. "Content-Length: 2\r\n\r\n{}")
  return hang(sock, 5)
end
function HOSTILE.chunk_size() return stream(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n", "1") end
function HOSTILE.chunk_end()
  return stream(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n2\r\n{}", "x")
end
function HOSTILE.trailer_line()
  return stream(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ", "a")
end
function HOSTILE.trailers()
  return stream(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n", "X-T: a\r\n")
end
-- 2 MiB bodies in every framing
function HOSTILE.body_chunked()
  return stream(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n", "4000\r\n" .. string.rep("x", 16384) .. "\r\n")
end
function HOSTILE.body_length()
  return stream(OK_HEAD .. "Content-Length: " .. 2 * 1024 * 1024 .. "\r\n\r\n", "x")
end
function HOSTILE.body_close() return stream(OK_HEAD .. "Connection: close\r\n\r\n", "x") end
-- slow servers: every byte in time for a per-read timeout, never for the deadline
function HOSTILE.trickle_head() return trickle("HTTP/1.1 200 OK\r\n", string.rep("X-Slow: a\r\n", 4), 0.4) end
function HOSTILE.trickle_body()
  return trickle(OK_HEAD .. "Content-Length: 40\r\n\r\n", string.rep("x", 40), 0.4)
end
function HOSTILE.trickle_chunked()
  return trickle(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n", string.rep("1\r\nx\r\n", 8), 0.4)
end
-- A server that does not frame its answers: a 503, then, once the next
-- request on the same connection has come in, a stray `200 OK` before that
-- request's own 503. A client that reuses the connection after the 503
-- reads the stray 200 as the answer to its next order.
local UNAVAILABLE = '{"status":"fail","errors":[{"code":"Unavailable","message":"try later"}]}'
local ANSWER_503 = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
  .. #UNAVAILABLE .. "\r\n\r\n" .. UNAVAILABLE
local STRAY_200 = OK_HEAD .. 'Content-Length: 15\r\n\r\n{"status":"OK"}'

-- The next request on a raw socket (head and declared body), or nil.
local function next_request(sock)
  local head = sock:receiveuntil("\r\n\r\n")
  local h = head()
  if not h then return nil end
  local n = tonumber(h:lower():match("content%-length:%s*(%d+)")) or 0
  if n > 0 and not sock:receive(n) then return nil end
  return h
end

function HOSTILE.stray_after_503()
  local sock = raw()
  if not sock:send(ANSWER_503) then return end
  for _ = 1, 3 do
    if not next_request(sock) then return end
    if not sock:send(STRAY_200 .. ANSWER_503) then return end
  end
  return hang(sock, 5)
end

-- A 200 followed, in the same write, by bytes beyond its declared body.
function HOSTILE.extra_after_200()
  local sock = raw()
  if not sock:send(STRAY_200 .. STRAY_200) then return end
  for _ = 1, 3 do
    if not next_request(sock) then return end
    if not sock:send(ANSWER_503) then return end
  end
  return hang(sock, 5)
end

-- an honest answer over the raw socket, for comparison
function HOSTILE.fine()
  local sock = raw()
  sock:send(OK_HEAD .. "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n1}\n\r\n0\r\nX-T: 1\r\n\r\n")
  return hang(sock, 5)
end

return M
