-- The retry/backoff policy shared by every driver, through its Lua view
-- (optimizely.offline.retry): each answer comes from the C classifier and
-- policy, the same ones the scheduler applies (no network).
local retry = require("optimizely.offline.retry")
local core = require("optimizely.offline.core")
local client = require("optimizely.offline.client")
local queue_opts = require("optimizely.offline.queue_opts")
local sched = require("optimizely.offline.sched")

describe("the defaults, declared once in C", function()
  it("are the policy's and the scheduler's, and the options' defaults read them", function()
    assert.same(core.policy_defaults(), retry.DEFAULTS)
    assert.same({ max_attempts = 4, max_age = 0, backoff_base = 0.25, backoff_max = 10, backoff_floor = 0.05,
      retry_after_max = 60 }, retry.DEFAULTS)
    local f = client.schema.fields
    assert.equal(retry.DEFAULTS.max_attempts, f.max_attempts.default)
    assert.equal(retry.DEFAULTS.backoff_base, f.backoff_base.default)
    assert.equal(retry.DEFAULTS.backoff_max, f.backoff_max.default)
    assert.equal(retry.DEFAULTS.retry_after_max, f.retry_after_max.default)
    assert.equal(sched.DEFAULTS.auth_pause, queue_opts.common.auth_pause.default)
    assert.equal(300, sched.DEFAULTS.auth_pause)
  end)
end)

describe("retry.classify", function()
  it("retries 408, 429, 500, 502, 503 and 504", function()
    for _, s in ipairs({ 408, 429, 500, 502, 503, 504 }) do
      assert.is_true(retry.classify(s), tostring(s))
    end
  end)

  it("never retries other statuses", function()
    for _, s in ipairs({ 200, 201, 204, 301, 400, 401, 403, 404, 409, 413, 422, 501, 505 }) do
      assert.is_false(retry.classify(s), tostring(s))
    end
  end)

  it("retries network and timeout, not tls, api, http or validation", function()
    assert.is_true(retry.classify("network"))
    assert.is_true(retry.classify("timeout"))
    for _, k in ipairs({ "tls", "api", "http", "validation", "full" }) do
      assert.is_false(retry.classify(k), k)
    end
  end)

  it("classifies error objects by kind, and http ones by status", function()
    assert.is_true(retry.classify({ kind = "http", status = 503 }))
    assert.is_false(retry.classify({ kind = "http", status = 400 }))
    assert.is_true(retry.classify({ kind = "timeout" }))
    assert.is_false(retry.classify({ kind = "api", status = 200 }))
    assert.is_false(retry.classify({ kind = "transport" })) -- a broken contract is never retried
    assert.is_false(retry.classify(nil))
  end)

  it("answers as the C classifier does", function()
    for _, s in ipairs({ 200, 408, 429, 500, 503, 400, 401, 404 }) do
      local rec = core.classify(s, "")
      assert.equal(not rec.ok and rec.retryable == true, retry.classify(s), tostring(s))
    end
    assert.is_true(core.classify(429, "").throttled) -- what the pause and the limiter read
    assert.is_nil(core.classify(503, "").throttled)
  end)
end)

describe("retry.parse_retry_after", function()
  local NOW = 784111777 -- Sun, 06 Nov 1994 08:49:37 GMT

  it("reads delay-seconds", function()
    assert.equal(0, retry.parse_retry_after("0"))
    assert.equal(1, retry.parse_retry_after("1"))
    assert.equal(120, retry.parse_retry_after(" 120 "))
    assert.equal(5, retry.parse_retry_after(5))
  end)

  it("reads the three HTTP date forms relative to now", function()
    assert.equal(784111777, retry.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(784111777, retry.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equal(784111777, retry.parse_http_date("Sun Nov  6 08:49:37 1994"))
    assert.equal(30, retry.parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", NOW))
    assert.equal(0, retry.parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", NOW)) -- past
  end)

  it("agrees with os.time for a recent date", function()
    -- 2024-02-29 (leap day) 12:00:00 UTC
    assert.equal(1709208000, retry.parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT"))
    assert.equal(951782400, retry.parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"))
  end)

  it("ignores garbage, negatives and missing values", function()
    -- delay-seconds is digits only (RFC 9110): "0x10", "3.5" and "1e1" are
    -- not honoured by any engine (they once were by the C worker alone)
    for _, v in ipairs({ "", "soon", "-5", "1.5", "0x10", "3.5", "1e1", "Sun, 06 Nov 1994 25:00:00 GMT",
      "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 CET" }) do
      assert.is_nil(retry.parse_retry_after(v, NOW), v)
    end
    assert.is_nil(retry.parse_retry_after(nil))
    assert.is_nil(retry.parse_retry_after(-1))
  end)
end)

describe("retry.delay", function()
  local function opts(r, extra)
    local o = { backoff_base = 0.25, backoff_max = 10, retry_after_max = 60, backoff_floor = 0.05,
      random = function() return r end }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  it("grows exponentially up to backoff_max (full jitter at r≈1)", function()
    local r = 0.999999
    assert.near(0.25, retry.delay(1, nil, opts(r)), 1e-4)
    assert.near(0.5, retry.delay(2, nil, opts(r)), 1e-4)
    assert.near(1.0, retry.delay(3, nil, opts(r)), 1e-4)
    assert.near(10, retry.delay(10, nil, opts(r)), 1e-4)
    assert.near(10, retry.delay(60, nil, opts(r)), 1e-4)
  end)

  it("scales the window by the random draw (full jitter)", function()
    assert.near(1.0, retry.delay(4, nil, opts(0.5)), 1e-9) -- window 2.0
    assert.near(0.2, retry.delay(4, nil, opts(0.1)), 1e-9)
  end)

  it("keeps a small floor, but never above the window", function()
    assert.equal(0.05, retry.delay(1, nil, opts(0)))
    assert.equal(0, retry.delay(1, nil, opts(0, { backoff_base = 0 })))
    assert.equal(0.01, retry.delay(1, nil, opts(0, { backoff_base = 0.01 })))
  end)

  it("lets a Retry-After replace the computed delay, capped", function()
    assert.equal(3, retry.delay(1, "3", opts(0.9)))
    -- a Retry-After of 0 keeps the floor: it must not skip the backoff (issue 11)
    assert.equal(0.05, retry.delay(5, "0", opts(0.9)))
    assert.equal(60, retry.delay(1, "86400", opts(0.9)))
    assert.equal(7, retry.delay(1, "120", opts(0.9, { retry_after_max = 7 })))
    assert.equal(30, retry.delay(1, "Sun, 06 Nov 1994 08:50:07 GMT",
      opts(0.9, { now = function() return 784111777 end })))
  end)

  it("falls back to backoff when Retry-After is unusable", function()
    assert.near(0.25 * 0.5, retry.delay(1, "whenever", opts(0.5)), 1e-9)
  end)

  it("draws uniformly in [0, 1) by default", function()
    local lo, hi, sum = 1, 0, 0
    for _ = 1, 2000 do
      local r = retry.random()
      assert.is_true(r >= 0 and r < 1)
      lo, hi, sum = math.min(lo, r), math.max(hi, r), sum + r
    end
    assert.is_true(lo < 0.05 and hi > 0.95)
    assert.near(0.5, sum / 2000, 0.05)
    for _ = 1, 200 do
      local d = retry.delay(3, nil)
      assert.is_true(d >= 0.05 and d <= 1.0)
    end
  end)
end)

describe("retry.new policy", function()
  it("decides as the C policy does: ack, retry with a delay, stop, dead", function()
    local p = retry.new({ max_attempts = 3, max_age = 60, random = function() return 0.5 end })
    assert.equal("ack", (p:decide(core.classify(200, ""), 1)))
    local action, delay, pause, slow_down = p:decide(core.classify(429, "", "2"), 1)
    assert.same({ "retry", 2, 2, true }, { action, delay, pause, slow_down })
    action, delay, pause = p:decide(core.classify(503, "", "2"), 1)
    assert.same({ "retry", 2, 0 }, { action, delay, pause }) -- only a 429 pauses everyone
    assert.same({ "stop", "credentials" }, { select(1, p:decide(core.classify(401, ""), 1)),
      select(5, p:decide(core.classify(401, ""), 1)) })
    assert.equal("attempts", select(5, p:decide(core.classify(503, ""), 3)))
    assert.equal("expired", select(5, p:decide(core.classify(503, "", "2"), 1, 59)))
    assert.equal("rejected", select(5, p:decide(core.classify(400, ""), 1)))
  end)

  it("carries settings and decides whether to go again", function()
    local p = retry.new({ max_attempts = 3, random = function() return 0.5 end })
    assert.equal(3, p.max_attempts)
    assert.equal(0.25, p.backoff_base)
    assert.is_true(p:again(1, 503))
    assert.is_true(p:again(2, "network"))
    assert.is_false(p:again(3, 503))
    assert.is_false(p:again(1, 400))
    assert.near(0.25, p:delay(2, nil), 1e-9)
    assert.equal(2, p:delay(2, "2"))
    local unlimited = retry.new({ max_attempts = false })
    assert.is_true(unlimited:again(1000, 503))
    assert.is_false(unlimited:again(1, "tls"))
    assert.is_false(unlimited:again(1, "api"))
  end)
end)
