--- Test-suite access to the sandbox (the local nginx stand-in of the endpoint).
--
--   local sb = require("support.sandbox")
--   local info = sb.ensure()          -- {base_url, ca_file, site, token, channel, dir, pid, ...}
--   sb.reset()                        -- clear records, faults, stats, last request
--   sb.faults({count = 2, status = 503, retry_after = "1"})   -- queue fault rules
--   local recs = sb.orders({refCode = "A1"})                  -- decoded NDJSON records
--
-- `ensure` starts one sandbox per test process (in $TMPDIR/oo-sandbox-run-<pid>, on a
-- free port) and reuses it from every spec file; nginx quits by itself and removes that
-- dir once the test process is gone. With `OO_SANDBOX_INFO=path/to/sandbox.info` an
-- already running sandbox is used instead (e.g. one started by
-- `optimizely-offline sandbox start`). All HTTP goes through the `curl` CLI with
-- `--cacert`, i.e. real TLS on loopback.
local sandbox = require("optimizely.offline.sandbox")

local json
do
  local ok, cjson = pcall(require, "cjson.safe")
  if ok then
    json = { decode = cjson.decode, encode = cjson.encode, null = cjson.null }
  else
    local dk = require("dkjson")
    json = { decode = function(s) return (dk.decode(s)) end, encode = dk.encode, null = dk.null }
  end
end

local M = { json = json }

local sys = require("optimizely.offline.sys")
local q, read_file = sys.q, sys.read_file

--- pid of this Lua process (the test runner).
function M.self_pid()
  local st = read_file("/proc/self/stat")
  local pid = st and tonumber(st:match("^(%d+)"))
  if pid then return pid end
  local p = io.popen("echo $PPID") -- the shell's parent is us
  pid = tonumber(p:read("*a"):match("%d+"))
  p:close()
  return pid
end

----------------------------------------------------------------------------
-- client: curl against one sandbox

local Client = {}
Client.__index = Client

--- An offline.client config for the sandbox described by `info`: its site,
-- token, channel, URL and CA, 5 s / 2 s timeouts, then `defaults`, then
-- `extra` (false drops an entry).
function M.client_config(info, defaults, extra)
  local c = {
    site = info.site, token = info.token, channel = info.channel,
    base_url = info.base_url, ca_file = info.ca_file,
    timeout = 5, connect_timeout = 2,
  }
  for _, over in ipairs({ defaults or {}, extra or {} }) do
    for k, v in pairs(over) do
      if v == false then c[k] = nil else c[k] = v end
    end
  end
  return c
end

--- A client for the sandbox described by `info`.
function M.client(info)
  return setmetatable({ info = info }, Client)
end

--- Headers that pass the sandbox's checks (override or drop entries with `false`).
function Client:auth_headers(over)
  local h = {
    site = self.info.site,
    siteToken = self.info.token,
    channel = self.info.channel,
    ["Content-Type"] = "application/json",
  }
  for k, v in pairs(over or {}) do
    if v == false then h[k] = nil else h[k] = v end
  end
  return h
end

local function parse_headers(raw)
  local h = {}
  -- with redirects/100-continue several blocks may be present: keep the last
  for block in (raw or ""):gmatch("HTTP/[^\r\n]*\r?\n(.-)\r?\n\r?\n") do
    h = {}
    for name, value in block:gmatch("([^:\r\n]+):[ \t]*([^\r\n]*)") do
      h[name:lower()] = value
    end
  end
  return h
end

--- One HTTP request with the curl CLI.
-- @param r table: `method` (GET), `path` ("/..."), `url` (instead of path), `headers`
--   (map; a `false` value means "do not send", curl drops even its own default), `body`
--   (string), `http` ("1.1" or "2"), `cacert` (false = no --cacert), `timeout` (s, 30),
--   `extra` (raw extra curl arguments, already quoted)
-- @return table `{status, body, headers (lower-case names), curl_code, curl_error, time, http_version}`;
--   `curl_code` 124 means the `timeout` backstop killed a hung curl
function Client:request(r)
  local base = os.tmpname()
  local bodyf, hdrf, errf, inf = base .. ".body", base .. ".hdr", base .. ".err", base .. ".in"
  local max = r.timeout or 30
  -- `timeout` backstop: curl has been seen hanging in libc before its own timer runs
  local args = { "timeout", "-k", "2", tostring(max + 10), "curl", "-sS", "--max-time", tostring(max),
    "-X", r.method or "GET", "-o", q(bodyf), "-D", q(hdrf),
    "-w", q("%{http_code} %{time_total} %{http_version}") }
  if r.cacert ~= false then args[#args + 1] = "--cacert " .. q(self.info.ca_file) end
  if r.http == "1.1" then args[#args + 1] = "--http1.1" elseif r.http == "2" then args[#args + 1] = "--http2" end
  for k, v in pairs(r.headers or {}) do
    if v == false then
      args[#args + 1] = "-H " .. q(k .. ":")
    else
      args[#args + 1] = "-H " .. q(k .. ": " .. v)
    end
  end
  if r.body then
    local f = assert(io.open(inf, "wb"))
    f:write(r.body)
    f:close()
    args[#args + 1] = "--data-binary @" .. q(inf)
  end
  if r.extra then args[#args + 1] = r.extra end
  args[#args + 1] = q(r.url or (self.info.base_url .. (r.path or "/")))
  local p = io.popen(table.concat(args, " ") .. " 2>" .. q(errf) .. "; echo \" $?\"")
  local outp = p:read("*a")
  p:close()
  local code, total, ver, rc = outp:match("^(%d+) ([%d%.]+) (%S+)%s+(%d+)%s*$")
  if not code then rc = outp:match("(%d+)%s*$") end
  local res = {
    status = tonumber(code) or 0,
    time = tonumber(total) or 0,
    http_version = ver,
    curl_code = tonumber(rc) or -1,
    body = read_file(bodyf) or "",
    headers = parse_headers(read_file(hdrf)),
    curl_error = (read_file(errf) or ""):gsub("%s+$", ""),
  }
  for _, f in ipairs({ base, bodyf, hdrf, errf, inf }) do os.remove(f) end
  return res
end

--- Decoded JSON body of a response (nil if not JSON).
function M.decode(s)
  local v = json.decode(s)
  return v
end

--- POST an order body (string) with valid headers, optionally overridden.
function Client:post_order(body, header_over, extra)
  local r = { method = "POST", path = "/tracker/smart-api/orders/offline",
    headers = self:auth_headers(header_over), body = body }
  for k, v in pairs(extra or {}) do r[k] = v end
  return self:request(r)
end

--- DELETE (cancel) an order; `tracker` true uses the /tracker/... path.
function Client:cancel(ref_encoded, tracker, header_over)
  local prefix = tracker and "/tracker/smart-api/orders/offline/" or "/smart-api/orders/offline/"
  return self:request({ method = "DELETE", path = prefix .. ref_encoded,
    headers = self:auth_headers(header_over) })
end

local function ok_or_error(res, what)
  if res.status ~= 200 then
    error(what .. " failed: HTTP " .. res.status .. " curl " .. res.curl_code .. " "
      .. res.curl_error .. " " .. res.body, 3)
  end
  return res
end

--- Queue fault rules (each a table); no argument returns the current queue.
function Client:faults(...)
  local n = select("#", ...)
  if n == 0 then
    return json.decode(ok_or_error(self:request({ path = "/_sandbox/faults" }), "GET faults").body)
  end
  for i = 1, n do
    local rule = select(i, ...)
    ok_or_error(self:request({ method = "POST", path = "/_sandbox/faults", body = json.encode(rule) }),
      "POST faults")
  end
  return true
end

function Client:clear_faults()
  ok_or_error(self:request({ method = "DELETE", path = "/_sandbox/faults" }), "DELETE faults")
  return true
end

local function query(filter)
  local parts = {}
  for k, v in pairs(filter or {}) do
    parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-%._~]", function(c)
      return string.format("%%%02X", c:byte())
    end)
  end
  table.sort(parts)
  return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end

local function ndjson(self, path, filter)
  local res = ok_or_error(self:request({ path = path .. query(filter) }), "GET " .. path)
  local out = {}
  for line in res.body:gmatch("[^\n]+") do out[#out + 1] = json.decode(line) end
  return out, tonumber(res.headers["x-sandbox-total"])
end

--- Recorded orders (decoded), optionally filtered `{refCode=, since=}`; 2nd value: total count.
function Client:orders(filter) return ndjson(self, "/_sandbox/orders", filter) end

--- Recorded cancellations (decoded), same filters.
function Client:cancellations(filter) return ndjson(self, "/_sandbox/cancellations", filter) end

--- Clear records, faults, stats and the last request.
function Client:reset()
  ok_or_error(self:request({ method = "POST", path = "/_sandbox/reset" }), "reset")
  return true
end

function Client:stats()
  return json.decode(ok_or_error(self:request({ path = "/_sandbox/stats" }), "stats").body)
end

function Client:last()
  return json.decode(ok_or_error(self:request({ path = "/_sandbox/last" }), "last").body)
end

--- The running settings `{delay_ms, max_concurrent, retry_after}`; with a
-- table, change those it names first (all or nothing; raises on a bad value).
function Client:settings(t)
  local res = self:request({ method = t and "POST" or "GET", path = "/_sandbox/settings",
    body = t and json.encode(t) })
  return json.decode(ok_or_error(res, "settings").body)
end

----------------------------------------------------------------------------
-- the shared sandbox of this test process

local shared_info

--- The directory of this process's shared sandbox.
function M.run_dir()
  local tmp = os.getenv("TMPDIR")
  if not tmp or tmp == "" then tmp = "/tmp" end
  return tmp .. "/oo-sandbox-run-" .. M.self_pid()
end

--- Start (once per test process) or find the shared sandbox. @return info
function M.ensure()
  if shared_info then return shared_info end
  local path = os.getenv("OO_SANDBOX_INFO")
  if path and path ~= "" then
    shared_info = assert(sandbox.read_info(path))
    return shared_info
  end
  local dir = M.run_dir()
  local info = sandbox.status({ dir = dir })
  if not info then
    os.execute("rm -rf " .. q(dir)) -- leftovers of an earlier process with this pid
    local err
    info, err = sandbox.start({ dir = dir, port = 0, owner_pid = M.self_pid(), cleanup_dir = true,
      tokens = { callcentre = "sandbox-cc-token" } }) -- as scripts/sandbox.sh starts it
    assert(info, err)
  end
  shared_info = info
  return info
end

--- Stop the shared sandbox now (normally it goes away with the test process).
function M.stop()
  if os.getenv("OO_SANDBOX_INFO") then return true end
  local dir = M.run_dir()
  local ok, err = sandbox.stop({ dir = dir })
  if ok then os.execute("rm -rf " .. q(dir)) end
  shared_info = nil
  return ok, err
end

-- module-level shortcuts on the shared sandbox
for _, name in ipairs({ "request", "post_order", "cancel", "faults", "clear_faults", "orders",
  "cancellations", "reset", "stats", "last", "auth_headers", "settings" }) do
  M[name] = function(...)
    local c = M.client(M.ensure())
    return c[name](c, ...)
  end
end

--- refCode -> how many times the shared sandbox recorded it; and the total.
function M.recorded()
  local counts, n = {}, 0
  for _, rec in ipairs(M.orders()) do
    counts[rec.refCode] = (counts[rec.refCode] or 0) + 1
    n = n + 1
  end
  return counts, n
end

return M
