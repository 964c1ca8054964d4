-- The spool's write-ahead log after N small orders (issue 20): each order is
-- put (one transaction), claimed in eights and acked one by one, as a queue
-- delivering to a live endpoint does. Prints the -wal file's size at the end
-- and the largest it was along the way (sampled after every order), and the
-- orders per second, beside the bound spool.md documents.
--   lua5.4 bench/spool_wal.lua [--orders 2000]
--   OO_CPATH='/other/build/?.so' lua5.4 bench/spool_wal.lua   (another build: before/after)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local variant = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.cpath = (os.getenv("OO_CPATH") or ("build/" .. variant .. "/?.so")) .. ";" .. package.cpath
local spool = require("optimizely.offline.spool")
local core = require("optimizely.offline.core")
local sys = require("optimizely.offline.sys")

local N = 2000
for i = 1, #arg do if arg[i] == "--orders" then N = assert(tonumber(arg[i + 1]), "--orders N") end end
-- the documented bounds of the -wal file (spool.md): cut back to 4 MiB after
-- a checkpoint (a few frames more since the last one: 5 MiB), and not above
-- 10 MiB while the checkpoint thread catches up
local SETTLED, BOUND = 5 * 1024 * 1024, 10 * 1024 * 1024

local dir = sys.capture("mktemp -d"):gsub("%s+$", "")
local path = dir .. "/orders.db"
local s = assert(spool.open(path))
local body = ('{"user":{"id":"u"},"order":{"refCode":"R-%%d","orderDate":"2024-05-16T14:25:00 GMT",'
  .. '"currency":"GBP","total":21.00,"items":[{"refCode":"sku-1","qty":2,"price":10.50}]}}')
local function wal() return sys.file_size(path .. "-wal") or 0 end
local peak, t0 = 0, core.now()
for i = 1, N do
  assert(s:put(body:format(i), "R-" .. i))
  if i % 8 == 0 or i == N then
    for _, row in ipairs(assert(s:claim(8, 60))) do assert(s:ack(row.id)) end
  end
  local w = wal()
  if w > peak then peak = w end
end
local elapsed = core.now() - t0
local final = wal()
s:close()
sys.run("rm -rf " .. sys.q(dir))
print(("spool_wal: %d small orders (put, claim 8, ack each): -wal %.1f MiB at the end (target <= %.0f), "
  .. "%.1f MiB at most (target <= %.0f); %.0f orders/s: %s"):format(N, final / 1048576, SETTLED / 1048576,
  peak / 1048576, BOUND / 1048576, N / elapsed, (final <= SETTLED and peak <= BOUND) and "met" or "NOT met"))
