--- Benchmark: delivery from the spool against delivery from memory. The
-- same N orders, the same queue concurrency, the same local sandbox (real
-- nginx over TLS, record=false), one run:
--   memory   client:queue({concurrency = C}): push all N, flush; the time
--            from the first push to the end of the flush
--   spool    the N orders stored first (spool:put_many, no worker), then
--            client:queue({spool = file, concurrency = C}) opened on that
--            file: its thread claims, sends and acknowledges them all; the
--            time from the open to the end of the flush
-- Target: spool drain >= 0.8 x the in-memory rate. Several rounds,
-- alternating; the medians of the rates and of the per-round ratios.
--
--   lua5.4 bench/spool_drain.lua [N [ROUNDS]]      (defaults 20000 3)
--   luajit bench/spool_drain.lua
--   OO_BENCH_CONC=4   OO_BENCH_PIN=split|same|none
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "bench_lib.lua")

local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local spool = require("optimizely.offline.spool")
local sandbox = require("optimizely.offline.sandbox")

local N = tonumber(arg[1]) or 20000
local ROUNDS = tonumber(arg[2]) or 3
local CONC = tonumber(os.getenv("OO_BENCH_CONC") or "") or 4
local LAYOUT = os.getenv("OO_BENCH_PIN") or "split"
local TARGET = 0.8

local function payload(i) return lib.realistic_order("DRAIN", i) end

local pid = lib.self_pid()
local info, work = lib.start_sandbox("bench-drain", pid, assert(offline.encode(payload(1))))
local workers, can_pin = lib.nginx_workers(info)
if LAYOUT ~= "none" and not can_pin then LAYOUT = "none" end
if LAYOUT == "split" then lib.pin(pid, workers, can_pin, 0, 1)
elseif LAYOUT == "same" then lib.pin(pid, workers, can_pin, 0, 0) end

print(("optimizely-offline spool drain bench: %s, %d orders, concurrency %d, %d rounds, CPU layout %s"):format(
  type(jit) == "table" and jit.version or _VERSION, N, CONC, ROUNDS, LAYOUT))

local client = offline.client({ site = info.site, token = info.token, channel = info.channel,
  base_url = info.base_url, ca_file = info.ca_file })

-- the encoded orders, made once (both runs send the same bytes)
local items = {}
for i = 1, N do
  local p = payload(i)
  items[i] = { body = assert(offline.encode(p)), ref = p.order.refCode, payload = p }
end

local function run_memory()
  local qu = assert(client:queue({ concurrency = CONC, max_queue = N + 1 }))
  collectgarbage()
  local t0 = core.now()
  for i = 1, N do assert(qu:push(items[i].payload)) end
  assert(qu:flush(300))
  local secs = core.now() - t0
  assert(qu:stats().sent == N, "memory: not all sent")
  qu:close()
  return N / secs
end

local round = 0
local function run_spool()
  round = round + 1
  local path = work .. "/drain-" .. round .. ".db"
  local sp = assert(spool.open(path))
  local chunk = {}
  for i = 1, N, 100 do
    for k = 1, math.min(100, N - i + 1) do chunk[k] = items[i + k - 1] end
    for k = math.min(100, N - i + 1) + 1, #chunk do chunk[k] = nil end
    assert(sp:put_many(chunk))
  end
  sp:close()
  collectgarbage()
  local t0 = core.now()
  local qu = assert(client:queue({ spool = path, concurrency = CONC }))
  assert(qu:flush(300))
  local secs = core.now() - t0
  local st = qu:stats()
  assert(st.sent == N, ("spool: %d of %d sent"):format(st.sent, N))
  qu:close()
  os.remove(path)
  os.remove(path .. "-wal")
  os.remove(path .. "-shm")
  return N / secs
end

run_memory() -- warm-up: page cache, JIT
local mem, sp, ratios = {}, {}, {}
for r = 1, ROUNDS do
  local a, b
  if r % 2 == 1 then a = run_memory(); b = run_spool() else b = run_spool(); a = run_memory() end
  mem[r], sp[r], ratios[r] = a, b, b / a
  io.stderr:write(("round %d: memory %.0f/s, spool %.0f/s, ratio %.2f\n"):format(r, a, b, b / a))
end

local function list(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = ("%.0f"):format(v) end
  return table.concat(s, " ")
end
print(("\n%-44s %10s   %s"):format("delivery (queue, concurrency " .. CONC .. ")", "median/s", "per round"))
print(("%-44s %10.0f   %s"):format("from memory (push all, flush)", lib.median(mem), list(mem)))
print(("%-44s %10.0f   %s"):format("from the spool (preloaded, open, flush)", lib.median(sp), list(sp)))
local ratio = lib.median(ratios)
print(("\nspool drain / in-memory delivery: %.2f (median of the rounds' ratios; target >= %.2f: %s)"):format(
  ratio, TARGET, ratio >= TARGET and "met" or "NOT met"))

client:close()
sandbox.stop({ dir = info.dir })
lib.sh("rm -rf " .. lib.q(info.dir))
