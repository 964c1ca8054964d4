--- Running the command line as a child process from a spec: the real
-- bin/optimizely-offline under the interpreter busted runs, in a private
-- temporary directory, with every OPTIMIZELY_* variable unset but those a
-- test gives.
--
--   local cli = require("support.cli")
--   local dir = cli.tmpdir()                       -- removed by cli.cleanup()
--   local r = cli.run({ "validate", path }, { env = cli.creds(), umask = "022" })
--   -- r.code, r.out, r.err, r.all
local sys = require("optimizely.offline.sys")
local core = require("optimizely.offline.core")

local M = {}

M.LUA = require("support.interp")
M.ROOT = io.popen("pwd"):read("*l")
M.BIN = M.ROOT .. "/bin/optimizely-offline"
M.FIX = M.ROOT .. "/spec/fixtures/cli/"

local q = sys.q
M.q, M.read_file = q, sys.read_file

M.ENV_VARS = { "OPTIMIZELY_SITE", "OPTIMIZELY_SITE_TOKEN", "OPTIMIZELY_CHANNEL", "OPTIMIZELY_BASE_URL",
  "OPTIMIZELY_CA_FILE", "OPTIMIZELY_ENV", "OPTIMIZELY_PSEUDONYM_KEY", "OPTIMIZELY_SITE_TOKEN_STORE",
  "OPTIMIZELY_SITE_TOKEN_CALLCENTRE", "OPTIMIZELY_SITE_TOKEN_MOBILEAPP", "OPTIMIZELY_SITE_TOKEN_TV", "TZDIR" }

local dir
--- This spec file's private directory (made on first use).
function M.tmpdir()
  if not dir then dir = io.popen("mktemp -d"):read("*l") end
  return dir
end

--- Removes the private directory.
function M.cleanup()
  if dir and dir:match("^/tmp/") then os.execute("rm -rf " .. q(dir)) end
  dir = nil
end

--- A path in the private directory.
function M.tmp(name) return M.tmpdir() .. "/" .. name end

function M.write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

local n_states = 0
--- A fresh state directory (what `XDG_STATE_HOME` names) in the private
-- directory: `send` keeps its ledger under it by default.
function M.state_dir()
  n_states = n_states + 1
  local d = M.tmp("state" .. n_states)
  os.execute("mkdir -p " .. q(d))
  return d
end

--- The shell command that runs the CLI (o: env, cwd, umask, exec). Unless
-- `o.env` names `XDG_STATE_HOME` (or sets it to false: the variable is
-- unset), each command gets a state directory of its own, so the default
-- ledger of one run never makes another skip orders it means to send.
function M.command(args, o)
  o = o or {}
  local parts = { "cd", q(o.cwd or M.tmpdir()), "&&" }
  if o.umask then parts[#parts + 1] = "umask " .. o.umask .. " &&" end
  parts[#parts + 1] = o.exec and "exec env" or "env"
  for _, v in ipairs(M.ENV_VARS) do parts[#parts + 1] = "-u " .. v end
  local env = o.env or {}
  if env.XDG_STATE_HOME == nil then
    parts[#parts + 1] = q("XDG_STATE_HOME=" .. M.state_dir())
  elseif env.XDG_STATE_HOME == false then
    parts[#parts + 1] = "-u XDG_STATE_HOME"
  end
  for k, v in pairs(env) do
    if v ~= false then parts[#parts + 1] = q(k .. "=" .. v) end
  end
  parts[#parts + 1] = M.LUA
  parts[#parts + 1] = q(M.BIN)
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  return table.concat(parts, " ")
end

local n_runs = 0
--- Runs the CLI; o = {env=, stdin=, cwd=, umask=}. @return {code, out, err, all}
function M.run(args, o)
  o = o or {}
  n_runs = n_runs + 1
  local base = M.tmp("run" .. n_runs)
  local inf = o.stdin and M.write_file(base .. ".in", o.stdin) or "/dev/null"
  local p = io.popen(M.command(args, o) .. " >" .. q(base .. ".out") .. " 2>" .. q(base .. ".err")
    .. " <" .. q(inf) .. "; echo $?")
  local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local r = { code = code, out = sys.read_file(base .. ".out") or "", err = sys.read_file(base .. ".err") or "" }
  os.remove(base .. ".out")
  os.remove(base .. ".err")
  r.all = r.out .. r.err
  return r
end

--- Credentials of the sandbox, in the environment (`over`: changes; false removes).
function M.creds(over)
  local info = require("support.sandbox").ensure()
  local e = {
    OPTIMIZELY_SITE = info.site, OPTIMIZELY_SITE_TOKEN = info.token,
    OPTIMIZELY_CHANNEL = info.channel, OPTIMIZELY_BASE_URL = info.base_url,
    OPTIMIZELY_CA_FILE = info.ca_file,
  }
  for k, v in pairs(over or {}) do e[k] = v or nil end
  return e
end

--- The JSON values of an NDJSON file's lines (the project's strict decoder).
function M.lines_of(path)
  local out = {}
  for line in (sys.read_file(path) or ""):gmatch("[^\n]+") do
    out[#out + 1] = assert(core.json_decode(line), "not JSON: " .. line)
  end
  return out
end

--- A whole JSON file, decoded.
function M.json_file(path)
  local v = assert(core.json_decode((assert(sys.read_file(path), "no file " .. path))))
  return v
end

--- The permission bits of a file, as an octal string ("600").
function M.mode(path)
  local _, _, m = core.file_id(path)
  return m and ("%o"):format(m) or nil
end

--- n orders, refCodes PREFIX-1..n, one NDJSON line each. `date(i)`, when
-- given, returns the JSON text of order i's orderDate.
function M.orders(path, n, prefix, date)
  local f = assert(io.open(path, "wb"))
  for i = 1, n do
    f:write(('{"user":{"id":"u%d"},"order":{"refCode":"%s-%d","orderDate":%s,'
      .. '"currency":"GBP","total":12.5,"items":[{"refCode":"s1","qty":1,"price":12.5}]}}\n')
      :format(i, prefix, i, date and date(i) or '"2024-03-15T09:12:00 GMT"'))
  end
  f:close()
  return path
end

--- Starts the CLI in the background in `dir` (its stdout and stderr in
-- `cwd`/run.out and run.err, or `o.out`/`o.err`). @return its pid, and a
-- function that waits for it and returns its exit code, stdout and stderr.
function M.spawn(args, env, cwd, o)
  o = o or {}
  local out, err = o.out or (cwd .. "/run.out"), o.err or (cwd .. "/run.err")
  -- (the outer shell's stderr goes: it would say "Killed" after a kill -9)
  local cmd = M.command(args, { env = env, cwd = cwd, exec = true })
  local p = io.popen("exec 2>/dev/null; sh -c " .. q("echo $$; " .. cmd
    .. " >" .. q(out) .. " 2>" .. q(err) .. " </dev/null") .. "; echo \"rc=$?\"")
  local pid = tonumber(p:read("*l"))
  assert(pid, "no pid")
  return pid, function()
    local rc = tonumber(p:read("*a"):match("rc=(%d+)"))
    p:close()
    return rc, sys.read_file(out) or "", sys.read_file(err) or ""
  end
end

--- Waits (bounded: `seconds`, default 30) until `cond()` holds.
function M.wait_for(cond, seconds)
  local deadline = core.now() + (seconds or 30)
  while not cond() do
    assert(core.now() < deadline, "timed out")
    core.sleep(0.02)
  end
end

--- The names in a directory (ls -A).
function M.ls(d)
  local names = {}
  for name in sys.capture("ls -A " .. q(d)):gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

return M
