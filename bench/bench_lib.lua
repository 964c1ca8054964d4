--- Helpers the benchmarks share: the checkout's paths, the orders they send,
-- shell and file calls, a record-less sandbox with the request body on disk,
-- nginx worker discovery and CPU pinning, and building the C baselines.
-- A bench loads it by file, before anything of the library, so that it
-- points package.path/cpath at this checkout's lua/ and build/<variant>/:
--   local lib = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "bench_lib.lua")
local M = {}

M.ROOT = (debug.getinfo(1, "S").source:match("^@(.-)/?[^/]*$") or "")
M.ROOT = (M.ROOT == "" and "." or M.ROOT) .. "/.."
M.VARIANT = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.path = M.ROOT .. "/lua/?.lua;" .. M.ROOT .. "/lua/?/init.lua;" .. M.ROOT .. "/bench/?.lua;"
  .. package.path
package.cpath = M.ROOT .. "/build/" .. M.VARIANT .. "/?.so;" .. package.cpath
package.loaded.bench_lib = M -- a later require("bench_lib") gets this copy

local sandbox = require("optimizely.offline.sandbox")

--- A small order (the spec's minimal one, one item): refCode `prefix-i`.
function M.order(prefix, i)
  return {
    user = { id = "abcd1234efgh" },
    order = {
      refCode = prefix .. "-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
      currency = "GBP", total = 100.0,
      items = { { refCode = "ref1", qty = 1, price = 100.0 } },
    },
  }
end

--- A realistic order (three items, attributes, shipping): refCode
-- `PREFIX-%08d`, customer `cust-i`.
function M.realistic_order(prefix, i)
  return {
    lang = "en-gb",
    user = { id = "cust-" .. i },
    order = {
      refCode = ("%s-%08d"):format(prefix, i), orderDate = "2024-05-16T14:25:00Z", currency = "GBP",
      shipping = 4.95, total = 64.92,
      items = {
        { refCode = "SKU-1", qty = 1, price = 19.99, attributes = { colour = "blue" } },
        { refCode = "SKU-2", qty = 2, price = 19.99 },
        { refCode = "SKU-3", qty = 1, price = 0.00 },
      },
      attributes = { store = "Bluewater" },
    },
  }
end

-- refCodes go on from one source to the next: no order is sent twice
local serials, pools = {}, {}

--- A send_batch source of `n` distinct small orders: 16 tables reused with a
-- new refCode each (`prefix-<serial>`), so every order is validated and
-- encoded without a large live heap.
function M.orders(prefix, n)
  local pool = pools[prefix]
  if not pool then
    pool = {}
    for k = 1, 16 do pool[k] = M.order(prefix, k) end
    pools[prefix] = pool
  end
  local i = 0
  return function()
    i = i + 1
    if i > n then return nil end
    local serial = (serials[prefix] or 0) + 1
    serials[prefix] = serial
    local p = pool[i % 16 + 1]
    p.order.refCode = prefix .. "-" .. serial
    return p
  end
end

function M.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local q = M.q

function M.sh(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and c == 0
end
local sh = M.sh

function M.capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end
local capture = M.capture

function M.self_pid()
  local f = io.open("/proc/self/stat")
  local s = f and f:read("*l")
  if f then f:close() end
  return tonumber(s and s:match("^(%d+)"))
end

function M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

--- A sandbox with record=false owned by this process (it quits and removes
-- its directory when we are gone), plus a work directory holding `body`.
-- `extra`: more sandbox.start options (delay_ms, max_concurrent, ...).
-- @return info, work_dir, post_url, body_file
function M.start_sandbox(tag, pid, body, extra)
  local dir = "/tmp/oo-sandbox-" .. tag .. "-" .. pid
  local o = { dir = dir, port = 0, record = false, owner_pid = pid, cleanup_dir = true }
  for k, v in pairs(extra or {}) do o[k] = v end
  local info = assert(sandbox.start(o))
  local work = dir .. "/bench"
  sh("mkdir -p " .. q(work))
  local body_file = work .. "/order.json"
  M.write(body_file, body)
  return info, work, info.base_url .. "/tracker/smart-api/orders/offline", body_file
end

--- The sandbox's nginx workers, and whether taskset pinning is possible.
function M.nginx_workers(info)
  local workers = {}
  for w in capture("pgrep -P " .. info.pid .. " 2>/dev/null"):gmatch("%d+") do workers[#workers + 1] = w end
  local can_pin = #workers > 0 and sh("command -v taskset >/dev/null 2>&1")
    and tonumber(capture("nproc 2>/dev/null"):match("%d+") or "1") >= 2
  return workers, can_pin
end

--- Pins this process (children inherit it) to client_cpu and the workers to
-- server_cpu. @return false when pinning is not possible
function M.pin(pid, workers, can_pin, client_cpu, server_cpu)
  if not can_pin then return false end
  sh("taskset -p -c " .. client_cpu .. " " .. pid .. " >/dev/null")
  for _, w in ipairs(workers) do sh("taskset -p -c " .. server_cpu .. " " .. w .. " >/dev/null") end
  return true
end

--- Builds bench/NAME.c into build/bench/NAME (when missing or older) and
-- returns the binary's path.
function M.build_c(root, name)
  local bin, src = root .. "/build/bench/" .. name, root .. "/bench/" .. name .. ".c"
  if not sh("test -x " .. q(bin) .. " && test " .. q(bin) .. " -nt " .. q(src)) then
    assert(sh("mkdir -p " .. q(root .. "/build/bench") .. " && cc -O2 -o " .. q(bin) .. " "
      .. q(src) .. " -lcurl"), "cannot build " .. name)
  end
  return bin
end

--- A control endpoint of the sandbox (GET/POST/DELETE /_sandbox/...) through
-- the curl CLI over TLS; returns the decoded JSON answer (or nil).
function M.control(info, method, path, body)
  local core = require("optimizely.offline.core")
  local cmd = "curl -sS --max-time 10 --cacert " .. q(info.ca_file) .. " -X " .. method
  if body then cmd = cmd .. " -H 'Content-Type: application/json' --data-binary " .. q(body) end
  local out = capture(cmd .. " " .. q(info.base_url .. path) .. " 2>/dev/null")
  local ok, v = pcall(core.json_decode, out)
  return ok and v or nil
end

--- The sandbox's stats since the last reset (doc/topics/sandbox.md).
function M.sandbox_stats(info) return M.control(info, "GET", "/_sandbox/stats") end
function M.sandbox_reset_stats(info) M.control(info, "DELETE", "/_sandbox/stats") end

--- Changes the running sandbox's settings ({delay_ms =, max_concurrent =, retry_after =}).
function M.sandbox_settings(info, t)
  local parts = {}
  for k, v in pairs(t) do parts[#parts + 1] = ("%q:%s"):format(k, tostring(v)) end
  return M.control(info, "POST", "/_sandbox/settings", "{" .. table.concat(parts, ",") .. "}")
end

--- The median of a list of numbers (nil when empty).
function M.median(list)
  local t = {}
  for i, v in ipairs(list) do t[i] = v end
  table.sort(t)
  local n = #t
  if n == 0 then return nil end
  if n % 2 == 1 then return t[(n + 1) / 2] end
  return (t[n / 2] + t[n / 2 + 1]) / 2
end

-- /proc/PID/stat fields after the command name (which may hold spaces)
local function stat_fields(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat")
  local s = f and f:read("*l")
  if f then f:close() end
  local rest = s and s:match("%) (.*)$")
  local t = {}
  for x in (rest or ""):gmatch("%S+") do t[#t + 1] = x end
  return t
end
local TICK = tonumber(capture("getconf CLK_TCK 2>/dev/null"):match("%d+") or "100") or 100

--- CPU seconds (user + system) a process has used so far; with `children`,
-- those of its waited-for children instead (e.g. a command run by os.execute).
function M.proc_cpu(pid, children)
  local t = stat_fields(pid)
  local u, s = children and t[14] or t[12], children and t[15] or t[13] -- fields 16/17 or 14/15
  return ((tonumber(u) or 0) + (tonumber(s) or 0)) / TICK
end

--- Seconds a process's threads have spent waiting for a CPU while runnable
-- (/proc/PID/task/*/schedstat): on a shared machine, the share of a run's
-- wall time a process waited says whether the CPU, not the code, was the
-- limit. Threads that already ended are not counted.
function M.cpu_wait(pid)
  local total = 0
  for tid in capture("ls /proc/" .. tostring(pid) .. "/task 2>/dev/null"):gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/task/" .. tid .. "/schedstat")
    local line = f and f:read("*l")
    if f then f:close() end
    local wait = line and line:match("^%d+ (%d+)")
    total = total + (tonumber(wait) or 0) / 1e9
  end
  return total
end

return M
