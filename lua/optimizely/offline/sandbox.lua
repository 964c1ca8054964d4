--- Launcher of the sandbox: a local stand-in of the offline-orders endpoint,
-- served by a real nginx + ngx_http_lua_module on 127.0.0.1 over TLS.
-- Plain Lua (5.1/LuaJIT and 5.4); it drives the `nginx`, `openssl` and `curl`
-- command-line tools. Everything lives in one directory: certs/ (CA + server
-- cert, made once and reused), conf/, logs/, tmp/, nginx.pid, sandbox.info,
-- orders.ndjson and cancellations.ndjson. Endpoint behaviour is described in
-- `optimizely.offline.sandbox.handler`; the user guide is doc/topics/sandbox.md.
--
-- Files holding orders or tokens (the records, sandbox.info, conf/config.lua)
-- are 0600 whatever the umask: created so here, and the nginx workers that
-- write the records run with umask 077.
-- @module optimizely.offline.sandbox
local M = {}

--- Default options; `token` is a fixed, non-secret sandbox value.
-- @table DEFAULTS
-- @field dir ".sandbox"
-- @field port 8443 (0 picks a free port)
-- @field site "sandbox"
-- @field token "sandbox-token": the token of `channel`
-- @field channel "store"
-- @field record true: keep accepted orders in orders.ndjson
-- @field workers 1
-- @field delay_ms 0: answer every endpoint request this much later (not blocking nginx)
-- @field max_concurrent 0: above this many endpoint requests in progress, answer 429 (0: no limit)
-- @field retry_after 1: the Retry-After (seconds) of those 429 answers
M.DEFAULTS = {
  dir = ".sandbox",
  port = 8443,
  site = "sandbox",
  token = "sandbox-token",
  channel = "store",
  record = true,
  workers = 1,
  delay_ms = 0,
  max_concurrent = 0,
  retry_after = 1,
}

local INFO_FILE = "sandbox.info"
local START_TIMEOUT = 10  -- seconds until the port must answer TLS
local STOP_TIMEOUT = 10   -- seconds until the master must be gone

-- ------------------------------------------------------------------------
-- process and file helpers

local sys = require("optimizely.offline.sys")
local conf_template = require("optimizely.offline.sandbox.conf")
local q, run, capture, exists, read_file = sys.q, sys.run, sys.capture, sys.exists, sys.read_file

-- Create `path` if missing and make it 0600, whatever our umask (the file
-- is created under umask 077, so it is never readable by others meanwhile).
local function touch_private(path)
  if run("umask 077 && : >>" .. q(path) .. " && chmod 600 " .. q(path)) then return true end
  return nil, "cannot create " .. path
end

-- Write via a temp file + rename so readers never see half a file;
-- `private`: the file is 0600.
local function write_file(path, data, private)
  local tmp = path .. ".tmp"
  if private then
    local ok, err = touch_private(tmp)
    if not ok then return nil, err end
  end
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  f:write(data)
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then return nil, rerr end
  return true
end

local function sleep(s)
  run("sleep " .. s)
end

local cwd_cache
local function cwd()
  if not cwd_cache then
    cwd_cache = (capture("pwd") or ""):gsub("%s+$", "")
  end
  return cwd_cache
end

local function absolute(path)
  if path:sub(1, 1) ~= "/" then path = cwd() .. "/" .. path end
  path = path:gsub("/%./", "/"):gsub("/%.$", ""):gsub("//+", "/")
  if #path > 1 then path = path:gsub("/$", "") end
  return path
end

local function is_root()
  return (capture("id -u 2>/dev/null") or ""):match("^%s*0%s*$") ~= nil
end

-- Alive and not a zombie (a non-reaping PID 1 in containers leaves zombies).
local function alive(pid)
  if not pid then return false end
  local st = read_file("/proc/" .. pid .. "/stat")
  if st then return not st:match("^%d+ %b() Z") end
  return (run("kill -0 " .. pid .. " 2>/dev/null"))
end

-- Guards against a recycled pid: on Linux the process must be an nginx.
local function is_nginx(pid)
  local cmdline = read_file("/proc/" .. pid .. "/cmdline")
  if cmdline == nil then return alive(pid) end
  return cmdline:find("nginx", 1, true) ~= nil
end

local function read_pid(dir)
  return tonumber((read_file(dir .. "/nginx.pid") or ""):match("%d+"))
end

local function tail(path, from, max_lines)
  local s = read_file(path) or ""
  s = s:sub((from or 0) + 1)
  local lines = {}
  for line in s:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local first = math.max(1, #lines - (max_lines or 15) + 1)
  return table.concat(lines, "\n", first)
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n or 0
end

local function first_existing(candidates)
  for _, c in ipairs(candidates) do
    if c and c ~= "" and exists(c) then return c end
  end
end

-- ------------------------------------------------------------------------
-- environment discovery

local function find_nginx(opts)
  if opts.nginx then return opts.nginx end
  local env = os.getenv("OO_NGINX")
  if env and env ~= "" then return env end
  local inpath = (capture("command -v nginx 2>/dev/null") or ""):gsub("%s+$", "")
  return first_existing({ inpath, "/usr/sbin/nginx", "/usr/local/sbin/nginx",
    "/usr/local/openresty/nginx/sbin/nginx" })
end

-- Distribution builds load the lua module dynamically; OpenResty has it built in.
local function module_lines(opts)
  local dirs = { "/usr/lib/nginx/modules", "/usr/share/nginx/modules",
    "/usr/lib64/nginx/modules", "/usr/local/lib/nginx/modules" }
  if opts.modules_dir then table.insert(dirs, 1, opts.modules_dir) end
  for _, d in ipairs(dirs) do
    if exists(d .. "/ngx_http_lua_module.so") then
      local out = {}
      if exists(d .. "/ndk_http_module.so") then
        out[#out + 1] = 'load_module "' .. d .. '/ndk_http_module.so";'
      end
      out[#out + 1] = 'load_module "' .. d .. '/ngx_http_lua_module.so";'
      return table.concat(out, "\n")
    end
  end
  return "# lua module assumed to be built in (no ngx_http_lua_module.so found)"
end

-- cjson for LuaJIT (the 5.1 ABI) as nginx needs it.
local function lua_cpath(opts)
  if opts.lua_cpath then return opts.lua_cpath end
  local hit = (capture("ls /usr/lib/*/lua/5.1/cjson.so /usr/lib/lua/5.1/cjson.so "
    .. "/usr/lib64/lua/5.1/cjson.so /usr/local/lib/lua/5.1/cjson.so 2>/dev/null") or ""):match("[^\n]+")
  if hit then return hit:gsub("cjson%.so$", "?.so") .. ";;" end
  return ";;"
end

-- The `lua/` root that holds this module (checkout or installed tree), absolute.
local function lua_root()
  local src = debug.getinfo(1, "S").source
  local file = src:sub(1, 1) == "@" and src:sub(2) or nil
  if not file and package.searchpath then
    file = package.searchpath("optimizely.offline.sandbox", package.path)
  end
  if not file then return nil, "cannot locate optimizely/offline/sandbox.lua" end
  file = absolute(file)
  local root = file:match("^(.*)/optimizely/offline/sandbox%.lua$")
  if not root or not exists(root .. "/optimizely/offline/sandbox/handler.lua") then
    return nil, "cannot find optimizely/offline/sandbox/handler.lua next to " .. file
  end
  return root
end

-- ------------------------------------------------------------------------
-- options, info file

local function check_value(name, v)
  if type(v) ~= "string" or v == "" then return name .. " must be a non-empty string" end
  if v:find("[%c]") then return name .. " must not contain control characters" end
end

local function check_number(o, name, lo, hi, integer)
  local v = o[name]
  if type(v) ~= "number" or v ~= v or v < lo or v > hi or (integer and v ~= math.floor(v)) then
    return name .. " must be a" .. (integer and "n integer" or " number") .. " in " .. lo .. ".." .. hi
  end
end

-- The channel -> token map: `tokens` plus `channel` = `token`. Tokens must
-- differ (the record names the token that matched by its channel).
local function merge_tokens(o, given)
  local merged = {}
  if o.tokens ~= nil then
    if type(o.tokens) ~= "table" then return nil, "tokens must be a table {channel = token}" end
    for name, tok in pairs(o.tokens) do
      if type(name) ~= "string" or not name:match("^[%w_.-]+$") or #name > 64 then
        return nil, "tokens: channel names must be 1..64 letters, digits, '_', '.' or '-'"
      end
      local err = check_value("tokens." .. name, tok)
      if err then return nil, err end
      merged[name] = tok
    end
  end
  local own = merged[o.channel]
  if own and given.token ~= nil and own ~= o.token then
    return nil, "token and tokens." .. o.channel .. " disagree; give the token of channel "
      .. o.channel .. " once"
  end
  merged[o.channel] = own or o.token
  local seen = {}
  for name, tok in pairs(merged) do
    if seen[tok] then return nil, "tokens: channels " .. seen[tok] .. " and " .. name .. " have the same token" end
    seen[tok] = name
  end
  o.token = merged[o.channel]
  return merged
end

local function normalise(opts)
  if opts ~= nil and type(opts) ~= "table" then return nil, "options must be a table" end
  opts = opts or {}
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  if type(o.dir) ~= "string" or o.dir == "" then return nil, "dir must be a non-empty string" end
  o.dir = absolute(o.dir)
  -- these characters would break the nginx.conf / Lua path / shell quoting
  if o.dir:find('[%c"\\;$?{}]') then return nil, "dir contains an unsupported character: " .. o.dir end
  if type(o.port) ~= "number" or o.port ~= math.floor(o.port) or o.port < 0 or o.port > 65535 then
    return nil, "port must be an integer in 0..65535 (0 picks a free port)"
  end
  if type(o.workers) ~= "number" or o.workers ~= math.floor(o.workers) or o.workers < 1 or o.workers > 64 then
    return nil, "workers must be an integer in 1..64"
  end
  for _, k in ipairs({ "site", "token", "channel" }) do
    local err = check_value(k, o[k])
    if err then return nil, err end
  end
  if not o.channel:match("^[%w_.-]+$") then
    return nil, "channel must be letters, digits, '_', '.' or '-'"
  end
  local tokens, terr = merge_tokens(o, opts)
  if not tokens then return nil, terr end
  o.tokens = tokens
  local nerr = check_number(o, "delay_ms", 0, 600000)
    or check_number(o, "max_concurrent", 0, 1e6, true)
    or check_number(o, "retry_after", 0, 86400, true)
  if nerr then return nil, nerr end
  if type(o.record) ~= "boolean" then return nil, "record must be a boolean" end
  if o.owner_pid ~= nil and type(o.owner_pid) ~= "number" then return nil, "owner_pid must be a number" end
  return o
end

local INFO_KEYS = { "base_url", "ca_file", "site", "token", "channel", "dir", "pid", "port",
  "record", "workers", "delay_ms", "max_concurrent", "retry_after" }
local INFO_NUMBERS = { "pid", "port", "workers", "delay_ms", "max_concurrent", "retry_after" }

-- `key=value` lines; the tokens as `token.<channel>=<token>`.
local function encode_info(info)
  local out = {}
  for _, k in ipairs(INFO_KEYS) do out[#out + 1] = k .. "=" .. tostring(info[k]) end
  local names = {}
  for name in pairs(info.tokens) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do out[#out + 1] = "token." .. name .. "=" .. info.tokens[name] end
  return table.concat(out, "\n") .. "\n"
end

--- Reads an info file (`key=value` lines, as written by `start`).
-- @param path path of `DIR/sandbox.info`
-- @return info table (as `start` returns it), or nil and a message
function M.read_info(path)
  local s = read_file(path)
  if not s then return nil, "no sandbox info at " .. path end
  local info = { tokens = {} }
  for k, v in s:gmatch("([%w_.-]+)=([^\n]*)") do
    local name = k:match("^token%.(.+)$")
    if name then info.tokens[name] = v else info[k] = v end
  end
  if not info.base_url then return nil, "not a sandbox info file: " .. path end
  for _, k in ipairs(INFO_NUMBERS) do info[k] = tonumber(info[k]) end
  info.record = info.record == "true"
  if next(info.tokens) == nil and info.channel then info.tokens[info.channel] = info.token end
  return info
end

-- ------------------------------------------------------------------------
-- certificates

local OPENSSL_CNF = [[
[req]
distinguished_name = dn
prompt = no
[dn]
CN = optimizely-offline sandbox
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
]]

local function random_hex(nbytes)
  local f = io.open("/dev/urandom", "rb")
  local s = f and f:read(nbytes)
  if f then f:close() end
  if not s or #s < nbytes then
    s = ""
    for _ = 1, nbytes do s = s .. string.char(math.random(0, 255)) end
  end
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- EC P-256 keys: cheap handshakes, which matters for the benchmarks.
local function ensure_certs(dir)
  local c = dir .. "/certs"
  local ca_crt, ca_key = c .. "/ca.crt", c .. "/ca.key"
  local crt, key = c .. "/server.crt", c .. "/server.key"
  local log = dir .. "/logs/openssl.log"
  local function ssl(args)
    local ok = run("cd " .. q(c) .. " && umask 077 && openssl " .. args .. " >>" .. q(log) .. " 2>&1")
    if not ok then return nil, "openssl failed: " .. tail(log, 0, 8) end
    return true
  end
  if not exists(c .. "/openssl.cnf") then
    local ok, err = write_file(c .. "/openssl.cnf", OPENSSL_CNF)
    if not ok then return nil, err end
  end
  local newkey = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  if not (exists(ca_crt) and exists(ca_key)) then
    local ok, err = ssl("req -x509 " .. newkey .. " -keyout ca.key -out ca.crt -days 3650"
      .. " -config openssl.cnf -extensions v3_ca -subj '/CN=optimizely-offline sandbox CA'")
    if not ok then return nil, err end
    os.remove(crt) -- a new CA invalidates the old server cert
  end
  -- reuse the server cert unless missing or expiring within a day
  if exists(crt) and exists(key)
    and run("openssl x509 -checkend 86400 -noout -in " .. q(crt) .. " >/dev/null 2>&1") then
    return ca_crt
  end
  local ok, err = ssl("req -new " .. newkey .. " -keyout server.key -out server.csr"
    .. " -config openssl.cnf -subj '/CN=127.0.0.1'")
  if not ok then return nil, err end
  ok, err = ssl("x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 0x" .. random_hex(8)
    .. " -days 825 -extfile openssl.cnf -extensions v3_server -out server.crt")
  if not ok then return nil, err end
  os.remove(c .. "/server.csr")
  run("chmod 644 " .. q(ca_crt) .. " " .. q(crt)) -- certs are public; keys stay 0600
  return ca_crt
end

-- ------------------------------------------------------------------------
-- ports

-- Local ports in LISTEN state (Linux /proc); empty elsewhere, then bind decides.
local function listening_ports()
  local used = {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    local s = read_file(f) or ""
    for port, state in s:gmatch("%x+:(%x+) %x+:%x+ (%x%x)") do
      if state == "0A" then used[tonumber(port, 16)] = true end
    end
  end
  return used
end

-- Below Linux's ephemeral range (32768+): a port in it can be handed to a
-- client's own connect() as its source port while the sandbox is stopped,
-- and the client then talks to itself (TCP self-connect).
local function pick_port()
  local used = listening_ports()
  local seed = tonumber(random_hex(3), 16)
  for i = 0, 200 do
    local p = 10000 + (seed + i * 7919) % 22000
    if not used[p] then return p end
  end
  return 10000 + seed % 22000
end

-- ------------------------------------------------------------------------
-- probes

-- coreutils `timeout` as a backstop: a curl process has been seen hanging in libc
-- before it ever reached its own --max-time handling.
local timeout_prefix
local function guard(seconds)
  if timeout_prefix == nil then
    timeout_prefix = (capture("command -v timeout 2>/dev/null") or "") ~= ""
  end
  return timeout_prefix and ("timeout -k 1 " .. seconds .. " ") or ""
end

-- HTTP status of /_sandbox/health over verified TLS (0: no answer yet).
local function health(info, timeout)
  timeout = timeout or 2
  local code = capture(guard(timeout + 3) .. "curl -s -o /dev/null -w '%{http_code}' --max-time " .. timeout
    .. " --cacert " .. q(info.ca_file) .. " " .. q(info.base_url .. "/_sandbox/health") .. " 2>/dev/null")
  return tonumber(code) or 0
end

--- Is a sandbox running in `opts.dir`?
-- @param opts table with `dir` (default `.sandbox`)
-- @return info (with `running = true`), or nil and a message
function M.status(opts)
  local o, err = normalise(opts)
  if not o then return nil, err end
  local pid = read_pid(o.dir)
  if not pid or not alive(pid) or not is_nginx(pid) then
    return nil, "no sandbox running in " .. o.dir
  end
  local info, ierr = M.read_info(o.dir .. "/" .. INFO_FILE)
  if not info then return nil, ierr end
  if info.pid ~= pid then return nil, "sandbox in " .. o.dir .. " is still starting or stale" end
  info.running = true
  return info
end

--- Stops the sandbox of `opts.dir` (QUIT, then TERM, then KILL; bounded waits).
-- Stopping a sandbox that is not running succeeds.
-- @param opts table with `dir`
-- @return true, or nil and a message
function M.stop(opts)
  local o, err = normalise(opts)
  if not o then return nil, err end
  local pid = read_pid(o.dir)
  if pid and alive(pid) and is_nginx(pid) then
    local steps = { { "QUIT", STOP_TIMEOUT * 0.6 }, { "TERM", STOP_TIMEOUT * 0.3 }, { "KILL", STOP_TIMEOUT * 0.1 } }
    local gone = false
    for _, step in ipairs(steps) do
      run("kill -" .. step[1] .. " " .. pid .. " 2>/dev/null")
      local deadline = os.time() + step[2]
      local n = 0
      repeat
        if not alive(pid) then gone = true break end
        n = n + 1
        sleep(n < 20 and 0.05 or 0.2)
      until os.time() > deadline
      if gone then break end
    end
    if not gone then return nil, "nginx (pid " .. pid .. ") did not exit" end
  end
  os.remove(o.dir .. "/" .. INFO_FILE)
  os.remove(o.dir .. "/nginx.pid")
  return true
end

-- ------------------------------------------------------------------------
-- start

-- Command prefix that closes every descriptor above 2 before exec'ing its arguments.
local CLOSE_FDS = [[for f in /proc/$$/fd/*; do f=${f##*/}; ]]
  .. [[case $f in 0|1|2) ;; *) eval "exec $f>&-" ;; esac; done; exec "$@"]]
local detached_prefix
local function detached()
  if detached_prefix == nil then
    if exists("/proc/self/fd") and (capture("command -v bash 2>/dev/null") or "") ~= "" then
      detached_prefix = "bash -c " .. q(CLOSE_FDS) .. " nginx-launch "
    else
      detached_prefix = "exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; "
    end
  end
  return detached_prefix
end

local function fill(template, vars)
  return (template:gsub("%${([%w_]+)}", function(k)
    local v = vars[k]
    if v == nil then error("template variable missing: " .. k) end
    return tostring(v)
  end))
end

local function lua_literal(v)
  if type(v) == "string" then return (string.format("%q", v):gsub("\\\n", "\\n")) end
  if type(v) == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local out = {}
    for _, k in ipairs(keys) do out[#out + 1] = "[" .. lua_literal(k) .. "] = " .. lua_literal(v[k]) end
    return "{ " .. table.concat(out, ", ") .. " }"
  end
  return tostring(v)
end

local HANDLER_KEYS = { "dir", "site", "tokens", "record", "owner_pid", "cleanup_dir", "delay_ms",
  "max_concurrent", "retry_after" }

local function write_config(o, port, root)
  local handler_cfg = { "return {" }
  for _, k in ipairs(HANDLER_KEYS) do
    if o[k] ~= nil then handler_cfg[#handler_cfg + 1] = "  " .. k .. " = " .. lua_literal(o[k]) .. "," end
  end
  handler_cfg[#handler_cfg + 1] = "}\n"
  -- holds the tokens
  local ok, err = write_file(o.dir .. "/conf/config.lua", table.concat(handler_cfg, "\n"), true)
  if not ok then return nil, err end
  local conf = fill(conf_template, {
    load_modules = module_lines(o),
    user = is_root() and "user root;  # running as root: workers write the records in dir" or "",
    workers = o.workers,
    dir = o.dir,
    port = port,
    access_log = o.log and ('"' .. o.dir .. '/logs/access.log"') or "off",
    lua_path = root .. "/?.lua;" .. root .. "/?/init.lua;;",
    lua_cpath = lua_cpath(o),
  })
  return write_file(o.dir .. "/conf/nginx.conf", conf)
end

local function make_info(o, port, ca_file, pid)
  return {
    base_url = "https://127.0.0.1:" .. port,
    ca_file = ca_file,
    site = o.site,
    token = o.token,
    channel = o.channel,
    tokens = o.tokens,
    dir = o.dir,
    pid = pid,
    port = port,
    record = o.record,
    workers = o.workers,
    delay_ms = o.delay_ms,
    max_concurrent = o.max_concurrent,
    retry_after = o.retry_after,
  }
end

--- Starts the sandbox (or returns the one already running in `opts.dir`).
-- @param opts table: `dir` (default `.sandbox`), `port` (8443; 0 = a free port),
--   `site`, `token` and `channel` (one channel and its token), `tokens`
--   (`{channel = token, ...}`: more channels, each with its own token; tokens
--   must differ), `record` (true), `workers` (1), `delay_ms` (0: answer each
--   endpoint request that much later, without blocking nginx), `max_concurrent`
--   (0: no limit; above it, 429 TooManyRequests), `retry_after` (1: seconds, the
--   Retry-After of those 429s), `log` (access log in dir), `nginx` (binary),
--   `owner_pid` (nginx quits once that process is gone), `cleanup_dir` (with
--   owner_pid: also remove dir then). See `DEFAULTS`.
-- @return info `{base_url, ca_file, site, token, channel, tokens, dir, pid, port,
--   record, workers, delay_ms, max_concurrent, retry_after}`,
--   or nil, message, kind ("config" for bad options/environment, "runtime" otherwise)
function M.start(opts)
  local o, err = normalise(opts)
  if not o then return nil, err, "config" end
  local running = M.status({ dir = o.dir })
  if running then return running end

  for _, tool in ipairs({ "curl", "openssl" }) do
    if (capture("command -v " .. tool .. " 2>/dev/null") or "") == "" then
      return nil, "the sandbox needs the " .. tool .. " command-line tool", "config"
    end
  end
  local nginx = find_nginx(o)
  if not nginx then return nil, "nginx not found (install nginx + libnginx-mod-http-lua, or set OO_NGINX)", "config" end
  local root, rerr = lua_root()
  if not root then return nil, rerr, "config" end
  if root:find('[%c"\\;$?{}]') then return nil, "unsupported character in lua path " .. root, "config" end

  for _, sub in ipairs({ "certs", "conf", "logs", "tmp" }) do
    if not run("mkdir -p " .. q(o.dir .. "/" .. sub)) then
      return nil, "cannot create " .. o.dir .. "/" .. sub, "runtime"
    end
  end
  local ca_file, cerr = ensure_certs(o.dir)
  if not ca_file then return nil, cerr, "runtime" end
  -- the records hold orders: 0600 (an older sandbox's files are fixed too)
  for _, name in ipairs({ "orders.ndjson", "cancellations.ndjson" }) do
    local ok, terr = touch_private(o.dir .. "/" .. name)
    if not ok then return nil, terr, "runtime" end
  end

  local errlog = o.dir .. "/logs/error.log"
  local attempts = o.port == 0 and 5 or 1
  local port
  for attempt = 1, attempts do
    port = o.port ~= 0 and o.port or pick_port()
    local ok, werr = write_config(o, port, root)
    if not ok then return nil, "cannot write nginx.conf: " .. tostring(werr), "runtime" end
    os.remove(o.dir .. "/nginx.pid")
    local log_from = file_size(errlog)
    -- stdio to a file and no inherited descriptors: the daemon must not hold the
    -- caller's pipes open (a CI step would wait for their EOF)
    local started = run(detached() .. q(nginx) .. " -p " .. q(o.dir) .. " -c " .. q(o.dir .. "/conf/nginx.conf")
      .. " -e " .. q(errlog) .. " </dev/null >>" .. q(o.dir .. "/logs/nginx.out") .. " 2>&1")
    if started then break end
    local msg = tail(errlog, log_from, 10)
    if attempt == attempts or not msg:find("in use", 1, true) then
      return nil, "nginx failed to start:\n" .. msg, "runtime"
    end
  end

  -- the master has bound the port before daemonising; wait for TLS answers
  local info = make_info(o, port, ca_file, nil)
  local deadline = os.time() + START_TIMEOUT
  local pid
  repeat
    pid = pid or read_pid(o.dir)
    if pid and not alive(pid) then break end
    local code = pid and health(info, 2) or 0
    if code ~= 0 and code ~= 200 then break end -- answering, but broken (e.g. a Lua error)
    if code == 200 then
      info.pid = pid
      local ok, ierr = write_file(o.dir .. "/" .. INFO_FILE, encode_info(info), true)
      if not ok then
        M.stop({ dir = o.dir })
        return nil, "cannot write sandbox info: " .. tostring(ierr), "runtime"
      end
      return info
    end
    sleep(0.05)
  until os.time() > deadline
  local msg = tail(errlog, 0, 15)
  M.stop({ dir = o.dir })
  return nil, "sandbox did not become healthy on " .. info.base_url .. " (waited up to "
    .. START_TIMEOUT .. " s); error log:\n" .. msg, "runtime"
end

return M
