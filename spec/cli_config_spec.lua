-- The --config file: every key checked (the vendor's `siteToken` is told
-- to be `token`), tokens per channel (file and environment), the CSV column
-- map, the delimiter and the pseudonym key; command line over environment
-- over file; no value ever shown.
local sb = require("support.sandbox")
local cli = require("support.cli")
local config = require("optimizely.offline.cli.config")

local run, tmp = cli.run, cli.tmp
local SECRET = "tok-S3CRET-42"

local function assert_no_secret(s)
  assert.is_nil(s:find(SECRET, 1, true), "a secret leaked in: " .. s)
end

-- getenv over a table
local function env(t) return function(k) return t[k] end end

describe("the config file", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  describe("keys", function()
    local function bad(body, expect)
      local conf = cli.write_file(tmp("bad.conf"), body)
      local r = run({ "send", "--config", conf, cli.FIX .. "spec-sample.xml" },
        { env = cli.creds({ OPTIMIZELY_SITE_TOKEN = false }) })
      assert.equal(2, r.code, body .. "\n" .. r.all)
      assert.matches(expect, r.err, 1, true)
      assert_no_secret(r.all)
    end

    it("an unknown key is named, with the key meant: siteToken is token", function()
      bad("siteToken = " .. SECRET .. "\n", "bad.conf:1: unknown key siteToken (did you mean token?)")
      bad("# comment\nSITETOKEN = " .. SECRET .. "\n", "bad.conf:2: unknown key SITETOKEN (did you mean token?)")
      bad("site_token = " .. SECRET .. "\n", "unknown key site_token (did you mean token?)")
      bad("token = " .. SECRET .. "\nbaseUrl = https://x\n", "unknown key baseUrl (did you mean base_url?)")
      bad("token = " .. SECRET .. "\ncaFile = x\n", "unknown key caFile (did you mean ca_file?)")
      bad("tokens.store = " .. SECRET .. "\n", "unknown key tokens.store (did you mean token.<channel>?)")
      bad("token = " .. SECRET .. "\nchanel = store\n", "unknown key chanel (did you mean channel?)")
      bad("token = " .. SECRET .. "\nfrobnicate = 1\n", "bad.conf:2: unknown key frobnicate")
      bad("token = " .. SECRET .. "\nsite = a\nsite = b\n", "bad.conf:3: site is given twice (first at line 2)")
      bad("token = " .. SECRET .. "\ntoken. = x\n", "unknown key token. (did you mean token.<channel>?)")
      bad("token = " .. SECRET .. "\ntimeout = " .. SECRET .. "\n", "bad.conf:2: timeout must be a number")
      assert.equal(0, sb.stats().requests)
    end)

    it("names a bad command-line or environment value by where it came from", function()
      local r = run({ "send", "--timeout", "soon", cli.FIX .. "spec-sample.xml" }, { env = cli.creds() })
      assert.equal(2, r.code)
      assert.matches("--timeout: timeout must be a number", r.err, 1, true)
    end)
  end)

  describe("tokens per channel", function()
    local function conf_of(args, e) return config.client_config(args, env(e or {})) end

    it("client_config returns tokens = {channel = token} beside the run's token and channel", function()
      local path = cli.write_file(tmp("ch.conf"), table.concat({
        "site = demo", "token.store = tok-store", "token.callcentre = tok-callcentre", "channel = callcentre",
        "" }, "\n"))
      local c = conf_of({ config = path })
      assert.same({ store = "tok-store", callcentre = "tok-callcentre" }, c.tokens)
      assert.equal("callcentre", c.channel)
      assert.equal("tok-callcentre", c.token)
      -- the environment over the file, per channel
      c = conf_of({ config = path, channel = "store" }, { OPTIMIZELY_SITE_TOKEN_STORE = "env-store" })
      assert.same({ store = "env-store", callcentre = "tok-callcentre" }, c.tokens)
      assert.equal("env-store", c.token)
      -- a channel's own token over the general one
      c = conf_of({ config = path, channel = "store" }, { OPTIMIZELY_SITE_TOKEN = "general-token" })
      assert.equal("tok-store", c.token)
      c = conf_of({ config = path, channel = "tv" }, { OPTIMIZELY_SITE_TOKEN = "general-token" })
      assert.equal("general-token", c.token)
      -- only one channel has a token: it is the run's channel
      c = conf_of({}, { OPTIMIZELY_SITE = "demo", OPTIMIZELY_SITE_TOKEN_MOBILEAPP = "mobile-token" })
      assert.equal("mobileapp", c.channel)
      assert.equal("mobile-token", c.token)
      assert.same({ mobileapp = "mobile-token" }, c.tokens)
      -- a channel without a token is an error naming both ways to give one
      local ok, e = pcall(conf_of, { config = path, channel = "tv" })
      assert.is_false(ok)
      assert.matches("no token: set OPTIMIZELY_SITE_TOKEN %(or OPTIMIZELY_SITE_TOKEN_<CHANNEL>%)", tostring(e))
      -- a single token and no per-channel ones: no tokens table
      c = conf_of({}, { OPTIMIZELY_SITE = "demo", OPTIMIZELY_SITE_TOKEN = "token-t1", OPTIMIZELY_CHANNEL = "store" })
      assert.is_nil(c.tokens)
    end)

    it("sends with the channel's token from the file, or from OPTIMIZELY_SITE_TOKEN_<CHANNEL>", function()
      local info = sb.ensure()
      local path = cli.write_file(tmp("send-ch.conf"), table.concat({
        "site = " .. info.site, "token.store = " .. info.token, "token.callcentre = " .. SECRET,
        "channel = store", "base_url = " .. info.base_url, "ca_file = " .. info.ca_file, "" }, "\n"))
      local r = run({ "send", "--config", path, cli.FIX .. "spec-sample.xml", "-v" })
      assert.equal(0, r.code, r.all)
      assert.equal(1, #sb.orders({ refCode = "orderRef" }))
      assert_no_secret(r.all)
      -- the environment alone
      sb.reset()
      r = run({ "send", cli.FIX .. "spec-sample.xml" }, { env = cli.creds({
        OPTIMIZELY_SITE_TOKEN = false, OPTIMIZELY_CHANNEL = false, OPTIMIZELY_SITE_TOKEN_STORE = info.token }) })
      assert.equal(0, r.code, r.all)
      assert.equal(1, #sb.orders({ refCode = "orderRef" }))
      -- the wrong channel's token is refused by the endpoint, and not shown
      r = run({ "send", "--config", path, "--channel", "callcentre", cli.FIX .. "spec-sample.xml",
        "--rejects", tmp("cc-rej.ndjson") })
      assert.equal(1, r.code)
      assert_no_secret(r.all)
      assert_no_secret(cli.read_file(tmp("cc-rej.ndjson")))
    end)
  end)

  describe("input settings", function()
    local CSV = "Order No;When;Cur;Sum;SKU;Qty;Each;Customer;Cashier\n"
      .. "C-1;16/06/2024 14:25;GBP;5.00;S;1;5.00;u1;Ann\n"

    it("map.<column> lines, the delimiter and the date settings come from the file", function()
      local csv = cli.write_file(tmp("till.csv"), CSV)
      local path = cli.write_file(tmp("map.conf"), table.concat({
        "map.Order No = refCode", "map.When = orderDate", "map.Cur = currency", "map.Sum = total",
        "map.SKU = itemRefCode", "map.Qty = qty", "map.Each = price", "map.Customer = user.id",
        "map.Cashier =", "delimiter = ;", "date_format = %d/%m/%Y %H:%M", "timezone = Europe/London", "" }, "\n"))
      local r = run({ "convert", csv, "--config", path })
      assert.equal(0, r.code, r.all)
      assert.matches('"refCode":"C%-1"', r.out)
      assert.matches('"orderDate":"2024%-06%-16T13:25:00 GMT"', r.out)
      r = run({ "validate", csv, "--config", path })
      assert.equal(0, r.code, r.all)
      -- the command line over the file: --map renames the column again
      r = run({ "validate", csv, "--config", path, "--map", "Cashier=attr.cashier" })
      assert.equal(0, r.code, r.all)
      r = run({ "convert", csv, "--config", path, "--map", "Cashier=attr.cashier" })
      assert.matches('"attributes":{"cashier":"Ann"}', r.out)
      -- and a dry run of send reads it too (no credentials)
      r = run({ "send", "-n", csv, "--config", path })
      assert.equal(0, r.code, r.all)
    end)

    it("the pseudonym key: from the file or OPTIMIZELY_PSEUDONYM_KEY, never shown", function()
      local path = cli.write_file(tmp("pk.conf"), "pseudonym_key = " .. SECRET .. "\n")
      assert.equal(SECRET, config.settings({ config = path }, env({})).pseudonym_key)
      assert.equal("from-env", config.settings({ config = path }, env({ OPTIMIZELY_PSEUDONYM_KEY = "from-env" }))
        .pseudonym_key)
      local conf = cli.write_file(tmp("pk2.conf"), "pseudonym_key = " .. SECRET .. "\nsiteToken = x\n")
      local r = run({ "validate", cli.FIX .. "spec-sample.xml", "--config", conf })
      assert.equal(2, r.code)
      assert_no_secret(r.all)
    end)
  end)
end)
