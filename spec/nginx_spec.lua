-- The OpenResty path: the example nginx.conf on a real Debian nginx + lua
-- module, delivering over cosockets and real TLS to the sandbox.
local offline = require("optimizely.offline")
local sb = require("support.sandbox")
local nginx = require("support.nginx")
local launch = dofile("examples/openresty/launch.lua")
local json = sb.json

local ROOT = launch.root()

local uid = 0
local function ref(prefix)
  uid = uid + 1
  return (prefix or "NGX") .. "-" .. os.time() .. "-" .. math.random(1000, 9999) .. "-" .. uid
end

local function payload(r, over)
  local p = {
    user = { id = "till-7" },
    order = {
      refCode = r, orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP", total = "21.00",
      items = { { refCode = "sku-1", qty = 2, price = "10.50" } },
    },
  }
  for k, v in pairs(over or {}) do p.order[k] = v end
  return p
end

-- Recorded orders with this refCode.
local function received(r)
  return (sb.orders({ refCode = r }))
end

local function arrived(refs, timeout)
  return nginx.wait_until(function()
    for _, r in ipairs(refs) do
      if #received(r) == 0 then return false end
    end
    return true
  end, timeout or 20)
end

-- Lines of an nginx error log that betray a bug (not an expected failure).
local function internal_errors(log)
  local bad = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("runtime error", 1, true) or line:find("thread aborted", 1, true)
      or line:find(" raised: ", 1, true) or line:find("flush failed", 1, true)
      or line:find("sender failed", 1, true) or line:find("spool %a+ failed") then
      bad[#bad + 1] = line
    end
  end
  return table.concat(bad, "\n")
end

local function decode(res)
  local doc = json.decode(res.body)
  assert(type(doc) == "table", "not JSON: HTTP " .. tostring(res.status) .. " " .. tostring(res.body))
  return doc
end

local function self_signed(dir)
  assert(nginx.run("cd " .. nginx.q(dir) .. " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
    .. " -nodes -keyout self.key -out self.crt -days 2 -subj /CN=127.0.0.1"
    .. " -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1"), "openssl failed")
  return dir .. "/self.crt", dir .. "/self.key"
end

local TEST_LOCATIONS = [[
    location = /test/transport { content_by_lua_block { TEST.transport() } }
    location = /test/client { content_by_lua_block { TEST.client() } }
    location = /test/push { content_by_lua_block { TEST.push() } }
    location = /test/flush { content_by_lua_block { TEST.flush() } }
    location = /test/close { content_by_lua_block { TEST.close() } }
    location = /test/badopts { content_by_lua_block { TEST.badopts() } }
    location = /test/logphase {
      return 200 "ok\n";
      log_by_lua_block { TEST.logphase() }
    }
    location = /test/logphase-result { content_by_lua_block { TEST.logphase_result_handler() } }
    location = /test/fixed { return 200 '{"status":"OK"}'; }
    location = /test/big {
      content_by_lua_block { ngx.print(string.rep("x", 2 * 1024 * 1024)) }
    }
    location = /test/big-fixed {
      content_by_lua_block {
        ngx.header["Content-Length"] = 2 * 1024 * 1024
        ngx.print(string.rep("x", 2 * 1024 * 1024))
      }
    }
]]

local function client_literal(info)
  return ("{ site = %q, token = %q, channel = %q, base_url = %q }"):format(
    info.site, info.token, info.channel, info.base_url)
end

-- Render the example config for one instance.
local function writer(dir, info, app, vars)
  return function(port)
    local v = {
      extra_init_worker = ([[
    TEST = dofile(%q).handlers
    TEST.config = %s
    local ngxo = require("optimizely.offline.ngx")
    TEST.queues.full = ngxo.queue(TEST.config, { max_queue = 3 })
    TEST.queues.closing = ngxo.queue(TEST.config)
    -- two senders, each writing up to four requests at once on its connection
    TEST.queues.pipelined = ngxo.queue(TEST.config, { concurrency = 8, pipeline = 4, send_delay = 0.01,
      flush_interval = 0.2 })
    -- one file per worker: no other worker may drain it during a test
    TEST.queues.spoolfull = ngxo.queue(TEST.config, { spool = %q .. ngx.worker.id() .. ".db",
      spool_max_orders = 2 })
    %s]]):format(ROOT .. "/spec/support/nginx.lua", client_literal(info), dir .. "/bounded-",
      nginx.watchdog_lua(sb.self_pid())),
      extra_locations = TEST_LOCATIONS,
    }
    for k, x in pairs(vars or {}) do v[k] = x end
    return launch.write({ dir = dir, port = port, app = app, ca_file = info.ca_file, vars = v })
  end
end

describe("OpenResty path (nginx + cosockets)", function()
  local info, dir, inst, tls_port, closed_port

  setup(function()
    info = sb.ensure()
    sb.clear_faults()
    dir = nginx.mktemp("nginx")
    local crt, key = self_signed(dir)
    tls_port, closed_port = nginx.free_port(), nginx.free_port()
    local app = {
      site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
      backoff_base = 0.05, backoff_max = 0.3,
      queue = { flush_interval = 0.2, concurrency = 4, max_attempts = 4 },
    }
    inst = nginx.start({ dir = dir, health = "/queue/stats", write = writer(dir, info, app, {
      extra_http = ([[
  server {
    listen 127.0.0.1:%d ssl;
    ssl_certificate "%s";
    ssl_certificate_key "%s";
    location / { return 200 '{"status":"OK"}'; }
  }]]):format(tls_port, crt, key),
    }) })
  end)

  teardown(function()
    sb.clear_faults()
    if inst then inst:quit() end
    if dir and not os.getenv("OO_KEEP") then nginx.run("rm -rf " .. nginx.q(dir)) end
  end)

  local function stats()
    return decode(inst:get("/queue/stats"))
  end

  local function transport(params)
    local parts = {}
    for k, v in pairs(params) do
      parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-%._~]", function(c)
        return ("%%%02X"):format(c:byte())
      end)
    end
    local res = inst:get("/test/transport?" .. table.concat(parts, "&"))
    assert.equal(200, res.status, res.body)
    return decode(res)
  end

  describe("cosocket transport", function()
    it("posts over verified TLS, reads chunked answers and reuses the connection", function()
      local r = ref("T")
      local out = transport({ url = info.base_url .. "/tracker/smart-api/orders/offline", n = 2,
        body = assert(offline.encode(payload(r))) })
      assert.equal(200, out[1].status, json.encode(out[1]))
      assert.equal('{"status":"OK"}', out[1].body)
      assert.matches("^application/json", out[1].content_type)
      assert.equal("1.1", out[1].http_version)
      assert.is_true(out[2].reused)
      assert.equal(2, #received(r))
      local last = sb.last()
      assert.matches("^optimizely%-offline/", last.headers["User-Agent"])
      assert.equal("keep-alive", last.headers["Connection"])
    end)

    it("reads Content-Length bodies", function()
      local out = transport({ url = inst:url("/test/fixed"), method = "GET" })
      assert.equal(200, out[1].status)
      assert.equal('{"status":"OK"}', out[1].body)
    end)

    it("refuses bodies over 1 MiB (chunked and Content-Length)", function()
      for _, path in ipairs({ "/test/big", "/test/big-fixed" }) do
        local out = transport({ url = inst:url(path), method = "GET" })
        assert.equal("network", out[1].kind, path)
        assert.matches("larger than 1048576", out[1].message)
      end
    end)

    it("maps a refused connection to kind network", function()
      local out = transport({ url = "https://127.0.0.1:" .. closed_port .. "/x" })
      assert.equal("network", out[1].kind)
      assert.matches("refused", out[1].message)
    end)

    it("maps an untrusted certificate to kind tls", function()
      local out = transport({ url = "https://127.0.0.1:" .. tls_port .. "/x" })
      assert.equal("tls", out[1].kind, json.encode(out[1]))
      assert.matches("handshake", out[1].message)
    end)

    it("maps a server slower than the timeout to kind timeout", function()
      sb.faults({ delay = 3, count = 1, match = "POST" })
      local out = transport({ url = info.base_url .. "/tracker/smart-api/orders/offline",
        timeout = 0.5, body = assert(offline.encode(payload(ref("SLOW")))) })
      assert.equal("timeout", out[1].kind, json.encode(out[1]))
      sb.clear_faults()
    end)

    it("raises in the log phase, where cosockets do not exist", function()
      assert.equal(200, inst:get("/test/logphase").status)
      local out = nginx.wait_until(function()
        local d = decode(inst:get("/test/logphase-result"))
        return d.request_raised ~= nil and d
      end, 10)
      assert.is_true(out.request_raised)
      assert.matches("not available in the log phase", out.request_error)
      assert.is_true(out.flush_raised)
      assert.matches("cannot wait in the log phase", out.flush_error)
    end)
  end)

  describe("the client over cosockets", function()
    it("sends, sends encoded bytes and cancels unchanged", function()
      local r = ref("C")
      local d = decode(inst:get("/test/client?op=send&ref=" .. r))
      assert.is_true(d.ok, json.encode(d))
      assert.equal(200, d.status)
      assert.equal(1, d.attempts)
      d = decode(inst:get("/test/client?op=send_encoded&ref=" .. r .. "-e"))
      assert.is_true(d.ok, json.encode(d))
      assert.equal(1, #received(r .. "-e"))
      d = decode(inst:get("/test/client?op=cancel&ref=" .. r))
      assert.is_true(d.ok, json.encode(d))
      assert.equal(1, #sb.cancellations({ refCode = r }))
    end)

    it("retries 503 with ngx.sleep and reports the attempts", function()
      sb.faults({ count = 2, status = 503, match = "POST" })
      local d = decode(inst:get("/test/client?op=send&max_attempts=3&ref=" .. ref("C")))
      assert.is_true(d.ok, json.encode(d))
      assert.equal(3, d.attempts)
    end)

    it("refuses an invalid order before any request", function()
      local d = decode(inst:get("/test/client?op=invalid"))
      assert.is_false(d.ok)
      assert.equal("validation", d.err.kind)
      assert.equal("order.currency", d.problems[1].path)
    end)

    it("refuses send_batch: it needs libcurl (a queue delivers under nginx)", function()
      local d = decode(inst:get("/test/client?op=batch&ref=" .. ref("B")))
      assert.is_true(d.raised)
      assert.matches("libcurl transport", d.message)
    end)
  end)

  describe("queue", function()
    it("takes a POS upload (array) and delivers every order byte for byte", function()
      local refs, list = {}, {}
      for i = 1, 6 do
        refs[i] = ref("POS")
        list[i] = payload(refs[i])
      end
      local res = inst:request("/pos/orders", { method = "POST", body = json.encode(list) })
      assert.equal(202, res.status, res.body)
      local doc = decode(res)
      assert.equal(6, doc.queued)
      assert.equal(refs[3], doc.results[3].refCode)
      assert.is_true(arrived(refs))
      for i, r in ipairs(refs) do
        local rec = received(r)
        assert.equal(1, #rec)
        assert.equal(assert(offline.encode(list[i])), rec[1].body)
        assert.equal(info.site, rec[1].headers.site)
      end
    end)

    it("takes a single order object and reports the encoder's warnings", function()
      local r = ref("ONE")
      local p = payload(r)
      p.user = nil -- allowed, with a warning
      local res = inst:request("/pos/orders", { method = "POST", body = json.encode(p) })
      assert.equal(202, res.status, res.body)
      assert.equal("user", decode(res).results[1].warnings[1].path)
      assert.is_true(arrived({ r }))
    end)

    it("answers 400 with field paths for invalid orders and queues none of the upload", function()
      local good, bad = ref("GOOD"), ref("BAD")
      local list = { payload(good), payload(bad, { currency = "EURO", total = "1,00" }) }
      local res = inst:request("/pos/orders", { method = "POST", body = json.encode(list) })
      assert.equal(400, res.status)
      local doc = decode(res)
      assert.equal(1, #doc.invalid)
      assert.equal(1, doc.invalid[1].index)
      local paths = {}
      for _, p in ipairs(doc.invalid[1].problems) do paths[p.path] = true end
      assert.is_true(paths["order.currency"])
      assert.is_true(paths["order.total"])
      res = inst:request("/pos/orders", { method = "POST", body = "{not json" })
      assert.equal(400, res.status)
      assert.matches("not a JSON", decode(res).error)
      -- nothing of the rejected upload went out
      assert.equal(true, decode(inst:get("/test/flush?timeout=10")).ok)
      assert.equal(0, #received(good))
    end)

    it("pushes from log_by_lua (the checkout hook)", function()
      local r = ref("CK")
      local res = inst:get("/checkout?order=" .. r .. "&sku=sku-9&qty=3&price=2.50&user=web-1")
      assert.equal(200, res.status)
      assert.is_true(arrived({ r }))
      local body = json.decode(received(r)[1].body)
      assert.equal("7.50", ("%.2f"):format(body.order.total))
      assert.equal("sku-9", body.order.items[1].refCode)
      -- an invalid checkout is refused at push time and counted, not sent
      local before = stats().invalid
      assert.equal(200, inst:get("/checkout?order=" .. ref("CKBAD") .. "&sku=s&price=abc").status)
      assert.is_true(nginx.wait_until(function() return stats().invalid == before + 1 end, 10))
      assert.is_true(stats().dropped.invalid >= 1)
    end)

    it("refuses with kind full at max_queue, never dropping silently", function()
      local prefix = ref("FULL")
      local d = decode(inst:get("/test/push?queue=full&n=5&prefix=" .. prefix))
      local kinds = {}
      for i, r in ipairs(d.results) do kinds[i] = r.ok and "ok" or r.kind end
      assert.same({ "ok", "ok", "ok", "full", "full" }, kinds)
      assert.equal("max_queue", d.results[4].bound)
      assert.equal("max_queue", d.results[4].option)
      assert.equal(2, d.stats.dropped.full)
      assert.is_true(arrived({ prefix .. "-1", prefix .. "-2", prefix .. "-3" }))
      assert.equal(0, #received(prefix .. "-4"))
    end)

    it("pipelines: several orders written at once on a connection, each delivered once", function()
      local prefix = ref("PIPE")
      local d = decode(inst:get("/test/push?queue=pipelined&n=12&prefix=" .. prefix))
      for _, r in ipairs(d.results) do assert.is_true(r.ok) end
      local refs = {}
      for i = 1, 12 do refs[i] = prefix .. "-" .. i end
      assert.is_true(arrived(refs))
      for _, r in ipairs(refs) do assert.equal(1, #received(r), r) end
    end)

    it("pipelines: after a 503 the orders behind it on the connection are sent again, none lost", function()
      local prefix = ref("PIPE503")
      sb.faults({ count = 1, status = 503, match = "POST" })
      local d = decode(inst:get("/test/push?queue=pipelined&n=8&prefix=" .. prefix))
      for _, r in ipairs(d.results) do assert.is_true(r.ok) end
      local refs = {}
      for i = 1, 8 do refs[i] = prefix .. "-" .. i end
      -- at least once: an order behind the 503 may have reached the endpoint
      -- before the connection was closed unread (see doc/topics/openresty.md)
      assert.is_true(arrived(refs))
    end)

    it("refuses with kind full at a spool bound too", function()
      local prefix = ref("SFULL")
      local d = decode(inst:get("/test/push?queue=spoolfull&n=4&prefix=" .. prefix))
      local kinds = {}
      for i, r in ipairs(d.results) do kinds[i] = r.ok and "ok" or r.kind end
      assert.same({ "ok", "ok", "full", "full" }, kinds)
      assert.equal("max_orders", d.results[3].bound)
      assert.equal("spool_max_orders", d.results[3].option)
      assert.is_true(arrived({ prefix .. "-1", prefix .. "-2" }))
    end)

    it("close flushes, then refuses pushes with kind closed", function()
      local prefix = ref("CLOSE")
      local d = decode(inst:get("/test/close?prefix=" .. prefix))
      assert.same({ true, true }, d.pushed)
      assert.is_true(d.closed, json.encode(d))
      assert.is_false(d.again)
      assert.equal("closed", d.again_kind)
      assert.equal(1, d.stats.dropped.closed)
      for i = 1, 2 do assert.equal(1, #received(prefix .. "-" .. i)) end
    end)

    it("raises on bad queue arguments, naming the field and never the token", function()
      local d = decode(inst:get("/test/badopts"))
      assert.matches("opts%.max_qeue is not a known option", d.unknown)
      assert.matches("opts%.concurrency must be an integer in 1%.%.1024", d.concurrency)
      assert.matches("client_config%.ca_file is not used under nginx: set lua_ssl_trusted_certificate", d.ca_file)
      assert.matches("config%.channel must be one of", d.channel)
      assert.is_nil(d.channel:find("tok-S3CRET-42", 1, true))
      assert.matches("opts%.on_failure must be a function", d.callback)
      assert.matches("opts%.shm must name a lua_shared_dict", d.shm)
      assert.matches("opts%.shm cannot be combined with opts%.spool", d.shm_spool)
      assert.matches("opts%.deliverer is worker 99 but there are 1 workers", d.deliverer)
      assert.matches("opts%.poll_interval needs opts%.shm", d.poll)
      assert.matches("opts%.engine is gone: the delivery thread", d.engine)
    end)

    it("retries 503 answers later and delivers", function()
      local before = stats()
      sb.faults({ count = 2, status = 503, match = "POST" })
      local r = ref("R503")
      assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode(payload(r)) }).status)
      assert.is_true(arrived({ r }))
      local after = stats()
      assert.is_true(after.retried >= before.retried + 2)
      assert.equal(before.dead, after.dead)
      assert.equal(before.failed, after.failed)
    end)

    it("pauses on 429 until Retry-After, then delivers", function()
      sb.faults({ count = 1, status = 429, retry_after = "1", match = "POST" })
      local refs = { ref("R429"), ref("R429") }
      local res = inst:request("/pos/orders", { method = "POST",
        body = json.encode({ payload(refs[1]), payload(refs[2]) }) })
      assert.equal(202, res.status)
      assert.is_true(arrived(refs))
    end)

    it("gives up on a permanent failure (dead, on_failure logged)", function()
      local before = stats()
      sb.faults({ count = 1, status = 400, match = "POST" })
      local r = ref("DEAD")
      assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode(payload(r)) }).status)
      assert.is_true(nginx.wait_until(function() return stats().dead == before.dead + 1 end, 15))
      assert.equal(before.failed + 1, stats().failed)
      assert.equal(0, #received(r))
      assert.matches("order " .. r:gsub("%-", "%%-") .. " was not delivered", inst:error_log())
      assert.is_nil(inst:error_log():find(info.token, 1, true))
    end)

    it("flush waits in a content handler until the queue is empty", function()
      local refs = {}
      for i = 1, 3 do refs[i] = ref("FL") end
      local list = {}
      for i, r in ipairs(refs) do list[i] = payload(r) end
      assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode(list) }).status)
      local d = decode(inst:get("/test/flush?timeout=10"))
      assert.is_true(d.ok, json.encode(d))
      for _, r in ipairs(refs) do assert.equal(1, #received(r)) end
      local st = stats()
      assert.equal(0, st.queued)
      assert.equal(0, st.in_flight)
    end)
  end)

  describe("worker exit without a spool", function()
    local function waiting_for_retry(refs, faults)
      local served = sb.stats().faults_served
      sb.faults({ count = faults, status = 503, retry_after = "30", match = "POST" })
      local list = {}
      for i, r in ipairs(refs) do list[i] = payload(r) end
      assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode(list) }).status)
      assert.is_true(nginx.wait_until(function()
        return sb.stats().faults_served >= served + #refs
      end, 15), "orders were not attempted")
    end

    it("makes a final attempt for orders waiting to be retried (QUIT)", function()
      local refs = { ref("EXIT"), ref("EXIT") }
      waiting_for_retry(refs, #refs) -- the next attempt succeeds, but only in 30 s
      for _, r in ipairs(refs) do assert.equal(0, #received(r)) end
      assert.is_true(inst:quit())
      for _, r in ipairs(refs) do assert.equal(1, #received(r), r) end
      inst:start()
    end)

    it("reports every order it could not deliver before exiting", function()
      local refs = { ref("LOST"), ref("LOST") }
      waiting_for_retry(refs, 1000)
      assert.is_true(inst:quit())
      sb.clear_faults()
      local log = inst:error_log()
      for _, r in ipairs(refs) do
        -- the refCode is quoted (escaped) in the log line
        assert.matches('worker exiting, order "' .. r:gsub("%-", "%%-") .. '" not delivered', log)
        assert.matches("order " .. r:gsub("%-", "%%-") .. " was not delivered: shutdown", log)
      end
      inst:start()
    end)
  end)

  describe("with a spool (two workers sharing one SQLite file)", function()
    local sdir, sinst, spool_path

    setup(function()
      sb.clear_faults()
      sdir = nginx.mktemp("nginx-spool")
      spool_path = sdir .. "/orders.db"
      local app = {
        site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        backoff_base = 0.05, backoff_max = 0.3,
        queue = { spool = spool_path, flush_interval = 0.2, max_attempts = 50, lease = 3,
          shutdown_timeout = 2 },
      }
      sinst = nginx.start({ dir = sdir, health = "/queue/stats", write = writer(sdir, info, app, { workers = 2 }) })
    end)

    teardown(function()
      sb.clear_faults()
      if sinst then sinst:quit() end
      if sdir and not os.getenv("OO_KEEP") then nginx.run("rm -rf " .. nginx.q(sdir)) end
    end)

    local function spool_rows()
      local sp = assert(require("optimizely.offline.spool").open(spool_path))
      local rows = assert(sp:list({ limit = 1000 }))
      sp:close()
      return rows
    end

    local function upload(refs)
      local list = {}
      for i, r in ipairs(refs) do list[i] = payload(r) end
      local res = sinst:request("/pos/orders", { method = "POST", body = json.encode(list) })
      assert.equal(202, res.status, res.body)
    end

    it("delivers through the spool", function()
      local refs = { ref("SP"), ref("SP"), ref("SP") }
      upload(refs)
      assert.is_true(arrived(refs))
      assert.is_true(nginx.wait_until(function() return #spool_rows() == 0 end, 10))
      for _, r in ipairs(refs) do assert.equal(1, #received(r)) end -- leases: no order sent twice
    end)

    -- Undelivered orders at stop: the sandbox answers 503 with Retry-After 2.
    local function undelivered(refs)
      local served = sb.stats().faults_served
      sb.faults({ count = 1000, status = 503, retry_after = "2", match = "POST" })
      upload(refs)
      assert.is_true(nginx.wait_until(function()
        return sb.stats().faults_served >= served + #refs
      end, 15), "orders were not attempted")
    end

    local function restart_and_check(refs)
      local rows = spool_rows()
      local have = {}
      for _, row in ipairs(rows) do have[row.ref] = true end
      for _, r in ipairs(refs) do assert.is_true(have[r], r .. " is not in the spool") end
      sb.clear_faults()
      sinst:start()
      assert.is_true(arrived(refs, 30))
      assert.is_true(nginx.wait_until(function() return #spool_rows() == 0 end, 10))
    end

    it("keeps undelivered orders across a graceful stop (QUIT) and sends them after the restart", function()
      local refs = { ref("QUIT"), ref("QUIT"), ref("QUIT") }
      undelivered(refs)
      assert.is_true(sinst:quit())
      for _, r in ipairs(refs) do assert.equal(0, #received(r)) end
      restart_and_check(refs)
    end)

    it("keeps them across a crash (kill -9 of master and workers)", function()
      local refs = { ref("KILL"), ref("KILL") }
      undelivered(refs)
      sinst:kill9()
      restart_and_check(refs)
    end)

    it("keeps them across a reload (HUP): the new workers send them", function()
      local refs = { ref("HUP"), ref("HUP") }
      undelivered(refs)
      assert.is_true(nginx.run("kill -HUP " .. sinst:pid()))
      sb.clear_faults()
      assert.is_true(arrived(refs, 30))
      assert.is_true(nginx.wait_until(function() return #spool_rows() == 0 end, 10))
    end)

    it("reports the spool in stats", function()
      local st = decode(sinst:get("/queue/stats"))
      assert.is_table(st.spool)
      assert.equal(0, st.queued)
    end)

    it("logged no internal error", function()
      assert.equal("", internal_errors(sinst:error_log()))
    end)
  end)

  describe("shared delivery (two workers, lua_shared_dict, worker 1 delivers)", function()
    local hdir, hinst

    setup(function()
      sb.clear_faults()
      hdir = nginx.mktemp("nginx-shared")
      local app = {
        site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        backoff_base = 0.05, backoff_max = 0.3,
        queue = { shm = "optimizely_offline", deliverer = 1, flush_interval = 0.2, max_attempts = 50,
          shutdown_timeout = 2 },
      }
      local w = writer(hdir, info, app, { workers = 2, extra_http = "lua_shared_dict oo_test_full 1m;" })
      hinst = nginx.start({ dir = hdir, health = "/queue/stats", write = function(port)
        local conf = w(port)
        -- a shared queue nobody drains (no privileged agent on a stock
        -- nginx), so that it fills up
        local text = assert(nginx.read_file(conf))
        text = text:gsub("TEST%.queues%.full = ", "TEST.queues.sharedfull = ngxo.queue(TEST.config,"
          .. " { shm = \"oo_test_full\", deliverer = \"agent\", max_queue = 3 })\n    TEST.queues.full = ", 1)
        local f = assert(io.open(conf, "wb"))
        f:write(text)
        f:close()
        return conf
      end })
    end)

    teardown(function()
      sb.clear_faults()
      if hinst then hinst:quit() end
      if hdir and not os.getenv("OO_KEEP") then nginx.run("rm -rf " .. nginx.q(hdir)) end
    end)

    local function checkouts(refs)
      for _, r in ipairs(refs) do
        assert.equal(200, hinst:get("/checkout?order=" .. r .. "&sku=sku-3&qty=2&price=1.25&user=web-2").status)
      end
    end

    it("delivers orders pushed in the log phase of any worker, once each", function()
      local refs = {}
      for i = 1, 8 do refs[i] = ref("SH") end
      local before = decode(hinst:get("/queue/stats")).sent
      checkouts(refs)
      assert.is_true(arrived(refs))
      for _, r in ipairs(refs) do assert.equal(1, #received(r)) end
      local body = json.decode(received(refs[1])[1].body)
      assert.equal("2.50", ("%.2f"):format(body.order.total))
      -- the counters are shared: any worker reports the deliverer's sends
      assert.is_true(nginx.wait_until(function()
        local st = decode(hinst:get("/queue/stats"))
        return st.shared == true and st.sent >= before + #refs and st.queued == 0
      end, 10))
    end)

    it("refuses with kind full at max_queue (the shared list's length)", function()
      local prefix = ref("SHFULL")
      local d = decode(hinst:get("/test/push?queue=sharedfull&n=5&prefix=" .. prefix))
      local kinds = {}
      for i, r in ipairs(d.results) do kinds[i] = r.ok and "ok" or r.kind end
      assert.same({ "ok", "ok", "ok", "full", "full" }, kinds)
      assert.equal("max_queue", d.results[4].option)
      assert.equal(2, d.stats.dropped.full)
      assert.equal(3, d.stats.queued)
    end)

    it("keeps delivering across a reload (HUP): retries and new pushes arrive", function()
      local refs = { ref("SHHUP"), ref("SHHUP"), ref("SHHUP") }
      local served = sb.stats().faults_served
      sb.faults({ count = 1000, status = 503, retry_after = "2", match = "POST" })
      checkouts(refs)
      assert.is_true(nginx.wait_until(function()
        return sb.stats().faults_served >= served + #refs
      end, 15), "orders were not attempted")
      assert.is_true(nginx.run("kill -HUP " .. hinst:pid()))
      sb.clear_faults()
      assert.is_true(arrived(refs, 30))
      local after = { ref("SHHUP2"), ref("SHHUP2") }
      checkouts(after)
      assert.is_true(arrived(after, 30))
      assert.is_true(nginx.wait_until(function() return decode(hinst:get("/queue/stats")).queued == 0 end, 10))
    end)

    it("logged no internal error", function()
      assert.equal("", internal_errors(hinst:error_log()))
    end)
  end)

  it("logged no internal error", function()
    assert.equal("", internal_errors(inst:error_log()))
    assert.is_nil(inst:error_log():find(info.token, 1, true))
  end)
end)
