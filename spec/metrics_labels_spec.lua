-- Metric label values against a hostile endpoint (issue 19): a label value
-- is an allow-listed shape (1..40 of [A-Za-z0-9_.-]) that holds no secret,
-- anything else counts as `other`; the text is valid UTF-8 without control
-- bytes; the shared dict of the nginx queues keeps a bounded number of
-- failure series across reloads. Every path: the C metrics object, the
-- libcurl client (send and send_batch), the command line's --metrics and
-- the nginx queue's /metrics (real nginx, real TLS).
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local metrics = require("optimizely.offline.metrics")
local sb = require("support.sandbox")
local prometheus = require("support.prometheus")

-- Is `s` valid UTF-8 (no overlong forms, no surrogates) without C0, DEL or
-- C1 control characters other than the newline ending each line?
local function clean_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      if (c < 0x20 and c ~= 10) or c == 0x7f then return false, "control byte at " .. i end
      i = i + 1
    else
      local len = c >= 0xf0 and c <= 0xf4 and 4 or c >= 0xe0 and 3 or c >= 0xc2 and c < 0xe0 and 2 or nil
      if not len or i + len - 1 > n then return false, "bad lead byte at " .. i end
      local cp = c % (2 ^ (7 - len))
      for k = 1, len - 1 do
        local b = s:byte(i + k)
        if b < 0x80 or b > 0xbf then return false, "bad continuation at " .. (i + k) end
        cp = cp * 64 + (b - 0x80)
      end
      if (len == 3 and (cp < 0x800 or (cp >= 0xd800 and cp <= 0xdfff))) or (len == 4 and (cp < 0x10000
        or cp > 0x10ffff)) then return false, "overlong or surrogate at " .. i end
      if cp >= 0x80 and cp <= 0x9f then return false, "C1 control at " .. i end
      i = i + len
    end
  end
  return true
end

local function failure_codes(t)
  local out = {}
  for _, f in ipairs(t.failures) do out[#out + 1] = f.code or "" end
  table.sort(out)
  return out
end

local TOKEN_BODY = '{"status":"fail","errors":[{"code":%q,"message":"refused"}]}'

local function payload(ref)
  return { user = { id = "till-3" }, order = { refCode = ref, orderDate = "2016-05-16T14:25:00 GMT",
    currency = "GBP", total = "21.00", items = { { refCode = "sku-1", qty = 2, price = "10.50" } } } }
end

describe("metric label values", function()
  it("are an allow-listed shape, else `other`: no control byte, no cut character, nothing longer than 40",
    function()
    local m = core.metrics_new()
    local codes = {
      "MissingOrMalformedCurrency",            -- kept
      ("A"):rep(40),                           -- kept: 40 is the most
      ("A"):rep(41),                           -- too long
      ("é"):rep(30),                           -- 60 bytes: would be cut mid-character
      "Bad\31Code",                            -- the shared dict's separator
      "x\n2099/01/01 00:00:00 [emerg] forged", -- a forged log line
      "has space", "quote\"", "",
    }
    for _, c in ipairs(codes) do m:failed({ kind = "api", status = 400, code = c }, true, "store") end
    local t = m:get()
    local by = {}
    for _, f in ipairs(t.failures) do by[f.code or ""] = f.n end
    assert.same({ MissingOrMalformedCurrency = 1, [("A"):rep(40)] = 1, other = 6, [""] = 1 }, by)
    assert.equal("other", core.metric_label("a\1b"))
    assert.equal("Fine.Code_1-2", core.metric_label("Fine.Code_1-2"))
    assert.equal("", core.metric_label(""))
    local text = metrics.prometheus(m:get())
    assert.is_true(clean_utf8(text))
    prometheus.parse(text)
  end)

  it("never carry a secret the metrics object was given, in any case or cut short", function()
    local secret = "Sandbox-Token-9f8e7d"
    local m = core.metrics_new({ secret })
    for _, c in ipairs({ secret, secret:upper(), "pre." .. secret, secret:sub(1, 10), secret:sub(-9),
      "InvalidSiteToken" }) do
      m:failed({ kind = "auth", status = 401, code = c }, true)
    end
    assert.same({ "InvalidSiteToken", "other" }, failure_codes(m:get()))
    assert.equal(5, m:get().failures[1].code == "other" and m:get().failures[1].n or m:get().failures[2].n)
    assert.is_nil(metrics.prometheus(m:get()):lower():find("sandbox-token", 1, true))
  end)

  it("are checked again when tables are merged, flattened for the shared dict and read back", function()
    local hostile = { failed = 2, failures = { { kind = "api", status = 400, code = "a\31b\31c", n = 1 },
      { kind = "k\n", code = ("é"):rep(24), channel = "web shop", n = 1 } },
      channels = { ["bad\nname"] = { sent = 1, failed = 0 } }, dropped = { ["x\31y"] = 1 } }
    local sum = metrics.sum(hostile)
    for _, f in ipairs(sum.failures) do
      assert.equal("other", f.code)
      assert.is_truthy(f.kind == "api" or f.kind == "other")
    end
    assert.is_nil(sum.channels["bad\nname"])
    assert.same({ sent = 1, failed = 0 }, sum.channels.other)
    local flat = metrics.flatten(hostile)
    for k in pairs(flat) do
      local parts = select(2, k:gsub("\31", ""))
      assert.is_true(parts <= 4, k)
      assert.is_true(clean_utf8((k:gsub("\31", "|"))), k)
    end
    local back = metrics.unflatten({ ["fail\031api\031400\031a\031b\031c"] = 3, ["fail\031api\0310\031\1\031"] = 1 })
    for _, f in ipairs(back.failures) do assert.is_true(f.code == nil or f.code == "other") end
    assert.is_true(clean_utf8(metrics.prometheus(hostile)))
  end)
end)

describe("a code that is the site token", function()
  local info

  setup(function() info = sb.ensure() end)
  before_each(function() sb.clear_faults(); sb.reset() end)
  teardown(function() sb.clear_faults() end)

  local function token_fault(n)
    sb.faults({ count = n or 1, status = 400, match = "POST", body = TOKEN_BODY:format(info.token) })
  end

  local function no_token(text)
    assert.is_nil(text:lower():find(info.token:lower(), 1, true), text)
    assert.truthy(text:find('code="other"', 1, true), text)
    assert.is_true(clean_utf8(text))
  end

  it("is counted as `other` by the libcurl client's send and send_batch", function()
    local client = offline.client(sb.client_config(info, { max_attempts = 1 }))
    token_fault(1)
    local res, err = client:send(payload("ML-SEND-" .. os.time()))
    assert.is_nil(res)
    assert.equal(400, err.status)
    token_fault(1)
    local summary = client:send_batch({ payload("ML-BATCH-" .. os.time()) }, { concurrency = 1 })
    assert.equal(1, summary.failed)
    assert.same({ "other" }, failure_codes(client:metrics()))
    assert.equal(2, client:metrics().failures[1].n)
    no_token(metrics.prometheus(client))
    client:close()
  end)

  it("is counted as `other` in the command line's --metrics file", function()
    local cli = require("support.cli")
    finally(function() cli.cleanup() end)
    local input = cli.orders(cli.tmp("ml.ndjson"), 2, "ML-CLI-" .. os.time())
    local prom = cli.tmp("ml.prom")
    token_fault(2)
    local r = cli.run({ "send", input, "--metrics", prom, "--max-attempts", "1", "--rejects", cli.tmp("ml.rej") },
      { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    assert.is_nil(r.all:find(info.token, 1, true), r.all)
    local text = assert(cli.read_file(prom))
    no_token(text)
    assert.truthy(text:find('optimizely_offline_orders_failed_total{kind="http",status="400",code="other",'
      .. 'channel="store"} 2', 1, true), text)
  end)

  it("is counted as `other` in the nginx queue's /metrics", function()
    local nginx = require("support.nginx")
    local inst = nginx.start_example({ tag = "nginx-labels", info = info,
      app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        ca_file = info.ca_file, backoff_base = 0.05, backoff_max = 0.2,
        queue = { flush_interval = 0.05, max_attempts = 1 } } })
    finally(function() inst:destroy() end)
    token_fault(1)
    local res = inst:request("/pos/orders", { method = "POST",
      body = sb.json.encode({ payload("ML-NGX-" .. os.time()) }) })
    assert.equal(202, res.status, res.body)
    local text = nginx.wait_until(function()
      local body = inst:get("/metrics").body
      return body:find("optimizely_offline_orders_failed_total{", 1, true) and body
    end, 15)
    assert.is_string(text, "the failure never reached /metrics:\n" .. inst:get("/metrics").body .. inst:error_log())
    no_token(text)
    assert.is_nil(inst:error_log():find(info.token, 1, true))
  end)
end)

-- A stand-in of ngx.shared.DICT with the calls the publisher makes (incr
-- with an init value, set, get, delete, get_keys), and a capacity: past it,
-- a new key fails with "no memory" as a full dict does.
local function fake_dict(capacity)
  local d = { data = {}, n = 0 }
  function d:get(k) return self.data[k] end
  function d:set(k, v) if self.data[k] == nil then self.n = self.n + 1 end self.data[k] = v; return true end
  function d:delete(k) if self.data[k] ~= nil then self.n = self.n - 1 end self.data[k] = nil end
  function d:incr(k, v, init)
    if self.data[k] == nil then
      if init == nil then return nil, "not found" end
      if capacity and self.n >= capacity then return nil, "no memory" end
      self.n = self.n + 1
      self.data[k] = init
    end
    self.data[k] = self.data[k] + v
    return self.data[k]
  end
  function d:get_keys() local out = {} for k in pairs(self.data) do out[#out + 1] = k end return out end
  return d
end

describe("the shared dict's failure series", function()
  it("stay under a dict-wide cap across reloads, the overflow counted as `other`", function()
    local dict = fake_dict()
    local failed = 0
    -- four generations of two workers (three reloads), each failing with
    -- 40 codes never seen before (the per-worker cap is 32)
    for gen = 1, 4 do
      for w = 1, 2 do
        local m = core.metrics_new()
        local publish = metrics.shm_publisher(dict, { id = gen * 10 + w, ttl = 10 })
        for i = 1, 40 do
          m:failed({ kind = "api", status = 400, code = ("U%d-%d-%d"):format(gen, w, i) }, true)
          failed = failed + 1
          if i % 10 == 0 then publish(m:get()) end
        end
        publish(m:get(), true)
      end
    end
    local series = 0
    for _, k in ipairs(dict:get_keys()) do if k:find("^m:fail\31") then series = series + 1 end end
    assert.is_true(series <= metrics.SHM_FAILURE_SERIES, series .. " series")
    assert.is_true(series >= 32)
    local t = metrics.of(dict)
    local labelled = 0
    for _, f in ipairs(t.failures) do labelled = labelled + f.n end
    assert.equal(failed, t.failed)
    assert.equal(failed, labelled + t.failures_unlabelled) -- nothing lost: the rest is `other`
    assert.truthy(metrics.prometheus(dict):find('orders_failed_total{kind="other"', 1, true))
  end)

  it("keep adding to a series the dict already holds once the cap is reached", function()
    local dict = fake_dict()
    local m = core.metrics_new()
    local publish = metrics.shm_publisher(dict, { id = 1, ttl = 10 })
    m:failed({ kind = "api", status = 400, code = "Known" }, true)
    publish(m:get())
    for i = 1, metrics.SHM_FAILURE_SERIES + 5 do
      local w = core.metrics_new()
      w:failed({ kind = "api", status = 400, code = "C" .. i }, true)
      metrics.shm_publisher(dict, { id = 100 + i, ttl = 10 })(w:get(), true)
    end
    m:failed({ kind = "api", status = 400, code = "Known" }, true)
    publish(m:get())
    local n
    for _, f in ipairs(metrics.of(dict).failures) do if f.code == "Known" then n = f.n end end
    assert.equal(2, n)
  end)
end)

describe("the shared dict of a real nginx across reloads", function()
  local nginx = require("support.nginx")

  it("keeps at most SHM_FAILURE_SERIES failure series, the rest counted as kind=\"other\"", function()
    local info = sb.ensure()
    sb.clear_faults()
    local inst = nginx.start_example({ tag = "nginx-series", info = info, workers = 2,
      app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        ca_file = info.ca_file, backoff_base = 0.05, backoff_max = 0.2,
        queue = { flush_interval = 0.05, max_attempts = 1 } } })
    finally(function() sb.clear_faults(); inst:destroy() end)
    local per_gen, gens, failed = 40, 3, 0
    local function failed_total(text)
      local n = 0
      for v in text:gmatch("\noptimizely_offline_orders_failed_total{[^}]*} (%d+)") do n = n + tonumber(v) end
      return n
    end
    for gen = 1, gens do
      local list, rules = {}, {}
      for i = 1, per_gen do
        rules[i] = { count = 1, status = 400, match = "POST",
          body = TOKEN_BODY:format(("Unique-%d-%d"):format(gen, i)) }
        list[i] = payload(("SER-%d-%d-%d"):format(os.time(), gen, i))
      end
      sb.faults((table.unpack or unpack)(rules)) -- luacheck: ignore (unpack: 5.1)
      local res = inst:request("/pos/orders", { method = "POST", body = sb.json.encode(list) })
      assert.equal(202, res.status, res.body)
      failed = failed + per_gen
      assert.is_truthy(nginx.wait_until(function()
        return failed_total("\n" .. inst:get("/metrics").body) == failed
      end, 20), "generation " .. gen .. " never counted:\n" .. inst:get("/metrics").body .. inst:error_log())
      if gen < gens then assert.is_true(nginx.run("kill -HUP " .. inst:pid())) end
    end
    local text = inst:get("/metrics").body
    local series, other = 0, 0
    for labels, v in text:gmatch("\noptimizely_offline_orders_failed_total{([^}]*)} (%d+)") do
      if labels:find('kind="other"', 1, true) then other = other + tonumber(v) else series = series + 1 end
    end
    assert.is_true(series <= metrics.SHM_FAILURE_SERIES, series .. " series:\n" .. text)
    assert.is_true(other > 0, text)
    assert.equal(gens * per_gen, failed_total("\n" .. text))
  end)
end)
