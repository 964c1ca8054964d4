-- Benchmark: the per-order cost of --date-format / --timezone (core.date_convert,
-- csrc/payload/tz.c) beside the cost of encoding the order it belongs to
-- (core.encode of a 2-item order), measured in the same run, and the JSON
-- writer of the rejects file (core.json_encode) beside encode.
-- Target: a date conversion costs well under one encode (ratio < 0.5).
--   lua5.4 bench/dates.lua [N [ROUNDS]]      luajit bench/dates.lua
package.cpath = (jit and "build/jit/?.so;" or "build/5.4/?.so;") .. package.cpath
local core = require("optimizely.offline.core")

local N = tonumber(arg[1]) or 200000
local ROUNDS = tonumber(arg[2]) or 3

local zone = assert(core.tz_load("Europe/London"))
local dates = {}
for i = 1, 1000 do
  dates[i] = ("%02d/%02d/%d %02d:%02d"):format(i % 28 + 1, i % 12 + 1, 2015 + i % 20, i % 24, i % 60)
end
local order = {
  user = { id = "cust-1" },
  order = { refCode = "ord-1", orderDate = "2024-06-16T13:25:00 GMT", currency = "GBP",
            total = "29.97",
            items = { { refCode = "sku-1", qty = 1, price = "9.99" },
                      { refCode = "sku-2", qty = 2, price = "9.99" } } },
}

local function best_of(fn)
  local best = math.huge
  for _ = 1, ROUNDS do
    collectgarbage()
    local t0 = os.clock()
    fn()
    best = math.min(best, os.clock() - t0)
  end
  return best / N * 1e6 -- µs per call
end

local convert, encode, json_encode = core.date_convert, core.encode, core.json_encode
local fmt = "%d/%m/%Y %H:%M"
local base = best_of(function() for _ = 1, N do assert(encode(order)) end end)
local conv = best_of(function() for i = 1, N do assert(convert(dates[i % 1000 + 1], fmt, zone)) end end)
local utc = best_of(function() for i = 1, N do assert(convert(dates[i % 1000 + 1], fmt)) end end)
local jw = best_of(function() for _ = 1, N do assert(json_encode(order)) end end)

print(("%s, %d calls, best of %d"):format(jit and jit.version or _VERSION, N, ROUNDS))
print(("encode (2-item order, baseline)   %7.3f µs"):format(base))
print(("date_convert, Europe/London       %7.3f µs   ratio %.2f (target < 0.5)"):format(conv, conv / base))
print(("date_convert, UTC                 %7.3f µs   ratio %.2f"):format(utc, utc / base))
print(("json_encode (the same order)      %7.3f µs   ratio %.2f"):format(jw, jw / base))
