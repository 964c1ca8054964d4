-- The transport contract and the scheduler's decisions: ONE table of cases
-- — statuses, envelopes, Retry-After forms, resets, timeouts, oversize
-- bodies, refused credentials, 429, and every decision the scheduler
-- (csrc/delivery/sched.c) makes: the 429 pause, the credentials stop and probe, the
-- age limit, the in-flight limit, Retry-After, the reuse rule — run against
-- every driver an order can leave by:
--
--   curl    client:send over libcurl's easy handle (the Lua driver)
--   batch   send_batch: the libcurl driver on curl multi, in the caller
--   queue   client:queue: the libcurl driver on the queue's thread
--   user    client:send over a user transport (the Lua driver)
--   lua     a plain-Lua loop over the scheduler's binding and a user
--           transport (optimizely.offline.sched.driver): the shape of the
--           nginx queue's senders
--   ngx     client:send over cosockets in a real nginx
--
-- Each must classify, retry and decide the same way, because each asks the
-- one classifier, policy and scheduler in the C core. A driver runs in one
-- of three modes, which is where the front doors differ on purpose:
--   call    one order per call: refused credentials fail that call
--   drain   a batch: refused credentials fail every order not sent yet
--   pause   a queue: refused credentials hold the orders; one probes
--           every auth_pause seconds
--
--   ngx queue  the nginx queue in a real nginx: the scheduler driven by
--           light threads over cosockets (spec/support/nginx.lua's
--           /test/contract-queue runs the orders through a new queue)
--
-- A driver is an entry of DRIVERS — `{mode, sandbox, multi, run =
-- function(case, n)}`: it runs `n` orders (refCodes `ref_of(i)`) with
-- `settings_of(case)`, `case.conc` in flight and auth_pause AUTH_PAUSE, and
-- returns `run_result` (below) — and its name in ORDER. `multi = false`
-- runs only the single-order cases (ngx's /test/contract answers one order
-- through the client).
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local client_mod = require("optimizely.offline.client")
local sched = require("optimizely.offline.sched")
local delivery = require("optimizely.offline.delivery")
local orders = require("support.orders")
local sb = require("support.sandbox")
local nginx = require("support.nginx")

local unpack = table.unpack or unpack -- luacheck: ignore 143

local BIG = string.rep("x", 1024 * 1024 + 1)
local OK = '{"status":"OK"}'
local AUTH_PAUSE = 0.3

local SETTINGS = { max_attempts = 3, backoff_base = 0.01, backoff_max = 0.05, retry_after_max = 2, timeout = 1 }

local CREDENTIALS_PROBED = { ok = true, attempts = 2 } -- pause: the probe after auth_pause gets through

-- Each case: name, faults (sandbox rules, in order), expect (the fields
-- every order must show; or {first =, rest =}), and optionally a mode's
-- own expectation (call, drain, pause), orders (how many; 1), conc
-- (requests in flight for the drivers that have more than one; 1),
-- settings (over SETTINGS), limits {min, max} on the seconds taken, check
-- (a function(run, case, driver) for what fields cannot say), skip
-- (drivers it does not apply to), sandbox_only (a fault a user transport
-- cannot play).
local CASES = {
  { name = "200 OK", faults = {}, expect = { ok = true, attempts = 1 } },
  { name = "200 with the docs' trailing comma", faults = { { status = 200, body = '{"status":"OK",}' } },
    expect = { ok = true, attempts = 1 } },
  { name = "200 with an empty body", faults = { { status = 200, body = "" } }, expect = { ok = true, attempts = 1 } },
  { name = "200 that is not JSON", faults = { { status = 200, body = "<html>fine</html>" } },
    expect = { ok = true, attempts = 1 } },
  { name = "200 warning envelope",
    faults = { { status = 200, body = '{"status":"warning","errors":[{"code":"W1","message":"m"}]}' } },
    expect = { ok = true, attempts = 1, warning_code = "W1" } },
  { name = "200 fail envelope",
    faults = { { status = 200, body = '{"status":"fail","errors":[{"code":"MalformedJson","message":"x"}]}' } },
    expect = { ok = false, kind = "api", status = 200, code = "MalformedJson", retryable = false, attempts = 1 } },
  -- observed mis-delivery 1: reported as sent when lua-cjson was not on the path
  { name = "200 fail InvalidSiteToken (credentials)",
    faults = { { status = 200, body = '{"status":"fail","errors":[{"code":"InvalidSiteToken"}]}' } },
    expect = { ok = false, kind = "auth", code = "InvalidSiteToken", stop = true, retryable = false, attempts = 1 },
    pause = CREDENTIALS_PROBED },
  -- observed mis-delivery 2: acked by the C worker, failed in Lua
  { name = "200 nested OK, top-level fail",
    faults = { { status = 200, body = '{"result":{"status":"OK"},"status":"fail"}' } },
    expect = { ok = false, kind = "api", status = 200, retryable = false, attempts = 1 } },
  { name = "200 top-level OK, nested fail",
    faults = { { status = 200, body = '{"status":"OK","result":{"status":"fail"}}' } },
    expect = { ok = true, attempts = 1 } },
  { name = "400 with an envelope",
    faults = { { status = 400, body = '{"status":"fail","errors":[{"code":"MissingOrMalformedTotal"}]}' } },
    expect = { ok = false, kind = "http", status = 400, code = "MissingOrMalformedTotal", retryable = false,
      attempts = 1 } },
  { name = "401 without a body (credentials)", faults = { { status = 401, body = "" } },
    expect = { ok = false, kind = "auth", status = 401, stop = true, retryable = false, attempts = 1 },
    pause = CREDENTIALS_PROBED },
  { name = "403 ChannelNotRecognized (credentials)",
    faults = { { status = 403, body = '{"status":"fail","errors":[{"code":"ChannelNotRecognized"}]}' } },
    expect = { ok = false, kind = "auth", status = 403, code = "ChannelNotRecognized", stop = true, attempts = 1 },
    pause = CREDENTIALS_PROBED },
  { name = "404", faults = { { status = 404, body = "" } },
    expect = { ok = false, kind = "http", status = 404, retryable = false, attempts = 1 } },
  { name = "503 once, then OK", faults = { { status = 503 } }, expect = { ok = true, attempts = 2 } },
  { name = "503 every time", faults = { { status = 503, count = 5 } },
    expect = { ok = false, kind = "http", status = 503, retryable = true, attempts = 3 } },
  { name = "429 with Retry-After 1", faults = { { status = 429, retry_after = "1" } },
    expect = { ok = true, attempts = 2 }, limits = { min = 0.9 } },
  { name = "Retry-After 0x10 is not delay-seconds", faults = { { status = 503, retry_after = "0x10" } },
    expect = { ok = true, attempts = 2 }, limits = { max = 1.5 } },
  { name = "Retry-After 3.5 is not delay-seconds", faults = { { status = 503, retry_after = "3.5" } },
    expect = { ok = true, attempts = 2 }, limits = { max = 1.5 } },
  { name = "Retry-After 1e1 is not delay-seconds", faults = { { status = 503, retry_after = "1e1" } },
    expect = { ok = true, attempts = 2 }, limits = { max = 1.5 } },
  { name = "Retry-After as a past HTTP date",
    faults = { { status = 503, retry_after = "Sun, 06 Nov 1994 08:49:37 GMT" } },
    expect = { ok = true, attempts = 2 }, limits = { max = 1.5 } },
  { name = "connection reset once", faults = { { close = true } }, expect = { ok = true, attempts = { 1, 2 } } },
  { name = "connection reset every time", faults = { { close = true, count = 5 } },
    expect = { ok = false, kind = "network", retryable = true, attempts = 3 } },
  { name = "slower than the timeout", faults = { { delay = 2, count = 5 } },
    expect = { ok = false, kind = "timeout", retryable = true, attempts = 3 }, limits = { max = 8 } },
  { name = "body over 1 MiB", faults = { { status = 200, body = BIG, count = 5 } },
    expect = { ok = false, kind = "network", retryable = true, attempts = 3, message = "larger than 1048576 bytes" },
    skip = { user = true, lua = true } },

  -- The decisions the scheduler makes, one case each (issue 18 §6).
  { name = "Retry-After beyond retry_after_max waits retry_after_max",
    faults = { { status = 503, retry_after = "3600" } },
    expect = { ok = true, attempts = 2 }, limits = { min = 1.9, max = 4 } },
  { name = "a 429 pauses every request, not only the refused one", orders = 3,
    faults = { { status = 429, retry_after = "1" } }, expect = { ok = true },
    check = function(run)
      -- the 429 came at once: nothing was accepted before its Retry-After ran out
      local first = math.huge
      for _, t in ipairs(run.accepted_at) do first = math.min(first, t) end
      assert.equal(3, #run.accepted_at)
      assert.is_true(first - run.t0 >= 0.9, "an order went " .. (first - run.t0) .. " s after the 429")
    end },
  { name = "refused credentials stop the sending; one order probes", orders = 3,
    faults = { { status = 401, body = "" } },
    expect = { first = { ok = false, kind = "auth", status = 401, stop = true, attempts = 1 }, rest = { ok = true } },
    drain = { first = { ok = false, kind = "auth", status = 401, stop = true, attempts = 1 },
      rest = { ok = false, kind = "auth", stop = true, attempts = 0 } },
    pause = { first = { ok = true, attempts = 2 }, rest = { ok = true, attempts = 1 } },
    check = function(run, _, driver)
      if driver.mode == "drain" then assert.equal(0, #run.accepted_at) end -- nothing after the refusal
      if driver.mode == "pause" then
        assert.is_true(run.took >= AUTH_PAUSE, "probed after " .. run.took .. " s")
        assert.equal(3, #run.accepted_at)
      end
    end },
  { name = "the age limit: no retry after max_age", settings = { max_age = 1 },
    faults = { { status = 503, retry_after = "2" } },
    expect = { ok = false, kind = "http", status = 503, attempts = 1, reason = "expired" }, limits = { max = 1 } },
  { name = "a 429 lowers the requests in flight (the limiter)", conc = 4,
    faults = { { status = 429, retry_after = "0" } }, expect = { ok = true, attempts = 2 },
    check = function(run, _, driver)
      if driver.mode ~= "call" then -- one at a time: nothing to lower
        assert.equal(2, run.limit, "the in-flight limit after a 429 with 4 allowed")
      end
    end },
  { name = "a stray 200 after a 503 is never read as the next order's answer (the reuse rule)", orders = 2,
    settings = { max_attempts = 1 }, sandbox_only = true,
    faults = { { status = 503, stray = true, match = "POST" }, { status = 503, count = 3, match = "POST" } },
    expect = { ok = false, kind = "http", status = 503, attempts = 1 },
    check = function(run) assert.equal(0, #run.accepted_at) end },
}

-- ------------------------------------------------------------ harness

local function ref_of(i) return "contract-" .. i end

local function order(i)
  local p = orders.minimal()
  p.order.refCode = ref_of(i)
  return p
end

local function settings_of(case)
  local s = {}
  for k, v in pairs(SETTINGS) do s[k] = v end
  for k, v in pairs(case.settings or {}) do s[k] = v end
  return s
end

-- What the fields of one order's result are.
local function fields_of(res, err, reason)
  local r = res or err
  local w = res and res.warnings and res.warnings[1]
  return { ok = res ~= nil, kind = err and err.kind, status = r.status, code = err and err.code,
    retryable = err and err.retryable, stop = err and err.stop, attempts = r.attempts,
    message = err and err.message, warning_code = w and w.code, reason = reason }
end

local function expect_for(case, mode, i)
  local e = case[mode] or case.expect
  if e.first then return i == 1 and e.first or e.rest end
  return e
end

local function check_fields(expect, got, where, ignore)
  assert.is_table(got, where .. ": no result")
  for k, v in pairs(expect) do
    if ignore and ignore[k] then -- luacheck: ignore 542
    elseif k == "message" then
      assert.truthy(tostring(got.message):find(v, 1, true), where .. ": message " .. tostring(got.message))
    elseif type(v) == "table" then
      local hit = false
      for _, x in ipairs(v) do hit = hit or got[k] == x end
      assert.is_true(hit, where .. ": " .. k .. " = " .. tostring(got[k]))
    else
      assert.equal(v, got[k], where .. ": " .. k)
    end
  end
  if expect.ok then assert.is_nil(got.kind, where) end
end

-- What a server following the fault rules answers, as a user transport
-- returns it (the sandbox's rules, replayed in Lua); `accepted_at` gets the
-- wall time of every 200 OK.
local function emulated(faults, accepted_at)
  local queue = {}
  for _, f in ipairs(faults) do
    for _ = 1, f.count or 1 do queue[#queue + 1] = f end
  end
  return function()
    local f = table.remove(queue, 1)
    if not f then
      accepted_at[#accepted_at + 1] = core.wall_now()
      return 200, OK, {}
    end
    if f.close then return nil, "network", "connection closed by the server" end
    if f.delay and f.delay >= SETTINGS.timeout then return nil, "timeout", "timed out" end
    return f.status, f.body or '{"status":"fail","errors":[{"code":"SandboxFault"}]}',
      { retry_after = f.retry_after }
  end
end

-- The reasons of the failure/dead events, by refCode.
local function reasons()
  local by = {}
  return by, function(ev)
    if (ev.type == "failure" or ev.type == "dead") and ev.ref then by[ev.ref] = ev.reason end
  end
end

-- The result of running a case on a driver: got (fields per order, in
-- order), took (seconds), t0 (wall time at the start), accepted_at (wall
-- times the endpoint accepted an order), limit (the in-flight limit at the
-- end, where the driver has one).
local function run_result(got, t0w, t0, accepted_at, limit)
  return { got = got, took = core.now() - t0, t0 = t0w, accepted_at = accepted_at, limit = limit }
end

local function sandbox_accepted()
  local t = {}
  for i, rec in ipairs(sb.orders()) do t[i] = rec.received_at end
  return t
end

describe("the transport contract", function()
  local info, inst

  local function client(case, extra)
    return offline.client(sb.client_config(info, settings_of(case), extra))
  end

  local DRIVERS = {
    curl = { mode = "call", sandbox = true, multi = true, run = function(case, n)
      local by, on = reasons()
      local c = client(case, { on_event = on })
      local got, t0w, t0 = {}, core.wall_now(), core.now()
      for i = 1, n do
        local res, err = c:send(order(i))
        got[i] = fields_of(res, err, by[ref_of(i)])
      end
      local r = run_result(got, t0w, t0, sandbox_accepted())
      c:close()
      return r
    end },

    batch = { mode = "drain", sandbox = true, multi = true, run = function(case, n)
      local c = client(case)
      local by, on = reasons()
      local got, list = {}, {}
      for i = 1, n do list[i] = order(i) end
      local t0w, t0 = core.wall_now(), core.now()
      local summary = c:send_batch(list, { concurrency = case.conc or 1, adaptive = false, on_event = on,
        on_result = function(i, res, err) got[i] = { res, err } end })
      for i = 1, n do got[i] = fields_of(got[i][1], got[i][2], by[ref_of(i)]) end
      local r = run_result(got, t0w, t0, sandbox_accepted(), summary.concurrency)
      c:close()
      return r
    end },

    -- a queue's on_failure errors are settled: never retryable
    queue = { mode = "pause", sandbox = true, multi = true, ignore = { retryable = true }, run = function(case, n)
      local s = settings_of(case)
      local c = client(case)
      local by, on = reasons()
      local got = {}
      local q = assert(c:queue({ concurrency = case.conc or 1, adaptive = false, max_attempts = s.max_attempts,
        max_age = s.max_age, auth_pause = AUTH_PAUSE, on_event = on,
        on_success = function(ref, res) got[ref] = { res } end,
        on_failure = function(ref, err) got[ref] = { nil, err } end }))
      local t0w, t0 = core.wall_now(), core.now()
      for i = 1, n do assert(q:push(order(i))) end
      assert.is_true(q:flush(30))
      local limit = q:stats().limit
      q:close()
      local out = {}
      for i = 1, n do
        local g = got[ref_of(i)] or {}
        out[i] = fields_of(g[1], g[2], by[ref_of(i)])
      end
      local r = run_result(out, t0w, t0, sandbox_accepted(), limit)
      c:close()
      return r
    end },

    user = { mode = "call", multi = true, run = function(case, n)
      local accepted = {}
      local by, on = reasons()
      local c = client(case, { transport = emulated(case.faults, accepted), sleep = core.sleep, ca_file = false,
        on_event = on })
      local got, t0w, t0 = {}, core.wall_now(), core.now()
      for i = 1, n do
        local res, err = c:send(order(i))
        got[i] = fields_of(res, err, by[ref_of(i)])
      end
      c:close()
      return run_result(got, t0w, t0, accepted)
    end },

    lua = { mode = "drain", multi = true, run = function(case, n)
      local accepted = {}
      local c = client(case, { ca_file = false, transport = emulated(case.faults, accepted) })
      local st = client_mod.state(c)
      local d = sched.driver(sched.config(st, { concurrency = case.conc or 1, on_stop = "drain",
        report_all = true }), st.transport, core.sleep)
      local t0w, t0 = core.wall_now(), core.now()
      for i = 1, n do
        d:add({ id = i, body = assert(offline.encode(order(i))), ref = ref_of(i) })
      end
      local got = {}
      while d:pending() > 0 do
        d:turn(1)
        for _, r in ipairs(d:results()) do
          if r.id and r.what ~= "retry" then
            local res, err = delivery.result(r, r.body, r.attempts, nil, r.channel, {})
            got[r.id] = fields_of(res, err, r.why)
          end
        end
      end
      local r = run_result(got, t0w, t0, accepted, d:stats().limit)
      d:close()
      c:close()
      return r
    end },

    -- the scheduler's nginx driver; a queue's on_failure errors are settled: never retryable
    ["ngx queue"] = { mode = "pause", sandbox = true, multi = true, ignore = { retryable = true },
      run = function(case, n)
        local s = settings_of(case)
        local t0w, t0 = core.wall_now(), core.now()
        local res = inst:get(("/test/contract-queue?n=%d&conc=%d&max_attempts=%d&retry_after_max=%g&timeout=%g"
          .. "&auth_pause=%g%s"):format(n, case.conc or 1, s.max_attempts, s.retry_after_max, s.timeout, AUTH_PAUSE,
          s.max_age and ("&max_age=" .. s.max_age) or ""), { timeout = 60 })
        assert.equal(200, res.status, res.body)
        local doc = sb.json.decode(res.body)
        assert.is_true(doc.flushed, doc.flush_error)
        return run_result(doc.got, t0w, t0, sandbox_accepted(), doc.limit)
      end },

    ngx = { mode = "call", sandbox = true, multi = false, run = function(case)
      local s = settings_of(case)
      local t0w, t0 = core.wall_now(), core.now()
      local res = inst:get(("/test/contract?max_attempts=%d&retry_after_max=%g&timeout=%g"):format(
        s.max_attempts, s.retry_after_max, s.timeout))
      assert.equal(200, res.status, res.body)
      return run_result({ sb.json.decode(res.body) }, t0w, t0, sandbox_accepted())
    end },
  }
  local ORDER = { "curl", "batch", "queue", "user", "lua", "ngx", "ngx queue" }

  setup(function()
    info = sb.ensure()
    sb.clear_faults()
    inst = nginx.start_example({ tag = "contract", info = info,
      app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        queue = { flush_interval = 0.2 } },
      locations = "    location = /test/contract { content_by_lua_block { TEST.contract() } }\n"
        .. "    location = /test/contract-queue { content_by_lua_block { TEST.contract_queue() } }\n" })
  end)

  teardown(function()
    sb.clear_faults()
    if inst then inst:destroy() end
  end)

  for _, case in ipairs(CASES) do
    local n = case.orders or 1
    for _, dname in ipairs(ORDER) do
      local driver = DRIVERS[dname]
      local applies = not (case.skip or {})[dname] and (driver.multi or n == 1) and
        (driver.sandbox or not case.sandbox_only) and
        -- ngx's /test/contract takes max_attempts, retry_after_max and timeout only
        (dname ~= "ngx" or not case.settings)
      if applies then
        it(case.name .. " [" .. dname .. "]", function()
          local where = case.name .. " [" .. dname .. "]"
          sb.reset()
          if driver.sandbox and #case.faults > 0 then sb.faults(unpack(case.faults)) end
          local run = driver.run(case, n)
          sb.clear_faults()
          for i = 1, n do
            check_fields(expect_for(case, driver.mode, i), run.got[i], where .. " order " .. i, driver.ignore)
          end
          local limits = case.limits
          if limits and limits.min then assert.is_true(run.took >= limits.min, where .. ": took " .. run.took) end
          if limits and limits.max then assert.is_true(run.took <= limits.max, where .. ": took " .. run.took) end
          if case.check then case.check(run, case, driver) end
        end)
      end
    end
  end

  describe("a user transport that breaks the contract", function()
    local function with(fn)
      local c = offline.client(sb.client_config(info, SETTINGS, { transport = fn, ca_file = false }))
      return c:send(orders.minimal())
    end

    it("returning a table instead of a status is an error of kind transport, not a crash", function()
      local res, err = with(function() return { status = 200 } end)
      assert.is_nil(res)
      assert.equal("transport", err.kind)
      assert.is_false(err.retryable)
      assert.matches("status is a table", err.message)
    end)

    it("returning an impossible status, a non-string body or a failure without a kind", function()
      local _, e1 = with(function() return 42, "" end)
      assert.equal("transport", e1.kind)
      local _, e2 = with(function() return 200, {} end)
      assert.matches("body is a table", e2.message)
      local _, e3 = with(function() return nil end)
      assert.matches("without a kind", e3.message)
      local _, e4 = with(function() return 200, OK, "info" end)
      assert.matches("info is a string", e4.message)
    end)

    it("raising is a programmer error: it propagates, and nothing of it is sent later", function()
      local calls = 0
      local c = offline.client(sb.client_config(info, SETTINGS, { ca_file = false, transport = function()
        calls = calls + 1
        if calls == 1 then error("my bug") end
        return 200, OK
      end }))
      assert.has_error(function() c:send(orders.minimal()) end)
      local res = assert(c:send(orders.minimal()))
      assert.equal(1, res.attempts)
      assert.equal(2, calls) -- the first order was not sent again behind the caller's back
      c:close()
    end)
  end)
end)
