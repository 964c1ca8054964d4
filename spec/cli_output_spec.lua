-- What the command line prints: -q, the grouped summaries of failures and
-- warnings, --version and --help, and messages that no value can forge or
-- flood. The CLI runs as a child process; sends go to the sandbox.
local sb = require("support.sandbox")
local cli = require("support.cli")
local offline = require("optimizely.offline")

local run, tmp, FIX = cli.run, cli.tmp, cli.FIX

local function count(s, pat)
  local n = 0
  for _ in s:gmatch(pat) do n = n + 1 end
  return n
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]*\n") do t[#t + 1] = l end
  return t
end

describe("CLI output", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  describe("-q", function()
    it("prints the failed orders (the errors) and no progress or summary", function()
      local r = run({ "send", "-q", FIX .. "orders.ndjson", "--rejects", tmp("q.ndjson") }, { env = cli.creds() })
      assert.equal(1, r.code)
      assert.equal("", r.out)
      assert.matches("orders.ndjson:3: invalid JSON", r.err)
      assert.matches("orders.ndjson:5: order N%-INVALID: order.orderDate: impossible date", r.err)
      assert.is_nil(r.err:find("sent ", 1, true), r.err)
      assert.is_nil(r.err:find("errors:", 1, true))
      assert.is_nil(r.err:find("by problem", 1, true))
      -- validate -q: the problems on stdout, no summary
      r = run({ "validate", "-q", FIX .. "orders.ndjson" })
      assert.equal(1, r.code)
      assert.matches("orders.ndjson:5: order N%-INVALID: order.total: is required", r.out)
      assert.equal("", r.err)
      -- and nothing at all when everything went out
      r = run({ "send", "-q", FIX .. "spec-sample.xml" }, { env = cli.creds() })
      assert.equal(0, r.code)
      assert.equal("", r.all)
    end)
  end)

  describe("grouped summaries", function()
    it("validate: 1,001 orders with the same wrong date end with one grouped problem", function()
      cli.orders(tmp("same-date.ndjson"), 1001, "D", function() return '"2024-13-01T10:00:00 GMT"' end)
      local r = run({ "validate", "same-date.ndjson" })
      assert.equal(1, r.code)
      -- the first 50 in full, then a pointer to the summary
      assert.equal(50, count(r.out, "order%.orderDate: impossible date"))
      assert.matches("more invalid records: see the summary", r.out)
      assert.matches("0 valid, 1001 invalid, 0 skipped", r.err)
      assert.matches("invalid records by problem:\n%s+1001  order%.orderDate: impossible date or time "
        .. "%(month must be 01%-12%), got \"2024%-13%-01T10:00:00 GMT\"\n%s+at same%-date%.ndjson:1, "
        .. "same%-date%.ndjson:2, same%-date%.ndjson:3, %.%.%.\n", r.err)
      -- -v prints every one
      r = run({ "validate", "-v", "same-date.ndjson" })
      assert.equal(1001, count(r.out, "order%.orderDate: impossible date"))
    end)

    it("groups one problem with different values under a pattern", function()
      local file = cli.orders(tmp("many-dates.ndjson"), 30, "M", function(i)
        return ('"2024-%02d-40T10:00:00 GMT"'):format(i % 12 + 1)
      end)
      local r = run({ "validate", file, "-q" })
      assert.equal(30, count(r.out, "no such day in that month"))
      r = run({ "validate", file })
      assert.matches("\n%s+30  order%.orderDate: impossible date or time %(no such day in that month%), got …\n", r.err)
    end)

    it("send: the failures grouped by problem, with where they were", function()
      cli.orders(tmp("send-groups.ndjson"), 6, "G", function(i)
        return i <= 2 and '"not a date"' or '"2024-03-15T09:12:00 GMT"'
      end)
      sb.faults({ count = 3, status = 400, match = "POST" })
      local r = run({ "send", "send-groups.ndjson", "--concurrency", "1", "--rejects", tmp("g-rej.ndjson"),
        "--report", tmp("g-rep.json") }, { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      assert.matches("failed orders by problem:", r.err)
      assert.matches("\n%s+3  send: http: server answered HTTP 400: SandboxFault: [^\n]*\n"
        .. "%s+at send%-groups%.ndjson:%d, ", r.err)
      assert.matches("\n%s+2  order%.orderDate: must be a date like [^\n]*, got \"not a date\"\n%s+at "
        .. "send%-groups%.ndjson:1, send%-groups%.ndjson:2\n", r.err)
      local rep = cli.json_file(tmp("g-rep.json"))
      assert.equal(2, #rep.problems)
      assert.equal(3, rep.problems[1].count)
      assert.equal(2, rep.problems[2].count)
      assert.same({ "send-groups.ndjson:1", "send-groups.ndjson:2" }, rep.problems[2].where)
    end)

    it("warnings: grouped in the summary and the report, listed per order with --dry-run -v", function()
      local path = tmp("warn.ndjson")
      local f = assert(io.open(path, "wb"))
      for i = 1, 4 do
        f:write(('{"user":{"email":"c%d@example.com"},"order":{"refCode":"W-%d","orderDate":"2024-03-15T09:12:00 GMT",'
          .. '"currency":"GBP","total":1,"items":[{"refCode":"s","qty":1,"price":1}]}}\n'):format(i, i))
      end
      f:close()
      -- (--max-order-age 0: the orders' 2024 dates would draw the age warning too)
      local r = run({ "send", "--dry-run", "-v", "warn.ndjson", "--report", tmp("w-rep.json"), "--max-order-age", "0" })
      assert.equal(0, r.code, r.all)
      assert.equal(4, count(r.out, "\n    warning: user%.email: deprecated: send a pseudonymised user%.id"))
      assert.matches("dry run: 4 orders valid, nothing sent, 4 warnings", r.err)
      assert.matches("warnings by kind:\n%s+4  user%.email: deprecated: send a pseudonymised user%.id instead of "
        .. "user%.email\n%s+at warn%.ndjson:1, warn%.ndjson:2, warn%.ndjson:3, %.%.%.\n", r.err)
      local rep = cli.json_file(tmp("w-rep.json"))
      assert.equal(4, rep.warnings)
      assert.equal(4, rep.warning_kinds[1].count)
      -- a real send shows the same summary (without -v)
      r = run({ "send", path, "--max-order-age", "0" }, { env = cli.creds() })
      assert.equal(0, r.code, r.all)
      assert.matches("sent 4 orders in [^\n]*, 4 warnings\n", r.err)
      assert.matches("warnings by kind:\n%s+4  user%.email: deprecated", r.err)
      -- validate too
      r = run({ "validate", path, "--max-order-age", "0" })
      assert.matches("warnings by kind:\n%s+4  user%.email", r.err)
    end)
  end)

  describe("--version and --help", function()
    it("--version and -V print the version, libcurl's and Lua's", function()
      for _, flag in ipairs({ "--version", "-V" }) do
        local r = run({ flag })
        assert.equal(0, r.code, r.all)
        local v = offline.VERSION:gsub("%p", "%%%0")
        assert.matches("^optimizely%-offline " .. v .. "\nlibcurl %d+%.%d+[^\n]*\n[^\n]*Lua", r.out)
      end
    end)

    it("send --help and cancel --help name the environment variables", function()
      for _, c in ipairs({ "send", "cancel" }) do
        local r = run({ c, "--help" })
        assert.equal(0, r.code)
        for _, v in ipairs({ "OPTIMIZELY_SITE_TOKEN", "OPTIMIZELY_SITE_TOKEN_<CHANNEL>", "OPTIMIZELY_SITE",
                              "OPTIMIZELY_CHANNEL", "OPTIMIZELY_BASE_URL", "OPTIMIZELY_CA_FILE", "OPTIMIZELY_ENV" }) do
          assert.matches(v:gsub("%p", "%%%0") .. "%s", r.out)
        end
        assert.matches("Exit codes: 0", r.out)
        assert.matches("%-%-allow%-http", r.out)
      end
    end)
  end)

  describe("messages", function()
    local function ndjson(name, body)
      return cli.write_file(tmp(name), body .. "\n")
    end
    local ORDER = '"orderDate":"2024-03-15T09:12:00 GMT","currency":"GBP","items":[{"refCode":"s","qty":1,"price":1}]'

    it("escape control characters in refCodes: no forged report line, no ESC to the terminal", function()
      ndjson("forge.ndjson", '{"user":{"id":"u"},"order":{"refCode":"X\\nforge.ndjson:9: order FAKE: sent\\u001b[2J",'
        .. ORDER .. '}}')
      local r = run({ "validate", "forge.ndjson" })
      assert.equal(1, r.code)
      assert.is_nil(r.all:find("\27", 1, true), "an ESC byte reached the output")
      for _, l in ipairs(lines(r.out)) do
        assert.matches("^forge%.ndjson:1: ", l) -- every line is about line 1
      end
      assert.matches('order "X\\nforge.ndjson:9: order FAKE: sent\\x1b[2J": order.total: is required', r.out, 1, true)
      -- the same on send's stderr
      r = run({ "send", "forge.ndjson", "--rejects", tmp("forge-rej.ndjson") }, { env = cli.creds() })
      assert.is_nil(r.all:find("\27", 1, true))
      assert.is_nil(r.err:find("\nforge.ndjson:9", 1, true))
    end)

    it("escape keys in field paths and never echo an invalid e-mail in full", function()
      local path = ndjson("keys.ndjson", '{"user":{"email":"john.smith secret@example.com"},"order":{"refCode":"K",'
        .. '"total":1,"x\\u001b]0;pwn\\u0007":1,"attributes":{"a\\nb":{}},' .. ORDER .. '}}')
      local r = run({ "validate", path })
      assert.equal(1, r.code)
      assert.is_nil(r.all:find("\27", 1, true))
      assert.is_nil(r.all:find("\7", 1, true))
      assert.matches('order.attributes["a\\nb"]: value must be a string, number or boolean', r.out, 1, true)
      assert.matches('order["x\\x1b]0;pwn\\x07"]: unknown field', r.out, 1, true)
      assert.matches("user.email: must be an e-mail address: contains a space or control character (at offset 10)",
        r.out, 1, true)
      assert.is_nil(r.all:find("john.smith", 1, true))
      -- the encoder itself (the library's messages)
      local ok, e = offline.validate({ user = { email = "no-at-sign" },
                                       order = { refCode = "A", attributes = { ["k\r\n"] = {} } } })
      assert.is_nil(ok)
      local s = tostring(e)
      assert.is_nil(s:find("no-at-sign", 1, true))
      assert.matches("must be an e-mail address: has no @", s, 1, true)
      assert.matches('order.attributes["k\\r\\n"]', s, 1, true)
    end)

    it("cap a huge value: a 3 MB refCode does not become megabytes of output", function()
      local big = ("R"):rep(3 * 1024 * 1024)
      local path = ndjson("huge.ndjson", '{"user":{"id":"u"},"order":{"refCode":"' .. big .. '","orderDate":"x",'
        .. '"currency":"GBP","items":[{"refCode":"s","qty":0,"price":-1}]}}')
      local r = run({ "validate", path })
      assert.equal(1, r.code)
      assert.is_true(#r.all < 20000, ("%d bytes of output"):format(#r.all))
      assert.matches('order "RRRR[R]*"%.%.%.%(3145728 bytes%): order.total: is required', r.out)
      r = run({ "send", path, "--rejects", tmp("huge-rej.ndjson") }, { env = cli.creds() })
      assert.is_true(#r.all < 20000, ("%d bytes of output"):format(#r.all))
    end)

    it("a payload without an order is not labelled 'order false'", function()
      local path = ndjson("noorder.ndjson", '{"user":{"id":"u"},"order":false}\n{"user":{"id":"u"}}')
      local r = run({ "validate", path })
      assert.equal(1, r.code)
      assert.is_nil(r.all:find("order false", 1, true), r.all)
      assert.matches("noorder.ndjson:1: order: must be", r.out, 1, true)
      assert.matches("noorder.ndjson:2: order: is required", r.out, 1, true)
    end)

    it("cancel escapes the refs it prints", function()
      local r = run({ "cancel", "-" }, { env = cli.creds(), stdin = "R\27[31mX\n" })
      assert.equal(1, r.code, r.all)
      assert.is_nil(r.all:find("\27", 1, true))
      assert.matches('"R\\x1b[31mX": not cancelled', r.out, 1, true)
    end)
  end)
end)
