-- The ledger on the nginx queue (issue 17 §1), on a real nginx delivering
-- over cosockets and real TLS to the sandbox: push skips what was sent and
-- refuses what changed (force sends it); q:cancel takes an unsent create
-- out (nothing sent) or waits behind it; with the spool store the ledger
-- is the spool's file. The memory store's ledger is a file of its own.
local sb = require("support.sandbox")
local nginx = require("support.nginx")
local ledger = require("optimizely.offline.ledger")
local spool = require("optimizely.offline.spool")
local launch = dofile("examples/openresty/launch.lua")
local json = sb.json

local HANDLERS = [[
    location = /l/push { content_by_lua_block {
      local a = ngx.req.get_uri_args()
      local q = a.q == "spool" and LQ.spool or LQ.memory
      local p = { user = { id = "till-7" }, order = { refCode = a.ref, orderDate = "2016-05-16T14:25:00 GMT",
        currency = "GBP", total = a.total or "21.00",
        items = { { refCode = "sku-1", qty = 1, price = a.total or "21.00" } } } }
      local res, err = q:push(p, a.force and { force = true } or a.amend and { amend = true } or nil)
      ngx.say(require("cjson").encode({ ok = res == true, skipped = type(res) == "table" and res.skipped or nil,
        kind = err and err.kind or nil, message = err and err.message or nil }))
    } }
    location = /l/cancel { content_by_lua_block {
      local a = ngx.req.get_uri_args()
      local q = a.q == "spool" and LQ.spool or LQ.memory
      local res, err = q:cancel(a.ref)
      ngx.say(require("cjson").encode({ removed = res and res.removed, queued = res and res.queued or false,
        kind = err and err.kind or nil }))
    } }
    location = /l/flush { content_by_lua_block {
      local a = ngx.req.get_uri_args()
      local q = a.q == "spool" and LQ.spool or LQ.memory
      local ok, err = q:flush(10)
      local st = q:stats()
      ngx.say(require("cjson").encode({ ok = ok == true, error = err and tostring(err) or nil,
        skipped = st.skipped.already_sent or 0, changed = st.changed, cancelled = st.dropped.cancelled or 0,
        failed = st.failed, dead = st.dead,
        prom = require("optimizely.offline.metrics").prometheus(q:metrics()) }))
    } }
    location = /l/amend_shm { content_by_lua_block {
      local p = { order = { refCode = "shm-1", orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP",
        total = "1.00", items = { { refCode = "sku-1", qty = 1, price = "1.00" } } } }
      local ok, err = pcall(LQ.shm.push, LQ.shm, p, { amend = true })
      ngx.say(require("cjson").encode({ raised = not ok, message = tostring(err) }))
    } }
    location = /l/failures { content_by_lua_block {
      local a = ngx.req.get_uri_args()
      ngx.say(require("cjson").encode({ failures = LQF[a.q], dead = LQD[a.q] }))
    } }
]]

describe("the ledger on the nginx queue", function()
  local info, dir, inst, n = nil, nil, nil, 0

  local function ref(prefix)
    n = n + 1
    return prefix .. "-" .. os.time() .. "-" .. n
  end

  local function call(path)
    local res = inst:get(path)
    assert.equal(200, res.status, res.body)
    return json.decode(res.body)
  end

  local function read_ledger(r, spool_file)
    local sp, L
    if spool_file then
      sp = assert(spool.open(spool_file))
      L = assert(sp:ledger({ host = ledger.scope(info.base_url, info.site, "-").host, site = info.site,
        channel = info.channel }))
    else
      L = assert(ledger.open(dir .. "/ledger.db"))
    end
    local rows = assert(L:show(r))
    if sp then sp:close() else L:close() end
    return rows[1]
  end

  setup(function()
    info = sb.ensure()
    sb.clear_faults()
    dir = nginx.mktemp("nginx-ledger")
    local app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
      backoff_base = 0.05, backoff_max = 0.3, queue = { flush_interval = 0.2 } }
    local init = ([[
    local cfg = { site = %q, token = %q, channel = %q, base_url = %q }
    local ngxo = require("optimizely.offline.ngx")
    LQF, LQD = { memory = {}, spool = {} }, { memory = {}, spool = {} }
    local function seen(which)
      return {
        on_failure = function(ref, err)
          table.insert(LQF[which], { ref = ref, message = err.message, status = err.status, kind = err.kind })
        end,
        on_event = function(ev)
          if ev.type == "dead" then table.insert(LQD[which], { ref = ev.ref, reason = ev.reason }) end
        end,
      }
    end
    local mo, so = seen("memory"), seen("spool")
    mo.ledger, mo.concurrency, mo.flush_interval = %q, 1, 0.2
    so.spool, so.ledger, so.concurrency, so.flush_interval = %q, true, 1, 0.2
    LQ = { memory = assert(ngxo.queue(cfg, mo)), spool = assert(ngxo.queue(cfg, so)),
      shm = assert(ngxo.queue(cfg, { shm = "oo_ledger_shm", deliverer = "agent", ledger = %q })) }
    %s]]):format(info.site, info.token, info.channel, info.base_url, dir .. "/ledger.db", dir .. "/spool.db",
      dir .. "/ledger_shm.db", nginx.watchdog_lua(sb.self_pid()))
    inst = nginx.start({ dir = dir, health = "/queue/stats", write = function(port)
      return launch.write({ dir = dir, port = port, app = app, ca_file = info.ca_file,
        vars = { extra_init_worker = init, extra_locations = HANDLERS,
          extra_http = "lua_shared_dict oo_ledger_shm 1m;" } })
    end })
  end)

  teardown(function()
    sb.clear_faults()
    if inst then inst:quit() end
    if dir and not os.getenv("OO_KEEP") then nginx.run("rm -rf " .. nginx.q(dir)) end
  end)

  before_each(function() sb.clear_faults() end)

  it("shm: push with amend raises, naming opts.shm (the dict's list could not hold the new version back)", function()
    local r = call("/l/amend_shm")
    assert.is_true(r.raised)
    assert.matches("amend is not supported with opts.shm", r.message, 1, true)
  end)

  for _, which in ipairs({ "memory", "spool" }) do
    local qs = "&q=" .. which
    local spool_file = function() return which == "spool" and dir .. "/spool.db" or nil end

    it(which .. ": an order sent before is skipped (counted, in the Prometheus text); changed refused; force",
      function()
        local r = ref("NL" .. which)
        assert.is_true(call("/l/push?ref=" .. r .. qs).ok)
        assert.is_true(call("/l/flush?x=1" .. qs).ok)
        local again = call("/l/push?ref=" .. r .. qs)
        assert.equal("already sent", again.skipped)
        local changed = call("/l/push?ref=" .. r .. "&total=30.00" .. qs)
        assert.equal("changed", changed.kind)
        assert.matches("changed since it was sent on", changed.message, 1, true)
        assert.is_true(call("/l/push?ref=" .. r .. "&total=30.00&force=1" .. qs).ok)
        local f = call("/l/flush?x=1" .. qs)
        assert.is_true(f.ok)
        assert.is_true(f.skipped >= 1)
        assert.is_true(f.changed >= 1)
        assert.matches('optimizely_offline_orders_skipped_total{reason="already_sent"}', f.prom, 1, true)
        assert.equal(2, #sb.orders({ refCode = r }))
        assert.equal("sent", read_ledger(r, spool_file()).outcome)
      end)

    it(which .. ": cancel of an order still queued removes it, nothing is sent, a later push is refused", function()
      local blocker, r = ref("NB" .. which), ref("NC" .. which)
      sb.faults({ match = "POST", delay = 1 })
      assert.is_true(call("/l/push?ref=" .. blocker .. qs).ok)
      nginx.sleep(0.3)
      assert.is_true(call("/l/push?ref=" .. r .. qs).ok)
      local c = call("/l/cancel?ref=" .. r .. qs)
      assert.equal(1, c.removed)
      assert.is_false(c.queued)
      assert.is_true(call("/l/flush?x=1" .. qs).ok)
      assert.equal(0, #sb.orders({ refCode = r }))
      assert.equal(0, #sb.cancellations({ refCode = r }))
      assert.equal("changed", call("/l/push?ref=" .. r .. qs).kind)
      assert.equal("cancelled", read_ledger(r, spool_file()).outcome)
    end)

    it(which .. ": an order accepted with warnings is recorded \"warned\" (and skipped after)", function()
      local r = ref("NWW" .. which)
      sb.faults({ match = "POST", status = 200, body = '{"status":"warning","errors":[{"code":"UnknownItem",'
        .. '"message":"item sku-1 is not in the catalogue"}]}' })
      assert.is_true(call("/l/push?ref=" .. r .. qs).ok)
      assert.is_true(call("/l/flush?x=1" .. qs).ok)
      assert.equal("warned", read_ledger(r, spool_file()).outcome)
      assert.equal("already sent", call("/l/push?ref=" .. r .. qs).skipped)
    end)

    it(which .. ": a cancel waits behind its create in flight: POST, then DELETE", function()
      local r = ref("NW" .. which)
      sb.faults({ match = "POST", delay = 0.6 })
      assert.is_true(call("/l/push?ref=" .. r .. qs).ok)
      nginx.sleep(0.3)
      local c = call("/l/cancel?ref=" .. r .. qs)
      assert.is_true(c.queued)
      assert.is_true(call("/l/flush?x=1" .. qs).ok)
      local posts, dels = sb.orders({ refCode = r }), sb.cancellations({ refCode = r })
      assert.equal(1, #posts)
      assert.equal(1, #dels)
      assert.is_true(dels[1].received_at >= posts[1].received_at)
      assert.equal("cancelled", read_ledger(r, spool_file()).outcome)
    end)

    it(which .. ": push with amend sends the DELETE, then the new version; the ledger says sent, new bytes",
      function()
        local r = ref("NA" .. which)
        assert.is_true(call("/l/push?ref=" .. r .. qs).ok)
        assert.is_true(call("/l/flush?x=1" .. qs).ok)
        assert.equal("changed", call("/l/push?ref=" .. r .. "&total=31.00" .. qs).kind)
        assert.is_true(call("/l/push?ref=" .. r .. "&total=31.00&amend=1" .. qs).ok)
        local f = call("/l/flush?x=1" .. qs)
        assert.is_true(f.ok, f.error)
        local posts, dels = sb.orders({ refCode = r }), sb.cancellations({ refCode = r })
        assert.equal(2, #posts)
        assert.equal(1, #dels)
        assert.is_true(posts[2].received_at >= dels[1].received_at)
        assert.matches('"total":31.00', posts[2].body, 1, true)
        local row = read_ledger(r, spool_file())
        assert.equal("sent", row.outcome)
        assert.equal(ledger.fingerprint(posts[2].body), row.fingerprint)
        assert.equal("already sent", call("/l/push?ref=" .. r .. "&total=31.00" .. qs).skipped)
      end)

    it(which .. ": a refused DELETE fails the amend clearly: nothing new posted; on_failure, dead \"amend\", counted",
      function()
        local r = ref("NAR" .. which)
        assert.is_true(call("/l/push?ref=" .. r .. qs).ok)
        local before = call("/l/flush?x=1" .. qs)
        assert.is_true(before.ok)
        sb.faults({ match = "DELETE", status = 400, body = '{"status":"fail","errors":[{"code":'
          .. '"CancellationNotEnabled","message":"cancellations are not enabled for this site"}]}' })
        assert.is_true(call("/l/push?ref=" .. r .. "&total=32.00&amend=1" .. qs).ok)
        local f = call("/l/flush?x=1" .. qs)
        assert.equal(1, #sb.orders({ refCode = r })) -- only the first version
        local seen = call("/l/failures?q=" .. which)
        local amend_err
        for _, e in ipairs(seen.failures) do
          if e.ref == r and e.message:find("amend: not sent, the DELETE of the earlier version failed", 1, true) then
            amend_err = e
          end
        end
        assert.is_table(amend_err)
        assert.equal(400, amend_err.status)
        local reason
        for _, d in ipairs(seen.dead) do if d.ref == r and d.reason == "amend" then reason = d.reason end end
        assert.equal("amend", reason)
        -- the new version (a DELETE is counted as a request only)
        assert.equal(before.failed + 1, f.failed)
        assert.equal(before.dead + 1, f.dead)
        assert.matches('optimizely_offline_orders_failed_total{kind="[%w_]+",status="400",'
          .. 'code="CancellationNotEnabled",channel="[^"]*"} 1', f.prom)
        local row = read_ledger(r, spool_file())
        assert.equal("sent", row.outcome) -- still the first version's
        assert.not_equal(ledger.fingerprint(assert(require("optimizely.offline").encode({ user = { id = "till-7" },
          order = { refCode = r, orderDate = "2016-05-16T14:25:00 GMT", currency = "GBP", total = "32.00",
            items = { { refCode = "sku-1", qty = 1, price = "32.00" } } } }))), row.fingerprint)
      end)
  end
end)
