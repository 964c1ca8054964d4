-- The scheduler's Lua binding (optimizely.offline.sched, csrc/binding/l_sched.c),
-- driven from plain Lua with a scripted transport: no network. What a Lua
-- driver (client:send, a user transport, the nginx queue) relies on — the
-- decisions that live in the scheduler (backoff, Retry-After, the 429
-- pause, the credentials stop and probe, the age limit, the in-flight
-- limit), the store hooks, refCode order, the ledger's record hook and
-- blob, and the counting rule.
local core = require("optimizely.offline.core")
local sched = require("optimizely.offline.sched")

local OK = '{"status":"OK"}'
local unpack = table.unpack or unpack -- luacheck: ignore 143

local function new(extra)
  local cfg = { url = "https://example.test/orders",
    channels = { { name = "store", token = "tok-store", headers = { "site: s", "channel: store" } },
      { name = "callcentre", token = "tok-cc", headers = { "site: s", "channel: callcentre" } } },
    concurrency = 4, report_all = true,
    policy = { max_attempts = 3, backoff_base = 0.01, backoff_max = 0.02 } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return sched.new(cfg)
end

-- Every job that may start now, in order.
local function take_all(s)
  local list = {}
  while true do
    local j = s:next()
    if not j then return list end
    list[#list + 1] = j
  end
end

local function by_what(results)
  local t = {}
  for _, r in ipairs(results) do
    t[r.what] = t[r.what] or {}
    table.insert(t[r.what], r)
  end
  return t
end

describe("the scheduler's Lua binding", function()
  it("hands out jobs, classifies what comes back and gives one result shape", function()
    local s = new()
    assert.is_true(s:add({ id = 1, body = "{}", ref = "A" }))
    assert.is_true(s:add({ id = 2, body = "{}", ref = "B", channel = 2, blob = "ledger-B" }))
    assert.equal(2, s:pending())
    local jobs = take_all(s)
    assert.equal(2, #jobs)
    local a, b = jobs[1], jobs[2]
    assert.equal(1, a.id)
    assert.equal("POST", a.method)
    assert.equal("https://example.test/orders", a.url)
    assert.equal("{}", a.body)
    assert.equal("store", a.channel)
    assert.same({ "site: s", "channel: store" }, a.headers)
    assert.equal(1, a.attempt)
    assert.equal("callcentre", b.channel)
    assert.is_nil(b.channel_index) -- the name is enough: the headers come with it
    assert.equal("ledger-B", b.blob)
    assert.equal("ack", s:done(a.token, 200, OK, { reused = true }))
    assert.equal("dead", s:done(b.token, 400, '{"status":"fail","errors":[{"code":"MissingOrMalformedTotal"}]}'))
    local t = by_what(s:results())
    local sent, dead = t.sent[1], t.dead[1]
    assert.equal(1, sent.id)
    assert.is_true(sent.ok)
    assert.equal(200, sent.status)
    assert.equal(OK, sent.body)
    assert.equal("A", sent.ref)
    assert.equal("POST", sent.method)
    assert.is_number(sent.latency)
    assert.equal("rejected", dead.why)
    assert.equal("http", dead.kind)
    assert.equal(400, dead.status)
    assert.equal("MissingOrMalformedTotal", dead.code)
    assert.is_false(dead.retryable)
    assert.equal("ledger-B", dead.blob)
    assert.equal("callcentre", dead.channel)
    local st = s:stats()
    assert.same({ 0, 0, 0, 1, 1, 1 }, { st.queued, st.retrying, st.in_flight, st.sent, st.dead, st.failed })
    assert.equal(0, s:pending())
    s:close()
    assert.has_error(function() s:add({ body = "{}" }) end, "sched is closed")
    s:close() -- twice is fine
  end)

  it("checks the transport contract: a breach is a failure of kind transport, never retried", function()
    local s = new()
    for i, reply in ipairs({ { {} }, { 42, "" }, { 200, {} }, { nil }, { 200, OK, "info" }, { 200.5 } }) do
      s:add({ id = i, body = "{}" })
      local j = s:next()
      assert.equal("dead", s:done(j.token, unpack(reply, 1, 3)))
    end
    for _, r in ipairs(s:results()) do
      assert.equal("transport", r.kind)
      assert.is_false(r.retryable)
      assert.matches("broke its contract", r.message)
    end
    -- the same check, for a caller that classifies alone
    assert.equal("transport", core.check_reply({}).kind)
    assert.equal(503, core.check_reply(503, "", { retry_after = 2 }).status)
    assert.equal(2, core.check_reply(503, "", { retry_after = 2 }).retry_after)
    assert.equal("timeout", core.check_reply(nil, "timeout", "slow").kind)
    s:close()
  end)

  it("refuses stale tokens and bad jobs (programmer errors raise)", function()
    local s = new()
    s:add({ id = 1, body = "{}" })
    local j = s:next()
    s:done(j.token, 200, OK)
    assert.has_error(function() s:done(j.token, 200, OK) end)
    assert.has_error(function() s:done(12345, 200, OK) end)
    assert.has_error(function() s:add({ id = 1 }) end) -- a POST needs a body
    assert.has_error(function() s:add({ id = 1, method = "DELETE" }) end) -- a DELETE needs its url
    assert.has_error(function() s:add({ id = 1, body = "{}", channel = 3 }) end)
    assert.has_error(function() s:add({ id = 1.5, body = "{}" }) end)
    assert.has_error(function() s:add({ id = 1, body = "{}", method = "PUT" }) end)
    s:close()
  end)

  it("retries with the policy's backoff: the job waits in the retry heap", function()
    local s = new({ report_retries = true })
    s:add({ id = 7, body = "{}", ref = "R" })
    local j = s:next()
    assert.equal("retry", s:done(j.token, 503, ""))
    local none, wait = s:next()
    assert.is_nil(none)
    assert.is_true(wait > 0 and wait <= 0.02, tostring(wait))
    assert.equal(1, s:stats().retrying)
    local ev = by_what(s:results()).retry[1]
    assert.equal(7, ev.id)
    assert.equal(503, ev.status)
    assert.equal(1, ev.attempts)
    assert.is_true(ev["until"] > 0)
    s:advance(wait) -- as a sleep stub would: what it waited for is due
    j = s:next()
    assert.equal(7, j.id)
    assert.equal(2, j.attempt)
    assert.equal("retry", s:done(j.token, nil, "network", "connection reset"))
    s:advance(1)
    j = s:next()
    assert.equal("dead", s:done(j.token, nil, "timeout", "timed out"))
    local dead = by_what(s:results()).dead[1]
    assert.equal("attempts", dead.why)
    assert.equal("timeout", dead.kind)
    assert.equal(3, dead.attempts)
    assert.equal(2, s:stats().retried)
    s:close()
  end)

  it("honours Retry-After (capped) and lets a 429 pause every job, with the events", function()
    local s = new({ policy = { max_attempts = 5, retry_after_max = 3, backoff_base = 0.01 } })
    for i = 1, 3 do s:add({ id = i, body = "{}" }) end
    local jobs = take_all(s)
    assert.equal(3, #jobs)
    assert.equal("retry", s:done(jobs[1].token, 429, "", { retry_after = "2" }))
    assert.equal("retry", s:done(jobs[2].token, 503, "", { retry_after = "3600" }))
    s:done(jobs[3].token, 200, OK)
    s:add({ id = 4, body = "{}" })
    local none, wait = s:next() -- the pause holds back even the new job
    assert.is_nil(none)
    assert.near(2, wait, 0.05)
    local st = s:stats()
    assert.is_true(st.paused_for > 1.9)
    assert.equal(1, st.throttled)
    local t = by_what(s:results())
    assert.equal("throttled", t.paused[1].why)
    assert.near(2, t.paused[1]["until"], 0.01)
    assert.is_true(t.paused[1].throttled)
    s:advance(wait)
    jobs = take_all(s)
    assert.equal(2, #jobs) -- job 1 (its Retry-After) and job 4; job 2 waits its capped 3 s
    assert.equal("resumed", by_what(s:results()).resumed[1].what)
    for _, j in ipairs(jobs) do s:done(j.token, 200, OK) end
    none, wait = s:next()
    assert.is_nil(none)
    assert.near(1, wait, 0.05)
    s:close()
  end)

  it("halves the in-flight limit on a 429 (fixed limit) and grows it back", function()
    local s = new({ concurrency = 4, policy = { max_attempts = 5, backoff_base = 0.01 } })
    for i = 1, 8 do s:add({ id = i, body = "{}" }) end
    local jobs = take_all(s)
    assert.equal(4, #jobs)
    s:done(jobs[1].token, 429, "", { retry_after = "0" })
    assert.equal(2, s:stats().limit)
    s:done(jobs[2].token, 200, OK)
    s:advance(1)
    assert.equal(0, #take_all(s)) -- 2 still in flight: the limit is full
    s:done(jobs[3].token, 200, OK) -- one more per `limit` successes
    assert.equal(3, s:stats().limit)
    s:done(jobs[4].token, 200, OK)
    assert.equal(3, #take_all(s))
    s:close()
  end)

  it("gives up an order whose next try would pass max_age (the age limit)", function()
    local s = new({ policy = { max_attempts = false, max_age = 100, backoff_base = 1, backoff_max = 1,
      backoff_floor = 1 } })
    s:add({ id = 1, body = "{}", created = core.wall_now() - 99.5 })
    s:add({ id = 2, body = "{}" })
    local jobs = take_all(s)
    assert.equal("dead", s:done(jobs[1].token, 503, ""))
    assert.equal("retry", s:done(jobs[2].token, 503, ""))
    local dead = by_what(s:results()).dead[1]
    assert.equal(1, dead.id)
    assert.equal("expired", dead.why)
    s:close()
  end)

  it("on refused credentials with on_stop = drain fails every job left as stopped", function()
    local s = new({ on_stop = "drain" })
    for i = 1, 3 do s:add({ id = i, body = "{}" }) end
    local j = s:next()
    assert.equal("stop", s:done(j.token, 401, ""))
    assert.is_nil(s:next())
    local t = by_what(s:results())
    assert.equal(3, #t.stopped)
    assert.equal(1, t.stopped[1].attempts)
    assert.equal(0, t.stopped[2].attempts)
    assert.is_true(t.stopped[2].stop)
    assert.equal("auth", t.stopped[2].kind)
    assert.is_true(s:stats().stopped)
    assert.equal(0, s:pending())
    s:resume()
    s:add({ id = 9, body = "{}" })
    assert.equal(9, s:next().id) -- sending again after resume
    s:close()
  end)

  it("on refused credentials with on_stop = pause holds the jobs and one probes every auth_pause", function()
    local s = new({ on_stop = "pause", auth_pause = 60 })
    for i = 1, 3 do s:add({ id = i, body = "{}" }) end
    local jobs = take_all(s)
    assert.equal("stop", s:done(jobs[1].token, 403, '{"status":"fail","errors":[{"code":"SiteNotRecognized"}]}'))
    s:done(jobs[2].token, 401, "")
    s:done(jobs[3].token, 401, "")
    local none, wait = s:next()
    assert.is_nil(none)
    assert.near(60, wait, 0.5)
    assert.equal(3, s:stats().queued)
    local paused = by_what(s:results()).paused
    assert.equal(1, #paused)
    assert.equal("credentials", paused[1].why)
    s:advance(wait)
    local probe = s:next()
    assert.is_table(probe)
    assert.is_nil(s:next()) -- one probe at a time
    s:done(probe.token, 503, "") -- tells nothing: the next probe after auth_pause
    none, wait = s:next()
    assert.is_nil(none)
    assert.near(60, wait, 0.5)
    s:advance(wait)
    probe = s:next()
    s:done(probe.token, 200, OK)
    assert.equal(2, #take_all(s)) -- the credentials work: everything goes
    assert.equal("credentials", by_what(s:results()).resumed[1].why)
    s:close()
  end)

  it("starts a cancel (after_ref) only when no earlier job of its refCode is left", function()
    local s = new()
    s:add({ id = 1, body = "{}", ref = "R1" })
    s:add({ id = 2, method = "DELETE", url = "https://example.test/cancel/R1", ref = "R1", after_ref = true })
    s:add({ id = 3, body = "{}", ref = "R2" })
    local jobs = take_all(s)
    assert.same({ 1, 3 }, { jobs[1].id, jobs[2].id }) -- the cancel waits behind its create
    assert.equal(3, s:pending())
    s:done(jobs[1].token, 503, "") -- the create goes again later: the cancel still waits
    assert.same({}, take_all(s))
    s:advance(1)
    local create = s:next()
    assert.equal(1, create.id)
    s:done(create.token, 200, OK)
    local cancel = s:next()
    assert.equal(2, cancel.id)
    assert.equal("DELETE", cancel.method)
    assert.equal("https://example.test/cancel/R1", cancel.url)
    assert.is_nil(cancel.body)
    s:done(cancel.token, 200, OK)
    s:done(jobs[2].token, 200, OK)
    local m = s:metrics()
    assert.equal(2, m.sent) -- the cancel is a request, not an order
    assert.equal(2, m.queued)
    assert.equal(4, m.requests)
    s:close()
  end)

  it("removes the unstarted jobs of a refCode and says whether one is in flight", function()
    local s = new({ concurrency = 1 })
    s:add({ id = 1, body = "{}", ref = "A", blob = "a1" })
    s:add({ id = 2, body = "{}", ref = "B", blob = "b1" })
    s:add({ id = 3, body = "{}", ref = "A", blob = "a2" })
    local first = s:next()
    assert.equal(1, first.id)
    local removed, flying = s:remove_ref("A")
    assert.is_true(flying) -- job 1 is on its way
    assert.equal(1, #removed)
    assert.equal(3, removed[1].id)
    assert.equal("a2", removed[1].blob)
    assert.equal("A", removed[1].ref)
    removed, flying = s:remove_ref("B", "DELETE")
    assert.same({}, removed)
    assert.is_false(flying)
    assert.equal(2, s:pending())
    removed = s:remove_ref("B")
    assert.equal(2, removed[1].id)
    assert.equal(2, s:stats().removed)
    s:done(first.token, 200, OK)
    assert.equal(0, s:pending())
    s:close()
  end)

  it("bounds the jobs pending with max_pending", function()
    local s = new({ max_pending = 2 })
    assert.is_true(s:add({ body = "{}" }))
    assert.is_true(s:add({ body = "{}" }))
    assert.is_false(s:add({ body = "{}" }))
    assert.equal(2, s:stats().pushed)
    s:close()
  end)

  it("drops what is left: attempted jobs are unknown, the others unsent", function()
    local s = new({ concurrency = 2 })
    for i = 1, 4 do s:add({ id = i, body = "{}", ref = "D" .. i }) end
    local jobs = take_all(s)
    s:done(jobs[1].token, 503, "") -- retrying: the server may have it
    local unknown, unsent = s:drop()
    local ids = {}
    for _, j in ipairs(unknown) do ids[#ids + 1] = j.id end
    table.sort(ids)
    assert.same({ 1, 2 }, ids)
    assert.equal(2, #unsent)
    assert.equal(0, s:pending())
    assert.has_error(function() s:done(jobs[2].token, 200, OK) end) -- its token is void
    s:close()
  end)

  describe("store hooks (Lua functions, called synchronously)", function()
    it("feeds, acks, retries, kills and releases store jobs; records every job's end first", function()
      local calls, rows = {}, { { id = 10, store_id = 10, body = "{}", ref = "S10", blob = "L10" },
        { id = 11, store_id = 11, body = "{}", ref = "S11" }, { id = 12, store_id = 12, body = "{}", ref = "S12" } }
      local s
      local function log(name, ...) calls[#calls + 1] = { name, ... } end
      s = new({ on_stop = "pause", hooks = {
        feed = function(room)
          log("feed", room)
          while room > 0 and #rows > 0 do
            s:take(table.remove(rows, 1))
            room = room - 1
          end
          return 5
        end,
        record = function(job, what, rec) log("record", job.id, what, rec.status, job.blob) end,
        ack = function(job) log("ack", job.id, job.store_id) end,
        retry = function(job, next_at, rec)
          log("retry", job.id, rec.status)
          assert.is_true(next_at > core.wall_now())
          return true -- the store keeps it
        end,
        dead = function(job, rec, why) log("dead", job.id, rec.status, why) end,
        release = function(job) log("release", job.id) end,
      } })
      s:add({ id = 1, body = "{}", ref = "M1" }) -- a memory job: record only
      local jobs = take_all(s)
      assert.equal(4, #jobs)
      assert.same({ "feed", 3 }, calls[1]) -- room: the limit less the memory job ready
      local by_id = {}
      for _, j in ipairs(jobs) do by_id[j.id] = j end
      s:done(by_id[1].token, 200, OK)
      s:done(by_id[10].token, 200, OK)
      s:done(by_id[11].token, 503, "")
      s:done(by_id[12].token, 400, "")
      assert.same({ "record", 1, "sent", 200, nil }, calls[2])
      assert.same({ "record", 10, "sent", 200, "L10" }, calls[3])
      assert.same({ "ack", 10, 10 }, calls[4])
      assert.same({ "retry", 11, 503 }, calls[5])
      assert.same({ "record", 12, "dead", 400, nil }, calls[6])
      assert.same({ "dead", 12, 400, "rejected" }, calls[7])
      assert.equal(0, s:pending()) -- the retried row is the store's now
      -- a credentials pause gives a store job back
      rows = { { id = 13, store_id = 13, body = "{}" } }
      s:hint_feed()
      local j = s:next()
      s:done(j.token, 401, "")
      assert.same({ "release", 13 }, calls[#calls])
      assert.equal(0, s:stats().hook_errors)
      s:close()
    end)

    it("reports the dead letters a dead hook returns (a spool's amend) as dead results, why amend", function()
      local s = new({ hooks = {
        dead = function(job)
          if job.method ~= "DELETE" then return nil end
          return { { id = 21, ref = job.ref, channel = 2, attempts = 0,
            message = "amend: not sent, the DELETE of the earlier version failed: no" }, "not a row" }
        end,
      } })
      s:add({ id = 20, store_id = 20, ref = "A1", channel = 2, method = "DELETE", url = "https://example.test/c/A1" })
      local j = s:next()
      local before = s:stats()
      assert.equal("dead", s:done(j.token, 400, '{"status":"fail","errors":[{"code":"CancellationNotEnabled",'
        .. '"message":"no"}]}'))
      local dead = by_what(s:results()).dead
      assert.equal(2, #dead)
      local d = dead[1].id == 21 and dead[1] or dead[2]
      assert.equal(20, (dead[1].id == 21 and dead[2] or dead[1]).id) -- and the DELETE's own
      assert.same({ 21, "A1", "callcentre", "POST", "amend", 400, "CancellationNotEnabled", false, 0 },
        { d.id, d.ref, d.channel, d.method, d.why, d.status, d.code, d.retryable, d.attempts })
      assert.equal("amend: not sent, the DELETE of the earlier version failed: no", d.message)
      local st = s:stats()
      assert.equal(before.failed + 1, st.failed) -- the new version (a DELETE counts as a request only)
      assert.equal(before.dead + 1, st.dead)
      assert.equal(0, st.hook_errors)
      s:close()
    end)

    it("counts a hook that raises and goes on; a hook cannot drive the scheduler", function()
      local s
      s = new({ hooks = {
        record = function() error("ledger is full") end,
        ack = function() s:next() end,
      } })
      s:add({ id = 1, body = "{}", store_id = 5 })
      local j = s:next()
      assert.equal("ack", s:done(j.token, 200, OK))
      local st = s:stats()
      assert.equal(2, st.hook_errors)
      assert.matches("a hook cannot drive the scheduler", st.hook_error)
      assert.equal(1, st.sent)
      s:close()
    end)
  end)

  describe("the Lua driver (client:send's, user transports')", function()
    local function transport(script)
      local seen = {}
      return { seen = seen, request = function(_, method, url, headers, body)
        seen[#seen + 1] = { method = method, url = url, headers = headers, body = body }
        local reply = table.remove(script, 1) or { 200, OK }
        if reply.raise then error(reply.raise) end
        return reply[1], reply[2], reply[3], reply[4]
      end }
    end

    local function cfg(extra)
      local c = { url = "https://example.test/orders", channels = { { name = "store", headers = { "h: 1" } } },
        concurrency = 1, report_all = true, report_retries = true,
        policy = { max_attempts = 4, backoff_base = 0.2, backoff_max = 0.2 } }
      for k, v in pairs(extra or {}) do c[k] = v end
      return c
    end

    it("sends one job to its end, sleeping the scheduler's waits", function()
      local sleeps, events = {}, {}
      local tr = transport({ { 503, "" }, { nil, "network", "reset" }, { 200, OK, { reused = true } } })
      local d = sched.driver(cfg({ random = function() return 0.5 end }), tr,
        function(x) sleeps[#sleeps + 1] = x end)
      local rec, attempts, why, body, info = d:send({ id = 1, body = "{}", ref = "X" },
        function(ev) events[#events + 1] = ev.what end)
      assert.is_true(rec.ok)
      assert.equal(200, rec.status)
      assert.equal(3, attempts)
      assert.is_nil(why)
      assert.equal(OK, body)
      assert.is_true(info.reused)
      assert.equal(2, #sleeps)
      -- random 0.5 of the 0.2 s window, less the time the scheduler took to get there (under load, ms)
      assert.is_true(sleeps[1] <= 0.1 + 1e-6 and sleeps[1] > 0.05, "slept " .. sleeps[1])
      assert.same({ "retry", "retry", "sent" }, events) -- report_all: its own end too
      assert.equal("POST", tr.seen[1].method)
      assert.same({ "h: 1" }, tr.seen[1].headers)
      d:close()
    end)

    it("takes every job out when the transport raises, then lets the raise through", function()
      local d = sched.driver(cfg(), transport({ { raise = "my bug" } }), function() end)
      assert.has_error(function() d:send({ id = 1, body = "{}" }) end, "my bug")
      assert.equal(0, d:pending())
      local rec = d:send({ id = 2, body = "{}" }) -- usable again
      assert.is_true(rec.ok)
      d:close()
    end)

    it("says why a job was given up, with the last outcome", function()
      local d = sched.driver(cfg({ policy = { max_attempts = 2, backoff_base = 0.01 } }),
        transport({ { 503, "" }, { nil, "timeout", "slow" } }), function() end)
      local rec, attempts, why, body = d:send({ id = 1, body = "{}" })
      assert.is_false(rec.ok)
      assert.equal("timeout", rec.kind)
      assert.equal(2, attempts)
      assert.equal("attempts", why)
      assert.is_nil(body) -- the last attempt got no answer
      d = sched.driver(cfg(), transport({ { 401, "" } }), function() end)
      rec, attempts, why = d:send({ id = 1, body = "{}" })
      assert.same({ "auth", true, 1, "credentials" }, { rec.kind, rec.stop, attempts, why })
    end)

    it("runs the engine interface: add, turn, results, drop", function()
      local d = sched.driver(cfg({ concurrency = 2 }), transport({}), function() end)
      for i = 1, 3 do d:add({ id = i, body = "{}" }) end
      while d:pending() > 0 do d:turn(1) end
      assert.equal(3, #by_what(d:results()).sent)
      d:add({ id = 4, body = "{}" })
      local unknown, unsent = d:drop()
      assert.same({}, unknown)
      assert.same({ 4 }, unsent)
      d:close()
    end)
  end)
end)
