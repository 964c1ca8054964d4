-- Fault run of the spool-backed queue: no order may be lost.
--
--   lua5.4 bench/fault_run.lua                    10,000 orders, sandbox stopped 20 s (~75 s)
--   lua5.4 bench/fault_run.lua --orders 1000 --quick   the CI size (~25 s)
--   luajit bench/fault_run.lua ...                (any Lua; OO_CPATH picks another build)
--
-- A pusher subprocess (spec/support/queue_pusher.lua) pushes the orders
-- F-1..F-N, in order and at a steady rate, into a spool file through
-- `client:queue{spool=...}`, recording after each push that returned how far
-- it got. Meanwhile a local sandbox (real nginx over TLS on 127.0.0.1):
--   1. answers 503 to everything for a while,
--   2. closes every connection without an answer for a while,
--   3. meanwhile (with a backlog in the spool) the pusher is killed with
--      SIGKILL and started again on the same spool: it resumes after its
--      last recorded push and delivers whatever the spool holds (the rows
--      the dead process had leased come back when their lease runs out),
--   4. the sandbox is stopped for 20 s (3 s with --quick) and started again
--      on the same port and directory (its records survive).
-- At the end every refCode must be in the sandbox's records or in the
-- spool's dead letters. Prints
--   fault run: N orders, L lost, D duplicates, M dead
-- and exits 1 if any order is lost (or was never pushed, or is still queued).
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
local variant = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.cpath = (os.getenv("OO_CPATH") or ("build/" .. variant .. "/?.so")) .. ";" .. package.cpath

local core = require("optimizely.offline.core")
local sandbox = require("optimizely.offline.sandbox")
local spool = require("optimizely.offline.spool")
local sbc = require("support.sandbox")

local N, quick = 10000, false
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--quick" then quick = true
    elseif a == "--orders" then
      N = tonumber(arg[i + 1]) or error("--orders needs a number")
      i = i + 1
    else
      io.stderr:write("usage: fault_run.lua [--orders N] [--quick]\n")
      os.exit(2)
    end
    i = i + 1
  end
end
assert(N >= 1 and N == math.floor(N), "--orders must be a positive integer")

local sys = require("optimizely.offline.sys")
local q, capture, read = sys.q, sys.capture, sys.read_file
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- timeline (seconds from the start) and pusher settings
local T = quick and {
  push_for = 8, e503 = { 1, 2 }, eclose = { 2.5, 4 }, kill = 3.2, stop = { 5, 8 },
  timeout = 2, lease = 5, deadline = 90,
} or {
  push_for = 25, e503 = { 3, 7 }, eclose = { 9, 14 }, kill = 11, stop = { 17, 37 },
  timeout = 5, lease = 12, deadline = 240,
}

local self_pid = sbc.self_pid()
local exe = capture("readlink /proc/" .. self_pid .. "/exe"):gsub("%s+$", "")
local dir = capture("mktemp -d"):gsub("%s+$", "")
local sb_dir, spool_path = dir .. "/sandbox", dir .. "/orders.db"
local progress = dir .. "/progress"
local log = dir .. "/pusher.log"

-- A port below the ephemeral range: while the sandbox is stopped, thousands
-- of connects to 127.0.0.1:port would otherwise now and then get that very
-- port as their source port and connect to themselves (TCP self-connect),
-- which the TLS layer reports as "unexpected message" -- a permanent error.
local function start_sandbox()
  local lo = tonumber((read("/proc/sys/net/ipv4/ip_local_port_range") or ""):match("^%s*(%d+)")) or 32768
  local seed = tonumber(tostring({}):match("0x(%x+)") or "1", 16) or 1
  local last_err
  for i = 0, 20 do
    local port = 20000 + (seed + i * 7919) % math.max(1, lo - 20000)
    local info, err = sandbox.start({ dir = sb_dir, port = port, owner_pid = self_pid })
    if info then return info end
    last_err = err
  end
  error("cannot start the sandbox: " .. tostring(last_err))
end
local info = start_sandbox()
local sb = sbc.client(info)
local t0, epoch0 = core.now(), spool.now()
local function at(t) -- sleeps until t seconds after the start
  local d = t0 + t - core.now()
  if d > 0 then core.sleep(d) end
end
local function say(fmt, ...)
  io.write(("[%6.1fs] "):format(core.now() - t0), fmt:format(...), "\n")
  io.flush()
end

-- The pusher runs under a tiny launcher that records its pid (exec keeps it)
-- and, in the subshell around it, its exit status.
local runs = 0
local function start_pusher()
  runs = runs + 1
  local rate = N / T.push_for
  local script = dir .. "/run" .. runs .. ".sh"
  write(script, table.concat({
    "echo $$ > " .. q(dir .. "/pusher.pid"),
    "exec env LUA_PATH=" .. q(package.path) .. " LUA_PATH_5_4=" .. q(package.path)
      .. " LUA_CPATH=" .. q(package.cpath) .. " LUA_CPATH_5_4=" .. q(package.cpath)
      .. " " .. q(exe) .. " spec/support/queue_pusher.lua"
      .. " base_url=" .. q(info.base_url) .. " ca_file=" .. q(info.ca_file)
      .. " site=" .. q(info.site) .. " token=" .. q(info.token) .. " channel=" .. q(info.channel)
      .. " spool=" .. q(spool_path) .. " progress=" .. q(progress)
      .. " prefix=F- to=" .. N .. " group=10 rate=" .. rate
      .. " timeout=" .. T.timeout .. " lease=" .. T.lease
      .. " max_attempts=100 backoff_base=0.1 backoff_max=2 concurrency=4"
      .. " deadline=" .. T.deadline,
  }, "\n") .. "\n")
  os.remove(dir .. "/pusher.pid")
  os.execute("(sh " .. q(script) .. "; echo $? > " .. q(dir .. "/rc" .. runs) .. ") >>" .. q(log)
    .. " 2>&1 &")
  local pid
  for _ = 1, 200 do
    pid = tonumber((read(dir .. "/pusher.pid") or ""):match("%d+"))
    if pid then break end
    core.sleep(0.01)
  end
  say("pusher #%d started (pid %s), resuming after order %s", runs, tostring(pid),
    (read(progress) or "0"):match("%d+") or "0")
  return pid
end

local function pushed_so_far()
  return tonumber((read(progress) or ""):match("%d+")) or 0
end

local status = 1
local ok, err = pcall(function()
  say("%d orders, %s mode, sandbox %s, spool %s", N, quick and "quick" or "full", info.base_url, spool_path)
  local pid = start_pusher()

  at(T.e503[1])
  sb:faults({ count = 1000000000, status = 503 })
  say("sandbox answers 503 to everything (pushed %d)", pushed_so_far())
  at(T.e503[2])
  sb:clear_faults()
  say("503s over")

  at(T.eclose[1])
  sb:faults({ count = 1000000000, close = true })
  say("sandbox closes every connection (pushed %d)", pushed_so_far())
  at(T.kill) -- while connections are being closed: the spool has a backlog
  local before = pushed_so_far()
  os.execute("kill -9 " .. pid)
  for _ = 1, 500 do
    if (read(dir .. "/rc" .. runs) or ""):match("%d") then break end
    core.sleep(0.01)
  end
  say("pusher killed with SIGKILL after pushing %d (exit %s)", before,
    ((read(dir .. "/rc" .. runs) or "?"):gsub("%s", "")))
  start_pusher()

  at(T.eclose[2])
  sb:clear_faults()
  say("connection closing over")

  at(T.stop[1])
  assert(sandbox.stop({ dir = sb_dir }))
  say("sandbox stopped (pushed %d)", pushed_so_far())
  at(T.stop[2])
  local info2 = assert(sandbox.start({ dir = sb_dir, port = info.port, owner_pid = self_pid }))
  assert(info2.base_url == info.base_url, "the sandbox came back on another port")
  say("sandbox started again (pushed %d)", pushed_so_far())

  -- the pusher exits once everything is pushed and the spool is empty
  local deadline = core.now() + T.deadline
  while not (read(dir .. "/rc" .. runs) or ""):match("%d") and core.now() < deadline do core.sleep(0.2) end
  local rc = ((read(dir .. "/rc" .. runs) or ""):match("%d+")) or "timeout"
  say("pusher #%d finished: exit %s", runs, rc)
  if rc == "timeout" then os.execute("kill -9 " .. (read(dir .. "/pusher.pid") or ""):gsub("%s", "")) end

  -- the verdict: every refCode recorded by the sandbox or dead in the spool
  local recs = sb:orders()
  local counts = {}
  for _, r in ipairs(recs) do
    if type(r.refCode) == "string" then counts[r.refCode] = (counts[r.refCode] or 0) + 1 end
  end
  local sp = assert(spool.open(spool_path))
  local dead, ndead, after, why = {}, 0, 0, {}
  while true do
    local rows = assert(sp:list({ dead = true, limit = 1000, after = after }))
    for _, row in ipairs(rows) do
      if not dead[row.ref] then ndead = ndead + 1 end
      dead[row.ref] = true
      local k = tostring(row.kind) .. (row.status and (" " .. row.status) or "") .. ": "
        .. tostring(row.message):gsub("after %d+ attempts?", "after N attempts")
      local w = why[k] or { n = 0, first = math.huge, last = 0 }
      w.n = w.n + 1
      w.first = math.min(w.first, row.failed_at - epoch0)
      w.last = math.max(w.last, row.failed_at - epoch0)
      why[k] = w
      after = row.id
    end
    if #rows < 1000 then break end
  end
  for k, w in pairs(why) do
    say("dead letters: %d x %s (failed between %.1fs and %.1fs)", w.n, k, w.first, w.last)
  end
  local st = assert(sp:stats())
  sp:close()
  local lost, dups, lost_list = 0, 0, {}
  for i = 1, N do
    local ref = "F-" .. i
    local c = counts[ref] or 0
    if c > 1 then dups = dups + c - 1 end
    if c == 0 and not dead[ref] then
      lost = lost + 1
      if #lost_list < 10 then lost_list[#lost_list + 1] = ref end
    end
  end
  local pushed = pushed_so_far()
  io.write(read(log) or "", "")
  say("sandbox recorded %d requests; spool: %d queued, %d dead; pushed %d of %d", #recs, st.queued,
    st.dead, pushed, N)
  if #lost_list > 0 then say("lost (first %d): %s", #lost_list, table.concat(lost_list, " ")) end
  print(("fault run: %d orders, %d lost, %d duplicates, %d dead"):format(N, lost, dups, ndead))
  if lost == 0 and st.queued == 0 and pushed == N then status = 0 end
end)
if not ok then io.stderr:write("fault run failed: ", tostring(err), "\n") end
local pid = tonumber((read(dir .. "/pusher.pid") or ""):match("%d+"))
if pid and not read(dir .. "/rc" .. runs) then os.execute("kill -9 " .. pid .. " 2>/dev/null") end
sandbox.stop({ dir = sb_dir })
os.execute("rm -rf " .. q(dir))
os.exit(status)
