--- Renders examples/openresty/nginx.conf and runs it (Lua 5.1/LuaJIT/5.4).
--
--   lua5.4 examples/openresty/launch.lua start [--dir .openresty] [--port 8080]
--          [--spool PATH] [--base-url URL --ca-file CA --site S --token-env VAR]
--          [--sandbox-dir .sandbox]
--   lua5.4 examples/openresty/launch.lua stop [--dir .openresty]
--
-- Without --base-url it starts (or reuses) the local sandbox in .sandbox and
-- points the queue at it, trusting the sandbox CA; `stop` stops that
-- sandbox too when `start` started it (DIR/sandbox.dir remembers it; a
-- sandbox that was already running is left alone). As a module (the specs
-- and the benchmark use it): `render(vars)`, `write(opts)`, `defaults()`.
-- @script launch
local M = {}

local function script_dir()
  local src = debug.getinfo(1, "S").source
  local file = src:sub(1, 1) == "@" and src:sub(2) or "examples/openresty/launch.lua"
  return file:match("^(.*)/[^/]*$") or "."
end

-- the repository's Lua modules (this file may run before anything set a path)
package.path = script_dir() .. "/../../lua/?.lua;" .. package.path
local sys = require("optimizely.offline.sys")
local capture, run, q, exists, read_file = sys.capture, sys.run, sys.q, sys.exists, sys.read_file

local function write_file(path, data, mode)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  f:write(data)
  f:close()
  if mode then run("chmod " .. mode .. " " .. q(path)) end
  return true
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return (capture("pwd"):gsub("%s+$", "")) .. "/" .. path:gsub("^%./", "")
end

--- The repository root (two levels above this file), absolute.
function M.root()
  return (capture("cd " .. q(script_dir() .. "/../..") .. " && pwd"):gsub("%s+$", ""))
end

--- The template text.
function M.template()
  return assert(read_file(script_dir() .. "/nginx.conf"), "cannot read the nginx.conf template")
end

--- Fill `${name}` placeholders; a missing value is an error.
function M.render(vars, template)
  return ((template or M.template()):gsub("%${([%w_]+)}", function(k)
    local v = vars[k]
    if v == nil then error("launch: template variable missing: " .. k, 0) end
    return tostring(v)
  end))
end

--- Environment-dependent values: load_module lines, user, cjson cpath, resolver.
function M.defaults()
  local d = {}
  local lines = {}
  for _, dir in ipairs({ "/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/lib64/nginx/modules" }) do
    if exists(dir .. "/ngx_http_lua_module.so") then
      if exists(dir .. "/ndk_http_module.so") then
        lines[#lines + 1] = 'load_module "' .. dir .. '/ndk_http_module.so";'
      end
      lines[#lines + 1] = 'load_module "' .. dir .. '/ngx_http_lua_module.so";'
      break
    end
  end
  d.load_modules = #lines > 0 and table.concat(lines, "\n") or "# lua module built in (OpenResty)"
  -- as root the workers would run as nobody and could not write the spool
  d.user = capture("id -u 2>/dev/null"):match("^%s*0%s*$") and "user root;" or ""
  local hit = capture("ls /usr/lib/*/lua/5.1/cjson.so /usr/lib/lua/5.1/cjson.so"
    .. " /usr/local/lib/lua/5.1/cjson.so 2>/dev/null"):match("[^\n]+")
  d.cjson_cpath = hit and hit:gsub("cjson%.so$", "?.so") or "/usr/local/lib/lua/5.1/?.so"
  local ns = (read_file("/etc/resolv.conf") or ""):match("\nnameserver%s+([%d%.]+)")
    or (read_file("/etc/resolv.conf") or ""):match("^nameserver%s+([%d%.]+)")
  d.resolver = ns and ("resolver " .. ns .. " ipv6=off valid=300s;") or "# no resolver found in /etc/resolv.conf"
  d.workers = 1
  d.log_level = "warn"
  d.extra_init_worker = ""
  d.extra_locations = ""
  d.extra_http = ""
  d.shm_size = "16m"
  return d
end

--- The `env NAME;` lines for an app config: one per `<key>_env` entry
-- (`token_env = "OPTIMIZELY_SITE_TOKEN"`), so every variable the app reads
-- is one nginx passes to its workers.
-- @param app the app config
-- @return the lines (a comment when there are none)
function M.env_directives(app)
  local names = {}
  for k, v in pairs(app or {}) do
    if type(k) == "string" and k:match("_env$") and type(v) == "string" then
      if not v:match("^[%a_][%w_]*$") then error("launch: " .. k .. " is not a variable name: " .. v, 0) end
      names[#names + 1] = v
    end
  end
  if #names == 0 then return "# (the app config reads no environment variable)" end
  table.sort(names)
  for i, n in ipairs(names) do names[i] = "env " .. n .. ";" end
  return table.concat(names, "\n")
end

local function lua_literal(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "string" then return (string.format("%q", v):gsub("\\\n", "\\n")) end
  if t == "number" or t == "boolean" then return tostring(v) end
  if t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local out = { "{" }
    for _, k in ipairs(keys) do
      out[#out + 1] = indent .. "  " .. k .. " = " .. lua_literal(v[k], indent .. "  ") .. ","
    end
    out[#out + 1] = indent .. "}"
    return table.concat(out, "\n")
  end
  error("launch: cannot write a " .. t .. " into the app config")
end

--- Write DIR/conf/nginx.conf and DIR/conf/app.lua (creating DIR's tree).
-- @param opts `{dir, port, app = {client config + queue = {...}}, ca_file,
--   vars = {template overrides}}`
-- @return path of nginx.conf
function M.write(opts)
  local dir = absolute(opts.dir)
  for _, sub in ipairs({ "conf", "logs", "tmp" }) do
    assert(run("mkdir -p " .. q(dir .. "/" .. sub)), "cannot create " .. dir .. "/" .. sub)
  end
  local vars = M.defaults()
  vars.dir, vars.port, vars.root, vars.ca_file = dir, opts.port, M.root(), opts.ca_file
  vars.env_directives = M.env_directives(opts.app)
  for k, v in pairs(opts.vars or {}) do vars[k] = v end
  local spool = opts.app and opts.app.queue and opts.app.queue.spool
  if spool then -- its directory: the workers' (this user's), private
    local sdir = spool:match("^(.*)/[^/]*$")
    if sdir and sdir ~= "" then
      assert(run("mkdir -p -m 0700 " .. q(sdir)), "cannot create " .. sdir)
    end
  end
  assert(write_file(dir .. "/conf/app.lua", "return " .. lua_literal(opts.app) .. "\n", "600"))
  local conf = dir .. "/conf/nginx.conf"
  assert(write_file(conf, M.render(vars)))
  return conf
end

---------------------------------------------------------------------------
-- command line

local function usage()
  io.stderr:write([[
usage: launch.lua start [--dir DIR] [--port N] [--spool PATH] [--sandbox-dir DIR]
                        [--base-url URL --ca-file CA --site S --channel C --token-env VAR]
       launch.lua stop [--dir DIR]
]])
  os.exit(2)
end

local function alive(pid)
  local st = read_file("/proc/" .. pid .. "/stat")
  if st then return not st:match("^%d+ %b() Z") end
  return run("kill -0 " .. pid .. " 2>/dev/null")
end

-- QUIT nginx and wait (up to 15 s) until the master is gone.
local function stop_nginx(dir)
  local pid = (read_file(dir .. "/nginx.pid") or ""):match("%d+")
  if not pid or not alive(pid) then return nil end
  run("kill -QUIT " .. pid)
  for _ = 1, 150 do
    if not alive(pid) then return pid end
    run("sleep 0.1")
  end
  io.stderr:write("nginx " .. pid .. " did not exit within 15 s\n")
  return pid
end

-- Stop the sandbox this launcher started (DIR/sandbox.dir), if any.
local function stop_own_sandbox(dir)
  local marker = dir .. "/sandbox.dir"
  local sdir = (read_file(marker) or ""):match("[^\n]+")
  if not sdir then return end
  local ok, err = require("optimizely.offline.sandbox").stop({ dir = sdir })
  if not ok then
    io.stderr:write("cannot stop the sandbox in " .. sdir .. ": " .. tostring(err) .. "\n")
    return
  end
  os.remove(marker)
  print("sandbox stopped (" .. sdir .. ")")
end

local function main(argv)
  local cmd = argv[1]
  local o = { dir = ".openresty", port = 8080, channel = "store" }
  local i = 2
  while argv[i] do
    local k, v = argv[i]:match("^%-%-([%w%-]+)$"), argv[i + 1]
    if not k or not v then usage() end
    o[k:gsub("%-", "_")] = v
    i = i + 2
  end
  o.dir = absolute(o.dir)
  if cmd == "stop" then
    local pid = stop_nginx(o.dir)
    print(pid and ("nginx " .. pid .. " stopped") or "nginx not running")
    stop_own_sandbox(o.dir)
    return
  end
  if cmd ~= "start" then usage() end
  local root = M.root()
  local app = { channel = o.channel, queue = {} }
  if o.base_url then
    assert(o.ca_file and o.site, "--base-url needs --ca-file and --site")
    app.base_url, app.site, app.token_env = o.base_url, o.site, o.token_env or "OPTIMIZELY_SITE_TOKEN"
  else
    local sandbox = require("optimizely.offline.sandbox")
    local sdir = absolute(o.sandbox_dir or (root .. "/.sandbox"))
    local running = sandbox.status({ dir = sdir })
    local info, err = sandbox.start({ dir = sdir, port = 0 })
    assert(info, err)
    app.base_url, app.site, app.token, app.channel = info.base_url, info.site, info.token, info.channel
    o.ca_file = info.ca_file
    assert(run("mkdir -p " .. q(o.dir)), "cannot create " .. o.dir)
    if not running then assert(write_file(o.dir .. "/sandbox.dir", sdir .. "\n")) end
    print("sandbox: " .. info.base_url .. (running and " (already running: stop leaves it)" or ""))
  end
  if o.spool then app.queue.spool = absolute(o.spool) end
  local conf = M.write({ dir = o.dir, port = tonumber(o.port), app = app, ca_file = absolute(o.ca_file) })
  if not run("nginx -p " .. q(o.dir) .. " -c " .. q(conf) .. " -e " .. q(o.dir .. "/logs/error.log")) then
    io.stderr:write("nginx failed to start; see " .. o.dir .. "/logs/error.log\n")
    os.exit(1)
  end
  print("nginx: http://127.0.0.1:" .. o.port .. "  (POST /pos/orders, GET /checkout?sku=..&price=.., GET /queue/stats)")
end

if arg and arg[0] and arg[0]:match("launch%.lua$") and not package.loaded["launch"] then
  main(arg)
else
  return M
end
