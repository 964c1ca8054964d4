-- The sandbox: a real nginx + ngx_http_lua on 127.0.0.1 over TLS, driven with the curl CLI.
local sandbox = require("optimizely.offline.sandbox")
local sb = require("support.sandbox")
local json = sb.json

local sys = require("optimizely.offline.sys")
local q, read_file = sys.q, sys.read_file

local function shell(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \" rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match(" rc=(%d+)%s*$"))
  return out:gsub(" rc=%d+%s*$", ""), rc
end

local function mktemp_dir(tag)
  local out = shell("mktemp -d /tmp/oo-sandbox-" .. tag .. ".XXXXXX")
  return (out:gsub("%s+$", ""))
end

local function alive(pid)
  local st = read_file("/proc/" .. pid .. "/stat")
  if st then return not st:match("^%d+ %b() Z") end
  local _, rc = shell("kill -0 " .. pid)
  return rc == 0
end

local function order(ref, over)
  local o = {
    refCode = ref, orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP", total = 100.5,
    items = { { refCode = "sku-1", qty = 2, price = 50.25 } },
  }
  for k, v in pairs(over or {}) do
    if v == json.null then o[k] = nil else o[k] = v end
  end
  return json.encode({ user = { id = "u-1" }, order = o })
end

local function first_code(res)
  local doc = json.decode(res.body)
  return doc and doc.status == "fail" and doc.errors and doc.errors[1] and doc.errors[1].code
end

local uid = 0
local function ref(prefix)
  uid = uid + 1
  return (prefix or "R") .. "-" .. os.time() .. "-" .. uid
end

describe("sandbox", function()
  local dir, info, c

  setup(function()
    dir = mktemp_dir("spec")
    local err
    -- owner_pid: nginx also goes away if this test process dies mid-run
    info, err = sandbox.start({ dir = dir, port = 0, owner_pid = sb.self_pid(), cleanup_dir = true,
      tokens = { callcentre = "cc-Token-1" } })
    assert(info, err)
    c = sb.client(info)
  end)

  teardown(function()
    if dir then
      sandbox.stop({ dir = dir })
      shell("rm -rf " .. q(dir))
    end
  end)

  before_each(function()
    c:reset()
  end)

  describe("start", function()
    it("returns the instance info and keeps everything in dir", function()
      assert.matches("^https://127%.0%.0%.1:%d+$", info.base_url)
      assert.equal(dir .. "/certs/ca.crt", info.ca_file)
      assert.equal("sandbox", info.site)
      assert.equal("sandbox-token", info.token)
      assert.equal("store", info.channel)
      assert.equal(dir, info.dir)
      assert.truthy(alive(info.pid))
      assert.equal(tostring(info.pid), read_file(dir .. "/nginx.pid"):match("%d+"))
      assert.truthy(read_file(dir .. "/sandbox.info"))
      assert.truthy(read_file(dir .. "/logs/error.log"))
      assert.matches("client_body_temp_path \"" .. dir:gsub("%p", "%%%0"), read_file(dir .. "/conf/nginx.conf"))
    end)

    it("returns the running instance when started again in the same dir", function()
      local again = assert(sandbox.start({ dir = dir, port = 0 }))
      assert.equal(info.pid, again.pid)
      assert.equal(info.base_url, again.base_url)
      local st = assert(sandbox.status({ dir = dir }))
      assert.is_true(st.running)
      assert.equal(info.pid, st.pid)
    end)

    it("reports nginx's error when the port is taken", function()
      local other = mktemp_dir("busy")
      local i, err, kind = sandbox.start({ dir = other, port = info.port })
      shell("rm -rf " .. q(other))
      assert.is_nil(i)
      assert.equal("runtime", kind)
      assert.matches("nginx failed to start", err)
      assert.matches("in use", err)
    end)

    it("stop and status of an unused dir", function()
      assert.is_true(sandbox.stop({ dir = dir .. "/nothing-here" }))
      local st, err = sandbox.status({ dir = dir .. "/nothing-here" })
      assert.is_nil(st)
      assert.matches("no sandbox running", err)
    end)

    it("rejects bad options with a config error", function()
      local i, err, kind = sandbox.start({ dir = dir, port = 70000 })
      assert.is_nil(i)
      assert.matches("port", err)
      assert.equal("config", kind)
      i, err, kind = sandbox.start({ dir = dir .. "/x", port = 0, site = "" })
      assert.is_nil(i)
      assert.matches("site", err)
      assert.equal("config", kind)
    end)
  end)

  describe("TLS", function()
    it("verifies with the sandbox CA and answers HTTP/2 and HTTP/1.1", function()
      local res = c:request({ path = "/_sandbox/health" })
      assert.equal(0, res.curl_code)
      assert.equal(200, res.status)
      assert.equal("2", res.http_version)
      res = c:request({ path = "/_sandbox/health", http = "1.1" })
      assert.equal(200, res.status)
      assert.equal("1.1", res.http_version)
    end)

    it("fails verification without the CA", function()
      local res = c:request({ path = "/_sandbox/health", cacert = false })
      assert.equal(60, res.curl_code) -- CURLE_PEER_FAILED_VERIFICATION
      assert.equal(0, res.status)
    end)

    it("has a certificate for localhost too", function()
      local res = c:request({ url = "https://localhost:" .. info.port .. "/_sandbox/health",
        extra = "--resolve localhost:" .. info.port .. ":127.0.0.1" })
      assert.equal(0, res.curl_code)
      assert.equal(200, res.status)
    end)

    it("refuses TLS 1.1", function()
      local res = c:request({ path = "/_sandbox/health", extra = "--tls-max 1.1 --tlsv1.1" })
      assert.are_not.equal(0, res.curl_code)
    end)
  end)

  describe("header checks", function()
    local cases = {
      { "missing site", { site = false }, 403, "SiteNotRecognized" },
      { "wrong site", { site = "other" }, 403, "SiteNotRecognized" },
      { "missing token", { siteToken = false }, 401, "InvalidSiteToken" },
      { "wrong token", { siteToken = "guess-Secret-42" }, 401, "InvalidSiteToken" },
      { "missing channel", { channel = false }, 403, "ChannelNotRecognized" },
      { "wrong channel", { channel = "web" }, 403, "ChannelNotRecognized" },
      { "wrong content type", { ["Content-Type"] = "text/plain" }, 415, "UnsupportedMediaType" },
    }
    for _, case in ipairs(cases) do
      it(case[1] .. " -> " .. case[3] .. " " .. case[4], function()
        local res = c:post_order(order(ref()), case[2])
        assert.equal(case[3], res.status)
        assert.equal(case[4], first_code(res))
        assert.equal("application/json", res.headers["content-type"])
        assert.is_nil(res.body:find("guess-Secret-42", 1, true))
        assert.is_nil(res.body:find(info.token, 1, true))
      end)
    end

    it("accepts a charset parameter and lower-case header names", function()
      local res = c:post_order(order(ref()), { ["Content-Type"] = "application/json; charset=utf-8" })
      assert.equal(200, res.status)
      res = c:request({ method = "POST", path = "/tracker/smart-api/orders/offline", http = "1.1",
        headers = { site = info.site, sitetoken = info.token, channel = info.channel,
          ["content-type"] = "application/json" }, body = order(ref()) })
      assert.equal(200, res.status)
    end)

    it("answers 405 to other methods", function()
      local res = c:request({ path = "/tracker/smart-api/orders/offline", headers = c:auth_headers() })
      assert.equal(405, res.status)
      assert.equal("MethodNotAllowed", first_code(res))
    end)
  end)

  describe("body checks", function()
    it("answers MalformedJson to unparsable JSON", function()
      for _, body in ipairs({ '{"order":', "{'order':1}", "[1,2]", "", "null", '{"a":NaN}' }) do
        local res = c:post_order(body)
        assert.equal(400, res.status)
        assert.equal("MalformedJson", first_code(res))
        assert.matches("^Json Parsing exception: ", json.decode(res.body).errors[1].message)
      end
    end)

    it("answers MalformedJson when order is missing or not an object", function()
      for _, body in ipairs({ '{"user":{"id":"x"}}', '{"order":"x"}', '{"order":null}' }) do
        local res = c:post_order(body)
        assert.equal(400, res.status)
        assert.equal("MalformedJson", first_code(res))
      end
    end)

    local field_cases = {
      { { refCode = json.null }, "MissingOrMalformedOrderNo" },
      { { refCode = 12 }, "MissingOrMalformedOrderNo" },
      { { orderDate = json.null }, "MissingOrMalformedOrderDate" },
      { { orderDate = "2016-05-16T14:25:00Z" }, "MissingOrMalformedOrderDate" },
      { { orderDate = "2016-13-16T14:25:00 GMT" }, "MissingOrMalformedOrderDate" },
      { { currency = "gbp" }, "MissingOrMalformedCurrency" },
      { { currency = json.null }, "MissingOrMalformedCurrency" },
      { { total = "100.0" }, "MissingOrMalformedTotal" },
      { { total = json.null }, "MissingOrMalformedTotal" },
      { { subTotal = "90" }, "MissingOrMalformedSubtotal" },
      { { shipping = true }, "MissingOrMalformedShipping" },
      { { items = json.null }, "MissingOrMalformedProduct" },
      { { items = {} }, "MissingOrMalformedProduct" },
      { { items = { { refCode = "a", qty = 1.5, price = 1 } } }, "MissingOrMalformedProduct" },
      { { items = { { refCode = "a", qty = 0, price = 1 } } }, "MissingOrMalformedProduct" },
      { { items = { { refCode = "a", qty = 1, price = "1" } } }, "MissingOrMalformedProduct" },
      { { items = { { qty = 1, price = 1 } } }, "MissingOrMalformedProduct" },
      { { items = { "sku" } }, "MissingOrMalformedProduct" },
    }
    for i, case in ipairs(field_cases) do
      it("field case " .. i .. " -> 400 " .. case[2], function()
        local res = c:post_order(order(ref(), case[1]))
        assert.equal(400, res.status)
        assert.equal(case[2], first_code(res))
        assert.equal(0, #c:orders())
      end)
    end

    it("lists every problem", function()
      local res = c:post_order('{"order":{"items":[]}}')
      local doc = json.decode(res.body)
      local codes = {}
      for _, e in ipairs(doc.errors) do codes[e.code] = true end
      assert.same({ MissingOrMalformedOrderNo = true, MissingOrMalformedOrderDate = true,
        MissingOrMalformedCurrency = true, MissingOrMalformedTotal = true,
        MissingOrMalformedProduct = true }, codes)
    end)
  end)

  describe("accepted orders", function()
    it("answers OK and records the exact body bytes and headers (no token)", function()
      local r = ref("exact")
      -- odd spacing, escapes and UTF-8 must survive byte for byte
      local body = '{ "order" : {"refCode":"' .. r .. '","orderDate":"2016-05-16T14:25:00 GMT",'
        .. '"currency":"EUR","total":1e2,"subTotal":90,"shipping":10.00,'
        .. '"items":[{"refCode":"caf\\u00e9/\195\169","qty":1,"price":100}]},'
        .. '"user":{"id":"a\\"b"}}\n'
      local res = c:post_order(body, { ["X-Trace"] = "t-1" }, { http = "1.1" })
      assert.equal(200, res.status)
      assert.same({ status = "OK" }, json.decode(res.body))
      local recs = c:orders()
      assert.equal(1, #recs)
      local rec = recs[1]
      assert.equal(body, rec.body)
      assert.equal(r, rec.refCode)
      assert.equal("sandbox", rec.site)
      assert.equal("store", rec.channel)
      assert.is_true(rec.token_ok)
      assert.equal("number", type(rec.received_at))
      assert.equal("t-1", rec.headers["X-Trace"])
      assert.equal("application/json", rec.headers["Content-Type"])
      assert.equal("sandbox", rec.headers.site)
      for k in pairs(rec.headers) do assert.are_not.equal("sitetoken", k:lower()) end
      assert.is_nil(read_file(dir .. "/orders.ndjson"):find(info.token, 1, true))
    end)

    it("filters by refCode and since", function()
      local a, b = ref("A"), ref("B")
      assert.equal(200, c:post_order(order(a)).status)
      assert.equal(200, c:post_order(order(b)).status)
      assert.equal(200, c:post_order(order(a)).status)
      local all, total = c:orders()
      assert.equal(3, #all)
      assert.equal(3, total)
      assert.equal(2, #c:orders({ refCode = a }))
      local later = c:orders({ since = 1 })
      assert.equal(2, #later)
      assert.equal(b, later[1].refCode)
    end)

    it("shows the last request with the token redacted", function()
      local body = order(ref("last"))
      c:post_order(body, nil, { http = "1.1" })
      local last = c:last()
      assert.equal("POST", last.method)
      assert.equal("/tracker/smart-api/orders/offline", last.uri)
      assert.equal(body, last.body)
      assert.is_true(last.token_ok)
      assert.equal("[REDACTED]", last.headers.siteToken)
      assert.matches("\r\nsiteToken: %[REDACTED%]\r\n", last.raw_header)
      assert.matches("\r\nsite: sandbox\r\n", last.raw_header)
      assert.is_nil(last.raw_header:find(info.token, 1, true))
      c:post_order(body, { siteToken = "nope" })
      assert.is_false(c:last().token_ok)
    end)

    it("counts requests and keep-alive reuse", function()
      local url = info.base_url .. "/tracker/smart-api/orders/offline"
      local h = ""
      for k, v in pairs(c:auth_headers()) do h = h .. " -H " .. q(k .. ": " .. v) end
      local one = " --http1.1 --cacert " .. q(info.ca_file) .. h .. " --data-binary " .. q(order(ref())) .. " " .. q(url)
      -- three requests over one connection (curl reuses it across --next)
      local out, rc = shell("timeout -k 2 60 curl -sS -o /dev/null" .. one .. " --next -o /dev/null" .. one
        .. " --next -o /dev/null" .. one)
      assert.equal(0, rc, out)
      local st = c:stats()
      assert.equal(3, st.requests)
      assert.equal(3, st.accepted)
      assert.equal(0, st.rejected)
      assert.equal(2, st.reused)
      assert.equal(3, st.max_connection_requests)
    end)
  end)

  describe("tokens per channel", function()
    it("accepts each channel with its own token and records channel and token_id, never a token", function()
      local a, b = ref("store"), ref("cc")
      assert.equal(200, c:post_order(order(a)).status)
      local res = c:post_order(order(b), { channel = "callcentre", siteToken = "cc-Token-1" })
      assert.equal(200, res.status, res.body)
      local ra, rb = c:orders({ refCode = a })[1], c:orders({ refCode = b })[1]
      assert.equal("store", ra.channel)
      assert.equal("store", ra.token_id)
      assert.equal("callcentre", rb.channel)
      assert.equal("callcentre", rb.token_id)
      assert.equal(200, c:cancel(b, false, { channel = "callcentre", siteToken = "cc-Token-1" }).status)
      local cancel = c:cancellations({ refCode = b })[1]
      assert.equal("callcentre", cancel.channel)
      assert.equal("callcentre", cancel.token_id)
      for _, name in ipairs({ "orders.ndjson", "cancellations.ndjson" }) do
        local data = read_file(dir .. "/" .. name)
        assert.is_nil(data:find("cc-Token-1", 1, true), name)
        assert.is_nil(data:find(info.token, 1, true), name)
      end
    end)

    it("answers 401 to another channel's token, 403 to an unknown channel with a known token", function()
      local res = c:post_order(order(ref()), { channel = "callcentre" }) -- the store token
      assert.equal(401, res.status)
      assert.equal("InvalidSiteToken", first_code(res))
      assert.is_nil(res.body:find(info.token, 1, true))
      res = c:post_order(order(ref()), { siteToken = "cc-Token-1" }) -- channel store
      assert.equal(401, res.status)
      assert.is_nil(res.body:find("cc-Token-1", 1, true))
      res = c:post_order(order(ref()), { channel = "web", siteToken = "cc-Token-1" })
      assert.equal(403, res.status)
      assert.equal("ChannelNotRecognized", first_code(res))
      res = c:post_order(order(ref()), { channel = "web", siteToken = "guess" })
      assert.equal(401, res.status)
      assert.equal(0, #c:orders())
    end)

    it("names the received token in /_sandbox/last by its channel, not its value", function()
      c:post_order(order(ref()), { channel = "callcentre" }, { http = "1.1" })
      local last = c:last()
      assert.is_false(last.token_ok)
      assert.equal("store", last.token_id)
      assert.is_nil(json.encode(last):find(info.token, 1, true))
      c:post_order(order(ref()), { channel = "callcentre", siteToken = "cc-Token-1" })
      last = c:last()
      assert.is_true(last.token_ok)
      assert.equal("callcentre", last.token_id)
    end)

    it("reports the channels in the info and the info file", function()
      assert.same({ store = "sandbox-token", callcentre = "cc-Token-1" }, info.tokens)
      local again = assert(sandbox.read_info(dir .. "/sandbox.info"))
      assert.same(info.tokens, again.tokens)
    end)

    it("refuses bad token maps with a config error", function()
      local bad = {
        { tokens = { callcentre = "sandbox-token" } },            -- same token as store
        { tokens = { ["call centre"] = "x" } },                    -- channel name
        { tokens = { callcentre = "" } },
        { tokens = "cc=x" },
        { token = "a", tokens = { store = "b" } },                 -- store's token twice
      }
      for i, o in ipairs(bad) do
        o.dir, o.port, o.owner_pid, o.cleanup_dir = dir .. "/never", 0, sb.self_pid(), true
        local i2, err, kind = sandbox.start(o)
        assert.is_nil(i2, "case " .. i)
        assert.equal("config", kind, "case " .. i .. ": " .. tostring(err))
        assert.matches("token", err)
      end
    end)
  end)

  describe("stats: connections and TLS handshakes", function()
    local function curl(args)
      local out, rc = shell("timeout -k 2 60 curl -sS " .. args)
      assert.equal(0, rc, out)
      return out
    end
    local function one(extra)
      local h = ""
      for k, v in pairs(c:auth_headers()) do h = h .. " -H " .. q(k .. ": " .. v) end
      return " --cacert " .. q(info.ca_file) .. h .. (extra or "") .. " --data-binary " .. q(order(ref()))
        .. " -o /dev/null " .. q(info.base_url .. "/tracker/smart-api/orders/offline")
    end

    it("counts connections, full and resumed handshakes, requests per connection (HTTP/1.1)", function()
      -- one curl: a connection closed after one request, then a second one
      -- (resuming the TLS session) carrying two requests
      curl("--http1.1" .. one(" -H 'Connection: close'") .. " --next --http1.1" .. one()
        .. " --next --http1.1" .. one())
      local st = c:stats()
      assert.equal(3, st.requests)
      assert.equal(2, st.connections)
      assert.equal(1, st.handshakes_full)
      assert.equal(1, st.handshakes_resumed)
      assert.equal(1, st.reused)
      assert.equal(2, st.max_connection_requests)
    end)

    it("counts HTTP/2 streams on one connection", function()
      curl("--http2" .. one() .. " --next --http2" .. one() .. " --next --http2" .. one())
      local st = c:stats()
      assert.equal(3, st.requests)
      assert.equal(1, st.connections)
      assert.equal(1, st.handshakes_full)
      assert.equal(3, st.max_connection_requests)
    end)
  end)

  describe("cancellation", function()
    it("cancels a recorded order on both paths and 404s unknown ones", function()
      local r = "store 7/order#1"
      local enc = "store%207%2Forder%231"
      assert.equal(200, c:post_order(order(r)).status)
      local res = c:cancel(enc)
      assert.equal(200, res.status)
      assert.same({ status = "OK" }, json.decode(res.body))
      res = c:cancel(enc, true)
      assert.equal(200, res.status)
      local cs = c:cancellations()
      assert.equal(2, #cs)
      assert.equal(r, cs[1].refCode)
      assert.equal("documented", cs[1].path)
      assert.equal("tracker", cs[2].path)
      res = c:cancel("never-sent")
      assert.equal(404, res.status)
      assert.equal("OrderNotFound", first_code(res))
      res = c:cancel("never-sent", true)
      assert.equal(404, res.status)
      assert.equal(1, #c:cancellations({ refCode = r, since = 1 }))
    end)

    it("checks the headers on DELETE", function()
      local r = ref("del")
      assert.equal(200, c:post_order(order(r)).status)
      local res = c:cancel(r, false, { siteToken = "wrong-Secret-7" })
      assert.equal(401, res.status)
      assert.equal("InvalidSiteToken", first_code(res))
      assert.is_nil(res.body:find("wrong-Secret-7", 1, true))
      assert.equal(403, c:cancel(r, false, { channel = "tv" }).status)
      assert.equal(0, #c:cancellations())
    end)

    it("DELETE /_sandbox/orders clears orders and cancellations", function()
      local r = ref("clr")
      c:post_order(order(r))
      c:cancel(r)
      assert.equal(200, c:request({ method = "DELETE", path = "/_sandbox/orders" }).status)
      assert.equal(0, #c:orders())
      assert.equal(0, #c:cancellations())
      assert.equal(404, c:cancel(r).status)
    end)
  end)

  describe("faults", function()
    it("serves a status with Retry-After for count requests, then normal again", function()
      c:faults({ count = 2, status = 503, retry_after = "2" })
      for _ = 1, 2 do
        local res = c:post_order(order(ref()))
        assert.equal(503, res.status)
        assert.equal("2", res.headers["retry-after"])
        assert.equal("fail", json.decode(res.body).status)
      end
      assert.equal(200, c:post_order(order(ref())).status)
      assert.equal(2, c:stats().faults_served)
      assert.equal(1, #c:orders())
    end)

    it("serves a given body and queues rules FIFO", function()
      c:faults({ count = 1, status = 429, body = "slow down" }, { count = 1, status = 500 })
      assert.equal(2, #c:faults())
      local res = c:post_order(order(ref()))
      assert.equal(429, res.status)
      assert.equal("slow down", res.body)
      assert.is_nil(res.headers["retry-after"])
      assert.equal(500, c:post_order(order(ref())).status)
      assert.equal(200, c:post_order(order(ref())).status)
      assert.same({}, c:faults())
    end)

    it("delays requests", function()
      c:faults({ count = 1, delay = 1 })
      local res = c:post_order(order(ref()))
      assert.equal(200, res.status)
      assert.is_true(res.time >= 0.95, "took " .. res.time)
      assert.equal(1, #c:orders())
    end)

    it("closes the connection without a response", function()
      c:faults({ count = 1, close = true })
      local res = c:post_order(order(ref()), nil, { http = "1.1" })
      assert.equal(52, res.curl_code) -- CURLE_GOT_NOTHING: "Empty reply from server"
      assert.equal(0, res.status)
      assert.equal(200, c:post_order(order(ref())).status)
    end)

    it("matches by method", function()
      local r = ref("m")
      c:faults({ count = 1, status = 502, match = "DELETE" })
      assert.equal(200, c:post_order(order(r)).status)
      assert.equal(502, c:cancel(r).status)
      assert.equal(200, c:cancel(r).status)
    end)

    it("is cleared by DELETE and rejects bad rules", function()
      c:faults({ count = 5, status = 503 })
      c:clear_faults()
      assert.equal(200, c:post_order(order(ref())).status)
      for _, bad in ipairs({ '{"count":0,"status":503}', '{"count":1}', '{"status":99}',
        '{"close":"yes"}', '{"delay":-1}', '{"status":503,"match":"GET"}', "nope" }) do
        local res = c:request({ method = "POST", path = "/_sandbox/faults", body = bad })
        assert.equal(400, res.status, bad)
      end
      assert.same({}, c:faults())
    end)
  end)

  describe("record = false", function()
    local dir2, c2
    setup(function()
      dir2 = mktemp_dir("norec")
      local i2 = assert(sandbox.start({ dir = dir2, port = 0, record = false, owner_pid = sb.self_pid(),
        cleanup_dir = true, token = "t-2" }))
      c2 = sb.client(i2)
    end)
    teardown(function()
      sandbox.stop({ dir = dir2 })
      shell("rm -rf " .. q(dir2))
    end)

    it("validates and answers OK without recording", function()
      assert.equal(200, c2:post_order(order(ref())).status)
      assert.equal(400, c2:post_order('{"order":{}}').status)
      assert.equal(401, c2:post_order(order(ref()), { siteToken = "sandbox-token" }).status)
      assert.equal(200, c2:cancel("anything").status)
      assert.equal(0, #c2:orders())
      local st = c2:stats()
      assert.equal(1, st.accepted)
      assert.equal(1, st.cancelled)
      assert.is_false(st.record)
    end)
  end)

  describe("several workers", function()
    local dir3, c3
    setup(function()
      dir3 = mktemp_dir("workers")
      c3 = sb.client(assert(sandbox.start({ dir = dir3, port = 0, workers = 2, owner_pid = sb.self_pid(),
        cleanup_dir = true })))
    end)
    teardown(function()
      sandbox.stop({ dir = dir3 })
      shell("rm -rf " .. q(dir3))
    end)

    it("records concurrent orders as whole lines and consumes faults exactly", function()
      c3:faults({ count = 5, status = 503 })
      local info3 = c3.info
      local h = ""
      for k, v in pairs(c3:auth_headers()) do h = h .. " -H " .. q(k .. ": " .. v) end
      local cmds = {}
      for i = 1, 24 do
        cmds[#cmds + 1] = "timeout -k 2 60 curl -s -o /dev/null -w '%{http_code}\\n' --cacert " .. q(info3.ca_file) .. h
          .. " --data-binary " .. q(order("W-" .. i)) .. " "
          .. q(info3.base_url .. "/tracker/smart-api/orders/offline") .. " &"
      end
      local out = shell("{ " .. table.concat(cmds, " ") .. " wait; }")
      local n200, n503 = 0, 0
      for code in out:gmatch("%d+") do
        if code == "200" then n200 = n200 + 1 elseif code == "503" then n503 = n503 + 1 end
      end
      assert.equal(5, n503, out)
      assert.equal(19, n200, out)
      local recs, total = c3:orders()
      assert.equal(19, total)
      for _, r in ipairs(recs) do assert.matches("^W%-%d+$", r.refCode) end
      assert.equal(5, c3:stats().faults_served)
    end)
  end)

  describe("delay_ms and max_concurrent", function()
    local dir5, c5
    setup(function()
      dir5 = mktemp_dir("latency")
      c5 = sb.client(assert(sandbox.start({ dir = dir5, port = 0, owner_pid = sb.self_pid(), cleanup_dir = true,
        delay_ms = 500, max_concurrent = 3, retry_after = 2 })))
    end)
    teardown(function()
      sandbox.stop({ dir = dir5 })
      shell("rm -rf " .. q(dir5))
    end)
    before_each(function() c5:reset() end)

    local function settings(t)
      local res = c5:request({ method = t and "POST" or "GET", path = "/_sandbox/settings",
        body = t and json.encode(t) })
      return res.status, json.decode(res.body)
    end

    -- n POSTs at once (curl --parallel, one connection each): their status,
    -- seconds and Retry-After, and the wall time of the whole run
    local function parallel(n)
      local h = ""
      for k, v in pairs(c5:auth_headers()) do h = h .. " -H " .. q(k .. ": " .. v) end
      local urls = {}
      for i = 1, n do urls[i] = "-o /dev/null " .. q(c5.info.base_url .. "/tracker/smart-api/orders/offline") end
      local out, rc = shell("s=$(date +%s%N); timeout -k 2 60 curl -s --no-progress-meter"
        .. " --parallel --parallel-immediate"
        .. " --parallel-max " .. n .. " --http1.1 --cacert " .. q(c5.info.ca_file) .. h
        .. " --data-binary " .. q(order("LAT"))
        .. " -w 'S=%{http_code} %{time_total} [%header{retry-after}]\\n' " .. table.concat(urls, " ")
        .. " 2>&1; e=$(date +%s%N); echo wall=$(( (e - s) / 1000000 ))")
      assert.equal(0, rc, out)
      local res = {}
      for code, t, ra in out:gmatch("S=(%d+) ([%d.]+) %[([^%]]*)%]") do
        res[#res + 1] = { status = tonumber(code), time = tonumber(t), retry_after = ra }
      end
      assert.equal(n, #res, out)
      return res, tonumber(out:match("wall=(%d+)")) / 1000
    end

    it("starts with the configured values", function()
      local st, doc = settings()
      assert.equal(200, st)
      assert.same({ delay_ms = 500, max_concurrent = 3, retry_after = 2 }, doc)
      assert.equal(500, c5.info.delay_ms)
      assert.equal(3, c5.info.max_concurrent)
    end)

    it("answers after delay_ms without blocking nginx: 8 at once take about D, not 8 D", function()
      assert.equal(200, (settings({ delay_ms = 500, max_concurrent = 0 })))
      local res, wall = parallel(8)
      for _, r in ipairs(res) do
        assert.equal(200, r.status)
        assert.is_true(r.time >= 0.5, "answered after " .. r.time .. " s")
      end
      -- one worker: blocking sleeps would take 8 x 0.5 = 4 s
      assert.is_true(wall < 1.5, "8 requests took " .. wall .. " s")
      local st = c5:stats()
      assert.equal(8, st.accepted)
      assert.equal(8, st.concurrent_max)
      assert.equal(0, st.concurrent_now)
    end)

    it("answers 429 with Retry-After above max_concurrent requests in progress", function()
      assert.equal(200, (settings({ delay_ms = 500, max_concurrent = 3, retry_after = 2 })))
      local res = parallel(8)
      local n = {}
      for _, r in ipairs(res) do
        n[r.status] = (n[r.status] or 0) + 1
        if r.status == 429 then assert.equal("2", r.retry_after) end
      end
      assert.same({ [200] = 3, [429] = 5 }, n)
      local st = c5:stats()
      assert.equal(3, st.accepted)
      assert.equal(5, st.throttled)
      assert.equal(5, st.status_429)
      assert.equal(8, st.concurrent_max) -- what the client had in flight
      assert.equal(0, st.concurrent_now)
      local one = c5:post_order(order(ref("after")))
      assert.equal(200, one.status)
      one = c5:post_order(order(ref("after")), nil, { http = "1.1" })
      assert.equal(200, one.status)
      -- the 429 body is the documented envelope
      settings({ max_concurrent = 1, delay_ms = 300 })
      res = parallel(2)
      table.sort(res, function(x, y) return x.status < y.status end)
      assert.equal(429, res[2].status)
    end)

    it("counts a fault rule's 429 in status_429, not in throttled", function()
      settings({ delay_ms = 0, max_concurrent = 0 })
      c5:faults({ count = 1, status = 429, retry_after = "1" })
      assert.equal(429, c5:post_order(order(ref())).status)
      local st = c5:stats()
      assert.equal(1, st.status_429)
      assert.equal(0, st.throttled)
    end)

    it("refuses bad settings and keeps the old ones", function()
      settings({ delay_ms = 20, max_concurrent = 4 })
      for _, bad in ipairs({ '{"delay_ms":-1}', '{"max_concurrent":1.5}', '{"nope":1}', '[1]', "x",
        '{"delay_ms":10,"retry_after":"1"}' }) do
        local res = c5:request({ method = "POST", path = "/_sandbox/settings", body = bad })
        assert.equal(400, res.status, bad)
      end
      local _, doc = settings()
      assert.same({ delay_ms = 20, max_concurrent = 4, retry_after = 2 }, doc)
    end)

    it("refuses bad options with a config error", function()
      for _, o in ipairs({ { delay_ms = -1 }, { max_concurrent = 2.5 }, { retry_after = "1" } }) do
        o.dir, o.port, o.owner_pid, o.cleanup_dir = dir5 .. "/never", 0, sb.self_pid(), true
        local i, err, kind = sandbox.start(o)
        assert.is_nil(i)
        assert.equal("config", kind, tostring(err))
      end
    end)
  end)

  describe("private recordings", function()
    local core = require("optimizely.offline.core")
    local dir6, c6

    local function mode(path)
      return (shell("stat -c %a " .. q(path)):gsub("%s+$", ""))
    end

    setup(function()
      dir6 = mktemp_dir("umask")
      local old = core.umask(tonumber("022", 8))
      local i6, err = sandbox.start({ dir = dir6, port = 0, owner_pid = sb.self_pid(), cleanup_dir = true })
      core.umask(old)
      c6 = sb.client(assert(i6, err))
    end)
    teardown(function()
      sandbox.stop({ dir = dir6 })
      shell("rm -rf " .. q(dir6))
    end)

    it("creates the records, the info file and the handler config 0600 under umask 022", function()
      local r = ref("priv")
      assert.equal(200, c6:post_order(order(r)).status)
      assert.equal(200, c6:cancel(r).status)
      for _, name in ipairs({ "orders.ndjson", "cancellations.ndjson", "sandbox.info", "conf/config.lua" }) do
        assert.equal("600", mode(dir6 .. "/" .. name), name)
      end
    end)

    it("keeps records 0600 when an nginx worker creates them", function()
      os.remove(dir6 .. "/orders.ndjson")
      os.remove(dir6 .. "/cancellations.ndjson")
      local r = ref("priv2")
      assert.equal(200, c6:post_order(order(r)).status)
      assert.equal(200, c6:cancel(r).status)
      assert.equal("600", mode(dir6 .. "/orders.ndjson"))
      assert.equal("600", mode(dir6 .. "/cancellations.ndjson"))
    end)

    it("makes an older sandbox's world-readable records 0600 on start", function()
      assert.is_true(sandbox.stop({ dir = dir6 }))
      shell("chmod 644 " .. q(dir6 .. "/orders.ndjson"))
      c6 = sb.client(assert(sandbox.start({ dir = dir6, port = 0, owner_pid = sb.self_pid(), cleanup_dir = true })))
      assert.equal("600", mode(dir6 .. "/orders.ndjson"))
    end)
  end)

  describe("restart", function()
    it("keeps records and certificates, and stop removes the process", function()
      local r = ref("keep")
      assert.equal(200, c:post_order(order(r)).status)
      local ca_before = read_file(info.ca_file)
      local crt_before = read_file(dir .. "/certs/server.crt")
      local old_pid = info.pid
      assert.is_true(sandbox.stop({ dir = dir }))
      assert.is_false(alive(old_pid))
      assert.is_nil(sandbox.status({ dir = dir }))
      assert.is_nil(read_file(dir .. "/nginx.pid"))
      assert.is_true(sandbox.stop({ dir = dir })) -- stopping twice is fine

      local again = assert(sandbox.start({ dir = dir, port = 0, owner_pid = sb.self_pid(), cleanup_dir = true,
        tokens = { callcentre = "cc-Token-1" } }))
      assert.are_not.equal(old_pid, again.pid)
      assert.equal(ca_before, read_file(again.ca_file))
      assert.equal(crt_before, read_file(dir .. "/certs/server.crt"))
      info, c = again, sb.client(again)
      local recs = c:orders({ refCode = r })
      assert.equal(1, #recs)
      assert.equal(200, c:cancel(r).status)
    end)
  end)

  describe("CLI", function()
    local dir4
    setup(function() dir4 = mktemp_dir("cli") end)
    teardown(function()
      sandbox.stop({ dir = dir4 })
      shell("rm -rf " .. q(dir4))
    end)

    local function cli(args)
      return shell("LUA_PATH='lua/?.lua;lua/?/init.lua;;' lua5.4 bin/optimizely-offline " .. args)
    end

    it("starts, reports, and stops a sandbox", function()
      local out, rc = cli("sandbox start --dir " .. q(dir4) .. " --port 0")
      assert.equal(0, rc, out)
      local url = out:match("base_url:%s+(https://127%.0%.0%.1:%d+)")
      assert.truthy(url, out)
      assert.matches("ca_file:%s+" .. dir4:gsub("%p", "%%%0") .. "/certs/ca%.crt", out)
      assert.matches("token:%s+sandbox%-token %(default%)", out)
      assert.matches("channel:%s+store", out)
      local st = assert(sandbox.status({ dir = dir4 }))
      assert.equal(url, st.base_url)
      out, rc = cli("sandbox status --dir " .. q(dir4))
      assert.equal(0, rc, out)
      assert.matches(url:gsub("%p", "%%%0"), out)
      out, rc = cli("sandbox stop --dir " .. q(dir4))
      assert.equal(0, rc, out)
      assert.is_false(alive(st.pid))
      out, rc = cli("sandbox status --dir " .. q(dir4))
      assert.equal(1, rc, out)
    end)

    it("prints (as given) for a given token", function()
      local out, rc = cli("sandbox start --dir " .. q(dir4) .. " --port 0 --token s3cret-Given --no-record")
      assert.equal(0, rc, out)
      assert.matches("token:%s+%(as given%)", out)
      assert.is_nil(out:find("s3cret-Given", 1, true))
      assert.matches("record:%s+false", out)
      cli("sandbox stop --dir " .. q(dir4))
    end)

    it("takes --delay-ms, --max-concurrent, --retry-after and --channel-token", function()
      local out, rc = cli("sandbox start --dir " .. q(dir4) .. " --port 0 --delay-ms 30 --max-concurrent 8"
        .. " --retry-after 3 --channel-token callcentre=cc-Secret-9 --channel-token app=app-Secret-8")
      assert.equal(0, rc, out)
      assert.matches("channels:%s+app, callcentre, store", out)
      assert.matches("delay_ms:%s+30", out)
      assert.matches("max_concurrent:%s+8 %(429 Retry%-After 3%)", out)
      assert.is_nil(out:find("Secret", 1, true))
      local st = assert(sandbox.status({ dir = dir4 }))
      assert.same({ store = "sandbox-token", callcentre = "cc-Secret-9", app = "app-Secret-8" }, st.tokens)
      assert.equal(30, st.delay_ms)
      local res = sb.client(st):post_order(order(ref("cli")), { channel = "app", siteToken = "app-Secret-8" })
      assert.equal(200, res.status, res.body)
      cli("sandbox stop --dir " .. q(dir4))
    end)

    it("exits 2 on bad values of the new options, without echoing a token", function()
      for _, args in ipairs({ "--delay-ms soon", "--max-concurrent 2.5", "--retry-after -1",
        "--channel-token no-equals-Secret-7", "--channel-token 'bad name=x'",
        "--channel-token store=other-Secret-6 --token sandbox-token" }) do
        local out, rc = cli("sandbox start --dir " .. q(dir4) .. " --port 0 " .. args)
        assert.equal(2, rc, args .. ": " .. out)
        assert.is_nil(out:find("Secret", 1, true), out)
      end
      assert.is_nil(sandbox.status({ dir = dir4 }))
    end)

    it("exits 2 on usage errors", function()
      local _, rc = cli("sandbox start --port nope --dir " .. q(dir4))
      assert.equal(2, rc)
      _, rc = cli("sandbox frobnicate")
      assert.equal(2, rc)
      _, rc = cli("sandbox start --port 99999 --dir " .. q(dir4))
      assert.equal(2, rc)
    end)
  end)
end)

describe("support.sandbox", function()
  it("ensures one shared sandbox and wraps the control endpoints", function()
    local info = sb.ensure()
    assert.equal(info, sb.ensure())
    assert.matches("^https://127%.0%.0%.1:%d+$", info.base_url)
    sb.reset()
    sb.faults({ count = 1, status = 503 })
    assert.equal(1, #sb.faults())
    assert.equal(503, sb.post_order(order("S-1")).status)
    assert.equal(200, sb.post_order(order("S-1")).status)
    assert.equal(1, #sb.orders({ refCode = "S-1" }))
    assert.equal(200, sb.cancel("S-1").status)
    assert.equal(1, #sb.cancellations())
    sb.reset()
    assert.equal(0, #sb.orders())
    assert.same({}, sb.faults())
    local before = sb.settings()
    assert.equal(25, sb.settings({ delay_ms = 25 }).delay_ms)
    assert.equal(before.delay_ms, sb.settings({ delay_ms = before.delay_ms }).delay_ms)
  end)
end)

describe("examples/openresty/launch.lua", function()
  local nginx = require("support.nginx")
  local work, sdir

  local function launch(args)
    return shell("LUA_PATH='lua/?.lua;lua/?/init.lua;;' timeout -k 2 120 lua5.4 examples/openresty/launch.lua " .. args)
  end

  local function master(d)
    local pid = tonumber((read_file(d .. "/nginx.pid") or ""):match("%d+"))
    return pid and alive(pid) and pid or nil
  end

  setup(function()
    work = mktemp_dir("launch")
    sdir = work .. "/sandbox"
  end)
  teardown(function()
    launch("stop --dir " .. q(work .. "/app"))
    sandbox.stop({ dir = sdir })
    shell("rm -rf " .. q(work))
  end)

  it("stop also stops the sandbox that start started", function()
    local app = work .. "/app"
    local out, rc = launch("start --dir " .. q(app) .. " --port " .. nginx.free_port() .. " --sandbox-dir " .. q(sdir))
    assert.equal(0, rc, out)
    local sb_info = assert(sandbox.status({ dir = sdir }), out)
    local app_pid = assert(master(app), out)
    out, rc = launch("stop --dir " .. q(app))
    assert.equal(0, rc, out)
    assert.matches("sandbox stopped", out)
    assert.is_false(alive(app_pid))
    assert.is_false(alive(sb_info.pid))
    assert.is_nil(sandbox.status({ dir = sdir }))
  end)

  it("leaves a sandbox it did not start running", function()
    local app = work .. "/app"
    local running = assert(sandbox.start({ dir = sdir, port = 0, owner_pid = sb.self_pid() }))
    local out, rc = launch("start --dir " .. q(app) .. " --port " .. nginx.free_port() .. " --sandbox-dir " .. q(sdir))
    assert.equal(0, rc, out)
    assert.matches("already running", out)
    out, rc = launch("stop --dir " .. q(app))
    assert.equal(0, rc, out)
    assert.is_nil(out:find("sandbox stopped", 1, true))
    assert.is_true(alive(running.pid))
    assert.is_true(sandbox.stop({ dir = sdir }))
  end)
end)
