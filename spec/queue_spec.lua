-- client:queue — the background C worker outside nginx — against the
-- sandbox: a real nginx over real TLS on 127.0.0.1, faults injected through
-- its control endpoint, spools in real SQLite files, pushers in real
-- subprocesses. Time checks are lower bounds (a Retry-After must make
-- delivery take at least that long) or generous hang guards.
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local sched = require("optimizely.offline.sched")
local client_mod = require("optimizely.offline.client")
local spool_mod = require("optimizely.offline.spool")
local orders = require("support.orders")
local sb = require("support.sandbox")
local wait = require("support.wait")

local sys = require("optimizely.offline.sys")
local q, capture = sys.q, sys.capture

-- Payloads with refCodes prefix1..prefixN.
local make = orders.numbered

local recorded = sb.recorded

local tmpdir
local function tmp(name) return tmpdir .. "/" .. name end

-- Polls `cond` every 20 ms until it holds or `limit` seconds pass.
local function eventually(cond, limit) return wait.poll(cond, limit or 10, 0.02) end

describe("client:queue", function()
  local info

  local function new_client(extra)
    return offline.client(sb.client_config(info, { backoff_base = 0.02, backoff_max = 0.2 }, extra))
  end

  -- on_success / on_failure recorder
  local function recorder()
    local r = { ok = {}, res = {}, fail = {}, nok = 0, nfail = 0 }
    function r.on_success(ref, res)
      r.ok[ref] = (r.ok[ref] or 0) + 1
      r.res[ref] = res
      r.nok = r.nok + 1
      r.last_res = res
    end
    function r.on_failure(ref, err)
      r.fail[ref] = err
      r.nfail = r.nfail + 1
    end
    return r
  end

  setup(function()
    info = sb.ensure()
    tmpdir = capture("mktemp -d"):gsub("%s+$", "")
  end)

  teardown(function()
    if tmpdir and tmpdir:match("^/tmp/") then os.execute("rm -rf " .. q(tmpdir)) end
  end)

  before_each(function()
    sb.reset()
  end)

  describe("in memory", function()
    it("delivers every pushed order exactly once and calls on_success per ref", function()
      local rec = recorder()
      local qu = new_client():queue({ concurrency = 4, on_success = rec.on_success,
        on_failure = rec.on_failure })
      for _, p in ipairs(make("mem-", 60)) do assert.is_true(qu:push(p)) end
      assert.is_true(qu:flush(20))
      local counts, total = recorded()
      assert.equal(60, total)
      for i = 1, 60 do
        assert.equal(1, counts["mem-" .. i], "mem-" .. i)
        assert.equal(1, rec.ok["mem-" .. i], "callback for mem-" .. i)
      end
      assert.equal(0, rec.nfail)
      assert.equal(200, rec.last_res.status)
      assert.equal(1, rec.last_res.attempts)
      local s = qu:stats()
      assert.equal(60, s.sent)
      assert.equal(60, s.pushed)
      assert.equal(0, s.queued)
      assert.equal(0, s.in_flight)
      assert.equal(0, s.retried)
      assert.equal(0, s.dead)
      assert.is_true(qu:close())
    end)

    it("flush never returns before a just-pushed order has its result", function()
      -- regression: a job taken off the ready list was briefly in no count,
      -- so flush could see "idle" while it was on its way
      local rec = recorder()
      local qu = new_client():queue({ on_success = rec.on_success })
      for i = 1, 150 do
        assert.is_true(qu:push(make("race-", 1, i)[1]))
        assert.is_true(qu:flush(10))
        assert.equal(i, rec.nok, "order race-" .. i .. " had no result when flush returned")
      end
      qu:close()
      local path = tmp("race.db")
      local qs = assert(new_client():queue({ spool = path, on_success = rec.on_success }))
      for i = 151, 200 do
        assert.is_true(qs:push(make("race-", 1, i)[1]))
        assert.is_true(qs:flush(10))
        assert.equal(i, rec.nok, "order race-" .. i .. " had no result when flush returned")
      end
      qs:close()
    end)

    it("push_many hands over the valid orders and names the refused ones", function()
      local rec = recorder()
      local qu = new_client():queue({ on_success = rec.on_success })
      local list = make("many-", 5)
      list[3].order.total = "not money"
      local n, refused = qu:push_many(list)
      assert.equal(4, n)
      assert.equal(1, #refused)
      assert.equal(3, refused[1].index)
      assert.equal("validation", refused[1].err.kind)
      assert.is_true(qu:flush(10))
      local counts, total = recorded()
      assert.equal(4, total)
      assert.is_nil(counts["many-3"])
      assert.equal(4, rec.nok)
      qu:close()
    end)

    it("refuses an invalid order at push with kind validation, and sends nothing", function()
      local qu = new_client():queue()
      local p = orders.minimal()
      p.order.currency = nil
      local ok, err = qu:push(p)
      assert.is_nil(ok)
      assert.equal("validation", err.kind)
      assert.truthy(tostring(err):find("currency", 1, true))
      local ok2, err2 = qu:push("not a table")
      assert.is_nil(ok2)
      assert.equal("validation", err2.kind)
      assert.is_true(qu:flush(5))
      assert.equal(2, qu:stats().invalid)
      assert.equal(0, qu:stats().pushed)
      local _, total = recorded()
      assert.equal(0, total)
      assert.equal(0, sb.stats().requests)
      qu:close()
    end)

    it("reports a 400 through on_failure (kind http, status 400), dead and never retried", function()
      local rec = recorder()
      local qu = new_client():queue({ on_success = rec.on_success, on_failure = rec.on_failure })
      sb.faults({ count = 1, status = 400 })
      assert.is_true(qu:push(make("bad-", 1)[1]))
      assert.is_true(qu:flush(10))
      local err = rec.fail["bad-1"]
      assert.is_table(err)
      assert.equal("http", err.kind)
      assert.equal(400, err.status)
      assert.equal(1, err.attempts)
      assert.is_false(err.retryable)
      assert.equal(0, rec.nok)
      local s = qu:stats()
      assert.equal(1, s.dead)
      assert.equal(1, s.failed)
      assert.equal(0, s.retried)
      assert.equal(1, sb.stats().requests)
      local _, total = recorded()
      assert.equal(0, total)
      qu:close()
    end)

    it("reports an api fail envelope on a 200 as kind api, not retried", function()
      local rec = recorder()
      local qu = new_client():queue({ on_failure = rec.on_failure })
      sb.faults({ count = 1, status = 200,
        body = '{"status":"fail","errors":[{"code":"Nope","message":"rejected"}]}' })
      assert.is_true(qu:push(make("api-", 1)[1]))
      assert.is_true(qu:flush(10))
      assert.equal("api", rec.fail["api-1"].kind)
      assert.equal("Nope", rec.fail["api-1"].code)
      assert.equal(0, qu:stats().retried)
      qu:close()
    end)

    it("counts a 2xx with an empty body as delivered", function()
      local rec = recorder()
      local qu = new_client():queue({ on_success = rec.on_success, on_failure = rec.on_failure })
      sb.faults({ count = 1, status = 202, body = "" })
      assert.is_true(qu:push(make("empty-", 1)[1]))
      assert.is_true(qu:flush(10))
      assert.equal(1, rec.ok["empty-1"])
      assert.equal(202, rec.res["empty-1"].status)
      qu:close()
    end)

    it("runs callbacks protected: an error inside is counted and delivery goes on", function()
      local calls = 0
      local qu = new_client():queue({
        on_success = function() calls = calls + 1; error("boom in on_success") end,
        on_failure = function() error("boom in on_failure") end,
      })
      sb.faults({ count = 1, status = 400 })
      local list = make("cb-", 10)
      assert.is_true(qu:push(list[1]))
      assert.is_true(qu:flush(10)) -- the 400 goes first, alone
      for i = 2, 10 do assert.is_true(qu:push(list[i])) end
      assert.is_true(qu:flush(10))
      assert.equal(9, calls)
      local s = qu:stats()
      assert.equal(10, s.callback_errors)
      assert.equal(9, s.sent)
      local _, total = recorded()
      assert.equal(9, total)
      qu:close()
    end)

    it("retries 503s in the background, then delivers (stats.retried > 0)", function()
      local rec = recorder()
      local qu = new_client():queue({ on_success = rec.on_success, on_failure = rec.on_failure })
      sb.faults({ count = 2, status = 503 })
      assert.is_true(qu:push(make("r503-", 1)[1]))
      assert.is_true(qu:flush(20))
      assert.equal(1, rec.ok["r503-1"])
      assert.equal(3, rec.last_res.attempts)
      assert.equal(2, qu:stats().retried)
      assert.equal(0, qu:stats().dead)
      local counts = recorded()
      assert.equal(1, counts["r503-1"])
      qu:close()
    end)

    it("gives up after max_attempts: on_failure with the last 503", function()
      local rec = recorder()
      local qu = new_client():queue({ max_attempts = 2, on_failure = rec.on_failure })
      sb.faults({ count = 2, status = 503 })
      assert.is_true(qu:push(make("x503-", 1)[1]))
      assert.is_true(qu:flush(20))
      local err = rec.fail["x503-1"]
      assert.equal(503, err.status)
      assert.equal(2, err.attempts)
      assert.equal(1, qu:stats().retried)
      assert.equal(1, qu:stats().dead)
      qu:close()
    end)

    it("honours Retry-After on a 429", function()
      local rec = recorder()
      local qu = new_client():queue({ on_success = rec.on_success })
      sb.faults({ count = 1, status = 429, retry_after = "1" })
      local t0 = core.now()
      assert.is_true(qu:push(make("r429-", 1)[1]))
      assert.is_true(qu:flush(20))
      assert.is_true(core.now() - t0 >= 0.95, "delivered before the Retry-After second passed")
      assert.equal(2, rec.last_res.attempts)
      assert.equal(1, qu:stats().retried)
      qu:close()
    end)

    it("pauses on refused credentials and resumes when a probe gets through", function()
      local rec, events = recorder(), {}
      sb.faults({ count = 1, status = 401, body = '{"status":"fail","errors":[{"code":"InvalidSiteToken"}]}' })
      local qu = new_client():queue({ concurrency = 1, auth_pause = 0.5, on_success = rec.on_success,
        on_failure = rec.on_failure, on_event = function(ev) events[#events + 1] = ev end })
      for _, p in ipairs(make("auth-", 3)) do assert.is_true(qu:push(p)) end
      assert.is_true(qu:flush(20))
      assert.equal(3, rec.nok)
      assert.equal(0, rec.nfail)
      assert.equal(4, sb.stats().requests) -- the refused one, then three (its probe included)
      local paused, resumed
      for _, ev in ipairs(events) do
        if ev.type == "paused" and ev.reason == "credentials" then paused = ev end
        if ev.type == "resumed" and ev.reason == "credentials" then resumed = ev end
      end
      assert.is_table(paused)
      assert.equal("auth", paused.error.kind)
      assert.is_table(resumed)
      qu:close()
    end)

    it("is bounded: with max_queue orders waiting push returns kind full", function()
      local qu = new_client():queue({ max_queue = 3, concurrency = 1 })
      sb.faults({ count = 1, delay = 2 }) -- holds the first request, then records it
      local list = make("full-", 4)
      for i = 1, 3 do assert.is_true(qu:push(list[i])) end
      local ok, err = qu:push(list[4])
      assert.is_nil(ok)
      assert.equal("full", err.kind)
      assert.equal("max_queue", err.bound)
      assert.truthy(err.message:find("max_queue", 1, true))
      assert.equal(1, qu:stats().dropped.full)
      assert.is_true(qu:flush(20))
      local counts, total = recorded()
      assert.equal(3, total)
      assert.is_nil(counts["full-4"])
      qu:close()
    end)

    it("closes twice, flushes after close, and raises on push after close", function()
      local qu = new_client():queue()
      assert.is_true(qu:push(make("cl-", 1)[1]))
      assert.is_true(qu:close())
      assert.is_true(qu:close())
      assert.is_true(qu:flush())
      assert.equal(0, qu:poll())
      assert.equal(1, qu:stats().sent)
      assert.has_error(function() qu:push(make("cl-", 1, 2)[1]) end)
      assert.has_error(function() qu:push_many(make("cl-", 1, 3)) end)
      assert.equal(1, recorded()["cl-1"])
    end)

    it("close with a short timeout gives up on what is undelivered, reporting each order", function()
      local rec = recorder()
      local qu = new_client():queue({ concurrency = 1, on_failure = rec.on_failure })
      sb.faults({ count = 1, delay = 3, status = 503 })
      assert.is_true(qu:push(make("short-", 1)[1]))
      local t0 = core.now()
      local ok, err = qu:close(0.3)
      assert.is_nil(ok)
      assert.equal("timeout", err.kind)
      assert.truthy(err.message:find("shutdown", 1, true))
      assert.is_true(core.now() - t0 < 10, "close hung")
      -- never silent: the order reaches on_failure and the counters
      assert.equal("shutdown", rec.fail["short-1"].kind)
      assert.equal(1, qu:stats().dropped.shutdown)
      assert.equal(1, qu:stats().failed)
    end)

    it("an unclosed queue is collected without hanging or crashing", function()
      do
        local qu = new_client():queue({ concurrency = 2 })
        sb.faults({ count = 2, delay = 3, status = 503 })
        for _, p in ipairs(make("gc-", 4)) do qu:push(p) end
        assert.truthy(eventually(function() return qu:stats().in_flight == 2 end, 5))
      end
      local t0 = core.now()
      collectgarbage()
      collectgarbage()
      assert.is_true(core.now() - t0 < 10, "__gc hung")
      -- the same in a process that exits with transfers in flight
      local script = tmp("gc_exit.lua")
      local f = assert(io.open(script, "wb"))
      f:write(([[
        package.path, package.cpath = %q, %q
        local offline = require("optimizely.offline")
        local c = offline.client({ base_url = %q, ca_file = %q, site = %q, token = %q, channel = %q })
        local qu = c:queue()
        for i = 1, 4 do
          qu:push({ order = { refCode = "gcx" .. i, orderDate = "2024-01-01T00:00:00Z",
            currency = "GBP", total = 1, items = { { refCode = "a", qty = 1, price = 1 } } } })
        end
        local core = require("optimizely.offline.core")
        local deadline = core.now() + 10 -- until transfers are in flight
        while qu:stats().in_flight == 0 and core.now() < deadline do core.sleep(0.01) end
        qu = nil
        collectgarbage()
        print("exited")
        os.exit(0, true)
      ]]):format(package.path, package.cpath, info.base_url, info.ca_file, info.site, info.token,
        info.channel))
      f:close()
      sb.faults({ count = 4, delay = 5, status = 503 })
      local exe = capture("readlink /proc/" .. sb.self_pid() .. "/exe"):gsub("%s+$", "")
      local out = capture("timeout 30 " .. q(exe) .. " " .. q(script) .. " 2>&1; echo rc=$?")
      assert.truthy(out:find("exited", 1, true), out)
      assert.truthy(out:find("rc=0", 1, true), out)
    end)

    it("checks its options", function()
      local c = new_client()
      assert.has_error(function() c:queue({ nope = 1 }) end, "queue: opts.nope is not a known option")
      assert.has_error(function() c:queue({ concurrency = 0 }) end)
      assert.has_error(function() c:queue({ concurrency = 2.5 }) end)
      assert.has_error(function() c:queue({ max_queue = -1 }) end)
      assert.has_error(function() c:queue({ spool_poll = 0 }) end)
      assert.has_error(function() c:queue({ spool_max_orders = 5 }) end) -- needs spool
      assert.has_error(function() c:queue({ spool = tmp("o.db"), spool_on_full = "explode" }) end)
      assert.has_error(function() c:queue({ spool = tmp("o.db"), lease = 2 }) end) -- <= timeout
      assert.has_error(function() c:queue("x") end)
      assert.has_error(function() c:queue({ on_success = "x" }) end)
    end)

    it("never shows the token in errors or messages", function()
      local rec = recorder()
      local qu = new_client():queue({ on_failure = rec.on_failure })
      sb.faults({ count = 1, status = 400,
        body = '{"status":"fail","errors":[{"code":"Echo","message":"got ' .. info.token .. '"}]}' })
      qu:push(make("tok-", 1)[1])
      assert.is_true(qu:flush(10))
      local err = rec.fail["tok-1"]
      assert.is_nil(tostring(err):find(info.token, 1, true))
      assert.is_nil(err.body:find(info.token, 1, true))
      assert.is_nil(tostring(qu):find(info.token, 1, true))
      qu:close()
    end)
  end)

  describe("with a spool", function()
    it("makes a push durable before it returns, then delivers and empties the spool", function()
      local path = tmp("basic.db")
      local rec = recorder()
      local qu = assert(new_client():queue({ spool = path, concurrency = 1, on_success = rec.on_success }))
      sb.faults({ count = 1, delay = 1 }) -- the first request waits: the rest stay in the file
      for _, p in ipairs(make("sp-", 30)) do assert.is_true(qu:push(p)) end
      local other = assert(spool_mod.open(path)) -- another connection sees them all
      assert.equal(30, other:stats().queued)
      assert.is_true(qu:flush(20))
      assert.equal(0, other:stats().queued)
      other:close()
      local counts, total = recorded()
      assert.equal(30, total)
      for i = 1, 30 do assert.equal(1, counts["sp-" .. i]) end
      assert.equal(30, rec.nok)
      assert.equal(30, qu:stats().sent)
      assert.is_true(qu:close())
    end)

    it("push_many stores a group in one transaction", function()
      local path = tmp("many.db")
      local qu = assert(new_client():queue({ spool = path }))
      local n, refused = qu:push_many(make("spm-", 25))
      assert.equal(25, n)
      assert.equal(0, #refused)
      assert.is_true(qu:flush(20))
      local _, total = recorded()
      assert.equal(25, total)
      qu:close()
    end)

    it("refuses past spool_max_orders with kind full naming the bound", function()
      local path = tmp("bound.db")
      local qu = assert(new_client():queue({ spool = path, spool_max_orders = 3, concurrency = 1 }))
      sb.faults({ count = 1, delay = 2 })
      local list = make("spb-", 4)
      for i = 1, 3 do assert.is_true(qu:push(list[i])) end
      local ok, err = qu:push(list[4])
      assert.is_nil(ok)
      assert.equal("full", err.kind)
      assert.equal("max_orders", err.bound)
      assert.equal("spool_max_orders", err.option)
      assert.truthy(err.message:find("max_orders", 1, true))
      local n, refused = qu:push_many({ list[4] })
      assert.equal(0, n)
      assert.equal("full", refused[1].err.kind)
      assert.equal(2, qu:stats().dropped.full)
      assert.is_true(qu:flush(20))
      local _, total = recorded()
      assert.equal(3, total)
      qu:close()
    end)

    it("retries 503s from the spool and delivers", function()
      local path = tmp("r503.db")
      local rec = recorder()
      local qu = assert(new_client():queue({ spool = path, on_success = rec.on_success }))
      sb.faults({ count = 3, status = 503 })
      for _, p in ipairs(make("sr-", 3)) do assert.is_true(qu:push(p)) end
      assert.is_true(qu:flush(20))
      assert.equal(3, qu:stats().retried)
      assert.equal(3, rec.nok)
      local counts, total = recorded()
      assert.equal(3, total)
      for i = 1, 3 do assert.equal(1, counts["sr-" .. i]) end
      qu:close()
    end)

    it("honours Retry-After from the spool", function()
      local path = tmp("r429.db")
      local qu = assert(new_client():queue({ spool = path }))
      sb.faults({ count = 1, status = 429, retry_after = "1" })
      local t0 = core.now()
      assert.is_true(qu:push(make("s429-", 1)[1]))
      assert.is_true(qu:flush(20))
      assert.is_true(core.now() - t0 >= 0.95)
      assert.equal(1, recorded()["s429-1"])
      qu:close()
    end)

    it("moves permanent failures to the dead letters with their error", function()
      local path = tmp("dead.db")
      local rec = recorder()
      local qu = assert(new_client():queue({ spool = path, max_attempts = 2,
        on_failure = rec.on_failure }))
      sb.faults({ count = 1, status = 400,
        body = '{"status":"fail","errors":[{"code":"Bad","message":"no ' .. info.token .. '"}]}' })
      assert.is_true(qu:push(make("dl400-", 1)[1]))
      assert.is_true(qu:flush(10))
      sb.faults({ count = 2, status = 503 })
      assert.is_true(qu:push(make("dl503-", 1)[1]))
      assert.is_true(qu:flush(10))
      local sp = assert(spool_mod.open(path))
      local dead = assert(sp:list({ dead = true }))
      assert.equal(2, #dead)
      local by = {}
      for _, d in ipairs(dead) do by[d.ref] = d end
      assert.equal("http", by["dl400-1"].kind)
      assert.equal(400, by["dl400-1"].status)
      assert.equal(1, by["dl400-1"].attempts)
      assert.truthy(by["dl400-1"].message:find("400", 1, true))
      assert.truthy(by["dl400-1"].message:find("Bad", 1, true))
      assert.is_nil(by["dl400-1"].message:find(info.token, 1, true))
      assert.equal(503, by["dl503-1"].status)
      assert.equal(2, by["dl503-1"].attempts)
      assert.equal(0, sp:stats().queued)
      assert.equal(2, rec.nfail)
      assert.equal(1, qu:stats().retried)
      sp:close()
      qu:close()
    end)

    it("outlasts a 30-second outage with the defaults: every order delivered, none dead", function()
      -- before max_age, the defaults (4 attempts, 0.25 s backoff) sent all
      -- of these to the dead letters within two seconds (issue 11)
      local rec = recorder()
      local path = tmp("outage.db")
      local c = offline.client(sb.client_config(info, {}, {}))
      local qu = assert(c:queue({ spool = path, concurrency = 4, on_success = rec.on_success,
        on_failure = rec.on_failure }))
      sb.faults({ count = 1000000, close = true }) -- every connection dropped: the endpoint is down
      local n = 40
      for _, p in ipairs(make("outage-", n)) do assert.is_true(qu:push(p)) end
      local t0 = core.now()
      while core.now() - t0 < 30 do
        qu:poll()
        core.sleep(0.5)
      end
      assert.equal(0, qu:stats().dead)
      assert.equal(0, rec.nfail)
      assert.is_true(qu:stats().retried > n, "retried " .. qu:stats().retried)
      sb.clear_faults()
      assert.is_true(qu:flush(60))
      assert.equal(n, rec.nok)
      assert.equal(0, qu:stats().dead)
      local counts, total = recorded()
      assert.equal(n, total)
      for i = 1, n do assert.equal(1, counts["outage-" .. i]) end
      qu:close()
      c:close()
    end)

    it("reports a full disk through stats and on_event, and delivers once there is room", function()
      if capture("id -u"):match("^%s*(%d+)") ~= "0" then
        pending("needs root to mount a small tmpfs")
        return
      end
      local dir = tmp("fulldisk")
      os.execute("mkdir -p " .. q(dir))
      os.execute("mount -t tmpfs -o size=1m tmpfs " .. q(dir))
      finally(function() os.execute("umount " .. q(dir) .. " 2>/dev/null") end)
      local events, logged = {}, {}
      local qu = assert(new_client():queue({ spool = dir .. "/q.db", concurrency = 2,
        on_event = function(ev) if ev.type == "storage" then events[#events + 1] = ev end end,
        logger = function(level, msg) logged[#logged + 1] = level .. " " .. msg end }))
      sb.faults({ count = 100000, status = 503 }) -- the rows stay, retried: every retry is a write
      for _, p in ipairs(make("disk-", 5)) do assert.is_true(qu:push(p)) end
      -- fill the disk: the thread's claims and retries (writes) now fail
      os.execute("dd if=/dev/zero of=" .. q(dir .. "/filler") .. " bs=16k >/dev/null 2>&1")
      assert.is_true(eventually(function()
        qu:poll()
        return qu:stats().storage_errors > 0
      end, 20), "no storage error reported")
      assert.is_true(#events >= 1)
      assert.equal("storage", events[1].error.kind)
      assert.equal("delivery", events[1].operation)
      -- and one error line in the log (optimizely.offline.events)
      local line
      for _, l in ipairs(logged) do if l:find("spool delivery failed", 1, true) then line = l end end
      assert.is_truthy(line, "no log line for the storage failure")
      assert.equal("error", line:match("^(%S+)"))
      assert.is_string(qu:stats().storage_error)
      -- room again: delivery goes on, nothing was lost
      os.remove(dir .. "/filler")
      sb.clear_faults()
      assert.is_true(qu:flush(30))
      local counts = recorded()
      for i = 1, 5 do assert.equal(1, counts["disk-" .. i], "disk-" .. i) end
      qu:close()
    end)

    it("keeps undelivered orders with their retry counts across a restart", function()
      local path = tmp("restart.db")
      local c = new_client({ backoff_base = 0.05, backoff_max = 0.1 })
      local qu = assert(c:queue({ spool = path, max_attempts = 50 }))
      sb.faults({ count = 100000, status = 503 })
      for _, p in ipairs(make("rs-", 5)) do assert.is_true(qu:push(p)) end
      assert.truthy(eventually(function() return qu:stats().retried >= 10 end, 10))
      local ok, err = qu:close(0.2)
      assert.is_nil(ok)
      assert.equal("timeout", err.kind)
      assert.truthy(err.message:find("spool", 1, true))
      local sp = assert(spool_mod.open(path))
      local rows = assert(sp:list())
      assert.equal(5, #rows)
      local before = {}
      for _, r in ipairs(rows) do
        assert.is_true(r.attempts >= 1, "attempts kept")
        assert.is_nil(r.claimed_by, "a closed queue leaves no lease behind")
        assert.truthy(r.last_error:find("503", 1, true))
        before[r.ref] = r.attempts
      end
      sp:close()
      sb.clear_faults()
      local rec = recorder()
      local qu2 = assert(c:queue({ spool = path, max_attempts = 50, on_success = rec.on_success }))
      -- nothing pushed: the new queue resumes from the spool by itself
      assert.is_true(qu2:flush(20))
      local counts, total = recorded()
      assert.equal(5, total)
      for i = 1, 5 do
        local ref = "rs-" .. i
        assert.equal(1, counts[ref])
        assert.equal(1, rec.ok[ref])
        -- the count went on from where the first queue left it
        assert.equal(before[ref] + 1, rec.res[ref].attempts)
      end
      assert.is_true(qu2:close())
    end)

    it("gives in-flight rows back at close so a new queue sends them at once", function()
      local path = tmp("release.db")
      local c = new_client()
      local qu = assert(c:queue({ spool = path, concurrency = 2, lease = 60 }))
      sb.faults({ count = 2, delay = 2, status = 503 })
      for _, p in ipairs(make("rel-", 2)) do assert.is_true(qu:push(p)) end
      assert.truthy(eventually(function() return qu:stats().in_flight == 2 end, 5))
      assert.is_nil((qu:close(0.1)))
      local sp = assert(spool_mod.open(path))
      for _, r in ipairs(assert(sp:list())) do assert.is_nil(r.claimed_by) end
      sp:close()
      local qu2 = assert(c:queue({ spool = path, lease = 60 }))
      assert.is_true(qu2:flush(15)) -- far less than the 60 s lease
      local counts = recorded()
      assert.equal(1, counts["rel-1"])
      assert.equal(1, counts["rel-2"])
      qu2:close()
    end)

    it("lets two processes share one spool: every order delivered once", function()
      local path = tmp("shared.db")
      local exe = capture("readlink /proc/" .. sb.self_pid() .. "/exe"):gsub("%s+$", "")
      local pusher = debug.getinfo(1, "S").source:sub(2):gsub("queue_spec%.lua$", "support/queue_pusher.lua")
      local env = "LUA_PATH=" .. q(package.path) .. " LUA_PATH_5_4=" .. q(package.path)
        .. " LUA_CPATH=" .. q(package.cpath) .. " LUA_CPATH_5_4=" .. q(package.cpath)
      local function cmd(prefix, group)
        return table.concat({ env, "timeout 60", q(exe), q(pusher),
          "base_url=" .. q(info.base_url), "ca_file=" .. q(info.ca_file), "site=" .. q(info.site),
          "token=" .. q(info.token), "channel=" .. q(info.channel), "spool=" .. q(path),
          "prefix=" .. prefix, "to=300", "group=" .. group, "deadline=50" }, " ")
      end
      local out = capture("(" .. cmd("pa-", 1) .. " & " .. cmd("pb-", 10) .. " & wait) 2>&1")
      local oks = select(2, out:gsub("ok=true", ""))
      assert.equal(2, oks, out)
      local counts, total = recorded()
      local dups, missing = 0, 0
      for _, prefix in ipairs({ "pa-", "pb-" }) do
        for i = 1, 300 do
          local n = counts[prefix .. i] or 0
          if n == 0 then missing = missing + 1 elseif n > 1 then dups = dups + n - 1 end
        end
      end
      print(("\n  two processes: 600 orders, %d recorded, %d missing, %d duplicates"):format(
        total, missing, dups))
      assert.equal(0, missing)
      assert.equal(0, dups)
      local sp = assert(spool_mod.open(path))
      assert.equal(0, sp:stats().queued)
      assert.equal(0, sp:stats().dead)
      sp:close()
    end)
  end)

  -- A real fork() needs the FFI: LuaJIT only.
  local has_ffi = pcall(require, "ffi")
  ;(has_ffi and it or pending)("starts a new worker in a forked child (LuaJIT ffi fork)", function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "int fork(void); int waitpid(int, int *, int); void _exit(int);")
    local rec = recorder()
    local qu = new_client():queue({ on_success = rec.on_success })
    assert.is_true(qu:push(make("fk-", 1)[1]))
    assert.is_true(qu:flush(10)) -- the parent's thread is running
    local pid = ffi.C.fork()
    assert.is_true(pid >= 0)
    if pid == 0 then
      -- the child: the queue notices the new pid and starts its own thread
      local code = 1
      local ok = pcall(function()
        assert(qu:push(make("fk-", 1, 2)[1]))
        assert(qu:flush(10))
        assert(rec.ok["fk-2"] == 1)
        qu:close()
        code = 0
      end)
      ffi.C._exit(ok and code or 2)
    end
    local st = ffi.new("int[1]")
    ffi.C.waitpid(pid, st, 0)
    assert.equal(0, st[0], "child failed")
    assert.is_true(qu:push(make("fk-", 1, 3)[1]))
    assert.is_true(qu:flush(10))
    local counts = recorded()
    assert.equal(1, counts["fk-1"])
    assert.equal(1, counts["fk-2"])
    assert.equal(1, counts["fk-3"])
    qu:close()
  end)

  ;(has_ffi and it or pending)("reopens the spool in a forked child; both deliver (LuaJIT ffi fork)", function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "int fork(void); int waitpid(int, int *, int); void _exit(int);")
    local qu = assert(new_client():queue({ spool = tmp("fork.db") }))
    for _, p in ipairs(make("fsp-", 20)) do assert.is_true(qu:push(p)) end
    local pid = ffi.C.fork()
    assert.is_true(pid >= 0)
    if pid == 0 then
      local ok = pcall(function()
        for _, p in ipairs(make("fsc-", 20)) do assert(qu:push(p)) end
        assert(qu:flush(15))
        qu:close()
      end)
      ffi.C._exit(ok and 0 or 1)
    end
    for _, p in ipairs(make("fsp-", 20, 21)) do assert.is_true(qu:push(p)) end
    local st = ffi.new("int[1]")
    ffi.C.waitpid(pid, st, 0)
    assert.equal(0, st[0], "child failed")
    assert.is_true(qu:flush(15))
    qu:close()
    local counts = recorded()
    for i = 1, 40 do assert.equal(1, counts["fsp-" .. i], "fsp-" .. i) end
    for i = 1, 20 do assert.equal(1, counts["fsc-" .. i], "fsc-" .. i) end
  end)

  -- A fork while the delivery thread or the checkpointer is inside SQLite
  -- used to hand the child a locked SQLite mutex (its first spool call hung,
  -- ~6% of forks). Each child here opens the spool and exits; one that is
  -- not gone within 5 s is a hang.
  ;(has_ffi and it or pending)("forks safely while the delivery thread works the spool (LuaJIT ffi fork)", function()
    local ffi = require("ffi")
    pcall(ffi.cdef, "int fork(void); int waitpid(int, int *, int); void _exit(int); int kill(int, int);")
    local path = tmp("fork-stress.db")
    local qu = assert(new_client():queue({ spool = path }))
    local hung = 0
    for round = 1, 150 do
      for _, p in ipairs(make("fst" .. round .. "-", 10)) do assert.is_true(qu:push(p)) end
      local pid = ffi.C.fork()
      assert.is_true(pid >= 0)
      if pid == 0 then
        local sp = spool_mod.open(path)
        if sp then sp:close() end
        ffi.C._exit(sp and 0 or 1)
      end
      local st = ffi.new("int[1]")
      local gone = eventually(function() return ffi.C.waitpid(pid, st, 1) == pid end, 5)
      if not gone then
        hung = hung + 1
        ffi.C.kill(pid, 9)
        ffi.C.waitpid(pid, st, 0)
      else
        assert.equal(0, st[0], "child could not open the spool")
      end
    end
    assert.equal(0, hung, "children hung opening the spool")
    assert.is_true(qu:flush(30))
    qu:close()
    local counts = recorded()
    for i = 1, 10 do assert.equal(1, counts["fst150-" .. i]) end
  end)
end)

describe("the queue's delivery thread (core.worker_new on the scheduler)", function()
  local info
  setup(function() info = sb.ensure() end)
  before_each(function() sb.reset() end)

  it("carries a job's blob into its result and takes back unstarted jobs of a refCode", function()
    local c = offline.client(sb.client_config(info, {}))
    local st = client_mod.state(c)
    sb.faults({ count = 1, delay = 1, match = "POST" }) -- holds the first order in flight
    local w = core.worker_new(sched.config(st, { http = st.http_opts, concurrency = 1, on_stop = "pause",
      report_all = true, max_queue = 10 }))
    local body = assert(offline.encode(orders.minimal()))
    assert.is_true(w:push(body, "W-1", 1, { blob = "ledger-W-1" }))
    assert.is_true(eventually(function() return w:stats().in_flight == 1 end, 5))
    assert.is_true(w:push(body, "W-1", 1)) -- queued behind it
    assert.is_true(w:push(body, "W-2", 1))
    local removed, flying = w:remove_ref("W-1")
    assert.is_true(flying)
    assert.equal(1, #removed)
    assert.equal("W-1", removed[1].ref)
    assert.is_true(eventually(function()
      local idle = w:wait(0.2)
      return idle
    end, 10))
    local by = {}
    for _, r in ipairs(w:results()) do if r.ref then by[r.ref] = r end end
    assert.equal("sent", by["W-1"].what)
    assert.equal("ledger-W-1", by["W-1"].blob)
    assert.equal("sent", by["W-2"].what)
    assert.equal(1, w:stats().removed)
    assert.is_true(w:close(2))
    c:close()
  end)

  it("delivers a spooled cancel as a DELETE of its refCode, after its create", function()
    local dir = capture("mktemp -d"):gsub("%s+$", "")
    local path = dir .. "/cancel.db"
    local sp = assert(spool_mod.open(path))
    local p = orders.minimal()
    p.order.refCode = "SP.1/x" -- a dot and a slash: one path segment
    local body = assert(offline.encode(p))
    assert(sp:put(body, "SP.1/x"))
    assert(sp:put_cancel("SP.1/x"))
    sp:close()
    local c = offline.client(sb.client_config(info, {}))
    local queue = assert(c:queue({ spool = path, concurrency = 2 }))
    assert.is_true(queue:flush(20))
    queue:close()
    c:close()
    local recs, cancels = sb.orders({ refCode = "SP.1/x" }), sb.cancellations({ refCode = "SP.1/x" })
    assert.equal(1, #recs)
    assert.equal(1, #cancels) -- 200: the create was there first
    assert.matches("SP%%2E1%%2Fx$", cancels[1].uri)
    os.execute("rm -rf " .. q(dir))
  end)
end)
