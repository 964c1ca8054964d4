-- --date-format and --timezone: local order dates (a UK till's
-- "16/06/2024 14:25") converted to the documented "yyyy-MM-ddTHH:mm:ss GMT"
-- with the real summer-time rules of the system's zoneinfo (TZif files read
-- by csrc/payload/tz.c, v2+ with the POSIX footer). Checked against glibc's `date`
-- and against zones compiled with `zic`, and end to end through the sandbox.
local sb = require("support.sandbox")
local cli = require("support.cli")
local core = require("optimizely.offline.core")
local sys = require("optimizely.offline.sys")

local run, tmp, q = cli.run, cli.tmp, cli.q

local function has(cmd) return (sys.run("command -v " .. cmd .. " >/dev/null 2>&1")) end

describe("local dates", function()
  teardown(cli.cleanup)

  describe("time zones (core.tz_load)", function()
    it("London: GMT in winter, BST in summer, the rule after the file's last transition", function()
      local z = assert(core.tz_load("Europe/London"))
      assert.equal("Europe/London", z:name())
      assert.same({ 0, false }, { z:offset(1705406400) })     -- 2024-01-16 12:00Z
      assert.same({ 3600, true }, { z:offset(1718544300) })   -- 2024-06-16 13:25Z
      assert.same({ 3600, true }, { z:offset(2224656000) })   -- 2040-07-01: the POSIX footer
      assert.same({ 0, false }, { z:offset(2240467200) })     -- 2040-12-31
    end)

    it("agrees with glibc's date for 400 instants in six zones, 1970 to 2100", function()
      if not has("date") then return pending("no date command") end
      local path = tmp("instants")
      local f = assert(io.open(path, "w"))
      local ts = {}
      math.randomseed(42)
      for i = 1, 400 do
        ts[i] = math.random(0, 4102) * 1000000 + math.random(0, 444799) -- 1970..2100 (5.1: 31-bit bounds)
        f:write("@", ts[i], "\n")
      end
      f:close()
      for _, name in ipairs({ "Europe/London", "America/New_York", "Australia/Sydney", "Asia/Kolkata",
                              "America/Sao_Paulo", "Pacific/Chatham" }) do
        local z = assert(core.tz_load(name))
        local i = 0
        for line in sys.capture("TZ=" .. q(name) .. " date -f " .. q(path) .. " +%z"):gmatch("[^\n]+") do
          i = i + 1
          local sign, h, m = line:match("^([+-])(%d%d)(%d%d)$")
          local want = (sign == "-" and -1 or 1) * (tonumber(h) * 3600 + tonumber(m) * 60)
          assert.equal(want, (z:offset(ts[i])), ("%s at %d"):format(name, ts[i]))
        end
        assert.equal(400, i)
      end
    end)

    it("refuses names that are not zone names, and unknown zones", function()
      for _, name in ipairs({ "../etc/passwd", "/etc/passwd", "Europe/../../etc/passwd", "", "Europe//London",
                              "Europe/London/", ".hidden", "Europe/Lon\ndon" }) do
        local z, e = core.tz_load(name)
        assert.is_nil(z, name)
        assert.equal("config", e.kind)
        assert.matches("is not a time zone name", e.message)
      end
      local z, e = core.tz_load("Mars/Olympus_Mons")
      assert.is_nil(z)
      assert.matches("unknown time zone Mars/Olympus_Mons", e.message)
    end)
  end)

  describe("core.date_convert", function()
    local london
    setup(function() london = assert(core.tz_load("Europe/London")) end)
    -- out, warning | nil, message, why (from the error's message and code)
    local function conv(s, fmt, zone)
      local out, e = core.date_convert(s, fmt, zone)
      if out then return out, e end
      assert.equal("validation", e.kind)
      return nil, e.message, e.code
    end

    it("reads a UK till's dates in London time", function()
      assert.equal("2024-06-16T13:25:00 GMT", conv("16/06/2024 14:25", "%d/%m/%Y %H:%M", london))
      assert.equal("2024-01-16T14:25:00 GMT", conv("16/01/2024 14:25", "%d/%m/%Y %H:%M", london))
      assert.equal("2024-06-16T13:25:07 GMT", conv("2024-06-16 14:25:07", nil, london))
      assert.equal("2024-06-16T13:25:00 GMT", conv("2024-06-16T14:25", nil, london))
      assert.equal("2024-06-16T13:25:00 GMT", conv("6/16/24 2:25 PM", "%m/%d/%y %I:%M %p", london))
      assert.equal("2024-06-16T00:25:00 GMT", conv("16 June 2024 12:25 am", "%d %B %Y %I:%M %p", nil))
      assert.equal("2024-06-16T14:25:00 GMT", conv("Sun, 16 Jun 2024 14:25:00", "%a, %d %b %Y %T", nil))
      -- an offset in the value wins over the zone
      assert.equal("2024-06-16T12:25:00 GMT", conv("2024-06-16T14:25:00+02:00", "%FT%T%z", london))
      -- already absolute: kept as that instant (a rejects file sent again)
      assert.equal("2024-06-16T13:25:00 GMT", conv("2024-06-16T13:25:00 GMT", "%d/%m/%Y %H:%M", london))
      assert.equal("2024-06-16T12:25:00 GMT", conv("2024-06-16T14:25:00+02:00", "%d/%m/%Y %H:%M", london))
    end)

    it("refuses a local time the clocks skipped, takes the earlier of one that happened twice", function()
      local out, msg, kind = conv("31/03/2024 01:30", "%d/%m/%Y %H:%M", london)
      assert.is_nil(out)
      assert.equal("nonexistent", kind)
      assert.matches("does not exist in Europe/London %(the clocks went forward past it%)", msg)
      local warn
      out, warn = conv("27/10/2024 01:30", "%d/%m/%Y %H:%M", london)
      assert.equal("2024-10-27T00:30:00 GMT", out) -- 01:30 BST, not 01:30 GMT
      assert.matches("happened twice in Europe/London %(the clocks went back%): took the earlier, UTC%+01:00", warn)
      -- the southern hemisphere: Sydney goes back in April, forward in October
      local syd = assert(core.tz_load("Australia/Sydney"))
      out, warn = conv("2024-04-07 02:30", nil, syd)
      assert.equal("2024-04-06T15:30:00 GMT", out)
      assert.matches("UTC%+11:00", warn)
      out, msg, kind = conv("2024-10-06 02:30", nil, syd)
      assert.matches("does not exist in Australia/Sydney", msg)
      assert.is_nil(out)
      assert.equal("nonexistent", kind)
    end)

    it("says why a value does not fit", function()
      local _, msg, kind
      local out
      out, msg, kind = conv("16/06/2024 14:2", "%d/%m/%Y %H:%M", london)
      assert.is_nil(out)
      assert.equal("format", kind)
      assert.equal("expected 2-digit minutes (%M) at character 15", msg)
      _, msg, kind = conv("31/02/2024 10:00", "%d/%m/%Y %H:%M", london)
      assert.equal("impossible", kind)
      assert.equal("no such day in that month", msg)
      _, msg = conv("16/06/2024 14:25 extra", "%d/%m/%Y %H:%M", london)
      assert.matches("unexpected text at character 17", msg)
      _, msg = conv("13/06/2024 1:00 XM", "%d/%m/%Y %I:%M %p", nil)
      assert.matches("expected AM or PM", msg)
      _, _, kind = conv("31/12/1969 23:00", "%d/%m/%Y %H:%M", nil)
      assert.equal("range", kind)
    end)

    it("checks a format once, before any record", function()
      assert.is_true(core.date_check_format("%d/%m/%Y %H:%M"))
      for fmt, why in pairs({
        ["%d/%m %H:%M"] = "must name the year",
        ["%d/%m/%Y %Q"] = "unknown directive",
        ["%d/%m/%Y %I:%M"] = "needs %I and %p together",
        ["%d/%m/%Y %H %I %p"] = "hour once",
        ["%d/%m/%Y %"] = "lone %",
        [""] = "is empty",
        ["%d/%m/%Y\n"] = "control character",
      }) do
        local ok, err = core.date_check_format(fmt)
        assert.is_nil(ok, fmt)
        assert.matches(why, err.message, 1, true)
      end
    end)
  end)

  describe("zones compiled with zic", function()
    local zdir
    setup(function()
      if not has("zic") then return end
      zdir = tmp("zoneinfo")
      local src = cli.write_file(tmp("zones.src"), table.concat({
        "Rule T 1996 max - Mar lastSun 1:00u 1:00 S",
        "Rule T 1996 max - Oct lastSun 1:00u 0 -",
        "Zone Test/Slim 0:00 T GMT/BST",
        "Rule A 2008 max - Apr Sun>=1 2:00s 0 S",
        "Rule A 2008 max - Oct Sun>=1 2:00s 1:00 D",
        "Zone Test/South 10:00 A AE%sT",
        "Zone Test/Fixed -3:30 - -0330",
        "",
      }, "\n"))
      assert(sys.run("zic -b slim -d " .. q(zdir) .. " " .. q(src) .. " 2>/dev/null"))
      cli.write_file(zdir .. "/Test/Garbage", "not a tzif file at all, just text\n")
      local london = assert(cli.read_file("/usr/share/zoneinfo/Europe/London"))
      cli.write_file(zdir .. "/Test/Truncated", london:sub(1, 200))
    end)

    local function converted(zone, date)
      local path = cli.write_file(tmp("zic.ndjson"), ('{"user":{"id":"u"},"order":{"refCode":"Z","orderDate":"%s",'
        .. '"currency":"GBP","total":1,"items":[{"refCode":"s","qty":1,"price":1}]}}\n'):format(date))
      local r = run({ "convert", path, "--timezone", zone }, { env = { TZDIR = zdir } })
      return r.out:match('"orderDate":"([^"]+)"'), r
    end

    it("slim files: the POSIX footer gives every rule (north, south, fixed)", function()
      if not zdir then return pending("zic is not installed") end
      assert.equal("2024-06-16T13:25:00 GMT", (converted("Test/Slim", "2024-06-16 14:25")))
      assert.equal("2024-01-16T14:25:00 GMT", (converted("Test/Slim", "2024-01-16 14:25")))
      assert.equal("2024-01-15T01:00:00 GMT", (converted("Test/South", "2024-01-15 12:00")))
      assert.equal("2024-07-15T02:00:00 GMT", (converted("Test/South", "2024-07-15 12:00")))
      assert.equal("2024-07-15T15:30:00 GMT", (converted("Test/Fixed", "2024-07-15 12:00")))
      local out, r = converted("Test/Slim", "2024-03-31 01:30")
      assert.is_nil(out)
      assert.matches("does not exist in Test/Slim", r.err)
    end)

    it("a file that is not TZif, or is cut short, is a usage error", function()
      if not zdir then return pending("zic is not installed") end
      local _, r = converted("Test/Garbage", "2024-06-16 14:25")
      assert.equal(2, r.code)
      assert.matches("%-%-timezone: time zone file [^\n]*Test/Garbage is not a TZif file", r.err)
      _, r = converted("Test/Truncated", "2024-06-16 14:25")
      assert.equal(2, r.code)
      assert.matches("is truncated", r.err)
    end)
  end)

  describe("the command line", function()
    setup(function() sb.ensure() end)
    before_each(function() sb.reset() end)

    local HEADER = "refCode,orderDate,currency,total,itemRefCode,qty,price,user.id\n"
    local function till(name, rows)
      local t = { HEADER }
      for i, d in ipairs(rows) do t[#t + 1] = ("T-%d,%s,GBP,5.00,S,1,5.00,u%d\n"):format(i, d, i) end
      return cli.write_file(tmp(name), table.concat(t))
    end

    it("sends a UK till's CSV with --date-format and --timezone, DST-correct", function()
      local csv = till("till.csv", { "16/06/2024 14:25", "16/01/2024 14:25", "31/03/2024 01:30", "27/10/2024 01:30" })
      local r = run({ "send", csv, "--date-format", "%d/%m/%Y %H:%M", "--timezone", "Europe/London",
        "--rejects", tmp("till-rej.ndjson"), "--max-order-age", "0" }, { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      local function date_of(ref)
        return sb.orders({ refCode = ref })[1].body:match('"orderDate":"([^"]+)"')
      end
      assert.equal("2024-06-16T13:25:00 GMT", date_of("T-1"))
      assert.equal("2024-01-16T14:25:00 GMT", date_of("T-2"))
      assert.equal("2024-10-27T00:30:00 GMT", date_of("T-4"))
      assert.is_nil(sb.orders({ refCode = "T-3" })[1])
      assert.matches("till%.csv:4: order T%-3: order%.orderDate: does not exist in Europe/London", r.err)
      assert.matches("warnings by kind:\n%s+1  order%.orderDate: happened twice in Europe/London", r.err)
      local rej = cli.lines_of(tmp("till-rej.ndjson"))
      assert.equal(1, #rej)
      assert.equal("validation", rej[1].stage)
      assert.equal("order.orderDate", rej[1].error.problems[1].path)
    end)

    it("takes date_format and timezone from the config file; a converted rejects file goes out as it is", function()
      local csv = till("till2.csv", { "16/06/2024 14:25", "17/06/2024 09:00" })
      local conf = cli.write_file(tmp("dates.conf"), "date_format = %d/%m/%Y %H:%M\ntimezone = Europe/London\n")
      sb.faults({ count = 1, status = 503, match = "POST" }, { count = 1, status = 400, match = "POST" })
      local r = run({ "send", csv, "--config", conf, "--max-attempts", "1", "--concurrency", "1",
        "--rejects", tmp("till2-rej.ndjson") }, { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      local rej = cli.lines_of(tmp("till2-rej.ndjson"))
      assert.equal(2, #rej)
      assert.equal("2024-06-16T13:25:00 GMT", rej[1].payload.order.orderDate)
      r = run({ "send", tmp("till2-rej.ndjson"), "--config", conf }, { env = cli.creds() })
      assert.equal(0, r.code, r.all)
      assert.equal("2024-06-17T08:00:00 GMT", sb.orders({ refCode = "T-2" })[1].body:match('"orderDate":"([^"]+)"'))
    end)

    it("a bad format or zone is a usage error before anything is read", function()
      local csv = till("till3.csv", { "16/06/2024 14:25" })
      local r = run({ "send", csv, "--date-format", "%d/%m %H:%M" }, { env = cli.creds() })
      assert.equal(2, r.code)
      assert.matches("%-%-date%-format \"%%d/%%m %%H:%%M\" must name the year", r.err)
      r = run({ "validate", csv, "--timezone", "Europe/Londn" })
      assert.equal(2, r.code)
      assert.matches("%-%-timezone: unknown time zone Europe/Londn", r.err)
      r = run({ "validate", csv, "--date-format", "%Y-%m-%d %H:%M" })
      assert.equal(1, r.code)
      assert.matches('order.orderDate: must match the date format "%Y-%m-%d %H:%M" '
        .. '(expected a 4-digit year (%Y) at character 1), got "16/06/2024 14:25"', r.out, 1, true)
      assert.equal(0, sb.stats().requests)
    end)
  end)
end)
