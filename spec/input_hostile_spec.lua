-- Hostile input files (issue 19): the XML reader never feeds expat more
-- than 1 MiB without a parser event (one endless token: a syntax error
-- naming the file and line, so any file is linear in time), nor nests
-- without bound; both readers stop collecting an element or an order past
-- its cap (the order becomes an error record), so memory stays bounded.
-- The timings and peak RSS: bench/hostile_files.lua.
local input = require("optimizely.offline.input")
local core = require("optimizely.offline.core")
local files = require("support.input_files")
local xml = require("optimizely.offline.input.xml")
local csv_reader = require("optimizely.offline.input.csv")

local MAX_ITEMS = core.limits.MAX_ITEMS

local function read(content, ext)
  local it, st = input.open(files.tmp(content, ext), {})
  assert(it, st)
  return files.collect(it)
end

local function product(i) return ('<product refCode="p%d" qty="1" price="1"/>'):format(i) end

local HEAD = '<orders>\n<order refCode="R1" orderDate="d" currency="GBP" total="1">\n'

describe("xml reader against hostile files", function()
  after_each(files.cleanup)

  it("stops at a token longer than 1 MiB with a syntax error naming the file and line", function()
    local cases = {
      { "an attribute value", '<order refCode="' .. ("A"):rep(xml.MAX_TOKEN + 1) .. '"/>' },
      { "a comment", "<!-- " .. ("c"):rep(xml.MAX_TOKEN + 1) .. " -->" },
      { "an element name", "<" .. ("n"):rep(xml.MAX_TOKEN + 1) .. "/>" },
    }
    for _, c in ipairs(cases) do
      local recs = read('<orders>\n<order refCode="OK" orderDate="d" currency="GBP" total="1">' .. product(1)
        .. "</order>\n\n" .. c[2] .. "\n" .. HEAD .. product(2) .. "</order></orders>\n", ".xml")
      assert.equal(2, #recs, c[1])
      assert.equal("OK", recs[1].payload.order.refCode, c[1])
      assert.equal("syntax", recs[2].code, c[1])
      assert.equal(4, recs[2].line, c[1])
      assert.matches(":4:%d+: malformed XML: .*longer than 1048576 bytes", recs[2].error)
      assert.truthy(recs[2].error:find(files.last(), 1, true), c[1])
    end
  end)

  it("reads a file of many ordinary tokens whatever its size (the cap is per token)", function()
    local parts = { "<orders>\n" }
    for i = 1, 3000 do
      parts[#parts + 1] = ('<order refCode="R%d" orderDate="d" currency="GBP" total="1">'):format(i)
        .. product(i) .. '<attribute key="k">' .. ("v"):rep(1000) .. "</attribute></order>\n"
    end
    parts[#parts + 1] = "</orders>\n"
    local recs = read(table.concat(parts), ".xml")
    assert.equal(3000, #recs)
    for _, r in ipairs(recs) do assert.is_nil(r.error) end
  end)

  it("refuses elements nested deeper than the cap instead of following them", function()
    local depth = xml.MAX_DEPTH + 10
    local recs = read(HEAD .. ("<x>"):rep(depth) .. ("</x>"):rep(depth) .. "</order></orders>\n", ".xml")
    local last = recs[#recs]
    assert.equal("syntax", last.code)
    assert.matches("nested more than " .. xml.MAX_DEPTH .. " deep", last.error)
  end)

  it("stops collecting the text of an <attribute> past the value cap: the order is an error", function()
    local recs = read(HEAD .. product(1) .. '<attribute key="big">' .. ("t"):rep(xml.MAX_VALUE + 1)
      .. "</attribute></order>\n</orders>\n", ".xml")
    assert.equal(1, #recs)
    assert.equal("order", recs[1].code)
    assert.matches("text of <attribute> \"big\" is longer than " .. xml.MAX_VALUE .. " bytes", recs[1].error)
  end)

  it("stops collecting an attribute value past the value cap", function()
    local recs = read(HEAD .. '<product refCode="' .. ("p"):rep(xml.MAX_VALUE + 1) .. '" qty="1" price="1"/>'
      .. "</order>\n</orders>\n", ".xml")
    assert.equal("order", recs[1].code)
    assert.matches("refCode on <product> is longer than " .. xml.MAX_VALUE .. " bytes", recs[1].error)
  end)

  it("stops collecting products past the item cap: the order is an error that counts them", function()
    local parts = { HEAD }
    for i = 1, MAX_ITEMS + 500 do parts[#parts + 1] = product(i) end
    parts[#parts + 1] = '</order>\n<order refCode="R2" orderDate="d" currency="GBP" total="1">'
      .. product(1) .. "</order></orders>\n"
    local recs = read(table.concat(parts), ".xml")
    assert.equal(2, #recs)
    assert.equal("order", recs[1].code)
    assert.matches("too many items %(" .. (MAX_ITEMS + 500) .. ", max " .. MAX_ITEMS .. "%)", recs[1].error)
    assert.equal("R2", recs[2].payload.order.refCode)
  end)

  it("reads an order of exactly the item cap", function()
    local parts = { HEAD }
    for i = 1, MAX_ITEMS do parts[#parts + 1] = product(i) end
    parts[#parts + 1] = "</order></orders>\n"
    local recs = read(table.concat(parts), ".xml")
    assert.equal(MAX_ITEMS, #recs[1].payload.order.items)
  end)

  it("stops collecting an order past the size cap (many attributes)", function()
    local parts = { HEAD }
    local value = ("v"):rep(4000)
    for i = 1, 300 do
      parts[#parts + 1] = product(i):gsub("/>$", ">")
      for k = 1, 5 do parts[#parts + 1] = ('<attribute key="k%d">%s</attribute>'):format(k, value) end
      parts[#parts + 1] = "</product>"
    end
    parts[#parts + 1] = "</order></orders>\n"
    local recs = read(table.concat(parts), ".xml")
    assert.equal("order", recs[1].code)
    assert.matches("larger than " .. xml.MAX_ORDER_BYTES .. " bytes", recs[1].error)
  end)
end)

describe("csv reader against hostile files", function()
  after_each(files.cleanup)

  local HEADER = "refCode,orderDate,currency,total,itemRefCode,qty,price,item.attr.colour\n"

  it("stops collecting rows past the item cap: the order is an error that counts them", function()
    local rows = { HEADER }
    for i = 1, MAX_ITEMS + 500 do rows[#rows + 1] = ("R1,d,GBP,1,p%d,1,1,red\n"):format(i) end
    rows[#rows + 1] = "R2,d,GBP,1,p,1,1,red\n"
    local recs = read(table.concat(rows), ".csv")
    assert.equal(2, #recs)
    assert.equal("order", recs[1].code)
    assert.matches("too many items %(" .. (MAX_ITEMS + 500) .. ", max " .. MAX_ITEMS .. "%)", recs[1].error)
    assert.equal("R2", recs[2].payload.order.refCode)
  end)

  it("reads an order of exactly the item cap", function()
    local rows = { HEADER }
    for i = 1, MAX_ITEMS do rows[#rows + 1] = ("R1,d,GBP,1,p%d,1,1,red\n"):format(i) end
    local recs = read(table.concat(rows), ".csv")
    assert.equal(MAX_ITEMS, #recs[1].payload.order.items)
  end)

  it("stops collecting an order past the size cap", function()
    local rows = { HEADER }
    local value = ("v"):rep(3000)
    for i = 1, 800 do rows[#rows + 1] = ("R1,d,GBP,1,p%d,1,1,%s\n"):format(i, value) end
    local recs = read(table.concat(rows), ".csv")
    assert.equal("order", recs[1].code)
    assert.matches("larger than " .. csv_reader.MAX_ORDER_BYTES .. " bytes", recs[1].error)
  end)
end)

describe("ndjson reader against hostile files", function()
  after_each(files.cleanup)
  local ndjson = require("optimizely.offline.input.ndjson")

  it("refuses a line holding more JSON values than any order (too_long), and reads on", function()
    local n = ndjson.MAX_VALUES
    local recs = read('{"order":{"refCode":"R1","items":[' .. ("{},"):rep(n) .. '{}]}}\n'
      .. '{"order":{"refCode":"R2"}}\n', ".ndjson")
    assert.equal(2, #recs)
    assert.equal("too_long", recs[1].code)
    assert.matches(":1: line holds more than " .. n .. " JSON values", recs[1].error)
    assert.equal("R2", recs[2].payload.order.refCode)
  end)

  it("reads a line of the largest legal order", function()
    local items = {}
    for i = 1, MAX_ITEMS do
      items[i] = ('{"refCode":"sku-%d","qty":1,"price":1,"attributes":{"note":"%s"}}'):format(i, ("n"):rep(900))
    end
    local recs = read('{"order":{"refCode":"R1","items":[' .. table.concat(items, ",") .. ']}}\n', ".ndjson")
    assert.equal(MAX_ITEMS, #recs[1].payload.order.items)
  end)
end)
