-- Spool benchmark: sustained put rate with group commit (put_many of 64)
-- against one transaction per put, ~600-byte bodies, on a real file.
--   lua5.4 bench/spool.lua        (make bench runs it for every built Lua)
--   OO_CPATH='/other/build/?.so' lua5.4 bench/spool.lua   (another build)
-- Prints put_many orders/s and its ratio to the 20,000/s target (>= 1.00 meets it).
-- Every phase is bounded in count and in time.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local variant = (type(jit) == "table") and "jit" or _VERSION:match("%d+%.%d+")
package.cpath = (os.getenv("OO_CPATH") or ("build/" .. variant .. "/?.so")) .. ";" .. package.cpath
local spool = require("optimizely.offline.spool")
local core = require("optimizely.offline.core")

local TARGET = 20000
local BATCH = 64
local now = core.now -- monotonic

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'"))

local function cleanup()
  os.execute("rm -rf '" .. dir .. "'")
end

-- ~600 bytes of encoder-like JSON, distinct per order
local function body(i)
  local b = ('{"lang":"en-gb","user":{"id":"abcd1234efgh"},"order":{"refCode":"ORD-%08d",'
    .. '"orderDate":"2024-05-16T14:25:00Z","currency":"GBP","shipping":4.95,"total":123.45,"items":[')
    :format(i)
  local items = {}
  for k = 1, 6 do
    items[k] = ('{"refCode":"SKU-%05d","qty":%d,"price":19.99,"attributes":{"colour":"blue"}}'):format(i % 99991, k)
  end
  return b .. table.concat(items, ",") .. "]}}"
end

local SAMPLE = {}
for i = 1, 1024 do SAMPLE[i] = body(i) end
local AVG = 0
for i = 1, #SAMPLE do AVG = AVG + #SAMPLE[i] end
AVG = AVG / #SAMPLE

-- Runs step(i) (which stores `per` orders) until max_orders or max_time.
local function measure(step, per, max_orders, max_time)
  local n, t0 = 0, now()
  while n < max_orders do
    step(n)
    n = n + per
    if now() - t0 >= max_time then break end
  end
  return n / (now() - t0), n
end

local function fresh(name, opts)
  local sp = assert(spool.open(dir .. "/" .. name .. ".db", opts))
  return sp
end

local ok, err = pcall(function()
  local lua_name = (type(jit) == "table" and jit.version) or _VERSION
  print(("spool benchmark (%s) — %d-byte bodies, WAL, file in %s"):format(lua_name, math.floor(AVG), dir))
  print(("%-38s %12s %10s"):format("operation", "orders/s", "orders"))

  local sp = fresh("single")
  local single, n1 = measure(function(i)
    assert(sp:put(SAMPLE[i % 1024 + 1], "R" .. i))
  end, 1, 20000, 2.0)
  print(("%-38s %12.0f %10d"):format("put (1 per transaction, sync=normal)", single, n1))
  sp:close()

  sp = fresh("batch")
  local list = {}
  for k = 1, BATCH do list[k] = { body = "", ref = "" } end
  local batched, n2 = measure(function(i)
    for k = 1, BATCH do
      local e = list[k]
      e.body = SAMPLE[(i + k) % 1024 + 1]
      e.ref = "R" .. (i + k)
    end
    assert(sp:put_many(list))
  end, BATCH, 200000, 3.0)
  print(("%-38s %12.0f %10d"):format(("put_many (%d per transaction)"):format(BATCH), batched, n2))

  -- drain what put_many stored: claim 64 under a lease, ack each
  local drained = 0
  local rate = measure(function()
    local rows = assert(sp:claim(BATCH, 60))
    for r = 1, #rows do assert(sp:ack(rows[r].id)) end
    drained = drained + #rows
    if #rows == 0 then error("nothing left to claim") end
  end, BATCH, n2 - BATCH, 3.0)
  print(("%-38s %12.0f %10d"):format("claim(64) + ack each", rate, drained))
  local st = assert(sp:stats())
  sp:close()

  sp = fresh("full", { sync = "full" })
  local full, n3 = measure(function(i)
    assert(sp:put(SAMPLE[i % 1024 + 1], "R" .. i))
  end, 1, 2000, 1.0)
  print(("%-38s %12.0f %10d"):format("put (1 per transaction, sync=full)", full, n3))
  sp:close()

  print(("queue left after drain: %d queued, %d dead"):format(st.queued, st.dead))
  print(("group commit speed-up: %.1fx over single puts"):format(batched / single))
  print(("put_many %.0f orders/s vs target %d: ratio %.2f (target >= 1.00)"):format(batched, TARGET, batched / TARGET))
end)
cleanup()
if not ok then
  io.stderr:write("bench failed: ", tostring(err), "\n")
  os.exit(1)
end
