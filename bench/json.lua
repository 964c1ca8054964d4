-- Benchmark: core.json_decode vs cjson.decode on the same NDJSON order lines
-- (the shape of bench/validate_big.sh's "mixed" file). Prints per-line times
-- and the ratio (target >= 1.5x).
--   LUA_CPATH_5_4='build/5.4/?.so;;' lua5.4 bench/json.lua [LINES [ROUNDS]]
--   LUA_CPATH='build/jit/?.so;;' luajit bench/json.lua
package.cpath = "build/5.4/?.so;" .. package.cpath
if jit then package.cpath = "build/jit/?.so;" .. package.cpath end
local core = require("optimizely.offline.core")
local cjson = require("cjson")

local N = tonumber(arg[1]) or 20000
local ROUNDS = tonumber(arg[2]) or 5
local fmt = string.format

local lines = {}
for i = 1, N do
  local items, sum = {}, 0
  for j = 1, i % 3 + 1 do
    local cents = (i * 7 + j * 13) % 10000
    sum = sum + cents * j
    items[j] = fmt('{"refCode":"sku-%d","qty":%d,"price":%d.%02d}', (i + j) % 5000, j,
      math.floor(cents / 100), cents % 100)
  end
  lines[i] = fmt('{"lang":"en-gb","user":{"id":"cust-%d"},"order":{"refCode":"ord-%d",'
    .. '"orderDate":"2024-%02d-%02dT%02d:%02d:00 GMT","currency":"GBP","total":%d.%02d,'
    .. '"items":[%s],"attributes":{"store":"store-%d"}}}',
    i % 100000, i, i % 12 + 1, i % 28 + 1, i % 24, i % 60, math.floor(sum / 100), sum % 100,
    table.concat(items, ","), i % 200)
end

local function run(decode)
  local best = math.huge
  for _ = 1, ROUNDS do
    collectgarbage()
    local t0 = os.clock()
    for i = 1, N do
      local v = decode(lines[i])
      if v == nil then error("decode failed on line " .. i) end
    end
    local t = os.clock() - t0
    if t < best then best = t end
  end
  return best / N * 1e6 -- microseconds a line
end

local jd, cd = core.json_decode, cjson.decode
local ours = run(jd)
local theirs = run(cd)
print(fmt("%s, %d lines (~%d bytes each), best of %d", jit and jit.version or _VERSION, N,
  math.floor(#table.concat(lines) / N), ROUNDS))
print(fmt("cjson.decode      %.3f us/line", theirs))
print(fmt("core.json_decode  %.3f us/line", ours))
print(fmt("ratio %.2fx (target >= 1.5x: %s)", theirs / ours, theirs / ours >= 1.5 and "met" or "NOT met"))
