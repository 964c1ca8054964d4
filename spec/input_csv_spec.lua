-- CSV reader: RFC 4180 parsing, grouping rows into orders, format errors.
local input = require("optimizely.offline.input")

local FIX = "spec/fixtures/input/"
local BOM = "\239\187\191"
local HEADER = "refCode,orderDate,currency,total,itemRefCode,qty,price"

local files = require("support.input_files")
local collect = files.collect
local function tmp(content, ext) return files.tmp(content, ext or ".csv") end

-- All records of `content` read as CSV with `opts`.
local read = files.reader(".csv")

local function errors_of(recs)
  local out = {}
  for _, r in ipairs(recs) do if r.error then out[#out + 1] = r end end
  return out
end

local function refs(recs)
  local out = {}
  for _, r in ipairs(recs) do
    out[#out + 1] = r.payload and r.payload.order.refCode or ("ERR:" .. (r.ref or "?"))
  end
  return out
end

describe("csv reader", function()
  after_each(files.cleanup)

  describe("grouping rows into orders", function()
    it("maps every documented column and keeps values as strings", function()
      local recs = read(table.concat({
        "refCode,orderDate,customerId,currency,shipping,subTotal,total,lang,user.id,user.email,"
          .. "user.segments,user.info.gender,attr.store,itemRefCode,qty,price,item.attr.size",
        "R1,2024-03-15T09:12:00 GMT,C9,GBP,1.00,12.50,13.50,en-gb,u1,a@example.com,vip|new,f,S1,"
          .. "SKU1,2,5.00,M",
        "R1,,,,,,,,,,,,,SKU2,1,2.50,",
        "",
      }, "\n"))
      assert.equal(1, #recs)
      assert.same({
        payload = {
          lang = "en-gb",
          user = { id = "u1", email = "a@example.com", segments = { "vip", "new" },
                   info = { gender = "f" } },
          order = {
            refCode = "R1", orderDate = "2024-03-15T09:12:00 GMT", customerId = "C9",
            currency = "GBP", shipping = "1.00", subTotal = "12.50", total = "13.50",
            attributes = { store = "S1" },
            items = {
              { refCode = "SKU1", qty = "2", price = "5.00", attributes = { size = "M" } },
              { refCode = "SKU2", qty = "1", price = "2.50" },
            },
          },
        },
        file = files.last(), line = 2, index = 1,
      }, recs[1])
    end)

    it("treats an empty cell as absent, not as an empty string", function()
      local recs = read(HEADER .. ",user.email,attr.store,item.attr.x\nR1,d,GBP,1,S,1,1,,,\n")
      local p = recs[1].payload
      assert.is_nil(p.user)
      assert.is_nil(p.order.attributes)
      assert.same({ refCode = "S", qty = "1", price = "1" }, p.order.items[1])
    end)

    it("yields one record per order in file order, with first line and index", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nA,d,GBP,1,S2,1,1\nB,d,GBP,1,S3,1,1\n"
        .. "C,d,GBP,1,S4,1,1\nC,d,GBP,1,S5,1,1\n")
      assert.same({ "A", "B", "C" }, refs(recs))
      assert.same({ 2, 4, 5 }, { recs[1].line, recs[2].line, recs[3].line })
      assert.same({ 1, 2, 3 }, { recs[1].index, recs[2].index, recs[3].index })
      assert.equal(2, #recs[3].payload.order.items)
    end)

    it("takes the first non-empty order-level value and accepts repeats of it", function()
      local recs = read(HEADER .. "\nA,,GBP,,S1,1,1\nA,d,GBP,5,S2,1,1\nA,d,,5,S3,1,1\n")
      assert.is_nil(recs[1].error)
      assert.equal("d", recs[1].payload.order.orderDate)
      assert.equal("5", recs[1].payload.order.total)
    end)

    it("reports a different value on a later row of the same order, naming column and lines", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nA,d,EUR,1,S2,1,1\nB,d,GBP,1,S3,1,1\n")
      assert.equal(2, #recs)
      assert.matches(":2: order \"A\": line 3: column \"currency\" is \"EUR\" but was \"GBP\" on line 2",
        recs[1].error, 1, true)
      assert.equal(2, recs[1].line)
      assert.equal("A", recs[1].ref)
      assert.equal("B", recs[2].payload.order.refCode)
    end)

    it("reports rows of an order that are not contiguous", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nB,d,GBP,1,S2,1,1\nA,d,GBP,1,S3,1,1\n"
        .. "A,d,GBP,1,S4,1,1\nC,d,GBP,1,S5,1,1\n")
      assert.same({ "A", "B", "ERR:A", "C" }, refs(recs))
      assert.matches("rows for order \"A\" are not contiguous (first seen at line 2)",
        recs[3].error, 1, true)
      assert.equal(4, recs[3].line)
    end)

    it("marks a later fragment of an order as split_order, with its ref and first line", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nB,d,GBP,1,S2,1,1\nA,d,GBP,1,S3,1,1\n"
        .. "A,d,EUR,1,S4,1,1\n")
      assert.same({ "A", "B", "ERR:A" }, refs(recs))
      assert.equal("split_order", recs[3].code)
      assert.equal("A", recs[3].ref)
      assert.equal(2, recs[3].first_line)
      assert.equal(4, recs[3].line)
      -- the split comes first; the fragment's own problems follow it
      assert.matches(':4: order "A": rows for order "A" are not contiguous (first seen at line 2); '
        .. 'line 5: column "currency" is "EUR" but was "GBP" on line 4', recs[3].error, 1, true)
      -- an order that is only wrong is not a split order
      recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nA,d,EUR,1,S2,1,1\n")
      assert.equal("order", recs[1].code)
      assert.equal("A", recs[1].ref)
      assert.is_nil(recs[1].first_line)
    end)

    it("gives every error record a code", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1\n,d,GBP,1,S2,1,1\n")
      assert.same({ "order", "row" }, { recs[1].code, recs[2].code })
      recs = read("refCode,colour\nA,red\n")
      assert.equal("header", recs[1].code)
      recs = read(HEADER .. ',attr.note\nA,d,GBP,1,S1,1,1,"' .. string.rep("x\n", 100),
        { max_record_bytes = 64, chunk_size = 16 })
      assert.equal("too_long", recs[#recs].code)
    end)

    it("skips blank and all-empty rows", function()
      local recs = read(HEADER .. "\n\nA,d,GBP,1,S1,1,1\n,,,,,,\n\r\nA,d,GBP,1,S2,1,1\n\n\n")
      assert.equal(1, #recs)
      assert.equal(2, #recs[1].payload.order.items)
    end)

    it("reads a file with only a header, and an empty file, as no records", function()
      assert.same({}, (read(HEADER .. "\n")))
      assert.same({}, (read("")))
    end)

    it("reports a row with an empty refCode and goes on", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\n,d,GBP,1,S2,1,1\nA,d,GBP,1,S3,1,1\n")
      assert.equal(2, #recs)
      -- records come in file order: the open order first, then the bad row
      assert.equal(2, #recs[1].payload.order.items)
      assert.matches(":3: refCode is empty", recs[2].error, 1, true)
      assert.equal(3, recs[2].line)
    end)
  end)

  describe("channels", function()
    it("puts a channel column into rec.channel, never into the payload", function()
      local recs = read("refCode,channel,itemRefCode\nA,callcentre,S1\nA,,S2\nB,,S3\nC,store,S4\n")
      assert.same({ "A", "B", "C" }, refs(recs))
      assert.equal("callcentre", recs[1].channel)
      assert.is_nil(recs[2].channel) -- an empty cell: the client's default channel
      assert.equal("store", recs[3].channel)
      for _, r in ipairs(recs) do
        assert.is_nil(r.payload.channel)
        assert.is_nil(r.payload.order.channel)
        assert.is_nil(r.payload.order.attributes)
      end
    end)

    it("takes the channel from a mapped column and reports a conflict like any order cell", function()
      local recs = read("Bon,Kanal,Artikel\nA,store,S1\nA,web,S2\nB,web,S3\n",
        { map = { Bon = "refCode", Kanal = "channel", Artikel = "itemRefCode" } })
      assert.same({ "ERR:A", "B" }, refs(recs))
      assert.matches('line 3: column "Kanal" (mapped to "channel") is "web" but was "store" on line 2',
        recs[1].error, 1, true)
      assert.equal("web", recs[2].channel)
    end)
  end)

  describe("NUL bytes", function()
    it("refuses a NUL byte in an order's row, naming file and line, and goes on", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S\0001,1,1\nB,d,GBP,1,S2,1,1\nC,d,\"G\0\",1,S3,1,1\n")
      assert.same({ "ERR:A", "B", "ERR:C" }, refs(recs))
      assert.matches('^' .. files.last():gsub("%p", "%%%0") .. ':2: order "A": line 2: NUL byte in field 5',
        recs[1].error)
      assert.matches(':4: order "C": line 4: NUL byte in field 3', recs[3].error, 1, true)
      assert.equal("order", recs[1].code)
    end)

    it("refuses a NUL byte in a row without a refCode and in the header", function()
      local recs = read(HEADER .. "\n,d\0,GBP,1,S1,1,1\n")
      assert.equal(1, #recs)
      assert.matches(":2: NUL byte in field 2", recs[1].error, 1, true)
      assert.equal("row", recs[1].code)
      recs = read("refCode,item\0RefCode\nA,S1\n")
      assert.equal(1, #recs)
      assert.matches(":1: header: NUL byte in field 2", recs[1].error, 1, true)
    end)

    it("says what a UTF-16 file looks like", function()
      local utf16 = ("refCode,itemRefCode\nA,S1\n"):gsub(".", "%0\0")
      local recs = read("\255\254" .. utf16)
      assert.equal(1, #recs)
      assert.matches(":1: the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8",
        recs[1].error, 1, true)
      assert.equal("encoding", recs[1].code)
      recs = read(utf16) -- no byte order mark: NUL bytes
      assert.matches("NUL byte in field 1 (a binary or UTF-16 file? save it as UTF-8 CSV)", recs[1].error,
        1, true)
    end)
  end)

  describe("messages", function()
    it("escapes control characters in the values they quote and caps their length", function()
      local ref = "A\27[31m\rX"
      local recs = read(HEADER .. "\n" .. ref .. ",d,GBP,1,S1,1,1\n" .. ref .. ",d,EUR,1,S2,1,1\n"
        .. "B,d,GBP,1,S3,1,1\nB,d," .. string.rep("Z", 500) .. ",1,S4,1,1\n")
      assert.matches('order "A\\x1b[31m\\rX": line 3: column "currency"', recs[1].error, 1, true)
      assert.is_nil(recs[1].error:find("%c"))
      assert.equal(ref, recs[1].ref)
      assert.matches('is "' .. string.rep("Z", 120) .. '"...(500 bytes) but was "GBP"', recs[2].error, 1, true)
    end)
  end)

  describe("RFC 4180 parsing", function()
    local hostile = BOM .. table.concat({
      HEADER .. ",attr.note,item.attr.desc",
      'R1,d,GBP,1,S1,1,1,"Gift, wrapped","Mug, ""large"""',
      'R1,d,GBP,1,S2,1,1,,"two',
      'lines, ""quoted"""',
      'R2,"d",GBP,1,"S3",1,1,"",plain',
      '"R3",d,GBP,1,S4,1,1,"a\r\nb",',
    }, "\r\n") .. "\r\n"

    local function check_hostile(recs)
      assert.same({ "R1", "R2", "R3" }, refs(recs))
      local o1 = recs[1].payload.order
      assert.same({ note = "Gift, wrapped" }, o1.attributes)
      assert.equal('Mug, "large"', o1.items[1].attributes.desc)
      assert.equal('two\r\nlines, "quoted"', o1.items[2].attributes.desc)
      assert.same({ 2, 5, 6 }, { recs[1].line, recs[2].line, recs[3].line })
      local o2 = recs[2].payload.order
      assert.equal("d", o2.orderDate)
      assert.is_nil(o2.attributes) -- "" quoted empty is still empty: absent
      assert.same({ refCode = "S3", qty = "1", price = "1", attributes = { desc = "plain" } },
        o2.items[1])
      assert.equal("a\r\nb", recs[3].payload.order.attributes.note)
    end

    it("handles BOM, CRLF, quoted delimiters, doubled quotes and embedded newlines", function()
      check_hostile((read(hostile)))
    end)

    it("gives the same records whatever the chunk size (chunk boundary cases)", function()
      for size = 1, 40 do
        check_hostile((read(hostile, { chunk_size = size })))
      end
    end)

    it("accepts a last row without a line break", function()
      local recs = read(HEADER .. "\r\nA,d,GBP,1,S1,1,1\r\nB,d,GBP,1,S2,1,\"1\"")
      assert.same({ "A", "B" }, refs(recs))
      assert.equal("1", recs[2].payload.order.items[1].price)
    end)

    it("reports text after a closing quote with its line and goes on with the next order", function()
      local recs = read(HEADER .. '\nA,d,GBP,1,"S1"x,1,1\nB,d,GBP,1,S2,1,1\n')
      assert.same({ "ERR:A", "B" }, refs(recs))
      assert.matches(":2: order \"A\": line 2: text after the closing quote of field 5",
        recs[1].error, 1, true)
      assert.equal(2, recs[1].line)
    end)

    it("reports a stray quote inside an unquoted field", function()
      local recs = read(HEADER .. ',item.attr.size\nA,d,GBP,1,S1,1,1,5" screen\nB,d,GBP,1,S2,1,1,\n')
      assert.same({ "ERR:A", "B" }, refs(recs))
      assert.matches("stray quote in unquoted field 8", recs[1].error, 1, true)
    end)

    it("reports an unterminated quote at EOF with the line it opened on", function()
      local recs = read(HEADER .. ',attr.note\nA,d,GBP,1,S1,1,1,\nB,d,GBP,1,S2,1,1,"never\nclosed\n')
      assert.same({ "A", "ERR:B" }, refs(recs))
      assert.matches(":3: order \"B\": line 3: unterminated quoted field (the quote opened on line 3",
        recs[2].error, 1, true)
    end)

    it("reports an unterminated quote before the refCode as a row error", function()
      local recs = read('itemRefCode,refCode\nS1,A\n"S2,B\n')
      assert.same({ "A", "ERR:?" }, refs(recs))
      assert.matches(":3: unterminated quoted field", recs[2].error, 1, true)
      assert.equal('"S2,B\n', recs[2].raw)
    end)

    it("ends the file when a row grows past max_record_bytes (runaway quote)", function()
      local body = HEADER .. ',attr.note\nA,d,GBP,1,S1,1,1,"' .. string.rep("x\n", 3000)
      local recs = read(body, { max_record_bytes = 1000, chunk_size = 64 })
      assert.equal(1, #recs)
      assert.matches(":2: row starting on line 2 is longer than 1000 bytes", recs[1].error, 1, true)
    end)

    it("supports another delimiter, e.g. ';'", function()
      local recs = read("refCode;itemRefCode;attr.note\nA;S1;\"x;y\"\n", { delimiter = ";" })
      assert.equal("x;y", recs[1].payload.order.attributes.note)
      recs = read("refCode\titemRefCode\tprice\nA\tS1\t1,5\n", { delimiter = "\t" })
      assert.equal("1,5", recs[1].payload.order.items[1].price)
    end)

    it("rejects a bad delimiter as a programmer error", function()
      assert.has_error(function() read(HEADER .. "\n", { delimiter = '"' }) end)
      assert.has_error(function() read(HEADER .. "\n", { delimiter = ";;" }) end)
    end)
  end)

  describe("header", function()
    it("rejects unknown columns once, with a suggestion, and reads nothing else", function()
      local recs = read("refCode,orderdate,Currency,colour,itemRefCode\nA,d,GBP,red,S1\nB,d,GBP,red,S2\n")
      assert.equal(1, #recs)
      local e = recs[1].error
      assert.matches(":1: header: unknown columns ", e, 1, true)
      assert.matches('"orderdate" (did you mean "orderDate"?)', e, 1, true)
      assert.matches('"Currency" (did you mean "currency"?)', e, 1, true)
      assert.matches('"colour"', e, 1, true)
      assert.matches("file not read", e, 1, true)
      assert.equal(1, recs[1].line)
      assert.equal("refCode,orderdate,Currency,colour,itemRefCode", recs[1].raw)
    end)

    it("suggests the prefixed forms for attribute columns", function()
      local recs = read("refCode,itemRefCode,attrs.store,item.atr.size\nA,S1,x,y\n")
      assert.matches('"attrs.store" (did you mean "attr.store"?)', recs[1].error, 1, true)
      assert.matches('"item.atr.size" (did you mean "item.attr.size"?)', recs[1].error, 1, true)
    end)

    it("requires refCode and itemRefCode", function()
      local recs = read("orderDate,qty\nd,1\n")
      assert.equal(1, #recs)
      assert.matches('required column "refCode" is missing', recs[1].error, 1, true)
      assert.matches('required column "itemRefCode" is missing', recs[1].error, 1, true)
    end)

    it("rejects a column given twice", function()
      local recs = read("refCode,itemRefCode,qty,qty\nA,S,1,2\n")
      assert.equal(1, #recs)
      assert.matches('column "qty" appears twice (columns 3 and 4)', recs[1].error, 1, true)
    end)

    it("renames source columns with opts.map and ignores columns mapped to false", function()
      local map = {
        Bon = "refCode", Datum = "orderDate", ["Währung"] = "currency", Summe = "total",
        Artikel = "itemRefCode", Menge = "qty", Preis = "price", Kassierer = false,
      }
      local it = assert(input.open(FIX .. "semicolon.csv", { map = map, delimiter = ";" }))
      local recs = collect(it)
      assert.same({ "K1-0001", "K1-0002" }, refs(recs))
      assert.same({
        refCode = "K1-0002", orderDate = "2024-03-15T09:20:00 GMT", currency = "EUR",
        total = "7,00", -- comma decimals pass through; the core rejects them with a path
        items = { { refCode = "A-2", qty = "2", price = "3,50" },
                  { refCode = "A-3", qty = "1", price = "0,00" } },
      }, recs[2].payload.order)
    end)

    it("names the source column and its mapping in conflict errors", function()
      local recs = read("Bon,Cur,Item\nA,GBP,S1\nA,EUR,S2\n",
        { map = { Bon = "refCode", Cur = "currency", Item = "itemRefCode" } })
      assert.matches('column "Cur" (mapped to "currency") is "EUR"', recs[1].error, 1, true)
    end)

    it("trims spaces around header names", function()
      local recs = read(" refCode , itemRefCode \nA,S1\n")
      assert.equal("S1", recs[1].payload.order.items[1].refCode)
    end)

    it("ignores a column without a header while its cells are empty", function()
      local recs = read("refCode,itemRefCode,\nA,S1,\nB,S2,oops\n")
      assert.same({ "A", "ERR:B" }, refs(recs))
      assert.matches('line 3: column 3 has no header but holds "oops"', recs[2].error, 1, true)
    end)
  end)

  describe("ragged rows", function()
    it("makes the order of a row with the wrong field count an error and goes on", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nA,d,GBP,1,S2,1\nB,d,GBP,1,S3,1,1,extra\n"
        .. "C,d,GBP,1,S4,1,1\n")
      assert.same({ "ERR:A", "ERR:B", "C" }, refs(recs))
      assert.matches(":2: order \"A\": line 3: has 6 fields, the header has 7", recs[1].error, 1, true)
      assert.matches(":4: order \"B\": line 4: has 8 fields, the header has 7", recs[2].error, 1, true)
    end)
  end)

  describe("streaming", function()
    it("works through a 200k-line file with flat memory and reports progress", function()
      local path = tmp("")
      local f = assert(io.open(path, "wb"))
      f:write(HEADER, ",attr.note\n")
      for i = 1, 200000 do
        local o = math.floor((i - 1) / 4) + 1
        f:write("O", o, ",2024-03-15T09:12:00 GMT,GBP,10.00,SKU", i % 977, ",1,2.50,",
          i % 1000 == 0 and '"multi\nline, ""quoted"""' or "", "\n")
      end
      f:close()
      local it, st = assert(input.open(path))
      assert.is_number(st.size)
      collectgarbage()
      local base = collectgarbage("count")
      local n, items, errs, peak, last_bytes = 0, 0, 0, 0, -1
      local monotonic = true
      for rec in it do
        n = n + 1
        if rec.error then errs = errs + 1 else items = items + #rec.payload.order.items end
        if st.bytes < last_bytes then monotonic = false end
        last_bytes = st.bytes
        if n % 10000 == 0 then
          collectgarbage() -- live memory, not garbage the collector has not reached yet
          local kb = collectgarbage("count") - base
          if kb > peak then peak = kb end
        end
      end
      assert.equal(50000, n)
      assert.equal(0, errs)
      assert.equal(200000, items)
      assert.is_true(monotonic)
      assert.equal(st.size, st.bytes)
      -- Neither the 20 MB file nor the refCodes seen are held in Lua (the
      -- seen set lives in C, in fixed memory).
      assert.is_true(peak < 2 * 1024, "memory grew by " .. peak .. " KB")
    end)
  end)

  describe("order_rows", function()
    -- `n` orders of two rows each (refCodes R1..Rn, order i on lines 2i and
    -- 2i+1), then one row for each refCode of `tail`.
    local function orders_file(n, tail)
      local path = tmp("")
      local f = assert(io.open(path, "wb"))
      f:write("refCode,itemRefCode\n")
      local buf = {}
      for i = 1, n do
        buf[#buf + 1] = ("R%d,S1\nR%d,S2\n"):format(i, i)
        if #buf == 4096 then f:write(table.concat(buf)); buf = {} end
      end
      f:write(table.concat(buf))
      for _, ref in ipairs(tail or {}) do f:write(ref, ",S9\n") end
      f:close()
      return path
    end

    local function split_errors(path, opts)
      local errs, count = {}, 0
      for rec in assert(input.open(path, opts)) do
        count = count + 1
        if rec.error then errs[#errs + 1] = rec end
      end
      return errs, count
    end

    it("finds a split order however far back its first rows are (exact set, runs on disk, merges)", function()
      -- 300,000 refCodes; 1,024 kept in memory, so older ones go to disk in
      -- sorted runs that merge sixteen at a time, twice over
      local tail = { "R1", "R70000", "R262144", "R299999", "NEW" }
      local errs, count = split_errors(orders_file(300000, tail), { seen_exact = 1024 })
      assert.equal(300000 + #tail, count)
      assert.equal(4, #errs)
      for k = 1, 4 do
        assert.equal("split_order", errs[k].code)
        assert.equal(tail[k], errs[k].ref)
        assert.equal(2 * tonumber(tail[k]:sub(2)), errs[k].first_line)
        assert.equal(600001 + k, errs[k].line)
      end
    end)

    it("confirms every filter hit exactly: a saturated filter reports no false split", function()
      -- 64 bytes of filter: after a few hundred refCodes every lookup hits
      local errs, count = split_errors(orders_file(140000, { "R5", "R139999", "R140001" }),
        { seen_filter_bytes = 64, seen_exact = 16384 })
      assert.equal(140003, count)
      assert.equal(2, #errs)
      assert.same({ "R5", "R139999" }, { errs[1].ref, errs[2].ref })
    end)

    it("grouped: yields complete orders in order of first appearance, rows in file order", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nB,d,GBP,1,S2,1,1\nA,d,GBP,1,S3,1,1\n,,,,,,\n"
        .. ",d,GBP,1,S4,1,1\nC,d,GBP,1,S5,1,1\nA,,,,S6,1,1\n", { order_rows = "grouped" })
      assert.same({ "A", "B", "ERR:?", "C" }, refs(recs))
      local a = recs[1].payload.order
      assert.same({ "S1", "S3", "S6" }, { a.items[1].refCode, a.items[2].refCode, a.items[3].refCode })
      assert.equal(2, recs[1].line)
      assert.equal(3, recs[2].line)
      assert.matches(":6: refCode is empty", recs[3].error, 1, true)
      assert.equal(7, recs[4].line)
      assert.same({ 1, 2, 3, 4 }, { recs[1].index, recs[2].index, recs[3].index, recs[4].index })
    end)

    it("grouped: checks cells across the fragments of an order, naming their lines", function()
      local recs = read(HEADER .. "\nA,d,GBP,1,S1,1,1\nB,d,GBP,1,S2,1,1\nA,d,EUR,1,S3,1,1\n",
        { order_rows = "grouped" })
      assert.same({ "ERR:A", "B" }, refs(recs))
      assert.equal("order", recs[1].code)
      assert.matches(':2: order "A": line 4: column "currency" is "EUR" but was "GBP" on line 2',
        recs[1].error, 1, true)
    end)

    it("grouped: gives the same records as contiguous for a contiguous file, whatever the chunks", function()
      local content = BOM .. HEADER .. ',attr.note\r\nR1,d,GBP,1,S1,1,1,"a, ""b""\r\nc"\r\n'
        .. 'R1,d,GBP,1,S2,1,1,\r\nR2,d,GBP,1,"S3"x,1,1,\r\n,d,GBP,1,S4,1,1\r\nR3,d,GBP,1,S5,1,1,"open'
      -- records without their file name (each read writes a new temp file)
      local function local_(recs)
        for _, r in ipairs(recs) do
          if r.error then r.error = r.error:sub(#r.file + 1) end
          r.file = nil
        end
        return recs
      end
      local want = local_(read(content))
      assert.same({ "R1", "ERR:R2", "ERR:?", "ERR:R3" }, refs(want))
      for size = 1, 40 do
        assert.same(want, local_(read(content, { order_rows = "grouped", chunk_size = size })))
      end
    end)

    it("grouped: keeps rows in a temporary file that only this process can read, gone at the end", function()
      -- enough rows that SQLite's temporary database leaves memory for disk
      local path = orders_file(150000, { "R1" })
      local it = assert(input.open(path, { order_rows = "grouped" }))
      local first = it()
      assert.equal("R1", first.payload.order.refCode)
      assert.equal(3, #first.payload.order.items)
      local f = assert(io.open("/proc/self/stat"))
      local pid = f:read("*l"):match("^(%d+)")
      f:close()
      local function temp_files()
        local p = io.popen("for fd in /proc/" .. pid .. "/fd/*; do l=$(readlink $fd); case $l in "
          .. "*etilqs_*) echo \"$(stat -L -c %a $fd) $l\";; esac; done")
        local out = p:read("*a")
        p:close()
        return out
      end
      local during = temp_files()
      assert.matches("^600 .*etilqs_%w+ %(deleted%)\n", during)
      for line in during:gmatch("[^\n]+") do assert.matches("^600 .*%(deleted%)$", line) end
      local n = 1
      for _ in it do n = n + 1 end
      assert.equal(150000, n)
      assert.equal("", temp_files())
    end)

    it("refuses an unknown order_rows and other unknown options, with a suggestion", function()
      assert.has_error(function() read(HEADER .. "\n", { order_rows = "sorted" }) end,
        "optimizely.offline.input: opts.order_rows must be one of contiguous, grouped (got \"sorted\")")
      local ok, err = pcall(input.open, "x.csv", { order_row = "grouped" })
      assert.is_false(ok)
      assert.matches("opts.order_row is not a known option (did you mean 'order_rows'?)", err, 1, true)
    end)
  end)

  describe("input.open", function()
    it("returns nil and a message for a missing file", function()
      local it, err = input.open("/nonexistent/orders.csv")
      assert.is_nil(it)
      assert.matches("/nonexistent/orders.csv", err, 1, true)
    end)

    it("needs a format it can tell", function()
      local it, err = input.open("orders.txt")
      assert.is_nil(it)
      assert.matches("cannot tell the format", err, 1, true)
      it, err = input.open("-")
      assert.is_nil(it)
      assert.matches("standard input needs a format", err, 1, true)
      it, err = input.open("x.csv", { format = "yaml" })
      assert.is_nil(it)
      assert.matches('unknown input format "yaml"', err, 1, true)
    end)

    it("reports a path it cannot read (a directory)", function()
      local it, err = input.open("spec/fixtures", { format = "csv" })
      assert.is_nil(it)
      assert.matches("cannot read spec/fixtures: ", err, 1, true)
    end)

    it("turns a read error into one error record, in every format", function()
      for _, fmt in ipairs({ "csv", "ndjson", "xml" }) do
        local fh = assert(io.open("spec/fixtures", "rb"))
        local recs = collect(assert(input.open_handle(fh, "dir", { format = fmt })))
        fh:close()
        assert.equal(1, #recs, fmt)
        assert.matches("^dir:1: read error: ", recs[1].error)
      end
    end)

    it("reads from an open handle with open_handle and leaves it open", function()
      local fh = io.tmpfile()
      fh:write(HEADER, "\nA,d,GBP,1,S1,1,1\n")
      fh:seek("set", 0)
      local it, st = assert(input.open_handle(fh, "till.csv"))
      local recs = collect(it)
      assert.equal("till.csv", recs[1].file)
      assert.equal("A", recs[1].payload.order.refCode)
      assert.equal(st.size, st.bytes)
      assert.equal("file", io.type(fh))
      fh:close()
    end)

    it("closes the file early with state.close()", function()
      local it, st = assert(input.open(tmp(HEADER .. "\nA,d,GBP,1,S1,1,1\nB,d,GBP,1,S2,1,1\n")))
      assert.equal("A", it().payload.order.refCode)
      st.close()
      assert.is_nil(it())
    end)

    it("gives total_hint as the file size", function()
      local path = tmp(HEADER .. "\n")
      assert.equal(#HEADER + 1, input.total_hint(path))
      assert.is_nil(input.total_hint("/nonexistent/x.csv"))
    end)
  end)

  describe("examples/till-export.csv", function()
    it("reads 10 orders without errors", function()
      local it = assert(input.open("examples/till-export.csv"))
      local recs = collect(it)
      assert.equal(10, #recs)
      assert.same({}, errors_of(recs))
      local gift = recs[3].payload.order
      assert.equal('Gift wrap, card reads:\n"Happy birthday, Dad!"', gift.attributes.note)
      assert.equal("Navy, white stripe", recs[2].payload.order.items[1].attributes.colour)
      assert.same({ 2, 4, 5, 8 }, { recs[1].line, recs[2].line, recs[3].line, recs[4].line })
    end)

    it("goes through examples/transform.lua", function()
      -- the example reads its pseudonym key from the environment when it loads
      local getenv = os.getenv
      os.getenv = function(k) -- luacheck: ignore
        if k == "OPTIMIZELY_PSEUDONYM_KEY" then return "example-pseudonym-key-0123456789" end
        return getenv(k)
      end
      local ok, transform = pcall(dofile, "examples/transform.lua")
      os.getenv = getenv -- luacheck: ignore
      assert(ok, transform)
      local it = assert(input.open("examples/till-export.csv"))
      local out = {}
      for rec in it do
        local p = transform(rec, {})
        if p then out[#out + 1] = p end
      end
      assert.equal(9, #out) -- TEST-0001 skipped
      local third = out[3]
      assert.equal("BW01-240315-0003", third.order.refCode)
      assert.equal("GBP", third.order.currency)
      assert.equal("StreamlyCool Bluewater", third.order.attributes.store)
      assert.is_nil(third.user.email)
      assert.equal(require("optimizely.offline").pseudonymise("james.okafor@example.com",
        { key = "example-pseudonym-key-0123456789" }), third.user.id)
      -- stable: the same customer gets the same id in every order, any case
      assert.equal(out[1].user.id, out[8].user.id)
      assert.is_nil(out[2].user) -- walk-in customer without an e-mail
    end)
  end)
end)
