-- SIGTERM, SIGHUP and SIGINT stop every long command the same way
-- (optimizely.offline.cli.stop): `send` starts nothing new, lets the
-- requests in flight finish within --grace, writes the report, the rejects
-- and the not-sent file, leaves no temporary file and exits 143 / 129 /
-- 130. Run as subprocesses against the sandbox, which answers slowly so
-- that requests are in flight when the signal lands.
local sb = require("support.sandbox")
local poll = require("support.wait").poll
local cli = require("support.cli")
local core = require("optimizely.offline.core")

local q, tmp, read_file = cli.q, cli.tmp, cli.read_file

local CODES = { TERM = 143, HUP = 129, INT = 130 }
local SEED = tonumber(os.getenv("OO_SEED") or "") or os.time()
print("cli_stop_spec: OO_SEED=" .. SEED)
math.randomseed(SEED)

local spawn, wait_for = cli.spawn, cli.wait_for

-- refCode -> times recorded, for one prefix.
local function at_sandbox(prefix)
  local t = {}
  for _, rec in ipairs(sb.orders()) do
    if rec.refCode:sub(1, #prefix + 1) == prefix .. "-" then t[rec.refCode] = (t[rec.refCode] or 0) + 1 end
  end
  return t
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function temporary_files(dir)
  local list = {}
  for _, name in ipairs(cli.ls(dir)) do
    if name:match("%.tmp$") then list[#list + 1] = name end
  end
  return list
end

-- The report adds up, the rejects file holds exactly what was not sent,
-- the sandbox has what the report says was sent (plus at most the
-- unknown ones), and no temporary file is left.
local function assert_accounted(n, prefix, dir, rep)
  assert.equal(n, rep.read)
  assert.equal(rep.read, rep.sent + rep.skipped + rep.changed + rep.rejected + rep.not_sent + rep.unknown_outcome)
  assert.equal(0, rep.rejected)
  local stages = { not_sent = 0, interrupted = 0 }
  local listed = {}
  for _, l in ipairs(cli.lines_of(dir .. "/rej.ndjson")) do
    stages[l.stage] = (stages[l.stage] or 0) + 1
    listed[l.payload.order.refCode] = l.stage
  end
  assert.equal(rep.not_sent, stages.not_sent)
  assert.equal(rep.unknown_outcome, stages.interrupted)
  local seen = at_sandbox(prefix)
  assert.is_true(count(seen) >= rep.sent and count(seen) <= rep.sent + rep.unknown_outcome,
    ("sandbox has %d, the report %d sent + %d unknown"):format(count(seen), rep.sent, rep.unknown_outcome))
  for ref, stage in pairs(listed) do
    if stage == "not_sent" then assert.is_nil(seen[ref], ref .. " is listed as not sent but arrived") end
  end
  assert.same({}, temporary_files(dir))
end

describe("send stopped by a signal", function()
  setup(function() sb.ensure() end)
  teardown(function()
    sb.clear_faults()
    cli.cleanup()
  end)

  local runs = 0
  for _, sig in ipairs({ "TERM", "HUP", "INT", "TERM", "HUP", "INT" }) do
    it(("SIG%s at a random point: exit %d, the report adds up to what was read, no temporary file, "
      .. "the rejects go out again"):format(sig, CODES[sig]), function()
      runs = runs + 1
      local n, prefix = 600, ("STOP%s%d%d"):format(sig, runs, SEED)
      local dir = tmp(prefix)
      os.execute("mkdir -p " .. q(dir))
      cli.orders(dir .. "/in.ndjson", n, prefix)
      sb.faults({ count = 100000, delay = 0.05, match = "POST" })
      local base = sb.stats().accepted
      local at = math.random(0, 300) -- orders accepted before the signal (0: at once)
      local grace = ({ "0", "0.03", "5" })[math.random(1, 3)] -- none, less than a request, enough
      local pid, wait = spawn({ "send", "in.ndjson", "--concurrency", "8", "--rejects", "rej.ndjson",
        "--report", "rep.json", "--grace", grace }, cli.creds(), dir)
      if at == 0 then
        core.sleep(math.random() * 0.3)
      else
        wait_for(function() return sb.stats().accepted - base >= at end)
      end
      os.execute("kill -" .. sig .. " " .. pid)
      local rc, _, err = wait()
      sb.clear_faults()
      local rep = cli.json_file(dir .. "/rep.json")
      assert.equal(CODES[sig], rc, err)
      assert.equal(CODES[sig], rep.exit_code)
      if grace == "5" then assert.equal(0, rep.unknown_outcome) end
      assert.is_true(rep.interrupted)
      assert.equal("SIG" .. sig, rep.signal)
      assert.matches("interrupted: accounting for the orders not sent", err)
      assert_accounted(n, prefix, dir, rep)
      -- the rejects file goes out as it is: then every order is there, each
      -- at most twice, and only the unknown ones twice
      local r = cli.run({ "send", "rej.ndjson", "--rejects", "again.ndjson" }, { env = cli.creds(), cwd = dir })
      assert.equal(0, r.code, r.all)
      local seen, twice = at_sandbox(prefix), 0
      assert.equal(n, count(seen))
      for _, k in pairs(seen) do
        assert.is_true(k <= 2)
        if k == 2 then twice = twice + 1 end
      end
      assert.is_true(twice <= rep.unknown_outcome)
    end)
  end

  it("waits --grace for the requests in flight: they finish, none is unknown", function()
    local dir = tmp("grace-wait")
    os.execute("mkdir -p " .. q(dir))
    cli.orders(dir .. "/in.ndjson", 40, "GRACEW" .. SEED)
    sb.faults({ count = 100000, delay = 1.5, match = "POST" })
    local base = sb.stats().requests
    local t0 = core.now()
    local pid, wait = spawn({ "send", "in.ndjson", "--concurrency", "4", "--rejects", "rej.ndjson",
      "--report", "rep.json", "--grace", "20" }, cli.creds(), dir)
    wait_for(function() return sb.stats().requests - base >= 4 end)
    os.execute("kill -TERM " .. pid)
    local rc, _, err = wait()
    sb.clear_faults()
    assert.equal(143, rc, err)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.equal(0, rep.unknown_outcome)
    assert.is_true(rep.sent >= 4, err)
    assert.is_true(core.now() - t0 < 15) -- it did not wait the whole grace: nothing was left in flight
    assert_accounted(40, "GRACEW" .. SEED, dir, rep)
  end)

  it("after --grace the requests still in flight are unknown (stage interrupted), the rest not sent", function()
    local dir = tmp("grace-over")
    os.execute("mkdir -p " .. q(dir))
    cli.orders(dir .. "/in.ndjson", 40, "GRACEO" .. SEED)
    sb.faults({ count = 100000, delay = 3, match = "POST" })
    local base = sb.stats().requests
    local pid, wait = spawn({ "send", "in.ndjson", "--concurrency", "4", "--rejects", "rej.ndjson",
      "--report", "rep.json", "--grace", "0.3" }, cli.creds(), dir)
    wait_for(function() return sb.stats().requests - base >= 4 end)
    os.execute("kill -HUP " .. pid)
    local rc, _, err = wait()
    assert.equal(129, rc, err)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.equal(4, rep.unknown_outcome, err)
    assert.equal(0, rep.sent)
    assert.equal(36, rep.not_sent)
    assert.matches("4 interrupted in flight %(outcome unknown%)", err)
    poll(function() return sb.stats().concurrent_now == 0 end, 30) -- the sandbox finishes the 4 it held
    sb.clear_faults()
    assert_accounted(40, "GRACEO" .. SEED, dir, rep)
  end)

  it("a signal inside the transform (read, not yet sent): exit 143, the not-sent file is the default one", function()
    local dir = tmp("self-term")
    os.execute("mkdir -p " .. q(dir))
    cli.orders(dir .. "/in.ndjson", 300, "SELFT")
    local env = cli.creds()
    env.KILL_AT, env.KILL_SIG = "120", "TERM"
    local r = cli.run({ "send", "in.ndjson", "--transform", cli.FIX .. "interrupt.lua", "--report", "rep.json" },
      { env = env, cwd = dir })
    assert.equal(143, r.code, r.all)
    local name = r.err:match("not sent, saved to (optimizely%-offline%-unsent%-[%w%-]+%.ndjson)")
    assert.is_string(name, r.err)
    local rep = cli.json_file(dir .. "/rep.json")
    assert.equal(300, rep.read)
    assert.equal(300, rep.sent + rep.not_sent + rep.unknown_outcome)
    assert.equal(rep.not_sent + rep.unknown_outcome, #cli.lines_of(dir .. "/" .. name))
    assert.same({}, temporary_files(dir))
  end)

  it("a signal during --check-first: nothing sent, no rejects file, exit 129", function()
    local dir = tmp("check-hup")
    os.execute("mkdir -p " .. q(dir))
    cli.orders(dir .. "/in.ndjson", 300, "CHKH")
    local env = cli.creds()
    env.KILL_AT, env.KILL_SIG = "100", "HUP"
    local base = sb.stats().requests
    local r = cli.run({ "send", "in.ndjson", "--check-first", "--transform", cli.FIX .. "interrupt.lua",
      "--rejects", "rej.ndjson", "--report", "rep.json" }, { env = env, cwd = dir })
    assert.equal(129, r.code, r.all)
    assert.matches("interrupted: nothing was sent %(SIGHUP%)", r.err)
    assert.equal(base, sb.stats().requests)
    assert.same({ "in.ndjson" }, cli.ls(dir))
  end)

  it("a bad --grace is a usage error", function()
    for _, v in ipairs({ "--grace=-1", "--grace=soon", "--grace=1e9" }) do
      local r = cli.run({ "send", "-n", cli.FIX .. "spec-sample.xml", v })
      assert.equal(2, r.code)
      assert.matches("%-%-grace must be a number of seconds from 0 to 86400", r.err)
    end
  end)
end)

describe("the other long commands stopped by a signal", function()
  teardown(cli.cleanup)

  for sig, code in pairs(CODES) do
    it(("convert -o, SIG%s: exit %d, the old output as it was, no temporary file"):format(sig, code), function()
      local dir = tmp("conv-" .. sig)
      os.execute("mkdir -p " .. q(dir))
      cli.orders(dir .. "/in.ndjson", 400, "CONV")
      cli.write_file(dir .. "/out.ndjson", "old\n")
      local r = cli.run({ "convert", "in.ndjson", "-o", "out.ndjson", "--rejects", "rej.ndjson",
        "--transform", cli.FIX .. "interrupt.lua" }, { cwd = dir, env = { KILL_AT = "150", KILL_SIG = sig } })
      assert.equal(code, r.code, r.all)
      assert.matches("interrupted: no output file was written", r.err)
      assert.equal("old\n", read_file(dir .. "/out.ndjson"))
      assert.same({ "in.ndjson", "out.ndjson" }, cli.ls(dir))
    end)
  end

  it("validate --rejects, SIGTERM: exit 143, no file left", function()
    local dir = tmp("val-term")
    os.execute("mkdir -p " .. q(dir))
    cli.orders(dir .. "/in.ndjson", 400, "VAL")
    local r = cli.run({ "validate", "in.ndjson", "--rejects", "rej.ndjson", "--transform",
      cli.FIX .. "interrupt.lua" }, { cwd = dir, env = { KILL_AT = "150", KILL_SIG = "TERM" } })
    assert.equal(143, r.code, r.all)
    assert.same({ "in.ndjson" }, cli.ls(dir))
  end)

  it("mapping -o, SIGHUP: exit 129, no mapping and no temporary file", function()
    local dir = tmp("map-hup")
    os.execute("mkdir -p " .. q(dir))
    local lines = {}
    for i = 1, 400 do lines[i] = ('{"user":{"email":"p%d@example.com"},"order":{"refCode":"M%d"}}'):format(i, i) end
    cli.write_file(dir .. "/in.ndjson", table.concat(lines, "\n") .. "\n")
    os.execute("mkdir -p " .. q(dir .. "/sort"))
    local r = cli.run({ "mapping", "in.ndjson", "-o", "map.csv", "--run-size", "10", "--tmpdir", "sort",
      "--transform", cli.FIX .. "interrupt.lua" }, { cwd = dir, env = { KILL_AT = "150", KILL_SIG = "HUP",
        OPTIMIZELY_PSEUDONYM_KEY = ("k"):rep(32) } })
    assert.equal(129, r.code, r.all)
    assert.matches("interrupted: no mapping written", r.err)
    assert.same({ "in.ndjson", "sort" }, cli.ls(dir))
    assert.same({}, cli.ls(dir .. "/sort"))
  end)
end)

describe("core.trap_signals (in this process)", function()
  local errors = require("optimizely.offline.errors")
  local function kill_self(sig) io.popen("kill -" .. sig .. " " .. core.getpid()):close() end
  local function spin(seconds)
    local t = core.now()
    while core.now() - t < seconds do end
  end
  after_each(function() core.untrap_signals() end)

  it("a trapped signal raises interrupted! at the next Lua instruction, and is remembered", function()
    assert.is_true(core.trap_signals())
    assert.is_nil(core.signalled())
    local ok, e = pcall(function()
      kill_self("TERM")
      spin(10)
    end)
    assert.is_false(ok)
    assert.is_true(errors.is_interrupt(e), tostring(e))
    assert.same({ 15, "SIGTERM" }, { core.signalled() })
  end)

  it("deferred (trap_signals(false)): only recorded, the code goes on; a new trap forgets it", function()
    assert.is_true(core.trap_signals(false))
    kill_self("HUP")
    spin(0.3) -- nothing is raised
    assert.same({ 1, "SIGHUP" }, { core.signalled() })
    core.untrap_signals()
    assert.same({ 1, "SIGHUP" }, { core.signalled() }) -- still readable
    core.trap_signals()
    assert.is_nil(core.signalled())
  end)
end)
