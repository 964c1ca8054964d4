--- Retry policy: what to retry and how long to wait. Every transport (the
-- libcurl client, the batch sender, the queue, the nginx cosocket loop) asks
-- this one module, so the rules cannot drift apart.
--
-- Delivery is at-least-once: network failures and timeouts are retried even
-- though the server may already have stored the order, because a lost order
-- costs the retailer more than a rare duplicate.
--
-- Pure Lua (no C core), so it also runs inside nginx.
-- @module optimizely.offline.retry
local M = {}

local floor, min, max = math.floor, math.min, math.max

--- HTTP statuses worth another try: the request may succeed later.
M.RETRYABLE_STATUS = { [408] = true, [429] = true, [500] = true, [502] = true,
  [503] = true, [504] = true }

--- Error kinds worth another try (transport failures). `tls` is not: a bad
-- certificate does not fix itself within seconds.
M.RETRYABLE_KIND = { network = true, timeout = true }

--- Defaults, in seconds (max_attempts counts the first try).
M.DEFAULTS = {
  max_attempts = 4,
  backoff_base = 0.25,
  backoff_max = 10,
  retry_after_max = 60,
  backoff_floor = 0.05, -- never hammer a struggling server with a zero wait
}

--- Is this failure retryable?
-- @param x an HTTP status (number), an error kind (string) or an error
--   object (`kind` "http" uses its `status`)
-- @return boolean
function M.classify(x)
  local t = type(x)
  if t == "number" then return M.RETRYABLE_STATUS[x] == true end
  if t == "string" then return M.RETRYABLE_KIND[x] == true end
  if t == "table" then
    if x.kind == "http" then return M.RETRYABLE_STATUS[x.status] == true end
    return M.RETRYABLE_KIND[x.kind] == true
  end
  return false
end

-- Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
-- days_from_civil), so HTTP dates need neither os.time (local time) nor C.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
  jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }

local function epoch(y, mon, d, hh, mm, ss)
  local m = MONTHS[mon:lower()]
  y, d, hh, mm, ss = tonumber(y), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)
  if not m or d < 1 or d > 31 or hh > 23 or mm > 59 or ss > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

--- Parse an HTTP date (IMF-fixdate, RFC 850 or asctime form, RFC 9110 §5.6.7).
-- @return seconds since the Unix epoch, or nil
function M.parse_http_date(s)
  if type(s) ~= "string" then return nil end
  -- Sun, 06 Nov 1994 08:49:37 GMT
  local d, mon, y, hh, mm, ss = s:match("^%a%a%a, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if d then return epoch(y, mon, d, hh, mm, ss) end
  -- Sunday, 06-Nov-94 08:49:37 GMT
  d, mon, y, hh, mm, ss = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if d then
    y = tonumber(y)
    y = y < 70 and 2000 + y or 1900 + y
    return epoch(y, mon, d, hh, mm, ss)
  end
  -- Sun Nov  6 08:49:37 1994
  mon, d, hh, mm, ss, y = s:match("^%a%a%a (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  if mon then return epoch(y, mon, d, hh, mm, ss) end
  return nil
end

--- Turn a raw `Retry-After` header value into seconds to wait.
-- @param value the header value (delay-seconds or an HTTP date)
-- @param now current Unix time in seconds (default `os.time()`)
-- @return seconds (>= 0), or nil when absent or unparseable
function M.parse_retry_after(value, now)
  if type(value) == "number" then
    return value >= 0 and value or nil
  end
  if type(value) ~= "string" then return nil end
  value = value:match("^%s*(.-)%s*$")
  if value:match("^%d+$") then return tonumber(value) end
  local t = M.parse_http_date(value)
  if not t then return nil end
  return max(0, t - (now or os.time()))
end

-- Park-Miller generator seeded per process: LuaJIT's and 5.1's math.random
-- start from the same seed in every process, which would line up the
-- "random" backoff of a whole fleet of workers.
local seed = (os.time() + floor(os.clock() * 1e6)
  + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0)) % 2147483646 + 1

--- Uniform number in [0, 1) (the default jitter source).
function M.random()
  seed = (seed * 16807) % 2147483647
  return (seed - 1) / 2147483646
end

--- Seconds to wait before the next attempt.
-- Exponential backoff with full jitter: random(0, min(max, base * 2^(attempt-1)))
-- but at least a small floor; a usable Retry-After replaces it, capped at
-- `retry_after_max`.
-- @param attempt the attempt that just failed (1 for the first try)
-- @param retry_after raw header value, seconds, or nil
-- @param opts {backoff_base, backoff_max, retry_after_max, backoff_floor, random, now}
-- @return seconds
function M.delay(attempt, retry_after, opts)
  opts = opts or M.DEFAULTS
  local D = M.DEFAULTS
  local ra = M.parse_retry_after(retry_after, opts.now and opts.now() or nil)
  if ra then return min(ra, opts.retry_after_max or D.retry_after_max) end
  local base = opts.backoff_base or D.backoff_base
  local cap = min(opts.backoff_max or D.backoff_max, base * 2 ^ (attempt - 1))
  local r = (opts.random or M.random)()
  if type(r) ~= "number" or r ~= r then r = 0 end
  local d = min(max(r, 0), 1) * cap
  return max(d, min(opts.backoff_floor or D.backoff_floor, cap))
end

local Policy = {}
Policy.__index = Policy

--- A policy object holding its settings.
-- @param opts {max_attempts, backoff_base, backoff_max, retry_after_max,
--   backoff_floor, random, now}; missing fields take `DEFAULTS`
function M.new(opts)
  local p = {}
  for k, v in pairs(M.DEFAULTS) do p[k] = v end
  for k, v in pairs(opts or {}) do p[k] = v end
  return setmetatable(p, Policy)
end

--- @see classify
function Policy:retryable(x) return M.classify(x) end

--- @see delay
function Policy:delay(attempt, retry_after) return M.delay(attempt, retry_after, self) end

--- Should attempt `attempt` (which just failed with `x`) be followed by another?
function Policy:again(attempt, x)
  return attempt < self.max_attempts and M.classify(x)
end

return M
