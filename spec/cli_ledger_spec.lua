-- The `ledger` commands (issue 17 §2): report, show, forget and export on
-- a real SQLite ledger, run as subprocesses. The report's sums are checked
-- against sums computed here in integers from the same orders.
local cli = require("support.cli")
local core = require("optimizely.offline.core")
local ledger = require("optimizely.offline.ledger")
local offline = require("optimizely.offline")

local run, tmp = cli.run, cli.tmp

local SCOPE = { host = "uat.peerius.com", site = "shop", channel = "store" }
local T0 = os.time() - 86400 -- recorded yesterday: inside the 200 days kept

-- An encoded order.
local function body(ref, o)
  return (assert(offline.encode({
    user = { id = "user-" .. ref, email = "private-" .. ref .. "@example.com" },
    order = { refCode = ref, orderDate = o.date, currency = o.currency, total = o.total,
      items = { { refCode = "SKU", qty = 1, price = o.total } }, attributes = { store = o.store } },
  })))
end

local n_ledgers = 0
local function new_ledger()
  n_ledgers = n_ledgers + 1
  local path = tmp("l" .. n_ledgers .. ".db")
  return assert(ledger.open(path)), path
end

-- Splits CSV text (RFC 4180) into rows of fields.
local function csv(text)
  local rows, row, field, i, n = {}, {}, {}, 1, #text
  local quoted = false
  while i <= n do
    local c = text:sub(i, i)
    if quoted then
      if c == '"' and text:sub(i + 1, i + 1) == '"' then
        field[#field + 1] = '"'
        i = i + 1
      elseif c == '"' then
        quoted = false
      else
        field[#field + 1] = c
      end
    elseif c == '"' then
      quoted = true
    elseif c == "," then
      row[#row + 1] = table.concat(field)
      field = {}
    elseif c == "\r" and text:sub(i + 1, i + 1) == "\n" then
      row[#row + 1] = table.concat(field)
      rows[#rows + 1], row, field = row, {}, {}
      i = i + 1
    else
      field[#field + 1] = c
    end
    i = i + 1
  end
  return rows
end

-- Rows as tables keyed by the header's names.
local function records(rows)
  local out = {}
  for i = 2, #rows do
    local r = {}
    for k, name in ipairs(rows[1]) do r[name] = rows[i][k] end
    out[#out + 1] = r
  end
  return out
end

-- "12.34" from 1234 minor units with `d` decimals.
local function money(minor, d)
  if d == 0 then return tostring(minor) end
  local scale = math.floor(10 ^ d + 0.5)
  return ("%d.%0" .. d .. "d"):format(math.floor(minor / scale), minor % scale)
end

-- 300 orders over 5 days, 3 stores (one with a comma and a quote), 3
-- currencies, every outcome; returns the expected sums by day|store|currency.
local DECIMALS = { GBP = 2, JPY = 0, BHD = 3 }
local function fill(L)
  local seed, expect, list = 4242, {}, {}
  local function rand(k)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % k + 1
  end
  local outcomes = { "sent", "warned", "dead", "cancelled" }
  for i = 1, 300 do
    local cur = ({ "GBP", "JPY", "BHD" })[rand(3)]
    local minor = rand(9000000)
    local day = ("2024-04-%02d"):format(rand(5) + 9)
    local store = ({ "Bluewater", 'Oxford St, "flagship"', "Leeds" })[rand(3)]
    local outcome = outcomes[rand(4)]
    local key = day .. "|" .. store .. "|" .. cur
    local e = expect[key] or { sent = { 0, 0 }, warned = { 0, 0 }, dead = { 0, 0 }, cancelled = { 0, 0 } }
    expect[key] = e
    e[outcome][1] = e[outcome][1] + 1
    e[outcome][2] = e[outcome][2] + minor
    list[i] = { body = body("REP-" .. i, { date = day .. ("T%02d:15:00Z"):format(rand(23)), currency = cur,
      total = money(minor, DECIMALS[cur]), store = store }), outcome = outcome }
  end
  assert(L:record(SCOPE, list, { now = T0 }))
  return expect
end

describe("ledger report", function()
  teardown(cli.cleanup)

  it("orders and exact totals per day, store and currency for each outcome, as CSV, matching sums made here", function()
    local L, path = new_ledger()
    local expect = fill(L)
    L:close()
    local r = run({ "ledger", "report", "--ledger", path })
    assert.equal(0, r.code, r.all)
    local rows = csv(r.out)
    assert.same({ "day", "store", "currency", "sent_orders", "sent_total", "warned_orders", "warned_total",
      "dead_orders", "dead_total", "cancelled_orders", "cancelled_total" }, rows[1])
    local seen = 0
    for _, g in ipairs(records(rows)) do
      local e = expect[g.day .. "|" .. g.store .. "|" .. g.currency]
      assert.is_table(e, g.day .. "|" .. g.store)
      for _, o in ipairs({ "sent", "warned", "dead", "cancelled" }) do
        assert.equal(tostring(e[o][1]), g[o .. "_orders"])
        assert.equal(money(e[o][2], DECIMALS[g.currency]), g[o .. "_total"])
      end
      seen = seen + 1
    end
    local keys = 0
    for _ in pairs(expect) do keys = keys + 1 end
    assert.equal(keys, seen)
    -- how far back it knows, on standard error (standard output stays CSV)
    local day = os.date("!%Y-%m-%d", T0):gsub("%-", "%%-")
    assert.matches("^ledger " .. path:gsub("%p", "%%%0") .. ": knows the orders recorded since " .. day
      .. "T[%d:]+Z %(oldest row [^,]+, newest [^;]+; rows are kept 200 days%)\n$", r.err)
  end)

  it("--by any of day,store,channel,currency (currency always a key), --from/--to, --timezone, --json", function()
    local L, path = new_ledger()
    local expect = fill(L)
    -- Tokyo is 9 hours ahead: 20:30 UTC on the 9th is the 10th there
    assert(L:record({ host = "uat.peerius.com", site = "shop", channel = "callcentre" },
      { { body = body("LATE", { date = "2024-04-09T20:30:00Z", currency = "GBP", total = "5.00", store = "Leeds" }),
        outcome = "sent" } }, { now = T0 }))
    L:close()
    local want = {}
    for key, e in pairs(expect) do
      local day, _, cur = key:match("^([^|]+)|([^|]+)|([^|]+)$")
      if day >= "2024-04-11" and day <= "2024-04-13" then want[cur] = (want[cur] or 0) + e.sent[2] end
    end
    local r = run({ "ledger", "report", "--ledger", path, "--by", "currency", "--from", "2024-04-11", "--to",
      "2024-04-13", "--json" })
    assert.equal(0, r.code, r.all)
    local rep = assert(core.json_decode(r.out))
    assert.equal(path, rep.ledger)
    assert.same({ "currency" }, rep.by)
    assert.equal("2024-04-11", rep.from)
    assert.equal("UTC", rep.timezone)
    assert.equal(200, rep.keep_days)
    assert.is_string(rep.since)
    assert.equal(3, #rep.groups)
    for _, g in ipairs(rep.groups) do
      assert.is_nil(g.day)
      assert.equal(want[g.currency], g.sent.total_minor)
      assert.equal(money(want[g.currency], DECIMALS[g.currency]), g.sent.total)
    end
    r = run({ "ledger", "report", "--ledger", path, "--by", "day,channel", "--timezone", "Asia/Tokyo",
      "--from", "2024-04-10", "--to", "2024-04-10" })
    assert.equal(0, r.code, r.all)
    local rows = csv(r.out)
    assert.same({ "day", "channel", "currency" }, { rows[1][1], rows[1][2], rows[1][3] })
    assert.same({ "2024-04-10", "callcentre", "GBP", "1", "5.00" },
      { rows[2][1], rows[2][2], rows[2][3], rows[2][4], rows[2][5] })
    -- an empty range: the header only (JSON: no groups)
    r = run({ "ledger", "report", "--ledger", path, "--from", "2030-01-01" })
    assert.equal(0, r.code, r.all)
    assert.equal(1, #csv(r.out))
    r = run({ "ledger", "report", "--ledger", path, "--from", "2030-01-01", "--json" })
    assert.same({}, assert(core.json_decode(r.out)).groups)
  end)

  it("-o writes the report 0600, in place when complete", function()
    local L, path = new_ledger()
    fill(L)
    L:close()
    local out = tmp("report.csv")
    local r = run({ "ledger", "report", "--ledger", path, "-o", out }, { umask = "022" })
    assert.equal(0, r.code, r.all)
    assert.equal("", r.out)
    assert.equal("600", cli.mode(out))
    assert.matches("^day,store,currency,", cli.read_file(out))
  end)

  it("usage errors exit 2 and say what is wrong", function()
    local L, path = new_ledger()
    L:close()
    for _, c in ipairs({
      { { "--by", "day,till" }, "%-%-by: unknown key till %(day, store, channel, currency%)" },
      { { "--from", "2024-02-30" }, "%-%-from must be a day YYYY%-MM%-DD, got \"2024%-02%-30\"" },
      { { "--to", "yesterday" }, "%-%-to must be a day YYYY%-MM%-DD" },
      { { "--from", "2024-05-02", "--to", "2024-05-01" }, "%-%-from 2024%-05%-02 is after %-%-to 2024%-05%-01" },
      { { "--timezone", "Mars/Olympus" }, "%-%-timezone: unknown time zone" },
    }) do
      local args = { "ledger", "report", "--ledger", path }
      for _, a in ipairs(c[1]) do args[#args + 1] = a end
      local r = run(args)
      assert.equal(2, r.code, r.all)
      assert.matches("error: " .. c[2], r.err)
      assert.equal("", r.out)
    end
  end)
end)

describe("the ledger file of the ledger commands", function()
  teardown(cli.cleanup)

  it("is $XDG_STATE_HOME/optimizely-offline/ledger.db by default, or the config file's ledger", function()
    local state = cli.state_dir()
    os.execute("mkdir -p " .. cli.q(state .. "/optimizely-offline"))
    local L = assert(ledger.open(state .. "/optimizely-offline/ledger.db"))
    assert(L:record(SCOPE, { body("DEF-1", { date = "2024-04-10T10:00:00Z", currency = "GBP", total = "1.50",
      store = "Leeds" }) }, { outcome = "sent", now = T0 }))
    L:close()
    local r = run({ "ledger", "show", "DEF-1" }, { env = { XDG_STATE_HOME = state } })
    assert.equal(0, r.code, r.all)
    assert.matches("\tsent\t", r.out)
    local conf = cli.write_file(tmp("ledger.conf"), "ledger = " .. state .. "/optimizely-offline/ledger.db\n")
    r = run({ "ledger", "show", "DEF-1", "--config", conf })
    assert.equal(0, r.code, r.all)
  end)

  it("a missing, foreign or damaged ledger: exit 2, the file named, nothing created or changed", function()
    local missing = tmp("none/ledger.db")
    local r = run({ "ledger", "report", "--ledger", missing })
    assert.equal(2, r.code)
    assert.matches("error: no ledger at " .. missing:gsub("%p", "%%%0"), r.err)
    r = run({ "ledger", "report" }, { env = { XDG_STATE_HOME = tmp("emptystate") } })
    assert.equal(2, r.code)
    assert.matches("no ledger at [^\n]*emptystate/optimizely%-offline/ledger%.db", r.err)
    assert.is_nil(cli.read_file(tmp("emptystate/optimizely-offline/ledger.db")))
    local foreign = cli.write_file(tmp("notes.txt"), "not a ledger\n")
    for _, sub in ipairs({ { "report" }, { "show", "X" }, { "forget", "--before", "2024-01-01" }, { "export" } }) do
      local args = { "ledger" }
      for _, a in ipairs(sub) do args[#args + 1] = a end
      args[#args + 1] = "--ledger"
      args[#args + 1] = foreign
      r = run(args)
      assert.equal(2, r.code, r.all)
      assert.matches("not a ledger", r.err)
      assert.matches(foreign, r.err, 1, true)
    end
    assert.equal("not a ledger\n", cli.read_file(foreign))
    local L, path = new_ledger()
    fill(L)
    L:close()
    local f = assert(io.open(path, "r+b"))
    f:seek("set", 4096)
    f:write(("\255"):rep(4096))
    f:close()
    r = run({ "ledger", "report", "--ledger", path })
    assert.equal(2, r.code, r.all)
    assert.matches(path, r.err, 1, true)
  end)
end)

describe("ledger show", function()
  teardown(cli.cleanup)

  it("lists a refCode's rows across channels, with a reservation in flight; exit 1 when there is none", function()
    local L, path = new_ledger()
    local b = body("SHOW-1", { date = "2024-04-10T10:00:00Z", currency = "GBP", total = "9.99", store = "Leeds" })
    assert(L:record(SCOPE, { b }, { outcome = "sent", now = T0 }))
    assert(L:reserve({ host = "uat.peerius.com", site = "shop", channel = "tv" }, { b }))
    local r = run({ "ledger", "show", "SHOW-1", "--ledger", path })
    assert.equal(0, r.code, r.all)
    local lines = {}
    for l in r.out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal("host\tsite\tchannel\toutcome\tat\torder_date\tstore\tcurrency\ttotal\tfingerprint", lines[1])
    assert.equal(3, #lines)
    assert.equal(("uat.peerius.com\tshop\tstore\tsent\t%s\t2024-04-10\tLeeds\tGBP\t9.99\t%s"):format(
      os.date("!%Y-%m-%dT%H:%M:%SZ", T0), ledger.fingerprint(b)), lines[2])
    assert.matches("\ttv\tpending %(reserved by %d+:%x+@%d+ until [%dT:%-]+Z%)\t", r.out)
    for _, secret in ipairs({ "private-", "user-SHOW" }) do assert.is_nil(r.all:find(secret, 1, true)) end
    r = run({ "ledger", "show", "SHOW-1", "--ledger", path, "--json" })
    assert.equal(0, r.code, r.all)
    local rows = assert(core.json_decode(r.out))
    assert.equal(2, #rows)
    assert.equal(T0, rows[1].at)
    assert.equal(999, rows[1].total_minor)
    r = run({ "ledger", "show", "NOPE", "--ledger", path })
    assert.equal(1, r.code)
    assert.equal("", r.out)
    assert.matches("no ledger row for NOPE in ", r.err)
    L:close()
  end)
end)

describe("ledger forget", function()
  teardown(cli.cleanup)

  it("deletes the rows recorded before a day and says how many; --before is required", function()
    local L, path = new_ledger()
    local o = { date = "2024-04-10T10:00:00Z", currency = "GBP", total = "1.00", store = "Leeds" }
    assert(L:record(SCOPE, { body("F-1", o), body("F-2", o) }, { outcome = "sent", now = T0 - 10 * 86400 }))
    assert(L:record(SCOPE, { body("F-3", o) }, { outcome = "sent", now = T0 }))
    L:close()
    local r = run({ "ledger", "forget", "--before", os.date("!%Y-%m-%d", T0 - 86400), "--ledger", path })
    assert.equal(0, r.code, r.all)
    assert.equal(("forgot 2 rows recorded before %s (UTC) in %s\n"):format(os.date("!%Y-%m-%d", T0 - 86400), path),
      r.out)
    assert.equal(1, run({ "ledger", "show", "F-1", "--ledger", path }).code)
    assert.equal(0, run({ "ledger", "show", "F-3", "--ledger", path }).code)
    -- the report says how far back it knows now
    r = run({ "ledger", "report", "--ledger", path })
    assert.matches("knows the orders recorded since " .. os.date("!%Y-%m-%d", T0 - 86400):gsub("%-", "%%-")
      .. "T00:00:00Z .*older ones were pruned or forgotten", r.err)
    r = run({ "ledger", "forget", "--ledger", path })
    assert.equal(2, r.code)
    assert.matches("%-%-before", r.err)
    r = run({ "ledger", "forget", "--before", "last week", "--ledger", path })
    assert.equal(2, r.code)
    assert.matches("%-%-before must be a day YYYY%-MM%-DD", r.err)
  end)
end)

describe("ledger export", function()
  teardown(cli.cleanup)

  it("streams every row as CSV or JSON lines, to standard output or -o (0600), never onto the ledger", function()
    local L, path = new_ledger()
    local n = 2500 -- more than a page
    local list = {}
    for i = 1, n do
      list[i] = { body = body(("EXP-%05d"):format(i), { date = "2024-04-10T10:00:00Z", currency = "GBP",
        total = "2.50", store = i == 7 and 'Oxford St, "flagship"' or "Leeds" }), outcome = i % 3 == 0 and "dead"
        or "sent" }
    end
    assert(L:record(SCOPE, list, { now = T0 }))
    L:close()
    local r = run({ "ledger", "export", "--ledger", path })
    assert.equal(0, r.code, r.all)
    local rows = csv(r.out)
    assert.same({ "host", "site", "channel", "ref", "outcome", "at", "order_at", "order_date", "store", "currency",
      "total", "total_minor", "fingerprint" }, rows[1])
    local recs = records(rows)
    assert.equal(n, #recs)
    assert.equal("EXP-00007", recs[7].ref)
    assert.equal('Oxford St, "flagship"', recs[7].store)
    assert.equal("2024-04-10T10:00:00Z", recs[7].order_at)
    assert.equal("250", recs[7].total_minor)
    assert.equal("dead", recs[9].outcome)
    assert.matches(("^%d rows exported from "):format(n), r.err)
    assert.is_nil(r.out:find("private-", 1, true))
    local out = tmp("export.ndjson")
    r = run({ "ledger", "export", "--ledger", path, "--json", "-o", out }, { umask = "022" })
    assert.equal(0, r.code, r.all)
    assert.equal("600", cli.mode(out))
    local lines = cli.lines_of(out)
    assert.equal(n, #lines)
    assert.equal("EXP-00001", lines[1].ref)
    assert.equal(T0, lines[1].at)
    assert.equal("sent", lines[1].outcome)
    -- never its own input, however spelled
    for _, o in ipairs({ path, path .. "-wal", cli.tmpdir() .. "/./" .. path:match("[^/]+$") }) do
      local before = cli.read_file(path)
      r = run({ "ledger", "export", "--ledger", path, "-o", o })
      assert.equal(2, r.code, o)
      assert.matches("is the ledger", r.err)
      assert.equal(before, cli.read_file(path))
    end
  end)
end)
