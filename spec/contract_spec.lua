-- The transport contract: ONE table of cases — statuses, envelopes,
-- Retry-After forms, resets, timeouts, oversize bodies, refused
-- credentials, 429 — run against every way an order leaves the library:
-- libcurl's easy handle (client:send), the libcurl engine (send_batch),
-- the client over the nginx cosocket transport (a real nginx), the nginx
-- queue (the scheduler's nginx driver: light threads over cosockets) and a
-- user-supplied function transport. Each must classify and retry the same
-- way, because each asks the one classifier, the one policy and the one
-- scheduler in the C core. Two things are the queues' own: a dead letter is
-- no longer retryable (its retries are over), and refused credentials
-- pause a queue (the order waits; the pause's error is checked).
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local orders = require("support.orders")
local sb = require("support.sandbox")
local nginx = require("support.nginx")

local BIG = string.rep("x", 1024 * 1024 + 1)
local OK = '{"status":"OK"}'

-- name, server faults (sandbox rules, in order), expected result fields
-- (attempts may be a list of accepted values), limits on elapsed seconds,
-- and the transports a case does not apply to.
local CASES = {
  { "200 OK", {}, { ok = true, attempts = 1 } },
  { "200 with the docs' trailing comma", { { status = 200, body = '{"status":"OK",}' } },
    { ok = true, attempts = 1 } },
  { "200 with an empty body", { { status = 200, body = "" } }, { ok = true, attempts = 1 } },
  { "200 that is not JSON", { { status = 200, body = "<html>fine</html>" } }, { ok = true, attempts = 1 } },
  { "200 warning envelope",
    { { status = 200, body = '{"status":"warning","errors":[{"code":"W1","message":"m"}]}' } },
    { ok = true, attempts = 1, warning_code = "W1" } },
  { "200 fail envelope",
    { { status = 200, body = '{"status":"fail","errors":[{"code":"MalformedJson","message":"x"}]}' } },
    { ok = false, kind = "api", status = 200, code = "MalformedJson", retryable = false, attempts = 1 } },
  -- observed mis-delivery 1: reported as sent when lua-cjson was not on the path
  { "200 fail InvalidSiteToken (credentials)",
    { { status = 200, body = '{"status":"fail","errors":[{"code":"InvalidSiteToken"}]}' } },
    { ok = false, kind = "auth", code = "InvalidSiteToken", stop = true, retryable = false, attempts = 1 } },
  -- observed mis-delivery 2: acked by the C worker, failed in Lua
  { "200 nested OK, top-level fail",
    { { status = 200, body = '{"result":{"status":"OK"},"status":"fail"}' } },
    { ok = false, kind = "api", status = 200, retryable = false, attempts = 1 } },
  { "200 top-level OK, nested fail",
    { { status = 200, body = '{"status":"OK","result":{"status":"fail"}}' } },
    { ok = true, attempts = 1 } },
  { "400 with an envelope",
    { { status = 400, body = '{"status":"fail","errors":[{"code":"MissingOrMalformedTotal"}]}' } },
    { ok = false, kind = "http", status = 400, code = "MissingOrMalformedTotal", retryable = false, attempts = 1 } },
  { "401 without a body (credentials)", { { status = 401, body = "" } },
    { ok = false, kind = "auth", status = 401, stop = true, retryable = false, attempts = 1 } },
  { "403 ChannelNotRecognized (credentials)",
    { { status = 403, body = '{"status":"fail","errors":[{"code":"ChannelNotRecognized"}]}' } },
    { ok = false, kind = "auth", status = 403, code = "ChannelNotRecognized", stop = true, attempts = 1 } },
  { "404", { { status = 404, body = "" } },
    { ok = false, kind = "http", status = 404, retryable = false, attempts = 1 } },
  { "503 once, then OK", { { status = 503 } }, { ok = true, attempts = 2 } },
  { "503 every time", { { status = 503, count = 5 } },
    { ok = false, kind = "http", status = 503, retryable = true, attempts = 3 } },
  { "429 with Retry-After 1", { { status = 429, retry_after = "1" } }, { ok = true, attempts = 2 }, { min = 0.9 } },
  { "Retry-After 0x10 is not delay-seconds", { { status = 503, retry_after = "0x10" } },
    { ok = true, attempts = 2 }, { max = 1.5 } },
  { "Retry-After 3.5 is not delay-seconds", { { status = 503, retry_after = "3.5" } },
    { ok = true, attempts = 2 }, { max = 1.5 } },
  { "Retry-After 1e1 is not delay-seconds", { { status = 503, retry_after = "1e1" } },
    { ok = true, attempts = 2 }, { max = 1.5 } },
  { "Retry-After as a past HTTP date", { { status = 503, retry_after = "Sun, 06 Nov 1994 08:49:37 GMT" } },
    { ok = true, attempts = 2 }, { max = 1.5 } },
  -- decisions the scheduler makes for every driver (issue 18): the wait a
  -- Retry-After asks for, its cap, and a 429 without one
  { "503 with Retry-After 1 waits for it", { { status = 503, retry_after = "1" } },
    { ok = true, attempts = 2 }, { min = 0.9 } },
  { "Retry-After above retry_after_max is capped", { { status = 503, retry_after = "30" } },
    { ok = true, attempts = 2 }, { min = 1.9, max = 5 } },
  { "429 without Retry-After", { { status = 429 } }, { ok = true, attempts = 2 }, { max = 1.5 } },
  { "connection reset once", { { close = true } }, { ok = true, attempts = { 1, 2 } } },
  { "connection reset every time", { { close = true, count = 5 } },
    { ok = false, kind = "network", retryable = true, attempts = 3 } },
  { "slower than the timeout", { { delay = 2, count = 5 } },
    { ok = false, kind = "timeout", retryable = true, attempts = 3 }, { max = 8 } },
  { "body over 1 MiB", { { status = 200, body = BIG, count = 5 } },
    { ok = false, kind = "network", retryable = true, attempts = 3, message = "larger than 1048576 bytes" },
    nil, { user = true } },
}

local SETTINGS = { max_attempts = 3, backoff_base = 0.01, backoff_max = 0.05, retry_after_max = 2, timeout = 1 }

-- What a server following the fault rules answers, as a user transport
-- returns it (the sandbox's rules, replayed in Lua).
local function emulated(faults)
  local queue = {}
  for _, f in ipairs(faults) do
    for _ = 1, f.count or 1 do queue[#queue + 1] = f end
  end
  return function()
    local f = table.remove(queue, 1)
    if not f then return 200, OK, {} end
    if f.close then return nil, "network", "connection closed by the server" end
    if f.delay and f.delay >= SETTINGS.timeout then return nil, "timeout", "timed out" end
    return f.status, f.body or '{"status":"fail","errors":[{"code":"SandboxFault"}]}',
      { retry_after = f.retry_after }
  end
end

local function fields_of(res, err)
  local r = res or err
  local w = res and res.warnings and res.warnings[1]
  return { ok = res ~= nil, kind = err and err.kind, status = r.status, code = err and err.code,
    retryable = err and err.retryable, stop = err and err.stop, attempts = r.attempts,
    message = err and err.message, warning_code = w and w.code }
end

local function check(expect, got, took, limits, where)
  for k, v in pairs(expect) do
    if k == "message" then
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
  if limits and limits.min then assert.is_true(took >= limits.min, where .. ": took " .. took) end
  if limits and limits.max then assert.is_true(took <= limits.max, where .. ": took " .. took) end
end

local function timed(fn)
  local t0 = core.now()
  local a, b = fn()
  return a, b, core.now() - t0
end

describe("the transport contract", function()
  local info, inst

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

  local function client(extra)
    local cfg = sb.client_config(info, SETTINGS, extra)
    return offline.client(cfg)
  end

  local TRANSPORTS = {
    curl = function()
      local c = client()
      local res, err, took = timed(function() return c:send(orders.minimal()) end)
      c:close()
      return fields_of(res, err), took
    end,
    engine = function()
      local c = client()
      local got
      local _, _, took = timed(function()
        return c:send_batch({ orders.minimal() }, { concurrency = 1,
          on_result = function(_, res, err) got = fields_of(res, err) end })
      end)
      c:close()
      return got, took
    end,
    ngx = function()
      local res = inst:get("/test/contract")
      assert.equal(200, res.status, res.body)
      local doc = sb.json.decode(res.body)
      local took = 0
      return doc, took
    end,
    ["ngx queue"] = function()
      local res = inst:get("/test/contract-queue")
      assert.equal(200, res.status, res.body)
      return sb.json.decode(res.body), 0
    end,
  }

  -- What a queue reports for a case: a dead letter is not retryable any more.
  local function queue_view(expect)
    if expect.ok or expect.retryable == nil or expect.stop then return expect end
    local e = {}
    for k, v in pairs(expect) do e[k] = v end
    e.retryable = false
    return e
  end

  for _, case in ipairs(CASES) do
    local name, faults, expect, limits, skip = case[1], case[2], case[3], case[4], case[5] or {}
    for _, tname in ipairs({ "curl", "engine", "ngx", "ngx queue" }) do
      it(name .. " [" .. tname .. "]", function()
        sb.reset()
        if #faults > 0 then sb.faults(table.unpack and table.unpack(faults) or unpack(faults)) end
        local t0 = core.now()
        local got = TRANSPORTS[tname]()
        local took = core.now() - t0
        check(tname == "ngx queue" and queue_view(expect) or expect, got, took, limits, name .. " [" .. tname .. "]")
        sb.clear_faults()
      end)
    end
    if not skip.user then
      it(name .. " [user transport]", function()
        local c = client({ transport = emulated(faults), sleep = core.sleep, ca_file = false })
        local res, err, took = timed(function() return c:send(orders.minimal()) end)
        check(expect, fields_of(res, err), took, limits, name .. " [user transport]")
      end)
    end
  end

  describe("a user transport that breaks the contract", function()
    local function with(fn)
      local c = client({ transport = fn, ca_file = false })
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

    it("raising is a programmer error: it propagates", function()
      assert.has_error(function() with(function() error("my bug") end) end)
    end)
  end)
end)
