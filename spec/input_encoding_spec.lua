-- Till files as they come (issue 20): a Windows-1252 or Latin-1 export is
-- read with `input_encoding` (the CLI's --input-encoding), converted to
-- UTF-8 in C with iconv (csrc/input/decode.c); without it, a file that is not
-- UTF-8 gets one clear message naming the line and the option, and the
-- rest of the file is not read — never an order cut in two.
local core = require("optimizely.offline.core")
local input = require("optimizely.offline.input")
local cli = require("support.cli")

-- every record of `text` read as `name` with `opts`
local function read(name, text, opts)
  local path = cli.write_file(cli.tmp(name), text)
  local it = assert(input.open(path, opts))
  local out = {}
  for rec in it do out[#out + 1] = rec end
  return out
end

local CSV_HEAD = "refCode,orderDate,currency,total,itemRefCode,qty,price,attr.note\n"
local DATE = "2024-05-16T15:25:00 GMT"

describe("input encodings", function()
  teardown(cli.cleanup)

  describe("the decoder (core.decoder)", function()
    it("converts Windows-1252 and Latin-1 to UTF-8 in whole lines", function()
      local d = core.decoder("cp1252")
      assert.equal("\194\163 2.24\n\226\130\172 5\n", d:feed("\163 2.24\n\128 5\nno end"))
      assert.equal("no end", d:feed(nil))
      assert.equal(3, d:lines() + 1)
      d = core.decoder("Latin1")
      assert.equal("caf\195\169\n\194\128\n", d:feed("caf\233\n\128\n"))
      for _, name in ipairs({ "utf-8", "UTF8", "windows-1252", "ISO-8859-1", "latin-1" }) do
        assert.truthy(core.decoder(name), name)
      end
      local no, why = core.decoder("ebcdic")
      assert.is_nil(no)
      assert.equal("config", why.kind)
      assert.matches("unknown input encoding", why.message)
    end)

    it("hands on UTF-8 as it is, and stops at the line that is not, with its number and byte", function()
      local d = core.decoder("utf-8")
      assert.equal("a\n", d:feed("a\nb\195"))
      assert.equal("b\195\169\n", d:feed("\169\nc\163d"))
      local text, line, byte, reason = d:feed("\ne\n")
      assert.same({ "", 3, 0xA3, "invalid" }, { text, line, byte, reason })
      assert.same({ "", 3, 0xA3, "invalid" }, { d:feed("more\n") })
      d = core.decoder("utf-8")
      assert.equal("x\n", d:feed("x\ny\226\130"))
      assert.same({ "", 2, nil, "truncated" }, { d:feed(nil) })
    end)

    it("refuses a UTF-8 file given a single-byte encoding, an undefined Windows-1252 byte, UTF-16", function()
      assert.same({ "", 1, nil, "bom" }, { core.decoder("cp1252"):feed("\239\187\191a\n") })
      assert.same({ "ok\n", 2, 0x81, "invalid" }, { core.decoder("cp1252"):feed("ok\n\129\n") })
      assert.same({ "", 1, nil, "utf16" }, { core.decoder("utf-8"):feed("\255\254r\0") })
    end)
  end)

  describe("the readers", function()
    local rows = "E1," .. DATE .. ",GBP,2.24,s1,1,2.24,caf\233\n" .. "E2," .. DATE .. ",GBP,5.00,s1,1,5.00,\128 5\n"
    local latin = CSV_HEAD .. rows

    it("read a Windows-1252 CSV with input_encoding", function()
      local recs = read("w.csv", latin, { input_encoding = "cp1252" })
      assert.equal(2, #recs)
      assert.equal("café", recs[1].payload.order.attributes.note)
      assert.equal("€ 5", recs[2].payload.order.attributes.note)
      recs = read("w2.csv", latin, { input_encoding = "cp1252", order_rows = "grouped" })
      assert.equal("café", recs[1].payload.order.attributes.note)
    end)

    it("without it: one record naming the line and the option; the rest is not read", function()
      local recs = read("w3.csv", CSV_HEAD .. "OK1," .. DATE .. ",GBP,1.00,s1,1,1.00,x\n"
        .. "OK2," .. DATE .. ",GBP,1.00,s1,1,1.00,x\n" .. rows)
      assert.equal(3, #recs)
      assert.equal("OK1", recs[1].payload.order.refCode)
      assert.equal("OK2", recs[2].ref) -- still open at the line at fault: not handed on
      assert.equal("encoding", recs[3].code)
      assert.equal(4, recs[3].line)
      assert.matches('w3.csv:4: not UTF-8 text (byte \\xE9, which is "é" in Latin-1 and Windows-1252); '
        .. "if the file is a Windows-1252 or Latin-1 export, give its encoding: --input-encoding cp1252 or "
        .. "latin1 (input_encoding in the reader options); the rest of the file is not read", recs[3].error, 1, true)
    end)

    it("never hands on an order whose rows may go on past the line at fault", function()
      local text = CSV_HEAD .. "A1," .. DATE .. ",GBP,1.00,s1,1,1.00,x\n"
        .. "A2," .. DATE .. ",GBP,2.00,s1,1,1.00,x\n" .. "A2," .. DATE .. ",GBP,2.00,s2,1,1.00,caf\233\n"
      local recs = read("split.csv", text)
      assert.equal(3, #recs)
      assert.equal("A1", recs[1].payload.order.refCode)
      assert.is_nil(recs[2].payload)
      assert.equal("encoding", recs[2].code)
      assert.equal("A2", recs[2].ref)
      assert.matches('split.csv:3: order "A2": not read whole: the file stops at line 4', recs[2].error, 1, true)
      assert.equal("encoding", recs[3].code)
      -- grouped: no order is known whole
      recs = read("split2.csv", text, { order_rows = "grouped" })
      for _, r in ipairs(recs) do assert.is_nil(r.payload) end
    end)

    it("NDJSON: converted, or stopped at the first line that is not UTF-8", function()
      local line = '{"order":{"refCode":"N1","orderDate":"' .. DATE .. '","currency":"GBP","total":"1.00",'
        .. '"items":[{"refCode":"caf\233","qty":1,"price":"1.00"}]}}\n'
      local recs = read("l.ndjson", line, { input_encoding = "latin1" })
      assert.equal("café", recs[1].payload.order.items[1].refCode)
      recs = read("l2.ndjson", line .. line)
      assert.equal(1, #recs)
      assert.equal("encoding", recs[1].code)
      assert.matches("l2.ndjson:1: not UTF-8 text (byte \\xE9", recs[1].error, 1, true)
    end)

    it("XML: input_encoding wins over the declaration; without it expat's error says why", function()
      local doc = '<?xml version="1.0" encoding="windows-1252"?>\n<orders>\n<order refCode="X1" orderDate="'
        .. DATE .. '" currency="GBP" total="2.24">\n<product refCode="caf\233 \128" qty="1" price="2.24"/>\n'
        .. "</order>\n</orders>\n"
      local recs = read("w.xml", doc, { input_encoding = "cp1252" })
      assert.equal(1, #recs)
      assert.equal("café €", recs[1].payload.order.items[1].refCode)
      recs = read("w2.xml", doc)
      assert.matches("unknown encoding (expat reads UTF-8, UTF-16, ISO-8859-1 and US-ASCII; for a Windows-1252 "
        .. "document give --input-encoding cp1252", recs[1].error, 1, true)
      recs = read("w3.xml", (doc:gsub(' encoding="windows%-1252"', "")))
      assert.matches("malformed XML: not well-formed (invalid token): byte \\xE9 is not UTF-8 (a Windows-1252 "
        .. "or Latin-1 export? give its encoding", recs[1].error, 1, true)
    end)

    it("an unknown input_encoding is a programmer error naming the option", function()
      local ok, err = pcall(input.open, cli.write_file(cli.tmp("x.csv"), CSV_HEAD), { input_encoding = "koi8" })
      assert.is_false(ok)
      assert.matches("opts.input_encoding must be utf-8, cp1252 (Windows-1252) or latin1", err, 1, true)
    end)
  end)

  describe("the command line", function()
    it("--input-encoding (or input_encoding in --config) reads a Windows-1252 till export", function()
      local path = cli.write_file(cli.tmp("till.csv"), CSV_HEAD .. "T1," .. DATE .. ",GBP,\163" .. "2.24,s1,1,"
        .. "\163" .. "2.24,caf\233\n")
      local r = cli.run({ "validate", path })
      assert.equal(1, r.code)
      assert.matches("till.csv:2: not UTF-8 text (byte \\xA3, which is \"£\" in Latin-1 and Windows-1252); "
        .. "if the file is a Windows-1252 or Latin-1 export, give its encoding: --input-encoding cp1252", r.out,
        1, true)
      assert.equal(1, select(2, r.all:gsub("not UTF%-8 text", "")) - 1) -- one message (and its summary line)
      r = cli.run({ "convert", path, "--input-encoding", "cp1252", "--currency-symbols" })
      assert.equal(0, r.code, r.all)
      local out = assert(core.json_decode(r.out))
      assert.equal("café", out.order.attributes.note)
      assert.equal(2.24, out.order.total)
      local conf = cli.write_file(cli.tmp("enc.conf"), "input_encoding = latin1  # the till's export\n"
        .. "currency_symbols = true\n")
      r = cli.run({ "convert", path, "--config", conf })
      assert.equal(0, r.code, r.all)
      r = cli.run({ "validate", path, "--input-encoding", "koi8-r" })
      assert.equal(2, r.code)
      assert.matches("--input-encoding must be utf-8, cp1252 (Windows-1252) or latin1 (ISO-8859-1), got koi8-r",
        r.err, 1, true)
    end)
  end)
end)
