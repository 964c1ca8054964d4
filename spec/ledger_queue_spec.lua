-- The ledger on client:queue (issue 17 §1): push skips what was sent,
-- refuses what changed, force; q:cancel waits behind its create or takes
-- an unsent create out (nothing sent); with a spool the ledger lives in the
-- spool's file. Against the sandbox (real nginx, real TLS) and real SQLite:
-- what the sandbox recorded is the truth.
local offline = require("optimizely.offline")
local ledger = require("optimizely.offline.ledger")
local spool = require("optimizely.offline.spool")
local metrics = require("optimizely.offline.metrics")
local core = require("optimizely.offline.core")
local orders = require("support.orders")
local sb = require("support.sandbox")
local sq = require("support.sqlite")
local sys = require("optimizely.offline.sys")

local make = orders.numbered

describe("the ledger on client:queue", function()
  local info, dir, n_files

  local function new_client(extra)
    return offline.client(sb.client_config(info,
      { backoff_base = 0.02, backoff_max = 0.2, random = function() return 0.5 end }, extra))
  end

  local function fresh(name)
    n_files = n_files + 1
    return dir .. "/" .. name .. "-" .. n_files .. ".db"
  end

  local function count(ref)
    return #sb.orders({ refCode = ref }), #sb.cancellations({ refCode = ref })
  end

  setup(function()
    info = sb.ensure()
    dir = sq.tmpdir("ledger-queue")
    n_files = 0
  end)

  teardown(function()
    sys.run("rm -rf " .. sys.q(dir))
  end)

  before_each(function()
    sb.reset()
  end)

  it("in memory: a push of an order sent before is skipped (a result, counted); changed refused; force", function()
    local path = fresh("ledger")
    local events = {}
    local c = new_client()
    local q = assert(c:queue({ ledger = path, on_event = function(ev) events[#events + 1] = ev end }))
    local list = make("qm-", 3)
    for _, p in ipairs(list) do assert.is_true((q:push(p))) end
    assert(q:flush(10))
    local again = q:push(list[1])
    assert.equal("already sent", again.skipped)
    assert.equal("already_sent", again.reason)
    assert.equal(0, again.attempts)
    list[2].order.total = 55.0
    list[2].order.items[1].price = 55.0
    local res, err = q:push(list[2])
    assert.is_nil(res)
    assert.equal("changed", err.kind)
    assert.matches("changed since it was sent on", err.message, 1, true)
    assert.is_true((q:push(list[2], { force = true })))
    assert(q:flush(10))
    local st = q:stats()
    assert.equal(1, st.skipped.already_sent)
    assert.equal(1, st.changed)
    local m = q:metrics()
    assert.equal(1, m.skipped.already_sent)
    assert.equal(1, m.changed)
    local text = metrics.prometheus(m)
    assert.matches('optimizely_offline_orders_skipped_total{reason="already_sent"} 1', text, 1, true)
    local kinds = {}
    for _, ev in ipairs(events) do kinds[ev.type] = (kinds[ev.type] or 0) + 1 end
    assert.equal(1, kinds.skipped)
    assert.equal(1, kinds.changed)
    assert.equal(1, (count("qm-1")))
    assert.equal(2, (count("qm-2")))
    q:close(5)
    -- recorded by the thread: a new queue on the same ledger skips all three
    local L = assert(ledger.open(path))
    assert.equal("sent", assert(L:show("qm-3"))[1].outcome)
    L:close()
    c:close()
  end)

  it("in memory: cancel of an order still queued removes it (nothing sent) and records it cancelled", function()
    local path = fresh("ledger")
    local c = new_client()
    local q = assert(c:queue({ ledger = path, concurrency = 1, adaptive = false }))
    sb.faults({ match = "POST", delay = 1 })
    assert.is_true((q:push(make("qcb-", 1)[1]))) -- the blocker, in flight for a second
    core.sleep(0.2)
    local x = make("qcx-", 1)[1]
    assert.is_true((q:push(x)))
    local r = assert(q:cancel("qcx-1"))
    assert.equal(1, r.removed)
    assert.is_nil(r.queued)
    assert(q:flush(10))
    local posts, dels = count("qcx-1")
    assert.equal(0, posts)
    assert.equal(0, dels)
    assert.equal(1, q:stats().dropped.cancelled)
    local res, err = q:push(x)
    assert.is_nil(res)
    assert.equal("changed", err.kind)
    assert.matches("was cancelled", err.message, 1, true)
    q:close(5)
    local L = assert(ledger.open(path))
    assert.equal("cancelled", assert(L:show("qcx-1"))[1].outcome)
    L:close()
    c:close()
  end)

  it("in memory: a cancel waits behind its create in flight: POST, then DELETE; a later push refused unless forced",
    function()
      local path = fresh("ledger")
      local c = new_client()
      local q = assert(c:queue({ ledger = path }))
      sb.faults({ match = "POST", delay = 0.5 })
      local x = make("qcw-", 1)[1]
      assert.is_true((q:push(x)))
      core.sleep(0.2)
      local r = assert(q:cancel("qcw-1"))
      assert.is_true(r.queued)
      assert(q:flush(10))
      local posts = sb.orders({ refCode = "qcw-1" })
      local dels = sb.cancellations({ refCode = "qcw-1" })
      assert.equal(1, #posts)
      assert.equal(1, #dels)
      assert.is_true(dels[1].received_at >= posts[1].received_at)
      q:close(5)
      local L = assert(ledger.open(path))
      assert.equal("cancelled", assert(L:show("qcw-1"))[1].outcome)
      L:close()
      local q2 = assert(c:queue({ ledger = path }))
      local res, err = q2:push(x)
      assert.is_nil(res)
      assert.equal("changed", err.kind)
      assert.is_true((q2:push(x, { force = true })))
      assert(q2:flush(10))
      assert.equal(2, #sb.orders({ refCode = "qcw-1" }))
      q2:close(5)
      c:close()
    end)

  it("with a spool, ledger = true keeps the ledger in the spool's file: a new queue skips what was sent", function()
    local sp_path = fresh("spool")
    local c = new_client()
    local q = assert(c:queue({ spool = sp_path, ledger = true }))
    local list = make("qs-", 3)
    for _, p in ipairs(list) do assert.is_true((q:push(p))) end
    assert(q:flush(10))
    q:close(5)
    local q2 = assert(c:queue({ spool = sp_path, ledger = true }))
    for _, p in ipairs(list) do assert.equal("already sent", q2:push(p).skipped) end
    q2:close(5)
    for i = 1, 3 do assert.equal(1, (count("qs-" .. i))) end
    -- the rows are in the spool's file, written by the acks
    local sp = assert(spool.open(sp_path))
    local L = assert(sp:ledger({ host = ledger.scope(info.base_url, info.site, "-").host, site = info.site,
      channel = info.channel }))
    assert.equal("sent", assert(L:show("qs-2"))[1].outcome)
    sp:close()
    assert.has_error(function() c:queue({ spool = sp_path, ledger = fresh("other") }) end)
    c:close()
  end)

  it("with a spool: cancel of a spooled order never sent removes it and records cancelled in the spool's file",
    function()
      local sp_path = fresh("spool")
      local c = new_client()
      local q = assert(c:queue({ spool = sp_path, ledger = true, concurrency = 1, adaptive = false }))
      sb.faults({ match = "POST", delay = 1 })
      assert.is_true((q:push(make("qsb-", 1)[1])))
      core.sleep(0.2)
      local x = make("qsx-", 1)[1]
      assert.is_true((q:push(x)))
      local r = assert(q:cancel("qsx-1"))
      assert.equal(1, r.removed)
      assert.is_nil(r.queued)
      assert(q:flush(10))
      assert.equal(0, (count("qsx-1")))
      local res, err = q:push(x)
      assert.is_nil(res)
      assert.equal("changed", err.kind)
      q:close(5)
      local sp = assert(spool.open(sp_path))
      local L = assert(sp:ledger({ host = ledger.scope(info.base_url, info.site, "-").host, site = info.site,
        channel = info.channel }))
      assert.equal("cancelled", assert(L:show("qsx-1"))[1].outcome)
      sp:close()
      c:close()
    end)
  it("kill -9 of a spooled queue with the ledger, then a new queue: every order arrives, each recorded once;"
    .. " duplicates only among those in flight", function()
    local sp_path = fresh("spool")
    local N, CONC = 300, 4
    local script = sq.child_script(dir, "killed-queue", ([[
      local offline = require("optimizely.offline")
      local c = offline.client(%s)
      local q = assert(c:queue({ spool = %q, ledger = true, concurrency = %d, adaptive = false, lease = 6 }))
      for i = 1, %d do
        assert(q:push({ user = { id = "u" }, order = { refCode = "qk-" .. i, orderDate = "2024-05-16T14:25:00Z",
          currency = "GBP", total = 1, items = { { refCode = "S", qty = 1, price = 1 } } } }))
      end
      assert(io.open(%q, "w")):close()
      while true do q:flush(1) end
    ]]):format(("{ site = %q, token = %q, channel = %q, base_url = %q, ca_file = %q, timeout = 5 }"):format(
      info.site, info.token, info.channel, info.base_url, info.ca_file), sp_path, CONC, N, dir .. "/killed.ready"))
    sb.faults({ match = "POST", delay = 0.02, count = 100000 })
    local p = assert(io.popen(require("support.interp") .. " " .. sys.q(script) .. " >/dev/null 2>&1 & echo $!"))
    local pid = p:read("*l")
    local arrived = 0
    for _ = 1, 1500 do
      arrived = select(2, sb.recorded())
      if arrived >= 40 then break end
      core.sleep(0.01)
    end
    sys.run("kill -9 " .. pid)
    p:close()
    sb.clear_faults()
    assert.is_true(arrived >= 40, "the child delivered " .. arrived)
    local c = new_client()
    local q = assert(c:queue({ spool = sp_path, ledger = true }))
    assert(q:flush(30))
    q:close(5)
    local counts, total = sb.recorded()
    local dups = 0
    for i = 1, N do
      local k = counts["qk-" .. i] or 0
      assert.is_true(k >= 1, "qk-" .. i .. " never arrived")
      dups = dups + k - 1
    end
    assert.equal(N + dups, total)
    -- unknown at the kill: the CONC requests in flight, and those answered in
    -- the last ACK_WINDOW (5 ms, csrc/delivery/worker.c) whose acks were not written
    -- yet: with every answer delayed alike, at most one more round of CONC
    assert.is_true(dups <= 2 * CONC, dups .. " sent twice; at most the " .. 2 * CONC .. " unknown may be")
    local sp = assert(spool.open(sp_path))
    local L = assert(sp:ledger({ host = ledger.scope(info.base_url, info.site, "-").host, site = info.site,
      channel = info.channel }))
    local rows = 0
    assert(L:export(function(row)
      assert.equal("sent", row.outcome)
      rows = rows + 1
    end))
    assert.equal(N, rows)
    assert.equal(0, sp:stats().queued)
    sp:close()
    -- a third queue finds them all sent
    local q3 = assert(c:queue({ spool = sp_path, ledger = true }))
    local again = q3:push({ user = { id = "u" }, order = { refCode = "qk-7", orderDate = "2024-05-16T14:25:00Z",
      currency = "GBP", total = 1, items = { { refCode = "S", qty = 1, price = 1 } } } })
    assert.equal("already sent", again.skipped)
    q3:close(5)
    c:close()
  end)

  it("ledger_keep prunes: a row older than keep days no longer blocks a send", function()
    local path = fresh("ledger")
    local c = new_client()
    local p = make("keep-", 1)[1]
    local body = assert(offline.encode(p))
    local L = assert(ledger.open(path))
    local scope = ledger.scope(info.base_url, info.site, info.channel)
    assert(L:record(scope, { body }, { outcome = "sent", now = os.time() - 3 * 86400 }))
    L:close()
    assert.equal("already sent", assert(c:send(p, { ledger = path })).skipped) -- kept 200 days
    local c2 = new_client()
    local res = assert(c2:send(p, { ledger = path, ledger_keep = 2 }))
    assert.is_nil(res.skipped)
    assert.equal(1, #sb.orders({ refCode = "keep-1" }))
    c:close()
    c2:close()
  end)
  it("with a spool: an order still spooled by a killed queue is not queued again by a re-push", function()
    local sp_path = fresh("spool")
    local script = sq.child_script(dir, "spooled-then-killed", ([[
      local offline = require("optimizely.offline")
      local c = offline.client({ site = %q, token = %q, channel = %q, base_url = "https://127.0.0.1:9",
        timeout = 1, connect_timeout = 1 })
      local q = assert(c:queue({ spool = %q, ledger = true, lease = 2 }))
      assert(q:push({ user = { id = "u" }, order = { refCode = "qrk-1", orderDate = "2024-05-16T14:25:00Z",
        currency = "GBP", total = 1, items = { { refCode = "S", qty = 1, price = 1 } } } }))
      assert(io.open(%q, "w")):close()
      while true do q:flush(1) end
    ]]):format(info.site, info.token, info.channel, sp_path, dir .. "/spooled.ready"))
    local p = assert(io.popen(require("support.interp") .. " " .. sys.q(script) .. " >/dev/null 2>&1 & echo $!"))
    local pid = p:read("*l")
    for _ = 1, 1000 do
      if sys.exists(dir .. "/spooled.ready") then break end
      core.sleep(0.01)
    end
    sys.run("kill -9 " .. pid)
    p:close()
    local c = new_client()
    local q = assert(c:queue({ spool = sp_path, ledger = true }))
    local res = q:push({ user = { id = "u" }, order = { refCode = "qrk-1", orderDate = "2024-05-16T14:25:00Z",
      currency = "GBP", total = 1, items = { { refCode = "S", qty = 1, price = 1 } } } })
    assert.equal("already in flight", res.skipped)
    assert(q:flush(20)) -- the killed queue's row, once its lease is over
    q:close(5)
    assert.equal(1, #sb.orders({ refCode = "qrk-1" }))
    c:close()
  end)
  it("in memory: push with amend sends the DELETE then the new version; a refused DELETE posts nothing", function()
    local path = fresh("ledger")
    local failures = {}
    local c = new_client()
    local q = assert(c:queue({ ledger = path, on_failure = function(_, err) failures[#failures + 1] = err end }))
    local list = make("qam-", 2)
    for _, p in ipairs(list) do assert.is_true((q:push(p))) end
    assert(q:flush(10))
    list[1].order.total = 61.0
    list[1].order.items[1].price = 61.0
    assert.is_true((q:push(list[1], { amend = true })))
    assert(q:flush(10))
    local posts, dels = sb.orders({ refCode = "qam-1" }), sb.cancellations({ refCode = "qam-1" })
    assert.equal(2, #posts)
    assert.equal(1, #dels)
    assert.is_true(posts[2].received_at >= dels[1].received_at)
    assert.matches('"total":61.00', posts[2].body, 1, true)
    sb.faults({ match = "DELETE", status = 400, body = '{"status":"fail","errors":[{"code":"CancellationNotEnabled",'
      .. '"message":"cancellations are not enabled for this site"}]}' })
    list[2].order.total = 62.0
    list[2].order.items[1].price = 62.0
    assert.is_true((q:push(list[2], { amend = true })))
    assert(q:flush(10))
    q:poll()
    assert.equal(1, #sb.orders({ refCode = "qam-2" })) -- only the first version
    local amend_err
    for _, e in ipairs(failures) do
      if e.message:find("amend: not sent", 1, true) then amend_err = e end
    end
    assert.is_table(amend_err)
    q:close(5)
    local L = assert(ledger.open(path))
    assert.equal(ledger.fingerprint(assert(offline.encode(list[1]))), assert(L:show("qam-1"))[1].fingerprint)
    local rows = assert(L:show("qam-2"))
    assert.equal("sent", rows[1].outcome)
    assert.not_equal(ledger.fingerprint(assert(offline.encode(list[2]))), rows[1].fingerprint)
    L:close()
    c:close()
  end)

  local function spool_ledger(sp)
    return assert(sp:ledger({ host = ledger.scope(info.base_url, info.site, "-").host, site = info.site,
      channel = info.channel }))
  end

  it("with a spool: push with amend sends the DELETE then the new version; the ledger says sent, new bytes", function()
    local sp_path = fresh("spool")
    local c = new_client()
    local q = assert(c:queue({ spool = sp_path, ledger = true }))
    local list = make("qsa-", 1)
    assert.is_true((q:push(list[1])))
    assert(q:flush(10))
    list[1].order.total = 71.0
    list[1].order.items[1].price = 71.0
    assert.is_true((q:push(list[1], { amend = true })))
    assert(q:flush(10))
    local st = q:stats()
    q:close(5)
    local posts, dels = sb.orders({ refCode = "qsa-1" }), sb.cancellations({ refCode = "qsa-1" })
    assert.equal(2, #posts)
    assert.equal(1, #dels)
    assert.is_true(posts[2].received_at >= dels[1].received_at)
    assert.matches('"total":71.00', posts[2].body, 1, true)
    assert.equal(0, st.failed)
    local sp = assert(spool.open(sp_path))
    local rows = assert(spool_ledger(sp):show("qsa-1"))
    assert.equal("sent", rows[1].outcome)
    assert.equal(ledger.fingerprint(assert(offline.encode(list[1]))), rows[1].fingerprint)
    assert.equal(0, assert(sp:stats()).queued)
    sp:close()
    c:close()
  end)

  it("with a spool: a refused DELETE fails the amend clearly; nothing is posted; a dead letter, on_failure, counted",
    function()
      local sp_path = fresh("spool")
      local failures, events = {}, {}
      local c = new_client()
      local q = assert(c:queue({ spool = sp_path, ledger = true,
        on_failure = function(ref, err) failures[#failures + 1] = { ref = ref, err = err } end,
        on_event = function(ev) events[#events + 1] = ev end }))
      local list = make("qsr-", 1)
      assert.is_true((q:push(list[1])))
      assert(q:flush(10))
      sb.faults({ match = "DELETE", status = 400, body = '{"status":"fail","errors":[{"code":"CancellationNotEnabled",'
        .. '"message":"cancellations are not enabled for this site"}]}' })
      list[1].order.total = 72.0
      list[1].order.items[1].price = 72.0
      assert.is_true((q:push(list[1], { amend = true })))
      assert(q:flush(10))
      q:poll()
      local st = q:stats()
      q:close(5)
      assert.equal(1, #sb.orders({ refCode = "qsr-1" })) -- only the first version
      local amend_err
      for _, f in ipairs(failures) do
        if f.err.message:find("amend: not sent, the DELETE of the earlier version failed", 1, true) then
          amend_err = f.err
          assert.equal("qsr-1", f.ref)
        end
      end
      assert.is_table(amend_err)
      assert.equal(400, amend_err.status)
      assert.equal(2, st.failed) -- the DELETE and the new version
      local reasons = {}
      for _, ev in ipairs(events) do if ev.type == "dead" then reasons[#reasons + 1] = ev.reason end end
      assert.is_truthy(table.concat(reasons, ","):find("amend", 1, true))
      local sp = assert(spool.open(sp_path))
      local dead = assert(sp:list({ dead = true }))
      assert.equal(2, #dead)
      assert.equal("cancel", dead[1].op)
      assert.equal("amend", dead[2].op)
      assert.matches("amend: not sent, the DELETE of the earlier version failed", dead[2].message, 1, true)
      assert.equal(0, assert(sp:stats()).queued)
      local rows = assert(spool_ledger(sp):show("qsr-1"))
      assert.equal("sent", rows[1].outcome) -- the first version stays
      assert.not_equal(ledger.fingerprint(assert(offline.encode(list[1]))), rows[1].fingerprint)
      sp:close()
      c:close()
    end)

  it("with a spool: a kill -9 right after an amend push leaves the pair in the spool, in order; reopened, it is sent",
    function()
      local sp_path = fresh("spool")
      local c = new_client()
      local q = assert(c:queue({ spool = sp_path, ledger = true }))
      local p1 = make("qsk-", 1)[1]
      assert.is_true((q:push(p1)))
      assert(q:flush(10))
      q:close(5)
      local ready = dir .. "/amended.ready"
      local script = sq.child_script(dir, "amend-then-killed", ([[
        local offline = require("optimizely.offline")
        local c = offline.client({ site = %q, token = %q, channel = %q, base_url = %q, ca_file = %q,
          timeout = 1, connect_timeout = 1 })
        local q = assert(c:queue({ spool = %q, ledger = true, lease = 2 }))
        assert(q:push({ user = { id = "u1" }, order = { refCode = "qsk-1", orderDate = %q,
          currency = %q, total = 73, items = { { refCode = "S", qty = 1, price = 73 } } } }, { amend = true }))
        assert(io.open(%q, "w")):close()
        while true do q:flush(1) end
      ]]):format(info.site, info.token, info.channel, info.base_url, info.ca_file, sp_path, p1.order.orderDate,
        p1.order.currency, ready))
      sb.faults({ match = "DELETE", count = 1, delay = 3 }) -- the child's DELETE (if sent) is not answered
      local pp = assert(io.popen(require("support.interp") .. " " .. sys.q(script) .. " >/dev/null 2>&1 & echo $!"))
      local pid = pp:read("*l")
      for _ = 1, 1000 do
        if sys.exists(ready) then break end
        core.sleep(0.01)
      end
      sys.run("kill -9 " .. pid)
      pp:close()
      assert.is_true(sys.exists(ready))
      local sp = assert(spool.open(sp_path))
      local rows = assert(sp:list({}))
      assert.equal(2, #rows)
      assert.equal("cancel", rows[1].op)
      assert.equal("amend", rows[2].op)
      assert.is_true(rows[1].id < rows[2].id)
      sp:close()
      local q2 = assert(c:queue({ spool = sp_path, ledger = true }))
      assert(q2:flush(20)) -- once the killed queue's leases are over
      q2:close(5)
      local posts, dels = sb.orders({ refCode = "qsk-1" }), sb.cancellations({ refCode = "qsk-1" })
      assert.equal(2, #posts)
      assert.is_true(#dels >= 1) -- the child's may have arrived, unanswered
      assert.is_true(posts[2].received_at >= dels[#dels].received_at)
      assert.matches('"total":73.00', posts[2].body, 1, true)
      c:close()
    end)
  it("in memory: an order dropped at close gives its reservation back (a new queue sends it)", function()
    local path = fresh("ledger")
    local c = new_client()
    sb.faults({ match = "POST", status = 503, count = 1000 })
    local q = assert(c:queue({ ledger = path }))
    local p = make("qdr-", 1)[1]
    assert.is_true((q:push(p)))
    q:close(0.3) -- still failing: dropped at shutdown
    assert.equal(1, q:stats().dropped.shutdown)
    sb.clear_faults()
    local q2 = assert(c:queue({ ledger = path }))
    assert.is_true((q2:push(p))) -- not "already in flight": the reservation went back
    assert(q2:flush(10))
    q2:close(5)
    assert.equal(1, #sb.orders({ refCode = "qdr-1" }))
    c:close()
  end)
end)
