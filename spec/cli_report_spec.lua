-- Honest reports (issue 20) and the age guard (issue 17): what `send`'s
-- summary and report say, checked against the sandbox.
--   - orders never tried after refused credentials are `not_sent`, not
--     `rejected`, in the summary, the report and send_batch's summary alike;
--   - the summary and the report name the endpoint (the environment, `uat`
--     by default, or the base URL), the site and the channels;
--   - every order read is in exactly one count;
--   - an order older than --max-order-age days is warned about and sent; one
--     dated more than a day ahead is rejected with its file and line.
local sb = require("support.sandbox")
local cli = require("support.cli")
local offline = require("optimizely.offline")
local batch = require("optimizely.offline.batch")

local run, tmp = cli.run, cli.tmp

local function sum(rep)
  return rep.sent + (rep.valid or 0) + rep.skipped + rep.changed + rep.rejected + rep.not_sent + rep.unknown_outcome
end

local function gmt(t) return '"' .. os.date("!%Y-%m-%dT%H:%M:%S GMT", t) .. '"' end

describe("send's report and summary", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  describe("refused credentials", function()
    it("the orders never tried are not_sent, the ones refused are rejected, and the counts add up", function()
      local n = 120
      cli.orders(tmp("auth.ndjson"), n, "AUTH")
      local r = run({ "send", "auth.ndjson", "--concurrency", "4", "--rejects", "auth-rej.ndjson",
        "--report", "auth-rep.json" }, { env = cli.creds({ OPTIMIZELY_SITE_TOKEN = "not-the-token" }) })
      assert.equal(1, r.code, r.all)
      local rep = cli.json_file(tmp("auth-rep.json"))
      local tried = sb.stats().requests
      assert.is_true(tried >= 1 and tried <= 8, "requests: " .. tried)
      assert.equal(n, rep.read)
      assert.equal(tried, rep.rejected)
      assert.equal(n - tried, rep.not_sent)
      assert.equal(n - tried, rep.not_sent_by_reason.credentials)
      assert.equal(n, sum(rep))
      -- only the refused ones are errors; the summary says why the rest were not tried, once
      assert.same({ InvalidSiteToken = tried }, rep.errors)
      assert.matches("InvalidSiteToken", rep.credentials_refused)
      assert.matches(("%d rejected, %d not sent"):format(tried, n - tried), r.err)
      assert.matches(("error: the credentials were refused %%(.*InvalidSiteToken.*%%): %d orders not tried")
        :format(n - tried), r.err)
      local _, printed = r.err:gsub("not sent: ", "")
      assert.equal(0, printed) -- no line per order not tried
      local stages = {}
      for _, l in ipairs(cli.lines_of(tmp("auth-rej.ndjson"))) do
        stages[l.stage] = (stages[l.stage] or 0) + 1
        if l.stage == "not_sent" then assert.equal(0, l.error.attempts) end
      end
      assert.same({ send = tried, not_sent = n - tried }, stages)
      -- with the right token the rejects file goes out as it is
      r = run({ "send", "auth-rej.ndjson" }, { env = cli.creds() })
      assert.equal(0, r.code, r.all)
      assert.equal(n, sb.stats().accepted)
    end)

    it("send_batch's summary counts the same: not_sent are the orders never tried (batch.not_sent)", function()
      local info = sb.ensure()
      local client = offline.client(sb.client_config(info, nil, { token = "not-the-token" }))
      local src = {}
      for i = 1, 60 do
        src[i] = { user = { id = "u" }, order = { refCode = "SB-" .. i, orderDate = "2024-03-15T09:12:00 GMT",
          currency = "GBP", total = 1, items = { { refCode = "s", qty = 1, price = 1 } } } }
      end
      local s = client:send_batch(src, { concurrency = 4 })
      local tried, never = sb.stats().requests, 0
      for _, f in ipairs(s.failures) do
        if batch.not_sent(f.err) then
          never = never + 1
          assert.equal(0, f.err.attempts)
        else
          assert.is_true(f.err.attempts >= 1)
        end
      end
      assert.equal(60, s.read)
      assert.equal(60 - tried, s.not_sent)
      assert.equal(s.not_sent, never)
      assert.equal(60, s.sent + s.failed)
      assert.equal("auth", s.stopped.kind)
      client:close()
    end)
  end)

  describe("where the orders went", function()
    it("names the base URL, the site and the channels in the summary and the report", function()
      local info = sb.ensure()
      cli.orders(tmp("ep.ndjson"), 3, "EP")
      local r = run({ "send", "ep.ndjson", "--report", "ep-rep.json" }, { env = cli.creds({
        OPTIMIZELY_SITE_TOKEN_CALLCENTRE = "sandbox-cc-token" }) })
      assert.equal(0, r.code, r.all)
      local rep = cli.json_file(tmp("ep-rep.json"))
      assert.equal(info.base_url, rep.endpoint.base_url)
      assert.equal(info.base_url .. "/tracker/smart-api/orders/offline", rep.endpoint.url)
      assert.is_nil(rep.endpoint.env)
      assert.equal("sandbox", rep.endpoint.site)
      assert.same({ "store", "callcentre" }, rep.endpoint.channels)
      assert.matches("\nto " .. info.base_url:gsub("%p", "%%%0")
        .. "/tracker/smart%-api/orders/offline: site sandbox, channels store, callcentre\n", r.err)
    end)

    it("shows the default environment, uat, when none is given (and the one given)", function()
      cli.write_file(tmp("empty.ndjson"), "")
      local env = { OPTIMIZELY_SITE = "acme", OPTIMIZELY_SITE_TOKEN = "acme-token", OPTIMIZELY_CHANNEL = "store" }
      local r = run({ "send", "empty.ndjson", "--report", "uat-rep.json" }, { env = env })
      assert.equal(0, r.code, r.all)
      local rep = cli.json_file(tmp("uat-rep.json"))
      assert.equal("uat", rep.endpoint.env)
      assert.is_nil(rep.endpoint.base_url)
      assert.matches("^https://", rep.endpoint.url)
      assert.equal("acme", rep.endpoint.site)
      assert.same({ "store" }, rep.endpoint.channels)
      assert.matches("\nto uat %(https://[^)]+%): site acme, channel store\n", r.err)
      r = run({ "send", "empty.ndjson", "--env", "uk" }, { env = env })
      assert.equal(0, r.code, r.all)
      assert.matches("\nto uk %(https://[^)]+%): site acme, channel store\n", r.err)
    end)

    it("a dry run names no endpoint (it sends nowhere)", function()
      local r = run({ "send", "-n", cli.FIX .. "spec-sample.xml", "--report", "dry-rep.json" })
      assert.equal(0, r.code, r.all)
      assert.is_nil(cli.json_file(tmp("dry-rep.json")).endpoint)
      assert.is_nil(r.err:find("\nto ", 1, true))
    end)
  end)

  describe("accounting", function()
    it("has the ledger's counts (0 until it is on) and keeps the transform's nil out of read", function()
      local r = run({ "send", cli.FIX .. "tx.ndjson", "--transform", cli.FIX .. "transform.lua",
        "--report", "acc-rep.json" }, { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      local rep = cli.json_file(tmp("acc-rep.json"))
      assert.equal(0, rep.skipped)
      assert.equal(0, rep.changed)
      assert.equal(1, rep.filtered)
      assert.equal(2, rep.sent)
      assert.equal(1, rep.rejected)
      assert.equal(3, rep.read)
      assert.equal(rep.read, sum(rep))
      assert.matches("1 skipped by the transform", r.err)
    end)

    it("a failed --check-first: the orders that passed are not_sent (the check failed), the rest rejected", function()
      cli.orders(tmp("cfa.ndjson"), 10, "CFA", function(i)
        return i == 4 and '"2024-02-30T10:00:00 GMT"' or '"2024-03-15T09:12:00 GMT"'
      end)
      local r = run({ "send", "cfa.ndjson", "--check-first", "--report", "cfa-rep.json" }, { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      local rep = cli.json_file(tmp("cfa-rep.json"))
      assert.equal(10, rep.read)
      assert.equal(1, rep.rejected)
      assert.equal(9, rep.not_sent)
      assert.equal(9, rep.not_sent_by_reason.check_failed)
      assert.equal(10, sum(rep))
      assert.equal(0, sb.stats().requests)
    end)
  end)
end)

describe("the age guard", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  local now = os.time()

  it("warns about an order older than --max-order-age days (180 by default), and sends it", function()
    cli.orders(tmp("old.ndjson"), 3, "OLD", function(i)
      return gmt(now - ({ 200, 179, 400 })[i] * 86400)
    end)
    local r = run({ "send", "old.ndjson", "--report", "old-rep.json" }, { env = cli.creds() })
    assert.equal(0, r.code, r.all)
    assert.equal(3, sb.stats().accepted)
    local rep = cli.json_file(tmp("old-rep.json"))
    assert.equal(2, rep.warnings)
    assert.equal(2, rep.warning_kinds[1].count)
    assert.matches("^order%.orderDate: dated more than 180 days ago", rep.warning_kinds[1].problem)
    assert.matches("warnings by kind:\n%s+2  order%.orderDate: dated more than 180 days ago %(%-%-max%-order%-age%): "
      .. "Optimizely keeps tracked data for about six months", r.err)
    assert.matches("at old%.ndjson:1, old%.ndjson:3\n", r.err)
    -- -v names each one
    r = run({ "send", "old.ndjson", "-v" }, { env = cli.creds() })
    assert.matches("old%.ndjson:1: order OLD%-1: sent[^\n]*\n    warning: order%.orderDate: dated more than 180", r.out)
    assert.is_nil(r.out:find("OLD%-2: sent[^\n]*\n    warning"))
  end)

  it("--max-order-age moves the limit; 0 turns the warning off; a bad value is a usage error", function()
    cli.orders(tmp("old2.ndjson"), 2, "OLD2", function(i) return gmt(now - ({ 200, 40 })[i] * 86400) end)
    local r = run({ "validate", "old2.ndjson", "--max-order-age", "30" })
    assert.equal(0, r.code, r.all)
    assert.matches("warnings by kind:\n%s+2  order%.orderDate: dated more than 30 days ago", r.err)
    r = run({ "validate", "old2.ndjson", "--max-order-age", "365" })
    assert.is_nil(r.err:find("warnings by kind", 1, true))
    r = run({ "send", "-n", "old2.ndjson", "--max-order-age", "0", "--report", "old2-rep.json" })
    assert.equal(0, r.code, r.all)
    assert.equal(0, cli.json_file(tmp("old2-rep.json")).warnings)
    r = run({ "validate", "old2.ndjson", "--max-order-age", "soon" })
    assert.equal(2, r.code)
    assert.matches("%-%-max%-order%-age must be an integer 0%.%.36500", r.err)
  end)

  it("rejects an order dated more than a day in the future, with its file and line; sends the rest", function()
    cli.orders(tmp("future.ndjson"), 3, "FUT", function(i)
      return ({ gmt(now), gmt(now + 3 * 86400), gmt(now + 3600) })[i]
    end)
    local r = run({ "send", "future.ndjson", "--rejects", "fut-rej.ndjson" }, { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    assert.matches("future%.ndjson:2: order FUT%-2: order%.orderDate: must not be more than a day in the future "
      .. "%(is the till's clock right, or are the day and the month swapped%?%), got \"", r.err)
    assert.equal(2, sb.stats().accepted)
    assert.is_nil(sb.orders({ refCode = "FUT-2" })[1])
    local rej = cli.lines_of(tmp("fut-rej.ndjson"))
    assert.equal(1, #rej)
    assert.equal("validation", rej[1].stage)
    -- validate and --check-first say the same (the encoder's rule)
    r = run({ "validate", "future.ndjson" })
    assert.equal(1, r.code)
    assert.matches("future%.ndjson:2: order FUT%-2: order%.orderDate: must not be more than a day in the future", r.out)
    sb.reset()
    r = run({ "send", "future.ndjson", "--check-first" }, { env = cli.creds() })
    assert.equal(1, r.code)
    assert.equal(0, sb.stats().requests)
  end)
end)
