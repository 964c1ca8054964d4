--- Benchmark: the CSV (and legacy XML) readers against the NDJSON path, on
-- the same orders, through the CLI users run.
--
--   lua5.4 bench/csv.lua [--orders N] [--quick] [--repeat R] [--lua lua5.4] [--xml]
--                        [--grouped] [--send] [--keep]
--
-- Generates N orders (default 1,000,000; --quick: 100,000) written three ways
-- into build/bench/: NDJSON (one line each), CSV (2 rows per order, an order
-- attribute holding a quoted comma) and, with --xml, legacy XML. Runs
-- `bin/optimizely-offline validate -q` and `convert -q -o /dev/null` on each
-- under /usr/bin/time -v (peak RSS), prints orders/s, the CSV/NDJSON ratio
-- with its target (>= 0.8) and the CSV peak RSS with its target (< 64 MiB).
-- --grouped adds CSV with `--group-orders` (no target), and the readers alone
-- in-process (input.open + validate, no CLI), grouped and not.
-- --send adds `send` to a sandbox this script starts (real nginx over TLS on
-- loopback, not recording; stopped at the end).
-- Each measurement runs R times (default 3), the formats interleaved so they
-- share the machine's noise; the best wall time counts, and the ratio of CPU
-- seconds (user + sys) is printed beside it. Figures are indicative on a
-- shared machine: the ratios are measured in one run.
local argv = { ... }
local opts = { orders = 1000000, lua = "lua5.4", formats = { "ndjson", "csv" },
  commands = { "validate", "convert" }, rounds = 3 }
local i = 1
while i <= #argv do
  local a = argv[i]
  if a == "--orders" then i = i + 1; opts.orders = assert(tonumber(argv[i]), "--orders N")
  elseif a == "--quick" then opts.orders = 100000
  elseif a == "--lua" then i = i + 1; opts.lua = argv[i]
  elseif a == "--xml" then opts.formats[#opts.formats + 1] = "xml"
  elseif a == "--keep" then opts.keep = true
  elseif a == "--repeat" then i = i + 1; opts.rounds = assert(tonumber(argv[i]), "--repeat R")
  elseif a == "--grouped" then opts.grouped = true
  elseif a == "--send" then opts.commands[#opts.commands + 1] = "send"
  else
    io.stderr:write("unknown argument ", a, "\n"); os.exit(2)
  end
  i = i + 1
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function sh(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and c == 0
end
local fmt = string.format

---------------------------------------------------------------- the orders
-- Order i: 2 items, lang, user id, a store attribute with a comma in it.
local function order(n)
  local c1, c2 = (n * 7 + 13) % 10000, (n * 11 + 29) % 10000
  local total = c1 + 2 * c2
  return {
    ref = "ord-" .. n,
    date = fmt("2024-%02d-%02dT%02d:%02d:00 GMT", n % 12 + 1, n % 28 + 1, n % 24, n % 60),
    total = fmt("%d.%02d", total // 100, total % 100),
    user = "cust-" .. (n % 100000),
    store = fmt("Store %d, Bluewater", n % 200),
    items = {
      { ref = "sku-" .. (n % 5000), qty = 1, price = fmt("%d.%02d", c1 // 100, c1 % 100) },
      { ref = "sku-" .. ((n + 1) % 5000), qty = 2, price = fmt("%d.%02d", c2 // 100, c2 % 100) },
    },
  }
end

local CSV_HEADER = "refCode,orderDate,currency,total,lang,user.id,attr.store,itemRefCode,qty,price\n"

local writers = {}
function writers.ndjson(o)
  local it = {}
  for k, x in ipairs(o.items) do
    it[k] = fmt('{"refCode":"%s","qty":%d,"price":%s}', x.ref, x.qty, x.price)
  end
  return fmt('{"lang":"en-gb","user":{"id":"%s"},"order":{"refCode":"%s","orderDate":"%s",'
    .. '"currency":"GBP","total":%s,"attributes":{"store":"%s"},"items":[%s]}}\n',
    o.user, o.ref, o.date, o.total, o.store, table.concat(it, ","))
end
function writers.csv(o)
  local a, b = o.items[1], o.items[2]
  return fmt('%s,%s,GBP,%s,en-gb,%s,"%s",%s,%d,%s\n%s,,,,,,,%s,%d,%s\n',
    o.ref, o.date, o.total, o.user, o.store, a.ref, a.qty, a.price, o.ref, b.ref, b.qty, b.price)
end
function writers.xml(o)
  local it = {}
  for k, x in ipairs(o.items) do
    it[k] = fmt('    <product refCode="%s" qty="%d" price="%s"/>\n', x.ref, x.qty, x.price)
  end
  return fmt('  <order refCode="%s" orderDate="%s" currency="GBP" total="%s">\n'
    .. '    <user id="%s"/>\n    <attribute key="store">%s</attribute>\n%s  </order>\n',
    o.ref, o.date, o.total, o.user, o.store, table.concat(it))
end
local HEAD = { ndjson = "", csv = CSV_HEADER, xml = '<?xml version="1.0"?>\n<orders>\n' }
local TAIL = { ndjson = "", csv = "", xml = "</orders>\n" }

local DIR = "build/bench"
local function generate(format, n)
  local path = fmt("%s/orders-%d.%s", DIR, n, format)
  local f = io.open(path, "rb")
  if f and f:seek("end") > 0 then f:close(); return path end
  if f then f:close() end
  io.stderr:write(fmt("generating %s...\n", path))
  local out = assert(io.open(path .. ".tmp", "wb"))
  out:write(HEAD[format])
  local write, buf, k = writers[format], {}, 0
  for j = 1, n do
    k = k + 1; buf[k] = write(order(j))
    if k == 4096 then out:write(table.concat(buf)); buf, k = {}, 0 end
  end
  out:write(table.concat(buf, "", 1, k), TAIL[format])
  out:close()
  assert(os.rename(path .. ".tmp", path))
  return path
end

---------------------------------------------------------------- running
local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Seconds from /usr/bin/time -v: wall, user + sys, and peak RSS (KiB).
local function times(t)
  local wall = t:match("Elapsed %(wall clock%) time[^\n]*: ([%d:.]+)")
  local secs = 0
  for part in wall:gmatch("[%d.]+") do secs = secs * 60 + tonumber(part) end
  local cpu = tonumber(t:match("User time %(seconds%): ([%d.]+)")) +
    tonumber(t:match("System time %(seconds%): ([%d.]+)"))
  return secs, cpu, tonumber(t:match("Maximum resident set size %(kbytes%): (%d+)"))
end

-- Runs a command under /usr/bin/time -v; exits on failure.
local function timed(cmd, what)
  local timef, outf = os.tmpname(), os.tmpname()
  local ok = sh(fmt("/usr/bin/time -v -o %s %s >%s 2>&1",
    q(timef), cmd, q(outf)))
  local t, out = slurp(timef), slurp(outf)
  os.remove(timef); os.remove(outf)
  if not ok then
    io.stderr:write(fmt("%s failed:\n%s\n", what, out:sub(1, 2000)))
    os.exit(1)
  end
  return times(t)
end

-- One CLI command over `path`: wall seconds, CPU seconds, peak RSS (KiB).
local sandbox_info -- set when --send started one
local function run_cli(command, path, extra)
  local args = { opts.lua, "bin/optimizely-offline", command, "-q", extra }
  if command == "convert" then args[#args + 1] = "-o /dev/null" end
  if command == "send" then
    local sb = sandbox_info
    args[1] = "env OPTIMIZELY_SITE_TOKEN=" .. q(sb.token) .. " " .. args[1]
    for _, a in ipairs({ "--base-url", sb.base_url, "--ca-file", sb.ca_file, "--site", sb.site,
      "--channel", sb.channel, "--concurrency", "16" }) do
      args[#args + 1] = q(a)
    end
  end
  args[#args + 1] = q(path)
  return timed(table.concat(args, " "), command .. " " .. path)
end

-- The reader alone, in a fresh process: input.open + offline.validate over
-- every record (what `validate` does, without the CLI), with reader options.
local READ_DRIVER = [[
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local variant = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.cpath = "build/" .. variant .. "/?.so;" .. package.cpath
local input = require("optimizely.offline.input")
local validate = require("optimizely.offline").validate
local it = assert(input.open(arg[1], arg[2] ~= "" and { order_rows = arg[2] } or nil))
local n = 0
for rec in it do
  assert(rec.payload, rec.error)
  assert(validate(rec.payload))
  n = n + 1
end
assert(n == tonumber(arg[3]), n)
]]
local driver_path = DIR .. "/csv_bench_driver.lua"
local function run_reader(path, order_rows)
  return timed(fmt("%s %s %s %s %d", opts.lua, q(driver_path), q(path), q(order_rows or ""), opts.orders),
    "reader " .. path)
end

---------------------------------------------------------------- main
sh("mkdir -p " .. DIR)
if table.concat(opts.commands, ","):find("send") then
  package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
  package.cpath = "build/5.4/?.so;" .. package.cpath
  local sandbox = require("optimizely.offline.sandbox")
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("*l"):match("^(%d+)"))
  f:close()
  sandbox_info = assert(sandbox.start({ dir = "/tmp/oo-sandbox-csvbench-" .. pid, port = 0,
    record = false, owner_pid = pid, cleanup_dir = true }))
end
do
  local f = assert(io.open(driver_path, "wb"))
  f:write(READ_DRIVER)
  f:close()
end
local n = opts.orders
local paths = {}
for _, f in ipairs(opts.formats) do paths[f] = generate(f, n) end

-- Every (label, runner) measured `rounds` times, interleaved; best wall.
local function measure(cases)
  local best = {}
  for _ = 1, opts.rounds do
    for k, case in ipairs(cases) do
      local wall, cpu, rss = case.run()
      local b = best[k]
      if not b then
        best[k] = { wall = wall, cpu = cpu, rss = rss }
      else
        if wall < b.wall then b.wall = wall end
        if cpu < b.cpu then b.cpu = cpu end
        if rss > b.rss then b.rss = rss end
      end
    end
  end
  return best
end

print(fmt("bench/csv.lua: %d orders, %s, 2 CSV rows per order (quoted comma in an attribute), "
  .. "best of %d", n, opts.lua, opts.rounds))
print(fmt("%-9s %-12s %8s %8s %11s %9s   %s", "command", "format", "wall s", "cpu s", "orders/s",
  "peak MiB", "vs ndjson: wall (target), cpu"))
local all_met = true
local function report(command, labels, best)
  local base = best[1]
  for k, label in ipairs(labels) do
    local b = best[k]
    local rate, mib = n / b.wall, b.rss / 1024
    local note = ""
    if k > 1 then
      local ratio, cpu_ratio = base.wall / b.wall, base.cpu / b.cpu
      if label == "csv" then
        local ok_ratio, ok_rss = ratio >= 0.8, mib < 64
        all_met = all_met and ok_ratio and ok_rss
        note = fmt("%.2fx (>= 0.8: %s), cpu %.2fx; RSS < 64 MiB: %s", ratio,
          ok_ratio and "met" or "NOT met", cpu_ratio, ok_rss and "met" or "NOT met")
      else
        note = fmt("%.2fx (no target), cpu %.2fx", ratio, cpu_ratio)
      end
    end
    print(fmt("%-9s %-12s %8.2f %8.2f %11.0f %9.1f   %s", command, label, b.wall, b.cpu, rate, mib, note))
  end
end

for _, command in ipairs(opts.commands) do
  local cases = {}
  local labels = {}
  for k, f in ipairs(opts.formats) do
    labels[k] = f
    cases[k] = { run = function() return run_cli(command, paths[f]) end }
  end
  if opts.grouped and command ~= "send" then
    labels[#labels + 1] = "csv-grouped"
    cases[#cases + 1] = { run = function() return run_cli(command, paths.csv, "--group-orders") end }
  end
  report(command, labels, measure(cases))
end
if opts.grouped then
  local labels = { "ndjson", "csv", "csv-grouped" }
  local best = measure({
    { run = function() return run_reader(paths.ndjson) end },
    { run = function() return run_reader(paths.csv) end },
    { run = function() return run_reader(paths.csv, "grouped") end },
  })
  report("reader", labels, best)
end
print(all_met and "csv targets: met" or "csv targets: NOT met")
if sandbox_info then
  require("optimizely.offline.sandbox").stop({ dir = sandbox_info.dir })
  sh("rm -rf " .. q(sandbox_info.dir))
end
os.remove(driver_path)
if not opts.keep then
  for _, p in pairs(paths) do os.remove(p) end
end
