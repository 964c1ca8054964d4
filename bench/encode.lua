-- Encoder benchmark: offline.encode (validate + normalise + encode, in C)
-- against plain cjson.encode of the same table, in one run.
--   lua5.4 bench/encode.lua        (make bench runs it for every built Lua)
-- Prints the time ratio ours/cjson: <= 1.0 means we cost no more than cjson.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
-- use this checkout's build for the running Lua (make build), else an installed rock
local variant = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.cpath = "build/" .. variant .. "/?.so;" .. package.cpath
local offline = require("optimizely.offline")
local cjson = require("cjson")

local clock = os.clock

local function order(nitems)
  local items = {}
  for i = 1, nitems do
    items[i] = { refCode = "SKU-" .. (10000 + i), qty = (i % 3) + 1, price = 19.99 + i,
                 attributes = { colour = "blue", size = tostring(8 + i % 6) } }
  end
  return {
    lang = "en-gb",
    user = { id = "abcd1234efgh", info = { store = "StreamlyCool Bluewater", loyalty = "gold" } },
    order = { refCode = "ORD-2024-000123", orderDate = "2024-05-16T14:25:00 GMT",
              currency = "GBP", shipping = 4.95, total = 1234.56, items = items,
              attributes = { store = "0042", till = "7" } },
  }
end

local function bench(fn, arg, min_time)
  -- warm up, then run in growing batches until min_time of CPU has passed
  for _ = 1, 1000 do fn(arg) end
  local n, elapsed = 1000
  while true do
    local t0 = clock()
    for _ = 1, n do fn(arg) end
    elapsed = clock() - t0
    if elapsed >= min_time then break end
    n = n * 2
  end
  return elapsed / n
end

local lua_name = (type(jit) == "table" and jit.version) or _VERSION
print(("encode benchmark (%s) — baseline: cjson.encode of the same table"):format(lua_name))
print(("%-10s %14s %14s %8s"):format("order", "ours us/op", "cjson us/op", "ratio"))
local worst = 0
for _, n in ipairs({ 2, 20 }) do
  local t = order(n)
  assert(offline.encode(t))
  local ours = bench(offline.encode, t, 0.5)
  local base = bench(cjson.encode, t, 0.5)
  local ratio = ours / base
  if ratio > worst then worst = ratio end
  print(("%-10s %14.3f %14.3f %8.2f"):format(n .. " items", ours * 1e6, base * 1e6, ratio))
end
print(("worst ratio %.2f (target <= 1.00)"):format(worst))
