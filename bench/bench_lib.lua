--- Helpers the benchmarks share: shell and file calls, a record-less
-- sandbox with the request body on disk, nginx worker discovery and CPU
-- pinning, and building the C baselines.
local sandbox = require("optimizely.offline.sandbox")

local M = {}

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
-- @return info, work_dir, post_url, body_file
function M.start_sandbox(tag, pid, body)
  local dir = "/tmp/oo-sandbox-" .. tag .. "-" .. pid
  local info = assert(sandbox.start({ dir = dir, port = 0, record = false, owner_pid = pid,
    cleanup_dir = true }))
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

return M
