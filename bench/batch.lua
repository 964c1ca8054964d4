--- Benchmark: concurrent sending, 16 requests in flight, against one local
-- sandbox (real nginx, real TLS, record=false).
--
--   lua5.4 bench/batch.lua [N [ROUNDS [WRK_SECONDS]]]      (defaults 20000 5 2)
--   luajit bench/batch.lua
--   lua5.4 bench/batch.lua --ledger [N [ROUNDS]]
--     send_batch with a ledger (a SQLite file in the bench's directory,
--     growing by N orders a run) against send_batch without one, the two
--     alternating; prints the ratio of their speeds and the target (issue
--     17 §3: >= 0.90)
--   OO_BENCH_PIN=split|same|none  CPU layout (default split, see below)
--
-- Compares, in requests per second, all HTTP/1.1 keep-alive over verified
-- TLS (the client's default version) with 16 in flight:
--   send_batch   client:send_batch(iterator, {concurrency = 16}): N distinct
--                orders, validation + encoding + response decoding included
--   C multi      bench/batch_multi.c: the same bytes N times through one curl
--                multi handle, 16 reused easy handles (OO_HTTP=1.1)
--   curl -Z      curl --parallel --parallel-max 16, N URLs from a config file
--   wrk          wrk -c16 -t1 with bench/wrk_post.lua (no certificate check)
-- The four alternate, rotating their order every round; each keeps its best
-- round (the noise on a 2-vCPU VM is large).
--
-- CPU layout (taskset): "split" = every client on CPU 0, the nginx worker on
-- CPU 1 — client and server never fight for a core, so each result is the
-- client's own cost plus the server's; "same" = all on CPU 0; "none" = the
-- scheduler decides.
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "bench_lib.lua")
local ROOT = lib.ROOT

local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local sandbox = require("optimizely.offline.sandbox")

local LEDGER = arg[1] == "--ledger"
if LEDGER then table.remove(arg, 1) end
local N = tonumber(arg[1]) or 20000
local ROUNDS = tonumber(arg[2]) or 5
local WRK_SECONDS = tonumber(arg[3]) or 2
local CONC = 16
local LAYOUT = os.getenv("OO_BENCH_PIN") or "split"

local q, sh, capture = lib.q, lib.sh, lib.capture

local pid = lib.self_pid()
local info, work, url, body_file = lib.start_sandbox("bench-batch", pid, assert(offline.encode(lib.order("batch", 1))))

-- CPU placement ---------------------------------------------------------
local workers, can_pin = lib.nginx_workers(info)
if LAYOUT ~= "none" and not can_pin then LAYOUT = "none" end
local function pin(client_cpu, server_cpu) lib.pin(pid, workers, can_pin, client_cpu, server_cpu) end
if LAYOUT == "split" then pin(0, 1) elseif LAYOUT == "same" then pin(0, 0) end

print(string.format("optimizely-offline batch bench: %s, libcurl %s, sandbox %s (record=false, 1 worker)",
  (type(jit) == "table" and jit.version or _VERSION), (core.curl_version()), info.base_url))
print(string.format("%d requests per run, %d in flight, HTTP/1.1 over TLS, best of %d rounds, CPU layout: %s",
  N, CONC, ROUNDS, LAYOUT == "split" and "split (clients CPU 0, nginx CPU 1)"
    or LAYOUT == "same" and "same (clients and nginx on CPU 0)" or "none (unpinned)"))

-- 1. send_batch ---------------------------------------------------------
local client = offline.client({ site = info.site, token = info.token, channel = info.channel,
  base_url = info.base_url, ca_file = info.ca_file })
-- every order distinct (lib.orders): each goes through validation and encoding
local function run_ours(n)
  local source = lib.orders("batch", n)
  local t0, c0 = core.now(), os.clock()
  local s = client:send_batch(source, { concurrency = CONC })
  local secs, cpu = core.now() - t0, os.clock() - c0
  assert(s.sent == n and s.failed == 0, "send_batch: " .. s.sent .. " sent, " .. s.failed .. " failed")
  return n / secs, cpu * 1e6 / n
end

-- send_batch with a ledger ---------------------------------------------------
if LEDGER then
  local ledger_path = work .. "/ledger.db"
  local L = assert(require("optimizely.offline.ledger").open(ledger_path))
  local function run_ledgered(n)
    local source = lib.orders("batch", n)
    local t0, c0 = core.now(), os.clock()
    local s = assert(client:send_batch(source, { concurrency = CONC, ledger = L }))
    local secs, cpu = core.now() - t0, os.clock() - c0
    assert(s.sent == n and s.failed == 0 and s.skipped == 0,
      "send_batch with a ledger: " .. s.sent .. " sent, " .. s.failed .. " failed, " .. s.skipped .. " skipped")
    return n / secs, cpu * 1e6 / n
  end
  run_ours(math.min(N, 2000))
  run_ledgered(math.min(N, 2000))
  local plain, led, cp, cl, per = {}, {}, {}, {}, {}
  for r = 1, ROUNDS do
    local a, ca, b, cb
    if r % 2 == 1 then
      a, ca = run_ours(N)
      b, cb = run_ledgered(N)
    else
      b, cb = run_ledgered(N)
      a, ca = run_ours(N)
    end
    plain[r], led[r], cp[r], cl[r], per[r] = a, b, ca, cb, b / a
    io.stderr:write(string.format("round %d: send_batch=%.0f with ledger=%.0f (%.2f)\n", r, a, b, b / a))
  end
  local function best(t) local m = 0 for _, v in ipairs(t) do m = math.max(m, v) end return m end
  print(string.format("\n%-44s %10s %12s", "sender", "best req/s", "CPU us/req"))
  print(string.format("%-44s %10.0f %12.1f", "client:send_batch", best(plain), lib.median(cp)))
  print(string.format("%-44s %10.0f %12.1f", "client:send_batch, ledger = " .. "<file>", best(led), lib.median(cl)))
  local ratio = best(led) / best(plain)
  print(string.format("\nledger / none  best/best %5.2f   median of rounds %5.2f   (target >= 0.90: %s)",
    ratio, lib.median(per), ratio >= 0.9 and "met" or "NOT met"))
  -- on a machine shared with other work the rates swing; the CPU each
  -- order costs this process (both threads) does not: a client bound by
  -- its own CPU runs at this ratio
  local cpu_ratio = lib.median(cp) / lib.median(cl)
  print(string.format("CPU per order none / ledger %5.2f   (the speed of a CPU-bound client; target >= 0.90: %s)",
    cpu_ratio, cpu_ratio >= 0.9 and "met" or "NOT met"))
  print(string.format("ledger: %s, %d rows after the runs", ledger_path, #assert(L:report({ by = "currency" }))
    > 0 and assert(L:report({ by = "currency" }))[1].sent.orders or 0))
  L:close()
  client:close()
  sandbox.stop({ dir = info.dir })
  sh("rm -rf " .. q(info.dir))
  os.exit(0)
end

-- CPU seconds (user + system) of a child command, measured by /usr/bin/time
local time_file = work .. "/time.out"
local has_time = sh("test -x /usr/bin/time")
local function timed(cmd)
  if not has_time then return cmd end
  return "/usr/bin/time -f 'cpu=%U %S' -o " .. q(time_file) .. " " .. cmd
end
local function child_cpu()
  if not has_time then return nil end
  local f = io.open(time_file, "rb")
  local t = f and f:read("*a") or ""
  if f then f:close() end
  local u, s = t:match("cpu=([%d.]+) ([%d.]+)")
  return u and (tonumber(u) + tonumber(s)) or nil
end

-- 2. C multi --------------------------------------------------------------
local multi_bin = lib.build_c(ROOT, "batch_multi")
local function run_multi(n)
  local out = capture("OO_HTTP=1.1 " .. timed(table.concat({ q(multi_bin), q(url), q(info.ca_file),
    q(body_file), tostring(n), tostring(CONC), q(info.site), q(info.token), q(info.channel) }, " ")))
  local failed, rps = out:match("failed=(%d+) seconds=[%d.]+ rps=([%d.]+)")
  assert(failed == "0", "batch_multi failed: " .. out)
  local cpu = child_cpu()
  return tonumber(rps), cpu and cpu * 1e6 / n
end

-- 3. curl --parallel ------------------------------------------------------
local curl_cfg = work .. "/urls.curl"
do
  local line = "url = \"" .. url .. "\"\n"
  lib.write(curl_cfg, line:rep(N))
end
local curl_cmd = "curl -sS --no-progress-meter --fail --http1.1 --parallel --parallel-max " .. CONC
  .. " --cacert " .. q(info.ca_file)
  .. " -H " .. q("site: " .. info.site) .. " -H " .. q("siteToken: " .. info.token)
  .. " -H " .. q("channel: " .. info.channel) .. " -H 'Content-Type: application/json'"
  .. " -H 'Accept: application/json' --data-binary @" .. q(body_file)
  .. " -K " .. q(curl_cfg) .. " >/dev/null"
local function run_curl(n)
  assert(n == N)
  local t0 = core.now()
  assert(sh(timed(curl_cmd)), "curl --parallel failed")
  local secs, cpu = core.now() - t0, child_cpu()
  return n / secs, cpu and cpu * 1e6 / n
end

-- 4. wrk --------------------------------------------------------------------
local has_wrk = sh("command -v wrk >/dev/null 2>&1")
local wrk_cmd = table.concat({ "env", "WRK_BODY=" .. q(body_file), "WRK_SITE=" .. q(info.site),
  "WRK_TOKEN=" .. q(info.token), "WRK_CHANNEL=" .. q(info.channel),
  "wrk -c" .. CONC, "-t1", "-d" .. WRK_SECONDS .. "s", "-s", q(ROOT .. "/bench/wrk_post.lua"), q(url) }, " ")
local function run_wrk()
  local out = capture(timed(wrk_cmd) .. " 2>&1")
  local requests, rps, errors = out:match("wrk requests=(%d+) seconds=[%d.]+ rps=([%d.]+) errors=(%d+)")
  assert(rps and errors == "0", "wrk failed: " .. out)
  local cpu = child_cpu()
  return tonumber(rps), cpu and cpu * 1e6 / tonumber(requests)
end

-- rounds ----------------------------------------------------------------
local runners = {
  { name = "send_batch", label = "client:send_batch (validate+encode+send)", run = run_ours },
  { name = "multi", label = "C curl multi (bench/batch_multi.c)", run = run_multi },
  { name = "curl", label = "curl --parallel --parallel-max 16", run = run_curl },
}
if has_wrk then
  runners[#runners + 1] = { name = "wrk", label = "wrk -c16 -t1 (" .. WRK_SECONDS .. " s runs)", run = run_wrk }
end

-- warm up: connections, JIT, page cache
run_ours(math.min(N, 2000))
run_multi(math.min(N, 2000))

local best, rounds, raw, cpus = {}, {}, {}, {}
for r = 1, ROUNDS do
  local line = {}
  for k = 0, #runners - 1 do
    local x = runners[(r - 1 + k) % #runners + 1]
    local rps, cpu = x.run(N)
    best[x.name] = math.max(best[x.name] or 0, rps)
    rounds[x.name] = rounds[x.name] or {}
    rounds[x.name][r] = string.format("%.0f", rps)
    raw[x.name] = raw[x.name] or {}
    raw[x.name][r] = rps
    if cpu then
      cpus[x.name] = cpus[x.name] or {}
      cpus[x.name][#cpus[x.name] + 1] = cpu
    end
    line[#line + 1] = x.name .. "=" .. string.format("%.0f", rps)
  end
  io.stderr:write("round " .. r .. ": " .. table.concat(line, " ") .. "\n")
end
client:close()

local median = lib.median

-- report -------------------------------------------------------------------
print(string.format("\n%-44s %10s %12s   %s", "sender", "best req/s", "CPU us/req", "req/s per round"))
for _, x in ipairs(runners) do
  local cpu = cpus[x.name] and median(cpus[x.name])
  print(string.format("%-44s %10.0f %12s   %s", x.label, best[x.name],
    cpu and string.format("%.1f", cpu) or "-", table.concat(rounds[x.name], " ")))
end
print("(CPU us/req: the client process's user+system CPU per request, median of the rounds)")
local ours = best.send_batch
local function ratio(name, target)
  if not best[name] then return end
  local r = ours / best[name]
  -- the same ratio per round (the two runs close in time), then the median:
  -- less exposed to one lucky or unlucky run than best/best
  local per = {}
  for i = 1, ROUNDS do per[i] = raw.send_batch[i] / raw[name][i] end
  print(string.format("send_batch / %-6s best/best %5.2f   median of rounds %5.2f%s", name, r, median(per),
    target and string.format("   (target >= %.2f: %s)", target, r >= target and "met" or "NOT met") or ""))
end
print("")
ratio("multi", 0.9)
ratio("curl", 1.3)
ratio("wrk", nil)

sandbox.stop({ dir = info.dir })
sh("rm -rf " .. q(info.dir))
