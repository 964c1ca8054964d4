-- The delivery ledger against real SQLite files: its file rules, lookups,
-- reservations between two processes, retention, reports checked against
-- sums computed here, the ledger inside a spool (the ack and its ledger row
-- in one transaction, across kill -9), cancel rows and erasure. Times are
-- passed explicitly where the behaviour depends on them.
local ledger = require("optimizely.offline.ledger")
local spool = require("optimizely.offline.spool")
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local sys = require("optimizely.offline.sys")
local sqlite = require("support.sqlite")

local q = sys.q
local T0 = 1700000000
local SCOPE = { host = "uat.peerius.com", site = "shop", channel = "store" }

local tmpdir
local counter = 0

local function fresh_path(name)
  counter = counter + 1
  return ("%s/%s-%d.db"):format(tmpdir, name or "ledger", counter)
end

local function open(path, o)
  path = path or fresh_path()
  local l, err = ledger.open(path, o)
  assert(l, tostring(err))
  return l, path
end

local function is_root() return sys.capture("id -u") == "0\n" end

local function readall(path) return assert(sys.read_file(path), "cannot read " .. path) end

-- An encoded order: refCode R<n> (or ref), a distinct total per n unless given.
local function body(n, o)
  o = o or {}
  local total = o.total or ("%d.%02d"):format(10 + n % 90, n % 100)
  local b = assert(offline.encode({
    user = o.user or { id = "user-" .. n },
    order = {
      refCode = o.ref or ("R" .. n), orderDate = o.date or "2024-05-16T14:25:00Z",
      currency = o.currency or "GBP", total = total,
      items = { { refCode = "SKU-1", qty = 1, price = total } },
      attributes = o.attributes or { store = o.store or "Bluewater" },
    },
  }))
  return b
end

local function interpreter() return require("support.interp") end

local function child_script(name, src) return sqlite.child_script(tmpdir, name, src) end

setup(function() tmpdir = sqlite.tmpdir("ledger") end)

teardown(function()
  if tmpdir then sys.run("rm -rf " .. q(tmpdir)) end
end)

describe("ledger.entry", function()
  it("reads the refCode, date, currency, total and store of an encoded order", function()
    local e = assert(ledger.entry(body(7, { total = "1234.50", store = "Oxford St" })))
    assert.equal("R7", e.ref)
    assert.equal(ledger.fingerprint(body(7, { total = "1234.50", store = "Oxford St" })), e.fingerprint)
    assert.equal(1715869500, e.order_at)
    assert.equal("GBP", e.currency)
    assert.equal(123450, e.total_minor)
    assert.equal("1234.50", e.total)
    assert.equal("Oxford St", e.store)
  end)

  it("takes the currency's decimals, escaped strings, and the store key the user names", function()
    local b = body(1, { ref = 'A"1\\', currency = "BHD", total = "1.005", attributes = { till = "T\n9" } })
    local e = assert(ledger.entry(b, "till"))
    assert.equal('A"1\\', e.ref)
    assert.equal(1005, e.total_minor)
    assert.equal("1.005", e.total)
    assert.equal("T\n9", e.store)
    assert.is_nil(assert(ledger.entry(b)).store) -- no "store" attribute
  end)

  it("says why a body is not an order, and never echoes it", function()
    local e, why = ledger.entry('{"order":{"total":1}}')
    assert.is_nil(e)
    assert.matches("no order.refCode", why)
    e, why = ledger.entry('{"user":{"email":"x@example.com"},')
    assert.is_nil(e)
    assert.matches("not one JSON object", why)
    assert.not_matches("example", why)
    assert.is_nil(ledger.entry('{"order":{"refCode":"R"},}')) -- strict: no trailing comma
    -- of duplicate keys the last counts, as with the decoder
    assert.is_nil(ledger.entry('{"order":{"refCode":"A"},"order":{"total":1}}'))
    assert.equal("B", ledger.entry('{"order":{"refCode":"A"},"order":{"refCode":"B"}}').ref)
  end)

  it("fingerprints the exact bytes (SHA-256)", function()
    assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", ledger.fingerprint(""))
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", ledger.fingerprint("abc"))
  end)
end)

describe("ledger.open", function()
  it("creates the ledger, its -wal and -shm 0600 under umask 022, stamped OOLG", function()
    local old = core.umask(tonumber("022", 8))
    local ok, err = pcall(function()
      local l, path = open()
      assert(l:record(SCOPE, { { body = body(1), outcome = "sent" } }, { now = T0 }))
      for _, p in ipairs({ path, path .. "-wal", path .. "-shm" }) do
        local id, kind, mode = core.file_id(p)
        assert(id, kind)
        assert.equal("600", ("%o"):format(mode), p)
      end
      l:close()
      if sqlite.has_cli() then
        assert.equal(tostring(0x4F4F4C47), sqlite.cli(path, "PRAGMA application_id"))
        assert.equal("1", sqlite.cli(path, "PRAGMA user_version"))
        assert.equal("wal", sqlite.cli(path, "PRAGMA journal_mode"))
      end
    end)
    core.umask(old)
    assert(ok, err)
  end)

  it("keeps no personal data: neither the e-mail, the user id nor the body", function()
    local l, path = open()
    local b = body(1, { user = { email = "jane.doe@example.com", id = "cust-4711" } })
    assert(l:record(SCOPE, { { body = b, outcome = "sent" } }, { now = T0 }))
    l:close()
    local bytes = readall(path) .. (sys.read_file(path .. "-wal") or "")
    assert.is_nil(bytes:find("jane.doe", 1, true))
    assert.is_nil(bytes:find("cust-4711", 1, true))
    assert.is_nil(bytes:find("SKU-1", 1, true))
    assert.is_not_nil(bytes:find("R1", 1, true)) -- the refCode is the key
  end)

  it("refuses a symbolic link, even to a ledger", function()
    local l, target = open()
    l:close()
    local link = tmpdir .. "/link.db"
    assert(sys.run("ln -s " .. q(target) .. " " .. q(link)))
    local nl, err = ledger.open(link)
    assert.is_nil(nl)
    assert.equal("storage", err.kind)
    assert.matches(link, err.message, 1, true)
    assert.matches("symbolic link", err.message, 1, true)
  end)

  local function refused_unchanged(path, kind, pattern)
    local before = readall(path)
    local l, err = ledger.open(path)
    assert.is_nil(l)
    assert.is_true(errors.is(err))
    assert.equal(kind, err.kind)
    assert.matches(path, err.message, 1, true)
    assert.matches(pattern, err.message, 1, true)
    assert.equal(before, readall(path))
  end

  it("refuses a foreign file (text, another application's database, a spool) and leaves it as it was", function()
    local text = fresh_path("text")
    local f = assert(io.open(text, "wb"))
    f:write("order,total\nR1,9.99\n")
    f:close()
    assert(core.chmod(text, tonumber("600", 8)))
    refused_unchanged(text, "foreign", "not a ledger file")
    local spath = fresh_path("spool")
    assert(spool.open(spath)):close()
    refused_unchanged(spath, "foreign", "another application (application_id 0x4f4f5350)")
    if sqlite.has_cli() then
      local other = fresh_path("other")
      sqlite.cli(other, "PRAGMA journal_mode=WAL; CREATE TABLE ledger(x); INSERT INTO ledger VALUES (1);")
      assert(core.chmod(other, tonumber("600", 8)))
      refused_unchanged(other, "foreign", "without the ledger's tables")
    end
  end)

  it("refuses a corrupt ledger (kind storage, the file named) and leaves it as it was", function()
    local l, path = open()
    assert(l:record(SCOPE, { { body = body(1), outcome = "sent" } }, { now = T0 }))
    l:close()
    local bytes = readall(path)
    -- keep the 100-byte header (ours, WAL mode), garble the schema page
    local f = assert(io.open(path, "r+b"))
    f:seek("set", 100)
    f:write(("\255"):rep(#bytes - 100))
    f:close()
    refused_unchanged(path, "storage", "damaged")
  end)

  it("refuses a ledger, -wal or -shm another user owns or may read (issue 19)", function()
    local path = fresh_path()
    local f = assert(io.open(path, "wb"))
    f:close()
    assert(core.chmod(path, tonumber("666", 8)))
    local l, err = ledger.open(path)
    assert.is_nil(l)
    assert.equal("storage", err.kind)
    assert.matches("its mode 0666", err.message, 1, true)
    if is_root() then
      local owned = fresh_path()
      local g = assert(io.open(owned .. "-wal", "wb"))
      g:close()
      assert(core.chmod(owned .. "-wal", tonumber("600", 8)))
      assert(sys.run("chown nobody " .. q(owned .. "-wal")))
      l, err = ledger.open(owned)
      assert.is_nil(l)
      assert.matches(owned .. "-wal", err.message, 1, true)
      assert.matches("belongs to another user", err.message, 1, true)
    end
  end)

  it("returns kind storage naming the file when the directory cannot be written", function()
    local l, err = ledger.open(tmpdir .. "/no/such/dir/ledger.db")
    assert.is_nil(l)
    assert.equal("storage", err.kind)
    assert.matches("no/such/dir/ledger.db", err.message, 1, true)
    if not is_root() then return end
    local ro = tmpdir .. "/ro"
    assert(sys.run("mkdir -p " .. q(ro)))
    if not sys.run("mount -t tmpfs -o ro,size=64k tmpfs " .. q(ro) .. " 2>/dev/null") then return end
    l, err = ledger.open(ro .. "/ledger.db")
    sys.run("umount " .. q(ro))
    assert.is_nil(l)
    assert.equal("storage", err.kind)
    assert.matches(ro .. "/ledger.db", err.message, 1, true)
    assert.matches("Read-only file system", err.message, 1, true)
  end)

  it("records until the disk is full, then says so (kind storage), and still answers lookups", function()
    if not is_root() then return pending("needs root to mount a tmpfs") end
    local mnt = tmpdir .. "/tiny"
    assert(sys.run("mkdir -p " .. q(mnt)))
    if not sys.run("mount -t tmpfs -o size=256k tmpfs " .. q(mnt) .. " 2>/dev/null") then
      return pending("cannot mount a tmpfs here")
    end
    local ok, perr = pcall(function()
      local l, path = open(mnt .. "/ledger.db")
      local err
      for i = 1, 20000 do
        local list = {}
        for k = 1, 50 do
          list[k] = { body = body(i * 100 + k, { ref = ("FULL-%07d-%03d"):format(i, k) }), outcome = "sent" }
        end
        local done, e = l:record(SCOPE, list, { now = T0 })
        if not done then err = e break end
      end
      assert.is_true(errors.is(err))
      assert.equal("storage", err.kind)
      assert.matches(path, err.message, 1, true)
      assert.matches("disk full", err.message, 1, true)
      assert.equal("same", assert(l:check(SCOPE, nil, body(101, { ref = "FULL-0000001-001" }))).state)
      l:close()
    end)
    collectgarbage() -- a failed run's handles, before the unmount
    collectgarbage()
    sys.run("umount " .. q(mnt) .. " || umount -l " .. q(mnt))
    assert(ok, perr)
  end)

  it("default_path follows XDG_STATE_HOME, else ~/.local/state, and open(nil) makes the directories 0700", function()
    local home = tmpdir .. "/home"
    local script = child_script("xdg", [[
      local ledger = require("optimizely.offline.ledger")
      local core = require("optimizely.offline.core")
      local p = assert(ledger.default_path())
      local l = assert(ledger.open(nil))
      assert(l.path == p)
      l:close()
      local _, _, mode = core.file_id(p:match("^(.*)/"))
      io.stdout:write(p, " ", ("%o"):format(mode), "\n")
    ]])
    local run = " " .. interpreter() .. " " .. q(script) .. " 2>&1"
    local out = sys.capture("env -u XDG_STATE_HOME HOME=" .. q(home) .. run)
    assert.equal(home .. "/.local/state/optimizely-offline/ledger.db 700\n", out)
    out = sys.capture("env XDG_STATE_HOME=" .. q(tmpdir .. "/state") .. " HOME=" .. q(home) .. run)
    assert.equal(tmpdir .. "/state/optimizely-offline/ledger.db 700\n", out)
    out = sys.capture("env XDG_STATE_HOME=relative HOME=" .. q(home) .. run)
    assert.equal(home .. "/.local/state/optimizely-offline/ledger.db 700\n", out)
  end)

  it("raises on misuse, naming the option", function()
    assert.has_error(function() ledger.open(fresh_path(), { keep = 0 }) end)
    assert.has_error(function() ledger.open(fresh_path(), { kepe = 3 }) end)
    assert.has_error(function() ledger.open("") end)
    local l = open()
    assert.has_error(function() l:check("scope", "R1") end)
    assert.has_error(function() l:check(SCOPE) end)
    assert.has_error(function() l:record(SCOPE, { { body = body(1), outcome = "lost" } }) end)
    assert.has_error(function() l:record(SCOPE, { { body = body(1) } }) end)
    assert.has_error(function() l:reserve(SCOPE, { "not json" }) end)
    assert.has_error(function() l:report({ by = "week" }) end)
    assert.has_error(function() l:report({ from = "2024-02-30" }) end)
    assert.has_error(function() l:report({ timezone = "Mars/Olympus" }) end)
    l:close()
    assert.has_error(function() l:check(SCOPE, "R1") end)
  end)
end)

describe("ledger lookups", function()
  it("answers unknown, same (with when) and changed (the earlier version's outcome and time)", function()
    local l = open()
    assert.equal("unknown", l:check(SCOPE, nil, body(1)).state)
    assert(l:record(SCOPE, { { body = body(1), outcome = "sent" } }, { now = T0 }))
    local a = l:check(SCOPE, nil, body(1))
    assert.same({ state = "same", outcome = "sent", at = T0 }, a)
    a = l:check(SCOPE, nil, body(1, { total = "99.99" }))
    assert.same({ state = "changed", outcome = "sent", at = T0 }, a)
    assert.same({ state = "seen", outcome = "sent", at = T0 }, l:check(SCOPE, "R1"))
    -- the key is host, site, channel and refCode
    assert.equal("unknown", l:check({ host = "x.peerius.com", site = "shop", channel = "store" }, nil, body(1)).state)
    assert.equal("unknown", l:check({ host = SCOPE.host, site = "other", channel = "store" }, nil, body(1)).state)
    assert.equal("unknown", l:check({ host = SCOPE.host, site = "shop", channel = "tv" }, nil, body(1)).state)
    local many = l:check_many(SCOPE, { body(1), { body = body(1), channel = "tv" }, body(2) })
    assert.same({ "same", "unknown", "unknown" }, { many[1].state, many[2].state, many[3].state })
    l:close()
  end)

  it("warned counts as acknowledged", function()
    local l = open()
    assert(l:record(SCOPE, { { body = body(1), outcome = "warned" } }, { now = T0 }))
    assert.same({ state = "same", outcome = "warned", at = T0 }, l:check(SCOPE, nil, body(1)))
    l:close()
  end)

  it("records body strings with opts.outcome, a table's own outcome first", function()
    local l = open()
    assert(l:record(SCOPE, { body(1), { body = body(2), outcome = "dead" } }, { outcome = "sent", now = T0 }))
    assert.equal("sent", l:show("R1")[1].outcome)
    assert.equal("dead", l:show("R2")[1].outcome)
    assert.has_error(function() l:record(SCOPE, { body(3) }) end) -- no outcome anywhere
    assert.has_error(function() l:record(SCOPE, { body(3) }, { outcome = "lost" }) end)
    l:close()
  end)

  it("a dead row never blocks a send, never replaces an acknowledged one, and a success replaces it", function()
    local l = open()
    assert(l:record(SCOPE, { { body = body(1), outcome = "dead" } }, { now = T0 }))
    assert.equal("unknown", l:check(SCOPE, nil, body(1)).state)
    assert.equal("reserved", l:reserve(SCOPE, { body(1) }, { now = T0 })[1].state)
    assert(l:record(SCOPE, { { body = body(1), outcome = "sent" } }, { now = T0 + 5 }))
    assert.same({ state = "same", outcome = "sent", at = T0 + 5 }, l:check(SCOPE, nil, body(1)))
    assert(l:record(SCOPE, { { body = body(1), outcome = "dead" } }, { now = T0 + 9 }))
    assert.same({ state = "same", outcome = "sent", at = T0 + 5 }, l:check(SCOPE, nil, body(1)))
    l:close()
  end)

  it("cancelled blocks: with a body, or marking the row there is without one", function()
    local l = open()
    assert(l:record(SCOPE, { body(1), body(2) }, { outcome = "sent", now = T0 }))
    assert(l:record(SCOPE, { { ref = "R1", outcome = "cancelled" } }, { now = T0 + 1 }))
    assert.same({ state = "same", outcome = "cancelled", at = T0 + 1 }, l:check(SCOPE, nil, body(1)))
    local rows = l:show("R1")
    assert.equal(1, #rows)
    assert.equal(ledger.fingerprint(body(1)), rows[1].fingerprint) -- kept
    assert.equal("Bluewater", rows[1].store)
    -- a cancel of an order the ledger never saw: a row without fingerprint
    assert(l:record(SCOPE, { { ref = "R9", outcome = "cancelled" } }, { now = T0 + 2 }))
    assert.same({ state = "changed", outcome = "cancelled", at = T0 + 2 }, l:check(SCOPE, nil, body(9)))
    assert.is_nil(l:show("R9")[1].fingerprint)
    l:close()
  end)

  it("reserve{short = true}: true for an order reserved, the time for one sent before, else the answer", function()
    local l = open()
    assert(l:record(SCOPE, { body(1) }, { outcome = "sent", now = T0 }))
    assert(l:record(SCOPE, { body(2) }, { outcome = "warned", now = T0 + 1 }))
    assert(l:record(SCOPE, { { ref = "R3", outcome = "cancelled" } }, { now = T0 + 2 }))
    assert(l:record(SCOPE, { body(4) }, { outcome = "sent", now = T0 + 3 }))
    local a = assert(l:reserve(SCOPE, { body(1), body(2), body(3), body(4, { total = "99.00" }), body(5) },
      { now = T0 + 10, short = true }))
    assert.equal(T0, a[1]) -- sent before, the same bytes: its time
    assert.same({ state = "same", outcome = "warned", at = T0 + 1 }, a[2]) -- warned: the whole answer
    assert.same({ state = "changed", outcome = "cancelled", at = T0 + 2 }, a[3])
    assert.same({ state = "changed", outcome = "sent", at = T0 + 3 }, a[4])
    assert.is_true(a[5]) -- reserved now
    -- forced: reserved, but the ledger has it: the whole answer
    local f = assert(l:reserve(SCOPE, { { body = body(1), force = true } }, { now = T0 + 11, short = true }))
    assert.same({ state = "same", outcome = "sent", at = T0, reserved = true }, f[1])
    l:close()
  end)

  it("reserve{refs}: the refCodes beside the bodies give the answers the bodies alone give", function()
    local l, path = open(nil, { keep = 36500 }) -- rows of T0 outlive a second handle's prune
    assert(l:record(SCOPE, { body(1) }, { outcome = "sent", now = T0 }))
    assert(l:record(SCOPE, { body(2) }, { outcome = "warned", now = T0 + 1 }))
    assert(l:record(SCOPE, { body(4) }, { outcome = "sent", now = T0 + 3 }))
    assert(l:record(SCOPE, { body(6) }, { outcome = "dead", now = T0 + 4 }))
    -- an order reserved by another handle is in flight to this one
    local other = open(path, { keep = 36500 })
    assert(other:reserve(SCOPE, { body(7) }, { now = T0 + 5 }))
    local list = { body(1), body(2), body(4, { total = "99.00" }), body(5), body(6), body(7), body(1) }
    local refs = { "R1", "R2", "R4", "R5", "R6", "R7", "R2" } -- the last names another order's row
    local a = assert(l:reserve(SCOPE, list, { now = T0 + 10, short = true, refs = refs }))
    assert.equal(T0, a[1]) -- sent before, the same bytes
    assert.same({ state = "same", outcome = "warned", at = T0 + 1 }, a[2])
    assert.same({ state = "changed", outcome = "sent", at = T0 + 3 }, a[3]) -- other bytes: read in full
    assert.is_true(a[4]) -- never seen: reserved
    assert.is_true(a[5]) -- dead: sent again
    assert.equal("in_flight", a[6].state)
    assert.equal(T0, a[7]) -- R2's row has other bytes: found by the body's own refCode
    -- what the ledger holds is as without refs: R5 and R6 reserved by this handle
    assert.equal("in_flight", other:check(SCOPE, nil, body(5), T0 + 12).state)
    assert.equal("in_flight", other:check(SCOPE, nil, body(6), T0 + 12).state)
    -- forced: reserved, the ref is not used
    local f = assert(l:reserve(SCOPE, { { body = body(1), force = true } }, { now = T0 + 11, short = true,
      refs = { "R1" } }))
    assert.same({ state = "same", outcome = "sent", at = T0, reserved = true }, f[1])
    assert.has_error(function() l:reserve(SCOPE, { body(1) }, { refs = "R1" }) end)
    other:close()
    l:close()
  end)

  it("a large record (rows written many at a time) keeps each item's rule, in order", function()
    local l, path = open()
    local other = open(path)
    local list, n = {}, 75
    assert(l:record(SCOPE, { body(1), body(2) }, { outcome = "sent", now = T0 }))
    local reserved = {}
    for i = 3, n do reserved[#reserved + 1] = body(i) end
    assert(l:reserve(SCOPE, reserved, { now = T0 }))
    for i = 1, n do
      -- dead never replaces R1/R2's acknowledged rows; R40 is cancelled
      -- (without a body) after its own sent row in the same call
      list[#list + 1] = { body = body(i), outcome = (i <= 2 or i % 10 == 0) and "dead" or "warned" }
      if i == 40 then list[#list + 1] = { ref = "R40", outcome = "cancelled" } end
    end
    list[#list + 1] = { ref = "R99", outcome = "cancelled" } -- last, after the rows waiting
    assert(l:record(SCOPE, list, { now = T0 + 5 }))
    for i = 1, n do
      local want = i <= 2 and "sent" or i == 40 and "cancelled" or i % 10 == 0 and "dead" or "warned"
      local rows = l:show("R" .. i)
      assert.equal(1, #rows, "R" .. i) -- the reservation went with the record
      assert.equal(want, rows[1].outcome, "R" .. i)
      assert.equal(ledger.fingerprint(body(i)), rows[1].fingerprint, "R" .. i)
      assert.equal("Bluewater", rows[1].store)
      assert.equal(i <= 2 and T0 or T0 + 5, rows[1].at)
    end
    assert.equal("cancelled", l:show("R99")[1].outcome)
    -- nothing is in flight for another handle any more
    assert.equal("unknown", other:check(SCOPE, nil, body(30)).state)
    l:close()
    other:close()
  end)

  it("show lists a refCode across scopes, with the reservations in flight", function()
    local l = open()
    assert(l:record(SCOPE, { { body = body(1), outcome = "sent" } }, { now = T0 }))
    local h2 = { host = "h2", site = "shop", channel = "tv" }
    assert(l:record(h2, { { body = body(1), outcome = "dead" } }, { now = T0 + 1 }))
    assert(l:reserve({ host = "h3", site = "s", channel = "store" }, { body(1) }, { now = T0, lease = 60 }))
    local rows = l:show("R1")
    assert.equal(3, #rows)
    assert.same({ "sent", "dead", "pending" }, { rows[1].outcome, rows[2].outcome, rows[3].outcome })
    assert.same({ SCOPE.host, "h2", "h3" }, { rows[1].host, rows[2].host, rows[3].host })
    assert.equal(l:owner(), rows[3].owner)
    assert.equal(T0 + 60, rows[3]["until"])
    assert.equal("2024-05-16", rows[1].order_date)
    assert.equal("GBP", rows[1].currency)
    assert.same({}, l:show("R404"))
    l:close()
  end)

  it("export streams every row in pages", function()
    local l = open()
    local list = {}
    for i = 1, 250 do list[i] = { body = body(i), outcome = i % 10 == 0 and "dead" or "sent" } end
    assert(l:record(SCOPE, list, { now = T0 }))
    assert(l:record({ host = "h2", site = "s", channel = "tv" }, { body(1) }, { outcome = "sent", now = T0 }))
    local seen, n = {}, 0
    assert.equal(251, l:export(function(r)
      n = n + 1
      seen[r.host .. "/" .. r.ref] = r.outcome
    end, { batch = 7 }))
    assert.equal(251, n)
    assert.equal("dead", seen[SCOPE.host .. "/R10"])
    assert.equal("sent", seen["h2/R1"])
    local stopped = 0
    local done, err = l:export(function() stopped = stopped + 1 return false end)
    assert.is_nil(done)
    assert.equal("export", err.kind)
    assert.equal(1, stopped)
    l:close()
  end)
end)

describe("ledger reservations", function()
  it("an order reserved by a live handle is in flight for everyone else; an expired one is free again", function()
    local path = fresh_path()
    local a, b = open(path), open(path)
    assert.equal("reserved", a:reserve(SCOPE, { body(1) }, { lease = 10, now = T0 })[1].state)
    local other = b:reserve(SCOPE, { body(1) }, { lease = 10, now = T0 + 1 })[1]
    assert.same({ state = "in_flight", ["until"] = T0 + 10, mine = false }, other)
    local mine = a:check(SCOPE, nil, body(1), T0 + 2)
    assert.is_true(mine.mine)
    -- a twin in the same batch is in flight too: sent once
    local twice = a:reserve(SCOPE, { body(2), body(2) }, { now = T0 })
    assert.same({ "reserved", "in_flight" }, { twice[1].state, twice[2].state })
    -- the lease runs out (its process died): free again
    assert.equal("reserved", b:reserve(SCOPE, { body(1) }, { lease = 10, now = T0 + 11 })[1].state)
    -- release gives an order back unsent
    assert(b:release(SCOPE, { body(1) }))
    assert.equal("reserved", a:reserve(SCOPE, { { ref = "R1" } }, { now = T0 + 12 })[1].state)
    a:close()
    b:close()
  end)

  it("a reservation of many orders at once keeps each order's rule", function()
    local path = fresh_path()
    local a, b = open(path), open(path)
    -- a process that died holding R20..R29; a live handle holding R3, R4; R5's lease ran out
    local script = child_script("dies", ([[
      local ledger = require("optimizely.offline.ledger")
      local l = assert(ledger.open(%q))
      local list = {}
      for i = 20, 29 do list[#list + 1] = { ref = "R" .. i } end
      assert(l:reserve({ host = %q, site = %q, channel = %q }, list, { lease = 600, now = %d }))
      io.stdout:write("ok\n")
      os.exit(0)
    ]]):format(path, SCOPE.host, SCOPE.site, SCOPE.channel, T0))
    local child = assert(io.popen(interpreter() .. " " .. q(script) .. " 2>&1"))
    assert.equal("ok\n", child:read("*a"))
    child:close()
    -- (after the child's open: it prunes rows as old as T0)
    assert(a:record(SCOPE, { body(1), body(2, { total = "1.00" }) }, { outcome = "sent", now = T0 }))
    assert(b:reserve(SCOPE, { body(3), body(4) }, { lease = 600, now = T0 }))
    assert(b:reserve(SCOPE, { body(5) }, { lease = 1, now = T0 }))
    local list = {}
    for i = 3, 50 do list[#list + 1] = body(i) end -- 32 at once, then one at a time
    list[#list + 1] = body(1)
    list[#list + 1] = { body = body(2), force = true }
    local got = assert(a:reserve(SCOPE, list, { lease = 60, now = T0 + 5 }))
    local by = {}
    for k, x in ipairs(got) do by[k <= 48 and k + 2 or k - 48] = x end
    assert.same({ state = "same", outcome = "sent", at = T0 }, by[1])
    assert.same({ state = "changed", outcome = "sent", at = T0, reserved = true }, by[2])
    for i = 3, 4 do assert.same({ state = "in_flight", ["until"] = T0 + 600, mine = false }, by[i]) end
    for i = 5, 50 do assert.same({ state = "reserved", reserved = true }, by[i], "R" .. i) end
    -- taken over: the dead process's reservations are this handle's now
    assert.is_true(b:check(SCOPE, nil, body(25), T0 + 6).state == "in_flight")
    assert.is_true(a:check(SCOPE, nil, body(25), T0 + 6).mine)
    a:close()
    b:close()
  end)

  it("two processes reserving and recording at once never both get one order", function()
    local path = fresh_path()
    open(path):close()
    local script = child_script("reserver", ([[
      local ledger = require("optimizely.offline.ledger")
      local offline = require("optimizely.offline")
      local me, path, dir = arg[1], %q, %q
      local l = assert(ledger.open(path, { busy_timeout = 30 }))
      local scope = { host = "h", site = "s", channel = "store" }
      local out = assert(io.open(dir .. "/got." .. me, "wb"))
      local function body(i)
        return assert(offline.encode({ user = { id = "u" }, order = { refCode = "P" .. i,
          orderDate = "2024-05-16T14:25:00Z", currency = "GBP", total = 1,
          items = { { refCode = "S", qty = 1, price = 1 } } } }))
      end
      for round = 0, 59 do
        local list = {}
        -- overlapping windows, 32 at a time and then one at a time
        for k = 1, 40 do list[k] = body(round * 14 + k) end
        local answers = assert(l:reserve(scope, list, { lease = 60 }))
        local sent = {}
        for k, a in ipairs(answers) do
          if a.state == "reserved" then
            out:write("P", round * 14 + k, "\n")
            sent[#sent + 1] = { body = list[k], outcome = "sent" }
          end
        end
        assert(l:record(scope, sent))
      end
      out:close()
      l:close()
      io.stdout:write("ok\n")
    ]]):format(path, tmpdir))
    local procs = {}
    for _, me in ipairs({ "a", "b" }) do
      procs[me] = assert(io.popen(interpreter() .. " " .. q(script) .. " " .. me .. " 2>&1"))
    end
    for _, me in ipairs({ "a", "b" }) do
      local out = procs[me]:read("*a")
      procs[me]:close()
      assert.equal("ok\n", out)
    end
    local count, total = {}, 0
    for _, me in ipairs({ "a", "b" }) do
      for ref in readall(tmpdir .. "/got." .. me):gmatch("[^\n]+") do
        count[ref] = (count[ref] or 0) + 1
        total = total + 1
      end
    end
    local distinct = 59 * 14 + 40
    assert.equal(distinct, total) -- each order sent exactly once, by one of them
    for i = 1, distinct do assert.equal(1, count["P" .. i], "P" .. i) end
  end)
end)

describe("ledger retention", function()
  it("prunes rows older than keep days on open and says how far back it knows", function()
    local path = fresh_path()
    local l = open(path)
    local old, new = {}, {}
    for i = 1, 30 do old[i] = { body = body(i), outcome = "sent" } end
    for i = 31, 40 do new[i - 30] = { body = body(i), outcome = "sent" } end
    local now = os.time()
    assert(l:record(SCOPE, old, { now = now - 10 * 86400 }))
    assert(l:record(SCOPE, new, { now = now - 86400 }))
    local span = l:span()
    assert.equal(now - 10 * 86400, span.oldest)
    assert.equal(200, span.keep)
    l:close()
    l = open(path, { keep = 5 })
    assert.equal("unknown", l:check(SCOPE, nil, body(1)).state)
    assert.equal("same", l:check(SCOPE, nil, body(31)).state)
    span = l:span()
    assert.equal(now - 86400, span.oldest)
    assert.is_true(span.pruned_before >= now - 5 * 86400 - 5 and span.pruned_before <= now - 86400)
    assert.equal(span.pruned_before, span.since)
    assert.equal(5, span.keep)
    l:close()
  end)

  it("prunes as it records (every 1000 rows, a bounded number at a time)", function()
    local l = open(nil, { keep = 1 })
    local list = {}
    for i = 1, 500 do list[i] = { body = body(i), outcome = "sent" } end
    assert(l:record(SCOPE, list, { now = T0 }))
    for i = 1, 500 do list[i] = { body = body(1000 + i), outcome = "sent" } end
    assert(l:record(SCOPE, list, { now = T0 + 3 * 86400 })) -- 1000 rows recorded: the first 500 are old
    assert.equal("unknown", l:check(SCOPE, nil, body(1)).state)
    assert.equal("same", l:check(SCOPE, nil, body(1001)).state)
    l:close()
  end)

  it("forget deletes the rows recorded before a date and returns how many", function()
    local l = open()
    assert(l:record(SCOPE, { body(1), { body = body(2), outcome = "dead" } }, { outcome = "sent", now = T0 }))
    assert(l:record(SCOPE, { { body = body(3), outcome = "sent" } }, { now = T0 + 2 * 86400 }))
    assert.equal(2, l:forget(T0 + 86400))
    assert.equal(0, l:forget("2023-11-14"))
    assert.equal(1, l:forget("2099-01-01"))
    assert.equal(0, #l:show("R3"))
    assert.equal(4070908800, l:span().pruned_before)
    l:close()
  end)
end)

describe("ledger reports", function()
  -- 400 orders over 6 days, 3 stores, 3 currencies, every outcome; the
  -- expected sums are made here in integers, from the same inputs.
  local currencies = { { "GBP", 2 }, { "JPY", 0 }, { "BHD", 3 } }
  local outcomes = { "sent", "warned", "dead", "cancelled" }
  local function make(l)
    local expect, list = {}, {}
    local seed = 12345
    local function rand(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    for i = 1, 400 do
      local cur = currencies[rand(3)]
      local minor = rand(5000000)
      local scale = 10 ^ cur[2]
      local total = cur[2] == 0 and tostring(minor)
        or ("%d.%0" .. cur[2] .. "d"):format(math.floor(minor / scale), minor % scale)
      local day, hour = rand(6), rand(24) - 1
      local store = ({ "Bluewater", "Oxford St", "Leeds" })[rand(3)]
      local outcome = outcomes[rand(4)]
      local date = ("2024-03-%02dT%02d:30:00Z"):format(day + 9, hour)
      -- London: 2024-03-31 01:00 UTC starts summer time, so these days stay UTC days
      local key = table.concat({ ("2024-03-%02d"):format(day + 9), store, cur[1] }, "|")
      local e = expect[key] or { sent = { 0, 0 }, warned = { 0, 0 }, dead = { 0, 0 }, cancelled = { 0, 0 } }
      expect[key] = e
      e[outcome][1] = e[outcome][1] + 1
      e[outcome][2] = e[outcome][2] + minor
      list[i] = { body = body(i, { total = total, currency = cur[1], date = date, store = store }), outcome = outcome }
    end
    assert(l:record(SCOPE, list, { now = T0 }))
    return expect
  end

  it("sums orders and totals per day, store and currency exactly, for every outcome", function()
    local l = open()
    local expect = make(l)
    local groups = assert(l:report({ by = "day,store,currency", timezone = "Europe/London" }))
    local seen = 0
    for _, g in ipairs(groups) do
      local e = expect[g.day .. "|" .. g.store .. "|" .. g.currency]
      assert.is_table(e, g.day .. "|" .. g.store .. "|" .. g.currency)
      for _, o in ipairs(outcomes) do
        assert.equal(e[o][1], g[o].orders)
        assert.equal(e[o][2], g[o].total_minor)
        local decimals = g.currency == "JPY" and 0 or g.currency == "GBP" and 2 or 3
        local scale = 10 ^ decimals
        local text = decimals == 0 and tostring(e[o][2])
          or ("%d.%0" .. decimals .. "d"):format(math.floor(e[o][2] / scale), e[o][2] % scale)
        assert.equal(text, g[o].total)
      end
      seen = seen + 1
    end
    local keys = 0
    for _ in pairs(expect) do keys = keys + 1 end
    assert.equal(keys, seen)
    l:close()
  end)

  it("groups by any of day, store, channel, currency, within from/to, in a time zone", function()
    local l = open()
    local expect = make(l)
    local by_currency = {}
    for key, e in pairs(expect) do
      local day, _, cur = key:match("^([^|]+)|([^|]+)|([^|]+)$")
      if day >= "2024-03-11" and day <= "2024-03-13" then
        by_currency[cur] = (by_currency[cur] or 0) + e.sent[2]
      end
    end
    local groups = assert(l:report({ by = { "currency" }, from = "2024-03-11", to = "2024-03-13" }))
    assert.equal(3, #groups)
    for _, g in ipairs(groups) do
      assert.is_nil(g.day)
      assert.is_nil(g.store)
      assert.equal(by_currency[g.currency], g.sent.total_minor)
    end
    -- Tokyo is 9 hours ahead: an order at 20:30 UTC falls on the next day
    local l2 = open()
    local late = body(1, { date = "2024-03-10T20:30:00Z", total = "5.00" })
    assert(l2:record(SCOPE, { { body = late, outcome = "sent" } }, { now = T0 }))
    local tokyo = assert(l2:report({ by = "day,channel", timezone = "Asia/Tokyo" }))
    assert.equal(1, #tokyo)
    assert.same({ "2024-03-11", "store", "GBP", 1, "5.00" },
      { tokyo[1].day, tokyo[1].channel, tokyo[1].currency, tokyo[1].sent.orders, tokyo[1].sent.total })
    assert.equal("2024-03-10", l2:report({ by = "day" })[1].day)
    l:close()
    l2:close()
  end)
end)

describe("the ledger in a spool's file", function()
  local function spooled(path, o)
    local sp = assert(spool.open(path or fresh_path("spool")))
    local l = assert(sp:ledger(o or { host = SCOPE.host, site = SCOPE.site, channel = SCOPE.channel }))
    return sp, l
  end

  it("an ack writes its ledger row (sent or warned); a kill a dead row; a cancel row's ack cancelled", function()
    local sp, l = spooled()
    assert.is_true(l:in_spool())
    local ids = assert(sp:put_many({ { body = body(1), ref = "R1" }, { body = body(2), ref = "R2" },
      { body = body(3), ref = "R3", channel = "tv" }, { body = body(4), ref = "R4" } }, T0))
    local rows = assert(sp:claim(10, 60, T0))
    assert.equal(4, #rows)
    assert(sp:ack(ids[1]))
    assert(sp:ack_many({ ids[2], ids[3] }, { "warned", "sent" }))
    assert(sp:kill(ids[4], { kind = "api", status = 400 }, T0))
    assert.equal("sent", l:check(SCOPE, nil, body(1)).outcome)
    assert.equal("warned", l:check(SCOPE, nil, body(2)).outcome)
    assert.equal("unknown", l:check(SCOPE, nil, body(3)).state) -- its channel is tv
    assert.equal("sent", l:check({ host = SCOPE.host, site = SCOPE.site, channel = "tv" }, nil, body(3)).outcome)
    assert.equal("dead", l:show("R4")[1].outcome)
    -- cancel R1: the cancel row's ack records it cancelled (fingerprint kept)
    local cid = assert(sp:put_cancel("R1", nil, T0))
    local c = assert(sp:claim(1, 60, T0))[1]
    assert.same({ cid, "cancel", "R1", "" }, { c.id, c.op, c.ref, c.body })
    assert(sp:ack(cid))
    assert.same({ state = "same", outcome = "cancelled", at = l:show("R1")[1].at }, l:check(SCOPE, nil, body(1)))
    -- a dead letter never replaces an acknowledged row
    local again = assert(sp:put(body(2), "R2", T0))
    assert(sp:claim(1, 60, T0))
    assert(sp:kill(again, "gave up", T0))
    assert.equal("warned", l:show("R2")[1].outcome)
    l:close()
    sp:close()
  end)

  it("expired and dropped dead letters are recorded dead too", function()
    local sp = assert(spool.open(fresh_path("spool"), { max_age = 60, max_orders = 2, on_full = "drop_oldest" }))
    local l = assert(sp:ledger({ host = SCOPE.host, site = SCOPE.site, channel = SCOPE.channel }))
    assert(sp:put(body(1), "R1", T0))
    assert(sp:put(body(2), "R2", T0 + 1))
    assert(sp:put(body(3), "R3", T0 + 2)) -- drops R1
    assert(sp:put(body(4), "R4", T0 + 100)) -- expires R2 and R3
    for i = 1, 3 do assert.equal("dead", l:show("R" .. i)[1].outcome, "R" .. i) end
    assert.same({}, l:show("R4"))
    l:close()
    sp:close()
  end)

  it("acks and ledger rows stay consistent across kill -9 at any moment", function()
    local path = fresh_path("spool")
    local sp0, l0 = spooled(path)
    l0:close()
    sp0:close()
    local script = child_script("acker", ([[
      local spool = require("optimizely.offline.spool")
      local offline = require("optimizely.offline")
      local sp = assert(spool.open(%q, { busy_timeout = 30 }))
      assert(sp:ledger({ host = %q, site = %q, channel = "store" }))
      local me = arg[1]
      assert(io.open(%q .. "/ready." .. me, "w")):close()
      for round = 1, 100000 do
        local list = {}
        for k = 1, 8 do
          local ref = ("K%%s-%%d-%%d"):format(me, round, k)
          list[k] = { ref = ref, body = assert(offline.encode({ user = { id = "u" }, order = {
            refCode = ref, orderDate = "2024-05-16T14:25:00Z", currency = "GBP", total = 1,
            items = { { refCode = "S", qty = 1, price = 1 } } } })) }
        end
        assert(sp:put_many(list))
        local rows = assert(sp:claim(16, 1))
        local ids = {}
        for i, r in ipairs(rows) do ids[i] = r.id end
        if #ids > 0 then sp:ack_many(ids) end
      end
    ]]):format(path, SCOPE.host, SCOPE.site, tmpdir))
    math.randomseed(os.time())
    for run = 1, 8 do
      local p = assert(io.popen(interpreter() .. " " .. q(script) .. " " .. run .. " >/dev/null 2>&1 & echo $!"))
      local pid = p:read("*l")
      for _ = 1, 3000 do -- it has opened the spool (the ASan build starts slowly)
        if sys.exists(tmpdir .. "/ready." .. run) then break end
        core.sleep(0.01)
      end
      core.sleep(0.05 + math.random() * 0.25) -- then at any moment
      sys.run("kill -9 " .. pid)
      p:close()
    end
    local sp, l = spooled(path)
    -- every order ever put is queued or recorded sent, never both, never neither
    local queued, put = {}, 0
    for _, r in ipairs(assert(sp:list({ limit = 1000000 }))) do queued[r.ref] = true end
    local recorded = 0
    assert(l:export(function(row)
      assert.is_nil(queued[row.ref], row.ref .. " is both queued and recorded")
      assert.equal("sent", row.outcome)
      recorded = recorded + 1
    end))
    for _ in pairs(queued) do put = put + 1 end
    local seq = tonumber(sqlite.cli(path, "SELECT seq FROM totals"))
    if seq then assert.equal(seq, put + recorded) end
    assert.is_true(recorded > 0)
    l:close()
    sp:close()
  end)

  it("a cancel waits behind its create, and a create behind an earlier cancel (amend)", function()
    local sp, l = spooled()
    local create = assert(sp:put(body(1), "R1", T0))
    local cancel = assert(sp:put_cancel("R1", nil, T0))
    assert(sp:put(body(2), "R2", T0))
    local rows = assert(sp:claim(10, 60, T0))
    assert.same({ create, "create" }, { rows[1].id, rows[1].op })
    assert.equal(2, #rows) -- R1's create and R2: the cancel waits
    assert.same({}, assert(sp:claim(10, 60, T0)))
    assert(sp:retry(create, T0, "timeout")) -- still queued: the cancel still waits
    rows = assert(sp:claim(10, 60, T0))
    assert.same({ create }, { rows[1].id })
    assert.equal(1, #rows)
    assert(sp:ack(create))
    rows = assert(sp:claim(10, 60, T0))
    assert.same({ cancel, "cancel" }, { rows[1].id, rows[1].op })
    assert(sp:ack(cancel))
    -- amend: a cancel, then the new version, which waits behind it
    local c2 = assert(sp:put_cancel("R5", nil, T0))
    local v2 = assert(sp:put(body(5, { total = "1.00" }), "R5", T0))
    rows = assert(sp:claim(10, 60, T0))
    assert.same({ c2 }, { rows[1].id })
    assert.equal(1, #rows)
    assert(sp:ack(c2))
    assert.equal(v2, assert(sp:claim(10, 60, T0))[1].id)
    -- dead letters keep op and requeue brings it back
    local c3 = assert(sp:put_cancel("R7", "tv", T0))
    assert(sp:claim(1, 60, T0))
    assert(sp:kill(c3, "refused", T0))
    assert.equal("cancel", sp:list({ dead = true })[1].op)
    assert.equal("cancelled", l:show("R1")[1].outcome)
    assert.same({}, l:show("R7")) -- a dead cancel changes nothing
    l:close()
    sp:close()
  end)

  it("cancel_queued removes the undelivered creates of a refCode and records them cancelled", function()
    local sp, l = spooled()
    assert(sp:put_many({ { body = body(1), ref = "R1" }, { body = body(2), ref = "R2" } }, T0))
    local r = assert(sp:cancel_queued("R1", nil, T0))
    assert.same({ removed = 1, in_flight = 0, seen = false }, r)
    assert.equal(1, sp:stats(T0).queued)
    assert.equal("cancelled", l:show("R1")[1].outcome)
    assert.equal("same", l:check(SCOPE, nil, body(1)).state) -- a later push is refused unless forced
    -- one in flight: nothing removed, nothing recorded; the caller puts a cancel
    local rows = assert(sp:claim(1, 60, T0))
    assert.equal("R2", rows[1].ref)
    assert.same({ removed = 0, in_flight = 1, seen = false }, assert(sp:cancel_queued("R2", nil, T0)))
    assert.same({}, l:show("R2"))
    -- an acknowledged one: seen, so the DELETE must go out
    assert(sp:ack(rows[1].id))
    assert(sp:put(body(2, { total = "7.00" }), "R2", T0))
    assert.same({ removed = 1, in_flight = 0, seen = true }, assert(sp:cancel_queued("R2", nil, T0)))
    assert.equal("sent", l:show("R2")[1].outcome)
    l:close()
    sp:close()
  end)

  it("purge_user removes one customer's undelivered orders by e-mail or user id", function()
    local sp = assert(spool.open(fresh_path("spool")))
    local jane = { email = "Jane.Doe@Example.com" }
    assert(sp:put_many({
      { body = body(1, { user = jane }), ref = "R1" },
      { body = body(2, { user = { email = "jane.doe@example.com" } }), ref = "R2" },
      { body = body(3, { user = { email = "john@example.com" } }), ref = "R3" },
      { body = body(4, { user = { id = "cust-42" } }), ref = "R4" },
      { body = body(5, { user = jane }), ref = "R5" },
      { body = body(6, { user = jane }), ref = "R6" },
    }, T0))
    local rows = assert(sp:claim(6, 60, T0))
    assert(sp:kill(rows[5].id, "bad", T0)) -- R5: a dead letter
    for i = 1, 4 do assert(sp:release(rows[i].id)) end -- R6 stays in flight
    -- R1, R2 queued and R5 dead removed; R6 being delivered is left
    assert.same({ 3, 1 }, { sp:purge_user({ email = " JANE.DOE@example.COM " }, T0) })
    assert.same({ 1, 0 }, { sp:purge_user({ user_id = "cust-42" }, T0) })
    local left = {}
    for _, r in ipairs(sp:list()) do left[#left + 1] = r.ref end
    assert.same({ "R3", "R6" }, left)
    assert.equal(0, sp:stats(T0).dead)
    assert.same({ 0, 0 }, { sp:purge_user({ email = "not an address" }, T0) })
    assert.has_error(function() sp:purge_user({}, T0) end)
    sp:close()
  end)

  it("migrates a version-2 spool in place: rows kept, creates by default, the ledger's tables added", function()
    if not sqlite.has_cli() then return pending("sqlite3 CLI not installed") end
    local path = fresh_path("v2")
    sqlite.cli(path, [[
PRAGMA journal_mode=WAL; PRAGMA application_id = 1330598736;
CREATE TABLE orders( id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL, bytes INT NOT NULL,
 created_at REAL NOT NULL, attempts INT NOT NULL DEFAULT 0, next_at REAL NOT NULL, claimed_by TEXT,
 claimed_until REAL, last_error TEXT, channel TEXT);
CREATE INDEX orders_next_at ON orders(next_at);
CREATE INDEX orders_created_at ON orders(created_at);
CREATE INDEX orders_leased ON orders(claimed_until) WHERE claimed_by IS NOT NULL;
CREATE TABLE dead( id INTEGER PRIMARY KEY, ref TEXT, body BLOB NOT NULL, created_at REAL,
 failed_at REAL NOT NULL, attempts INT NOT NULL, kind TEXT NOT NULL, status INT, code TEXT, message TEXT,
 channel TEXT);
CREATE INDEX dead_failed_at ON dead(failed_at);
CREATE TABLE totals(one INTEGER PRIMARY KEY CHECK (one = 1), n INT NOT NULL, bytes INT NOT NULL,
 seq INT NOT NULL DEFAULT 0);
INSERT INTO totals VALUES (1, 0, 0, 2);
CREATE TRIGGER orders_ins AFTER INSERT ON orders BEGIN
 UPDATE totals SET n = n + 1, bytes = bytes + NEW.bytes, seq = max(seq, NEW.id) WHERE one = 1; END;
CREATE TRIGGER orders_del AFTER DELETE ON orders BEGIN
 UPDATE totals SET n = n - 1, bytes = bytes - OLD.bytes WHERE one = 1; END;
INSERT INTO orders(id, ref, body, bytes, created_at, next_at, channel)
 VALUES (1, 'Q1', 'queued-1', 8, 1700000000, 1700000000, 'tv');
INSERT INTO dead VALUES (2, 'D2', 'dead-2', 1700000000, 1700000050, 1, 'api', 400, 'Bad', 'bad order', NULL);
PRAGMA user_version = 2;]])
    assert(core.chmod(path, tonumber("600", 8)))
    local sp = assert(spool.open(path))
    local rows = assert(sp:claim(5, 60, T0))
    assert.same({ 1, "Q1", "create", "tv" }, { rows[1].id, rows[1].ref, rows[1].op, rows[1].channel })
    assert.equal("create", sp:list({ dead = true })[1].op)
    assert.equal(3, assert(sp:put(body(3), "R3", T0)))
    local l = assert(sp:ledger({ host = "h", site = "s", channel = "store" }))
    assert(sp:ack(rows[1].id))
    assert.equal("sent", l:show("Q1")[1].outcome)
    l:close()
    sp:close()
    assert.equal("3", sqlite.cli(path, "PRAGMA user_version"))
    assert.equal("1", sqlite.cli(path, "SELECT count(*) FROM sqlite_master WHERE name = 'ledger_pending'"))
  end)
end)
