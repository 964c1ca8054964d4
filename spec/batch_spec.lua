-- client:send_batch against the sandbox: a real nginx over real TLS on
-- 127.0.0.1, faults injected through its control endpoint. Every time check
-- is a lower bound (a pause or a rate cap must make the batch take at least
-- that long); nothing asserts that the machine is fast.
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local orders = require("support.orders")
local sb = require("support.sandbox")

-- Payloads with refCodes prefix1..prefixN (fresh tables every call).
local make = orders.numbered

local recorded = sb.recorded

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("client:send_batch", function()
  local info

  local function new_client(extra)
    return offline.client(sb.client_config(info,
      { backoff_base = 0.02, backoff_max = 0.2, random = function() return 0.5 end }, extra))
  end

  -- on_result recorder: calls[i] = number of calls for index i.
  local function recorder()
    local r = { calls = {}, res = {}, err = {}, order = {} }
    function r.cb(i, res, err)
      r.calls[i] = (r.calls[i] or 0) + 1
      r.res[i], r.err[i] = res, err
      r.order[#r.order + 1] = i
    end
    return r
  end

  setup(function()
    info = sb.ensure()
  end)

  before_each(function()
    sb.reset()
  end)

  it("sends an array of payloads, calling on_result once per order", function()
    local c = new_client()
    local list = make("arr-", 20)
    local rec = recorder()
    local s = c:send_batch(list, { concurrency = 4, on_result = rec.cb })
    assert.equal(20, s.sent)
    assert.equal(0, s.failed)
    assert.equal(0, s.retried)
    assert.equal(0, s.invalid)
    assert.equal(20, s.read)
    assert.same({}, s.failures)
    assert.same({}, s.callback_errors)
    assert.is_number(s.elapsed)
    assert.is_true(s.elapsed > 0)
    assert.is_nil(s.error)
    for i = 1, 20 do
      assert.equal(1, rec.calls[i], "on_result calls for order " .. i)
      local res = rec.res[i]
      assert.equal(200, res.status)
      assert.equal(1, res.attempts)
      assert.equal("OK", res.envelope.status)
      assert.same({}, res.warnings)
      assert.is_nil(rec.err[i])
    end
    assert.equal(20, #rec.order)
    local counts, n = recorded()
    assert.equal(20, n)
    for i = 1, 20 do assert.equal(1, counts["arr-" .. i]) end
    -- the same request as client:send: headers, one User-Agent, no Expect
    local last = sb.last()
    local h = {}
    for k, v in pairs(last.headers) do h[k:lower()] = v end
    assert.equal(require("optimizely.offline.context").user_agent(), h["user-agent"])
    assert.equal(info.site, h.site)
    assert.equal(info.channel, h.channel)
    assert.equal("application/json", h["content-type"])
    assert.equal("application/json", h.accept)
    assert.is_nil(h.expect)
    assert.is_true(last.token_ok)
    assert.equal(1.1, last.http_version)
    c:close()
  end)

  it("streams an iterator source, never calling it again after nil", function()
    local c = new_client()
    local calls, n = 0, 25
    local function source()
      calls = calls + 1
      assert(calls <= n + 1, "source called after it returned nil")
      if calls > n then return nil end
      local p = orders.minimal()
      p.order.refCode = "it-" .. calls
      return p
    end
    local rec = recorder()
    local s = c:send_batch(source, { concurrency = 3, on_result = rec.cb })
    assert.equal(n + 1, calls)
    assert.equal(n, s.sent)
    assert.equal(n, s.read)
    assert.equal(0, s.failed)
    for i = 1, n do assert.equal(1, rec.calls[i]) end
    local counts, total = recorded()
    assert.equal(n, total)
    for i = 1, n do assert.equal(1, counts["it-" .. i]) end
    -- an empty source is a batch of nothing
    s = c:send_batch({}, { concurrency = 2 })
    assert.equal(0, s.sent)
    assert.equal(0, s.read)
    s = c:send_batch(function() return nil end)
    assert.equal(0, s.sent)
    c:close()
  end)

  it("keeps every order's encoder warnings next to the server's answer", function()
    local c = new_client()
    local list = make("warn-", 3)
    list[2].order.total = 99 -- differs from the items' sum: an encoder warning
    local rec = recorder()
    local s = c:send_batch(list, { on_result = rec.cb })
    assert.equal(3, s.sent)
    assert.same({}, rec.res[1].warnings)
    assert.is_true(#rec.res[2].warnings >= 1)
    assert.is_string(rec.res[2].warnings[1].message)
    c:close()
  end)

  it("ends every order sent or failed under 503, 429 and closed connections, none twice",
    function()
      sb.faults({ count = 4, status = 503 }, { count = 2, status = 429, retry_after = "0" },
        { count = 3, close = true }, { count = 2, status = 502 })
      local c = new_client({ max_attempts = 6 })
      local n = 60
      local rec = recorder()
      local s = c:send_batch(make("mix-", n), { concurrency = 6, on_result = rec.cb })
      assert.equal(n, s.sent + s.failed)
      assert.equal(s.failed, #s.failures)
      assert.equal(n, s.sent) -- six attempts outlast eleven faults
      assert.is_true(s.retried >= 8, "retried " .. s.retried) -- 503, 429, 502 (closes: curl may resend)
      assert.equal(2, s.throttled)
      for i = 1, n do assert.equal(1, rec.calls[i], "on_result calls for order " .. i) end
      local retried_orders = 0
      for i = 1, n do
        if rec.res[i].attempts > 1 then retried_orders = retried_orders + 1 end
      end
      assert.is_true(retried_orders >= 1)
      -- the close fault drops the connection before the order is processed:
      -- no order may be recorded twice
      local counts, total = recorded()
      assert.equal(n, total)
      assert.equal(n, count_keys(counts))
      for i = 1, n do assert.equal(1, counts["mix-" .. i], "records of mix-" .. i) end
      assert.equal(0, sb.stats().faults_pending)
      c:close()
    end)

  it("counts invalid orders, reports them with kind validation and never sends them", function()
    local c = new_client()
    local list = make("inv-", 10)
    list[3].order.total = nil
    list[7] = { order = "not an order" }
    list[10].order.currency = "pounds"
    local rec = recorder()
    local s = c:send_batch(list, { concurrency = 4, on_result = rec.cb })
    assert.equal(7, s.sent)
    assert.equal(3, s.invalid)
    assert.equal(3, s.failed) -- failed counts every order not sent, invalid ones too
    assert.equal(3, #s.failures)
    local seen = {}
    for _, f in ipairs(s.failures) do
      assert.equal("validation", f.err.kind)
      assert.equal(0, f.err.attempts)
      assert.is_false(f.err.retryable)
      seen[f.index] = true
    end
    assert.same({ [3] = true, [7] = true, [10] = true }, seen)
    for _, i in ipairs({ 3, 7, 10 }) do
      assert.equal(1, rec.calls[i])
      assert.is_nil(rec.res[i])
      assert.equal("validation", rec.err[i].kind)
    end
    local counts, total = recorded()
    assert.equal(7, total)
    assert.is_nil(counts["inv-3"])
    assert.is_nil(counts["inv-10"])
    assert.equal(7, sb.stats().requests)
    -- a source of nothing but invalid orders sends nothing
    s = c:send_batch({ {}, { order = {} } })
    assert.equal(0, s.sent)
    assert.equal(2, s.invalid)
    assert.equal(7, sb.stats().requests)
    c:close()
  end)

  it("does not retry a 400; gives up on 503 after max_attempts", function()
    sb.faults({ count = 1, status = 400 })
    local c = new_client({ max_attempts = 3 })
    local rec = recorder()
    local s = c:send_batch(make("400-", 5), { concurrency = 1, on_result = rec.cb })
    assert.equal(4, s.sent)
    assert.equal(1, s.failed)
    assert.equal(0, s.retried)
    local f = s.failures[1]
    assert.equal("http", f.err.kind)
    assert.equal(400, f.err.status)
    assert.equal(1, f.err.attempts)
    assert.is_false(f.err.retryable)
    assert.equal(f.err, rec.err[f.index])
    assert.is_nil(recorded()["400-" .. f.index])
    assert.equal(5, sb.stats().requests)

    sb.reset()
    sb.faults({ count = 3, status = 503 })
    s = c:send_batch(make("503-", 1), { concurrency = 1 })
    assert.equal(0, s.sent)
    assert.equal(1, s.failed)
    assert.equal(2, s.retried)
    assert.equal(503, s.failures[1].err.status)
    assert.equal(3, s.failures[1].err.attempts)
    assert.is_true(s.failures[1].err.retryable)
    assert.equal(3, sb.stats().requests)
    c:close()
  end)

  it("retries a 503 after its Retry-After while the other orders go on", function()
    sb.faults({ count = 1, status = 503, retry_after = "1" })
    local c = new_client()
    local rec = recorder()
    local s = c:send_batch(make("ra-", 4), { concurrency = 1, on_result = rec.cb })
    assert.equal(4, s.sent)
    assert.equal(1, s.retried)
    assert.equal(0, s.throttled)
    assert.is_true(s.elapsed >= 0.95, "elapsed " .. s.elapsed)
    -- the retried order was the first one (concurrency 1) and finished last
    assert.equal(2, rec.res[1].attempts)
    assert.same({ 2, 3, 4, 1 }, rec.order)
    c:close()
  end)

  it("pauses the whole batch on a 429 for its Retry-After", function()
    sb.faults({ count = 1, status = 429, retry_after = "1" })
    local c = new_client()
    local n = 24
    local s = c:send_batch(make("429-", n), { concurrency = 4 })
    assert.equal(n, s.sent)
    assert.equal(1, s.retried)
    assert.equal(1, s.throttled)
    assert.is_true(s.elapsed >= 0.95, "elapsed " .. s.elapsed)
    -- Arrival times at the server: the largest gap is the pause, and most of
    -- the batch comes after it (only what was already in flight, or finished
    -- before the 429 was read, may precede it). Without a batch-wide pause
    -- only the retried order would come late.
    local times = {}
    for _, rec in ipairs(sb.orders()) do times[#times + 1] = rec.received_at end
    table.sort(times)
    assert.equal(n, #times)
    local gap, at = 0, nil
    for i = 2, #times do
      if times[i] - times[i - 1] > gap then gap, at = times[i] - times[i - 1], i end
    end
    assert.is_true(gap >= 0.8, "largest gap between arrivals " .. gap)
    local after = n - at + 1
    assert.is_true(after >= n / 2, after .. " of " .. n .. " orders arrived after the pause")
    c:close()
  end)

  it("halves the requests in flight after a 429 (adaptive = false)", function()
    sb.faults({ count = 1, status = 429, retry_after = "0" })
    local c = new_client()
    local lowest = 8
    local s = c:send_batch(make("aimd-", 40), {
      concurrency = 8, adaptive = false,
      progress_interval = 0,
      progress = function(sum)
        if sum.throttled > 0 then
          lowest = math.min(lowest, sum.concurrency)
        end
      end,
    })
    assert.equal(40, s.sent)
    assert.equal(1, s.throttled)
    -- 8 -> 4 at the 429; it grows by one per round of successes, so the
    -- first report after the 429 sees at most 5
    assert.is_true(lowest >= 4 and lowest <= 5, "lowest limit " .. lowest)
    c:close()
  end)

  describe("adaptive concurrency (the default)", function()
    -- every endpoint request answered `delay_ms` late; settings outlive
    -- sb.reset(), so each test puts them back
    local function with_settings(t, fn)
      sb.settings(t)
      local ok, err = pcall(fn)
      sb.settings({ delay_ms = 0, max_concurrent = 0, retry_after = 1 })
      if not ok then error(err, 0) end
    end

    -- send_batch with a progress sampler: returns the summary and the
    -- samples {elapsed, limit, in_flight, sent}
    local function sampled(c, list, o, on_sample)
      local samples = {}
      o.progress_interval = o.progress_interval or 0.02
      o.progress = function(sum)
        samples[#samples + 1] = { elapsed = sum.elapsed, limit = sum.concurrency, in_flight = sum.in_flight,
          sent = sum.sent }
        if on_sample then on_sample(sum) end
      end
      return c:send_batch(list, o), samples
    end

    it("starts low and grows to the maximum while latency stays flat", function()
      with_settings({ delay_ms = 20 }, function()
        local c = new_client()
        local s, samples = sampled(c, make("grow-", 400), { concurrency = 32 })
        assert.equal(400, s.sent)
        assert.is_true(samples[1].limit <= 16, "first limit " .. samples[1].limit)
        local top = 0
        for _, x in ipairs(samples) do top = math.max(top, x.limit) end
        assert.equal(32, top)
        local st = sb.stats()
        assert.is_true(st.concurrent_max > 16 and st.concurrent_max <= 32, "peak " .. st.concurrent_max)
        c:close()
      end)
    end)

    it("backs off on 429s and settles near the server's limit, few requests refused", function()
      with_settings({ delay_ms = 20, max_concurrent = 6, retry_after = 0 }, function()
        local c = new_client({ max_attempts = 10 })
        local n = 600
        local s, samples = sampled(c, make("settle-", n), { concurrency = 64 })
        assert.equal(n, s.sent)
        local late = {}
        for _, x in ipairs(samples) do
          if x.sent >= n / 2 then late[#late + 1] = x.limit end
        end
        table.sort(late)
        local median = late[math.ceil(#late / 2)]
        assert.is_true(median >= 4 and median <= 7, "settled limit " .. tostring(median))
        local st = sb.stats()
        -- a fixed 64 would have most of its requests refused
        assert.is_true(st.throttled / st.requests < 0.05, st.throttled .. " of " .. st.requests .. " refused")
        assert.equal(st.throttled, s.throttled)
        c:close()
      end)
    end)

    it("backs off on a retryable 5xx", function()
      sb.faults({ count = 1, status = 503, retry_after = "0" })
      local c = new_client()
      local s, samples = sampled(c, make("5xx-", 40), { concurrency = 8, progress_interval = 0 })
      assert.equal(40, s.sent)
      assert.equal(1, s.retried)
      local lowest = 8
      for _, x in ipairs(samples) do lowest = math.min(lowest, x.limit) end
      assert.is_true(lowest <= 7, "lowest limit " .. lowest) -- 8 * 0.9, floored
    end)

    it("backs off when latency rises", function()
      with_settings({ delay_ms = 10 }, function()
        local c = new_client({ timeout = 10 })
        local slowed, lowest = nil, math.huge
        local s = sampled(c, make("lat-", 500), { concurrency = 16 },
          function(sum)
            if not slowed and sum.sent >= 150 and sum.concurrency == 16 then
              slowed = true
              sb.settings({ delay_ms = 150 }) -- 15 times the round trip the limiter has seen
            elseif slowed and slowed ~= "done" then
              lowest = math.min(lowest, sum.concurrency)
              if sum.concurrency < 16 then
                slowed = "done"
                sb.settings({ delay_ms = 10 })
              end
            end
          end)
        assert.equal(500, s.sent)
        assert.truthy(slowed, "the limit never reached 16")
        assert.is_true(lowest < 16, "lowest limit after the slow-down " .. tostring(lowest))
        c:close()
      end)
    end)

    it("never exceeds the maximum", function()
      with_settings({ delay_ms = 20 }, function()
        local c = new_client()
        local s, samples = sampled(c, make("max-", 200), { concurrency = 4 })
        assert.equal(200, s.sent)
        for _, x in ipairs(samples) do
          assert.is_true(x.limit <= 4 and x.in_flight <= 4, "limit " .. x.limit .. ", in flight " .. x.in_flight)
        end
        assert.is_true(sb.stats().concurrent_max <= 4)
        c:close()
      end)
    end)
  end)

  it("caps the rate (orders per second)", function()
    local c = new_client()
    local s = c:send_batch(make("rate-", 30), { concurrency = 8, rate = 20 })
    assert.equal(30, s.sent)
    -- 30 orders at 20/s: the last may start 29/20 s after the first
    assert.is_true(s.elapsed >= 1.4, "elapsed " .. s.elapsed)
    local times = {}
    for _, rec in ipairs(sb.orders()) do times[#times + 1] = rec.received_at end
    table.sort(times)
    assert.is_true(times[#times] - times[1] >= 1.2, "arrivals spread over " .. (times[#times] - times[1]))
    c:close()
  end)

  it("honours the concurrency: no more requests in flight, no more connections", function()
    -- every order held 0.5 s by the server: 6 orders through 2 slots take
    -- three rounds
    sb.faults({ count = 6, delay = 0.5 })
    local c = new_client()
    local peak = 0
    local s = c:send_batch(make("conc-", 6), {
      concurrency = 2, progress_interval = 0.05,
      progress = function(sum) if sum.in_flight > peak then peak = sum.in_flight end end,
    })
    assert.equal(6, s.sent)
    assert.is_true(s.elapsed >= 1.45, "elapsed " .. s.elapsed)
    assert.is_true(peak <= 2)

    -- keep-alive: 40 orders through 4 slots open at most 4 connections
    sb.reset()
    s = c:send_batch(make("reuse-", 40), { concurrency = 4 })
    assert.equal(40, s.sent)
    local st = sb.stats()
    assert.equal(40, st.requests)
    local connections = st.requests - st.reused
    assert.is_true(connections >= 1 and connections <= 4, connections .. " connections")
    assert.is_true(st.max_connection_requests >= 10)
    c:close()
  end)

  it("multiplexes over HTTP/2 when asked", function()
    local c = new_client({ http_version = "2" })
    local rec = recorder()
    local s = c:send_batch(make("h2-", 30), { concurrency = 8, on_result = rec.cb })
    assert.equal(30, s.sent)
    local st = sb.stats()
    assert.equal(30, st.requests)
    -- one connection carries the streams (PIPEWAIT); allow a second in case
    -- of a race at start-up, never one per slot
    local connections = st.requests - st.reused
    assert.is_true(connections <= 2, connections .. " connections")
    c:close()
  end)

  it("keeps going when on_result raises, and reports the errors", function()
    local c = new_client()
    local calls = {}
    local s = c:send_batch(make("cb-", 12), {
      concurrency = 3,
      on_result = function(i)
        calls[i] = (calls[i] or 0) + 1
        if i == 3 or i == 7 then error("boom " .. i) end
        if i == 9 then error({ code = 1 }) end -- a non-string error value
      end,
    })
    assert.equal(12, s.sent)
    assert.equal(0, s.failed)
    for i = 1, 12 do assert.equal(1, calls[i]) end
    assert.equal(3, #s.callback_errors)
    local by = {}
    for _, e in ipairs(s.callback_errors) do by[e.index] = e.message end
    assert.matches("boom 3", by[3])
    assert.matches("boom 7", by[7])
    assert.is_string(by[9])
    c:close()
  end)

  it("calls progress while running and once at the end", function()
    sb.faults({ count = 2, delay = 0.4 })
    local c = new_client()
    local seen = {}
    local s = c:send_batch(make("prog-", 10), {
      concurrency = 2, progress_interval = 0.1,
      progress = function(sum)
        seen[#seen + 1] = { sent = sum.sent, in_flight = sum.in_flight, elapsed = sum.elapsed }
        if #seen == 2 then error("progress failed") end
      end,
    })
    assert.equal(10, s.sent)
    assert.is_true(#seen >= 3, #seen .. " progress calls")
    local final = seen[#seen]
    assert.equal(10, final.sent)
    assert.equal(0, final.in_flight)
    for k = 2, #seen do assert.is_true(seen[k].sent >= seen[k - 1].sent) end
    assert.equal(1, #s.callback_errors)
    assert.is_true(s.callback_errors[1].progress)
    assert.matches("progress failed", s.callback_errors[1].message)
    c:close()
  end)

  it("reports transport failures per order (refused connection)", function()
    local c = new_client({ base_url = "https://127.0.0.1:1", max_attempts = 2 })
    local rec = recorder()
    local s = c:send_batch(make("ref-", 5), { concurrency = 2, on_result = rec.cb })
    assert.equal(0, s.sent)
    assert.equal(5, s.failed)
    assert.equal(5, s.retried)
    for _, f in ipairs(s.failures) do
      assert.equal("network", f.err.kind)
      assert.equal(7, f.err.curl_code) -- CURLE_COULDNT_CONNECT
      assert.equal(2, f.err.attempts)
      assert.is_true(f.err.retryable)
    end
    for i = 1, 5 do assert.equal(1, rec.calls[i]) end
    c:close()
  end)

  it("times out a slow answer (curl's timer) and retries it", function()
    sb.faults({ count = 1, delay = 3 })
    local c = new_client({ timeout = 0.5, max_attempts = 1 })
    local s = c:send_batch(make("slow-", 1))
    assert.equal(1, s.failed)
    local err = s.failures[1].err
    assert.equal("timeout", err.kind)
    assert.equal(28, err.curl_code) -- CURLE_OPERATION_TIMEDOUT
    assert.is_true(err.retryable)
    c:close()
    -- a generous timeout for the second attempt: it must pass under ASan too
    sb.faults({ count = 1, delay = 6, close = true })
    c = new_client({ timeout = 3 })
    local rec = recorder()
    s = c:send_batch(make("slow2-", 3), { concurrency = 2, on_result = rec.cb })
    assert.equal(3, s.sent)
    assert.equal(1, s.retried)
    local twice = 0
    for i = 1, 3 do if rec.res[i].attempts == 2 then twice = twice + 1 end end
    assert.equal(1, twice)
    c:close()
  end)

  it("refuses an untrusted certificate and a response body above 1 MiB", function()
    local c = new_client({ ca_file = false })
    local s = c:send_batch(make("tls-", 2))
    assert.equal(2, s.failed)
    assert.equal(0, s.retried)
    assert.equal("tls", s.failures[1].err.kind)
    c:close()
    sb.faults({ count = 1, status = 200, body = string.rep("x", 1024 * 1024 + 1) })
    c = new_client({ max_attempts = 1 })
    s = c:send_batch(make("big-", 1))
    assert.equal(1, s.failed)
    assert.equal("network", s.failures[1].err.kind)
    assert.matches("response body larger than 1048576 bytes", s.failures[1].err.message)
    c:close()
  end)

  it("stops on refused credentials: nothing more is sent, every other order ends as not sent", function()
    sb.faults({ count = 1, status = 401, body = '{"status":"fail","errors":[{"code":"InvalidSiteToken"}]}' })
    local c = new_client()
    local rec = recorder()
    local n = 50
    local s = c:send_batch(make("auth-", n), { concurrency = 1, on_result = rec.cb })
    assert.equal(0, s.sent)
    assert.equal(n, s.read)
    assert.equal(n, s.failed)
    assert.equal(n, #s.failures)
    assert.equal("auth", s.stopped.kind)
    assert.equal("InvalidSiteToken", s.stopped.code)
    assert.is_true(s.not_sent >= n - 2, "not_sent " .. s.not_sent)
    -- one request, not fifty with the same token
    assert.equal(1, sb.stats().requests)
    for i = 1, n do
      assert.equal(1, rec.calls[i], "on_result calls for order " .. i)
      assert.equal("auth", rec.err[i].kind)
      assert.is_false(rec.err[i].retryable)
    end
    c:close()
  end)

  it("finishes what is in flight when the source raises", function()
    local c = new_client()
    local i = 0
    local s = c:send_batch(function()
      i = i + 1
      if i == 6 then error("disk on fire") end
      local p = orders.minimal()
      p.order.refCode = "src-" .. i
      return p
    end, { concurrency = 3 })
    assert.equal(5, s.sent)
    assert.equal(5, s.read)
    assert.matches("disk on fire", s.error)
    assert.is_nil(s.interrupted)
    assert.equal(6, i) -- not called again after the error
    assert.equal(5, select(2, recorded()))
    c:close()
  end)

  it("stops at once on an interrupt and lists the orders of unknown outcome", function()
    -- held 2 s, then dropped unrecorded (they outlive this test)
    sb.faults({ count = 3, delay = 2, close = true })
    local c = new_client()
    local t0 = core.now()
    local first = true
    local s = c:send_batch(make("int-", 20), {
      concurrency = 4, on_interrupt = "return",
      on_result = function()
        -- what lua.c raises on Ctrl-C: must not be swallowed like other errors
        if first then first = false; error("interrupted!") end
      end,
    })
    assert.is_true(s.interrupted)
    assert.matches("interrupted!", s.error)
    assert.is_table(s.unknown)
    -- three slots were held by the delayed orders when the first result came
    assert.is_true(#s.unknown >= 1)
    assert.is_true(s.sent + s.failed + #s.unknown <= s.read)
    for k = 2, #s.unknown do assert.is_true(s.unknown[k] > s.unknown[k - 1]) end
    assert.same({}, s.callback_errors)
    assert.is_true(core.now() - t0 < 60)
    c:close()
  end)

  it("raises the interrupt again after stopping, carrying the summary (the default)", function()
    local c = new_client()
    local ok, e = pcall(c.send_batch, c, make("intr-", 10), {
      concurrency = 2,
      on_result = function() error("interrupted!") end,
    })
    assert.is_false(ok)
    assert.equal("interrupted!", tostring(e)) -- lua.c prints what it always prints
    assert.is_true(require("optimizely.offline.errors").is_interrupt(e))
    assert.is_true(e.summary.interrupted)
    assert.is_true(e.summary.read >= 1)
    assert.is_table(e.summary.unknown)
    c:close()
  end)

  it("keeps memory flat while streaming 50,000 orders", function()
    -- the server answers 200 without recording (a fault rule), so only the
    -- client's side is measured
    local n = tonumber(os.getenv("OO_BATCH_STREAM_N") or "") or 50000
    sb.faults({ count = n, status = 200, body = '{"status":"OK"}' })
    local c = new_client()
    local p = orders.minimal()
    local i = 0
    local samples = {}
    local function source()
      i = i + 1
      if i > n then return nil end
      if i % 5000 == 0 then
        collectgarbage("collect")
        samples[#samples + 1] = collectgarbage("count")
      end
      p.order.refCode = "flat-" .. i -- one table reused: encode copies it into JSON
      return p
    end
    local s = c:send_batch(source, { concurrency = 16 })
    assert.equal(n, s.sent)
    assert.equal(0, s.failed)
    -- live heap after a full collection: what is held for 16 orders in
    -- flight, whether 5,000 or 50,000 have gone through (50,000 payloads
    -- would be tens of MiB)
    local lo, hi = math.huge, 0
    for k = 2, #samples do
      lo, hi = math.min(lo, samples[k]), math.max(hi, samples[k])
    end
    assert.is_true(#samples < 2 or hi - lo < 512, string.format("heap grew from %.0f to %.0f KiB", lo, hi))
    c:close()
  end)

  it("refuses bad options and sources", function()
    local c = new_client()
    local list = make("bad-", 1)
    local function raises(pattern, src, opts)
      local ok, err = pcall(c.send_batch, c, src, opts)
      assert.is_false(ok)
      assert.matches(pattern, tostring(err))
    end
    raises("opts must be a table", list, "fast")
    raises("opts%.concurency is not a known option %(did you mean 'concurrency'%?%)", list, { concurency = 4 })
    raises("concurrency must be an integer in 1%.%.1024", list, { concurrency = 0 })
    raises("concurrency must be an integer", list, { concurrency = 1.5 })
    raises("concurrency must be an integer", list, { concurrency = "4" })
    raises("concurrency must be an integer", list, { concurrency = 2000 })
    raises("concurrency must be an integer", list, { concurrency = 0 / 0 })
    raises("rate must be > 0", list, { rate = 0 })
    raises("rate must be > 0", list, { rate = -5 })
    raises("rate must be a finite number", list, { rate = 0 / 0 })
    raises("rate must be a finite number, got string", list, { rate = "10" })
    raises("on_result must be a function", list, { on_result = true })
    raises("progress must be a function", list, { progress = {} })
    raises("progress_interval must be in 0%.%.86400", list, { progress_interval = -1 })
    raises("source must be an array of payloads or an iterator function, got string", "x")
    raises("source must be an array of payloads or an iterator function, got nil", nil)
    -- the error points at the caller
    for _, bad in ipairs({ { list, { concurrency = 0 } }, { list, "x" }, { list, { nope = 1 } },
      { 42, nil } }) do
      local ok, err = pcall(function()
        local s = c:send_batch(bad[1], bad[2])
        return s
      end)
      assert.is_false(ok)
      assert.matches("^[^:]*batch_spec%.lua:%d+: send_batch:", err)
    end
    assert.equal(0, sb.stats().requests)
    c:close()
    assert.has_error(function() c:send_batch(list) end)
  end)
end)

describe("core engine (send_batch's, driven from the calling thread)", function()
  local info, url, headers
  setup(function()
    info = sb.ensure()
    url = info.base_url .. "/tracker/smart-api/orders/offline"
    headers = { "site: " .. info.site, "siteToken: " .. info.token, "channel: " .. info.channel,
      "Content-Type: application/json" }
  end)
  before_each(function() sb.reset() end)

  local function engine(extra, http)
    local cfg = { http = http or { ca_file = info.ca_file, http_version = "1.1" }, url = url,
      channels = { { name = info.channel, token = info.token, headers = headers } },
      concurrency = 2, report_all = true, policy = { max_attempts = 1 } }
    for k, v in pairs(extra or {}) do cfg[k] = v end
    return core.engine_new(cfg)
  end

  -- drive until every job is settled; returns the results by id
  local function drain(e)
    local by = {}
    local deadline = core.now() + 30
    while e:pending() > 0 and core.now() < deadline do
      e:turn(1)
      for _, r in ipairs(e:results()) do if r.id then by[r.id] = r end end
    end
    for _, r in ipairs(e:results()) do if r.id then by[r.id] = r end end
    return by
  end

  it("runs jobs through a fixed pool of slots and classifies every answer once", function()
    local e = engine()
    local body = assert(offline.encode(orders.minimal()))
    e:add({ id = 1, body = body, channel = 1 })
    e:add({ id = 2, body = "{}", channel = 1 }) -- the sandbox answers 400
    e:add({ id = 3, body = body, channel = 1 })
    assert.equal(3, e:pending())
    local by = drain(e)
    assert.equal("sent", by[1].what)
    assert.is_true(by[1].ok)
    assert.equal('{"status":"OK"}', by[1].body)
    assert.equal("dead", by[2].what)
    assert.equal("http", by[2].kind)
    assert.equal(400, by[2].status)
    assert.equal("rejected", by[2].why)
    assert.equal("sent", by[3].what)
    local st = e:stats()
    assert.equal(2, st.sent)
    assert.equal(1, st.dead)
    assert.equal(0, st.in_flight)
    assert.equal(2, #sb.orders())
    e:close()
    assert.has_error(function() e:add({ id = 1, body = body, channel = 1 }) end)
    e:close() -- twice is fine
  end)

  it("reports transport failures and drops what is in flight", function()
    local e = engine({ url = "https://127.0.0.1:1/x" }, { ca_file = info.ca_file, timeout = 5 })
    e:add({ id = 1, body = "{}", channel = 1 })
    local r = drain(e)[1]
    assert.equal("network", r.kind)
    assert.equal(7, r.curl_code)
    assert.is_string(r.message)
    e:close()
    sb.faults({ count = 2, delay = 3, close = true })
    e = engine({ concurrency = 3 })
    e:add({ id = 5, body = "{}", channel = 1 })
    e:add({ id = 6, body = "{}", channel = 1 })
    e:turn(0.2)
    local unknown, unsent = e:drop()
    table.sort(unknown)
    assert.same({ 5, 6 }, unknown)
    assert.same({}, unsent)
    assert.equal(0, e:pending())
    e = nil -- luacheck: ignore 311 (the last reference goes: __gc must run)
    collectgarbage("collect") -- __gc frees an unclosed engine
  end)

  it("sends the User-Agent once, unless the header list has its own", function()
    local function ua_of_last()
      local n, v = 0, nil
      for k, val in pairs(sb.last().headers) do
        if k:lower() == "user-agent" then n, v = n + 1, val end
      end
      return v, n
    end
    local e = engine({}, { ca_file = info.ca_file, user_agent = "probe/1.0" })
    e:add({ id = 1, body = "{}", channel = 1 })
    drain(e)
    assert.same({ "probe/1.0", 1 }, { ua_of_last() })
    e:close()
    local own = { "user-agent: mine/2" }
    for _, h in ipairs(headers) do own[#own + 1] = h end
    e = engine({ channels = { { name = info.channel, headers = own } } },
      { ca_file = info.ca_file, user_agent = "probe/1.0" })
    e:add({ id = 3, body = "{}", channel = 1 })
    drain(e)
    assert.same({ "mine/2", 1 }, { ua_of_last() })
    e:close()
    assert.has_error(function() engine({}, { user_agent = "a\r\nX-Evil: 1" }) end)
  end)

  it("sends a cancel (DELETE, its own URL) only after its create, and takes unstarted jobs back", function()
    local e = engine({ concurrency = 4 })
    local p = orders.minimal()
    p.order.refCode = "AMEND-1"
    local body = assert(offline.encode(p))
    e:add({ id = 1, body = body, channel = 1, ref = "AMEND-1" })
    e:add({ id = 2, method = "DELETE", url = info.base_url .. "/smart-api/orders/offline/AMEND-1", channel = 1,
      ref = "AMEND-1", after_ref = true, blob = "ledger-2" })
    local by = drain(e)
    assert.equal("sent", by[1].what)
    assert.equal("sent", by[2].what) -- 200: the order was recorded before the cancel came (else 404)
    assert.equal("DELETE", by[2].method)
    assert.equal("ledger-2", by[2].blob)
    local recs, cancels = sb.orders({ refCode = "AMEND-1" }), sb.cancellations({ refCode = "AMEND-1" })
    assert.equal(1, #recs)
    assert.equal(1, #cancels)
    assert.is_true(cancels[1].received_at >= recs[1].received_at)
    assert.equal(1, e:metrics().sent) -- a cancel is a request, not an order
    assert.equal(2, e:metrics().requests)
    -- a cancel of an order not sent yet: taken back, nothing sent
    e:add({ id = 3, body = body, channel = 1, ref = "NEVER" })
    local removed, flying = e:remove_ref("NEVER")
    assert.equal(1, #removed)
    assert.equal(3, removed[1].id)
    assert.is_false(flying)
    assert.equal(0, e:pending())
    e:close()
  end)

  it("refuses bad arguments", function()
    -- (its HTTP options are checked once, by the client's schema: see client_spec)
    assert.has_error(function() engine({ channels = { { headers = { "bad\r\nheader: 1" } } } }) end)
    local e = engine()
    assert.has_error(function() e:add("x", "{}", 1) end)
    assert.has_error(function() e:add({ id = 1, body = "{}", channel = 2 }) end) -- no such channel
    assert.equal(0, e:turn(0)) -- nothing to do: returns at once
    e:close()
  end)
end)
