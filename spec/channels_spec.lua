-- Several channels in one client and pseudonymised ids, through every
-- front door (send, send_batch, both queue kinds of storage), against the
-- sandbox, which records the channel and which channel's token each order
-- came with (token_id), never a token.
local offline = require("optimizely.offline")
local orders = require("support.orders")
local sb = require("support.sandbox")
local wait = require("support.wait")
local sys = require("optimizely.offline.sys")

local KEY = "channels-spec-key-0123456789"

local function payload(ref, user)
  local p = orders.minimal()
  p.order.refCode = ref
  p.user = user
  return p
end

local function recorded(ref)
  return sb.orders({ refCode = ref })[1]
end

local function body_user(rec)
  return sb.json.decode(rec.body).user
end

describe("channels and pseudonymised ids", function()
  local info, tokens

  setup(function()
    info = sb.ensure()
    tokens = { store = info.token, callcentre = assert(info.tokens and info.tokens.callcentre,
      "the shared sandbox has a callcentre token") }
  end)

  before_each(function() sb.reset() end)

  local function client(extra)
    return offline.client(sb.client_config(info, { tokens = tokens, token = false, channel = "store",
      backoff_base = 0.02, backoff_max = 0.1 }, extra))
  end

  describe("channels", function()
    it("sends each order with its channel's token (send and send_encoded)", function()
      local c = client()
      assert(c:send(payload("ch-store-1")))
      assert(c:send(payload("ch-cc-1"), { channel = "callcentre" }))
      assert(c:send_encoded(assert(offline.encode(payload("ch-cc-2"))), { channel = "callcentre" }))
      assert.equal("store", recorded("ch-store-1").token_id)
      assert.equal("callcentre", recorded("ch-cc-1").channel)
      assert.equal("callcentre", recorded("ch-cc-1").token_id)
      assert.equal("callcentre", recorded("ch-cc-2").token_id)
      c:close()
    end)

    it("refuses an order whose channel has no token before anything is sent", function()
      local c = client()
      local res, err = c:send(payload("ch-tv-1"), { channel = "tv" })
      assert.is_nil(res)
      assert.equal("config", err.kind)
      assert.matches('no token for channel "tv"', err.message)
      assert.equal(0, err.attempts)
      assert.equal(0, sb.stats().requests)
      c:close()
    end)

    it("sends a mixed-channel batch in one run, each order under its own token", function()
      local c = client()
      local list = {}
      for i = 1, 20 do
        local ch = i % 2 == 0 and "callcentre" or "store"
        list[i] = { payload = payload("mix-" .. i), channel = ch }
      end
      list[21] = { payload = payload("mix-21"), channel = "tv" } -- no token: refused, not sent
      local s = c:send_batch(list, { concurrency = 4 })
      assert.equal(20, s.sent)
      assert.equal(1, s.failed)
      assert.equal("config", s.failures[1].err.kind)
      for i = 1, 20 do
        local rec = recorded("mix-" .. i)
        local ch = i % 2 == 0 and "callcentre" or "store"
        assert.equal(ch, rec.channel, "mix-" .. i)
        assert.equal(ch, rec.token_id, "mix-" .. i)
      end
      assert.equal(20, sb.stats().requests)
      -- an iterator names the channel as its second value
      sb.reset()
      local i = 0
      s = c:send_batch(function()
        i = i + 1
        if i > 4 then return nil end
        return payload("it-" .. i), (i % 2 == 0) and "callcentre" or nil
      end)
      assert.equal(4, s.sent)
      assert.equal("callcentre", recorded("it-2").token_id)
      assert.equal("store", recorded("it-3").token_id)
      c:close()
    end)

    it("keeps each order's channel in a queue, in memory and in the spool", function()
      local dir = sys.capture("mktemp -d"):gsub("%s+$", "")
      for _, spool in ipairs({ false, dir .. "/q.db" }) do
        sb.reset()
        local c = client()
        local q = assert(c:queue({ spool = spool or nil }))
        assert.is_true(q:push(payload("q-store-" .. tostring(spool ~= false))))
        assert.is_true(q:push(payload("q-cc-" .. tostring(spool ~= false)), { channel = "callcentre" }))
        local ok, err = q:push(payload("q-tv"), { channel = "tv" })
        assert.is_nil(ok)
        assert.equal("config", err.kind)
        assert.is_true(q:flush(20))
        assert.equal("store", recorded("q-store-" .. tostring(spool ~= false)).token_id)
        assert.equal("callcentre", recorded("q-cc-" .. tostring(spool ~= false)).token_id)
        q:close()
        c:close()
      end
      os.execute("rm -rf " .. sys.q(dir))
    end)

    it("delivers a two-channel spool with the right tokens after the pusher is killed (kill -9)", function()
      local dir = sys.capture("mktemp -d"):gsub("%s+$", "")
      local path = dir .. "/two.db"
      -- nothing gets through while the pusher lives, and slowly: orders are in flight when it dies
      sb.faults({ count = 100000, status = 503, delay = 0.2 })
      -- the pusher: a child process that pushes 10 orders of each channel, then waits to be killed.
      -- Orders it has in flight when killed stay leased to it until the lease runs out (then
      -- anyone may claim them): a 2 s lease, not the default 60 s, so flush(30) sees them.
      local script = dir .. "/pusher.lua"
      local f = assert(io.open(script, "w"))
      f:write(([[
local offline = require("optimizely.offline")
local c = offline.client({ site = %q, channel = "store", tokens = { store = %q, callcentre = %q },
  base_url = %q, ca_file = %q, backoff_base = 0.05, backoff_max = 0.2, timeout = 1 })
local q = assert(c:queue({ spool = %q, lease = 2 }))
for i = 1, 10 do
  assert(q:push({ user = { id = "u" }, order = { refCode = "k9-s-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
    currency = "GBP", total = 1, items = { { refCode = "a", qty = 1, price = 1 } } } }))
  assert(q:push({ user = { id = "u" }, order = { refCode = "k9-c-" .. i, orderDate = "2016-05-16T14:25:00 GMT",
    currency = "GBP", total = 1, items = { { refCode = "a", qty = 1, price = 1 } } } }, { channel = "callcentre" }))
end
io.open(%q, "w"):write("pushed"):close()
while true do q:poll(); require("optimizely.offline.core").sleep(0.05) end
]]):format(info.site, tokens.store, tokens.callcentre, info.base_url, info.ca_file, path, dir .. "/done"))
      f:close()
      local lua = os.getenv("OO_LUA") or (type(jit) == "table" and "luajit" or "lua5.4")
      local pid = sys.capture(("env LUA_PATH=%s LUA_CPATH=%s %s %s >/dev/null 2>&1 & echo $!"):format(
        sys.q(package.path), sys.q(package.cpath), lua, sys.q(script))):match("%d+")
      wait.poll(function() return sys.exists(dir .. "/done") end, 30)
      assert.is_true(sys.exists(dir .. "/done"), "the pusher did not push")
      -- a few 503s answered and their retries recorded in the rows
      wait.poll(function()
        local st = sb.stats()
        return st.faults_served - st.concurrent_now >= 4
      end, 10, 0.02)
      os.execute("kill -9 " .. pid)
      sb.clear_faults()
      sb.reset()
      local c = client()
      local q = assert(c:queue({ spool = path }))
      assert.is_true(q:flush(30))
      for i = 1, 10 do
        assert.equal("store", recorded("k9-s-" .. i).token_id, "k9-s-" .. i)
        assert.equal("callcentre", recorded("k9-c-" .. i).token_id, "k9-c-" .. i)
      end
      assert.equal(20, #sb.orders())
      q:close()
      c:close()
      os.execute("rm -rf " .. sys.q(dir))
    end)
  end)

  describe("pseudonymise (replace_email)", function()
    local function expected(email) return assert(offline.pseudonymise(email, { key = KEY })) end

    it("client:send replaces user.email with the pseudonymised id before validation", function()
      local c = client({ pseudonymise = { key = KEY } })
      local res = assert(c:send(payload("ps-1", { email = " Jane.Doe@Example.COM " })))
      assert.equal(200, res.status)
      local u = body_user(recorded("ps-1"))
      assert.equal(expected("jane.doe@example.com"), u.id)
      assert.is_nil(u.email)
      c:close()
    end)

    it("warns when both are present and disagree, and leaves an id-only order alone", function()
      local c = client({ pseudonymise = { key = KEY } })
      local res = assert(c:send(payload("ps-2", { email = "a@example.com", id = "not-the-pseudonym" })))
      local w = res.warnings[1]
      assert.equal("pseudonymise", w.source)
      assert.equal("user.id", w.path)
      assert.is_nil(w.message:find("a@example.com", 1, true))
      assert.equal("not-the-pseudonym", body_user(recorded("ps-2")).id)
      assert(c:send(payload("ps-3", { id = "kept" })))
      assert.equal("kept", body_user(recorded("ps-3")).id)
      c:close()
    end)

    it("works through send_batch (its own option) and a queue", function()
      local c = client()
      local s = c:send_batch({ payload("ps-b1", { email = "b@example.com" }) }, { pseudonymise = { key = KEY } })
      assert.equal(1, s.sent)
      assert.equal(expected("b@example.com"), body_user(recorded("ps-b1")).id)
      local q = assert(c:queue({ pseudonymise = { key = KEY } }))
      assert.is_true(q:push(payload("ps-q1", { email = "Q@example.com" })))
      assert.is_true(q:flush(20))
      local u = body_user(recorded("ps-q1"))
      assert.equal(expected("q@example.com"), u.id)
      assert.is_nil(u.email)
      q:close()
      c:close()
    end)

    it("refuses a missing or short key when the client is made, never at the first order", function()
      assert.has_error(function() client({ pseudonymise = { key = "short" } }) end)
      local ok, err = pcall(client, { pseudonymise = true }) -- no $OPTIMIZELY_PSEUDONYM_KEY here
      if os.getenv("OPTIMIZELY_PSEUDONYM_KEY") == nil then
        assert.is_false(ok)
        assert.matches("OPTIMIZELY_PSEUDONYM_KEY", tostring(err))
      end
    end)
  end)
end)

describe("the command line's --pseudonymise", function()
  local cli = require("support.cli")
  local KEY2 = "cli-pseudonym-key-0123456789"

  teardown(function() cli.cleanup() end)

  local function input(lines)
    local path = cli.tmp("ps-" .. math.random(1e6) .. ".ndjson")
    cli.write_file(path, table.concat(lines, "\n") .. "\n")
    return path
  end

  local function order_line(ref, user)
    return sb.json.encode({ user = user, order = { refCode = ref, orderDate = "2016-05-16T14:25:00 GMT",
      currency = "GBP", total = 1, items = { { refCode = "a", qty = 1, price = 1 } } } })
  end

  it("send --pseudonymise sends the pseudonymised id and not the e-mail", function()
    sb.ensure()
    sb.reset()
    local path = input({ order_line("cli-ps-1", { email = "Cli.User@Example.com" }) })
    local env = cli.creds({ OPTIMIZELY_PSEUDONYM_KEY = KEY2 })
    local r = cli.run({ "send", "--pseudonymise", path }, { env = env })
    assert.equal(0, r.code, r.all)
    local u = sb.json.decode(sb.orders({ refCode = "cli-ps-1" })[1].body).user
    assert.equal(assert(offline.pseudonymise("cli.user@example.com", { key = KEY2 })), u.id)
    assert.is_nil(u.email)
    assert.is_nil(r.all:find(KEY2, 1, true))
  end)

  it("convert --pseudonymise writes what send would send; a bad address is a validation failure", function()
    local path = input({ order_line("cli-ps-2", { email = "a@example.com" }),
      order_line("cli-ps-3", { email = "no-at" }) })
    local out = cli.tmp("ps-out.ndjson")
    local r = cli.run({ "convert", "--pseudonymise", path, "-o", out },
      { env = { OPTIMIZELY_PSEUDONYM_KEY = KEY2 } })
    assert.equal(1, r.code, r.all)
    local lines = cli.lines_of(out)
    assert.equal(1, #lines)
    assert.equal(assert(offline.pseudonymise("a@example.com", { key = KEY2 })), lines[1].user.id)
    assert.matches("user%.email", r.all)
  end)

  it("without a key it is a configuration error (exit 2) naming the variable", function()
    local path = input({ order_line("cli-ps-4", { email = "a@example.com" }) })
    local r = cli.run({ "validate", "--pseudonymise", path })
    assert.equal(2, r.code, r.all)
    assert.matches("OPTIMIZELY_PSEUDONYM_KEY", r.all)
  end)
end)

describe("the command line's channels (CSV channel column, NDJSON wrapper lines)", function()
  local cli = require("support.cli")
  local info

  setup(function() info = sb.ensure() end)
  before_each(function() sb.reset() end)
  teardown(function() cli.cleanup() end)

  local function env()
    return cli.creds({ OPTIMIZELY_SITE_TOKEN_CALLCENTRE = info.tokens.callcentre })
  end

  local CSV = table.concat({
    "refCode,orderDate,currency,total,channel,itemRefCode,qty,price",
    "csv-ch-1,2016-05-16T14:25:00 GMT,GBP,1,,a,1,1",
    "csv-ch-2,2016-05-16T14:25:00 GMT,GBP,1,callcentre,a,1,1",
    "csv-ch-3,2016-05-16T14:25:00 GMT,GBP,1,tv,a,1,1", "" }, "\n")

  it("send posts each CSV row's order under its channel's token; a channel without one goes to the rejects file",
    function()
      local path = cli.tmp("ch-" .. math.random(1e6) .. ".csv")
      cli.write_file(path, CSV)
      local rejects = cli.tmp("ch-rejects-" .. math.random(1e6) .. ".ndjson")
      local r = cli.run({ "send", path, "--rejects", rejects }, { env = env() })
      assert.equal(1, r.code, r.all)
      assert.equal("store", recorded("csv-ch-1").token_id)
      assert.equal("callcentre", recorded("csv-ch-2").token_id)
      assert.equal("callcentre", recorded("csv-ch-2").channel)
      assert.is_nil(recorded("csv-ch-3"))
      local lines = cli.lines_of(rejects)
      assert.equal(1, #lines)
      assert.equal("tv", lines[1].channel)
      assert.equal("csv-ch-3", lines[1].payload.order.refCode)
      assert.is_nil(r.all:find(info.tokens.callcentre, 1, true))
    end)

  it("convert keeps the channel as a wrapper line, and send of that output posts it on the channel", function()
    local path = cli.tmp("ch-" .. math.random(1e6) .. ".csv")
    cli.write_file(path, CSV)
    local out = cli.tmp("ch-out-" .. math.random(1e6) .. ".ndjson")
    local r = cli.run({ "convert", path, "-o", out }, { env = env() })
    assert.equal(0, r.code, r.all)
    local lines = cli.lines_of(out)
    assert.equal(3, #lines)
    assert.equal("csv-ch-1", lines[1].order.refCode)
    assert.equal("callcentre", lines[2].channel)
    assert.equal("csv-ch-2", lines[2].payload.order.refCode)
    r = cli.run({ "send", out, "--rejects", out .. ".rejects" }, { env = env() })
    assert.equal(1, r.code, r.all)
    assert.equal("callcentre", recorded("csv-ch-2").token_id)
    assert.equal("store", recorded("csv-ch-1").token_id)
  end)
end)
