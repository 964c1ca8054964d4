-- Benchmark: `optimizely-offline mapping` over N orders with N distinct
-- e-mail addresses (default 1,000,000), in an order that makes the
-- external sort work. Prints orders/s and peak RSS against the target
-- (< 64 MiB whatever N), beside `optimizely-offline validate` of the same
-- file measured in the same run (the cost of reading the input at all).
--
--   lua5.4 bench/mapping.lua [N]        luajit bench/mapping.lua [N]
--
-- The input is generated once into build/bench/ (~170 MB for 1M orders)
-- and reused; KEEP=0 deletes it afterwards. The mapping written is checked
-- (N + 1 lines) and removed.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local sys = require("optimizely.offline.sys")
local q = sys.q

local N = tonumber(arg[1]) or 1000000
local LUA = arg[-1] or "lua5.4"
local DIR = "build/bench"
local FILE = ("%s/mapping-%d.ndjson"):format(DIR, N)
local OUT = ("%s/mapping-%d.csv"):format(DIR, N)
local RSS_TARGET = 64

local function generate()
  assert(sys.run("mkdir -p " .. q(DIR)))
  print(("generating %s (%d orders, %d distinct e-mails)..."):format(FILE, N, N))
  local f = assert(io.open(FILE .. ".tmp", "wb"))
  local fmt, buf, k = string.format, {}, 0
  -- i -> (i * 7919) mod N is a permutation when N is not a multiple of
  -- 7919: every address once, far from sorted
  for i = 1, N do
    local c = (i * 7919) % N
    k = k + 1
    buf[k] = fmt('{"user":{"email":"Customer.%d@Example%d.com"},"order":{"refCode":"ord-%d",'
      .. '"orderDate":"2024-%02d-%02dT10:00:00 GMT","currency":"GBP","total":9.99,'
      .. '"items":[{"refCode":"sku-%d","qty":1,"price":9.99}]}}\n',
      c, c % 7, i, i % 12 + 1, i % 28 + 1, i % 5000)
    if k == 4096 then f:write(table.concat(buf)); buf, k = {}, 0 end
  end
  f:write(table.concat(buf, "", 1, k))
  f:close()
  assert(os.rename(FILE .. ".tmp", FILE))
end

-- Runs the CLI under /usr/bin/time -v: wall seconds, peak RSS MiB.
local function timed(args)
  local tf = os.tmpname()
  local cmd = ("env OPTIMIZELY_PSEUDONYM_KEY=bench-key-0123456789abcdef /usr/bin/time -v -o %s %s"
    .. " bin/optimizely-offline %s >/dev/null 2>%s.err"):format(q(tf), LUA, args, q(tf))
  local ok, code = sys.run(cmd)
  local t = sys.read_file(tf) or ""
  local err = sys.read_file(tf .. ".err") or ""
  os.remove(tf); os.remove(tf .. ".err")
  if not ok then error(("%s failed (exit %s): %s"):format(args, tostring(code), err:sub(1, 2000))) end
  local wall = assert(t:match("Elapsed %(wall clock%) time %(h:mm:ss or m:ss%): ([%d:.]+)"), t)
  local secs = 0
  for part in wall:gmatch("[^:]+") do secs = secs * 60 + tonumber(part) end
  local rss = tonumber(t:match("Maximum resident set size %(kbytes%): (%d+)")) / 1024
  return secs, rss
end

if not sys.exists(FILE) then generate() end
print(("%s bin/optimizely-offline mapping -q %s -o %s"):format(LUA, FILE, OUT))
local vs, vr = timed("validate -q " .. q(FILE))
local ms, mr = timed("mapping -q " .. q(FILE) .. " -o " .. q(OUT))
local lines = tonumber(sys.capture("wc -l < " .. q(OUT)):match("%d+"))
os.remove(OUT)
assert(lines == N + 1, ("the mapping has %s lines, expected %d"):format(tostring(lines), N + 1))
print(("%-30s %10s %12s %12s"):format("", "seconds", "orders/s", "peak RSS MiB"))
print(("%-30s %10.2f %12.0f %12.1f"):format("validate (baseline)", vs, N / vs, vr))
print(("%-30s %10.2f %12.0f %12.1f"):format("mapping", ms, N / ms, mr))
print(("mapping / validate time = %.2f; peak RSS %.1f MiB (target < %d: %s)"):format(ms / vs, mr, RSS_TARGET,
  mr < RSS_TARGET and "met" or "NOT met"))
if os.getenv("KEEP") == "0" then os.remove(FILE) end
