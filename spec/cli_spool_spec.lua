-- The spool commands of issue 17: `spool pending` (what waits, no personal
-- data), `spool send` (deliver it all now, through the library's queue;
-- exit when the spool is empty or holds only dead letters) and `spool purge
-- --email | --user-id` (one customer's undelivered orders, for an erasure
-- request), with the library calls behind them (`spool:due_now`,
-- `spool:purge_user`). Against the sandbox and real SQLite.
local sb = require("support.sandbox")
local cli = require("support.cli")
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")
local spool = require("optimizely.offline.spool")

local run, tmp, q = cli.run, cli.tmp, cli.q

local n_spools = 0
local function new_spool()
  n_spools = n_spools + 1
  local path = tmp("s" .. n_spools .. ".db")
  return assert(spool.open(path)), path
end

local function body(ref, user)
  return assert(offline.encode({ user = user or { id = "u-" .. ref }, order = { refCode = ref,
    orderDate = os.time() - 3600, currency = "GBP", total = 1, items = { { refCode = "s", qty = 1, price = 1 } } } }))
end

-- Puts orders; `wait` of them (the first ones) failed twice and wait an hour.
local function fill(sp, prefix, n, wait, user_of)
  local now = spool.now()
  for i = 1, n do
    local ref = prefix .. "-" .. i
    assert(sp:put(body(ref, user_of and user_of(i)), ref, now, i % 5 == 0 and "callcentre" or nil))
  end
  local rows = wait > 0 and assert(sp:claim(wait, 30, now)) or {}
  for _, r in ipairs(rows) do
    assert(sp:retry(r.id, now + 3600, "HTTP 503: ServiceUnavailable (for jane.doe@example.com)"))
  end
  return now
end

local function at_sandbox(prefix)
  local t, n = {}, 0
  for _, rec in ipairs(sb.orders()) do
    if rec.refCode:sub(1, #prefix + 1) == prefix .. "-" then
      t[rec.refCode] = (t[rec.refCode] or 0) + 1
      n = n + 1
    end
  end
  return t, n
end

-- Another process holding `n` due orders of the spool under a live lease
-- (spec/fixtures/cli/spool_holder.lua). A second spool handle in this
-- process would not do: opening one drops the process's SQLite locks on the
-- file (csrc/store/sqlfile.c's sniff), and a CLI run then breaks the first handle.
-- @return the refCodes it holds, and a function that makes it let go
local function holder(path, n)
  local ready, release = path .. ".held", path .. ".release"
  os.remove(ready)
  os.remove(release)
  local p = io.popen(cli.LUA .. " " .. q(cli.FIX .. "spool_holder.lua") .. " " .. q(path) .. " " .. n .. " "
    .. q(ready) .. " " .. q(release) .. " 2>&1")
  local deadline = core.now() + 20
  while not cli.read_file(ready) do
    assert(core.now() < deadline, "the holder did not start")
    core.sleep(0.02)
  end
  local refs = {}
  for ref in cli.read_file(ready):gmatch("%S+") do refs[ref] = true end
  return refs, function()
    cli.write_file(release, "")
    local out = p:read("*a")
    p:close()
    assert.equal("", out)
  end
end

local function creds()
  return cli.creds({ OPTIMIZELY_SITE_TOKEN_CALLCENTRE = "sandbox-cc-token" })
end

describe("spool pending", function()
  teardown(cli.cleanup)

  it("lists what waits: refCode, channel, attempts, next attempt, age, last error; no personal data", function()
    local sp, path = new_spool()
    local now = fill(sp, "PEND", 6, 2, function() return { email = "jane.doe@example.com", id = "secret-id-1" } end)
    local dead = assert(sp:claim(1, 30, now))[1]
    assert(sp:kill(dead.id, { kind = "api", status = 400, message = "refused" }, now))
    sp:close()
    local _, let_go = holder(path, 1) -- another process is delivering one
    local r = run({ "spool", "pending", "--spool", path })
    assert.equal(0, r.code, r.all)
    local lines = {}
    for l in r.out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("ref\tchannel\tattempts\tnext_attempt\tage\tlast_error", lines[1])
    assert.equal(1 + 5, #lines) -- the dead letter is not pending
    assert.matches("^PEND%-1\t%(default%)\t1\t%d%d%d%d%-%d%d%-%d%dT[%d:]+Z %(in [%dhms]+%)\t%d+s\t"
      .. "HTTP 503: ServiceUnavailable %(for <e%-mail>%)$", lines[2])
    assert.matches("^PEND%-5\tcallcentre\t0\tdue\t", r.out:match("PEND%-5[^\n]*"))
    assert.matches("\tin delivery\t", r.out)
    for _, secret in ipairs({ "jane", "example.com", "secret-id-1", "refCode", "{" }) do
      assert.is_nil(r.out:find(secret, 1, true), secret)
      assert.is_nil(r.err:find(secret, 1, true), secret)
    end
    assert.matches("^5 queued %(2 due, 1 in delivery%), 1 dead letters; oldest %d+s\n$", r.err)
    r = run({ "spool", "pending", "--spool", path, "--limit", "2" })
    assert.equal(3, select(2, r.out:gsub("\n", "")))
    assert.matches("3 not shown %(%-%-limit%)", r.err)
    let_go()
  end)
end)

describe("spool send", function()
  setup(function() sb.ensure() end)
  before_each(function() sb.reset() end)
  teardown(function()
    sb.clear_faults()
    cli.cleanup()
  end)

  it("delivers every queued order now, the waiting ones too, and leaves only the dead letters", function()
    local sp, path = new_spool()
    local now = fill(sp, "DRAIN", 40, 6)
    local d = assert(sp:claim(1, 30, now))[1]
    assert(sp:kill(d.id, { kind = "api", status = 400, message = "refused" }, now))
    sp:close()
    local r = run({ "spool", "send", "--spool", path }, { env = creds() })
    assert.equal(0, r.code, r.all)
    local seen, n = at_sandbox("DRAIN")
    assert.equal(39, n)
    for ref, k in pairs(seen) do assert.equal(1, k, ref) end
    local st = assert(spool.open(path))
    local s = st:stats()
    assert.equal(0, s.queued)
    assert.equal(1, s.dead)
    st:close()
    assert.matches("sent 39 of 39 queued orders from [^\n]+, 0 now dead letters; the spool holds 0 queued and "
      .. "1 dead letter\n", r.err)
    assert.matches("callcentre", sb.orders({ refCode = "DRAIN-5" })[1].channel)
    -- nothing left: a second run sends nothing
    r = run({ "spool", "send", "--spool", path, "-q" }, { env = creds() })
    assert.equal(0, r.code, r.all)
    assert.equal("", r.all)
    assert.equal(39, select(2, at_sandbox("DRAIN")))
  end)

  it("an order the endpoint refuses becomes a dead letter: exit 1, said on the way out", function()
    local sp, path = new_spool()
    fill(sp, "DRAINBAD", 5, 0)
    assert(sp:put('{"order":{"refCode":"DRAINBAD-X"}}', "DRAINBAD-X"))
    sp:close()
    local r = run({ "spool", "send", "--spool", path }, { env = creds() })
    assert.equal(1, r.code, r.all)
    assert.matches("DRAINBAD%-X: dead letter: ", r.err)
    assert.matches("1 now dead letters", r.err)
    assert.matches("spool list %-%-dead", r.err)
    assert.equal(5, select(2, at_sandbox("DRAINBAD")))
  end)

  it("refused credentials: nothing more is sent, every order stays in the spool, exit 1", function()
    local sp, path = new_spool()
    fill(sp, "DRAINAUTH", 20, 0)
    sp:close()
    local r = run({ "spool", "send", "--spool", path }, { env = cli.creds({ OPTIMIZELY_SITE_TOKEN = "wrong-token" }) })
    assert.equal(1, r.code, r.all)
    assert.matches("error: the credentials were refused", r.err)
    assert.equal(0, select(2, at_sandbox("DRAINAUTH")))
    local st = assert(spool.open(path))
    assert.equal(20, st:stats().queued)
    st:close()
  end)

  for sig, code in pairs({ TERM = 143, HUP = 129, INT = 130 }) do
    it(("SIG%s: stops (exit %d); what was not delivered stays in the spool, and a second run sends it")
      :format(sig, code), function()
      local sp, path = new_spool()
      local prefix = "DRAINSIG" .. sig
      fill(sp, prefix, 200, 0)
      sp:close()
      sb.faults({ count = 100000, delay = 0.1, match = "POST" })
      local base = sb.stats().accepted
      local p = io.popen("sh -c " .. q("echo $$; " .. cli.command({ "spool", "send", "--spool", path, "--grace", "1" },
        { env = creds(), exec = true }) .. " >" .. q(path .. ".out") .. " 2>" .. q(path .. ".err")) .. "; echo rc=$?")
      local pid = tonumber(p:read("*l"))
      local deadline = core.now() + 30
      while sb.stats().accepted - base < 10 and core.now() < deadline do core.sleep(0.02) end
      os.execute("kill -" .. sig .. " " .. pid)
      local rc = tonumber(p:read("*a"):match("rc=(%d+)"))
      p:close()
      sb.clear_faults()
      local err = cli.read_file(path .. ".err")
      assert.equal(code, rc, err)
      assert.matches("interrupted %(", err)
      local st = assert(spool.open(path))
      local s = st:stats()
      st:close()
      local _, n = at_sandbox(prefix)
      assert.is_true(n < 200, err)
      assert.is_true(n + s.queued >= 200) -- nothing lost (an order in flight may be sent twice)
      local r = run({ "spool", "send", "--spool", path }, { env = creds() })
      assert.equal(0, r.code, r.all)
      local seen = at_sandbox(prefix)
      local distinct = 0
      for _ in pairs(seen) do distinct = distinct + 1 end
      assert.equal(200, distinct)
    end)
  end

  it("a missing spool file is a usage error, before any credential is needed", function()
    local r = run({ "spool", "send", "--spool", tmp("nope.db") })
    assert.equal(2, r.code)
    assert.matches("no spool file at", r.err)
  end)
end)

describe("spool purge --email / --user-id", function()
  teardown(cli.cleanup)

  local KEY = ("k"):rep(32)

  -- Orders of three customers; jane's are R-1, R-4, R-7, R-10; one of hers is a dead letter.
  local function customers()
    local sp, path = new_spool()
    local now = fill(sp, "R", 10, 2, function(i)
      if i % 3 == 1 then return { email = "Jane.Doe@Example.com" } end
      if i % 3 == 2 then return { id = "user-42" } end
      return { id = require("optimizely.offline.pseudonym").pseudonymise("bob@example.com", { key = KEY }) }
    end)
    local rows = assert(sp:list({ limit = 100 }))
    for _, row in ipairs(rows) do
      if row.ref == "R-10" then
        local c = assert(sp:claim(100, 30, now + 7200))
        for _, r2 in ipairs(c) do
          if r2.id == row.id then assert(sp:kill(r2.id, "refused", now)) else assert(sp:release(r2.id)) end
        end
      end
    end
    return sp, path
  end

  local function refs(sp, dead)
    local t = {}
    for _, row in ipairs(assert(sp:list({ limit = 100, dead = dead }))) do t[#t + 1] = row.ref end
    table.sort(t)
    return table.concat(t, " ")
  end

  it("removes one customer's queued orders and dead letters, whatever the address's case, and says how many", function()
    local sp, path = customers()
    assert.equal("R-10", refs(sp, true))
    local r = run({ "spool", "purge", "--spool", path, "--email", "jane.doe@EXAMPLE.com" })
    assert.equal(0, r.code, r.all)
    assert.equal("removed 4 undelivered orders of that customer (queued or dead letters)\n", r.out)
    assert.equal("R-2 R-3 R-5 R-6 R-8 R-9", refs(sp))
    assert.equal("", refs(sp, true))
    r = run({ "spool", "purge", "--spool", path, "--user-id", "user-42" })
    assert.equal(0, r.code, r.all)
    assert.matches("^removed 3 undelivered orders", r.out)
    assert.equal("R-3 R-6 R-9", refs(sp))
    r = run({ "spool", "purge", "--spool", path, "--email", "nobody@example.com" })
    assert.equal(0, r.code)
    assert.matches("^removed 0 undelivered orders", r.out)
    sp:close()
  end)

  it("with --pseudonymise, --email also matches the pseudonymised id", function()
    local sp, path = customers()
    local r = run({ "spool", "purge", "--spool", path, "--email", "bob@example.com" })
    assert.matches("^removed 0 ", r.out)
    r = run({ "spool", "purge", "--spool", path, "--email", "bob@example.com", "--pseudonymise" },
      { env = { OPTIMIZELY_PSEUDONYM_KEY = KEY } })
    assert.equal(0, r.code, r.all)
    assert.matches("^removed 3 undelivered orders", r.out)
    assert.equal("R-1 R-2 R-4 R-5 R-7 R-8", refs(sp))
    sp:close()
  end)

  it("an order another process is delivering is not removed: counted, exit 1", function()
    local sp, path = customers()
    sp:close()
    local _, let_go = holder(path, 100)
    -- Jane's: R-4 and R-7 held by it; R-1 (waiting for a retry) and R-10 (a dead letter) are no one's
    local r = run({ "spool", "purge", "--spool", path, "--email", "jane.doe@example.com" })
    assert.equal(1, r.code, r.all)
    assert.matches("^removed 2 ", r.out)
    assert.matches("error: 2 more are being delivered by another process right now", r.err)
    let_go()
    r = run({ "spool", "purge", "--spool", path, "--email", "jane.doe@example.com" })
    assert.equal(0, r.code, r.all)
    assert.matches("^removed 2 ", r.out)
    sp = assert(spool.open(path))
    assert.equal("R-2 R-3 R-5 R-6 R-8 R-9", refs(sp))
    sp:close()
  end)

  it("usage errors: with --queued or --older-than, --pseudonymise without --email", function()
    local sp, path = customers()
    sp:close()
    for _, args in ipairs({ { "--email", "a@b.c", "--queued" }, { "--user-id", "x", "--older-than", "5" },
                            { "--user-id", "x", "--pseudonymise" }, { "--pseudonymise" } }) do
      local full = { "spool", "purge", "--spool", path }
      for _, a in ipairs(args) do full[#full + 1] = a end
      local r = run(full, { env = { OPTIMIZELY_PSEUDONYM_KEY = KEY } })
      assert.equal(2, r.code, table.concat(args, " "))
    end
  end)

  it("spool:due_now makes the waiting orders due in one UPDATE: attempts and last error kept", function()
    local sp = new_spool()
    local now = fill(sp, "DUE", 6, 3)
    local before = {}
    for _, row in ipairs(assert(sp:list({ limit = 10 }))) do before[row.ref] = row end
    local moved, waiting = sp:due_now(now + 1)
    assert.same({ 3, 0 }, { moved, waiting })
    for _, row in ipairs(assert(sp:list({ limit = 10 }))) do
      local b = before[row.ref]
      assert.equal(b.attempts, row.attempts, row.ref) -- not bumped: nothing was attempted
      assert.equal(b.last_error, row.last_error, row.ref)
      assert.is_true(row.next_at <= now + 1, row.ref)
      if b.attempts == 1 then assert.equal(now + 1, row.next_at) else assert.equal(b.next_at, row.next_at) end
    end
    assert.same({ 0, 0 }, { sp:due_now(now + 2) }) -- nothing waits any more
    sp:close()
    -- a row leased (claimed "as of" later, so it is due later) is left alone and counted
    sp = new_spool()
    now = fill(sp, "DUEL", 1, 1)
    assert.equal(1, #assert(sp:claim(1, 600, now + 3600)))
    assert.same({ 0, 1 }, { sp:due_now(now + 2) })
    assert.equal(1, assert(sp:list({ limit = 1 }))[1].attempts)
    sp:close()
  end)

  it("spool:purge_user and spool:due_now leave another process's live leases alone", function()
    local sp, path = customers()
    sp:close()
    -- it holds R-3, R-4, R-5 (the first due); R-1 and R-2 wait an hour, past its lease
    local held, let_go = holder(path, 3)
    assert.same({ ["R-3"] = true, ["R-4"] = true, ["R-5"] = true }, held)
    sp = assert(spool.open(path))
    -- user-42: R-2 (waits past the lease: removed all the same, it is no one's), R-5 (held), R-8
    local removed, left = sp:purge_user({ user_id = "user-42" })
    assert.equal(2, removed)
    assert.equal(1, left)
    local moved, waiting = sp:due_now()
    assert.equal(1, moved) -- R-1 (R-2 was purged); the held ones are that process's
    assert.equal(0, waiting)
    sp:close()
    let_go() -- its releases succeed (it asserts them): its leases were never taken
    sp = assert(spool.open(path))
    moved, waiting = sp:due_now()
    assert.equal(0, moved)
    assert.equal(0, waiting)
    removed, left = sp:purge_user({ user_id = "user-42" })
    assert.same({ 1, 0 }, { removed, left })
    assert.equal("R-1 R-3 R-4 R-6 R-7 R-9", refs(sp))
    assert.has_error(function() sp:purge_user({}) end)
    assert.has_error(function() sp:purge_user({ email = 42 }) end)
    sp:close()
  end)
end)
