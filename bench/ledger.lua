-- Ledger benchmark: its size and lookup cost as it grows, and what it adds
-- per order to a send, each against a baseline measured in the same run.
--   lua5.4 bench/ledger.lua                 (10M rows: a few minutes, ~1 GB of /tmp)
--   lua5.4 bench/ledger.lua --rows 1000000  (a smaller ledger)
--   luajit bench/ledger.lua --quick         (100k rows, fewer orders)
--
-- 1. Size and lookups. A ledger is filled to 10k, 1M and --rows rows (in
--    batches of 100k per transaction, in send order: refCodes and times
--    increasing, as a till's history is). At each size: bytes per row (the
--    file after a checkpoint / rows), and the cost of a lookup of a refCode
--    that is there: random ones, one per call (`check`: its own read
--    transaction) and in batches of 1000 (`check_many`), and in order in
--    batches of 1000 (a file sent again: neighbours share pages). Target:
--    lookups stay logarithmic. From 1M rows on, the random lookups read
--    their leaf pages from the OS's cache (the 8 MiB page cache holds the
--    upper levels): from 1M to 10M rows the cost may grow with the depth
--    (log(10M)/log(1M) = 1.17x) but at most 2x (a scan would be 10x). The
--    10k figure, all in SQLite's cache, is shown for reference.
-- 2. Per order: encode alone (the baseline), and encode + reserve + record
--    in batches of 100 on a fresh ledger (what a run sending new orders
--    adds), and encode + check_many (what a run re-reading a file already
--    sent pays). Target beside each: the ledger's share of a loopback
--    send_batch order (20 us at 50,000 req/s, doc/topics/benchmarks.md)
--    at most 10% (issue 17: send_batch with a ledger >= 0.9x without).
-- 3. For reference: a report over the whole ledger (by day, store,
--    currency, in Europe/London).
local lib = dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "bench_lib.lua")

local offline = require("optimizely.offline")
local ledger = require("optimizely.offline.ledger")
local core = require("optimizely.offline.core")
local sys = require("optimizely.offline.sys")

local ROWS, QUICK = 10000000, false
do
  local i = 1
  while arg[i] do
    if arg[i] == "--rows" then
      ROWS = assert(tonumber(arg[i + 1]), "--rows N")
      i = i + 1
    elseif arg[i] == "--quick" then
      QUICK, ROWS = true, 100000
    else
      error("usage: bench/ledger.lua [--rows N] [--quick]")
    end
    i = i + 1
  end
end
local ORDERS = QUICK and 5000 or 20000
local SEND_US = 20 -- a loopback send_batch order (50,000 req/s)
local LOOKUP_TARGET, SHARE_TARGET = 2.0, 0.10
local SCOPE = { host = "uat.peerius.com", site = "bench", channel = "store" }
local clock, now = os.clock, core.now

local dir = os.tmpname()
os.remove(dir)
assert(sys.run("mkdir -p " .. lib.q(dir)))

-- A body like the encoder's, distinct per i, without paying for encode
-- (the ledger reads it the same way).
local function body(i)
  return ('{"lang":"en-gb","user":{"id":"cust-%d"},"order":{"refCode":"ORD-%09d",'
    .. '"orderDate":"2024-05-%02dT14:25:00 GMT","currency":"GBP","shipping":4.95,"total":%d.%02d,'
    .. '"items":[{"refCode":"SKU-1","qty":1,"price":19.99},{"refCode":"SKU-2","qty":2,"price":19.99}],'
    .. '"attributes":{"store":"store-%d"}}}'):format(i, i, i % 28 + 1, 10 + i % 500, i % 100, i % 17)
end

local function file_bytes(path)
  return (sys.file_size(path) or 0) + (sys.file_size(path .. "-wal") or 0)
end

-- Fills the ledger at path from `have` rows to `want`, 100k per transaction.
local function fill(path, have, want)
  local l = assert(ledger.open(path, { keep = 36500 }))
  local t_start = 1700000000
  local i = have
  while i < want do
    local list, n = {}, math.min(100000, want - i)
    for k = 1, n do list[k] = body(i + k) end
    -- a year of sends, in order
    assert(l:record(SCOPE, list, { outcome = "sent", now = t_start + math.floor((i + n) * 3e7 / ROWS) }))
    i = i + n
  end
  l:close() -- the last close checkpoints: the file holds every row
end

local function lookups(path, rows)
  local l = assert(ledger.open(path, { keep = 36500 }))
  local rnd = 0x9E3779B9
  local function pick()
    rnd = (rnd * 1103515245 + 12345) % 2147483648
    return ("ORD-%09d"):format(rnd % rows + 1)
  end
  local n1, batch = QUICK and 20000 or 50000, {}
  for k = 1, n1 do batch[k] = pick() end
  local t0 = clock()
  for k = 1, n1 do
    local a = l:check(SCOPE, batch[k])
    if a.state ~= "seen" then error("lookup " .. batch[k] .. ": " .. a.state) end
  end
  local single = (clock() - t0) / n1
  local lists = {}
  for b = 1, 50 do
    local list = {}
    for k = 1, 1000 do list[k] = { ref = pick() } end
    lists[b] = list
  end
  t0 = clock()
  for b = 1, 50 do assert(l:check_many(SCOPE, lists[b])) end
  local many = (clock() - t0) / 50000
  local from = rnd % math.max(1, rows - 50000)
  for b = 1, 50 do
    local list = {}
    for k = 1, 1000 do list[k] = { ref = ("ORD-%09d"):format(from + (b - 1) * 1000 + k) } end
    lists[b] = list
  end
  t0 = clock()
  for b = 1, 50 do assert(l:check_many(SCOPE, lists[b])) end
  local ordered = (clock() - t0) / 50000
  l:close()
  return single, many, ordered
end

print(("ledger benchmark (%s), %d rows, in %s"):format(type(jit) == "table" and jit.version or _VERSION,
  ROWS, dir))
print("1. size and lookups, us per lookup (check: one read transaction per call; check_many: 1000 per call)")
print(("%12s %10s %12s %14s %14s %10s"):format("rows", "bytes/row", "check", "check_many", "in order",
  "build s"))
local path = dir .. "/big.db"
local have, first = 0, nil
local sizes = { 10000, 1000000, ROWS }
if ROWS <= 1000000 then sizes = { 10000, ROWS } end
local last, mid
for _, rows in ipairs(sizes) do
  local t0 = now()
  fill(path, have, rows)
  local built = now() - t0
  have = rows
  local single, many, ordered = lookups(path, rows)
  first = first or { single, many, ordered }
  if rows == 1000000 then mid = { single, many, ordered } end
  last = { single, many, ordered }
  print(("%12d %10.1f %12.2f %14.2f %14.2f %10.1f"):format(rows, file_bytes(path) / rows, single * 1e6,
    many * 1e6, ordered * 1e6, built))
end
print(("growth 10k -> %d rows (from SQLite's cache to the OS's): check %.2fx, check_many %.2fx,"
  .. " in order %.2fx"):format(ROWS, last[1] / first[1], last[2] / first[2], last[3] / first[3]))
if mid and ROWS > 1000000 then
  local worst = math.max(last[1] / mid[1], last[2] / mid[2], last[3] / mid[3])
  print(("growth 1M -> %d rows: check %.2fx, check_many %.2fx, in order %.2fx (target <= %.1fx:"
    .. " logarithmic) %s"):format(ROWS, last[1] / mid[1], last[2] / mid[2], last[3] / mid[3], LOOKUP_TARGET,
    worst <= LOOKUP_TARGET and "ok" or "MISSED"))
end

local t0 = now()
local l = assert(ledger.open(path, { keep = 36500 }))
local groups = assert(l:report({ by = "day,store,currency", timezone = "Europe/London" }))
l:close()
print(("3. report over %d rows by day, store, currency (Europe/London): %d groups in %.2f s"):format(
  ROWS, #groups, now() - t0))

-- 2. per order
local payloads = {}
for i = 1, 16 do payloads[i] = lib.realistic_order("LEDGER", i) end
local function encode_all(n, base)
  local out = {}
  for i = 1, n do
    local p = payloads[i % 16 + 1]
    p.order.refCode = ("LEDGER-%08d"):format(base + i)
    out[i] = offline.encode(p)
  end
  return out
end

local function best_of(rounds, fn)
  local best = math.huge
  for r = 1, rounds do
    local t = fn(r)
    if t < best then best = t end
  end
  return best
end

local enc = best_of(5, function(r)
  local c0 = clock()
  encode_all(ORDERS, r * ORDERS)
  return (clock() - c0) / ORDERS
end)

local fresh = dir .. "/fresh.db"
local lf = assert(ledger.open(fresh))
local sent_bodies
local write = best_of(5, function(r)
  local c0 = clock()
  local bodies = encode_all(ORDERS, 1e7 + r * ORDERS)
  for i = 1, ORDERS, 100 do
    local chunk, rec = {}, {}
    for k = i, math.min(i + 99, ORDERS) do chunk[#chunk + 1] = bodies[k] end
    local answers = assert(lf:reserve(SCOPE, chunk))
    for k, a in ipairs(answers) do
      if a.state == "reserved" then rec[#rec + 1] = chunk[k] end
    end
    assert(lf:record(SCOPE, rec, { outcome = "sent" }))
  end
  sent_bodies = bodies
  return (clock() - c0) / ORDERS
end)

local again = best_of(5, function()
  local c0 = clock()
  local bodies = {}
  for i = 1, ORDERS do bodies[i] = sent_bodies[i] end -- the same bytes, as a re-read file gives
  for i = 1, ORDERS, 1000 do
    local chunk = {}
    for k = i, math.min(i + 999, ORDERS) do chunk[#chunk + 1] = bodies[k] end
    local answers = assert(lf:check_many(SCOPE, chunk))
    if answers[1].state ~= "same" then error("not seen: " .. answers[1].state) end
  end
  return (clock() - c0) / ORDERS
end)
lf:close()

print(("2. per order, %d orders, best of 5 (CPU time of this process)"):format(ORDERS))
print(("%-44s %9s %9s %9s"):format("", "us/order", "vs encode", "of a send"))
print(("%-44s %9.2f %9s %9s"):format("encode (baseline)", enc * 1e6, "1.00x", ""))
print(("%-44s %9.2f %8.2fx %8.1f%%  target <= %d%%"):format("encode + reserve + record (100 per call)",
  write * 1e6, write / enc, (write - enc) * 1e6 / SEND_US * 100, SHARE_TARGET * 100))
print(("%-44s %9.2f %8.2fx %8.1f%%"):format("  the ledger's part", (write - enc) * 1e6, (write - enc) / enc,
  (write - enc) * 1e6 / SEND_US * 100))
print(("%-44s %9.2f %8.2fx"):format("check_many of sent bodies (1000 per call)", again * 1e6, again / enc))

sys.run("rm -rf " .. lib.q(dir))
