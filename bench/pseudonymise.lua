-- Pseudonymise benchmark: µs per offline.pseudonymise call (normalise +
-- HMAC-SHA256 + hex, options checked at each call) and per p:id on a
-- pseudonymiser object, against offline.encode of a 2-item order measured
-- in the same run (what every send costs anyway).
--   lua5.4 bench/pseudonymise.lua        luajit bench/pseudonymise.lua
-- Target: pseudonymise costs no more than encoding the order it goes in
-- (ratio <= 1.0).
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local variant = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.cpath = "build/" .. variant .. "/?.so;" .. package.cpath
local offline = require("optimizely.offline")
local pseudonym = require("optimizely.offline.pseudonym")

local clock = os.clock
local KEY = "bench-key-0123456789abcdef0123456789"

local function bench(fn, min_time)
  for i = 1, 1000 do fn(i) end -- warm up
  local n = 1000
  local elapsed
  while true do
    local t0 = clock()
    for i = 1, n do fn(i) end
    elapsed = clock() - t0
    if elapsed >= min_time then break end
    n = n * 2
  end
  return elapsed / n
end

local order = {
  lang = "en-gb",
  user = { id = "abcd1234efgh" },
  order = { refCode = "ORD-2024-000123", orderDate = "2024-05-16T14:25:00 GMT", currency = "GBP",
            shipping = 4.95, total = 64.93,
            items = { { refCode = "SKU-10001", qty = 2, price = 19.99, attributes = { colour = "blue" } },
                      { refCode = "SKU-10002", qty = 1, price = 20.00 } } },
}
assert(offline.encode(order))

-- a realistic mix of addresses: some need trimming and lower-casing
local emails = {}
for i = 1, 256 do
  emails[i] = (i % 3 == 0 and " " or "") .. ("Customer.%d+Tag@Example%d.co.uk"):format(i * 7919, i % 5)
end
local opts = { key = KEY }
local p = pseudonym.new({ key = KEY })
assert(offline.pseudonymise(emails[1], opts) == p:id(emails[1]))

local lua_name = (type(jit) == "table" and jit.version) or _VERSION
print(("pseudonymise benchmark (%s) — baseline: offline.encode of a 2-item order"):format(lua_name))
local base = bench(function() return offline.encode(order) end, 0.5)
local call = bench(function(i) return offline.pseudonymise(emails[i % 256 + 1], opts) end, 0.5)
local obj = bench(function(i) return p:id(emails[i % 256 + 1]) end, 0.5)
local apply_payload = { user = { email = "Jane.Doe@Example.com" }, order = order.order }
local apply = bench(function() return p:apply(apply_payload) end, 0.5)
print(("%-36s %10s %8s"):format("", "us/op", "ratio"))
print(("%-36s %10.3f %8s"):format("offline.encode (2 items)", base * 1e6, "1.00"))
print(("%-36s %10.3f %8.2f"):format("offline.pseudonymise(email, opts)", call * 1e6, call / base))
print(("%-36s %10.3f %8.2f"):format("p:id(email)", obj * 1e6, obj / base))
print(("%-36s %10.3f %8.2f"):format("p:apply(payload)", apply * 1e6, apply / base))
print(("offline.pseudonymise / encode = %.2f (target <= 1.00: %s)"):format(call / base,
  call / base <= 1 and "met" or "NOT met"))
