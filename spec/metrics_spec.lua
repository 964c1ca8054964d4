-- Metrics, events and the logger (optimizely.offline.metrics, .events)
-- against the sandbox (real nginx, real TLS): one scripted mix of outcomes
-- through every front door — client:send, send_batch, the threaded queue —
-- gives the same exact counts; the Prometheus text is checked by promtool
-- and Python's prometheus_client parser.
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local metrics = require("optimizely.offline.metrics")
local events = require("optimizely.offline.events")
local sb = require("support.sandbox")
local wait = require("support.wait")
local sys = require("optimizely.offline.sys")
local prometheus = require("support.prometheus")

local function payload(ref, bad)
  return { user = { id = "till-3" }, order = { refCode = ref, orderDate = "2016-05-16T14:25:00 GMT",
    currency = bad and "EURO" or "GBP", total = "21.00", items = { { refCode = "sku-1", qty = 2, price = "10.50" } } } }
end

-- Ten orders (refCodes of one length: every body has the same size) and an invalid one.
local function mix(tag)
  local list = {}
  for i = 1, 10 do list[i] = payload(("mix-%s-%02d"):format(tag, i)) end
  return list, payload("mix-" .. tag .. "-XX", true)
end

-- The faults, in the order requests meet them: 503 ×2, 400, 429, a closed connection.
local function faults()
  sb.faults({ count = 2, status = 503, match = "POST" }, { count = 1, status = 400, match = "POST" },
    { count = 1, status = 429, retry_after = "1", match = "POST" }, { count = 1, close = true, match = "POST" })
end

local BODY = #assert(offline.encode(payload("mix-s-01")))

-- What every path must count for the mix. Each failure answer closes its
-- connection (the reuse rule, doc/topics/retries.md), so the closed
-- connection comes on a new one: a network failure of ours, retried. The
-- sandbox sees 14 requests and the client makes 14 attempts, 4 of them
-- retried (503, 503, 429, the closed connection).
local function assert_mix_counts(m)
  assert.equal(10, m.queued)
  assert.equal(9, m.sent)
  assert.equal(1, m.failed)
  assert.equal(1, m.dead)
  assert.equal(1, m.invalid)
  assert.equal(4, m.retried)
  assert.equal(1, m.throttled)
  assert.equal(14, m.requests)
  assert.equal(14 * BODY, m.bytes_sent)
  assert.equal(14, m.latency.count)
  local n = 0
  for _, c in ipairs(m.latency.counts) do n = n + c end
  assert.equal(14, n)
  assert.is_true(m.latency.sum > 0)
  assert.same({ { kind = "http", status = 400, code = "SandboxFault", channel = "store", n = 1 } }, m.failures)
  assert.same({ sent = 9, failed = 1 }, m.channels.store)
end

local function check_prometheus(text)
  local py = prometheus.parse(text)
  assert.truthy(py:find("counter optimizely_offline_orders_sent_total{channel=store} 9", 1, true), py)
  assert.truthy(py:find("counter optimizely_offline_orders_failed_total{channel=store,code=SandboxFault,"
    .. "kind=http,status=400} 1", 1, true), py)
  assert.truthy(py:find("counter optimizely_offline_retries_total{} 4", 1, true), py)
  assert.truthy(py:find("counter optimizely_offline_orders_invalid_total{} 1", 1, true), py)
  assert.truthy(py:find("counter optimizely_offline_throttled_total{} 1", 1, true), py)
  assert.truthy(py:find("counter optimizely_offline_requests_total{} 14", 1, true), py)
  assert.truthy(py:find("histogram optimizely_offline_request_duration_seconds_bucket{le=+Inf} 14", 1, true), py)
  assert.truthy(py:find("histogram optimizely_offline_request_duration_seconds_count{} 14", 1, true), py)
  return py
end

local function by_type(list)
  local out = {}
  for _, ev in ipairs(list) do
    out[ev.type] = out[ev.type] or {}
    table.insert(out[ev.type], ev)
  end
  return out
end

-- The events of the mix: four retries and one given-up order, each with
-- its refCode, attempt and a redacted error.
local function assert_mix_events(list, info, given_up)
  local t = by_type(list)
  assert.equal(4, #t.retry)
  for _, ev in ipairs(t.retry) do
    assert.matches("^mix%-", ev.ref)
    assert.is_number(ev.attempt)
    assert.is_number(ev.delay)
    assert.is_table(ev.error)
    assert.is_nil(tostring(ev.error):find(info.token, 1, true))
  end
  assert.equal(1, #t[given_up])
  local ev = t[given_up][1]
  assert.matches("^mix%-", ev.ref)
  assert.is_number(ev.attempt)
  assert.equal("rejected", ev.reason)
  assert.equal("http", ev.error.kind)
  assert.equal(400, ev.error.status)
  assert.equal("SandboxFault", ev.error.code)
  return t
end

describe("metrics", function()
  local info

  setup(function()
    info = sb.ensure()
  end)

  before_each(function()
    sb.clear_faults()
    sb.reset()
  end)

  local function new_client(extra)
    return offline.client(sb.client_config(info, { backoff_base = 0.01, backoff_max = 0.05 }, extra))
  end

  describe("a scripted mix of outcomes (exact counts)", function()
    it("client:send counts each order, attempt and byte", function()
      local evs = {}
      local c = new_client({ on_event = function(ev) evs[#evs + 1] = ev end })
      faults()
      local list, bad = mix("s")
      for _, p in ipairs(list) do c:send(p) end
      assert.is_nil(c:send(bad))
      local m = c:metrics()
      assert_mix_counts(m)
      assert.equal(14, sb.stats().requests)
      assert.equal(9, sb.stats().accepted)
      assert_mix_events(evs, info, "failure")
      check_prometheus(metrics.prometheus(c))
      c:close()
    end)

    it("send_batch counts the same into the client's metrics", function()
      local evs = {}
      local c = new_client()
      faults()
      local list, bad = mix("b")
      table.insert(list, 6, bad)
      local s = c:send_batch(list, { concurrency = 1, on_event = function(ev) evs[#evs + 1] = ev end })
      assert.equal(9, s.sent)
      assert.equal(2, s.failed) -- the 400 and the invalid one
      local m = c:metrics()
      assert_mix_counts(m)
      assert.equal(14, sb.stats().requests)
      local t = assert_mix_events(evs, info, "failure")
      assert.is_number(t.failure[1].index)
      assert.equal("throttled", t.paused[1].reason)
      assert.equal(429, t.paused[1].error.status)
      check_prometheus(metrics.prometheus(c))
      c:close()
    end)

    it("the threaded queue counts the same, with its gauges and drops", function()
      local evs = {}
      local c = new_client()
      local q = assert(c:queue({ concurrency = 1, on_event = function(ev) evs[#evs + 1] = ev end }))
      faults()
      local list, bad = mix("q")
      for _, p in ipairs(list) do assert.is_true(q:push(p)) end
      assert.is_nil(q:push(bad))
      assert.is_true(q:flush(30))
      local m = q:metrics()
      assert_mix_counts(m)
      assert.same({ full = 0, invalid = 1, results = 0 }, m.dropped)
      assert.equal(0, m.depth)
      assert.equal(0, m.in_flight)
      assert.same({ throttled = 0, credentials = 0 }, m.paused)
      assert.equal(14, sb.stats().requests)
      local t = assert_mix_events(evs, info, "dead")
      assert.equal("throttled", t.paused[1].reason)
      local py = check_prometheus(metrics.prometheus(q))
      assert.truthy(py:find("gauge optimizely_offline_queue_depth{} 0", 1, true), py)
      assert.truthy(py:find("counter optimizely_offline_orders_dropped_total{reason=invalid} 1", 1, true), py)
      -- the client's own metrics are not the queue's
      assert.equal(0, c:metrics().sent)
      q:close()
      assert_mix_counts(q:metrics()) -- the last values stay after close
      c:close()
    end)
  end)

  describe("a queue closed before its orders went", function()
    it("counts them as failed (kind shutdown) and dropped, and keeps the last values", function()
      local evs, failed = {}, {}
      local c = new_client()
      sb.faults({ count = 1, delay = 3, status = 503, match = "POST" })
      local q = assert(c:queue({ concurrency = 1, on_event = function(ev) evs[#evs + 1] = ev end,
        on_failure = function(ref, err) failed[ref] = err end }))
      assert.is_true(q:push(payload("closing-1")))
      assert.is_nil(q:close(0.3))
      local m = q:metrics()
      assert.equal(1, m.failed)
      assert.equal(0, m.dead)
      assert.same({ { kind = "shutdown", channel = "store", n = 1 } }, m.failures)
      assert.equal(1, m.dropped.shutdown)
      assert.equal("shutdown", failed["closing-1"].kind)
      local t = by_type(evs)
      assert.equal(1, #t.dropped)
      assert.equal("closing-1", t.dropped[1].ref)
      assert.equal("shutdown", t.dropped[1].reason)
      assert.matches('optimizely_offline_orders_dropped_total{reason="shutdown"} 1', metrics.prometheus(q), 1, true)
      c:close()
    end)
  end)

  describe("the queue's gauges", function()
    it("shows depth, in flight and the spool while orders wait", function()
      local dir = sys.capture("mktemp -d"):gsub("%s+$", "")
      local c = new_client()
      sb.faults({ count = 1, delay = 2, match = "POST" })
      local q = assert(c:queue({ concurrency = 1, spool = dir .. "/g.db" }))
      for i = 1, 3 do assert.is_true(q:push(payload("gauge-" .. i))) end
      local m = wait.poll(function()
        local now = q:metrics()
        return now.in_flight == 1 and now
      end, 5) or q:metrics()
      assert.equal(1, m.in_flight)
      assert.equal(2, m.depth)
      assert.equal(3, m.spool.orders)
      assert.is_true(m.spool.bytes > 0)
      assert.equal(0, m.spool.dead)
      local text = metrics.prometheus(q)
      assert.matches("optimizely_offline_in_flight 1\n", text, 1, true)
      assert.matches("optimizely_offline_spool_orders 3\n", text, 1, true)
      prometheus.parse(text)
      assert.is_true(q:flush(20))
      assert.equal(0, q:metrics().spool.orders)
      q:close()
      c:close()
      os.execute("rm -rf " .. sys.q(dir))
    end)

    it("shows a credentials pause", function()
      sb.faults({ count = 1, status = 401, body = '{"status":"fail","errors":[{"code":"InvalidSiteToken"}]}' })
      local c = new_client()
      local q = assert(c:queue({ concurrency = 1, auth_pause = 30 }))
      assert.is_true(q:push(payload("auth-1")))
      wait.poll(function() return q:metrics().paused.credentials ~= 0 end, 5)
      local m = q:metrics()
      assert.equal(1, m.paused.credentials)
      assert.matches('optimizely_offline_paused{reason="credentials"} 1', metrics.prometheus(q), 1, true)
      q:resume()
      assert.is_true(q:flush(20))
      assert.equal(0, q:metrics().paused.credentials)
      q:close()
      c:close()
    end)
  end)

  describe("sources", function()
    it("sums several sources, or labels each", function()
      local c1, c2 = new_client(), new_client()
      assert.is_truthy(c1:send(payload("src-1")))
      assert.is_truthy(c2:send(payload("src-2")))
      assert.is_truthy(c2:send(payload("src-3")))
      assert.matches("optimizely_offline_orders_sent_total{channel=\"store\"} 3\n", metrics.prometheus(c1, c2), 1, true)
      local text = metrics.prometheus({ c1, labels = { client = "a" } }, { c2, labels = { client = 'b"\\\n' } })
      assert.matches('optimizely_offline_orders_sent_total{client="a",channel="store"} 1\n', text, 1, true)
      assert.matches('optimizely_offline_orders_sent_total{client="b\\"\\\\\\n",channel="store"} 2\n', text, 1, true)
      local py = prometheus.parse(text)
      assert.truthy(py:find("optimizely_offline_orders_sent_total{channel=store,client=b\"\\\n} 2", 1, true), py)
      -- a metrics table is a source too; HELP and TYPE once per family
      local t2 = metrics.prometheus(c1:metrics(), c2:metrics())
      local _, helps = t2:gsub("# HELP optimizely_offline_orders_sent_total ", "")
      assert.equal(1, helps)
      assert.has_error(function() metrics.prometheus({ c1, labels = { ["bad-name"] = "x" } }) end)
      assert.has_error(function() metrics.prometheus(42) end)
      c1:close()
      c2:close()
    end)

    it("offline.metrics is the module", function()
      assert.equal(metrics, offline.metrics)
      assert.equal(metrics.prometheus, offline.metrics.prometheus)
    end)

    it("metrics = false counts nothing", function()
      local cfg = sb.client_config(info)
      cfg.metrics = false
      local c = offline.client(cfg)
      assert.is_truthy(c:send(payload("off-1")))
      c:send_batch({ payload("off-2") })
      local m = c:metrics()
      assert.equal(0, m.sent)
      assert.equal(0, m.requests)
      assert.equal(2, #sb.orders())
      c:close()
    end)
  end)

  describe("tables", function()
    local function sample()
      local m = core.metrics_new()
      m:queued(4)
      m:attempt(0.003, 10)
      m:attempt(0.03, 10)
      m:attempt(0.3, 10)
      m:attempt(99, 10)
      m:sent("store")
      m:sent("callcentre")
      m:failed({ kind = "http", status = 503 }, false, "store")
      m:failed({ kind = "api", status = 400, code = "X" }, true, "store")
      m:invalid(2)
      return m:get()
    end

    it("flatten and unflatten are inverse (the shared dict's keys)", function()
      local t = sample()
      t.dropped = { full = 3 }
      local u = metrics.unflatten(metrics.flatten(t))
      assert.equal(metrics.prometheus(t), metrics.prometheus(u))
      assert.same({ full = 3 }, u.dropped)
    end)

    it("merges labels, channels and histograms", function()
      local t = metrics.sum(sample(), sample())
      assert.equal(4, t.sent)
      assert.equal(4, t.failed)
      assert.equal(8, t.latency.count)
      assert.same({ sent = 2, failed = 4 }, t.channels.store)
      assert.equal(2, #t.failures)
      for _, f in ipairs(t.failures) do assert.equal(2, f.n) end
    end)

    it("estimates percentiles as histogram_quantile does", function()
      local h = { bounds = { 0.1, 1 }, counts = { 50, 50, 0 } }
      local p = metrics.percentiles(h, { 0.5, 0.75, 1 })
      assert.near(0.1, p[1], 1e-9)
      assert.near(0.55, p[2], 1e-9)
      assert.near(1, p[3], 1e-9)
      -- the +Inf bucket: the highest finite bound
      assert.same({ 30 }, metrics.percentiles({ counts = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5 } }, { 0.5 }))
      assert.same({}, metrics.percentiles(metrics.empty().latency, { 0.5 }))
      assert.has_error(function() metrics.percentiles(h, { 1.5 }) end)
      local s = sample()
      local q = metrics.percentiles(s.latency, { 0.5, 0.9, 0.99 })
      assert.equal(3, #q)
      assert.is_true(q[1] <= q[2] and q[2] <= q[3])
    end)

    it("uses the documented bucket bounds, 5 ms to 30 s", function()
      assert.same({ 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }, metrics.BOUNDS)
    end)
  end)
end)

describe("logger", function()
  local function recorder()
    local lines = {}
    return lines, function(level, msg) lines[#lines + 1] = { level = level, msg = msg } end
  end

  it("logs one line per event type and reason per second, counting what it suppressed", function()
    local lines, logger = recorder()
    local t = 100
    local ev = events.new({ logger = logger, prefix = "p: " })
    ev.now = function() return t end
    local err = offline.errors.new({ kind = "http", status = 503, message = "HTTP 503" })
    for i = 1, 5 do ev:emit("retry", { ref = "R" .. i, attempt = 1, delay = 0.5, error = err }) end
    ev:emit("paused", { reason = "throttled", seconds = 2 })
    assert.equal(2, #lines)
    assert.equal("info", lines[1].level)
    assert.equal('p: order "R1": attempt 1 failed, retrying in 0.50 s: ' .. tostring(err), lines[1].msg)
    assert.equal("warn", lines[2].level)
    t = 101.5
    ev:emit("retry", { ref = "R6", attempt = 2, delay = 1, error = err })
    assert.equal(3, #lines)
    assert.matches("%(4 similar lines suppressed%)$", lines[3].msg)
    -- every dropped order has its line
    for i = 1, 3 do ev:emit("dropped", { ref = "D" .. i, reason = "shutdown", error = err }) end
    assert.equal(6, #lines)
    assert.equal("error", lines[6].level)
    assert.matches('order "D3" not delivered %(shutdown%)', lines[6].msg)
  end)

  it("is used by a client and a queue, with a startup line that names no token", function()
    local info = sb.ensure()
    sb.clear_faults()
    local lines, logger = recorder()
    local c = offline.client(sb.client_config(info, { backoff_base = 0.01, logger = logger }))
    sb.faults({ count = 1, status = 503, match = "POST" })
    assert.is_truthy(c:send(payload("log-1")))
    assert.equal(1, #lines)
    assert.matches('^optimizely%.offline client: order "log%-1": attempt 1 failed', lines[1].msg)
    local q = assert(c:queue())
    assert.equal(2, #lines)
    assert.equal("notice", lines[2].level)
    assert.truthy(lines[2].msg:find("queue started: posting to " .. info.base_url
      .. "/tracker/smart-api/orders/offline as site \"" .. info.site .. "\", channel store; in memory", 1, true),
      lines[2].msg)
    q:close()
    for _, l in ipairs(lines) do assert.is_nil(l.msg:find(info.token, 1, true)) end
    -- a logger that raises does not break delivery
    local c2 = offline.client(sb.client_config(info, { logger = function() error("boom") end }))
    sb.faults({ count = 1, status = 503, match = "POST" })
    assert.is_truthy(c2:send(payload("log-2")))
    c2:close()
    c:close()
    assert.has_error(function() offline.client(sb.client_config(info, { logger = "stderr" })) end)
  end)

  it("warns when no env or base_url is given (the UAT test endpoint)", function()
    local lines, logger = recorder()
    local c = offline.client({ site = "demo", token = "t0k3n-value", channel = "store", logger = logger })
    local q = assert(c:queue())
    assert.equal("warn", lines[1].level)
    assert.matches("https://uat%.peerius%.com/tracker/smart%-api/orders/offline", lines[1].msg)
    assert.matches("UAT test endpoint", lines[1].msg)
    assert.is_nil(lines[1].msg:find("t0k3n-value", 1, true))
    q:close(0)
    c:close()
  end)
end)

describe("the command line's --metrics and the report's latency", function()
  local cli = require("support.cli")
  teardown(function() cli.cleanup() end)

  it("send --metrics writes the run's Prometheus text (0600, promtool-valid); the report has percentiles",
    function()
    local sbx = require("support.sandbox")
    sbx.ensure()
    sbx.reset()
    local input = cli.tmp("m-orders.ndjson")
    cli.orders(input, 5, "cli-m")
    local prom, report = cli.tmp("run.prom"), cli.tmp("run-report.json")
    local r = cli.run({ "send", input, "--metrics", prom, "--report", report }, { env = cli.creds(), umask = "022" })
    assert.equal(0, r.code, r.all)
    assert.equal("600", cli.mode(prom))
    local text = assert(io.open(prom)):read("*a")
    assert.matches("\noptimizely_offline_orders_sent_total{channel=\"store\"} 5\n", "\n" .. text)
    assert.matches("optimizely_offline_request_duration_seconds_count 5", text)
    local has = os.execute("command -v promtool >/dev/null 2>&1")
    if has == true or has == 0 then
      local ok = os.execute("promtool check metrics < " .. prom .. " >/dev/null 2>&1")
      assert.is_true(ok == true or ok == 0, "promtool refused the file")
    end
    local rep = cli.json_file(report)
    assert.is_number(rep.latency_seconds.p50)
    assert.is_true(rep.latency_seconds.p99 >= rep.latency_seconds.p50)
  end)
end)
