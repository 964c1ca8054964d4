--- Benchmark: the cost of the log_by_lua checkout hook on request latency.
--
--   lua5.4 bench/nginx_hook.lua [SECONDS [ROUNDS [QUEUE [PIN]]]]   (defaults 5 3 worker nopin)
--
-- QUEUE: "worker" (default: one nginx worker, its own memory queue, delivery
-- in the same worker), "shared" (two workers appending to a lua_shared_dict,
-- worker 0 delivers for both) or "shared1" (one worker, shared dict: the
-- dict's cost alone). PIN: "pin" puts nginx on CPU 0 and wrk + the sandbox
-- on CPU 1 (taskset), so the client and the upstream do not steal the
-- serving worker's CPU; "nopin" leaves the scheduler alone.
--
-- Starts a sandbox with record=false (the endpoint the queue delivers to, no
-- file I/O) and the example nginx.conf (one worker, memory queue), and
-- compares two locations serving the same page:
--   /checkout-plain   return 200
--   /checkout         return 200 + log_by_lua hook: build an order from the
--                     query, offline.encode it, push it; the queue delivers it
--                     in the background (cosockets, TLS) in the same worker
-- in two load shapes, alternating plain/hook for ROUNDS rounds each:
--   saturated  wrk -t1 -c16 -dSECONDS --latency (closed loop: the CPU the hook
--              and its delivery take shows up as lost throughput and queueing)
--   paced      the same with a wrk script pausing 8 ms between a connection's
--              requests (~2000 req/s, the worker not saturated): the latency
--              a request sees with the hook
-- Before each round it waits until the queue is empty (a saturated hook
-- round leaves up to max_queue orders whose delivery would otherwise load
-- the CPUs during the next round, plain ones included),
-- and prints each location's median p99, the ratio hook/plain (target <= 1.10)
-- and the queue counters (a push refused because the queue is full counts as
-- dropped.full: the hook never blocks a request).
local function script_dir()
  local src = debug.getinfo(1, "S").source:sub(2)
  return src:match("^(.*)/[^/]*$") or "."
end
local ROOT = script_dir() .. "/.."
package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. ROOT .. "/spec/?.lua;" .. package.path

local sandbox = require("optimizely.offline.sandbox")
local nginx = require("support.nginx")
local launch = dofile(ROOT .. "/examples/openresty/launch.lua")

local SECONDS = tonumber(arg[1]) or 5
local ROUNDS = tonumber(arg[2]) or 3
local QUEUE = arg[3] or "worker"
local PIN = (arg[4] or "nopin") == "pin"
assert(SECONDS > 0 and SECONDS <= 60 and ROUNDS >= 1 and ROUNDS <= 5, "SECONDS 1..60, ROUNDS 1..5")
local QUEUES = {
  worker = { workers = 1, queue = {} },
  shared = { workers = 2, queue = { shm = "optimizely_offline", deliverer = 0 } },
  shared1 = { workers = 1, queue = { shm = "optimizely_offline", deliverer = 0 } },
}
assert(QUEUES[QUEUE], "QUEUE is worker, shared or shared1")

local function self_pid()
  return tonumber((nginx.read_file("/proc/self/stat") or ""):match("^(%d+)"))
end

local work = nginx.mktemp("bench-nginx")
local sb_dir = work .. "/sandbox"
local info = assert(sandbox.start({ dir = sb_dir, port = 0, record = false, owner_pid = self_pid() }))
local inst
local ok, err = pcall(function()
  inst = nginx.start({ dir = work .. "/nginx", health = "/queue/stats", write = function(port)
    return launch.write({ dir = work .. "/nginx", port = port, ca_file = info.ca_file,
      app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        queue = QUEUES[QUEUE].queue },
      vars = { workers = QUEUES[QUEUE].workers, extra_init_worker = nginx.watchdog_lua(self_pid()) } })
  end })
end)
if not ok then
  sandbox.stop({ dir = sb_dir })
  error(err)
end

-- Pin a process and its children (threads included) to one CPU.
local function pin(pid, cpu)
  local pids = { pid }
  for c in nginx.capture("cat /proc/" .. pid .. "/task/*/children 2>/dev/null"):gmatch("%d+") do
    pids[#pids + 1] = c
  end
  for i, p in ipairs(pids) do
    -- several nginx workers: spread them (worker 0 -> cpu, worker 1 -> the other)
    local c = (i == 1 or #pids == 2) and cpu or (cpu + i) % 2
    nginx.run("taskset -a -pc " .. c .. " " .. p .. " >/dev/null 2>&1")
  end
end
local WRK = "wrk"
if PIN then
  pin(inst:pid(), 0)
  local sb_pid = tonumber((nginx.read_file(info.pid_file or (sb_dir .. "/nginx.pid")) or ""):match("%d+"))
  if sb_pid then pin(sb_pid, 1) else print("warning: sandbox pid not found, not pinned") end
  WRK = "taskset -c 1 wrk"
end

local function to_ms(v, unit)
  v = tonumber(v)
  if unit == "us" then return v / 1000 end
  if unit == "s" then return v * 1000 end
  return v
end

local PACE_SCRIPT = work .. "/pace.lua"
do
  local f = assert(io.open(PACE_SCRIPT, "w"))
  f:write("function delay() return 8 end\n")
  f:close()
end

local function wrk(path, seconds, paced)
  local out = nginx.capture(WRK .. " -t1 -c16 -d" .. seconds .. "s --latency " .. (paced and ("-s " .. nginx.q(PACE_SCRIPT) .. " ") or "")
    .. nginx.q(inst:url(path)) .. " 2>&1")
  local v, unit = out:match("\n%s+99%%%s+([%d%.]+)(%a+)")
  local v50, unit50 = out:match("\n%s+50%%%s+([%d%.]+)(%a+)")
  local rps = tonumber(out:match("Requests/sec:%s+([%d%.]+)"))
  local errs = out:match("Non%-2xx or 3xx responses: (%d+)")
  assert(v and rps, "cannot parse wrk output:\n" .. out)
  assert(not errs, "wrk saw non-2xx responses:\n" .. out)
  return to_ms(v, unit), rps, to_ms(v50, unit50)
end

-- A saturated hook round leaves up to max_queue orders behind; delivering
-- them would load the CPUs during the next round: wait until the queue is
-- empty (bounded).
local function drain()
  nginx.wait_until(function()
    local body = inst:get("/queue/stats").body
    return body:find('"queued":0[,}]') and body:find('"in_flight":0[,}]')
  end, 60, 0.2)
end

local HOOK = "/checkout?sku=sku-1&qty=1&price=9.99&user=bench"
local PLAIN = "/checkout-plain?sku=sku-1&qty=1&price=9.99&user=bench"
local MODES = { "saturated", "paced" }

local res = {}
local run_ok, run_err = pcall(function()
  wrk(HOOK, 1) -- warm-up: connections to the sandbox, JIT traces
  wrk(PLAIN, 1)
  for _, mode in ipairs(MODES) do
    res[mode] = { plain = {}, hook = {} }
    for r = 1, ROUNDS do
      for _, which in ipairs({ "plain", "hook" }) do
        drain()
        local p99, rps, p50 = wrk(which == "hook" and HOOK or PLAIN, SECONDS, mode == "paced")
        res[mode][which][r] = { p99 = p99, rps = rps, p50 = p50 }
        print(("%-9s round %d  %-5s p50 %7.3f ms  p99 %7.3f ms  %9.0f req/s"):format(mode, r, which, p50, p99, rps))
      end
    end
  end
end)
local stats = inst:get("/queue/stats").body
inst:quit()
sandbox.stop({ dir = sb_dir })
nginx.run("rm -rf " .. nginx.q(work))
assert(run_ok, run_err)

local function median(list, key)
  local v = {}
  for i, x in ipairs(list) do v[i] = x[key] end
  table.sort(v)
  local n = #v
  return n % 2 == 1 and v[(n + 1) / 2] or (v[n / 2] + v[n / 2 + 1]) / 2
end

print(("nginx_hook: queue %s (%d worker(s)), %s, wrk -t1 -c16 -d%ds --latency, %d alternating rounds, medians"):format(
  QUEUE, QUEUES[QUEUE].workers, PIN and "pinned (nginx CPU 0; wrk, sandbox CPU 1)" or "not pinned", SECONDS, ROUNDS))
for _, mode in ipairs(MODES) do
  local p, h = res[mode].plain, res[mode].hook
  local pp, hp = median(p, "p99"), median(h, "p99")
  print(("  %-9s plain p50 %.3f p99 %.3f ms (%.0f req/s) | hook p50 %.3f p99 %.3f ms (%.0f req/s) | p99 ratio %.2f%s"):format(
    mode, median(p, "p50"), pp, median(p, "rps"), median(h, "p50"), hp, median(h, "rps"), hp / pp,
    mode == "paced" and (hp / pp <= 1.10 and "  (target <= 1.10: met)" or "  (target <= 1.10: NOT met)") or ""))
end
print("  queue: " .. stats:gsub("%s+$", ""))
