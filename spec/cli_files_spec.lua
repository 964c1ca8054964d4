-- The files the command line writes: never one of its inputs (whatever the
-- spelling), private (0600 under umask 022), in place only when complete,
-- and the default unsent file at an unpredictable name that no symlink can
-- redirect. And plain HTTP only with --allow-http.
local sb = require("support.sandbox")
local cli = require("support.cli")

local run, tmp, q, read_file = cli.run, cli.tmp, cli.q, cli.read_file

local function orders(name, n)
  return cli.orders(tmp(name), n or 3, (name:gsub("%W", "")))
end

-- Orders as the NDJSON an export writes: encoded bodies.
local function spool_with_dead(path, n)
  local spool = require("optimizely.offline.spool")
  local offline = require("optimizely.offline")
  local sp = assert(spool.open(path))
  for i = 1, n do
    local body = assert(offline.encode({ user = { email = "c" .. i .. "@example.com" },
      order = { refCode = "S-" .. i, orderDate = "2024-03-15T09:12:00 GMT", currency = "GBP", total = 1,
                items = { { refCode = "s", qty = 1, price = 1 } } } }))
    assert(sp:put(body, "S-" .. i))
  end
  for _, row in ipairs(assert(sp:claim(n, 30))) do
    assert(sp:kill(row.id, { kind = "api", status = 400, message = "refused" }))
  end
  sp:close()
  return path
end

describe("CLI files", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  describe("an output is never an input", function()
    it("send refuses --rejects/--report naming its input, however spelt, and leaves the input whole", function()
      local input = orders("in.ndjson")
      local before = read_file(input)
      os.execute("mkdir -p " .. q(tmp("d")) .. " && ln -sf " .. q(input) .. " " .. q(tmp("link.ndjson"))
        .. " && ln -f " .. q(input) .. " " .. q(tmp("hard.ndjson")))
      for _, spelling in ipairs({ "in.ndjson", "./in.ndjson", "d/../in.ndjson", tmp("in.ndjson"), "link.ndjson",
                                  "hard.ndjson" }) do
        for _, flag in ipairs({ "--rejects", "--report" }) do
          local r = run({ "send", "in.ndjson", flag, spelling }, { env = cli.creds() })
          assert.equal(2, r.code, flag .. " " .. spelling .. "\n" .. r.all)
          assert.matches(flag .. " [^\n]* is the input file in%.ndjson: write it elsewhere", r.err)
        end
      end
      -- the input given through a symlink, the output by its real name
      local r = run({ "send", "link.ndjson", "--rejects", "in.ndjson" }, { env = cli.creds() })
      assert.equal(2, r.code, r.all)
      -- --rejects and --report on one file
      r = run({ "send", "in.ndjson", "--rejects", "out.ndjson", "--report", "./out.ndjson" }, { env = cli.creds() })
      assert.equal(2, r.code)
      assert.matches("%-%-rejects and %-%-report name the same file", r.err)
      -- nor the transform or the config file
      local tx = cli.FIX .. "transform.lua"
      r = run({ "send", "in.ndjson", "--transform", tx, "--report", tx }, { env = cli.creds() })
      assert.equal(2, r.code)
      assert.equal(before, read_file(input))
      assert.equal(0, sb.stats().requests)
    end)

    it("convert -o, validate --rejects and spool export -o refuse their input", function()
      local input = orders("conv.ndjson")
      local before = read_file(input)
      for _, args in ipairs({
        { "convert", "conv.ndjson", "-o", "conv.ndjson" },
        { "convert", "conv.ndjson", "-o", "./conv.ndjson" },
        { "convert", "conv.ndjson", "--rejects", "conv.ndjson" },
        { "validate", "conv.ndjson", "--rejects", "./conv.ndjson" },
      }) do
        local r = run(args)
        assert.equal(2, r.code, table.concat(args, " ") .. "\n" .. r.all)
        assert.matches("is the input file", r.err)
      end
      assert.equal(before, read_file(input))
      local db = spool_with_dead(tmp("s.db"), 2)
      local size = #read_file(db)
      local r = run({ "spool", "export", "--spool", "s.db", "-o", "./s.db" })
      assert.equal(2, r.code, r.all)
      assert.matches("is the input file", r.err)
      assert.equal(size, #read_file(db))
    end)
  end)

  describe("private, complete files", function()
    it("every output is 0600 under umask 022", function()
      local input = orders("priv.ndjson", 4)
      sb.faults({ count = 2, status = 400, match = "POST" })
      local r = run({ "send", "priv.ndjson", "--rejects", "p-rej.ndjson", "--report", "p-rep.json",
        "--concurrency", "1" }, { env = cli.creds(), umask = "022" })
      assert.equal(1, r.code, r.all)
      assert.equal("600", cli.mode(tmp("p-rej.ndjson")))
      assert.equal("600", cli.mode(tmp("p-rep.json")))
      assert.equal(2, #cli.lines_of(tmp("p-rej.ndjson")))
      r = run({ "convert", "priv.ndjson", "-o", "p-conv.ndjson" }, { umask = "022" })
      assert.equal(0, r.code, r.all)
      assert.equal("600", cli.mode(tmp("p-conv.ndjson")))
      assert.equal(4, #cli.lines_of(tmp("p-conv.ndjson")))
      r = run({ "validate", cli.FIX .. "orders.ndjson", "--rejects", "p-val.ndjson" }, { umask = "022" })
      assert.equal(1, r.code)
      assert.equal("600", cli.mode(tmp("p-val.ndjson")))
      spool_with_dead(tmp("p.db"), 3)
      r = run({ "spool", "export", "--spool", "p.db", "-o", "p-dead.ndjson" }, { umask = "022" })
      assert.equal(0, r.code, r.all)
      assert.equal("600", cli.mode(tmp("p-dead.ndjson")))
      assert.equal(3, #cli.lines_of(tmp("p-dead.ndjson")))
      -- an existing output file is replaced by a private one
      cli.write_file(tmp("p-old.ndjson"), "old\n")
      os.execute("chmod 644 " .. q(tmp("p-old.ndjson")))
      r = run({ "convert", "priv.ndjson", "-o", "p-old.ndjson" }, { umask = "022" })
      assert.equal(0, r.code)
      assert.equal("600", cli.mode(tmp("p-old.ndjson")))
      assert.equal(4, #cli.lines_of(input))
    end)

    it("an interrupted convert leaves the old output as it was, and no temporary file", function()
      local dir = tmp("atomic")
      os.execute("mkdir -p " .. q(dir))
      cli.orders(dir .. "/in.ndjson", 300, "AT")
      cli.write_file(dir .. "/out.ndjson", "previous output\n")
      local r = run({ "convert", "in.ndjson", "-o", "out.ndjson", "--rejects", "rej.ndjson",
        "--transform", cli.FIX .. "interrupt.lua" }, { cwd = dir, env = { KILL_AT = "150" } })
      assert.equal(130, r.code, r.all)
      assert.matches("interrupted: no output file was written", r.err)
      assert.equal("previous output\n", read_file(dir .. "/out.ndjson"))
      assert.same({ "in.ndjson", "out.ndjson" }, cli.ls(dir))
      -- a usage error after the outputs were opened leaves nothing either
      r = run({ "convert", "in.ndjson", "-o", "out2.ndjson", "--rejects", "rej.ndjson", "--timezone", "Mars/Olympus" },
        { cwd = dir })
      assert.equal(2, r.code)
      assert.same({ "in.ndjson", "out.ndjson" }, cli.ls(dir))
    end)

    it("the default unsent file: a random name, 0600, never through a symlink", function()
      local dir = tmp("unsent")
      os.execute("mkdir -p " .. q(dir))
      cli.orders(dir .. "/in.ndjson", 2, "U")
      -- the names an attacker could predict (the old scheme: the time only)
      local t = os.time()
      for s = 0, 4 do
        local name = "optimizely-offline-unsent-" .. os.date("%Y%m%d-%H%M%S", t + s) .. ".ndjson"
        os.execute("ln -s " .. q(dir .. "/target-" .. s) .. " " .. q(dir .. "/" .. name))
      end
      sb.faults({ count = 4, status = 400, match = "POST" })
      local names = {}
      for _ = 1, 2 do
        local r = run({ "send", "in.ndjson" }, { env = cli.creds(), cwd = dir, umask = "022" })
        assert.equal(1, r.code, r.all)
        local name = r.err:match("2 orders not sent, saved to (optimizely%-offline%-unsent%-%d+%-%d+%-%x+%.ndjson)")
        assert.is_string(name, r.err)
        assert.equal("600", cli.mode(dir .. "/" .. name))
        assert.equal(2, #cli.lines_of(dir .. "/" .. name))
        names[#names + 1] = name
      end
      assert.are_not.equal(names[1], names[2])
      for s = 0, 4 do assert.is_nil(read_file(dir .. "/target-" .. s), "a symlink was followed") end
      -- no temporary file left beside them
      for _, n in ipairs(cli.ls(dir)) do assert.is_nil(n:find("%.tmp$"), n) end
    end)
  end)

  describe("plain HTTP", function()
    local URL = "http://127.0.0.1:9"

    it("needs --allow-http: from the environment, the config file or --base-url alone it is a config error", function()
      local conf = cli.write_file(tmp("http.conf"), "base_url = " .. URL .. "\n")
      for _, c in ipairs({
        { { "send", cli.FIX .. "spec-sample.xml", "--base-url", URL }, {} },
        { { "send", cli.FIX .. "spec-sample.xml" }, { OPTIMIZELY_BASE_URL = URL } },
        { { "send", cli.FIX .. "spec-sample.xml", "--config", conf }, { OPTIMIZELY_BASE_URL = false } },
        { { "cancel", "X", "--base-url", URL }, {} },
      }) do
        local r = run(c[1], { env = cli.creds(c[2]) })
        assert.equal(2, r.code, table.concat(c[1], " ") .. "\n" .. r.all)
        assert.matches("plain http: the site token would cross the network unencrypted; pass %-%-allow%-http", r.err)
      end
      local r = run({ "send", cli.FIX .. "spec-sample.xml", "--config",
        cli.write_file(tmp("http2.conf"), "allow_http = true\n") }, { env = cli.creds({ OPTIMIZELY_BASE_URL = URL }) })
      assert.equal(2, r.code)
      assert.matches("allow_http is not read from a config file", r.err)
    end)

    it("with --allow-http it is used, with a warning on every run", function()
      for _ = 1, 2 do
        local r = run({ "send", cli.FIX .. "spec-sample.xml", "--allow-http", "--base-url", URL, "--max-attempts", "1",
          "--rejects", tmp("http-rej.ndjson") }, { env = cli.creds() })
        assert.equal(1, r.code, r.all) -- nothing listens there
        assert.matches("^warning: %-%-allow%-http: the site token is sent unencrypted", r.err)
        assert.matches("network", r.err)
      end
    end)
  end)
end)
