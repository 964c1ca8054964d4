-- The durable spool: a real SQLite file per test, real child processes for
-- the multi-process and crash cases. Times are passed explicitly (T0 + n)
-- wherever the behaviour depends on them, so nothing here races a clock.
local spool = require("optimizely.offline.spool")
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local T0 = 1700000000 -- a fixed "now" for the deterministic cases

local tmpdir
local counter = 0

local sys = require("optimizely.offline.sys")
local sqlite = require("support.sqlite")
local sh_quote, exists = sys.q, sys.exists
local function readall(path) return assert(sys.read_file(path), "cannot read " .. path) end

local function fresh_path()
  counter = counter + 1
  return ("%s/spool-%d.db"):format(tmpdir, counter)
end

local function open(opts, path)
  path = path or fresh_path()
  local sp, err = spool.open(path, opts)
  assert(sp, tostring(err))
  return sp, path
end

-- A body like the encoder's output (~600 bytes), distinct per n.
local function body(n)
  return ('{"order":{"refCode":"R%d","currency":"GBP","items":[%s]}}'):format(
    n, ('{"refCode":"SKU","qty":1,"price":9.99},'):rep(14):sub(1, -2))
end

-- The interpreter running this spec, so children load the same build.
local function interpreter() return require("support.interp") end

local function child_script(name, src) return sqlite.child_script(tmpdir, name, src) end

setup(function() tmpdir = sqlite.tmpdir("spool") end)

teardown(function()
  if tmpdir then os.execute("rm -rf " .. sh_quote(tmpdir)) end
end)

describe("spool.open", function()
  it("creates a WAL-mode file with a versioned, stamped schema", function()
    local sp, path = open()
    assert.is_true(sp:is_open())
    assert.matches("^%d+:%x+$", sp:owner())
    assert.matches(path, tostring(sp), 1, true)
    sp:close()
    assert.is_false(sp:is_open())
    if sqlite.has_cli() then
      assert.equal("3", sqlite.cli(path, "PRAGMA user_version"))
      assert.equal(tostring(0x4F4F5350), sqlite.cli(path, "PRAGMA application_id"))
      assert.equal("wal", sqlite.cli(path, "PRAGMA journal_mode"))
      local tables = sqlite.cli(path, "SELECT group_concat(name, ',') FROM"
        .. " (SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name)")
      assert.matches("dead", tables)
      assert.matches("orders", tables)
      assert.matches("ledger", tables) -- the ledger's tables live in the spool's file
      local idx = sqlite.cli(path, "SELECT name FROM sqlite_master WHERE type = 'index'")
      assert.matches("orders_next_at", idx)
      assert.matches("orders_ref", idx)
    end
  end)

  it("reopens an existing spool without touching its data", function()
    local sp, path = open()
    assert(sp:put(body(1), "R1", T0))
    sp:close()
    local again = open(nil, path)
    assert.equal(1, again:stats(T0).queued)
    again:close()
  end)

  it("gives each handle its own lease owner", function()
    local a, path = open()
    local b = open(nil, path)
    assert.are_not.equal(a:owner(), b:owner())
    a:close()
    b:close()
  end)

  it("raises on bad options, naming the field", function()
    local path = fresh_path()
    local cases = {
      { { max_orders = 0 }, "opts.max_orders" },
      { { max_orders = 1.5 }, "opts.max_orders" },
      { { max_bytes = "10" }, "opts.max_bytes" },
      { { max_age = -1 }, "opts.max_age" },
      { { busy_timeout = -1 }, "opts.busy_timeout" },
      { { sync = "fast" }, "opts.sync" },
      { { on_full = "drop_newest" }, "opts.on_full" },
      { { maxorders = 5 }, "opts.maxorders is not a known option (did you mean 'max_orders'?)" },
      { { max_file_bytes = 100 }, "opts.max_file_bytes" },
      { "nope", "opts must be a table" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(spool.open, path, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
    assert.has_error(function() spool.open(nil) end)
    assert.has_error(function() spool.open("") end)
    -- the C binding checks too, for callers of the core module
    assert.has_error(function() core.spool_open(path, { bogus = 1 }) end,
      "spool.open: unknown option opts.bogus (expected busy_timeout, sync, max_orders, max_bytes,"
      .. " max_age, on_full, max_file_bytes)")
    assert.has_error(function() core.spool_open(path, { max_orders = 0 }) end,
      "spool.open: opts.max_orders must be an integer from 1 to 1000000000000000, got 0")
  end)

  it("accepts every documented option", function()
    local sp = open({ busy_timeout = 0.5, sync = "full", max_orders = 10, max_bytes = 10000,
                      max_age = 3600, on_full = "drop_oldest", max_file_bytes = 1e9 })
    assert(sp:put(body(1), "R1"))
    sp:close()
  end)

  it("returns nil, err naming the path when the directory does not exist", function()
    local path = tmpdir .. "/no/such/dir/spool.db"
    local sp, err = spool.open(path)
    assert.is_nil(sp)
    assert.is_true(errors.is(err))
    assert.equal("storage", err.kind)
    assert.matches(path, err.message, 1, true)
    assert.matches("cannot create the file: No such file or directory", err.message, 1, true)
  end)

  it("returns nil, err when the path is a directory", function()
    local sp, err = spool.open(tmpdir)
    assert.is_nil(sp)
    assert.equal("storage", err.kind)
    assert.matches(tmpdir, err.message, 1, true)
    assert.matches("is a directory", err.message, 1, true)
  end)

  it("returns nil, err (kind foreign) for a file that is not SQLite, and leaves it alone", function()
    local path = fresh_path()
    local f = assert(io.open(path, "wb"))
    local junk = ("this is not a database\0"):rep(400)
    f:write(junk)
    f:close()
    local sp, err = spool.open(path)
    assert.is_nil(sp)
    assert.equal("foreign", err.kind)
    assert.matches(path, err.message, 1, true)
    assert.matches("not an SQLite database; nothing was written to it", err.message, 1, true)
    assert.matches("^foreign: spool ", tostring(err))
    assert.equal(junk, readall(path))
    assert.is_false(exists(path .. "-wal"))
    assert.is_false(exists(path .. "-shm"))
  end)

  it("returns nil, err (never crashes) when the file is corrupted while in use", function()
    local sp, path = open()
    for i = 1, 50 do assert(sp:put(body(i), "R" .. i, T0)) end
    sp:close() -- the last close checkpoints the WAL into the main file
    local f = assert(io.open(path, "r+b"))
    local size = f:seek("end")
    f:seek("set", 4096) -- keep the header page, ruin the tables
    f:write(("\7garbage"):rep(math.floor((size - 4096) / 8)))
    f:close()
    local bad, oerr = spool.open(path)
    if not bad then -- SQLite may notice already
      assert.equal("storage", oerr.kind)
      return
    end
    local calls = {
      function() return bad:put(body(1), "R1", T0) end,
      function() return bad:put_many({ body(1), body(2) }, T0) end,
      function() return bad:claim(5, 30, T0) end,
      function() return bad:stats(T0) end,
      function() return bad:list() end,
    }
    for _, call in ipairs(calls) do
      local ok, err = call()
      assert.is_nil(ok)
      assert.equal("storage", err.kind)
      assert.matches(path, err.message, 1, true)
      assert.matches("malformed", err.message, 1, true)
    end
    bad:close()
  end)

  it("refuses a spool written by a newer version, leaving it alone", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local sp, path = open()
    assert(sp:put(body(1), "R1", T0))
    sp:close()
    sqlite.cli(path, "PRAGMA user_version = 7")
    local before = readall(path)
    local again, err = spool.open(path)
    assert.is_nil(again)
    assert.equal("foreign", err.kind)
    assert.matches("newer version of this library (schema version 7; this one reads up to 3)",
      err.message, 1, true)
    assert.equal(before, readall(path))
  end)
end)

describe("spool put / claim / ack", function()
  local sp
  before_each(function() sp = open() end)
  after_each(function() sp:close() end)

  it("stores bodies byte for byte and hands them out oldest first", function()
    local bin = "{\"x\":\"\0\255\1\"}"
    local a = assert(sp:put(body(1), "R1", T0))
    local b = assert(sp:put(bin, "R2", T0 + 1))
    local c = assert(sp:put(body(3), nil, T0 + 2))
    assert.is_true(a < b and b < c)
    local rows = assert(sp:claim(10, 30, T0 + 5))
    assert.equal(3, #rows)
    assert.same({ id = a, ref = "R1", body = body(1), attempts = 0, created_at = T0, op = "create" }, rows[1])
    assert.same({ id = b, ref = "R2", body = bin, attempts = 0, created_at = T0 + 1, op = "create" }, rows[2])
    assert.same({ id = c, body = body(3), attempts = 0, created_at = T0 + 2, op = "create" }, rows[3])
  end)

  it("claims only due orders, at most max_n", function()
    for i = 1, 5 do assert(sp:put(body(i), "R" .. i, T0 + i)) end
    assert.same({}, sp:claim(10, 30, T0))
    local rows = sp:claim(2, 30, T0 + 10)
    assert.equal(2, #rows)
    assert.same({ "R1", "R2" }, { rows[1].ref, rows[2].ref })
    rows = sp:claim(10, 30, T0 + 3.5)
    assert.same({ "R3" }, { rows[1].ref })
  end)

  it("ack deletes the order; a second ack fails with kind lease", function()
    local id = sp:put(body(1), "R1", T0)
    local rows = sp:claim(1, 30, T0)
    assert.equal(id, rows[1].id)
    assert.is_true(sp:ack(id))
    local ok, err = sp:ack(id)
    assert.is_nil(ok)
    assert.equal("lease", err.kind)
    assert.matches("no longer queued", err.message)
    assert.same({}, sp:claim(10, 30, T0 + 1000))
    local st = sp:stats(T0)
    assert.equal(0, st.queued)
    assert.equal(0, st.bytes)
  end)

  it("refuses to ack an order that was never claimed", function()
    local id = sp:put(body(1), "R1", T0)
    local ok, err = sp:ack(id)
    assert.is_nil(ok)
    assert.equal("lease", err.kind)
    assert.matches("not claimed", err.message)
    assert.equal(1, sp:stats(T0).queued)
  end)

  it("put_many stores a batch in one transaction and returns the ids in order", function()
    local list = {}
    for i = 1, 64 do list[i] = { body = body(i), ref = "R" .. i } end
    list[65] = body(65) -- a bare body string is accepted too
    local ids = assert(sp:put_many(list, T0))
    assert.equal(65, #ids)
    for i = 2, 65 do assert.is_true(ids[i] > ids[i - 1]) end
    local rows = sp:claim(100, 30, T0)
    assert.equal(65, #rows)
    assert.equal("R64", rows[64].ref)
    assert.is_nil(rows[65].ref)
    assert.equal(body(65), rows[65].body)
    assert.same({}, assert(sp:put_many({}, T0)))
  end)

  it("put_many stores a group of several megabytes in one transaction (long WAL writes)", function()
    -- the WAL writes are gathered; one write of 128 KiB or more came back
    -- short from SQLite's unix VFS and the group failed as "disk full"
    local list = {}
    for i = 1, 400 do list[i] = { body = body(i) .. string.rep(" ", 5000), ref = "BIG" .. i } end
    local ids = assert(sp:put_many(list, T0))
    assert.equal(400, #ids)
    local rows = sp:claim(500, 30, T0)
    assert.equal(400, #rows)
    for i = 1, 400 do assert.equal(list[i].body, rows[i].body) end
  end)

  it("put_many raises on a bad entry, naming it, and stores nothing", function()
    local cases = {
      { { { body = "a" }, { ref = "x" } }, "list[2].body" },
      { { { body = "a" }, { body = "" } }, "list[2].body" },
      { { { body = "a", ref = 5 } }, "list[1].ref" },
      { { 42 }, "list[1]" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(sp.put_many, sp, c[1], T0)
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
    assert.equal(0, sp:stats(T0).queued)
  end)

  it("raises on programmer errors", function()
    local id = sp:put(body(1), "R1", T0)
    assert.has_error(function() sp:put(nil) end)
    assert.has_error(function() sp:put("") end)
    assert.has_error(function() sp:put(42) end)
    assert.has_error(function() sp:put("x", 5) end)
    assert.has_error(function() sp:put("x", "r", "now") end)
    assert.has_error(function() sp:claim(0, 30) end)
    assert.has_error(function() sp:claim(1, 0) end)
    assert.has_error(function() sp:claim(1.5, 10) end)
    assert.has_error(function() sp:ack("1") end)
    assert.has_error(function() sp:ack(0) end)
    assert.has_error(function() sp:retry(id, "soon") end)
    assert.has_error(function() sp:kill(id, 42) end)
    assert.has_error(function() sp:kill(id, { status = "bad" }) end)
    assert.has_error(function() sp:list({ limit = 0 }) end)
    assert.has_error(function() sp:list({ deadd = true }) end)
    assert.has_error(function() sp:purge({}) end)
    assert.has_error(function() sp:requeue_dead("some") end)
    local ok, err = pcall(sp.put, sp, 42)
    assert.is_false(ok)
    assert.matches("body must be a non-empty string", err, 1, true)
  end)

  it("raises once closed; close is idempotent", function()
    sp:close()
    sp:close()
    local ok, err = pcall(sp.put, sp, "x")
    assert.is_false(ok)
    assert.matches("spool is closed", err)
    assert.has_error(function() sp:claim(1, 1) end)
    assert.has_error(function() sp:stats() end)
    sp = open() -- for after_each
  end)

  it("uses the wall clock when now is omitted", function()
    local t = spool.now()
    assert.is_true(math.abs(t - os.time()) < 5)
    assert(sp:put(body(1), "R1"))
    local rows = sp:claim(1, 30)
    assert.equal(1, #rows)
    assert(sp:ack(rows[1].id))
  end)
end)

describe("spool retry / release / kill", function()
  local sp
  before_each(function() sp = open() end)
  after_each(function() sp:close() end)

  it("retry counts an attempt, keeps the error and waits until next_at", function()
    local id = sp:put(body(1), "R1", T0)
    sp:claim(1, 30, T0)
    assert.is_true(sp:retry(id, T0 + 60, "network: connection refused"))
    assert.same({}, sp:claim(10, 30, T0 + 59))
    local row = sp:list()[1]
    assert.equal(1, row.attempts)
    assert.equal(T0 + 60, row.next_at)
    assert.equal("network: connection refused", row.last_error)
    assert.is_nil(row.claimed_by)
    local rows = sp:claim(10, 30, T0 + 60)
    assert.equal(1, #rows)
    assert.equal(1, rows[1].attempts)
  end)

  it("retry stores an error object as its one-line text", function()
    local id = sp:put(body(1), "R1", T0)
    sp:claim(1, 30, T0)
    local e = errors.new({ kind = "http", message = "service unavailable", status = 503 })
    assert(sp:retry(id, T0 + 1, e))
    assert.equal(tostring(e), sp:list()[1].last_error)
  end)

  it("release gives the order back without counting an attempt", function()
    local id = sp:put(body(1), "R1", T0)
    sp:claim(1, 300, T0)
    assert.same({}, sp:claim(1, 300, T0 + 1))
    assert.is_true(sp:release(id))
    local rows = sp:claim(1, 300, T0 + 1)
    assert.equal(id, rows[1].id)
    assert.equal(0, rows[1].attempts)
  end)

  it("kill moves the order to dead letters with its error, in one step", function()
    local id = sp:put(body(7), "R7", T0)
    sp:claim(1, 30, T0)
    assert(sp:retry(id, T0, "timeout"))
    sp:claim(1, 30, T0 + 1)
    local e = errors.new({ kind = "api", message = "bad order", status = 400, code = "MalformedJson" })
    assert.is_true(sp:kill(id, e, T0 + 2))
    local st = sp:stats(T0 + 2)
    assert.equal(0, st.queued)
    assert.equal(1, st.dead)
    local d = sp:list({ dead = true, body = true })[1]
    assert.equal(id, d.id)
    assert.equal("R7", d.ref)
    assert.equal(body(7), d.body)
    assert.equal(#body(7), d.bytes)
    assert.equal("api", d.kind)
    assert.equal(400, d.status)
    assert.equal("MalformedJson", d.code)
    assert.equal("bad order", d.message)
    assert.equal(2, d.attempts) -- one retry plus the failed attempt
    assert.equal(T0, d.created_at)
    assert.equal(T0 + 2, d.failed_at)
  end)

  it("kill accepts a plain message (kind failed)", function()
    local id = sp:put(body(1), "R1", T0)
    sp:claim(1, 30, T0)
    assert(sp:kill(id, "gave up", T0))
    local d = sp:list({ dead = true })[1]
    assert.equal("failed", d.kind)
    assert.equal("gave up", d.message)
    assert.is_nil(d.status)
    assert.is_nil(d.body)
  end)

  it("retry, kill and release need the lease", function()
    local id = sp:put(body(1), "R1", T0)
    for _, call in ipairs({
      function() return sp:retry(id, T0, "x") end,
      function() return sp:kill(id, "x", T0) end,
      function() return sp:release(id) end,
    }) do
      local ok, err = call()
      assert.is_nil(ok)
      assert.equal("lease", err.kind)
    end
    assert.equal(1, sp:stats(T0).queued)
    assert.equal(0, sp:stats(T0).dead)
  end)
end)

describe("spool leases", function()
  it("a claimed order is not claimable again until its lease runs out", function()
    local a, path = open()
    local b = open(nil, path)
    local id = a:put(body(1), "R1", T0)
    assert.equal(1, #a:claim(5, 30, T0))
    assert.same({}, a:claim(5, 30, T0 + 10))
    assert.same({}, b:claim(5, 30, T0 + 29.9))
    local st = a:stats(T0 + 10)
    assert.equal(1, st.claimed)
    assert.equal(0, st.due)
    -- the lease runs out (as if a crashed): b takes the order over
    local rows = b:claim(5, 30, T0 + 30)
    assert.equal(id, rows[1].id)
    local ok, err = a:ack(id)
    assert.is_nil(ok)
    assert.equal("lease", err.kind)
    assert.matches(b:owner(), err.message, 1, true)
    assert.is_true(b:ack(id))
    a:close()
    b:close()
  end)

  it("stats counts due, claimed and waiting orders apart", function()
    local sp = open()
    local ids = assert(sp:put_many({ body(1), body(2), body(3), body(4), body(5), body(6) }, T0))
    local rows = sp:claim(3, 30, T0)
    assert(sp:retry(rows[1].id, T0 + 100, "later")) -- waiting
    local st = sp:stats(T0 + 10)
    assert.same({ 6, 3, 2, 0 }, { st.queued, st.due, st.claimed, st.dead })
    assert.equal(10, st.oldest_age)
    st = sp:stats(T0 + 40) -- the leases ran out: those two are due again
    assert.same({ 5, 0 }, { st.due, st.claimed })
    st = sp:stats(T0 + 100)
    assert.same({ 6, 0 }, { st.due, st.claimed })
    assert.equal(6, #ids)
    sp:close()
  end)

  it("next_due says when the earliest unclaimed order is due", function()
    local sp = open()
    assert.is_false(sp:next_due(T0))
    sp:put(body(1), "R1", T0 + 5)
    sp:put(body(2), "R2", T0 + 9)
    assert.equal(T0 + 5, sp:next_due(T0))
    sp:claim(1, 100, T0 + 5)
    assert.equal(T0 + 9, sp:next_due(T0 + 5))
    sp:close()
  end)
end)

describe("spool restart recovery", function()
  it("keeps rows, attempts, next_at and errors across close and reopen", function()
    local sp, path = open()
    local ids = assert(sp:put_many({ { body = body(1), ref = "R1" }, { body = body(2), ref = "R2" } }, T0))
    sp:claim(2, 30, T0)
    assert(sp:retry(ids[1], T0 + 100, "timeout"))
    assert(sp:kill(ids[2], { kind = "api", status = 422 }, T0))
    sp:close()
    collectgarbage()

    local again = open(nil, path)
    local row = again:list()[1]
    assert.equal(ids[1], row.id)
    assert.equal(1, row.attempts)
    assert.equal(T0 + 100, row.next_at)
    assert.equal("timeout", row.last_error)
    assert.equal(422, again:list({ dead = true })[1].status)
    local rows = again:claim(5, 30, T0 + 100)
    assert.equal(body(1), rows[1].body)
    assert.equal(1, rows[1].attempts)
    -- new ids never reuse old ones
    local id3 = again:put(body(3), "R3", T0)
    assert.is_true(id3 > ids[2])
    again:close()
  end)

  it("keeps every returned put across kill -9, and the dead process's lease runs out", function()
    local path = fresh_path()
    local script = child_script("crash", ([[
      local spool = require("optimizely.offline.spool")
      local sp = assert(spool.open(%q))
      local ids = {}
      for i = 1, 20 do ids[#ids + 1] = assert(sp:put("body-" .. i, "C" .. i, %d)) end
      assert(sp:put_many({ "bulk-1", "bulk-2" }, %d))
      assert(#sp:claim(5, 60, %d) == 5)
      io.stdout:write("ready\n")
      io.stdout:flush()
      local pid = sp:owner():match("^(%%d+):")
      os.execute("kill -9 " .. pid)
      io.stdout:write("still alive\n")
    ]]):format(path, T0, T0, T0))
    local p = assert(io.popen(interpreter() .. " " .. sh_quote(script) .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    assert.matches("^ready\n", out) -- the shell may add "Killed"
    assert.not_matches("still alive", out, 1, true)

    local sp = open(nil, path)
    local st = sp:stats(T0 + 1)
    assert.equal(22, st.queued)
    assert.equal(5, st.claimed) -- still leased by the dead process
    for _, r in ipairs(sp:claim(100, 60, T0 + 1)) do assert(sp:ack(r.id)) end
    local rows = sp:claim(100, 60, T0 + 61) -- the dead process's lease ran out
    assert.equal(5, #rows)
    assert.equal("body-1", rows[1].body)
    sp:close()
  end)
end)

describe("spool bounds", function()
  it("max_orders refuses with kind full, naming the bound", function()
    local sp = open({ max_orders = 3 })
    assert(sp:put_many({ body(1), body(2) }, T0))
    assert(sp:put(body(3), "R3", T0))
    local id, err = sp:put(body(4), "R4", T0)
    assert.is_nil(id)
    assert.is_true(errors.is(err))
    assert.equal("full", err.kind)
    assert.equal("max_orders", err.bound)
    assert.is_false(err.retryable)
    assert.matches("max_orders 3", err.message, 1, true)
    -- a batch is all or nothing
    local rows = sp:claim(1, 30, T0)
    assert(sp:ack(rows[1].id))
    local ids, err2 = sp:put_many({ body(5), body(6) }, T0)
    assert.is_nil(ids)
    assert.equal("max_orders", err2.bound)
    assert.equal(2, sp:stats(T0).queued)
    assert(sp:put(body(5), "R5", T0))
    assert.equal(0, sp:stats(T0).dead) -- nothing was dropped
    sp:close()
  end)

  it("max_bytes refuses with kind full, naming the bound", function()
    local sp = open({ max_bytes = 1000 })
    assert(sp:put(("a"):rep(600), "R1", T0))
    local id, err = sp:put(("b"):rep(401), "R2", T0)
    assert.is_nil(id)
    assert.equal("full", err.kind)
    assert.equal("max_bytes", err.bound)
    assert.matches("max_bytes 1000", err.message, 1, true)
    assert(sp:put(("c"):rep(400), "R3", T0))
    assert.equal(1000, sp:stats(T0).bytes)
    local _, big = sp:put(("d"):rep(1001), "R4", T0)
    assert.equal("max_bytes", big.bound)
    assert.matches("larger than max_bytes", big.message)
    sp:close()
  end)

  it("on_full = drop_oldest moves the oldest unclaimed orders to dead letters", function()
    local sp = open({ max_orders = 3, on_full = "drop_oldest" })
    local ids = {}
    for i = 1, 3 do ids[i] = sp:put(body(i), "R" .. i, T0 + i) end
    local claimed = sp:claim(1, 60, T0 + 10) -- R1 is being delivered: never dropped
    assert.equal(ids[1], claimed[1].id)
    local id4 = assert(sp:put(body(4), "R4", T0 + 10))
    local dead = sp:list({ dead = true })
    assert.equal(1, #dead)
    assert.equal(ids[2], dead[1].id)
    assert.equal("dropped", dead[1].kind)
    assert.matches("max_orders", dead[1].message)
    local st = sp:stats(T0 + 10)
    assert.equal(3, st.queued)
    assert.equal(1, st.dead)
    assert(sp:ack(ids[1]))
    assert(id4)
    sp:close()
  end)

  it("drop_oldest still refuses when every queued order is being delivered", function()
    local sp = open({ max_orders = 2, on_full = "drop_oldest" })
    sp:put_many({ body(1), body(2) }, T0)
    sp:claim(2, 60, T0)
    local id, err = sp:put(body(3), "R3", T0)
    assert.is_nil(id)
    assert.equal("full", err.kind)
    assert.matches("being delivered", err.message)
    sp:close()
  end)

  it("drop_oldest makes room by bytes too", function()
    local sp = open({ max_bytes = 1000, on_full = "drop_oldest" })
    sp:put(("a"):rep(400), "A", T0)
    sp:put(("b"):rep(400), "B", T0 + 1)
    assert(sp:put(("c"):rep(500), "C", T0 + 2))
    local dead = sp:list({ dead = true })
    assert.equal(1, #dead)
    assert.equal("A", dead[1].ref)
    assert.equal(900, sp:stats(T0 + 2).bytes)
    sp:close()
  end)

  it("max_age expires old unclaimed orders to dead letters on put and claim", function()
    local sp = open({ max_age = 100 })
    local old = sp:put(body(1), "OLD", T0)
    local held = sp:put(body(2), "HELD", T0)
    sp:put(body(3), "NEW", T0 + 50)
    local rows = sp:claim(1, 1000, T0) -- OLD: claimed, so it is not expired under the worker
    assert.equal(old, rows[1].id)
    -- claim at T0+150: HELD (unclaimed, 150 s old) expires; NEW is handed out
    rows = sp:claim(10, 30, T0 + 150)
    assert.equal(1, #rows)
    assert.equal("NEW", rows[1].ref)
    local dead = sp:list({ dead = true })
    assert.equal(1, #dead)
    assert.equal(held, dead[1].id)
    assert.equal("expired", dead[1].kind)
    assert.matches("max_age 100", dead[1].message)
    -- on put: once OLD's lease is given back, the next put expires it
    assert(sp:release(old))
    assert(sp:put(body(4), "LATE", T0 + 160))
    assert.equal(2, sp:stats(T0 + 160).dead)
    sp:close()
  end)

  it("requeue_dead refuses with kind full rather than exceed a bound", function()
    local sp = open({ max_orders = 1 })
    local id = sp:put(body(1), "R1", T0)
    sp:claim(1, 30, T0)
    sp:kill(id, "x", T0)
    sp:put(body(2), "R2", T0)
    local n, err = sp:requeue_dead(id, T0)
    assert.is_nil(n)
    assert.equal("full", err.kind)
    assert.equal(1, sp:stats(T0).dead)
    sp:close()
  end)
end)

describe("spool dead letters", function()
  local sp
  -- five dead letters, failed at T0+1 .. T0+5
  before_each(function()
    sp = open()
    for i = 1, 5 do
      local id = sp:put(body(i), "D" .. i, T0)
      sp:claim(1, 30, T0)
      sp:kill(id, { kind = "api", status = 400, message = "bad " .. i }, T0 + i)
    end
    sp:put(body(99), "Q", T0)
  end)
  after_each(function() sp:close() end)

  it("lists them in pages (limit/offset and keyset after)", function()
    local all = sp:list({ dead = true })
    assert.equal(5, #all)
    local page = sp:list({ dead = true, limit = 2, offset = 2 })
    assert.same({ all[3].id, all[4].id }, { page[1].id, page[2].id })
    page = sp:list({ dead = true, limit = 2, after = all[4].id })
    assert.equal(1, #page)
    assert.equal(all[5].id, page[1].id)
    assert.equal(1, #sp:list())
    assert.equal("Q", sp:list()[1].ref)
  end)

  it("requeue_dead puts one back with the same id and attempts reset", function()
    local d = sp:list({ dead = true })[2]
    assert.equal(1, sp:requeue_dead(d.id, T0 + 10))
    assert.equal(0, sp:requeue_dead(d.id, T0 + 10))
    local st = sp:stats(T0 + 10)
    assert.equal(4, st.dead)
    assert.equal(2, st.queued)
    local rows = sp:claim(10, 30, T0 + 10)
    assert.equal(2, #rows)
    local back
    for _, r in ipairs(rows) do if r.id == d.id then back = r end end
    assert.equal(0, back.attempts)
    assert.equal(body(2), back.body)
  end)

  it("requeue_dead('all') empties the dead letters", function()
    assert.equal(5, sp:requeue_dead("all", T0 + 10))
    local st = sp:stats(T0 + 10)
    assert.equal(0, st.dead)
    assert.equal(6, st.queued)
    local bytes = #body(99)
    for i = 1, 5 do bytes = bytes + #body(i) end
    assert.equal(bytes, st.bytes)
  end)

  it("purge deletes dead letters older than older_than, or all", function()
    assert.equal(2, sp:purge({ dead = true, older_than = 3, now = T0 + 6 })) -- failed at T0+1, T0+2
    assert.equal(3, sp:stats(T0).dead)
    assert.equal(3, sp:purge({ dead = true }))
    assert.equal(0, sp:stats(T0).dead)
    assert.equal(1, sp:stats(T0).queued)
  end)

  it("purge of queued orders spares the ones being delivered", function()
    local held = sp:put(body(100), "H", T0)
    local rows = sp:claim(10, 30, T0)
    assert.equal(2, #rows)
    assert(sp:release(rows[1].id))
    assert.equal(1, sp:purge({ queued = true, now = T0 + 1 }))
    local left = sp:list()
    assert.equal(1, #left)
    assert.equal(held, left[1].id)
    assert.equal(5, sp:stats(T0).dead)
  end)

  it("export_dead hands every dead letter with its body to a function", function()
    local seen = {}
    local n = assert(sp:export_dead(function(row) seen[#seen + 1] = row end, { batch = 2 }))
    assert.equal(5, n)
    for i = 1, 5 do
      assert.equal("D" .. i, seen[i].ref)
      assert.equal(body(i), seen[i].body)
      assert.equal("bad " .. i, seen[i].message)
    end
  end)

  it("export_dead writes NDJSON (one body per line) to a file", function()
    local path = tmpdir .. "/dead.ndjson"
    local f = assert(io.open(path, "wb"))
    assert.equal(5, assert(sp:export_dead(f, { batch = 3 })))
    f:close()
    local lines = {}
    for line in io.lines(path) do lines[#lines + 1] = line end
    assert.equal(5, #lines)
    assert.equal(body(3), lines[3])
  end)

  it("export_dead stops when the sink says so", function()
    local n = 0
    local ok, err = sp:export_dead(function()
      n = n + 1
      if n == 2 then return nil, "disk full" end
    end)
    assert.is_nil(ok)
    assert.matches("disk full", err.message)
    assert.equal(2, n)
    assert.has_error(function() sp:export_dead(42) end)
    assert.has_error(function() sp:export_dead(print, { size = 1 }) end)
  end)
end)

describe("spool locking", function()
  it("returns kind busy (retryable) when another process holds the lock past busy_timeout", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local sp, path = open({ busy_timeout = 0.05 })
    local locked, release = tmpdir .. "/locked", tmpdir .. "/release"
    os.remove(locked)
    os.remove(release)
    -- the sqlite3 shell holds a write lock until we create the release file
    local hold = tmpdir .. "/hold.sh"
    local f = assert(io.open(hold, "wb"))
    f:write(("touch %s\nwhile [ ! -e %s ]; do sleep 0.02; done\n"):format(sh_quote(locked), sh_quote(release)))
    f:close()
    local holder = assert(io.popen("sqlite3 " .. sh_quote(path) .. " >/dev/null 2>&1", "w"))
    holder:write("BEGIN IMMEDIATE;\nINSERT INTO totals SELECT 1, 0, 0 WHERE 0;\n.shell sh " .. hold .. "\nCOMMIT;\n")
    holder:flush()
    for _ = 1, 3000 do
      if exists(locked) then break end
      core.sleep(0.01)
    end
    local was_locked = exists(locked)
    local id, err = sp:put(body(1), "R1", T0)
    -- let the holder go before asserting, so a failure cannot leave it hanging
    assert(io.open(release, "w")):close()
    holder:close()
    assert.is_true(was_locked)
    assert.is_nil(id)
    assert.equal("busy", err.kind)
    assert.is_true(err.retryable)
    assert.matches(path, err.message, 1, true)
    assert.matches("locked", err.message)
    assert(sp:put(body(1), "R1", T0))
    sp:close()
  end)

  it("a second handle on the file in one process leaves the first one's locks in place", function()
    -- Checking a file it opens again, a process must not open() and close()
    -- it: that drops every POSIX lock the process holds on it, and the next
    -- process to close the file would take it for unused and remove the WAL
    -- and reset the -shm under the first handle.
    local sp1, path = open()
    assert(sp1:put(body(1), "R1", T0))
    local sp2 = open(nil, path)
    assert(sp2:put(body(2), "R2", T0))
    sp2:close()
    local script = child_script("other", ([[
      local spool = require("optimizely.offline.spool")
      local sp = assert(spool.open(%q))
      assert(sp:put("body-3", "R3", 1))
      sp:close()
      io.stdout:write("ok\n")
    ]]):format(path))
    assert.equal("ok\n", sys.capture(interpreter() .. " " .. sh_quote(script) .. " 2>&1"))
    assert.is_true(exists(path .. "-wal")) -- still in use here: the other process left it
    assert(sp1:put(body(4), "R4", T0))
    assert.equal(4, sp1:stats(T0).queued)
    sp1:close()
  end)

  it("two processes putting, claiming and acking at once deliver every order exactly once", function()
    local path = fresh_path()
    assert(spool.open(path)):close() -- create the schema once up front
    local per = 300
    local src = ([[
      local spool = require("optimizely.offline.spool")
      local core = require("optimizely.offline.core")
      local me, path, dir, per = arg[1], %q, %q, %d
      local sp = assert(spool.open(path, { busy_timeout = 30 }))
      local out = assert(io.open(dir .. "/acks." .. me, "wb"))
      local function exists(p) local f = io.open(p) if f then f:close() return true end end
      local function drain(max)
        local rows = assert(sp:claim(max, 600))
        for _, r in ipairs(rows) do
          assert(sp:ack(r.id))
          out:write(r.ref, "\n")
        end
        return #rows
      end
      local i = 0
      while i < per do
        -- interleave single puts, small batches and claim+ack rounds
        if i %% 3 == 0 then
          local batch = {}
          for k = 1, math.min(5, per - i) do
            batch[k] = { body = me .. "-body-" .. (i + k), ref = me .. "-" .. (i + k) }
          end
          assert(sp:put_many(batch))
          i = i + #batch
        else
          i = i + 1
          assert(sp:put(me .. "-body-" .. i, me .. "-" .. i))
        end
        drain(1) -- fewer than put: a backlog builds up that both then compete for
      end
      assert(io.open(dir .. "/done." .. me, "w")):close()
      for _ = 1, 200000 do
        if drain(16) == 0 then
          if exists(dir .. "/done.a") and exists(dir .. "/done.b") and sp:stats().queued == 0 then break end
          core.sleep(0.002)
        end
      end
      out:close()
      sp:close()
      io.stdout:write("ok\n")
    ]]):format(path, tmpdir, per)
    local script = child_script("worker", src)
    os.remove(tmpdir .. "/done.a")
    os.remove(tmpdir .. "/done.b")
    local procs = {}
    for _, me in ipairs({ "a", "b" }) do
      procs[me] = assert(io.popen(interpreter() .. " " .. sh_quote(script) .. " " .. me .. " 2>&1"))
    end
    for _, me in ipairs({ "a", "b" }) do
      local out = procs[me]:read("*a")
      procs[me]:close()
      assert.equal("ok\n", out)
    end
    local count, total = {}, 0
    for _, me in ipairs({ "a", "b" }) do
      for ref in readall(tmpdir .. "/acks." .. me):gmatch("[^\n]+") do
        count[ref] = (count[ref] or 0) + 1
        total = total + 1
      end
    end
    assert.equal(2 * per, total)
    for _, me in ipairs({ "a", "b" }) do
      for i = 1, per do
        assert.equal(1, count[me .. "-" .. i], me .. "-" .. i)
      end
    end
    local sp = open(nil, path)
    local st = sp:stats()
    assert.equal(0, st.queued)
    assert.equal(0, st.dead)
    sp:close()
  end)
end)

describe("spool channels", function()
  local sp
  before_each(function() sp = open() end)
  after_each(function() sp:close() end)

  it("put and put_many store each order's channel; claim and list return it", function()
    local a = assert(sp:put(body(1), "R1", T0, "store"))
    local b = assert(sp:put(body(2), "R2", T0))
    local ids = assert(sp:put_many({ { body = body(3), ref = "R3", channel = "callcentre" },
      { body = body(4), ref = "R4" }, body(5) }, T0))
    local rows = assert(sp:claim(10, 30, T0))
    local by_id = {}
    for _, r in ipairs(rows) do by_id[r.id] = r end
    assert.equal("store", by_id[a].channel)
    assert.is_nil(by_id[b].channel) -- the client's default channel
    assert.equal("callcentre", by_id[ids[1]].channel)
    assert.is_nil(by_id[ids[2]].channel)
    assert.is_nil(by_id[ids[3]].channel)
    assert.equal(T0, by_id[a].created_at)
    local listed = sp:list()
    assert.equal("store", listed[1].channel)
    assert.equal("callcentre", listed[3].channel)
  end)

  it("a dead letter keeps its channel (kill, expiry, drop) and requeue brings it back", function()
    sp:close()
    local path
    sp, path = open({ max_age = 100, max_orders = 2, on_full = "drop_oldest" })
    local killed = assert(sp:put(body(1), "K", T0, "store"))
    assert.equal(1, #sp:claim(1, 30, T0))
    assert(sp:kill(killed, { kind = "api", status = 400 }, T0))
    assert(sp:put(body(2), "E", T0, "app"))        -- expires at T0 + 150
    assert(sp:put(body(3), "D", T0 + 120, "till"))  -- dropped for F and G
    assert(sp:put(body(4), "F", T0 + 150, "web"))   -- expiry of E makes room for F
    assert(sp:put(body(5), "G", T0 + 151))          -- drops D
    local dead = {}
    for _, d in ipairs(sp:list({ dead = true })) do dead[d.ref] = d end
    assert.equal("store", dead.K.channel)
    assert.equal("app", dead.E.channel)
    assert.equal("expired", dead.E.kind)
    assert.equal("till", dead.D.channel)
    assert.equal("dropped", dead.D.kind)
    assert(sp:purge({ queued = true, now = T0 + 151 }))
    sp:close()
    sp = open(nil, path) -- no max_orders: room for all three
    assert.equal(3, sp:requeue_dead("all", T0 + 200))
    local back = {}
    for _, r in ipairs(sp:claim(10, 30, T0 + 200)) do back[r.ref] = r end
    assert.equal("store", back.K.channel)
    assert.equal("app", back.E.channel)
    assert.equal("till", back.D.channel)
    assert.equal(T0 + 200, back.K.created_at)
  end)

  it("raises on a channel that is not a string", function()
    assert.has_error(function() sp:put(body(1), "R1", T0, 5) end,
      "spool:put: channel must be a string or nil, got number")
    local ok, err = pcall(sp.put_many, sp, { { body = body(1), channel = {} } }, T0)
    assert.is_false(ok)
    assert.matches("list[1].channel must be a string or nil", err, 1, true)
  end)
end)

describe("spool ack_many", function()
  it("acks a batch in one call", function()
    local sp = open()
    assert(sp:put_many({ body(1), body(2), body(3) }, T0))
    local rows = sp:claim(3, 30, T0)
    assert.is_true(sp:ack_many({ rows[1].id, rows[2].id, rows[3].id }))
    assert.equal(0, sp:stats(T0).queued)
    assert.is_true(sp:ack_many({}))
    sp:close()
  end)

  it("acks the orders it holds and reports the ones it lost (kind lease)", function()
    local a, path = open()
    local b = open(nil, path)
    assert(a:put_many({ body(1), body(2), body(3) }, T0))
    local rows = a:claim(3, 30, T0)
    local taken = b:claim(1, 30, T0 + 30) -- a's leases ran out: b takes the oldest
    assert.equal(rows[1].id, taken[1].id)
    local ok, err = a:ack_many({ rows[1].id, rows[2].id, rows[3].id })
    assert.is_nil(ok)
    assert.equal("lease", err.kind)
    assert.matches("order " .. rows[1].id .. " refused: it is claimed by " .. b:owner(), err.message,
      1, true)
    assert.matches("(1 of 3 in this batch)", err.message, 1, true)
    local left = a:list()
    assert.equal(1, #left) -- the two a still held are gone, b's is not
    assert.equal(rows[1].id, left[1].id)
    assert.has_error(function() a:ack_many({ 1, "2" }) end)
    a:close()
    b:close()
  end)
end)

-- A version-1 spool as the previous release wrote it (schema and data).
local V1_SQL = [[
PRAGMA journal_mode=WAL;
CREATE TABLE orders( id INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT, body BLOB NOT NULL, bytes INT NOT NULL,
 created_at REAL NOT NULL, attempts INT NOT NULL DEFAULT 0, next_at REAL NOT NULL, claimed_by TEXT,
 claimed_until REAL, last_error TEXT);
CREATE INDEX orders_next_at ON orders(next_at);
CREATE INDEX orders_created_at ON orders(created_at);
CREATE TABLE dead( id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL, created_at REAL,
 failed_at REAL NOT NULL, attempts INT NOT NULL, kind TEXT NOT NULL, status INT, code TEXT, message TEXT);
CREATE INDEX dead_failed_at ON dead(failed_at);
CREATE TABLE totals(one INTEGER PRIMARY KEY CHECK (one = 1), n INT NOT NULL, bytes INT NOT NULL);
INSERT INTO totals VALUES (1, 0, 0);
CREATE TRIGGER orders_ins AFTER INSERT ON orders BEGIN
 UPDATE totals SET n = n + 1, bytes = bytes + NEW.bytes WHERE one = 1; END;
CREATE TRIGGER orders_del AFTER DELETE ON orders BEGIN
 UPDATE totals SET n = n - 1, bytes = bytes - OLD.bytes WHERE one = 1; END;
PRAGMA user_version = 1;
INSERT INTO orders(ref, body, bytes, created_at, next_at, attempts, last_error)
 VALUES ('Q1', 'queued-1', 8, 1700000000, 1700000100, 2, 'timeout');
INSERT INTO orders(ref, body, bytes, created_at, next_at) VALUES ('A2', 'acked-2', 7, 1700000000, 1700000000);
INSERT INTO orders(ref, body, bytes, created_at, next_at) VALUES ('D3', 'dead-3', 6, 1700000000, 1700000000);
INSERT INTO dead SELECT id, ref, body, created_at, 1700000050, 1, 'api', 400, 'Bad', 'bad order'
 FROM orders WHERE id = 3;
DELETE FROM orders WHERE id IN (2, 3);
INSERT INTO orders(ref, body, bytes, created_at, next_at) VALUES ('A4', 'acked-4', 7, 1700000000, 1700000000);
DELETE FROM orders WHERE id = 4;
]]

describe("spool migration from version 1", function()
  it("adds channels in place, keeps every row and never reuses an id", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local path = fresh_path()
    sqlite.cli(path, V1_SQL)
    assert(core.chmod(path, tonumber("600", 8))) -- as version 1 made it (the CLI follows the umask)
    assert.equal("1", sqlite.cli(path, "PRAGMA user_version"))
    local sp = open(nil, path)
    local st = sp:stats(T0)
    assert.equal(1, st.queued)
    assert.equal(8, st.bytes)
    assert.equal(1, st.dead)
    local q = sp:list()[1]
    assert.same({ 1, "Q1", 2, "timeout", T0 + 100 }, { q.id, q.ref, q.attempts, q.last_error, q.next_at })
    assert.is_nil(q.channel)
    local d = sp:list({ dead = true, body = true })[1]
    assert.same({ 3, "D3", "dead-3", "api", 400 }, { d.id, d.ref, d.body, d.kind, d.status })
    -- ids continue after every id ever handed out (4 was acked), in orders and dead
    assert.equal(5, assert(sp:put(body(5), "N5", T0, "store")))
    assert.equal(1, assert(sp:requeue_dead(3, T0)))
    local rows = sp:claim(10, 30, T0 + 100)
    assert.equal(3, #rows)
    assert.equal("store", rows[3].channel)
    sp:close()
    assert.equal("3", sqlite.cli(path, "PRAGMA user_version"))
    assert.equal(tostring(0x4F4F5350), sqlite.cli(path, "PRAGMA application_id"))
    -- the same schema as a new spool's
    local schema = "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master"
      .. " WHERE name NOT LIKE 'sqlite_%' ORDER BY name)"
    local made, fresh = open()
    made:close()
    assert.equal(sqlite.cli(fresh, schema), sqlite.cli(path, schema))
    -- a second open finds nothing to do
    local again = open(nil, path)
    assert.equal(3, again:stats(T0).queued)
    again:close()
  end)
end)

describe("spool refuses files that are not its own", function()
  local function refused(path, pattern)
    local before = readall(path)
    local sp, err = spool.open(path)
    assert.is_nil(sp)
    assert.is_true(errors.is(err))
    assert.equal("foreign", err.kind)
    assert.matches(path, err.message, 1, true)
    assert.matches(pattern, err.message, 1, true)
    assert.matches("nothing was written to it", err.message, 1, true)
    assert.equal(before, readall(path)) -- byte for byte
    return err
  end

  it("another application's SQLite database: unchanged, no -wal, journal mode kept", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local path = fresh_path()
    sqlite.cli(path, "CREATE TABLE contacts(email TEXT); INSERT INTO contacts VALUES ('a@example.com');")
    refused(path, "not a spool file: an SQLite database in rollback-journal mode")
    assert.is_false(exists(path .. "-wal"))
    assert.is_false(exists(path .. "-shm"))
    assert.equal("delete", sqlite.cli(path, "PRAGMA journal_mode"))
    assert.equal("contacts", sqlite.cli(path, "SELECT group_concat(name) FROM sqlite_master"))
  end)

  it("a database stamped with another application_id", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local path = fresh_path()
    sqlite.cli(path, "PRAGMA journal_mode=WAL; PRAGMA application_id = 1234; CREATE TABLE t(x);")
    refused(path, "another application (application_id 0x000004d2)")
  end)

  it("a WAL-mode database without the spool's tables: its file stays unchanged", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local path = fresh_path()
    sqlite.cli(path, "PRAGMA journal_mode=WAL; CREATE TABLE orders(x); INSERT INTO orders VALUES (1);")
    refused(path, "an SQLite database without the spool's tables")
    assert.equal("1", sqlite.cli(path, "SELECT count(*) FROM orders"))
    assert.equal("0", sqlite.cli(path, "SELECT count(*) FROM sqlite_master WHERE name = 'dead'"))
  end)

  it("a text file, however short", function()
    for _, text in ipairs({ "x", "order,total\nR1,9.99\n" }) do
      local path = fresh_path()
      local f = assert(io.open(path, "wb"))
      f:write(text)
      f:close()
      refused(path, "not an SQLite database")
    end
  end)

  it("a dangling symbolic link (rather than create its target)", function()
    local link, target = tmpdir .. "/dangling.db", tmpdir .. "/missing-target.db"
    assert(sys.run("ln -s " .. sh_quote(target) .. " " .. sh_quote(link)))
    local sp, err = spool.open(link)
    assert.is_nil(sp)
    assert.equal("storage", err.kind)
    assert.matches("symbolic link to a missing file", err.message, 1, true)
    assert.is_false(exists(target))
  end)
end)

describe("spool refuses a file another user could read or made (issue 19)", function()
  local function is_root() return sys.capture("id -u") == "0\n" end

  -- open refuses: kind storage, the message names `file` and says why; the
  -- file keeps its content, owner and mode
  local function refused(path, file, why)
    local before_id, _, before_mode = core.file_id(file, true)
    local before = sys.read_file(file)
    local sp, err = spool.open(path)
    assert.is_nil(sp)
    assert.is_true(errors.is(err))
    assert.equal("storage", err.kind)
    assert.matches(file, err.message, 1, true)
    assert.matches(why, err.message, 1, true)
    local id, _, mode = core.file_id(file, true)
    assert.equal(before_id, id)
    assert.equal(before_mode, mode)
    assert.equal(before, sys.read_file(file))
  end

  local function touch(path, mode, owner)
    local f = assert(io.open(path, "wb"))
    f:close()
    assert(core.chmod(path, tonumber(mode, 8)))
    if owner then assert(sys.run("chown " .. owner .. " " .. sh_quote(path))) end
  end

  it("an empty 0666 file someone pre-created (the sticky /tmp case)", function()
    local path = fresh_path()
    touch(path, "666")
    refused(path, path, "its mode 0666 lets other users read or write it")
  end)

  it("a file owned by another user (nobody), even 0600", function()
    if not is_root() then return pending("needs root to chown") end
    local path = fresh_path()
    touch(path, "600", "nobody")
    refused(path, path, "it belongs to another user")
  end)

  it("a spool of ours made group-readable later", function()
    local sp, path = open()
    assert(sp:put(body(1), "R1", T0))
    sp:close()
    assert(core.chmod(path, tonumber("640", 8)))
    refused(path, path, "its mode 0640")
  end)

  it("a -wal or -shm someone pre-created beside it (owned by nobody, or 0666)", function()
    for _, suffix in ipairs({ "-wal", "-shm" }) do
      local path = fresh_path()
      if is_root() then
        touch(path .. suffix, "600", "nobody")
        refused(path, path .. suffix, "it belongs to another user")
        os.remove(path .. suffix)
      end
      touch(path .. suffix, "666")
      refused(path, path .. suffix, "its mode 0666")
    end
  end)

  it("a symbolic link to a spool (never opened through one)", function()
    local sp, target = open()
    sp:close()
    local link = tmpdir .. "/link-to-spool.db"
    assert(sys.run("ln -s " .. sh_quote(target) .. " " .. sh_quote(link)))
    local nsp, err = spool.open(link)
    assert.is_nil(nsp)
    assert.equal("storage", err.kind)
    assert.matches("is a symbolic link", err.message, 1, true)
  end)
end)

describe("spool files", function()
  it("takes a path beginning with file: as a file name, never an SQLite URI", function()
    local dir = tmpdir .. "/uri"
    assert(sys.run("mkdir -p " .. sh_quote(dir)))
    local name = "file:plain.db?mode=memory&cache=shared"
    local script = child_script("uri", ([[
      local spool = require("optimizely.offline.spool")
      local sp = assert(spool.open(%q))
      assert(sp:put("body", "R1", 1))
      sp:close()
      io.stdout:write("ok\n")
    ]]):format(name))
    local out = sys.capture("cd " .. sh_quote(dir) .. " && " .. interpreter() .. " " .. sh_quote(script) .. " 2>&1")
    assert.equal("ok\n", out)
    -- a real file of exactly that name holds the order (a URI would have
    -- made an in-memory database, or a file named plain.db)
    assert.is_true(exists(dir .. "/" .. name))
    assert.is_false(exists(dir .. "/plain.db"))
    local sp = open(nil, dir .. "/" .. name)
    assert.equal(1, sp:stats().queued)
    sp:close()
  end)

  it("creates the spool, its -wal and -shm 0600 under umask 022", function()
    local old = core.umask(tonumber("022", 8))
    local ok, err = pcall(function()
      local sp, path = open()
      assert(sp:put(body(1), "R1", T0))
      for _, p in ipairs({ path, path .. "-wal", path .. "-shm" }) do
        local id, kind, mode = core.file_id(p)
        assert(id, kind)
        assert.equal("file", kind)
        assert.equal("600", ("%o"):format(mode), p)
      end
      sp:close()
    end)
    core.umask(old)
    assert(ok, err)
  end)
end)

describe("spool on a full disk", function()
  -- Fills the spool with 2 KiB orders until a put fails; returns that error
  -- and the ids stored.
  local function fill(sp)
    local ids = {}
    for i = 1, 100000 do
      local id, err = sp:put(("x"):rep(2048) .. i, "R" .. i, T0)
      if not id then return err, ids end
      ids[#ids + 1] = id
    end
    error("the spool never filled up")
  end

  local function assert_disk_full(err, path)
    assert.is_true(errors.is(err))
    assert.equal("storage", err.kind)
    assert.equal(13, err.sqlite_code % 256) -- SQLITE_FULL
    assert.is_false(err.retryable)
    assert.matches(path, err.message, 1, true)
    assert.matches("disk full", err.message, 1, true)
  end

  it("every write reports kind storage, 'disk full', and the spool works again once room is made", function()
    local sp, path = open({ max_file_bytes = 256 * 1024 })
    -- bodies longer than a page: their acks free whole (overflow) pages
    local big = ("x"):rep(4096)
    assert(sp:put_many({ body(1) .. big, body(2) .. big, body(3) .. big }, T0))
    local held = assert(sp:claim(3, 600, T0)) -- being delivered while the disk fills
    local err, ids = fill(sp)
    assert_disk_full(err, path)
    assert.is_true(#ids > 20)
    local _, many = sp:put_many({ ("y"):rep(4096), ("z"):rep(4096) }, T0)
    assert_disk_full(many, path)
    assert.equal(#ids + 3, sp:stats(T0).queued) -- nothing half-stored
    local rows, cerr = sp:claim(10, 30, T0) -- claims are writes: they may need room too
    if not rows then assert_disk_full(cerr, path) end
    -- delivering makes room: the acks free pages
    assert(sp:ack_many({ held[1].id, held[2].id, held[3].id }))
    assert(sp:put(body(4), "AFTER", T0))
    sp:close()
  end)

  it("a real full filesystem (tmpfs; needs root): puts and claims fail with 'disk full'", function()
    local mnt = tmpdir .. "/tiny"
    assert(sys.run("mkdir -p " .. sh_quote(mnt)))
    if not sys.run("mount -t tmpfs -o size=512k tmpfs " .. sh_quote(mnt) .. " 2>/dev/null") then
      return pending("cannot mount a tmpfs here (not root, or not permitted)")
    end
    local ok, perr = pcall(function()
      local path = mnt .. "/spool.db"
      local sp = open(nil, path)
      local err = fill(sp)
      assert_disk_full(err, path)
      local rows, cerr = sp:claim(10, 30, T0) -- claims are writes too
      if not rows then assert_disk_full(cerr, path) end
      sp:close()
    end)
    sys.run("umount " .. sh_quote(mnt))
    assert(ok, perr)
  end)
end)

describe("spool WAL", function()
  it("stays bounded while orders keep coming (checkpoints run beside the puts)", function()
    local sp, path = open()
    local batch = {}
    for k = 1, 64 do batch[k] = { body = body(k), ref = "W" .. k } end
    local function wal_size()
      local f = io.open(path .. "-wal", "rb")
      if not f then return 0 end
      local n = f:seek("end")
      f:close()
      return n
    end
    local biggest, total = 0, 0
    for round = 1, 1500 do
      assert(sp:put_many(batch, T0))
      local rows = assert(sp:claim(64, 60, T0))
      local ids = {}
      for i, r in ipairs(rows) do ids[i] = r.id end
      assert(sp:ack_many(ids))
      total = total + #rows
      if round % 50 == 0 then biggest = math.max(biggest, wal_size()) end
    end
    assert.equal(1500 * 64, total)
    assert.equal(0, sp:stats(T0).queued)
    -- far more than 200 MB went through the WAL; it was started over at ~4 MiB
    -- (WAL_RESTART_BYTES; room left for a checkpoint thread running late on a
    -- loaded machine, as docs_claims_spec does)
    assert.is_true(biggest > 1024 * 1024, "the WAL never grew: " .. biggest)
    assert.is_true(biggest < 16 * 1024 * 1024, "the WAL grew to " .. biggest)
    sp:close()
    assert.is_false(exists(path .. "-wal")) -- the last close checkpoints and removes it
  end)
end)
