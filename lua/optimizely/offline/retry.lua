--- The retry policy, from Lua: a thin view of the C core. The decisions
-- live once, in C — the classifier (csrc/delivery/classify.c), the policy
-- (csrc/delivery/policy.c, its defaults included) and the scheduler that applies
-- them (csrc/delivery/sched.c, optimizely.offline.sched) — and every path asks
-- them there: the libcurl engine and the queue's thread in C, `client:send`,
-- user transports and the nginx queue through the scheduler's binding.
-- This module reads the same functions, for callers that want to ask a
-- question of the policy (and for the docs of its options).
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
local options = require("optimizely.offline.opts")

local M = {}

local floor, type = math.floor, type

--- HTTP statuses worth another try (documentation: the classifier decides).
M.RETRYABLE_STATUS = { [408] = true, [429] = true, [500] = true, [502] = true,
  [503] = true, [504] = true }

--- Transport failure kinds worth another try (documentation: the classifier decides).
M.RETRYABLE_KIND = { network = true, timeout = true }

--- The policy's defaults, declared once in C (`core.policy_defaults`), in
-- seconds: `{max_attempts = 4 (the first try included), max_age = 0 (no
-- limit), backoff_base = 0.25, backoff_max = 10, backoff_floor = 0.05,
-- retry_after_max = 60}`.
M.DEFAULTS = core.policy_defaults()

-- The classified record of a status, a transport failure kind or an error
-- object; nil for anything the classifier does not take (a kind it does
-- not know as a transport failure: "api", "validation", ...).
local function record_of(x)
  local t = type(x)
  if t == "number" then
    if x < 100 or x > 999 or x ~= floor(x) then return nil end
    return core.classify(x, "")
  end
  if t == "string" then
    local rec = core.classify_failure(x, "")
    return rec.kind == x and rec or nil
  end
  if t == "table" then
    if x.kind == "http" and type(x.status) == "number" then return record_of(x.status) end
    if type(x.kind) == "string" and x.kind ~= "http" then return record_of(x.kind) end
  end
  return nil
end

--- Is this failure retryable? Asks the classifier.
-- @param x an HTTP status (number), a transport failure kind (string) or an
--   error object (by its `status` when of kind "http", else its `kind`)
-- @return boolean
function M.classify(x)
  local rec = record_of(x)
  return rec ~= nil and not rec.ok and rec.retryable == true
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

local function attempts_ok(v)
  if v == false or (type(v) == "number" and v >= 1 and v <= 1e6 and v == floor(v)) then return true end
  return nil, "must be false (no limit) or an integer in 1..1000000"
end

--- The policy's options, checked once here (the C policy trusts them):
-- `max_attempts` (false: no limit), `max_age`, `backoff_base`,
-- `backoff_max`, `backoff_floor`, `retry_after_max` (seconds), `random`
-- and `now` (functions).
M.schema = options.schema("optimizely.offline.retry", "opts", {
  max_attempts = { type = "any", check = attempts_ok },
  max_age = { type = "number", min = 0 },
  backoff_base = { type = "number", min = 0 },
  backoff_max = { type = "number", min = 0 },
  backoff_floor = { type = "number", min = 0 },
  retry_after_max = { type = "number", min = 0 },
  random = { type = "function" },
  now = { type = "function" },
})

local function policy_table(o)
  local p = {}
  for k, v in pairs(M.DEFAULTS) do p[k] = v end
  for k, v in pairs(M.schema:check(o, 3)) do p[k] = v end
  return p
end

--- Seconds to wait before the next attempt (the policy's delay).
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

--- A policy object holding its settings (fields readable as
-- `p.max_attempts`, ...): the table a scheduler's `policy` option takes.
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

--- Would the policy try again after attempt `attempt` failed with `x`?
-- The C policy's decision (`decide`), read as a yes or no.
-- @param attempt the attempt that just failed (1 for the first)
-- @param x an HTTP status, a transport failure kind or an error object
-- @return boolean
function Policy:again(attempt, x)
  local rec = record_of(x)
  if not rec or rec.ok then return false end
  return (self:decide(rec, attempt, 0)) == "retry"
end

--- What to do after an attempt: the one decision (csrc/delivery/policy.c).
-- @param record a classified outcome (core.classify) or an error object
-- @param attempts attempts made so far
-- @param age seconds since the order was queued (for max_age)
-- @return action ("ack" | "retry" | "dead" | "stop"), delay, pause, slow_down, why
function Policy:decide(record, attempts, age)
  return self.core:decide(record, attempts, age or 0, draw(self.random))
end

return M
