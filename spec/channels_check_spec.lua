-- Channels as an integrator meets them (issue 20): names are
-- case-insensitive everywhere (client config, `{channel = …}`, a CSV
-- column, an NDJSON wrapper, the --config file) and lower-cased; `send
-- --check-first`, `validate` and `send --dry-run` check each record's
-- channel against the configured tokens, so a record that the send would
-- refuse fails the check and nothing is sent; only per-channel tokens (no
-- default token or channel) is a working setup when every record names a
-- channel with a token, and a record without one is rejected with the list
-- of the channels that have a token.
local offline = require("optimizely.offline")
local orders = require("support.orders")
local sb = require("support.sandbox")
local cli = require("support.cli")

local function payload(ref)
  local p = orders.minimal()
  p.order.refCode = ref
  return p
end

local function token_id(ref)
  local rec = sb.orders({ refCode = ref })[1]
  return rec and rec.token_id
end

local HEAD = "refCode,orderDate,currency,total,itemRefCode,qty,price,channel\n"
local function row(ref, channel)
  return ("%s,2024-03-15T09:12:00 GMT,GBP,1.00,s1,1,1.00,%s\n"):format(ref, channel or "")
end

describe("channels", function()
  local info, tokens

  setup(function()
    info = sb.ensure()
    tokens = { store = info.token, callcentre = assert(info.tokens and info.tokens.callcentre) }
  end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  -- credentials of the sandbox with only per-channel tokens in the environment
  local function per_channel_env(extra)
    local e = cli.creds({ OPTIMIZELY_SITE_TOKEN = false, OPTIMIZELY_CHANNEL = false,
      OPTIMIZELY_SITE_TOKEN_STORE = tokens.store, OPTIMIZELY_SITE_TOKEN_CALLCENTRE = tokens.callcentre })
    for k, v in pairs(extra or {}) do e[k] = v or nil end
    return e
  end

  describe("names are case-insensitive", function()
    it("in the client config, {channel = …}, send_batch and a queue", function()
      local c = offline.client(sb.client_config(info, { token = false, channel = "Store",
        tokens = { STORE = tokens.store, CallCentre = tokens.callcentre } }))
      assert.equal("callcentre", c:channel("CALLCENTRE"))
      assert.equal("store", c:channel(nil))
      local _, err = c:channel("Tv")
      assert.equal("config", err.kind)
      assert.matches('no token for channel "tv"', err.message, 1, true)
      assert.matches("channels with a token: callcentre, store", err.message, 1, true)
      assert.truthy(c:send(payload("ci-1"), { channel = "CallCentre" }))
      local summary = c:send_batch({ { payload = payload("ci-2"), channel = "STORE" },
        { payload = payload("ci-3"), channel = "Callcentre" } })
      assert.equal(2, summary.sent)
      local q = c:queue({ channel = "CALLCENTRE" })
      assert.truthy(q:push(payload("ci-4")))
      assert.truthy(q:push(payload("ci-5"), { channel = "Store" }))
      assert.truthy(q:close(10))
      c:close()
      assert.equal("callcentre", token_id("ci-1"))
      assert.equal("store", token_id("ci-2"))
      assert.equal("callcentre", token_id("ci-3"))
      assert.equal("callcentre", token_id("ci-4"))
      assert.equal("store", token_id("ci-5"))
      for _, rec in ipairs(sb.orders()) do assert.equal(rec.token_id, rec.channel) end
    end)

    it("one channel in two spellings with two tokens is a configuration error", function()
      local ok, err = pcall(offline.client, sb.client_config(info, { token = false, channel = "store",
        tokens = { store = tokens.store, Store = tokens.callcentre } }))
      assert.is_false(ok)
      assert.matches("give one token per channel (channel names are case-insensitive)", err, 1, true)
    end)

    it("in a CSV column, an NDJSON wrapper line and the --config file", function()
      local csv = cli.write_file(cli.tmp("case.csv"), HEAD .. row("cc-1", "Callcentre") .. row("cc-2", "STORE"))
      local nd = cli.write_file(cli.tmp("case.ndjson"), '{"channel":"CallCentre","payload":'
        .. '{"order":{"refCode":"cc-3","orderDate":"2024-03-15T09:12:00 GMT","currency":"GBP","total":"1.00",'
        .. '"items":[{"refCode":"s1","qty":1,"price":"1.00"}]}}}\n')
      local conf = cli.write_file(cli.tmp("case.conf"), "channel = Store\ntoken.Store = " .. tokens.store
        .. "\ntoken.CALLCENTRE = " .. tokens.callcentre .. "\n")
      local r = cli.run({ "send", "--check-first", "--config", conf, csv, nd },
        { env = cli.creds({ OPTIMIZELY_SITE_TOKEN = false, OPTIMIZELY_CHANNEL = false }) })
      assert.equal(0, r.code, r.all)
      assert.equal("callcentre", token_id("cc-1"))
      assert.equal("store", token_id("cc-2"))
      assert.equal("callcentre", token_id("cc-3"))
    end)
  end)

  describe("each record's channel is checked before sending", function()
    local csv
    setup(function()
      csv = cli.write_file(cli.tmp("notoken.csv"), HEAD .. row("nt-1", "store") .. row("nt-2", "tv"))
    end)

    it("send --check-first: a channel without a token fails the check and nothing is sent", function()
      local r = cli.run({ "send", "--check-first", csv }, { env = per_channel_env() })
      assert.equal(1, r.code, r.all)
      assert.matches('notoken.csv:3: order nt-2: config: no token for channel "tv" (config.tokens); '
        .. "channels with a token: callcentre, store", r.err, 1, true)
      assert.matches("nothing was sent (--check-first): 1 of 2 records failed the check", r.err, 1, true)
      assert.equal(0, sb.stats().requests)
    end)

    it("validate and send --dry-run say the same, with no request either", function()
      for _, args in ipairs({ { "validate", csv }, { "send", "--dry-run", csv } }) do
        local r = cli.run(args, { env = per_channel_env() })
        assert.equal(1, r.code, r.all)
        assert.matches('notoken.csv:3: order nt-2: config: no token for channel "tv"', r.out, 1, true)
      end
      assert.equal(0, sb.stats().requests)
    end)

    it("without any token configured, validate still refuses a channel the endpoint does not have", function()
      local odd = cli.write_file(cli.tmp("odd.csv"), HEAD .. row("od-1", "Callcentre") .. row("od-2", "web"))
      local r = cli.run({ "validate", odd })
      assert.equal(1, r.code, r.all)
      assert.matches('odd.csv:3: order od-2: config: unknown channel "web"', r.out, 1, true)
      assert.is_nil(r.out:find("od-1", 1, true))
    end)
  end)

  describe("only per-channel tokens", function()
    it("sends every record that names a channel with a token; one without a channel is rejected, "
      .. "naming the channels that have one", function()
      local path = cli.write_file(cli.tmp("pc.csv"), HEAD .. row("pc-1", "store") .. row("pc-2", "callcentre")
        .. row("pc-3", nil))
      local rej = cli.tmp("pc.rejects")
      local r = cli.run({ "send", path, "--rejects", rej }, { env = per_channel_env() })
      assert.equal(1, r.code, r.all)
      assert.is_nil(r.err:find("no token:", 1, true), r.err)
      assert.equal("store", token_id("pc-1"))
      assert.equal("callcentre", token_id("pc-2"))
      assert.is_nil(token_id("pc-3"))
      assert.matches("pc.csv:4: order pc-3: config: the order names no channel and there is no default "
        .. "channel (config.channel); channels with a token: callcentre, store", r.err, 1, true)
      local lines = cli.lines_of(rej)
      assert.equal(1, #lines)
      assert.equal("pc-3", lines[1].payload.order.refCode)
      -- every record naming its channel: all sent, exit 0
      sb.reset()
      local all = cli.write_file(cli.tmp("pc2.csv"), HEAD .. row("pc-4", "Store") .. row("pc-5", "CALLCENTRE"))
      r = cli.run({ "send", "--check-first", all }, { env = per_channel_env() })
      assert.equal(0, r.code, r.all)
      assert.equal(2, sb.stats().requests)
    end)

    it("--check-first refuses the run when a record names no channel", function()
      local path = cli.write_file(cli.tmp("pc3.csv"), HEAD .. row("pc-6", "store") .. row("pc-7", nil))
      local r = cli.run({ "send", "--check-first", path }, { env = per_channel_env() })
      assert.equal(1, r.code, r.all)
      assert.matches("order pc-7: config: the order names no channel", r.err, 1, true)
      assert.equal(0, sb.stats().requests)
    end)
  end)
end)
