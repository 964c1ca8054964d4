--- Benchmark: adaptive concurrency against a server that refuses load. The
-- sandbox answers DELAY_MS late and answers 429 (Retry-After 0) when more
-- than N requests are in progress; send_batch may keep up to MAX in
-- flight. The adaptive limit (csrc/delivery/limiter.h) must find N by itself.
--
--   lua5.4 bench/adaptive.lua [ORDERS]          (per run, default 4000)
--   luajit bench/adaptive.lua
--   OO_BENCH_N=24 OO_BENCH_MAX=256 OO_BENCH_DELAY_MS=30 OO_BENCH_PIN=split|same|none
--
-- Three runs of the same number of distinct orders, in one process:
--   fixed N      {concurrency = N, adaptive = false}: the baseline, what a
--                user who knew N would configure (no 429s)
--   adaptive     {concurrency = MAX} (adaptive is the default)
--   fixed MAX    {concurrency = MAX, adaptive = false}: for contrast (it
--                halves on a 429 and creeps back)
-- Printed: throughput, the share of requests answered 429 (the sandbox's
-- count), the settled limit (the median of the limit sampled every 0.1 s
-- over the second half of the run) and the peak in flight the server saw.
-- Targets (adaptive): settled limit within 0.8..1.1 x N; < 1 % of requests
-- answered 429; throughput >= 0.90 x the fixed-N baseline.
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "bench_lib.lua")

local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local sandbox = require("optimizely.offline.sandbox")

local ORDERS = tonumber(arg[1]) or 4000
local N = tonumber(os.getenv("OO_BENCH_N") or "") or 24
local MAX = tonumber(os.getenv("OO_BENCH_MAX") or "") or 256
local DELAY_MS = tonumber(os.getenv("OO_BENCH_DELAY_MS") or "") or 30
local LAYOUT = os.getenv("OO_BENCH_PIN") or "split"
local SHARE_TARGET, THROUGHPUT_TARGET, SETTLE_LO, SETTLE_HI = 0.01, 0.90, 0.8, 1.1


local pid = lib.self_pid()
local info = lib.start_sandbox("bench-adaptive", pid, assert(offline.encode(lib.order("adapt", 1))),
  { delay_ms = DELAY_MS, max_concurrent = N, retry_after = 0 })
local workers, can_pin = lib.nginx_workers(info)
if LAYOUT ~= "none" and not can_pin then LAYOUT = "none" end
if LAYOUT == "split" then lib.pin(pid, workers, can_pin, 0, 1)
elseif LAYOUT == "same" then lib.pin(pid, workers, can_pin, 0, 0) end

print(("optimizely-offline adaptive concurrency bench: %s; sandbox delay %d ms, 429 (Retry-After: 0) above %d"
  .. " requests in progress; %d orders per run; CPU layout %s"):format(
  type(jit) == "table" and jit.version or _VERSION, DELAY_MS, N, ORDERS, LAYOUT))

local client = offline.client({ site = info.site, token = info.token, channel = info.channel,
  base_url = info.base_url, ca_file = info.ca_file, timeout = 30, max_attempts = 10 })


local function run(name, opts)
  local samples = {}
  opts.progress_interval = 0.1
  opts.progress = function(s) samples[#samples + 1] = { t = s.elapsed, limit = s.concurrency } end
  lib.sandbox_reset_stats(info)
  local t0 = core.now()
  local s = client:send_batch(lib.orders("adapt", ORDERS), opts)
  local secs = core.now() - t0
  assert(s.sent == ORDERS, ("%s: %d sent, %d failed"):format(name, s.sent, s.failed))
  local st = lib.sandbox_stats(info) or {}
  local late = {}
  for _, x in ipairs(samples) do
    if x.t >= secs / 2 then late[#late + 1] = x.limit end
  end
  return { name = name, rate = ORDERS / secs, secs = secs, requests = st.requests or 0,
    throttled = st.throttled or 0, share = (st.throttled or 0) / math.max(1, st.requests or 0),
    settled = lib.median(late) or 0, peak = st.concurrent_max or 0 }
end

local base = run("fixed N", { concurrency = N, adaptive = false })
local adapt = run("adaptive", { concurrency = MAX })
local crude = run("fixed MAX", { concurrency = MAX, adaptive = false })

print(("\n%-34s %9s %9s %8s %8s %8s %8s"):format("run", "orders/s", "vs N", "requests", "429s", "429 %",
  "settled"))
for _, r in ipairs({ base, adapt, crude }) do
  local label = r.name == "fixed N" and ("fixed N = %d (adaptive = false)"):format(N)
    or r.name == "adaptive" and ("adaptive, max %d (the default)"):format(MAX)
    or ("fixed max %d (adaptive = false)"):format(MAX)
  print(("%-34s %9.0f %8.2fx %8d %8d %7.2f%% %8g"):format(label, r.rate, r.rate / base.rate, r.requests,
    r.throttled, r.share * 100, r.settled))
end

local settle = adapt.settled / N
print(("\nadaptive: settled limit %g for N = %d: %.2f x N (target %.1f..%.1f: %s)"):format(adapt.settled, N, settle,
  SETTLE_LO, SETTLE_HI, (settle >= SETTLE_LO and settle <= SETTLE_HI) and "met" or "NOT met"))
print(("adaptive: %.2f %% of requests answered 429 (target < %g %%: %s)"):format(adapt.share * 100,
  SHARE_TARGET * 100, adapt.share < SHARE_TARGET and "met" or "NOT met"))
print(("adaptive: throughput %.2f x the fixed-N baseline (target >= %.2f: %s)"):format(adapt.rate / base.rate,
  THROUGHPUT_TARGET, adapt.rate / base.rate >= THROUGHPUT_TARGET and "met" or "NOT met"))

client:close()
sandbox.stop({ dir = info.dir })
lib.sh("rm -rf " .. lib.q(info.dir))
