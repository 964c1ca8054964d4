--- The retry policy, from Lua. The decisions themselves live once, in C
-- (csrc/policy.c, csrc/classify.c): the libcurl engine and the queue's
-- thread call them there, and everything in Lua — the synchronous send
-- loop, the nginx engine, this module — calls the same functions through
-- `optimizely.offline.core`, so the rules cannot drift apart.
--
-- Delivery is at-least-once: network failures and timeouts are retried even
-- though the server may already have stored the order, because a lost order
-- costs the retailer more than a rare duplicate.
--
-- What is retried: HTTP 408, 429, 500, 502, 503, 504, and transport failures
-- of kind `network` or `timeout` (not `tls`: a bad certificate does not fix
-- itself). Never a `fail` envelope, another 4xx, or refused credentials
-- (kind `auth`: everything stops instead).
-- How long to wait: a usable `Retry-After` (delay-seconds — digits only — or
-- an HTTP date), capped at `retry_after_max`; else full jitter,
-- `random() * min(backoff_max, backoff_base * 2^(attempt-1))`; never below
-- `backoff_floor` (a `Retry-After: 0` included).
-- @module optimizely.offline.retry
local core = require("optimizely.offline.core")

local M = {}

local floor = math.floor

--- HTTP statuses worth another try (documentation; core.classify decides).
M.RETRYABLE_STATUS = { [408] = true, [429] = true, [500] = true, [502] = true,
  [503] = true, [504] = true }

--- Transport failure kinds worth another try.
M.RETRYABLE_KIND = { network = true, timeout = true }

--- Defaults, in seconds (max_attempts counts the first try).
M.DEFAULTS = {
  max_attempts = 4,
  backoff_base = 0.25,
  backoff_max = 10,
  retry_after_max = 60,
  backoff_floor = 0.05,
}

--- Is this failure retryable?
-- @param x an HTTP status (number), an error kind (string) or an error
--   object (its `retryable`, else its `status` / `kind`)
-- @return boolean
function M.classify(x)
  local t = type(x)
  if t == "number" then
    return x >= 100 and x <= 999 and x == floor(x) and core.classify(x, "").retryable == true
  end
  if t == "string" then return M.RETRYABLE_KIND[x] == true end
  if t == "table" then
    if x.kind == "http" then return M.classify(x.status) end
    return M.RETRYABLE_KIND[x.kind] == true
  end
  return false
end

--- Parse an HTTP date (IMF-fixdate, RFC 850 or asctime form, RFC 9110 §5.6.7).
-- @return seconds since the Unix epoch, or nil
M.parse_http_date = function(s)
  if type(s) ~= "string" then return nil end
  return core.parse_http_date(s)
end

--- Turn a raw `Retry-After` header value into seconds to wait.
-- @param value the header value (delay-seconds or an HTTP date), or seconds
-- @param now current Unix time in seconds (default `os.time()`)
-- @return seconds (>= 0), or nil when absent or unusable
function M.parse_retry_after(value, now)
  if type(value) == "number" then return value >= 0 and value or nil end
  if type(value) ~= "string" then return nil end
  return core.parse_retry_after(value, now or os.time())
end

-- Park-Miller generator seeded per process: LuaJIT's and 5.1's math.random
-- start from the same seed in every process, which would line up the
-- "random" backoff of a whole fleet of workers.
local seed = (os.time() + floor(os.clock() * 1e6)
  + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0)) % 2147483646 + 1

--- Uniform number in [0, 1) (the default jitter source of Lua callers).
function M.random()
  seed = (seed * 16807) % 2147483647
  return (seed - 1) / 2147483646
end

-- A random draw from `fn`, clamped to [0, 1] (a broken source must not
-- break the policy).
local function draw(fn)
  local r = (fn or M.random)()
  if type(r) ~= "number" or r ~= r then return 0 end
  return r < 0 and 0 or (r > 1 and 1 or r)
end

local function policy_table(opts)
  local p = {}
  for k, v in pairs(M.DEFAULTS) do p[k] = v end
  for k, v in pairs(opts or {}) do p[k] = v end
  return p
end

--- Seconds to wait before the next attempt.
-- @param attempt the attempt that just failed (1 for the first try)
-- @param retry_after raw header value, seconds, or nil
-- @param opts {backoff_base, backoff_max, retry_after_max, backoff_floor, random, now}
-- @return seconds
function M.delay(attempt, retry_after, opts)
  local p = policy_table(opts)
  local c = core.policy_new(p)
  return c:delay(attempt, retry_after, draw(p.random), p.now and p.now() or os.time())
end

local Policy = {}
Policy.__index = Policy

--- A policy object holding its settings (fields readable as `p.max_attempts`, ...).
-- @param opts {max_attempts (false: no limit), max_age (seconds, 0: none),
--   backoff_base, backoff_max, retry_after_max, backoff_floor, random, now};
--   missing fields take `DEFAULTS`
function M.new(opts)
  local p = policy_table(opts)
  p.core = core.policy_new(p)
  return setmetatable(p, Policy)
end

--- @see classify
function Policy:retryable(x) return M.classify(x) end

--- @see delay
function Policy:delay(attempt, retry_after)
  return self.core:delay(attempt, retry_after, draw(self.random), self.now and self.now() or os.time())
end

--- Should attempt `attempt` (which just failed with `x`) be followed by another?
function Policy:again(attempt, x)
  return (not self.max_attempts or attempt < self.max_attempts) and M.classify(x)
end

--- What to do after an attempt: the one decision (csrc/policy.c).
-- @param record a classified outcome (core.classify) or an error object
-- @param attempts attempts made so far
-- @param age seconds since the order was queued (for max_age)
-- @return action ("ack" | "retry" | "dead" | "stop"), delay, pause, slow_down, why
function Policy:decide(record, attempts, age)
  return self.core:decide(record, attempts, age or 0, draw(self.random))
end

return M
