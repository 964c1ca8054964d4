-- The ledger on the delivery paths (issue 17 §1 and §4): send_batch,
-- client:send / send_encoded and the threaded queue with `ledger =`,
-- against the sandbox (real nginx, real TLS) and real SQLite files. What
-- the sandbox recorded is the truth: an order the ledger skips never
-- reaches it, an amend reaches it as DELETE then POST.
local offline = require("optimizely.offline")
local ledger = require("optimizely.offline.ledger")
local metrics = require("optimizely.offline.metrics")
local orders = require("support.orders")
local sb = require("support.sandbox")
local sq = require("support.sqlite")
local sys = require("optimizely.offline.sys")

local make = orders.numbered

describe("the ledger on delivery", function()
  local info, dir, n_files

  local function new_client(extra)
    return offline.client(sb.client_config(info,
      { backoff_base = 0.02, backoff_max = 0.2, random = function() return 0.5 end }, extra))
  end

  local function fresh_path()
    n_files = n_files + 1
    return dir .. "/ledger-" .. n_files .. ".db"
  end

  -- refCode -> times the sandbox recorded it
  local function recorded(prefix)
    local counts, n = {}, 0
    for _, rec in ipairs(sb.orders()) do
      if not prefix or rec.refCode:sub(1, #prefix) == prefix then
        counts[rec.refCode] = (counts[rec.refCode] or 0) + 1
        n = n + 1
      end
    end
    return counts, n
  end

  -- on_result recorder
  local function recorder()
    local r = { res = {}, err = {}, calls = 0 }
    function r.cb(i, res, err)
      r.calls = r.calls + 1
      r.res[i], r.err[i] = res, err
    end
    return r
  end

  setup(function()
    info = sb.ensure()
    dir = sq.tmpdir("ledger-delivery")
    n_files = 0
  end)

  teardown(function()
    sys.run("rm -rf " .. sys.q(dir))
  end)

  before_each(function()
    sb.reset()
  end)

  describe("send_batch", function()
    it("on_skipped hears of each order skipped, instead of on_result (no result table)", function()
      local path = fresh_path()
      local c = new_client()
      assert.equal(5, assert(c:send_batch(make("onskip-", 5), { ledger = path })).sent)
      local list = make("onskip-", 6) -- the 6th is new
      local skipped, results = {}, {}
      local s = assert(c:send_batch(list, { ledger = path,
        on_skipped = function(i, reason, at) skipped[#skipped + 1] = { i = i, reason = reason, at = at } end,
        on_result = function(i, res) results[#results + 1] = { i = i, res = res } end }))
      assert.equal(1, s.sent)
      assert.equal(5, s.skipped)
      assert.equal(5, #skipped)
      table.sort(skipped, function(a, b) return a.i < b.i end)
      for k = 1, 5 do
        assert.equal(k, skipped[k].i)
        assert.equal("already_sent", skipped[k].reason)
        assert.is_number(skipped[k].at)
      end
      assert.equal(1, #results) -- only the order sent
      assert.equal(6, results[1].i)
      assert.is_true(results[1].res.ok)
      assert.is_nil(results[1].res.skipped)
      c:close()
    end)

    it("an error in on_skipped is a callback error: the orders after it are still told", function()
      local path = fresh_path()
      local c = new_client()
      assert.equal(6, assert(c:send_batch(make("skiperr-", 6), { ledger = path })).sent)
      local told = {}
      local s = assert(c:send_batch(make("skiperr-", 6), { ledger = path,
        on_skipped = function(i)
          told[#told + 1] = i
          if i == 2 or i == 5 then error("boom " .. i) end
        end }))
      assert.equal(6, s.skipped)
      assert.same({ 1, 2, 3, 4, 5, 6 }, told)
      assert.equal(2, #s.callback_errors)
      assert.equal(2, s.callback_errors[1].index)
      assert.matches("boom 2", s.callback_errors[1].message)
      assert.equal(5, s.callback_errors[2].index)
      c:close()
    end)

    it("sends every order once, then a run again sends nothing: skipped, not an error", function()
      local path = fresh_path()
      local c = new_client()
      local s1 = assert(c:send_batch(make("again-", 30), { concurrency = 4, ledger = path }))
      assert.equal(30, s1.sent)
      assert.equal(0, s1.skipped)
      local rec = recorder()
      local events = {}
      local s2 = assert(c:send_batch(make("again-", 30), { concurrency = 4, ledger = path, on_result = rec.cb,
        on_event = function(ev) events[#events + 1] = ev end }))
      assert.equal(0, s2.sent)
      assert.equal(30, s2.skipped)
      assert.equal(0, s2.failed)
      assert.equal(30, s2.read)
      assert.equal(30, rec.calls)
      local r1 = rec.res[1]
      assert.is_true(r1.ok)
      assert.equal("already sent", r1.skipped)
      assert.equal("already_sent", r1.reason)
      assert.equal(0, r1.attempts)
      assert.is_number(r1.at)
      assert.equal("sent", r1.outcome)
      assert.is_nil(rec.err[1])
      local counts, n = recorded("again-")
      assert.equal(30, n)
      for i = 1, 30 do assert.equal(1, counts["again-" .. i]) end
      local skipped_events = 0
      for _, ev in ipairs(events) do
        if ev.type == "skipped" then
          skipped_events = skipped_events + 1
          assert.equal("already_sent", ev.reason)
        end
      end
      assert.equal(30, skipped_events)
      local m = c:metrics()
      assert.equal(30, m.skipped.already_sent)
      assert.matches('optimizely_offline_orders_skipped_total{reason="already_sent"} 30',
        metrics.prometheus(c), 1, true)
      c:close()
    end)

    it("a source that hands back one table, changed, has each order sent as it was when read", function()
      -- the bench's source (and any that saves allocations) reuses a few
      -- tables; the ledger path reads many orders per request, so each is
      -- encoded before the next read, with and without the ledger's thread
      for _, window in ipairs({ 0.2, 0 }) do
        sb.reset()
        local path = fresh_path()
        local c = new_client()
        local pool = make("reuse-", 3)
        local n = 300
        local function source()
          local k = 0
          return function()
            k = k + 1
            if k > n then return nil end
            local p = pool[k % 3 + 1]
            p.order.refCode = ("reuse-%s-%d"):format(window, k)
            return p
          end
        end
        local s = assert(c:send_batch(source(), { concurrency = 4, ledger = path, ledger_window = window }))
        assert.equal(n, s.sent)
        assert.equal(0, s.skipped)
        local counts, got = recorded("reuse-" .. window .. "-")
        assert.equal(n, got)
        for k = 1, n do assert.equal(1, counts[("reuse-%s-%d"):format(window, k)]) end
        s = assert(c:send_batch(source(), { concurrency = 4, ledger = path, ledger_window = window }))
        assert.equal(0, s.sent)
        assert.equal(n, s.skipped)
        c:close()
      end
    end)

    it("a source that raises ends the batch early: the orders read before are sent, the error named", function()
      for _, window in ipairs({ 0.2, 0 }) do
        sb.reset()
        local c = new_client()
        local pool, k = make("srcerr-" .. window .. "-", 5), 0
        local s = assert(c:send_batch(function()
          k = k + 1
          if k > 5 then error("source boom") end
          return pool[k]
        end, { concurrency = 4, ledger = fresh_path(), ledger_window = window }))
        assert.equal(5, s.sent)
        assert.equal(5, s.read)
        assert.matches("the source raised an error: .*source boom", s.error)
        local _, got = recorded("srcerr-" .. window .. "-")
        assert.equal(5, got)
        c:close()
      end
    end)

    it("refuses a changed order with kind \"changed\" saying when it was sent; force sends it", function()
      local path = fresh_path()
      local c = new_client()
      assert(c:send_batch(make("chg-", 3), { ledger = path }))
      local list = make("chg-", 3)
      list[2].order.total = 99.0
      list[2].order.items[1].price = 99.0
      local rec = recorder()
      local s = assert(c:send_batch(list, { ledger = path, on_result = rec.cb }))
      assert.equal(2, s.skipped)
      assert.equal(1, s.changed)
      assert.equal(1, s.failed)
      assert.equal(0, s.sent)
      local err = rec.err[2]
      assert.equal("changed", err.kind)
      assert.equal("sent", err.outcome)
      assert.is_number(err.at)
      assert.matches("changed since it was sent on %d%d%d%d%-%d%d%-%d%d", err.message)
      assert.matches("amend = true", err.message, 1, true)
      assert.equal(err, s.failures[1].err)
      assert.equal(1, c:metrics().changed)
      local _, n = recorded("chg-")
      assert.equal(3, n)
      -- force: sent again, and the ledger now holds the new version
      local f = assert(c:send_batch({ list[2] }, { ledger = path, force = true }))
      assert.equal(1, f.sent)
      local counts = recorded("chg-")
      assert.equal(2, counts["chg-2"])
      local again = assert(c:send_batch({ list[2] }, { ledger = path }))
      assert.equal(1, again.skipped)
      c:close()
    end)

    it("amends: the DELETE then the POST of the new version, in that order at the sandbox", function()
      local path = fresh_path()
      local c = new_client()
      assert(c:send_batch(make("amd-", 2), { ledger = path }))
      local list = make("amd-", 2)
      list[1].order.total = 80.0
      list[1].order.items[1].price = 80.0
      local rec = recorder()
      local s = assert(c:send_batch(list, { ledger = path, amend = true, on_result = rec.cb }))
      assert.equal(1, s.sent)
      assert.equal(1, s.skipped) -- amd-2 is the same bytes: nothing to amend
      assert.is_true(rec.res[1].amended)
      local cancels = sb.cancellations({ refCode = "amd-1" })
      assert.equal(1, #cancels)
      local posts = sb.orders({ refCode = "amd-1" })
      assert.equal(2, #posts)
      assert.is_true(cancels[1].received_at >= posts[1].received_at)
      assert.is_true(posts[2].received_at >= cancels[1].received_at)
      assert.matches('"total":80.00', posts[2].body, 1, true)
      -- the ledger holds the new version
      local L = assert(ledger.open(path))
      local rows = assert(L:show("amd-1"))
      assert.equal("sent", rows[1].outcome)
      assert.equal(ledger.fingerprint(assert(offline.encode(list[1]))), rows[1].fingerprint)
      L:close()
      c:close()
    end)

    it("a refused DELETE fails the amend clearly, and nothing is posted", function()
      local path = fresh_path()
      local c = new_client()
      assert(c:send_batch(make("amdno-", 1), { ledger = path }))
      sb.faults({ match = "DELETE", status = 400, body = '{"status":"fail","errors":[{"code":"CancellationNotEnabled",'
        .. '"message":"cancellations are not enabled for this site"}]}' })
      local list = make("amdno-", 1)
      list[1].order.total = 70.0
      list[1].order.items[1].price = 70.0
      local rec = recorder()
      local events = {}
      local s = assert(c:send_batch(list, { ledger = path, amend = true, on_result = rec.cb,
        on_event = function(ev) events[#events + 1] = ev end }))
      assert.equal(0, s.sent)
      assert.equal(1, s.failed)
      local err = rec.err[1]
      assert.matches("amend: not sent, the DELETE of the earlier version failed", err.message, 1, true)
      assert.equal(400, err.status)
      assert.equal("CancellationNotEnabled", err.code)
      local reasons = {}
      for _, ev in ipairs(events) do if ev.type == "failure" then reasons[#reasons + 1] = ev.reason end end
      assert.same({ "amend" }, reasons)
      local _, n = recorded("amdno-")
      assert.equal(1, n) -- only the first version: nothing posted after the refused DELETE
      local L = assert(ledger.open(path))
      local rows = assert(L:show("amdno-1"))
      assert.equal("sent", rows[1].outcome) -- the first version stays recorded
      assert.equal(1, #rows)
      L:close()
      c:close()
    end)

    it("an unusable ledger: nil, err of kind storage naming the file, and nothing sent", function()
      local c = new_client()
      local bad = dir .. "/not-a-ledger.db"
      local f = assert(io.open(bad, "wb"))
      f:write(("this is not a database\n"):rep(100))
      f:close()
      os.execute("chmod 600 " .. sys.q(bad))
      local s, err = c:send_batch(make("unus-", 5), { ledger = bad })
      assert.is_nil(s)
      assert.equal("storage", err.kind)
      assert.equal("foreign", err.code)
      assert.matches(bad, err.message, 1, true)
      local s2, err2 = c:send_batch(make("unus-", 5), { ledger = dir .. "/no/such/dir/ledger.db" })
      assert.is_nil(s2)
      assert.equal("storage", err2.kind)
      assert.matches("no/such/dir", err2.message, 1, true)
      local _, n = recorded("unus-")
      assert.equal(0, n)
      c:close()
    end)
  end)
  describe("client:send and send_encoded", function()
    it("sends once, then skips the same bytes: a result, not an error, in metrics, on_event and Prometheus", function()
      local path = fresh_path()
      local events = {}
      local c = new_client({ on_event = function(ev) events[#events + 1] = ev end })
      local p = make("one-", 1)[1]
      local res = assert(c:send(p, { ledger = path }))
      assert.is_nil(res.skipped)
      assert.equal(1, res.attempts)
      local again = assert(c:send(p, { ledger = path }))
      assert.equal("already sent", again.skipped)
      assert.equal("already_sent", again.reason)
      assert.equal(0, again.attempts)
      assert.is_number(again.at)
      local enc = assert(c:send_encoded(assert(offline.encode(p)), { ledger = path }))
      assert.equal("already sent", enc.skipped)
      local counts, n = recorded("one-")
      assert.equal(1, n)
      assert.equal(1, counts["one-1"])
      local m = c:metrics()
      assert.equal(2, m.skipped.already_sent)
      assert.equal(1, m.sent)
      assert.matches('optimizely_offline_orders_skipped_total{reason="already_sent"} 2', metrics.prometheus(m), 1, true)
      local skipped = 0
      for _, ev in ipairs(events) do
        if ev.type == "skipped" then
          skipped = skipped + 1
          assert.equal("one-1", ev.ref)
          assert.equal("already_sent", ev.reason)
        end
      end
      assert.equal(2, skipped)
      local L = assert(ledger.open(path))
      assert.equal("sent", assert(L:show("one-1"))[1].outcome)
      L:close()
      c:close()
    end)

    it("refuses a changed order (kind changed, saying when); force sends it; amend is DELETE then POST", function()
      local path = fresh_path()
      local c = new_client()
      local p = make("chg1-", 1)[1]
      assert(c:send(p, { ledger = path }))
      p.order.total = 99.0
      p.order.items[1].price = 99.0
      local res, err = c:send(p, { ledger = path })
      assert.is_nil(res)
      assert.equal("changed", err.kind)
      assert.equal(0, err.attempts)
      assert.matches("changed since it was sent on %d%d%d%d%-%d%d%-%d%d", err.message)
      assert.equal(1, c:metrics().changed)
      local _, n = recorded("chg1-")
      assert.equal(1, n)
      assert(c:send(p, { ledger = path, force = true }))
      _, n = recorded("chg1-")
      assert.equal(2, n)
      p.order.total = 98.0
      p.order.items[1].price = 98.0
      local am = assert(c:send(p, { ledger = path, amend = true }))
      assert.is_true(am.amended)
      local cancels, posts = sb.cancellations({ refCode = "chg1-1" }), sb.orders({ refCode = "chg1-1" })
      assert.equal(1, #cancels)
      assert.equal(3, #posts) -- the first, the forced and the amended version
      assert.is_true(posts[3].received_at >= cancels[1].received_at)
      assert.matches('"total":98.00', posts[3].body, 1, true)
      local L = assert(ledger.open(path))
      local rows = assert(L:show("chg1-1"))
      assert.equal("sent", rows[1].outcome)
      assert.equal(ledger.fingerprint(assert(offline.encode(p))), rows[1].fingerprint)
      L:close()
      assert.has_error(function() c:send(p, { force = true }) end)
      c:close()
    end)

    it("a refused DELETE fails the amend clearly; nothing is posted; the first version stays", function()
      local path = fresh_path()
      local c = new_client()
      local p = make("chg2-", 1)[1]
      assert(c:send(p, { ledger = path }))
      sb.faults({ match = "DELETE", status = 400, body = '{"status":"fail","errors":[{"code":"CancellationNotEnabled",'
        .. '"message":"cancellations are not enabled for this site"}]}' })
      p.order.total = 71.0
      p.order.items[1].price = 71.0
      local res, err = c:send(p, { ledger = path, amend = true })
      assert.is_nil(res)
      assert.matches("amend: not sent, the DELETE of the earlier version failed", err.message, 1, true)
      assert.equal("CancellationNotEnabled", err.code)
      local _, n = recorded("chg2-")
      assert.equal(1, n)
      local L = assert(ledger.open(path))
      local rows = assert(L:show("chg2-1"))
      assert.equal(1, #rows) -- no reservation left behind (it would show as "pending")
      assert.equal("sent", rows[1].outcome)
      L:close()
      assert(c:send(p, { ledger = path, force = true }))
      c:close()
    end)

    it("an unusable ledger: nil, err naming the file, nothing sent; send_encoded of bytes that are no order", function()
      local c = new_client()
      local res, err = c:send(make("uns-", 1)[1], { ledger = dir .. "/no/such/dir/l.db" })
      assert.is_nil(res)
      assert.equal("storage", err.kind)
      assert.equal(0, err.attempts)
      assert.matches("no/such/dir", err.message, 1, true)
      local r2, e2 = c:send_encoded('{"not":"an order"}', { ledger = fresh_path() })
      assert.is_nil(r2)
      assert.equal("validation", e2.kind)
      local _, n = recorded("uns-")
      assert.equal(0, n)
      c:close()
    end)
  end)
end)
