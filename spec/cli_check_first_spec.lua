-- send --check-first (read and validate everything before sending: any
-- failure and nothing goes out) and --group-orders (gather a CSV order's
-- rows wherever they are). Against the sandbox.
local sb = require("support.sandbox")
local cli = require("support.cli")
local input = require("optimizely.offline.input")

local run, tmp = cli.run, cli.tmp

local HEADER = "refCode,orderDate,currency,total,itemRefCode,qty,price,user.id\n"
-- Order A's two rows with order B's row between them.
local SPLIT = HEADER
  .. "A,2024-03-15T09:00:00 GMT,GBP,3.00,S1,1,1.00,u1\n"
  .. "B,2024-03-15T09:00:00 GMT,GBP,1.00,S1,1,1.00,u2\n"
  .. "A,2024-03-15T09:00:00 GMT,GBP,3.00,S2,1,2.00,u1\n"

-- What the CSV reader does with a split order, read directly.
local function reader_records(path, opts)
  local it = assert(input.open(path, opts))
  local out = {}
  for rec in it do out[#out + 1] = rec end
  return out
end

describe("send --check-first", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  it("one invalid order among many: nothing is sent, the failures are grouped, exit 1", function()
    cli.orders(tmp("cf.ndjson"), 200, "CF", function(i)
      return (i == 150 or i == 180) and '"2024-02-30T10:00:00 GMT"' or '"2024-03-15T09:12:00 GMT"'
    end)
    local r = run({ "send", "cf.ndjson", "--check-first", "--rejects", "cf-rej.ndjson", "--report", "cf-rep.json" },
      { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    assert.equal(0, sb.stats().requests)
    assert.matches("cf%.ndjson:150: order CF%-150: order%.orderDate: impossible date", r.err)
    assert.matches("failed records by problem:\n%s+2  order%.orderDate: impossible date or time %(no such day in "
      .. "that month%), got \"2024%-02%-30T10:00:00 GMT\"\n%s+at cf%.ndjson:150, cf%.ndjson:180\n", r.err)
    assert.matches("nothing was sent %(%-%-check%-first%): 2 of 200 records failed the check", r.err)
    -- no rejects file: the input holds every order
    assert.is_nil(cli.read_file(tmp("cf-rej.ndjson")))
    local rep = cli.json_file(tmp("cf-rep.json"))
    assert.is_true(rep.check_failed)
    assert.equal(0, rep.sent)
    assert.equal(200, rep.read)
    assert.equal(2, rep.rejected)
    assert.equal(1, rep.exit_code)
    for _, n in ipairs(cli.ls(cli.tmpdir())) do assert.is_nil(n:find("%.tmp$"), n) end
    -- -q still prints the failures and the verdict
    r = run({ "send", "cf.ndjson", "--check-first", "-q" }, { env = cli.creds() })
    assert.equal(1, r.code)
    assert.matches("cf%.ndjson:180:", r.err)
    assert.matches("nothing was sent", r.err)
    assert.equal(0, sb.stats().requests)
  end)

  it("a clean input is read twice and sent once", function()
    cli.orders(tmp("ok.ndjson"), 50, "OK")
    local r = run({ "send", "ok.ndjson", "--check-first" }, { env = cli.creds() })
    assert.equal(0, r.code, r.all)
    assert.equal(50, sb.stats().accepted)
    assert.matches("sent 50 orders", r.err)
  end)

  it("an order whose CSV rows are apart: nothing is sent", function()
    local csv = cli.write_file(tmp("split.csv"), SPLIT)
    local r = run({ "send", "split.csv", "--check-first" }, { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    assert.equal(0, sb.stats().requests)
    assert.matches("split%.csv:4: [^\n]*not contiguous", r.err)
    -- without it, the first fragment of A goes out (what --check-first prevents)
    r = run({ "send", "split.csv", "--rejects", tmp("split-rej.ndjson") }, { env = cli.creds() })
    assert.equal(1, r.code)
    assert.equal(1, #sb.orders({ refCode = "A" }))
    local later = reader_records(csv)[3]
    if later.code ~= "split_order" then
      return pending("the CSV reader does not yet mark a later fragment with code = \"split_order\" "
        .. "(the csv branch adds it); the hint below needs it")
    end
    r = run({ "send", "split.csv", "--check-first" }, { env = cli.creds() })
    assert.matches("1 later fragment of orders whose rows are apart in the file: %-%-group%-orders gathers them", r.err)
  end)

  it("--group-orders sends a split order whole", function()
    local csv = cli.write_file(tmp("group.csv"), SPLIT)
    local recs = reader_records(csv, { order_rows = "grouped" })
    if #recs ~= 2 or recs[1].error or recs[2].error then
      return pending("the CSV reader has no order_rows = \"grouped\" yet (the csv branch adds it): "
        .. "--group-orders passes it through and is tested once it is on main")
    end
    local r = run({ "send", "group.csv", "--group-orders", "--check-first" }, { env = cli.creds() })
    assert.equal(0, r.code, r.all)
    local a = sb.orders({ refCode = "A" })
    assert.equal(1, #a)
    assert.matches('"items":%[{[^]]*"refCode":"S1"[^]]*},{[^]]*"refCode":"S2"', a[1].body)
  end)

  it("refuses standard input (it cannot be read twice), and Ctrl-C during the check sends nothing", function()
    local r = run({ "send", "-", "--format", "ndjson", "--check-first" }, { env = cli.creds(), stdin = "" })
    assert.equal(2, r.code)
    assert.matches("%-%-check%-first reads the input twice: give files, not standard input", r.err)
    cli.orders(tmp("int.ndjson"), 300, "CI")
    r = run({ "send", "int.ndjson", "--check-first", "--transform", cli.FIX .. "interrupt.lua",
      "--rejects", "int-rej.ndjson" }, { env = (function()
        local e = cli.creds(); e.KILL_AT = "100"; return e end)() })
    assert.equal(130, r.code, r.all)
    assert.matches("interrupted: nothing was sent", r.err)
    assert.equal(0, sb.stats().requests)
    assert.is_nil(cli.read_file(tmp("int-rej.ndjson")))
  end)
end)
