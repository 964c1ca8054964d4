-- Where the command line says things (issue 20): the places listed under a
-- grouped problem are the first ones in input order, whatever order the
-- answers come in; a file:line location holds the whole path (escaped, never
-- cut); `validate` and `send --dry-run` print their failure lines on one
-- stream (standard output) with the summary on standard error; a date that
-- --timezone cannot read alone says what was expected and the --date-format
-- that would read it.
local sb = require("support.sandbox")
local cli = require("support.cli")
local problems = require("optimizely.offline.cli.problems")

local run, tmp = cli.run, cli.tmp

local function order_line(ref, total)
  return ('{"user":{"id":"u"},"order":{"refCode":"%s","orderDate":"2024-03-15T09:12:00 GMT",'
    .. '"currency":"GBP"%s,"items":[{"refCode":"s1","qty":1,"price":"1.00"}]}}\n')
    :format(ref, total and (',"total":"' .. total .. '"') or "")
end

describe("command-line messages", function()
  teardown(cli.cleanup)

  describe("the places of a grouped problem", function()
    it("are the first ones in input order, whatever order the failures are counted in", function()
      local t = problems.new()
      local function item(fi, index)
        return { fi = fi, rec = { file = "f" .. fi .. ".xml", line = index * 10, index = index } }
      end
      for _, p in ipairs({ { 1, 28 }, { 1, 5 }, { 1, 17 }, { 2, 1 }, { 1, 3 }, { 1, 40 } }) do
        t:failure(item(p[1], p[2]), { problems = { { path = "order.total", message = "is required" } } })
      end
      local lines = t:lines("failed:")
      assert.equal("         at f1.xml:30, f1.xml:50, f1.xml:170, ...", lines[3])
      assert.same({ "f1.xml:30", "f1.xml:50", "f1.xml:170" }, t:list()[1].where)
    end)

    it("send lists them in input order when the answers come back out of order", function()
      sb.ensure()
      sb.reset()
      -- the first request to arrive waits 1 s, then all three fail alike
      sb.faults({ count = 1, status = 400, delay = 1 }, { count = 2, status = 400 })
      local path = tmp("three.ndjson")
      cli.write_file(path, order_line("A-1", "1.00") .. order_line("A-2", "1.00") .. order_line("A-3", "1.00"))
      local r = run({ "send", path, "--concurrency", "3", "--max-attempts", "1", "--rejects", tmp("three.rej") },
        { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      assert.matches("at " .. path:gsub("%p", "%%%0") .. ":1, [^\n]*three%.ndjson:2, [^\n]*three%.ndjson:3\n", r.err)
      sb.reset()
    end)
  end)

  describe("file:line locations", function()
    it("hold the whole path, however long, escaped but never cut", function()
      local d = tmp(string.rep("till-export-archive-", 5))
      os.execute("mkdir -p " .. cli.q(d))
      local path = d .. "/till-export-2024-05-16-store-0042-register-07.ndjson"
      assert.is_true(#path > 128)
      cli.write_file(path, order_line("L-1"))
      local r = run({ "validate", path })
      assert.equal(1, r.code)
      assert.matches(path .. ":1: order L-1: order.total: is required", r.out, 1, true)
      assert.matches("at " .. path .. ":1\n", r.err, 1, true)
      assert.is_nil(r.all:find("bytes)", 1, true), r.all)
      -- a control character in a name is escaped, the rest kept
      local odd = tmp("tab\tname.ndjson")
      cli.write_file(odd, order_line("L-2"))
      r = run({ "validate", odd })
      assert.matches(tmp("tab\\tname.ndjson") .. ":1: order L-2: order.total: is required", r.out, 1, true)
      assert.is_nil(r.all:find("\t", 1, true))
    end)
  end)

  describe("failure lines", function()
    local path
    setup(function()
      path = cli.write_file(tmp("mixed.ndjson"), order_line("OK-1", "1.00") .. order_line("BAD-1"))
    end)

    it("validate and send --dry-run print them on standard output, the summary on standard error", function()
      local want = "mixed.ndjson:2: order BAD-1: order.total: is required\n"
      for _, args in ipairs({ { "validate", path }, { "send", "--dry-run", path } }) do
        local r = run(args)
        assert.equal(1, r.code, r.all)
        assert.matches(want, r.out, 1, true)
        assert.is_nil(r.err:find(want, 1, true), table.concat(args, " ") .. ": " .. r.err)
        assert.matches("invalid records by problem:\n", (r.err:gsub("failed orders", "invalid records")), 1, true)
      end
    end)

    it("a real send prints them on standard error", function()
      sb.ensure()
      sb.reset()
      local r = run({ "send", path, "--rejects", tmp("mixed.rej") }, { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      assert.matches("mixed.ndjson:2: order BAD-1: order.total: is required\n", r.err, 1, true)
      assert.equal("", r.out)
    end)
  end)

  describe("--timezone without --date-format", function()
    it("says what was expected and suggests the --date-format that reads the date", function()
      local csv = cli.write_file(tmp("till.csv"), "refCode,orderDate,currency,total,itemRefCode,qty,price\n"
        .. "T-1,16/05/2024 15:25,GBP,1.00,s1,1,1.00\n" .. "T-2,05/16/2024 3:25 PM,GBP,1.00,s1,1,1.00\n")
      local r = run({ "validate", csv, "--timezone", "Europe/London" })
      assert.equal(1, r.code)
      assert.matches("till.csv:2: order T-1: order.orderDate: must be written YYYY-MM-DD HH:MM[:SS] when "
        .. "--timezone is given without --date-format (for dates written like this one, add "
        .. "--date-format '%d/%m/%Y %H:%M'), got \"16/05/2024 15:25\"", r.out, 1, true)
      assert.matches("add --date-format '%m/%d/%Y %I:%M %p'), got \"05/16/2024 3:25 PM\"", r.out, 1, true)
      assert.is_nil(r.all:find("not a local date and time", 1, true))
      -- and the suggestion works
      r = run({ "validate", csv, "--timezone", "Europe/London", "--date-format", "%d/%m/%Y %H:%M" })
      assert.matches("1 valid, 1 invalid", r.err, 1, true)
    end)
  end)
end)
