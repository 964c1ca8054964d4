-- "Every record read ends up sent, or in a rejects file you can send again
-- as it is" (cli.md) — also a record the reader could not read (issue 20):
-- a CSV order with a wrong field count, conflicting cells or rows apart, a
-- row outside any order, an NDJSON line that is not JSON, an XML order with
-- an unknown element. Its rejects line keeps the raw text (with the CSV
-- header and delimiter); fixed there, the rejects file is sent as it is.
local sb = require("support.sandbox")
local cli = require("support.cli")
local core = require("optimizely.offline.core")

local DATE = "2024-05-16T15:25:00 GMT"
local HEAD = "refCode;orderDate;currency;total;itemRefCode;qty;price\n"
local function row(ref, item, extra)
  return ("%s;%s;GBP;2.00;%s;1;1.00%s\n"):format(ref, DATE, item, extra or "")
end

-- the rejects file's lines, with `fix(line)` applied to each raw text
local function rewrite(path, out, fix)
  local f = assert(io.open(out, "wb"))
  for _, l in ipairs(cli.lines_of(path)) do
    if l.raw then l.raw = fix(l.raw, l) end
    f:write(core.json_encode(l), "\n")
  end
  f:close()
  return out
end

describe("input errors in the rejects file", function()
  setup(function() sb.ensure() end)
  teardown(cli.cleanup)
  before_each(function() sb.reset() end)

  it("keep a CSV order's rows, a stray row, the header and the delimiter; fixed, they are sent", function()
    local csv = cli.write_file(cli.tmp("till.csv"), HEAD
      .. row("R1", "s1") .. row("R1", "s2", ";extra")       -- an order with a wrong field count
      .. row("R2", "s1")                                    -- fine
      .. row("R3", "s1") .. ("R3;%s;GBP;9.99;s2;1;1.00\n"):format(DATE) -- conflicting totals
      .. row("R2", "s9")                                    -- rows of R2 apart (split order)
      .. ";x\n")                                            -- a row outside any order
    local rej = cli.tmp("till-rejects.ndjson")
    local r = cli.run({ "send", csv, "--delimiter", ";", "--rejects", rej }, { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    assert.equal(1, #sb.orders())
    local lines = cli.lines_of(rej)
    assert.equal(4, #lines)
    for _, l in ipairs(lines) do
      assert.equal("input", l.stage)
      assert.is_nil(l.payload)
      assert.equal("csv", l.raw_format)
      assert.equal(HEAD:sub(1, -2), l.raw_header)
      assert.equal(";", l.raw_delimiter)
    end
    assert.equal((row("R1", "s1") .. row("R1", "s2", ";extra")):sub(1, -2), lines[1].raw)
    assert.equal(row("R2", "s9"):sub(1, -2), lines[3].raw)
    assert.equal(4, lines[3].split_from) -- R2's first rows: sent alone, these would replace it
    assert.equal(";x", lines[4].raw)
    -- sent again as it is: the same failures, nothing sent, the raw text kept
    sb.reset()
    local again = cli.tmp("again-rejects.ndjson")
    r = cli.run({ "send", rej, "--rejects", again }, { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    assert.equal(0, #sb.orders())
    assert.equal(4, #cli.lines_of(again))
    assert.equal(lines[1].raw, cli.lines_of(again)[1].raw)
    assert.matches("has 8 fields, the header has 7 (the raw text of a rejected record)", r.err, 1, true)
    assert.matches("the later rows of an order whose first rows (line 4) were read as an order already", r.err, 1, true)
    -- fixed in the rejects file (the split order's first row added, split_from removed): sent
    local fixed = rewrite(rej, cli.tmp("fixed.ndjson"), function(raw, l)
      if l.split_from then l.split_from = nil; raw = row("R2", "s1") .. raw end
      return (raw:gsub(";extra", ""):gsub(";9%.99;", ";2.00;"):gsub("^;x$", "R4;" .. DATE .. ";GBP;1.00;s1;1;1.00"))
    end)
    r = cli.run({ "send", fixed, "--rejects", cli.tmp("fixed-rejects.ndjson") }, { env = cli.creds() })
    assert.equal(0, r.code, r.all)
    local got = {}
    for _, o in ipairs(sb.orders()) do got[#got + 1] = o.refCode end
    table.sort(got)
    assert.same({ "R1", "R2", "R3", "R4" }, got)
    for _, ref in ipairs({ "R1", "R2" }) do
      assert.equal(2, #sb.json.decode(sb.orders({ refCode = ref })[1].body).order.items, ref)
    end
  end)

  it("keep a grouped CSV order's rows, in file order", function()
    local csv = cli.write_file(cli.tmp("grouped.csv"), HEAD .. row("G1", "s1") .. row("G2", "s1")
      .. row("G1", "s2", ";extra"))
    local rej = cli.tmp("grouped-rejects.ndjson")
    local r = cli.run({ "validate", csv, "--delimiter", ";", "--group-orders", "--rejects", rej })
    assert.equal(1, r.code, r.all)
    local l = cli.lines_of(rej)[1]
    assert.equal((row("G1", "s1") .. row("G1", "s2", ";extra")):sub(1, -2), l.raw)
  end)

  it("keep an NDJSON line that is not JSON and an XML order with an unknown element", function()
    local nd = cli.write_file(cli.tmp("bad.ndjson"),
      '{"order":{"refCode":"J1","orderDate":"' .. DATE .. '","currency":"GBP","total":"1.00",'
      .. '"items":[{"refCode":"s1","qty":1,"price":"1.00"}],}}\n')
    local xml = cli.write_file(cli.tmp("bad.xml"), '<?xml version="1.0"?>\n<orders>\n'
      .. '<order refCode="X1" orderDate="' .. DATE .. '" currency="GBP" total="1.00">\n'
      .. '  <product refCode="s1" qty="1" price="1.00"/>\n  <cashier>Ann</cashier>\n</order>\n</orders>\n')
    local rej = cli.tmp("mixed-rejects.ndjson")
    local r = cli.run({ "send", nd, xml, "--rejects", rej }, { env = cli.creds() })
    assert.equal(1, r.code, r.all)
    local lines = cli.lines_of(rej)
    assert.equal(2, #lines)
    assert.equal("ndjson", lines[1].raw_format)
    assert.equal("xml", lines[2].raw_format)
    assert.matches('^<order refCode="X1".*</order>$', lines[2].raw)
    local fixed = rewrite(rej, cli.tmp("mixed-fixed.ndjson"), function(raw)
      return (raw:gsub("%],}}$", "]}}"):gsub("\n  <cashier>Ann</cashier>", ""))
    end)
    r = cli.run({ "send", fixed }, { env = cli.creds() })
    assert.equal(0, r.code, r.all)
    assert.equal(1, #sb.orders({ refCode = "J1" }))
    assert.equal(1, #sb.orders({ refCode = "X1" }))
    assert.matches("bad.xml:3$", lines[2].source)
  end)
end)
