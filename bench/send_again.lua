-- Benchmark: `optimizely-offline send` run again on a file it already sent
-- in full (issue 17 §3): nothing is left to send, so the run reads,
-- validates and encodes every order, fingerprints it and finds it in the
-- ledger. Target: at least 0.8x the speed of `validate` on the same file,
-- with a peak RSS under 64 MiB; both measured here, in the same run, with
-- /usr/bin/time -v.
--
--   lua5.4 bench/send_again.lua                 (1,000,000 orders)
--   lua5.4 bench/send_again.lua --orders 200000 --runs 1
--   luajit bench/send_again.lua --quick         (100,000 orders, one run each)
--
-- The file (realistic orders: three items, a store, distinct refCodes) is
-- made once in build/bench/ and kept (KEEP=0 removes it). The ledger is
-- filled through the library, with the bodies `send` would post, under the
-- scope `send` uses; the timed run must then say that every order was
-- already sent (its --report is checked), so a fill that does not match
-- fails the bench instead of measuring something else. The run points at a
-- local sandbox (record off), so an order it did send would be seen there.
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "bench_lib.lua")

local offline = require("optimizely.offline")
local ledger = require("optimizely.offline.ledger")
local core = require("optimizely.offline.core")

local ORDERS, RUNS = 1000000, 2
do
  local i = 1
  while arg[i] do
    if arg[i] == "--orders" then
      ORDERS = assert(tonumber(arg[i + 1]), "--orders N")
      i = i + 1
    elseif arg[i] == "--runs" then
      RUNS = assert(tonumber(arg[i + 1]), "--runs N")
      i = i + 1
    elseif arg[i] == "--quick" then
      ORDERS, RUNS = 100000, 1
    else
      error("usage: bench/send_again.lua [--orders N] [--runs N] [--quick]")
    end
    i = i + 1
  end
end
local SPEED_TARGET, RSS_TARGET = 0.8, 64
local q, sh, capture = lib.q, lib.sh, lib.capture
local LUA = arg[-1] or "lua5.4"
local ROOT = lib.ROOT
local BIN = ROOT .. "/bin/optimizely-offline"

-- ------------------------------------------------------------------ the file

local DIR = ROOT .. "/build/bench"
local FILE = ("%s/again-%d.ndjson"):format(DIR, ORDERS)

-- Each line is an encoded order: what `send` reads back and encodes again.
local function make_file()
  sh("mkdir -p " .. q(DIR))
  local f = assert(io.open(FILE .. ".tmp", "wb"))
  local buf, k = {}, 0
  for i = 1, ORDERS do
    local o = lib.realistic_order("AGAIN", i)
    o.order.attributes.store = "store-" .. (i % 200)
    k = k + 1
    buf[k] = assert(offline.encode(o))
    if k == 4096 then
      f:write(table.concat(buf, "\n"), "\n")
      buf, k = {}, 0
    end
  end
  if k > 0 then f:write(table.concat(buf, "\n", 1, k), "\n") end
  f:close()
  assert(os.rename(FILE .. ".tmp", FILE))
end

local function file_ok()
  local f = io.open(FILE, "rb")
  if not f then return false end
  local size = f:seek("end")
  f:close()
  return size > 0
end

if not file_ok() then
  io.write("generating ", FILE, " (", ORDERS, " orders)...\n")
  make_file()
end

-- ------------------------------------------------------- sandbox and ledger

local pid = lib.self_pid()
local info, work = lib.start_sandbox("again", pid, "{}")
local state = work .. "/state" -- XDG_STATE_HOME: `send` keeps its default ledger under it
local LEDGER = state .. "/optimizely-offline/ledger.db"

local ENV = {
  OPTIMIZELY_SITE = info.site, OPTIMIZELY_SITE_TOKEN = info.token, OPTIMIZELY_CHANNEL = info.channel,
  OPTIMIZELY_BASE_URL = info.base_url, OPTIMIZELY_CA_FILE = info.ca_file, XDG_STATE_HOME = state,
}

-- Fills the ledger with every order of the file, as acknowledged (what a
-- first `send` leaves), under the scope `send` keys them by.
local function fill()
  local client = assert(offline.client({ site = info.site, token = info.token, channel = info.channel,
    base_url = info.base_url, ca_file = info.ca_file }))
  local scope = ledger.scope(client:url(), info.site, info.channel)
  client:close()
  sh("mkdir -p -m 700 " .. q(state .. "/optimizely-offline"))
  local L = assert(ledger.open(LEDGER))
  local list, n = {}, 0
  local t0 = core.now()
  for line in io.lines(FILE) do
    n = n + 1
    list[#list + 1] = line
    if #list == 10000 then
      assert(L:record(scope, list, { outcome = "sent" }))
      list = {}
    end
  end
  if #list > 0 then assert(L:record(scope, list, { outcome = "sent" })) end
  L:close()
  io.write(("ledger filled: %d orders in %.1f s (%s)\n"):format(n, core.now() - t0, LEDGER))
end

fill()

-- ------------------------------------------------------------------ timing

local function env_prefix()
  local parts = { "env" }
  for _, v in ipairs({ "OPTIMIZELY_SITE", "OPTIMIZELY_SITE_TOKEN", "OPTIMIZELY_CHANNEL", "OPTIMIZELY_BASE_URL",
    "OPTIMIZELY_CA_FILE", "OPTIMIZELY_ENV" }) do
    parts[#parts + 1] = "-u " .. v
  end
  for k, v in pairs(ENV) do parts[#parts + 1] = q(k .. "=" .. v) end
  return table.concat(parts, " ")
end

-- Runs the command line under /usr/bin/time -v: wall seconds, peak RSS
-- (MiB), CPU seconds (user + sys: what the shared machine's other work
-- moves least).
local function timed(args)
  local tf, out = work .. "/time.txt", work .. "/out.txt"
  local cmd = ("%s /usr/bin/time -v -o %s %s %s %s >%s 2>&1"):format(env_prefix(), q(tf), LUA, q(BIN),
    table.concat(args, " "), q(out))
  local ok = sh(cmd)
  local t = lib.capture("cat " .. q(tf))
  local wall = t:match("Elapsed %(wall clock%) time[^\n]*: ([%d:%.]+)")
  local secs = 0
  for part in (wall or ""):gmatch("[%d%.]+") do secs = secs * 60 + tonumber(part) end
  local rss = tonumber(t:match("Maximum resident set size %(kbytes%): (%d+)") or "0") / 1024
  local cpu = tonumber(t:match("User time %(seconds%): ([%d%.]+)") or "0")
    + tonumber(t:match("System time %(seconds%): ([%d%.]+)") or "0")
  if not ok then error("failed: " .. cmd .. "\n" .. capture("head -c 3000 " .. q(out))) end
  return secs, rss, cpu
end

local report = work .. "/report.json"
local best = { validate = { math.huge, 0 }, send = { math.huge, 0 } }
local cpu = { validate = {}, send = {} }
for r = 1, RUNS do
  local vs, vr, vc = timed({ "validate", "-q", q(FILE) })
  local ss, sr, sc = timed({ "send", "-q", q(FILE), "--report", q(report) })
  cpu.validate[r], cpu.send[r] = vc, sc
  local rep = assert(core.json_decode(lib.capture("cat " .. q(report))))
  if rep.sent ~= 0 or rep.skipped ~= ORDERS or rep.read ~= ORDERS then
    error(("the second send was not a run with nothing to send: read %s, sent %s, skipped %s"):format(
      tostring(rep.read), tostring(rep.sent), tostring(rep.skipped)))
  end
  io.write(("run %d: validate %.2f s (CPU %.2f s, %.1f MiB), send again %.2f s (CPU %.2f s, %.1f MiB): "
    .. "%d already sent\n"):format(r, vs, vc, vr, ss, sc, sr, rep.skipped))
  if vs < best.validate[1] then best.validate = { vs, vr } end
  if ss < best.send[1] then best.send = { ss, sr } end
  best.validate[2] = math.max(best.validate[2], vr)
  best.send[2] = math.max(best.send[2], sr)
end

local vrate, srate = ORDERS / best.validate[1], ORDERS / best.send[1]
local ratio = srate / vrate
io.write(("%s, %d orders, best of %d:\n"):format(LUA, ORDERS, RUNS))
io.write(("  validate:   %9.0f orders/s, peak RSS %.1f MiB\n"):format(vrate, best.validate[2]))
io.write(("  send again: %9.0f orders/s, peak RSS %.1f MiB\n"):format(srate, best.send[2]))
-- CPU time: the lowest and the median of the runs, each command's own
local function low_median(list)
  table.sort(list)
  local n = #list
  return list[1], n % 2 == 1 and list[(n + 1) / 2] or (list[n / 2] + list[n / 2 + 1]) / 2
end
local vlow, vmed = low_median(cpu.validate)
local slow, smed = low_median(cpu.send)
io.write(("  CPU (user+sys): validate lowest %.2f s, median %.2f s; send again lowest %.2f s, median %.2f s\n")
  :format(vlow, vmed, slow, smed))
io.write(("  CPU speed %.2fx validate (lowest), %.2fx (median)\n"):format(vlow / slow, vmed / smed))
io.write(("  speed %.2fx validate (target >= %.1fx: %s); peak RSS %.1f MiB (target < %d: %s)\n"):format(ratio,
  SPEED_TARGET, ratio >= SPEED_TARGET and "met" or "NOT met", best.send[2], RSS_TARGET,
  best.send[2] < RSS_TARGET and "met" or "NOT met"))
if os.getenv("KEEP") == "0" then os.remove(FILE) end
