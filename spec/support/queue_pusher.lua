--- A pusher process for the queue's multi-process tests and the fault run:
-- pushes orders PREFIX<from>..PREFIX<to> into a spool through `client:queue`
-- and keeps delivering until the spool is empty (or `deadline` passes).
--
--   <lua> spec/support/queue_pusher.lua base_url=... ca_file=... site=... token=...
--     channel=... spool=PATH prefix=P to=N [from=1] [group=1] [rate=orders/s]
--     [progress=FILE] [lease=s] [timeout=s] [max_attempts=n] [backoff_max=s]
--     [concurrency=n] [deadline=s] [settle=s]
--
-- `progress`: after every push (or group) that returned, the last pushed
-- number is written there; a restarted pusher (after `kill -9`) resumes
-- after it, and the spool still holds everything pushed before the kill.
-- Orders are pushed in order, so "pushed" is exactly 1..progress.
-- Prints one line at the end: `pusher: pushed=N sent=N dead=N retried=N
-- full_waits=N ok=true|false`; exits 0 when the spool is empty.
-- Paths come from LUA_PATH/LUA_CPATH (the caller passes its own).
local args = {}
for _, a in ipairs(arg) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  if not k then io.stderr:write("pusher: bad argument " .. a .. "\n") os.exit(2) end
  args[k] = v
end

local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")

local function num(k, d) return args[k] and tonumber(args[k]) or d end

local prefix = assert(args.prefix, "prefix= is required")
local first, last = num("from", 1), num("to", 0)
local group = num("group", 1)
local rate = num("rate", 0)
local deadline = core.now() + num("deadline", 120)

local function read_progress()
  if not args.progress then return nil end
  local f = io.open(args.progress, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("%d+"))
end

local progress_file
local function write_progress(i)
  if not args.progress then return end
  if not progress_file then progress_file = assert(io.open(args.progress, "r+b") or io.open(args.progress, "wb")) end
  -- fixed width: a rewrite never leaves digits of a longer number behind
  progress_file:seek("set", 0)
  progress_file:write(string.format("%12d\n", i))
  progress_file:flush()
end

local done = read_progress()
if done and done + 1 > first then first = done + 1 end

local client = offline.client({
  base_url = args.base_url, ca_file = args.ca_file, site = args.site, token = args.token,
  channel = args.channel, timeout = num("timeout", 5), connect_timeout = num("timeout", 5),
  max_attempts = num("max_attempts", 4), backoff_base = num("backoff_base", 0.05),
  backoff_max = num("backoff_max", 1),
})
local q = assert(client:queue({ spool = assert(args.spool, "spool= is required"),
  lease = num("lease", 30), concurrency = num("concurrency", 4) }))

local function order(i)
  return {
    user = { id = "pusher" },
    order = { refCode = prefix .. i, orderDate = "2024-01-02T03:04:05Z", currency = "GBP",
      total = 10, items = { { refCode = "sku", qty = 1, price = 10 } } },
  }
end

-- Push one group, waiting (never dropping) while the spool is full or busy.
local full_waits = 0
local function push_group(a, b)
  while true do
    local ok, err
    if a == b then
      ok, err = q:push(order(a))
    else
      local list = {}
      for i = a, b do list[#list + 1] = order(i) end
      local n, refused = q:push_many(list)
      ok = n == #list
      err = refused[1] and refused[1].err
    end
    if ok then return true end
    if not err or (err.kind ~= "full" and err.kind ~= "busy") then
      io.stderr:write("pusher: push failed: " .. tostring(err) .. "\n")
      os.exit(3)
    end
    full_waits = full_waits + 1
    q:flush(0.2)
    if core.now() > deadline then return false end
  end
end

local t0 = core.now()
local pushed = 0
local i = first
while i <= last do
  local b = math.min(last, i + group - 1)
  if not push_group(i, b) then break end
  pushed = pushed + (b - i + 1)
  write_progress(b)
  i = b + 1
  q:poll()
  if rate > 0 then
    local ahead = t0 + pushed / rate - core.now()
    if ahead > 0 then core.sleep(ahead) end
  end
end

-- Deliver what is left (ours and anything else in the spool).
local ok
repeat
  ok = q:flush(math.max(0.1, math.min(5, deadline - core.now())))
until ok or core.now() > deadline
if ok and args.settle then q:flush(num("settle", 0)) end
local s = q:stats()
q:close(1)
print(string.format("pusher: pushed=%d sent=%d dead=%d retried=%d full_waits=%d ok=%s",
  pushed, s.sent, s.dead, s.retried, full_waits, tostring(ok == true)))
os.exit(ok and 0 or 1)
