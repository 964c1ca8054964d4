-- The command line, run as a subprocess (with the interpreter busted runs
-- under) against the sandbox: a real nginx over real TLS on 127.0.0.1.
local sb = require("support.sandbox")
local wait = require("support.wait")
local cjson = require("cjson.safe")
local input = require("optimizely.offline.input")

local LUA = require("support.interp")
local ROOT = io.popen("pwd"):read("*l")
local BIN = ROOT .. "/bin/optimizely-offline"
local FIX = ROOT .. "/spec/fixtures/cli/"
local SECRET = "tok-S3CRET-42" -- must never show anywhere

local sys = require("optimizely.offline.sys")
local q, read_file = sys.q, sys.read_file

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

local TMP -- one private directory for this file's runs
local function tmp(name) return TMP .. "/" .. name end

local ENV_VARS = { "OPTIMIZELY_SITE", "OPTIMIZELY_SITE_TOKEN", "OPTIMIZELY_CHANNEL",
  "OPTIMIZELY_BASE_URL", "OPTIMIZELY_CA_FILE", "OPTIMIZELY_ENV" }

-- The shell command that runs the CLI: every OPTIMIZELY_* variable unset,
-- then those of `env` set; and a state directory of its own (XDG_STATE_HOME),
-- so the default ledger of one run never makes another skip its orders.
local n_states = 0
local function command(args, env, cwd, exec)
  -- the runs happen in TMP: a default unsent file never lands in the checkout
  local parts = { "cd", q(cwd or TMP), "&&", exec and "exec env" or "env" }
  for _, v in ipairs(ENV_VARS) do parts[#parts + 1] = "-u " .. v end
  n_states = n_states + 1
  parts[#parts + 1] = q("XDG_STATE_HOME=" .. TMP .. "/state" .. n_states)
  for k, v in pairs(env or {}) do parts[#parts + 1] = q(k .. "=" .. v) end
  parts[#parts + 1] = LUA
  parts[#parts + 1] = q(BIN)
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  return table.concat(parts, " ")
end

--- Runs the CLI; o = {env=, stdin=, cwd=}. @return {code, out, err, all}
local n_runs = 0
local function cli(args, o)
  o = o or {}
  n_runs = n_runs + 1
  local outf, errf = tmp("run" .. n_runs .. ".out"), tmp("run" .. n_runs .. ".err")
  local inf = o.stdin and write_file(tmp("run" .. n_runs .. ".in"), o.stdin) or "/dev/null"
  local p = io.popen(command(args, o.env, o.cwd) .. " >" .. q(outf) .. " 2>" .. q(errf)
    .. " <" .. q(inf) .. "; echo $?")
  local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local r = { code = code, out = read_file(outf) or "", err = read_file(errf) or "" }
  r.all = r.out .. r.err
  return r
end

-- Credentials of the sandbox, in the environment.
local function creds(over)
  local info = sb.ensure()
  local e = {
    OPTIMIZELY_SITE = info.site, OPTIMIZELY_SITE_TOKEN = info.token,
    OPTIMIZELY_CHANNEL = info.channel, OPTIMIZELY_BASE_URL = info.base_url,
    OPTIMIZELY_CA_FILE = info.ca_file,
  }
  for k, v in pairs(over or {}) do e[k] = v or nil end
  return e
end

local function lines_of(path)
  local out = {}
  for line in (read_file(path) or ""):gmatch("[^\n]+") do
    out[#out + 1] = assert(cjson.decode(line), "not JSON: " .. line)
  end
  return out
end

-- refCode -> number of records in the sandbox
local function recorded() return (sb.recorded()) end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- n generated orders, refCodes PREFIX-1..n, one per line
local function gen_ndjson(path, n, prefix)
  local f = assert(io.open(path, "wb"))
  for i = 1, n do
    f:write(('{"user":{"id":"u%d"},"order":{"refCode":"%s-%d","orderDate":"2024-03-15T09:12:00 GMT",'
      .. '"currency":"GBP","total":12.5,"items":[{"refCode":"s1","qty":1,"price":12.5}]}}\n'):format(i, prefix, i))
  end
  f:close()
  return path
end

local function assert_no_secret(s, secret)
  assert.is_nil(s:find(secret or SECRET, 1, true), "the token leaked in: " .. s)
end

-- Every generated order is in the sandbox or the rejects; never sent and
-- listed as not sent; the report's counts add up.
local function assert_accounted(n, prefix, rejects_path, report)
  local rec = recorded()
  local rej, not_sent = {}, {}
  for _, l in ipairs(lines_of(rejects_path)) do
    local ref = l.payload.order.refCode
    rej[ref] = true
    assert.is_true(l.stage == "interrupted" or l.stage == "not_sent", l.stage)
    if l.stage == "not_sent" then not_sent[ref] = true end
  end
  for i = 1, n do
    local ref = prefix .. "-" .. i
    assert.is_true(rec[ref] ~= nil or rej[ref] ~= nil, ref .. " is neither sent nor in the rejects")
    if not_sent[ref] then assert.is_nil(rec[ref], ref .. " was sent but is listed as not sent") end
  end
  if report then
    assert.equal(n, report.read)
    assert.equal(n, report.sent + report.unknown_outcome + report.not_sent + report.rejected)
    assert.equal(count(rej), report.unknown_outcome + report.not_sent)
    assert.is_true(report.interrupted)
    local in_sandbox = 0
    for i = 1, n do if rec[prefix .. "-" .. i] then in_sandbox = in_sandbox + 1 end end
    -- what was in flight may or may not have arrived
    assert.is_true(in_sandbox >= report.sent and in_sandbox <= report.sent + report.unknown_outcome,
      ("sandbox has %d, report says %d sent + %d unknown"):format(in_sandbox, report.sent, report.unknown_outcome))
  end
end

describe("optimizely-offline (command line)", function()
  setup(function()
    TMP = io.popen("mktemp -d"):read("*l")
    sb.ensure()
  end)
  teardown(function()
    if TMP and TMP:match("^/tmp/") then os.execute("rm -rf " .. q(TMP)) end
  end)
  before_each(function()
    sb.reset()
  end)

  describe("usage", function()
    it("lists the commands, and a usage error exits 2", function()
      local r = cli({ "--help" })
      assert.equal(0, r.code)
      for _, c in ipairs({ "validate", "send", "convert", "cancel", "sandbox" }) do
        assert.matches("\n%s+" .. c .. "%s", r.out)
      end
      assert.equal(2, cli({}).code)
      assert.equal(2, cli({ "frobnicate" }).code)
      local s = cli({ "send" })
      assert.equal(2, s.code)
      assert.matches("missing argument 'files'", s.err)
    end)

    it("exits 2 on bad options, before reading or sending anything", function()
      local env = creds()
      local cases = {
        { { "send", "--concurrency", "0", FIX .. "orders.ndjson" }, "concurrency must be an integer 1..1024" },
        { { "send", "--rate", "fast", FIX .. "orders.ndjson" }, "rate must be a positive number" },
        { { "send", "--max-attempts", "0", FIX .. "orders.ndjson" }, "max%-attempts" },
        { { "send", "--delimiter", ";;", FIX .. "hostile.csv" }, "delimiter must be one character" },
        { { "send", "--format", "yaml", FIX .. "orders.ndjson" }, "format must be ndjson, csv or xml" },
        { { "send", "--map", "nofield", FIX .. "hostile.csv" }, "map takes col=field" },
        { { "send", "--rejects", FIX .. "orders.ndjson", FIX .. "orders.ndjson" }, "is the input file" },
        { { "send", "--transform", FIX .. "transform-syntax.lua", FIX .. "tx.ndjson" }, "cannot load transform" },
        { { "send", "--transform", FIX .. "transform-number.lua", FIX .. "tx.ndjson" }, "must return a function" },
        { { "send", "--transform", tmp("nope.lua"), FIX .. "tx.ndjson" }, "cannot load transform" },
        { { "send", "--report", tmp("no/such/dir/r.json"), FIX .. "tx.ndjson" }, "cannot write the report" },
        { { "send", "--rejects", tmp("no/such/dir/r.ndjson"), FIX .. "tx.ndjson" }, "cannot write rejects file" },
      }
      for _, c in ipairs(cases) do
        local r = cli(c[1], { env = env })
        assert.equal(2, r.code, table.concat(c[1], " ") .. "\n" .. r.all)
        assert.matches(c[2], r.err)
      end
      assert.equal(0, sb.stats().requests)
    end)

    it("exits 2 when credentials are missing, naming what is missing", function()
      local r = cli({ "send", FIX .. "orders.ndjson" })
      assert.equal(2, r.code)
      assert.matches("no site: set OPTIMIZELY_SITE", r.err)
      r = cli({ "send", FIX .. "orders.ndjson" }, { env = creds({ OPTIMIZELY_SITE_TOKEN = false }) })
      assert.equal(2, r.code)
      assert.matches("no token: set OPTIMIZELY_SITE_TOKEN %(or OPTIMIZELY_SITE_TOKEN_<CHANNEL>%), or token", r.err)
      r = cli({ "send", FIX .. "orders.ndjson" }, { env = creds({ OPTIMIZELY_CHANNEL = "web" }) })
      assert.equal(2, r.code)
      assert.matches("channel must be one of", r.err)
      r = cli({ "cancel", "X" })
      assert.equal(2, r.code)
      assert.equal(0, sb.stats().requests)
    end)
  end)

  describe("send", function()
    it("sends NDJSON, reports a bad line and an invalid order by line and goes on", function()
      local rej, rep = tmp("nd-rejects.ndjson"), tmp("nd-report.json")
      local r = cli({ "send", FIX .. "orders.ndjson", "--rejects", rej, "--report", rep }, { env = creds() })
      assert.equal(1, r.code, r.all)
      assert.matches("orders.ndjson:3: invalid JSON", r.err)
      assert.matches("orders.ndjson:5: order N%-INVALID: order.orderDate: impossible date", r.err)
      assert.matches("orders.ndjson:5: order N%-INVALID: order.total: is required", r.err)
      assert.matches("orders.ndjson:5: order N%-INVALID: order.items%[1%].qty:", r.err)
      assert.same({ ["N-1"] = 1, ["N-2"] = 1, ["N-3"] = 1 }, recorded())
      -- the normalised bytes went out (offset date to UTC, upper-case currency, 2 decimals)
      local n2 = sb.orders({ refCode = "N-2" })[1]
      assert.matches('"orderDate":"2024%-03%-15T09:00:00 GMT"', n2.body)
      assert.matches('"currency":"EUR","total":19.90', n2.body)

      local lines = lines_of(rej)
      assert.equal(2, #lines)
      assert.equal("input", lines[1].stage)
      assert.equal(FIX .. "orders.ndjson:3", lines[1].source)
      assert.is_nil(lines[1].payload)
      assert.matches("N%-BROKEN", lines[1].raw)
      assert.equal("validation", lines[2].stage)
      assert.equal(FIX .. "orders.ndjson:5", lines[2].source)
      assert.equal("N-INVALID", lines[2].payload.order.refCode)
      assert.equal("validation", lines[2].error.kind)
      assert.equal("order.orderDate", lines[2].error.problems[1].path)
      assert.is_false(lines[2].transformed)
    end)

    it("writes the report as JSON: counts, rate and error codes", function()
      local rej, rep = tmp("rep-rejects.ndjson"), tmp("rep-report.json")
      -- one order refused for good, two 503s retried away
      sb.faults({ count = 1, status = 400, match = "POST" }, { count = 2, status = 503, match = "POST" })
      local r = cli({ "send", FIX .. "orders.ndjson", "--rejects", rej, "--report", rep,
        "--concurrency", "1" }, { env = creds() })
      assert.equal(1, r.code, r.all)
      local report = assert(cjson.decode(read_file(rep)))
      assert.equal("send", report.command)
      assert.is_false(report.dry_run)
      assert.same({ FIX .. "orders.ndjson" }, report.files)
      assert.equal(5, report.read)
      assert.equal(2, report.sent)
      assert.equal(3, report.rejected)
      assert.equal(0, report.skipped)
      assert.equal(0, report.not_sent)
      assert.equal(2, report.retried)
      assert.same({ SandboxFault = 1, input = 1, validation = 1 }, report.errors)
      assert.same({ send = 1, input = 1, validation = 1 }, report.rejected_by_stage)
      assert.is_false(report.interrupted)
      assert.equal(rej, report.rejects_file)
      assert.equal(1, report.exit_code)
      assert.is_number(report.orders_per_second)
      assert.is_number(report.elapsed_seconds)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", report.started_at)
      -- and the short human summary on stderr
      assert.matches("sent 2 orders in [%d.]+ s %([%d.]+ orders/s%), 3 rejected, 2 retries", r.err)
      assert.matches("errors: [^\n]*SandboxFault 1", r.err)
      assert.matches("3 orders written to " .. rej:gsub("%p", "%%%0"), r.err)
    end)

    it("re-sends a rejects file as it is: nothing lost, nothing twice", function()
      local r1, r2 = tmp("again1.ndjson"), tmp("again2.ndjson")
      sb.faults({ count = 2, status = 400, match = "POST" })
      local r = cli({ "send", FIX .. "orders.ndjson", "--rejects", r1 }, { env = creds() })
      assert.equal(1, r.code)
      assert.equal(1, count(recorded()))
      local stages = {}
      for _, l in ipairs(lines_of(r1)) do stages[l.stage] = (stages[l.stage] or 0) + 1 end
      assert.same({ send = 2, input = 1, validation = 1 }, stages)

      r = cli({ "send", r1, "--rejects", r2, "-v" }, { env = creds() })
      assert.equal(1, r.code, r.all) -- the bad line and the invalid order stay rejected
      assert.same({ ["N-1"] = 1, ["N-2"] = 1, ["N-3"] = 1 }, recorded())
      -- where a re-sent order came from is kept
      assert.matches("again1.ndjson:%d+ %(from " .. (FIX .. "orders.ndjson:5"):gsub("%p", "%%%0"), r.err)
      local again = lines_of(r2)
      assert.equal(2, #again)
      assert.equal("input", again[1].stage)
      -- the bad line is read again from the raw text it kept (fixed there, it would go out)
      assert.matches("invalid JSON: .*%(the raw text of a rejected record%)", again[1].error.message)
      for _, l in ipairs(lines_of(r1)) do
        if l.stage == "input" then assert.equal(l.raw, again[1].raw) end
      end
      assert.equal("validation", again[2].stage)
      assert.equal(FIX .. "orders.ndjson:5", again[2].origin)
      assert.equal(2, #lines_of(r2))
    end)

    it("sends hostile CSV: BOM, CRLF, quotes, line breaks in cells, short and long rows", function()
      local rej = tmp("csv-rejects.ndjson")
      local r = cli({ "send", FIX .. "hostile.csv", "--rejects", rej }, { env = creds() })
      assert.equal(1, r.code, r.all)
      assert.same({ ["H-1"] = 1, ["H-3"] = 1, ["H-5"] = 1 }, recorded())
      assert.matches('hostile.csv:5: order "H%-2": line 5: has 4 fields, the header has 9', r.err)
      assert.matches('hostile.csv:7: order "H%-4": line 7: has 10 fields, the header has 9', r.err)
      local h1 = cjson.decode(sb.orders({ refCode = "H-1" })[1].body)
      assert.equal('comma, "quotes" and a\r\nline break', h1.order.attributes.note)
      assert.equal(2, #h1.order.items)
      assert.equal("M", h1.order.items[1].attributes.size)
      local h3 = cjson.decode(sb.orders({ refCode = "H-3" })[1].body)
      assert.equal("L, tall", h3.order.items[1].attributes.size)
      local h5 = cjson.decode(sb.orders({ refCode = "H-5" })[1].body)
      assert.equal("€ 7,50 — café", h5.order.attributes.note)
      assert.equal(2, #lines_of(rej))
    end)

    it("refuses a CSV without a required column, and sends none of it", function()
      local r = cli({ "send", FIX .. "missing-column.csv" , "--rejects", tmp("mc.ndjson") }, { env = creds() })
      assert.equal(1, r.code)
      assert.matches('missing%-column.csv:1: header: required column "itemRefCode" is missing', r.err)
      assert.equal(0, sb.stats().requests)
    end)

    it("sends the XML sample of the API reference", function()
      local r = cli({ "send", FIX .. "spec-sample.xml", "-v" }, { env = creds() })
      assert.equal(0, r.code, r.all)
      assert.matches("spec%-sample.xml:2: order orderRef: sent %(HTTP 200, 1 attempt%)", r.out)
      local o = cjson.decode(sb.orders({ refCode = "orderRef" })[1].body)
      assert.same({ email = "customer@email.com" }, o.user)
      assert.equal("2017-04-23T14:25:00 GMT", o.order.orderDate)
      assert.equal(100, o.order.total)
      assert.equal(2, #o.order.items)
      assert.same({ attr21 = "value21" }, o.order.items[2].attributes)
      assert.same({ attr1 = "value1", attr2 = "value2" }, o.order.attributes)
    end)

    it("reads standard input with --format", function()
      local r = cli({ "send", "-", "--format", "ndjson" },
        { env = creds(), stdin = read_file(FIX .. "orders.ndjson") })
      assert.equal(1, r.code)
      assert.matches("<stdin>:3: invalid JSON", r.err)
      assert.equal(3, count(recorded()))
    end)

    it("applies a transform: rewrite, skip, and a failing record is rejected", function()
      local rej = tmp("tx-rejects.ndjson")
      local r = cli({ "send", FIX .. "tx.ndjson", "--transform", FIX .. "transform.lua", "--rejects", rej, "-v" },
        { env = creds() })
      assert.equal(1, r.code, r.all)
      assert.same({ ["RW-T-1"] = 1, ["RW-T-2"] = 1 }, recorded())
      assert.matches('"currency":"GBP"', sb.orders({ refCode = "RW-T-1" })[1].body)
      assert.matches("tx.ndjson:2: skipped by the transform", r.err)
      assert.matches("tx.ndjson:3: transform failed: .*cannot map order BOOM", r.err)
      assert.matches("1 rejected, 1 skipped by the transform", r.err)
      local lines = lines_of(rej)
      assert.equal(1, #lines)
      assert.equal("transform", lines[1].stage)
      assert.equal("BOOM", lines[1].payload.order.refCode)

      -- a transform that returns something else than a table: rejected, not a crash
      r = cli({ "send", FIX .. "tx.ndjson", "--transform", FIX .. "transform-string.lua",
        "--rejects", tmp("tx2.ndjson") }, { env = creds() })
      assert.equal(1, r.code)
      assert.matches("transform returned a string, expected a payload table or nil", r.err)
    end)

    it("does not transform a re-sent rejects file twice", function()
      local r1, r2 = tmp("txr1.ndjson"), tmp("txr2.ndjson")
      sb.faults({ count = 2, status = 400, match = "POST" })
      local r = cli({ "send", FIX .. "tx.ndjson", "--transform", FIX .. "transform.lua", "--rejects", r1 },
        { env = creds() })
      assert.equal(1, r.code)
      assert.same({}, recorded())
      local sent_stage = 0
      for _, l in ipairs(lines_of(r1)) do
        if l.stage == "send" then
          sent_stage = sent_stage + 1
          assert.is_true(l.transformed)
          assert.matches("^RW%-T%-%d$", l.payload.order.refCode)
          assert.equal(400, l.error.status)
          assert.equal("SandboxFault", l.error.code)
        end
      end
      assert.equal(2, sent_stage)
      r = cli({ "send", r1, "--transform", FIX .. "transform.lua", "--rejects", r2 }, { env = creds() })
      assert.equal(1, r.code) -- BOOM still fails in the transform
      assert.same({ ["RW-T-1"] = 1, ["RW-T-2"] = 1 }, recorded())
      local left = lines_of(r2)
      assert.equal(1, #left)
      assert.equal("transform", left[1].stage)
    end)

    it("--dry-run validates and encodes but sends nothing, and needs no credentials", function()
      local r = cli({ "send", "--dry-run", FIX .. "spec-sample.xml", FIX .. "hostile.csv", "-v" }, { env = creds() })
      assert.equal(1, r.code)
      assert.matches("dry run: 4 orders valid, nothing sent, 2 rejected", r.err)
      assert.matches("spec%-sample.xml:2: order orderRef: valid", r.out)
      r = cli({ "send", "-n", FIX .. "spec-sample.xml" })
      assert.equal(0, r.code, r.all)
      local rep = tmp("dry-report.json")
      r = cli({ "send", "-n", FIX .. "tx.ndjson", "--transform", FIX .. "transform.lua", "--report", rep })
      assert.equal(1, r.code)
      local report = cjson.decode(read_file(rep))
      assert.is_true(report.dry_run)
      assert.equal(2, report.valid)
      assert.equal(0, report.sent)
      assert.equal(1, report.filtered) -- the transform's nil: no order, not in read
      assert.equal(0, report.skipped)
      assert.equal(report.read, report.valid + report.rejected)
      assert.equal(0, sb.stats().requests)
    end)

    it("exits 0 when everything was sent, and -q prints nothing", function()
      local r = cli({ "send", "-q", FIX .. "spec-sample.xml" }, { env = creds() })
      assert.equal(0, r.code)
      assert.equal("", r.all)
      r = cli({ "send", FIX .. "spec-sample.xml" }, { env = creds() })
      assert.equal(0, r.code)
      assert.matches("^sent 1 order in", r.err)
      assert.equal(2, sb.stats().accepted)
    end)

    it("keeps failed orders in a default file when no --rejects was given", function()
      local dir = tmp("default-rejects")
      os.execute("mkdir -p " .. q(dir))
      sb.faults({ count = 1, status = 400, match = "POST" })
      local r = cli({ "send", FIX .. "spec-sample.xml" }, { env = creds(), cwd = dir })
      assert.equal(1, r.code)
      local name = r.err:match("1 order not sent, saved to (optimizely%-offline%-unsent%-[%w%-]+%.ndjson)")
      assert.is_string(name, r.err)
      local l = lines_of(dir .. "/" .. name)
      assert.equal(1, #l)
      assert.equal("orderRef", l[1].payload.order.refCode)
    end)

    it("stops cleanly when the rejects file cannot be written", function()
      local f = io.open("/dev/full", "w")
      if not f then return pending("no /dev/full here") end
      f:close()
      local r = cli({ "send", FIX .. "orders.ndjson", "--rejects", "/dev/full" }, { env = creds() })
      assert.equal(1, r.code, r.all)
      assert.matches("error: .*cannot write rejects file /dev/full", r.err)
      assert.matches("nothing from record 3 of .*orders.ndjson on was sent", r.err)
      assert.is_nil(r.err:find("traceback", 1, true))
      -- the orders before the bad record may have gone out; none after it
      local rec = recorded()
      assert.is_nil(rec["N-3"])
      assert.is_nil(rec["N-INVALID"])
    end)

    it("takes its credentials from a config file", function()
      local info = sb.ensure()
      local conf = write_file(tmp("oo.conf"), table.concat({
        "# optimizely-offline config",
        "site = " .. info.site,
        'token = "' .. info.token .. '"',
        "channel=" .. info.channel,
        "base-url = " .. info.base_url,
        "ca_file = " .. info.ca_file,
        "max_attempts = 2",
        "",
      }, "\n"))
      local r = cli({ "send", "--config", conf, FIX .. "spec-sample.xml" })
      assert.equal(0, r.code, r.all)
      assert.equal(1, count(recorded()))
      -- the command line wins over the file
      r = cli({ "send", "--config", conf, "--channel", "tv", FIX .. "spec-sample.xml", "--rejects", tmp("ch.ndjson") })
      assert.equal(1, r.code)
      assert.matches("ChannelNotRecognized", r.err)
    end)
  end)

  describe("the token", function()
    it("never shows: wrong token, bad config files, the command line, verbose runs", function()
      local rej, rep = tmp("tok-rejects.ndjson"), tmp("tok-report.json")
      local r = cli({ "send", "-v", FIX .. "orders.ndjson", "--rejects", rej, "--report", rep },
        { env = creds({ OPTIMIZELY_SITE_TOKEN = SECRET }) })
      assert.equal(1, r.code)
      assert.matches("InvalidSiteToken", r.err)
      assert_no_secret(r.all)
      assert_no_secret(read_file(rej))
      assert_no_secret(read_file(rep))

      local function bad_config(body, expect)
        local conf = write_file(tmp("bad.conf"), body)
        local e = creds()
        e.OPTIMIZELY_SITE_TOKEN = nil
        local res = cli({ "send", "--config", conf, FIX .. "spec-sample.xml" }, { env = e })
        assert.equal(2, res.code, body .. "\n" .. res.all)
        assert.matches(expect, res.err)
        assert_no_secret(res.all)
      end
      bad_config("token " .. SECRET .. "\n", "bad.conf:1: expected key = value")
      bad_config('token = " ' .. SECRET .. '"\n', "token has leading or trailing spaces")
      bad_config("token = " .. SECRET .. "\ntokn = " .. SECRET .. "\n",
        "bad.conf:2: unknown key tokn %(did you mean token%?%)")
      bad_config("token = " .. SECRET .. "\ntimeout = " .. SECRET .. "\n", "timeout must be a number")
      bad_config("token = " .. SECRET .. "\nallow_http = " .. SECRET .. "\n",
        "allow_http is not read from a config file")
      bad_config("token = " .. SECRET .. "\ncancel_path = /x\n", "cancel_path must contain {refCode}")

      for _, args in ipairs({ { "send", "--token", SECRET, FIX .. "spec-sample.xml" },
                              { "send", "--token=" .. SECRET, FIX .. "spec-sample.xml" },
                              { "cancel", "--token", SECRET, "X" } }) do
        r = cli(args, { env = creds() })
        assert.equal(2, r.code)
        assert.matches("not taken on the command line", r.err)
        assert_no_secret(r.all)
      end

      -- a token with a line break in the environment is refused, not echoed
      r = cli({ "send", FIX .. "spec-sample.xml" }, { env = creds({ OPTIMIZELY_SITE_TOKEN = SECRET .. "\nX: y" }) })
      assert.equal(2, r.code)
      assert_no_secret(r.all)

      -- the good token does not show in a verbose run either
      local info = sb.ensure()
      r = cli({ "send", "-v", FIX .. "spec-sample.xml", "--report", rep }, { env = creds() })
      assert.equal(0, r.code)
      assert_no_secret(r.all, info.token)
      assert_no_secret(read_file(rep), info.token)
    end)
  end)

  describe("Ctrl-C", function()
    it("SIGINT from outside: stops, reports, and every order is sent or in the rejects", function()
      local N = 2000
      local file = gen_ndjson(tmp("big.ndjson"), N, "INT")
      local rej, rep = tmp("int-rejects.ndjson"), tmp("int-report.json")
      sb.faults({ count = 100000, delay = 0.05, match = "POST" })
      finally(function() sb.clear_faults() end)
      local cmd = "sh -c " .. q("echo $$; " .. command({ "send", file, "--concurrency", "4",
        "--rejects", rej, "--report", rep }, creds(), nil, true)
        .. " >" .. q(tmp("int.out")) .. " 2>" .. q(tmp("int.err"))) .. "; echo \"rc=$?\""
      local p = io.popen(cmd)
      local pid = tonumber(p:read("*l"))
      assert.is_number(pid)
      -- wait until some orders went through (bounded), then Ctrl-C
      wait.poll(function() return sb.stats().accepted >= 20 end, 30, 0.02)
      os.execute("kill -INT " .. pid)
      local rc = tonumber(p:read("*a"):match("rc=(%d+)"))
      p:close()
      sb.clear_faults()
      local err = read_file(tmp("int.err"))
      assert.equal(130, rc, err)
      assert.matches("interrupted: accounting for the orders not sent", err)
      local report = assert(cjson.decode(read_file(rep)))
      -- the server had 20; the CLI may not have read every answer yet
      assert.is_true(report.sent + report.unknown_outcome >= 20 and report.sent < N, err)
      assert.is_true(report.not_sent > 0)
      assert.matches(("sent %d order"):format(report.sent), err)
      assert.matches(("%d not sent"):format(report.not_sent), err)
      assert.equal(130, report.exit_code)
      assert_accounted(N, "INT", rej, report)
      -- the rejects file goes out as it is
      local r = cli({ "send", rej, "--rejects", tmp("int-again.ndjson") }, { env = creds() })
      assert.equal(0, r.code, r.all)
      local rec = recorded()
      for i = 1, N do assert.is_not_nil(rec["INT-" .. i], "INT-" .. i) end
    end)

    it("SIGINT while reading input: the rest lands in a default unsent file", function()
      local N = 600
      local file = gen_ndjson(tmp("self.ndjson"), N, "SELF")
      local dir = tmp("self-cwd")
      os.execute("mkdir -p " .. q(dir))
      local env = creds()
      env.KILL_AT = "250"
      local rep = tmp("self-report.json")
      local r = cli({ "send", file, "--transform", FIX .. "interrupt.lua", "--report", rep }, { env = env, cwd = dir })
      assert.equal(130, r.code, r.all)
      local name = r.err:match("not sent, saved to (optimizely%-offline%-unsent%-[%w%-]+%.ndjson)")
      assert.is_string(name, r.err)
      local report = cjson.decode(read_file(rep))
      -- the 250 read may all have been sent: the signal lets those in flight finish (--grace)
      assert.is_true(report.sent <= 250)
      assert_accounted(N, "SELF", dir .. "/" .. name, report)
    end)

    it("SIGINT during a dry run: nothing sent, exit 130", function()
      local file = gen_ndjson(tmp("dry-int.ndjson"), 400, "DRY")
      local r = cli({ "send", "-n", file, "--transform", FIX .. "interrupt.lua" }, { env = { KILL_AT = "100" } })
      assert.equal(130, r.code, r.all)
      assert.matches("interrupted: nothing was sent %(dry run%)", r.err)
      assert.equal(0, sb.stats().requests)
    end)

    it("Ctrl-C landing in a result callback stops the batch too", function()
      -- in-process: a stdout whose 5th write raises what the interpreter
      -- raises on SIGINT, inside the batch's (protected) result callback
      local info = sb.ensure()
      local N = 300
      local file = gen_ndjson(tmp("cb.ndjson"), N, "CB")
      local conf = write_file(tmp("cb.conf"), ("site = %s\ntoken = %s\nchannel = %s\nbase_url = %s\nca_file = %s\n")
        :format(info.site, info.token, info.channel, info.base_url, info.ca_file))
      local rej, rep = tmp("cb-rejects.ndjson"), tmp("cb-report.json")
      local writes = 0
      local out = { write = function()
        writes = writes + 1
        if writes == 5 then error("somewhere.lua:1: interrupted!") end
      end }
      local errbuf = {}
      local err = { write = function(_, ...) for _, s in ipairs({ ... }) do errbuf[#errbuf + 1] = s end end }
      local code = require("optimizely.offline.cli").main(
        { "send", file, "--config", conf, "-v", "--rejects", rej, "--report", rep, "--concurrency", "2",
          "--ledger", tmp("cb-ledger.db") }, out, err)
      debug.sethook()
      assert.equal(130, code, table.concat(errbuf))
      local report = cjson.decode(read_file(rep))
      assert.is_true(report.sent < N)
      assert_accounted(N, "CB", rej, report)
    end)
  end)

  describe("cancel", function()
    it("cancels each ref, prints a result per ref, exits 1 if any failed", function()
      local r = cli({ "send", FIX .. "spec-sample.xml", FIX .. "tx.ndjson" }, { env = creds() })
      assert.equal(0, r.code, r.all)
      r = cli({ "cancel", "orderRef", "T-1", "NOPE" }, { env = creds() })
      assert.equal(1, r.code, r.all)
      assert.matches("orderRef: cancelled %(HTTP 200%)", r.out)
      assert.matches("T%-1: cancelled %(HTTP 200%)", r.out)
      assert.matches("NOPE: not cancelled: .*OrderNotFound", r.out)
      assert.matches("2 cancelled, 1 failed", r.err)
      assert.equal(1, #sb.cancellations({ refCode = "orderRef" }))

      r = cli({ "cancel", "-" }, { env = creds(), stdin = "T-2\n\n  SKIP-1  \r\n" })
      assert.equal(0, r.code, r.all)
      assert.matches("T%-2: cancelled", r.out)
      assert.matches("SKIP%-1: cancelled", r.out)
      assert.equal(4, #sb.cancellations())
    end)
  end)

  describe("cancel and Ctrl-C", function()
    it("says what was cancelled and what was not", function()
      local refs = {}
      for i = 1, 40 do refs[i] = "CI-" .. i end
      sb.faults({ count = 1000, delay = 0.1, match = "DELETE" })
      finally(function() sb.clear_faults() end)
      local args = { "cancel" }
      for _, r in ipairs(refs) do args[#args + 1] = r end
      local p = io.popen("sh -c " .. q("echo $$; " .. command(args, creds(), nil, true)
        .. " >" .. q(tmp("ci.out")) .. " 2>" .. q(tmp("ci.err"))) .. "; echo \"rc=$?\"")
      local pid = tonumber(p:read("*l"))
      wait.poll(function() return sb.stats().requests >= 3 end, 30, 0.02)
      os.execute("kill -INT " .. pid)
      local rc = tonumber(p:read("*a"):match("rc=(%d+)"))
      p:close()
      local err = read_file(tmp("ci.err"))
      assert.equal(130, rc, err)
      local ok_n, failed, left = err:match("interrupted: (%d+) cancelled, (%d+) failed, (%d+) not done")
      assert.is_string(ok_n, err)
      assert.equal(0, tonumber(ok_n))
      assert.is_true(tonumber(failed) >= 2)
      assert.equal(40, tonumber(failed) + tonumber(left))
      assert.matches("CI%-40\n", err)
    end)
  end)

  describe("the progress bar", function()
    local has_script = os.execute("command -v script >/dev/null 2>&1")
    has_script = has_script == true or has_script == 0

    it("shows on a terminal and not on a file", function()
      if not has_script then return pending("util-linux `script` is not installed") end
      local file = gen_ndjson(tmp("bar.ndjson"), 300, "BAR")
      local cmd = command({ "send", file, "--rate", "600" }, creds())
      local p = io.popen("script -qec " .. q(cmd) .. " /dev/null 2>&1")
      local tty = p:read("*a")
      p:close()
      assert.matches("%] 100%% 300/300 done, 0 failed, %d+ orders/s", tty)
      assert.matches("\r", tty)
      p = io.popen("script -qec " .. q(command({ "send", "-q", file }, creds())) .. " /dev/null 2>&1")
      assert.equal("", p:read("*a"))
      p:close()
      local r = cli({ "send", file }, { env = creds() })
      assert.equal(0, r.code)
      assert.is_nil(r.err:find("\r", 1, true))
      assert.is_nil(r.err:find("done,", 1, true))
    end)
  end)
end)

describe("NDJSON reader and rejects files", function()
  local path
  after_each(function() if path then os.remove(path) end end)

  it("unwraps a rejects line into its payload, keeping transformed and the origin", function()
    path = os.tmpname()
    write_file(path, table.concat({
      '{"payload":{"order":{"refCode":"A"}},"error":{"kind":"http","status":503},"source":"x.csv:4",'
        .. '"stage":"send","transformed":true}',
      '{"payload":{"order":{"refCode":"B"}},"error":{"kind":"validation"},"source":"r.ndjson:2",'
        .. '"origin":"x.csv:9","stage":"validation","transformed":false}',
      '{"error":{"kind":"input","message":"x.csv:7: bad quoting"},"source":"x.csv:7","stage":"input"}',
      -- an order that happens to have an `error` field is still an order
      '{"order":{"refCode":"C"},"error":"x"}',
      '{"payload":{"order":{"refCode":"D"}}}',
      "",
    }, "\n"))
    local it = assert(input.open(path, { format = "ndjson" }))
    local a, b, c, d, e = it(), it(), it(), it(), it()
    assert.same({ order = { refCode = "A" } }, a.payload)
    assert.is_true(a.transformed)
    assert.equal("x.csv:4", a.origin)
    assert.equal(1, a.line)
    assert.same({ order = { refCode = "B" } }, b.payload)
    assert.is_false(b.transformed)
    assert.equal("x.csv:9", b.origin)
    assert.is_nil(c.payload)
    assert.matches(":3: rejected record without a payload to send %(x.csv:7: bad quoting%)", c.error)
    assert.equal("C", d.payload.order.refCode)
    assert.is_nil(d.transformed)
    assert.same({ payload = { order = { refCode = "D" } } }, e.payload)
    assert.is_nil(it())
  end)

  it("records.iter does not transform an unwrapped transformed payload again", function()
    path = os.tmpname() .. ".ndjson"
    write_file(path, '{"payload":{"order":{"refCode":"A"}},"error":{},"transformed":true}\n'
      .. '{"payload":{"order":{"refCode":"B"}},"error":{},"transformed":false}\n')
    local records = require("optimizely.offline.cli.records")
    local seen = {}
    local recs = records.iter({ files = { path } }, function(rec)
      seen[#seen + 1] = rec.payload.order.refCode
      rec.payload.order.refCode = "T-" .. rec.payload.order.refCode
      return rec.payload
    end)
    local a, b = recs(), recs()
    assert.equal("A", a.payload.order.refCode)
    assert.is_true(a.transformed)
    assert.equal("T-B", b.payload.order.refCode)
    assert.same({ "B" }, seen)
    assert.is_nil(recs())
  end)
end)
