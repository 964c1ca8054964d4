-- `send` and its delivery ledger (issue 17 §2 and §4), run as subprocesses
-- against the sandbox (real nginx over TLS, which records what it
-- received) and real SQLite: running again sends nothing; a changed order
-- is refused (file:line, exit 1) unless --force or --amend (DELETE, then
-- POST); SIGTERM and kill -9 at random points, 20 times each, then running
-- again leaves every order at the sandbox, twice at most those in flight;
-- two runs at once on one ledger; a ledger that cannot be used stops the
-- run before anything is sent (exit 2); `ledger report` after a send,
-- checked against sums made here from the input file.
local sb = require("support.sandbox")
local cli = require("support.cli")
local core = require("optimizely.offline.core")
local ledger = require("optimizely.offline.ledger")
local sys = require("optimizely.offline.sys")

local run, q, read_file = cli.run, cli.q, cli.read_file

local SEED = tonumber(os.getenv("OO_SEED") or "") or os.time()
print("cli_send_ledger_spec: OO_SEED=" .. SEED)
math.randomseed(SEED)

local function is_root() return sys.capture("id -u") == "0\n" end

local n_dirs = 0
-- A fresh directory for one case, with its own state directory (the
-- default ledger's home) unless the case gives one.
local function workdir(tag)
  n_dirs = n_dirs + 1
  local d = cli.tmp(("%s-%d"):format(tag, n_dirs))
  os.execute("mkdir -p " .. q(d))
  return d
end

-- The sandbox's credentials, with XDG_STATE_HOME = `state`.
local function env(state, over)
  local e = cli.creds(over)
  e.XDG_STATE_HOME = state
  return e
end

-- How many orders the sandbox has recorded (a mark for `at_sandbox`).
local function mark()
  local _, total = sb.orders({ since = 2 ^ 31 })
  return total
end

-- refCode -> times the sandbox recorded it, for one prefix (of the records
-- after `since`, a `mark()`).
local function at_sandbox(prefix, since)
  local t = {}
  for _, rec in ipairs(sb.orders({ since = since })) do
    if rec.refCode:sub(1, #prefix + 1) == prefix .. "-" then t[rec.refCode] = (t[rec.refCode] or 0) + 1 end
  end
  return t
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- n orders PREFIX-1..n in dir/in.ndjson (or `name`), dated yesterday.
local YESTERDAY = '"' .. os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - 86400) .. '"'
local function orders(dir, n, prefix, name)
  return cli.orders(dir .. "/" .. (name or "in.ndjson"), n, prefix, function() return YESTERDAY end)
end

describe("send with its ledger", function()
  setup(function() sb.ensure() end)
  teardown(function()
    sb.clear_faults()
    cli.cleanup()
  end)

  it("keeps it in $XDG_STATE_HOME/optimizely-offline/ledger.db (directory 0700, file 0600) and names it", function()
    local dir = workdir("default")
    local state = dir .. "/state"
    orders(dir, 5, "DEF" .. SEED)
    local r = run({ "send", "in.ndjson", "--report", "rep.json" }, { env = env(state), cwd = dir, umask = "022" })
    assert.equal(0, r.code, r.all)
    local path = state .. "/optimizely-offline/ledger.db"
    assert.equal("700", cli.mode(state .. "/optimizely-offline"))
    assert.equal("600", cli.mode(path))
    assert.matches("\nledger: " .. path:gsub("%p", "%%%0") .. "\n", r.err)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.equal(path, rep.ledger)
    assert.same({ 5, 0, 0 }, { rep.sent, rep.skipped, rep.changed })
    -- without XDG_STATE_HOME: ~/.local/state
    local home = dir .. "/home"
    os.execute("mkdir -p " .. q(home))
    local e = cli.creds()
    e.XDG_STATE_HOME, e.HOME = false, home
    r = run({ "send", "in.ndjson" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.equal("600", cli.mode(home .. "/.local/state/optimizely-offline/ledger.db"))
    assert.equal("700", cli.mode(home .. "/.local/state/optimizely-offline"))
  end)

  it("running the same send again sends nothing: exit 0, \"N already sent\"", function()
    local dir = workdir("again")
    local prefix = "AGAIN" .. SEED
    orders(dir, 30, prefix)
    local e = env(dir .. "/state")
    local r = run({ "send", "in.ndjson" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("sent 30 orders", r.err)
    local before = sb.stats().requests
    r = run({ "send", "in.ndjson", "--report", "rep.json" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("^sent 0 orders in [%d.]+ s %([%d.]+ orders/s%), 30 already sent\n", r.err)
    assert.equal(before, sb.stats().requests)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.same({ 30, 0, 30, 0, 0 }, { rep.read, rep.sent, rep.skipped, rep.changed, rep.exit_code })
    assert.equal(rep.read, rep.sent + rep.skipped + rep.changed + rep.rejected + rep.not_sent + rep.unknown_outcome)
    for _, k in pairs(at_sandbox(prefix)) do assert.equal(1, k) end
    -- -v names each one
    r = run({ "send", "in.ndjson", "-v" }, { env = e, cwd = dir })
    assert.matches("in%.ndjson:7: order " .. prefix .. "%-7: already sent %(on %d%d%d%d%-%d%d%-%d%d %d%d:%d%d UTC%)",
      r.out)
    -- --no-ledger sends them all again
    r = run({ "send", "in.ndjson", "--no-ledger" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("sent 30 orders", r.err)
    assert.matches("ledger: none %(%-%-no%-ledger%)", r.err)
    for _, k in pairs(at_sandbox(prefix)) do assert.equal(2, k) end
  end)

  it("--ledger FILE, and ledger / no_ledger in --config", function()
    local dir = workdir("conf")
    local prefix = "CONF" .. SEED
    orders(dir, 4, prefix)
    local e = env(dir .. "/state")
    local r = run({ "send", "in.ndjson", "--ledger", "mine.db" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.equal("600", cli.mode(dir .. "/mine.db"))
    assert.is_nil(read_file(dir .. "/state/optimizely-offline/ledger.db"))
    cli.write_file(dir .. "/a.conf", "ledger = mine.db\n")
    r = run({ "send", "in.ndjson", "--config", "a.conf" }, { env = e, cwd = dir })
    assert.matches("4 already sent", r.err)
    cli.write_file(dir .. "/b.conf", "ledger = mine.db\nno_ledger = true\n")
    r = run({ "send", "in.ndjson", "--config", "b.conf" }, { env = e, cwd = dir })
    assert.matches("sent 4 orders", r.err)
    -- the command line comes first
    r = run({ "send", "in.ndjson", "--config", "b.conf", "--ledger", "mine.db" }, { env = e, cwd = dir })
    assert.matches("4 already sent", r.err)
    r = run({ "send", "in.ndjson", "--ledger", "mine.db", "--no-ledger" }, { env = e, cwd = dir })
    assert.equal(2, r.code)
    assert.matches("%-%-ledger and %-%-no%-ledger are exclusive", r.err)
    r = run({ "send", "in.ndjson", "--force", "--amend" }, { env = e, cwd = dir })
    assert.equal(2, r.code)
    r = run({ "send", "in.ndjson", "--no-ledger", "--amend" }, { env = e, cwd = dir })
    assert.equal(2, r.code)
    cli.write_file(dir .. "/c.conf", "no_ledger = maybe\n")
    r = run({ "send", "in.ndjson", "--config", "c.conf" }, { env = e, cwd = dir })
    assert.equal(2, r.code)
    assert.matches("c%.conf:1: no_ledger must be true or false", r.err)
  end)

  it("a changed order: file:line, not sent, exit 1; --force sends it; --amend sends DELETE then POST", function()
    local dir = workdir("changed")
    local prefix = "CHG" .. SEED
    orders(dir, 3, prefix)
    local e = env(dir .. "/state")
    assert.equal(0, run({ "send", "in.ndjson" }, { env = e, cwd = dir }).code)
    -- order 2 changes: another total
    local text = read_file(dir .. "/in.ndjson")
    local changed = text:gsub('("refCode":"' .. prefix .. '%-2".-"total":)12%.5', "%113.5")
      :gsub('("refCode":"' .. prefix .. '%-2".-"price":)12%.5', "%113.5")
    assert.not_equal(text, changed)
    cli.write_file(dir .. "/in.ndjson", changed)
    local r = run({ "send", "in.ndjson", "--rejects", "rej.ndjson", "--report", "rep.json" }, { env = e, cwd = dir })
    assert.equal(1, r.code, r.all)
    assert.matches("in%.ndjson:2: order " .. prefix .. "%-2: changed since it was sent on "
      .. "%d%d%d%d%-%d%d%-%d%d %d%d:%d%d UTC; %-%-amend replaces it\n", r.err)
    assert.matches("2 already sent, 1 changed since sent %(not sent%)", r.err)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.same({ 3, 0, 2, 1, 0 }, { rep.read, rep.sent, rep.skipped, rep.changed, rep.rejected })
    local rej = cli.lines_of(dir .. "/rej.ndjson")
    assert.equal(1, #rej)
    assert.equal("changed", rej[1].stage)
    assert.equal(prefix .. "-2", rej[1].payload.order.refCode)
    assert.equal(1, at_sandbox(prefix)[prefix .. "-2"])
    -- a dry run and --check-first say the same, and send nothing
    r = run({ "send", "-n", "in.ndjson" }, { env = e, cwd = dir })
    assert.equal(1, r.code, r.all)
    assert.matches("in%.ndjson:2: order [^:]+: changed since it was sent on", r.out)
    r = run({ "send", "--check-first", "in.ndjson" }, { env = e, cwd = dir })
    assert.equal(1, r.code, r.all)
    assert.matches("nothing was sent %(%-%-check%-first%): 1 of 3 records failed the check", r.err)
    assert.equal(1, at_sandbox(prefix)[prefix .. "-2"])
    -- --force: sent as it is now
    local forced = workdir("forced")
    orders(forced, 3, prefix .. "F")
    local ef = env(forced .. "/state")
    assert.equal(0, run({ "send", "in.ndjson" }, { env = ef, cwd = forced }).code)
    cli.write_file(forced .. "/in.ndjson", (read_file(forced .. "/in.ndjson"):gsub("12%.5", "14.5")))
    r = run({ "send", "in.ndjson", "--force" }, { env = ef, cwd = forced })
    assert.equal(0, r.code, r.all)
    assert.matches("sent 3 orders", r.err)
    local recs = sb.orders({ refCode = prefix .. "F-1" })
    assert.equal(2, #recs)
    assert.matches('"total":14%.5', recs[2].body)
    assert.equal(0, #sb.cancellations({ refCode = prefix .. "F-1" }))
    r = run({ "send", "in.ndjson" }, { env = ef, cwd = forced })
    assert.matches("3 already sent", r.err) -- the ledger has the new version now
    -- --amend: the cancel of the old version, then the new one
    r = run({ "send", "in.ndjson", "--amend", "--report", "rep2.json" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("sent 1 order", r.err)
    recs = sb.orders({ refCode = prefix .. "-2" })
    local cancels = sb.cancellations({ refCode = prefix .. "-2" })
    assert.equal(2, #recs)
    assert.equal(1, #cancels)
    assert.matches('"total":13%.5', recs[2].body)
    assert.is_true(recs[1].received_at < cancels[1].received_at)
    assert.is_true(cancels[1].received_at <= recs[2].received_at)
    assert.equal(0, #sb.cancellations({ refCode = prefix .. "-1" }))
    r = run({ "send", "in.ndjson" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("3 already sent", r.err)
  end)

  it("a refused DELETE fails the amend clearly, and the new version is not posted", function()
    local dir = workdir("amendfail")
    local prefix = "AMF" .. SEED
    orders(dir, 2, prefix)
    local e = env(dir .. "/state")
    assert.equal(0, run({ "send", "in.ndjson" }, { env = e, cwd = dir }).code)
    cli.write_file(dir .. "/in.ndjson", (read_file(dir .. "/in.ndjson"):gsub("12%.5", "15.5")))
    sb.faults({ count = 100, status = 403, match = "DELETE" })
    local r = run({ "send", "in.ndjson", "--amend", "--rejects", "rej.ndjson" }, { env = e, cwd = dir })
    sb.clear_faults()
    assert.equal(1, r.code, r.all)
    assert.equal(1, #sb.orders({ refCode = prefix .. "-1" }))
    assert.equal(1, #sb.orders({ refCode = prefix .. "-2" }))
    assert.equal(2, #cli.lines_of(dir .. "/rej.ndjson"))
  end)

  it("dry runs and --check-first never write the ledger; they say what a run would skip", function()
    local dir = workdir("dry")
    local prefix = "DRY" .. SEED
    orders(dir, 6, prefix)
    local e = env(dir .. "/state")
    local path = dir .. "/state/optimizely-offline/ledger.db"
    local r = run({ "send", "-n", "in.ndjson" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.is_nil(read_file(path)) -- not created
    assert.matches("ledger: [^\n]+ %(not there yet: nothing known%)", r.err)
    assert.equal(0, run({ "send", "in.ndjson" }, { env = e, cwd = dir }).code)
    orders(dir, 9, prefix, "more.ndjson")
    local function rows() return require("support.sqlite").cli(path, "SELECT count(*), max(at) FROM ledger") end
    local before, bytes = rows(), read_file(path)
    r = run({ "send", "-n", "more.ndjson", "--report", "rep.json" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("dry run: 3 orders valid, nothing sent, 6 already sent", r.err)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.same({ 9, 3, 6 }, { rep.read, rep.valid, rep.skipped })
    r = run({ "send", "--check-first", "more.ndjson", "--no-ledger", "-n" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.equal(bytes, read_file(path))
    if require("support.sqlite").has_cli() then assert.equal(before, rows()) end
    -- --check-first then sends what is new
    r = run({ "send", "--check-first", "more.ndjson" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    assert.matches("sent 3 orders", r.err)
    assert.matches("6 already sent", r.err)
  end)
end)

describe("send stopped, then run again", function()
  setup(function() sb.ensure() end)
  teardown(function()
    sb.clear_faults()
    cli.cleanup()
  end)

  local N, CONC = 40, 4

  -- Waits for a random point of a run just started: once the sandbox has
  -- its first request, or has accepted a random number of orders (up to
  -- all of them: then the run may have finished), plus up to 30 ms.
  local function at_random_point()
    local base, at = sb.stats(), math.random(0, N)
    cli.wait_for(function()
      local now = sb.stats()
      if at == 0 then return now.requests > base.requests end
      return now.accepted - base.accepted >= at
    end, 20)
    core.sleep(math.random() * 0.03)
  end

  -- The second run finishes the job: every order at the sandbox once, but
  -- at most `twice` of them twice.
  local function run_again(dir, e, prefix, twice, since)
    local r = run({ "send", "in.ndjson", "--report", "again.json" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    local rep = cli.json_file(dir .. "/again.json")
    local seen, dups = at_sandbox(prefix, since), 0
    assert.equal(N, count(seen))
    for ref, k in pairs(seen) do
      assert.is_true(k <= 2, ref)
      if k == 2 then dups = dups + 1 end
    end
    assert.is_true(dups <= twice, ("%d sent twice, at most %d may be"):format(dups, twice))
    -- it sent exactly what the first run did not get acknowledged
    assert.equal(N, rep.sent + rep.skipped)
    return rep, dups
  end

  for i = 1, 20 do
    it(("SIGTERM at a random point (%d of 20): the second run sends exactly what was not acknowledged"):format(i),
      function()
      local dir = workdir("term")
      local prefix, since = ("TERM%d-%d"):format(i, SEED), mark()
      orders(dir, N, prefix)
      local e = env(dir .. "/state")
      sb.faults({ count = 100000, delay = 0.02, match = "POST" })
      local grace = ({ "0", "0.02", "2" })[math.random(1, 3)] -- none, less than a request, enough
      local pid, wait = cli.spawn({ "send", "in.ndjson", "--concurrency", tostring(CONC), "--report", "rep.json",
        "--rejects", "rej.ndjson", "--grace", grace }, e, dir)
      at_random_point()
      os.execute("kill -TERM " .. pid .. " 2>/dev/null")
      local rc, _, err = wait()
      sb.clear_faults()
      local rep = cli.json_file(dir .. "/rep.json")
      assert.is_true(rc == 143 or rc == 0, err) -- 0: it had finished
      -- 143 after a report of 0: the signal came once it was written
      if rc ~= rep.exit_code then
        assert.same({ 143, 0, N, false }, { rc, rep.exit_code, rep.sent, rep.interrupted or false })
      end
      assert.equal(N, rep.read)
      assert.equal(rep.read, rep.sent + rep.skipped + rep.changed + rep.rejected + rep.not_sent + rep.unknown_outcome)
      -- what was not sent is in the rejects file; no temporary file is left
      assert.equal(rep.not_sent + rep.unknown_outcome, #cli.lines_of(dir .. "/rej.ndjson"))
      for _, name in ipairs(cli.ls(dir)) do assert.is_nil(name:match("%.tmp$"), name) end
      if grace == "2" then assert.equal(0, rep.unknown_outcome) end
      local sent_first = count(at_sandbox(prefix, since))
      assert.is_true(sent_first >= rep.sent and sent_first <= rep.sent + rep.unknown_outcome)
      -- every order at the sandbox; twice only those unknown (none after a grace long enough)
      local again = run_again(dir, e, prefix, rep.unknown_outcome, since)
      assert.is_true(again.skipped >= rep.sent and again.skipped <= rep.sent + rep.unknown_outcome)
    end)
  end

  for i = 1, 20 do
    it(("kill -9 at a random point (%d of 20): only orders in flight may be sent twice"):format(i), function()
      local dir = workdir("kill")
      local prefix, since = ("KILL%d-%d"):format(i, SEED), mark()
      orders(dir, N, prefix)
      local e = env(dir .. "/state")
      sb.faults({ count = 100000, delay = 0.02, match = "POST" })
      local pid, wait = cli.spawn({ "send", "in.ndjson", "--concurrency", tostring(CONC) }, e, dir)
      at_random_point()
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      local rc = wait()
      sb.clear_faults()
      assert.is_true(rc == 137 or rc == 0, tostring(rc))
      -- at most the requests in flight at the kill (--concurrency) arrive twice
      run_again(dir, e, prefix, CONC, since)
    end)
  end
end)

describe("two sends at once on one ledger", function()
  setup(function() sb.ensure() end)
  teardown(function()
    sb.clear_faults()
    cli.cleanup()
  end)

  it("both finish, and neither sends an order the other already sent", function()
    local dir = workdir("two")
    local prefix = "TWO" .. SEED
    orders(dir, 120, prefix)
    os.execute("mkdir -p " .. q(dir .. "/a") .. " " .. q(dir .. "/b"))
    local e = env(dir .. "/state")
    sb.faults({ count = 100000, delay = 0.02, match = "POST" })
    local args = function(name)
      return { "send", "../in.ndjson", "--concurrency", "4", "--report", name .. ".json" }
    end
    local _, wait_a = cli.spawn(args("a"), e, dir .. "/a")
    local _, wait_b = cli.spawn(args("b"), e, dir .. "/b")
    local rc_a, _, err_a = wait_a()
    local rc_b, _, err_b = wait_b()
    sb.clear_faults()
    assert.equal(0, rc_a, err_a)
    assert.equal(0, rc_b, err_b)
    local a, b = cli.json_file(dir .. "/a/a.json"), cli.json_file(dir .. "/b/b.json")
    assert.equal(120, a.sent + a.skipped)
    assert.equal(120, b.sent + b.skipped)
    assert.equal(120, a.sent + b.sent)
    local seen = at_sandbox(prefix)
    assert.equal(120, count(seen))
    for ref, k in pairs(seen) do assert.equal(1, k, ref) end
  end)
end)

describe("a ledger that cannot be used", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)

  -- Sends dir/in.ndjson with `extra` args; asserts exit 2, the file named,
  -- nothing sent.
  local function refused(dir, prefix, extra, e, name)
    local args = { "send", "in.ndjson", "--rejects", "rej.ndjson", "--report", "rep.json" }
    for _, a in ipairs(extra) do args[#args + 1] = a end
    local before = sb.stats().requests
    local r = run(args, { env = e or env(dir .. "/state"), cwd = dir })
    assert.equal(2, r.code, r.all)
    assert.matches(name, r.err, 1, true)
    assert.matches("nothing was sent", r.err)
    assert.equal(before, sb.stats().requests)
    assert.equal(0, count(at_sandbox(prefix)))
    assert.is_nil(read_file(dir .. "/rej.ndjson"))
    assert.is_nil(read_file(dir .. "/rep.json"))
    return r
  end

  it("a foreign or a damaged file: exit 2, the file named and left as it was, nothing sent", function()
    local dir = workdir("foreign")
    local prefix = "FOREIGN" .. SEED
    orders(dir, 5, prefix)
    cli.write_file(dir .. "/notes.txt", "my notes\n")
    local r = refused(dir, prefix, { "--ledger", "notes.txt" }, nil, "notes.txt")
    assert.matches("not a ledger", r.err)
    assert.equal("my notes\n", read_file(dir .. "/notes.txt"))
    -- a spool is not a ledger either
    local sp = assert(require("optimizely.offline.spool").open(dir .. "/spool.db"))
    sp:close()
    refused(dir, prefix, { "--ledger", "spool.db" }, nil, "spool.db")
    -- a damaged ledger
    local L = assert(ledger.open(dir .. "/bad.db"))
    local list = {}
    for k = 1, 2000 do list[k] = { ref = "X" .. k, outcome = "cancelled" } end
    assert(L:record({ host = "h", site = "s", channel = "store" }, list))
    L:close()
    local f = assert(io.open(dir .. "/bad.db", "r+b"))
    f:seek("set", 8192)
    f:write(("\0\255"):rep(8192))
    f:close()
    local damaged = read_file(dir .. "/bad.db")
    refused(dir, prefix, { "--ledger", "bad.db" }, nil, "bad.db")
    assert.equal(damaged, read_file(dir .. "/bad.db"))
  end)

  it("a directory it cannot make or write: exit 2, nothing sent", function()
    local dir = workdir("nodir")
    local prefix = "NODIR" .. SEED
    orders(dir, 5, prefix)
    refused(dir, prefix, { "--ledger", "no/such/dir/l.db" }, nil, "no/such/dir/l.db")
    cli.write_file(dir .. "/afile", "")
    refused(dir, prefix, {}, env(dir .. "/afile"), dir .. "/afile/optimizely-offline")
    if not is_root() then return pending("needs root to mount a read-only tmpfs") end
    local ro = dir .. "/ro"
    os.execute("mkdir -p " .. q(ro))
    if not sys.run("mount -t tmpfs -o ro,size=64k tmpfs " .. q(ro) .. " 2>/dev/null") then
      return pending("cannot mount a tmpfs here")
    end
    local ok, e = pcall(refused, dir, prefix, { "--ledger", "ro/ledger.db" }, nil, "ro/ledger.db")
    sys.run("umount " .. q(ro))
    assert(ok, e)
  end)

  it("a full disk: exit 2, nothing sent", function()
    if not is_root() then return pending("needs root to mount a tmpfs") end
    local dir = workdir("full")
    local prefix = "FULL" .. SEED
    orders(dir, 50, prefix)
    local mnt = dir .. "/tiny"
    os.execute("mkdir -p " .. q(mnt))
    if not sys.run("mount -t tmpfs -o size=512k tmpfs " .. q(mnt) .. " 2>/dev/null") then
      return pending("cannot mount a tmpfs here")
    end
    local ok, e = pcall(function()
      local L = assert(ledger.open(mnt .. "/ledger.db"))
      assert(L:record({ host = "h", site = "s", channel = "store" }, { { ref = "X", outcome = "cancelled" } }))
      L:close()
      sys.run("dd if=/dev/zero of=" .. q(mnt .. "/filler") .. " bs=4k 2>/dev/null")
      refused(dir, prefix, { "--ledger", "tiny/ledger.db" }, nil, "tiny/ledger.db")
    end)
    collectgarbage()
    sys.run("umount " .. q(mnt) .. " || umount -l " .. q(mnt))
    assert(ok, e)
  end)
end)

describe("ledger report after a send", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)

  -- epoch seconds of "YYYY-MM-DDTHH:MM:SSZ"
  local function epoch(s)
    local y, m, d, hh, mm, ss = s:match("^(%d+)%-(%d+)%-(%d+)T(%d+):(%d+):(%d+)Z$")
    return core.ledger_day(tonumber(y), tonumber(m), tonumber(d)) * 86400 + hh * 3600 + mm * 60 + ss
  end
  -- the day in Europe/London: BST (UTC+1) from 2024-03-31 01:00 to 2024-10-27 01:00 UTC
  local function london_day(t)
    if t >= epoch("2024-03-31T01:00:00Z") and t < epoch("2024-10-27T01:00:00Z") then t = t + 3600 end
    return os.date("!%Y-%m-%d", t)
  end
  local DEC = { GBP = 2, EUR = 2, JPY = 0 }
  local function minor(text, cur)
    local int, frac = text:match("^(%d+)%.?(%d*)$")
    frac = (frac .. ("0"):rep(DEC[cur])):sub(1, DEC[cur])
    return tonumber(int) * math.floor(10 ^ DEC[cur] + 0.5) + (tonumber(frac) or 0)
  end
  local function money(n, cur)
    local d = DEC[cur]
    if d == 0 then return tostring(n) end
    local scale = math.floor(10 ^ d + 0.5)
    return ("%d.%0" .. d .. "d"):format(math.floor(n / scale), n % scale)
  end

  it("gives, per day (in the till's time zone), store and currency, the orders and totals of the file", function()
    local dir = workdir("till")
    local prefix = "TILL" .. SEED
    -- orders around midnight and around the clock change, three stores, three currencies
    local lines = {}
    for i = 1, 240 do
      local cur = ({ "GBP", "EUR", "JPY" })[i % 3 + 1]
      local t = epoch(({ "2024-03-30T22:00:00Z", "2024-03-31T22:30:00Z", "2024-06-14T23:10:00Z",
        "2024-10-26T23:20:00Z", "2024-10-27T23:40:00Z" })[i % 5 + 1]) + (i * 37) % 5400
      local cents = (i * 7919) % 100000 + 1
      local total = DEC[cur] == 0 and tostring(cents) or ("%d.%02d"):format(math.floor(cents / 100), cents % 100)
      lines[i] = ('{"user":{"id":"u%d"},"order":{"refCode":"%s-%d","orderDate":"%s","currency":"%s","total":%s,'
        .. '"items":[{"refCode":"sku","qty":1,"price":%s}],"attributes":{"store":"%s"}}}'):format(i, prefix, i,
        os.date("!%Y-%m-%dT%H:%M:%SZ", t), cur, total, total,
        ({ "Bluewater", "Leeds", "Oxford St, W1" })[i % 4 % 3 + 1])
    end
    cli.write_file(dir .. "/in.ndjson", table.concat(lines, "\n") .. "\n")
    local e = env(dir .. "/state")
    local r = run({ "send", "in.ndjson", "--max-order-age", "36500" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    -- the sums, from the file
    local want, keys = {}, 0
    for line in read_file(dir .. "/in.ndjson"):gmatch("[^\n]+") do
      local o = assert(core.json_decode(line)).order
      local total_text = line:match('"total":([%d.]+)')
      local key = london_day(epoch(o.orderDate)) .. "|" .. o.attributes.store .. "|" .. o.currency
      if not want[key] then keys = keys + 1 end
      local w = want[key] or { 0, 0 }
      want[key] = { w[1] + 1, w[2] + minor(total_text, o.currency) }
    end
    r = run({ "ledger", "report", "--timezone", "Europe/London" }, { env = e, cwd = dir })
    assert.equal(0, r.code, r.all)
    local n = 0
    for row in r.out:gmatch("[^\r\n]+") do
      n = n + 1
      if n > 1 then
        local day, store, cur, orders_n, total = row:match('^([%d-]+),"?(.-)"?,(%u%u%u),(%d+),([%d.]+),')
        local w = want[day .. "|" .. store .. "|" .. cur]
        assert.is_table(w, row)
        assert.equal(tostring(w[1]), orders_n)
        assert.equal(money(w[2], cur), total)
      end
    end
    assert.equal(keys, n - 1)
  end)
end)
