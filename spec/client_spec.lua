-- The HTTPS client against the sandbox: a real nginx over real TLS on 127.0.0.1.
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local cjson = require("cjson.safe")
local orders = require("support.orders")
local sb = require("support.sandbox")
local wait = require("support.wait")

local TOKEN = "tok-S3CRET-42" -- a token that must never show in config errors

-- Every string a caller could print from an error.
local function error_texts(err)
  local t = { tostring(err), err.message, err.body }
  for _, e in ipairs(err.errors or {}) do
    t[#t + 1] = e.code
    t[#t + 1] = e.message
  end
  return t
end

local function assert_no_token(err, token)
  for _, s in ipairs(error_texts(err)) do
    if type(s) == "string" then
      assert.is_nil(s:find(token, 1, true), "token leaked in: " .. s)
    end
  end
end

local function raises(cfg)
  local ok, msg = pcall(offline.client, cfg)
  assert.is_false(ok, "expected a configuration error")
  assert.is_string(msg)
  assert.is_nil(msg:find(TOKEN, 1, true), "token leaked in: " .. msg)
  return msg
end

local function base_cfg(extra)
  local c = { site = "demo", token = TOKEN, channel = "store" }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

describe("offline.client configuration", function()
  it("is reachable through the lazy loader", function()
    assert.is_function(offline.client)
    assert.is_function(require("optimizely.offline.client").client)
  end)

  it("requires site, token and channel", function()
    assert.matches("config%.site is required", raises({ token = TOKEN, channel = "store" }))
    assert.matches("config%.token is required", raises({ site = "demo", channel = "store" }))
    assert.matches("config%.channel is required", raises({ site = "demo", token = TOKEN }))
    assert.matches("config must be a table", raises(nil))
  end)

  it("checks the site label", function()
    assert.matches("config%.site may contain only", raises(base_cfg({ site = "de mo" })))
    assert.matches("config%.site must be a string", raises(base_cfg({ site = 42 })))
    assert.matches("config%.site must not be empty", raises(base_cfg({ site = "" })))
  end)

  it("refuses header injection in every header value", function()
    assert.matches("config%.token contains a control character",
      raises(base_cfg({ token = TOKEN .. "\r\nX-Evil: 1" })))
    assert.matches("config%.token contains a control character", raises(base_cfg({ token = "a\0b" })))
    assert.matches("config%.site may contain only", raises(base_cfg({ site = "demo\r\nX: y" })))
    assert.matches("config%.channel may contain only",
      raises(base_cfg({ channel = "pos\nX: y", allow_custom_channel = true })))
  end)

  it("accepts the four documented channels and others only on request", function()
    for _, ch in ipairs({ "store", "mobileapp", "tv", "callcentre" }) do
      offline.client(base_cfg({ channel = ch })):close()
    end
    local msg = raises(base_cfg({ channel = "web" }))
    assert.matches("config%.channel must be one of store, mobileapp, tv, callcentre", msg)
    assert.matches("allow_custom_channel", msg)
    offline.client(base_cfg({ channel = "kiosk", allow_custom_channel = true })):close()
    assert.matches("config%.allow_custom_channel must be a boolean",
      raises(base_cfg({ channel = "kiosk", allow_custom_channel = "yes" })))
  end)

  it("maps env and sitename to the documented hosts", function()
    local function url(extra) local c = offline.client(base_cfg(extra)); local u = c:url(); c:close(); return u end
    assert.equal("https://uat.peerius.com/tracker/smart-api/orders/offline", url())
    assert.equal("https://uat.peerius.com/tracker/smart-api/orders/offline", url({ env = "uat" }))
    assert.equal("https://demo.peerius.com/tracker/smart-api/orders/offline", url({ env = "uk" }))
    assert.equal("https://shop.peerius.episerver.net/tracker/smart-api/orders/offline",
      url({ env = "se", sitename = "shop" }))
    assert.equal("https://demo.uswe01.productrecs.episerver.net/tracker/smart-api/orders/offline",
      url({ env = "us" }))
    assert.equal("https://h.example:8443/pre/fix/tracker/smart-api/orders/offline",
      url({ base_url = "https://h.example:8443/pre/fix/" }))
    assert.matches("config%.env must be one of uat, uk, se, us", raises(base_cfg({ env = "eu" })))
    assert.matches("config%.sitename may contain only", raises(base_cfg({ env = "uk", sitename = "a/b" })))
    assert.matches("config%.env and config%.base_url are exclusive",
      raises(base_cfg({ env = "uk", base_url = "https://x.example" })))
  end)

  it("insists on https unless allow_http is set", function()
    local msg = raises(base_cfg({ base_url = "http://127.0.0.1:8080" }))
    assert.matches("config%.base_url uses http://; HTTPS is required", msg)
    local c = offline.client(base_cfg({ base_url = "http://127.0.0.1:8080", allow_http = true }))
    assert.equal("http://127.0.0.1:8080/tracker/smart-api/orders/offline", c:url())
    c:close()
    assert.matches("config%.base_url must use https", raises(base_cfg({ base_url = "ftp://x.example" })))
    assert.matches("config%.base_url must look like", raises(base_cfg({ base_url = "x.example" })))
    assert.matches("config%.base_url must not contain a query",
      raises(base_cfg({ base_url = "https://x.example/?a=1" })))
    assert.matches("config%.base_url must not contain user information",
      raises(base_cfg({ base_url = "https://u:p@x.example" })))
    assert.matches("config%.base_url has an invalid port",
      raises(base_cfg({ base_url = "https://x.example:70000" })))
    assert.matches("config%.base_url must not contain spaces",
      raises(base_cfg({ base_url = "https://x.example/a\r\nb" })))
  end)

  it("checks cancel_path, ca_file, ca_path and proxy", function()
    assert.matches("config%.cancel_path must contain {refCode} exactly once",
      raises(base_cfg({ cancel_path = "/smart-api/orders/offline/" })))
    assert.matches("config%.cancel_path must start with '/'", raises(base_cfg({ cancel_path = "x/{refCode}" })))
    assert.matches("config%.ca_file cannot be read", raises(base_cfg({ ca_file = "/nonexistent/ca.pem" })))
    assert.matches("config%.ca_path must be a string", raises(base_cfg({ ca_path = true })))
    assert.matches("config%.proxy must be a string", raises(base_cfg({ proxy = 8080 })))
  end)

  it("checks timeouts and the retry settings", function()
    assert.matches("config%.timeout must be >= ", raises(base_cfg({ timeout = 0 })))
    assert.matches("config%.timeout must be a finite number", raises(base_cfg({ timeout = "10" })))
    assert.matches("config%.timeout must be a finite number", raises(base_cfg({ timeout = math.huge })))
    assert.matches("config%.connect_timeout must be >= ", raises(base_cfg({ connect_timeout = -1 })))
    assert.matches("config%.max_attempts must be an integer >= 1", raises(base_cfg({ max_attempts = 0 })))
    assert.matches("config%.max_attempts must be an integer", raises(base_cfg({ max_attempts = 1.5 })))
    assert.matches("config%.backoff_base must be >= 0", raises(base_cfg({ backoff_base = -0.1 })))
    assert.matches("config%.backoff_max must be >= backoff_base",
      raises(base_cfg({ backoff_base = 2, backoff_max = 1 })))
    assert.matches("config%.retry_after_max must be a finite number",
      raises(base_cfg({ retry_after_max = 0 / 0 })))
    assert.matches("config%.sleep must be a function", raises(base_cfg({ sleep = 1 })))
    assert.matches("config%.random must be a function", raises(base_cfg({ random = 0.5 })))
    assert.matches('config%.http_version must be one of "1%.1", "2" %(got "3"%)',
      raises(base_cfg({ http_version = "3" })))
  end)

  it("refuses unknown keys and suggests the right one", function()
    assert.matches("config%.timout is not a known option %(did you mean 'timeout'%?%)",
      raises(base_cfg({ timout = 5 })))
    assert.matches("did you mean 'token'", raises({ site = "demo", tokn = TOKEN, channel = "store" }))
    assert.matches("config%.zzzzzzzz is not a known option$", raises(base_cfg({ zzzzzzzz = 1 })))
  end)

  it("never shows the token, even when it lands in another field", function()
    local tok = "two words"
    local ok, msg = pcall(offline.client, { site = tok, token = tok, channel = "store" })
    assert.is_false(ok)
    assert.matches("config%.site may contain only", msg)
    assert.is_nil(msg:find(tok, 1, true))
  end)

  it("prints site, channel and URL but not the token", function()
    local c = offline.client(base_cfg({ env = "se" }))
    local s = tostring(c)
    assert.matches("site=demo", s)
    assert.matches("channel=store", s)
    assert.matches("https://demo%.peerius%.episerver%.net/tracker/smart%-api/orders/offline", s)
    assert.is_nil(s:find(TOKEN, 1, true))
    for k, v in pairs(c) do
      assert.is_nil(tostring(k):find(TOKEN, 1, true))
      assert.is_nil(tostring(v):find(TOKEN, 1, true))
    end
    c:close()
    assert.matches("closed", tostring(c))
    assert.error_matches(function() c:send(orders.minimal()) end, "client is closed", 1, true)
  end)

  it("builds a User-Agent naming the library, libcurl and Lua", function()
    local ua = require("optimizely.offline.context").user_agent()
    local lua = (type(jit) == "table" and jit.version) or _VERSION
    assert.equal("optimizely-offline/" .. offline.VERSION .. " libcurl/" .. (core.curl_version()) .. " " .. lua, ua)
  end)
end)

describe("offline.client against the sandbox", function()
  local info, ctl

  -- Control requests go through a separate handle so they never share the
  -- client's connection.
  local function control(method, path, body)
    local status, rbody = ctl:request(method, info.base_url .. path,
      { "Content-Type: application/json" }, body)
    assert(status, rbody)
    return status, rbody, cjson.decode(rbody)
  end
  local function last() local _, _, v = control("GET", "/_sandbox/last"); return v end
  local function stats() local _, _, v = control("GET", "/_sandbox/stats"); return v end

  local function header(h, name)
    for k, v in pairs(h) do
      if k:lower() == name:lower() then return v end
    end
  end

  local sleeps
  local function new_client(extra)
    sleeps = {}
    return offline.client(sb.client_config(info, {
      sleep = function(s) sleeps[#sleeps + 1] = s end,
      random = function() return 0.5 end,
    }, extra)) -- false in extra drops a default
  end

  setup(function()
    info = sb.ensure()
    ctl = core.http_new({ ca_file = info.ca_file, timeout = 10 })
  end)

  teardown(function()
    if ctl then ctl:close() end
  end)

  before_each(function()
    sb.reset()
  end)

  it("posts exactly the encoder's bytes with the documented headers", function()
    local c = new_client()
    local payload = orders.base()
    payload.order.total = 99 -- draws an encoder warning
    local json, warnings = offline.encode(payload)
    assert.is_string(json)
    local res, err = c:send(payload)
    assert.is_nil(err)
    assert.equal(200, res.status)
    assert.equal(1, res.attempts)
    assert.equal("OK", res.envelope.status)
    assert.equal('{"status":"OK"}', res.body)
    assert.equal(#warnings, #res.warnings)
    assert.equal(warnings[1].path, res.warnings[1].path)

    local l = last()
    assert.equal("POST", l.method)
    assert.equal("/tracker/smart-api/orders/offline", l.uri)
    assert.equal(json, l.body)
    assert.is_true(l.token_ok)
    assert.equal(info.site, header(l.headers, "site"))
    assert.equal(info.channel, header(l.headers, "channel"))
    assert.equal("application/json", header(l.headers, "content-type"))
    assert.equal("application/json", header(l.headers, "accept"))
    assert.equal(require("optimizely.offline.context").user_agent(), header(l.headers, "user-agent"))
    assert.is_nil(header(l.headers, "expect"))
    assert.equal(1, #sb.orders())
    c:close()
  end)

  it("speaks HTTP/1.1 without Expect: 100-continue, even for a large body", function()
    local c = new_client()
    local payload = orders.base()
    for i = 3, 40 do
      payload.order.items[i] = { refCode = "item-" .. i, qty = 1, price = 0 }
    end
    local json = assert(offline.encode(payload))
    assert.is_true(#json > 2048)
    local res = assert(c:send(payload))
    assert.equal("1.1", res.info.http_version)
    local l = last()
    assert.equal(1.1, l.http_version)
    assert.equal(json, l.body)
    assert.is_string(l.raw_header)
    assert.is_nil(l.raw_header:lower():find("expect:", 1, true))
    assert.is_nil(l.raw_header:find(info.token, 1, true))
    assert.matches("\r\nsiteToken: %[REDACTED%]\r\n", l.raw_header)
    c:close()
    local c2 = new_client({ http_version = "2" })
    assert.equal("2", assert(c2:send(orders.minimal())).info.http_version)
    c2:close()
  end)

  it("reuses the connection for the next request (keep-alive)", function()
    local c = new_client()
    local r1 = assert(c:send(orders.minimal()))
    local p = orders.minimal()
    p.order.refCode = "second"
    local r2 = assert(c:send(p))
    assert.is_false(r1.info.reused)
    assert.equal(1, r1.info.connect_count)
    assert.is_true(r2.info.reused)
    assert.equal(0, r2.info.connect_count)
    assert.is_true(stats().reused >= 1)
    c:close()
  end)

  it("sends raw bytes unchanged with send_encoded", function()
    local c = new_client()
    local json = assert(offline.encode(orders.minimal()))
    local res = assert(c:send_encoded(json))
    assert.equal(200, res.status)
    assert.equal(json, last().body)
    assert.has_error(function() c:send_encoded({}) end)
    c:close()
  end)

  it("sends nothing when validation fails", function()
    local c = new_client()
    local before = stats().requests
    local res, err = c:send({ order = { refCode = "x" } })
    assert.is_nil(res)
    assert.equal("validation", err.kind)
    assert.equal(0, err.attempts)
    assert.is_false(err.retryable)
    assert.equal(before, stats().requests)
    c:close()
  end)

  it("retries 503, 503 then succeeds on the third attempt", function()
    sb.faults({ count = 2, status = 503 })
    local c = new_client()
    local res, err = c:send(orders.minimal())
    assert.is_nil(err)
    assert.equal(3, res.attempts)
    assert.equal(200, res.status)
    assert.equal(2, #sleeps)
    -- full jitter at random() = 0.5: half of 0.25 s, then half of 0.5 s
    -- (the scheduler says how long until the retry is due: the delay, less
    -- the microseconds since the answer)
    assert.near(0.125, sleeps[1], 1e-3)
    assert.near(0.25, sleeps[2], 1e-3)
    assert.equal(1, #sb.orders())
    c:close()
  end)

  it("retries every retryable status", function()
    for _, status in ipairs({ 408, 429, 500, 502, 504 }) do
      sb.faults({ count = 1, status = status })
      local c = new_client()
      local res = assert(c:send(orders.minimal()))
      assert.equal(2, res.attempts, tostring(status))
      c:close()
    end
  end)

  it("gives up after max_attempts with the last HTTP error", function()
    sb.faults({ count = 5, status = 503 })
    local c = new_client({ max_attempts = 3 })
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(503, err.status)
    assert.equal(3, err.attempts)
    assert.is_true(err.retryable)
    assert.equal("SandboxFault", err.code)
    assert.equal(2, #sleeps)
    assert.matches("^http: server answered HTTP 503: SandboxFault: .* %[status 503, code SandboxFault, attempts 3%]$",
      tostring(err))
    c:close()
  end)

  it("does not retry a 400", function()
    sb.faults({ count = 3, status = 400 })
    local c = new_client()
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(400, err.status)
    assert.equal(1, err.attempts)
    assert.is_false(err.retryable)
    assert.equal(0, #sleeps)
    c:close()
  end)

  it("reports the server's own 4xx envelope (wrong token), unretried", function()
    local c = new_client({ token = "not-the-token" })
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal(401, err.status)
    assert.equal("InvalidSiteToken", err.code)
    assert.equal(1, err.attempts)
    assert_no_token(err, "not-the-token")
    c:close()
  end)

  it("honours Retry-After on a 429 instead of the computed delay", function()
    sb.faults({ count = 1, status = 429, retry_after = 7 })
    local c = new_client()
    local res = assert(c:send(orders.minimal()))
    assert.equal(2, res.attempts)
    assert.equal(1, #sleeps)
    assert.near(7, sleeps[1], 1e-3)
    c:close()
  end)

  it("caps Retry-After at retry_after_max and reads HTTP dates", function()
    sb.faults({ count = 1, status = 503, retry_after = 3600 })
    sb.faults({ count = 1, status = 503, retry_after = "Thu, 01 Jan 1970 00:00:00 GMT" })
    local c = new_client({ retry_after_max = 2 })
    local res = assert(c:send(orders.minimal()))
    assert.equal(3, res.attempts)
    assert.equal(2, #sleeps)
    assert.near(2, sleeps[1], 1e-3)
    assert.near(0.05, sleeps[2], 1e-3) -- a date in the past keeps the backoff floor
    c:close()
  end)

  it("really waits for a short Retry-After", function()
    sb.faults({ count = 1, status = 503, retry_after = 1 })
    local c = new_client({ sleep = core.sleep })
    local t0 = core.now()
    local res = assert(c:send(orders.minimal()))
    local elapsed = core.now() - t0
    assert.equal(2, res.attempts)
    assert.is_true(elapsed >= 0.99, "waited only " .. elapsed .. " s")
    c:close()
  end)

  it("does not retry an api failure (2xx with status fail)", function()
    sb.faults({ count = 2, status = 200, body = '{"status":"fail","errors":[{"code":"MalformedJson",'
      .. '"message":"Json Parsing exception: Malformed JSON."},{"code":"Other","message":"m2"}]}' })
    local c = new_client()
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("api", err.kind)
    assert.equal(200, err.status)
    assert.equal("MalformedJson", err.code)
    assert.equal(2, #err.errors)
    assert.same({ code = "Other", message = "m2" }, err.errors[2])
    assert.equal(1, err.attempts)
    assert.is_false(err.retryable)
    assert.matches("^api: order rejected: MalformedJson: Json Parsing exception: Malformed JSON%. %(%+1 more%)",
      tostring(err))
    c:close()
  end)

  it("returns warnings of a warning envelope with the result", function()
    sb.faults({ count = 1, status = 200, body = '{"status":"Warning","errors":[{"code":"W1","message":"odd"}],'
      .. '"warnings":[{"warning":"A warning message."}]}' })
    local c = new_client()
    local res = assert(c:send(orders.minimal()))
    assert.equal(1, res.attempts)
    assert.equal(2, #res.warnings)
    assert.same({ source = "api", code = "W1", message = "odd" }, res.warnings[1])
    assert.same({ source = "api", message = "A warning message." }, res.warnings[2])
    c:close()
  end)

  it("accepts the documented trailing-comma body, empty and non-JSON 2xx bodies", function()
    sb.faults({ count = 1, status = 200, body = '{"status":"OK",}' })
    sb.faults({ count = 1, status = 204, body = "" })
    sb.faults({ count = 1, status = 200, body = "<html>fine</html>", content_type = "text/html" })
    local c = new_client()
    local r1 = assert(c:send(orders.minimal()))
    assert.equal("OK", r1.envelope.status)
    assert.equal('{"status":"OK",}', r1.body)
    local r2 = assert(c:send(orders.minimal()))
    assert.equal(204, r2.status)
    assert.is_nil(r2.envelope)
    local r3 = assert(c:send(orders.minimal()))
    assert.is_nil(r3.envelope)
    assert.equal("<html>fine</html>", r3.body)
    assert.equal("text/html", r3.info.content_type)
    c:close()
  end)

  it("retries a connection closed without an answer (network)", function()
    sb.faults({ count = 1, close = true })
    local c = new_client()
    local res, err = c:send(orders.minimal())
    assert.is_nil(err)
    assert.equal(2, res.attempts)
    sb.faults({ count = 2, close = true })
    c:close()
    c = new_client({ max_attempts = 2 })
    res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.is_true(err.retryable)
    assert.equal(2, err.attempts)
    assert.is_number(err.curl_code)
    c:close()
  end)

  it("times out a slow answer and retries it", function()
    sb.faults({ count = 1, delay = 3 })
    local c = new_client({ timeout = 0.5, max_attempts = 1 })
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.equal(28, err.curl_code)
    assert.is_true(err.retryable)
    assert.equal(1, err.attempts)
    c:close()
    -- generous timeout for the second attempt: it must pass even under valgrind
    sb.faults({ count = 1, delay = 6 })
    c = new_client({ timeout = 3 })
    res = assert(c:send(orders.minimal()))
    assert.equal(2, res.attempts)
    c:close()
    -- the abandoned first attempt is still being served (the sandbox, like a
    -- real server, records it when its delay ends): let it land here rather
    -- than in the next spec's records
    wait.poll(function() return sb.stats().concurrent_now == 0 end, 20)
  end)

  it("reports a refused connection as a retryable network error", function()
    local c = new_client({ base_url = "https://127.0.0.1:1", max_attempts = 2 })
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.equal(7, err.curl_code) -- CURLE_COULDNT_CONNECT
    assert.is_true(err.retryable)
    assert.equal(2, err.attempts)
    assert.equal(1, #sleeps)
    c:close()
  end)

  it("refuses an untrusted certificate (tls, not retried)", function()
    local c = new_client({ ca_file = false })
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("tls", err.kind)
    assert.equal(60, err.curl_code) -- CURLE_PEER_FAILED_VERIFICATION
    assert.is_false(err.retryable)
    assert.equal(1, err.attempts)
    c:close()
  end)

  it("trusts a private CA through ca_path", function()
    local dir = info.dir .. "/capath-spec"
    assert(os.execute("mkdir -p '" .. dir .. "' && cp '" .. info.ca_file .. "' '" .. dir
      .. "/sandbox.pem' && openssl rehash '" .. dir .. "' >/dev/null 2>&1"))
    local c = new_client({ ca_file = false, ca_path = dir })
    local res = assert(c:send(orders.minimal()))
    assert.equal(200, res.status)
    c:close()
  end)

  it("refuses a response body above 1 MiB", function()
    sb.faults({ count = 1, status = 200, body = string.rep("x", 1024 * 1024 + 1) })
    local c = new_client({ max_attempts = 1 })
    local res, err = c:send(orders.minimal())
    assert.is_nil(res)
    assert.equal("network", err.kind)
    assert.matches("response body larger than 1048576 bytes", err.message)
    c:close()
  end)

  it("cancels with the refCode percent-encoded", function()
    local c = new_client()
    local p = orders.minimal()
    p.order.refCode = "a/b c"
    assert(c:send(p))
    local res, err = c:cancel("a/b c")
    assert.is_nil(err)
    assert.equal(200, res.status)
    local l = last()
    assert.equal("DELETE", l.method)
    assert.equal("/smart-api/orders/offline/a%2Fb%20c", l.uri)
    assert.is_true(l.token_ok)

    res, err = c:cancel("never-sent")
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(404, err.status)
    assert.equal(1, err.attempts)

    res, err = c:cancel("")
    assert.is_nil(res)
    assert.equal("validation", err.kind)
    c:close()
  end)

  it("cancels a refCode with dots as %2E, and refuses one that is only dots", function()
    local c = new_client()
    local p = orders.minimal()
    p.order.refCode = "a.b"
    assert(c:send(p))
    local res, err = c:cancel("a.b")
    assert.is_nil(err)
    assert.equal(200, res.status)
    assert.equal("/smart-api/orders/offline/a%2Eb", last().uri)
    -- "." and ".." would be removed as dot segments: another URL
    for _, ref in ipairs({ ".", "..", "..." }) do
      local before = last().uri
      res, err = c:cancel(ref)
      assert.is_nil(res)
      assert.equal("validation", err.kind)
      assert.equal("refCode", err.problems[1].path)
      assert.matches("only dots", err.problems[1].message)
      assert.equal(0, err.attempts)
      assert.equal(before, last().uri) -- nothing was sent
    end
    c:close()
  end)

  it("uses a configured cancel_path and retries a failed cancel", function()
    local c = new_client({ cancel_path = "/tracker/smart-api/orders/offline/{refCode}" })
    local p = orders.minimal()
    p.order.refCode = "R-1"
    assert(c:send(p))
    sb.faults({ count = 1, status = 502, match = "DELETE" })
    local res = assert(c:cancel("R-1"))
    assert.equal(2, res.attempts)
    assert.equal("/tracker/smart-api/orders/offline/R-1", last().uri)
    c:close()
  end)

  it("keeps the token out of every error, even when the server echoes it", function()
    local tok = info.token
    sb.faults({ count = 1, status = 500, body = '{"status":"fail","errors":[{"code":"' .. tok
      .. '","message":"bad token ' .. tok .. '"}]}' })
    sb.faults({ count = 1, status = 200, body = '{"status":"fail","errors":[{"code":"X","message":"'
      .. tok .. '"}]}' })
    local c = new_client({ max_attempts = 1 })
    local _, e1 = c:send(orders.minimal())
    local _, e2 = c:send(orders.minimal())
    assert.equal("http", e1.kind)
    assert.equal("api", e2.kind)
    local c2 = new_client({ base_url = "https://127.0.0.1:1", max_attempts = 1 })
    local _, e3 = c2:send(orders.minimal())
    local c3 = new_client({ ca_file = false })
    local _, e4 = c3:send(orders.minimal())
    for _, e in ipairs({ e1, e2, e3, e4 }) do
      assert_no_token(e, tok)
    end
    assert.matches("%[REDACTED%]", e1.message)
    assert.is_nil(tostring(c):find(tok, 1, true))
    c:close(); c2:close(); c3:close()
  end)
end)

describe("core http handle", function()
  local info
  setup(function() info = sb.ensure() end)

  it("returns status, body and info, and raises once closed", function()
    local h = core.http_new({ ca_file = info.ca_file, timeout = 5 })
    local status, body, i = h:request("GET", info.base_url .. "/_sandbox/health", { "Accept: application/json" })
    assert.equal(200, status)
    assert.equal("OK", cjson.decode(body).status)
    assert.equal("application/json", i.content_type)
    assert.is_number(i.total_time)
    assert.is_string(i.http_version)
    h:close()
    h:close() -- idempotent
    assert.has_error(function() h:request("GET", info.base_url) end, "http handle is closed")
  end)

  it("sends each request's own headers on a reused handle", function()
    local h = core.http_new({ ca_file = info.ca_file, http_version = "1.1" })
    local ctl = core.http_new({ ca_file = info.ca_file })
    local url = info.base_url .. "/tracker/smart-api/orders/offline"
    local body = assert(offline.encode(orders.minimal()))
    local function hdrs(tag)
      return { "site: " .. info.site, "siteToken: " .. info.token, "channel: " .. info.channel,
        "Content-Type: application/json", "X-Test: " .. tag }
    end
    local function last_tag()
      local _, b = ctl:request("GET", info.base_url .. "/_sandbox/last")
      for k, v in pairs(cjson.decode(b).headers) do
        if k:lower() == "x-test" then return v end
      end
    end
    local same = hdrs("a")
    for _, list in ipairs({ same, same, hdrs("a"), hdrs("b"), hdrs("long-tag-value"), hdrs("c") }) do
      assert.equal(200, (h:request("POST", url, list, body)))
      assert.equal(list[5]:sub(9), last_tag())
    end
    -- a shorter list than the cached one, then none at all
    assert.equal(401, (h:request("POST", url, { "site: " .. info.site, "channel: " .. info.channel,
      "Content-Type: application/json" }, body)))
    assert.equal(403, (h:request("POST", url, nil, body)))
    h:close()
    ctl:close()
  end)

  it("refuses bad arguments", function()
    local h = core.http_new({ ca_file = info.ca_file })
    assert.has_error(function() h:request("GET", info.base_url, { "X: a\r\nY: b" }) end)
    assert.has_error(function() h:request("GET", info.base_url, { 42 }) end)
    assert.has_error(function() h:request("get", info.base_url) end)
    -- HTTP options are checked once, by the client's schema (the C reader trusts it)
    local schema = require("optimizely.offline.client").schema
    assert.has_error(function() schema:check({ site = "s", timeuot = 1 }) end,
      "optimizely.offline.client: config.timeuot is not a known option (did you mean 'timeout'?)")
    assert.has_error(function() schema:check({ site = "s", timeout = -1 }) end)
    assert.has_error(function() core.http_new({ ca_file = "a\0b" }) end, "http_new: opts.ca_file contains a NUL byte")
    h:close()
  end)

  it("percent-encodes all but unreserved characters", function()
    assert.equal("a%2Fb%20c", core.url_escape("a/b c"))
    assert.equal("AZaz09-._~", core.url_escape("AZaz09-._~"))
    assert.equal("%25%3F%23%00%C3%A9", core.url_escape("%?#\0é"))
  end)

  it("sleeps and tells monotonic time", function()
    local t0 = core.now()
    core.sleep(0.05)
    assert.is_true(core.now() - t0 >= 0.049)
    assert.has_error(function() core.sleep(-1) end)
  end)
end)
