-- Legacy XML offline-orders reader (spec §6), streamed through lua-expat.
local input = require("optimizely.offline.input")

local FIX = "spec/fixtures/input/"

local files = require("support.input_files")
local collect = files.collect
local function tmp(content, ext) return files.tmp(content, ext or ".xml") end

local read = files.reader(".xml")

local function order(attrs, body)
  return '<order refCode="' .. attrs .. '" orderDate="d" currency="GBP" total="1">'
    .. (body or '<product refCode="p" qty="1" price="1"/>') .. "</order>"
end

local SAMPLE_PAYLOAD = {
  user = { email = "customer@email.com" },
  order = {
    refCode = "orderRef", orderDate = "2017-04-23T14:25:00 GMT", currency = "GBP",
    shipping = "10.0", subTotal = "90.0", total = "100.0",
    items = {
      { refCode = "ref1", qty = "1", price = "50.0", attributes = { attr11 = "value11" } },
      { refCode = "ref2", qty = "2", price = "20.0", attributes = { attr21 = "value21" } },
    },
    attributes = { attr1 = "value1", attr2 = "value2" },
  },
}

describe("xml reader", function()
  after_each(files.cleanup)

  describe("the spec samples", function()
    it("reads the full sample to exactly the expected table", function()
      local recs = collect(assert(input.open(FIX .. "spec-sample.xml")))
      assert.same({
        { payload = SAMPLE_PAYLOAD, file = FIX .. "spec-sample.xml", line = 2, index = 1 },
      }, recs)
    end)

    it("gives the same result whatever the chunk size", function()
      for _, size in ipairs({ 1, 2, 3, 7, 64, 100 }) do
        local recs = collect(assert(input.open(FIX .. "spec-sample.xml", { chunk_size = size })))
        assert.equal(1, #recs)
        assert.same(SAMPLE_PAYLOAD, recs[1].payload)
      end
    end)

    it("reads the minimal sample", function()
      local recs = collect(assert(input.open(FIX .. "spec-minimal.xml")))
      assert.same({
        user = { email = "customer@email.com" },
        order = {
          refCode = "orderRef", orderDate = "2017-04-23T14:25:00 GMT", currency = "GBP",
          total = "100.0",
          items = { { refCode = "ref1", qty = "1", price = "50.0" },
                    { refCode = "ref2", qty = "2", price = "20.0" } },
        },
      }, recs[1].payload)
    end)

    it("passes a comma decimal through untouched (the core rejects it)", function()
      local recs = collect(assert(input.open(FIX .. "historical-comma.xml")))
      assert.equal("158,5", recs[1].payload.order.subTotal)
      assert.equal("158,5", recs[1].payload.order.items[1].price)
      assert.equal("2017-04-23T14:25 GMT", recs[1].payload.order.orderDate)
    end)

    it("reads the docs' malformed B2B sample up to the break, then reports it", function()
      local recs = collect(assert(input.open(FIX .. "b2b-malformed.xml")))
      -- the closing tag is written `<orders>`: expat sees a nested element,
      -- then the file ends with elements still open
      assert.equal(4, #recs)
      assert.equal("C-1", recs[1].payload.order.customerId)
      assert.equal("C-2", recs[2].payload.order.customerId)
      assert.matches(":8: unknown element <orders> in <orders>", recs[3].error, 1, true)
      assert.matches("b2b%-malformed%.xml:9:%d+: malformed XML: no element found", recs[4].error)
      assert.matches("the rest of the file is not read", recs[4].error, 1, true)
    end)
  end)

  describe("mapping", function()
    it("keeps order attributes, user id, entities, CDATA and attribute text exactly", function()
      local recs = read('<?xml version="1.0"?>\n<orders>\n'
        .. '<order refCode="A&amp;B" orderDate="d" currency="GBP" total="1" customerId="C1">'
        .. '<user email="e@x" id="u1"/>'
        .. '<product refCode="p" qty="2" price="1.50">'
        .. '<attribute key="note"> two  spaces </attribute>'
        .. '<attribute key="cdata"><![CDATA[<b>&raw</b>]]></attribute>'
        .. '<attribute key="empty"></attribute>'
        .. '</product><attribute key="store">Caf\195\169 &lt;1&gt;</attribute></order>\n</orders>')
      assert.same({
        user = { email = "e@x", id = "u1" },
        order = {
          refCode = "A&B", orderDate = "d", currency = "GBP", total = "1", customerId = "C1",
          items = { { refCode = "p", qty = "2", price = "1.50",
                      attributes = { note = " two  spaces ", cdata = "<b>&raw</b>", empty = "" } } },
          attributes = { store = "Caf\195\169 <1>" },
        },
      }, recs[1].payload)
      assert.equal(3, recs[1].line)
    end)

    it("gives an order without products an empty items list (the core reports it)", function()
      local recs = read('<orders><order refCode="x"/></orders>')
      assert.same({ order = { refCode = "x", items = {} } }, recs[1].payload)
    end)

    it("converts ISO-8859-1 files to UTF-8 strings", function()
      local recs = read('<?xml version="1.0" encoding="ISO-8859-1"?>\n<orders>'
        .. order("x", '<attribute key="s">Caf\233</attribute>') .. "</orders>")
      assert.equal("Caf\195\169", recs[1].payload.order.attributes.s)
    end)
  end)

  describe("format problems inside an order", function()
    it("makes an order with an unknown element an error record and goes on", function()
      local recs = read("<orders>\n" .. order("a") .. "\n"
        .. order("b", '<product refCode="p" qty="1" price="1"/>\n<discount amount="5"><x/></discount>')
        .. "\n" .. order("c") .. "\n</orders>")
      assert.equal(3, #recs)
      assert.equal("a", recs[1].payload.order.refCode)
      assert.matches(':3: order "b": line 4: unknown element <discount> in <order>$', recs[2].error)
      assert.equal(3, recs[2].line)
      assert.equal("b", recs[2].ref)
      assert.equal("c", recs[3].payload.order.refCode)
      assert.same({ 1, 2, 3 }, { recs[1].index, recs[2].index, recs[3].index })
    end)

    it("reports unknown attributes on order, user, product and attribute", function()
      local recs = read("<orders>"
        .. '<order refCode="a" colour="red"><user email="e" name="n"/>'
        .. '<product refCode="p" qty="1" price="1" sku="s"><attribute key="k" lang="en">v</attribute>'
        .. "</product></order></orders>")
      local e = recs[1].error
      assert.matches('unknown attribute "colour" on <order>', e, 1, true)
      assert.matches('unknown attribute "name" on <user>', e, 1, true)
      assert.matches('unknown attribute "sku" on <product>', e, 1, true)
      assert.matches('unknown attribute "lang" on <attribute>', e, 1, true)
    end)

    it("reports unknown elements in product, user and attribute", function()
      local recs = read("<orders>"
        .. order("a", '<product refCode="p" qty="1" price="1"><colour>red</colour></product>')
        .. order("b", '<user email="e"><id>1</id></user><product refCode="p" qty="1" price="1"/>')
        .. order("c", '<product refCode="p" qty="1" price="1"><attribute key="k"><b>v</b></attribute></product>')
        .. "</orders>")
      assert.matches("unknown element <colour> in <product>", recs[1].error, 1, true)
      assert.matches("unknown element <id> in <user>", recs[2].error, 1, true)
      assert.matches("unknown element <b> in <attribute>", recs[3].error, 1, true)
    end)

    it("reports a key-less or repeated attribute, a second user and stray text", function()
      local recs = read("<orders>"
        .. order("a", '<product refCode="p" qty="1" price="1"/><attribute>v</attribute>')
        .. order("b", '<product refCode="p" qty="1" price="1"/><attribute key="k">1</attribute>'
          .. '<attribute key="k">2</attribute>')
        .. order("c", '<user email="a"/><user email="b"/><product refCode="p" qty="1" price="1"/>')
        .. order("d", 'hello<product refCode="p" qty="1" price="1"/>')
        .. "</orders>")
      assert.matches("<attribute> without a key", recs[1].error, 1, true)
      assert.matches('attribute key "k" given twice in <order>', recs[2].error, 1, true)
      assert.matches("more than one <user>", recs[3].error, 1, true)
      assert.matches('unexpected text "hello" in <order>', recs[4].error, 1, true)
    end)

    it("reports an unknown element between orders on its own and goes on", function()
      local recs = read("<orders>\n" .. order("a") .. "\n<summary count=\"2\"><n/></summary>\n"
        .. order("b") .. "\n</orders>")
      assert.equal(3, #recs)
      assert.matches(":3: unknown element <summary> in <orders> (skipped)", recs[2].error, 1, true)
      assert.equal("b", recs[3].payload.order.refCode)
    end)
  end)

  it("reports stray text between orders on its own and goes on", function()
    local recs = read("<orders>\n" .. order("a") .. "\n oops \n" .. order("b") .. "</orders>")
    assert.equal(3, #recs)
    assert.matches(':3: unexpected text "oops" in <orders>', recs[2].error, 1, true)
    assert.equal("b", recs[3].payload.order.refCode)
  end)

  describe("malformed XML", function()
    it("returns the orders before the break, one error with line and column, then ends", function()
      local recs = read("<orders>\n" .. order("a") .. "\n"
        .. '<order refCode="b"><product refCode="p" qty="1" price="1"></order>\n'
        .. order("c") .. "\n</orders>")
      assert.equal(2, #recs)
      assert.equal("a", recs[1].payload.order.refCode)
      assert.matches(":3:%d+: malformed XML: mismatched tag; the rest of the file is not read$",
        recs[2].error)
      assert.equal(3, recs[2].line)
    end)

    it("reports a truncated file", function()
      local recs = read("<orders>\n" .. order("a") .. "\n<order refCode=\"b\">")
      assert.equal(2, #recs)
      assert.matches(":3:%d+: malformed XML: no element found", recs[2].error)
    end)

    it("reports an empty file", function()
      local recs = read("")
      assert.equal(1, #recs)
      assert.matches(":1:%d+: malformed XML: no element found", recs[1].error)
    end)

    it("reports a root other than <orders> and reads nothing", function()
      local recs = read("<?xml version=\"1.0\"?>\n\n<order refCode=\"a\"><product/></order>")
      assert.equal(1, #recs)
      assert.matches(":3: root element is <order>, expected <orders>; file not read", recs[1].error,
        1, true)
    end)

    it("reports an unsupported encoding", function()
      local recs = read('<?xml version="1.0" encoding="x-unknown"?><orders/>')
      assert.equal(1, #recs)
      assert.matches("malformed XML: ", recs[1].error, 1, true)
    end)
  end)

  describe("DOCTYPE and entities", function()
    it("refuses a DOCTYPE declaring an external entity used in element text (never drops it)", function()
      local recs = read('<?xml version="1.0"?>\n<!DOCTYPE orders [\n<!ENTITY ext SYSTEM "file:///etc/passwd">\n]>\n'
        .. "<orders>" .. order("a", '<product refCode="p" qty="1" price="1"><attribute key="k">x&ext;y'
        .. "</attribute></product>") .. "</orders>")
      assert.equal(1, #recs)
      assert.is_nil(recs[1].payload)
      assert.equal("document", recs[1].code)
      assert.matches(":2: the DOCTYPE has an internal subset ([...]), whose entity and attribute "
        .. "declarations could change or drop order text; remove it; file not read", recs[1].error, 1, true)
    end)

    it("refuses internal entities and attribute defaults too, and reads a plain DOCTYPE", function()
      for _, subset in ipairs({ '<!ENTITY int "INTERNAL">', '<!ATTLIST order currency CDATA "EUR">' }) do
        local recs = read("<!DOCTYPE orders [" .. subset .. "]><orders>" .. order("a") .. "</orders>")
        assert.equal(1, #recs)
        assert.equal("document", recs[1].code)
      end
      local recs = read("<!DOCTYPE orders>\n<orders>" .. order("a") .. "</orders>")
      assert.equal("a", recs[1].payload.order.refCode)
    end)

    it("makes an order using an entity only an outside DTD defines an error, and goes on", function()
      local recs = read('<!DOCTYPE orders SYSTEM "orders.dtd">\n<orders>\n'
        .. order("a", '<product refCode="p" qty="1" price="1"><attribute key="k">x&foo;y</attribute>'
          .. "</product>") .. "\n" .. order("b") .. "</orders>")
      assert.equal(2, #recs)
      assert.equal("order", recs[1].code)
      assert.equal("a", recs[1].ref)
      assert.matches(':3: order "a": line 3: entity &foo; is not defined in the file', recs[1].error, 1, true)
      assert.equal("b", recs[2].payload.order.refCode)
    end)
  end)

  describe("messages", function()
    it("escape control characters from the file and cap long values", function()
      local recs = read("<orders>" .. '<order refCode="a&#127;[31m&#10;b&#9;" colour="x">'
        .. '<product refCode="p" qty="1" price="1"/>'
        .. '<attribute key="' .. string.rep("k", 300) .. '">1</attribute>'
        .. '<attribute key="' .. string.rep("k", 300) .. '">2</attribute></order></orders>')
      local e = recs[1].error
      assert.matches('order "a\\x7f[31m\\nb\\t": line 1: unknown attribute "colour" on <order>', e, 1, true)
      assert.matches('attribute key "' .. string.rep("k", 120) .. '"...(300 bytes) given twice', e, 1, true)
      assert.is_nil(e:find("%c"))
      assert.equal("a\127[31m\nb\t", recs[1].ref)
    end)
  end)

  describe("streaming", function()
    it("works through a 50k-order file with flat memory and reports progress", function()
      local path = tmp("")
      local f = assert(io.open(path, "wb"))
      f:write('<?xml version="1.0" encoding="UTF-8"?>\n<orders>\n')
      for i = 1, 50000 do
        f:write('  <order refCode="o', i, '" orderDate="2017-04-23T14:25:00 GMT" currency="GBP" total="9.0">\n',
          '    <user email="c', i, '@example.com"/>\n',
          '    <product refCode="s', i % 97, '" qty="1" price="9.0"><attribute key="k">v</attribute></product>\n',
          "  </order>\n")
      end
      f:write("</orders>\n")
      f:close()
      local it, st = assert(input.open(path))
      collectgarbage()
      local base = collectgarbage("count")
      local n, errs, peak, last = 0, 0, 0, -1
      local monotonic = true
      for rec in it do
        n = n + 1
        if rec.error then errs = errs + 1 end
        assert.equal(3 + (n - 1) * 4, rec.line)
        if st.bytes < last then monotonic = false end
        last = st.bytes
        if n % 10000 == 0 then
          collectgarbage() -- live memory, not garbage the collector has not reached yet
          local kb = collectgarbage("count") - base
          if kb > peak then peak = kb end
        end
      end
      assert.equal(50000, n)
      assert.equal(0, errs)
      assert.is_true(monotonic)
      assert.equal(st.size, st.bytes)
      assert.is_true(peak < 2 * 1024, "memory grew by " .. peak .. " KB")
    end)
  end)

  describe("examples/legacy-orders.xml", function()
    it("holds the spec sample and two more orders, the last one minimal", function()
      local recs = collect(assert(input.open("examples/legacy-orders.xml")))
      assert.equal(3, #recs)
      assert.same(SAMPLE_PAYLOAD, recs[1].payload)
      assert.equal("B2B-00412", recs[2].payload.order.customerId)
      assert.equal("Navy & white", recs[2].payload.order.items[1].attributes.colour)
      assert.same({
        user = { email = "walk-in@example.com" },
        order = { refCode = "MC03-170425-0003", orderDate = "2017-04-25T16:40:00 GMT",
                  currency = "GBP", total = "5.0",
                  items = { { refCode = "SKU-90001", qty = "1", price = "5.0" } } },
      }, recs[3].payload)
    end)
  end)
end)
