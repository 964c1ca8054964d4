-- What the guides claim, held to it (issue 20): the --metrics file a
-- collector running as another user can read when asked (--metrics-mode),
-- 0600 by default as operating.md says; the spool's -wal file bounded as
-- spool.md says; the lease defaults spool.md states are the code's.
local cli = require("support.cli")
local spool = require("optimizely.offline.spool")
local sys = require("optimizely.offline.sys")

describe("the guides' claims", function()
  teardown(cli.cleanup)

  describe("send --metrics-mode", function()
    local csv
    setup(function()
      csv = cli.write_file(cli.tmp("m.csv"), "refCode,orderDate,currency,total,itemRefCode,qty,price\n"
        .. "M-1,2024-05-16T15:25:00 GMT,GBP,1.00,s1,1,1.00\n")
    end)

    it("writes the metrics file 0600 by default, and as asked for a collector: 0644, 0640", function()
      local prom = cli.tmp("run.prom")
      local r = cli.run({ "send", "--dry-run", csv, "--metrics", prom }, { umask = "022" })
      assert.equal(0, r.code, r.all)
      assert.equal("600", cli.mode(prom))
      for _, mode in ipairs({ "0644", "640", "0444" }) do
        os.remove(prom)
        r = cli.run({ "send", "--dry-run", csv, "--metrics", prom, "--metrics-mode", mode }, { umask = "077" })
        assert.equal(0, r.code, r.all)
        assert.equal(mode:gsub("^0", ""), cli.mode(prom))
        assert.matches("optimizely_offline_", cli.read_file(prom))
      end
    end)

    it("refuses a mode that lets another user write or run it", function()
      for _, mode in ipairs({ "0666", "0662", "0755", "0700", "0620", "u+r", "1644" }) do
        local r = cli.run({ "send", "--dry-run", csv, "--metrics", cli.tmp("bad.prom"), "--metrics-mode", mode })
        assert.equal(2, r.code, mode .. ": " .. r.all)
        assert.matches("--metrics-mode must be an octal mode that only the owner may write", r.err, 1, true)
      end
    end)
  end)

  describe("the spool's write-ahead log", function()
    -- (spool.md: about 4 MiB, never much past 8 MiB: past that the writer checkpoints
    -- itself, so a loaded machine's late checkpoint thread cannot let it grow)
    it("stays about 4 MiB after 2,000 small orders, not 36 MiB", function()
      local dir = sys.capture("mktemp -d"):gsub("%s+$", "")
      local path = dir .. "/orders.db"
      local s = assert(spool.open(path))
      local body = ('{"user":{"id":"u"},"order":{"refCode":"R-%d","orderDate":"2024-05-16T14:25:00 GMT",'
        .. '"currency":"GBP","total":21.00,"items":[{"refCode":"sku-1","qty":2,"price":10.50}]}}')
      local peak = 0
      for i = 1, 2000 do
        assert(s:put(body:format(i), "R-" .. i))
        if i % 8 == 0 then
          for _, row in ipairs(assert(s:claim(8, 60))) do assert(s:ack(row.id)) end
        end
        peak = math.max(peak, sys.file_size(path .. "-wal") or 0)
      end
      local final = sys.file_size(path .. "-wal") or 0
      s:close()
      sys.run("rm -rf " .. sys.q(dir))
      assert.is_true(final <= 8 * 1024 * 1024, ("-wal %.1f MiB at the end"):format(final / 1048576))
      assert.is_true(peak <= 9 * 1024 * 1024, ("-wal %.1f MiB at most"):format(peak / 1048576))
    end)
  end)

  describe("spool.md", function()
    it("states the lease defaults the code has, and how to shorten them", function()
      local md = assert(sys.read_file("doc/topics/spool.md"))
      local worker = assert(sys.read_file("csrc/binding/l_worker.c"))
      local ngxq = assert(sys.read_file("lua/optimizely/offline/ngx/setup.lua"))
      local threaded = assert(worker:match('opt_num%(L, 1, "lease", (%d+)%)'))
      assert.matches("| `client:queue{spool = …}` (the libcurl thread) | " .. threaded .. " s |", md, 1, true)
      local lo, factor = ngxq:match("o%.lease or math%.max%((%d+), (%d+) %* timeout%)")
      assert.truthy(lo, "the nginx queue's lease default moved: update spool.md")
      assert.matches(("max(%s s, %s × (`timeout` + `connect_timeout`))"):format(lo, factor), md, 1, true)
      assert.matches("To shorten it, give the queue a shorter `lease`", md, 1, true)
    end)
  end)
end)
