-- NDJSON reader: one payload per line, bad lines reported, the rest goes on.
local input = require("optimizely.offline.input")
local cjson = require("cjson")

local FIX = "spec/fixtures/input/"

local files = require("support.input_files")
local collect = files.collect
local function tmp(content, ext) return files.tmp(content, ext or ".ndjson") end

local read = files.reader(".ndjson")

describe("ndjson reader", function()
  after_each(files.cleanup)

  describe("the fixture with good and bad lines", function()
    local recs
    before_each(function()
      recs = collect(assert(input.open(FIX .. "orders.ndjson")))
    end)

    it("returns one record per non-blank line, with its line and index", function()
      assert.equal(6, #recs)
      local lines, idx = {}, {}
      for i, r in ipairs(recs) do lines[i] = r.line; idx[i] = r.index end
      assert.same({ 1, 3, 4, 5, 7, 8 }, lines)
      assert.same({ 1, 2, 3, 4, 5, 6 }, idx)
      for _, r in ipairs(recs) do assert.equal(FIX .. "orders.ndjson", r.file) end
    end)

    it("decodes good lines to payload tables as they are", function()
      assert.same({
        user = { id = "u1" },
        order = { refCode = "o1", orderDate = "2024-03-15T09:12:00 GMT", currency = "GBP",
                  total = 12.5, items = { { refCode = "s1", qty = 1, price = 12.5 } } },
      }, recs[1].payload)
      -- strings stay strings: the core decides what it accepts
      assert.equal("12.50", recs[6].payload.order.total)
      assert.equal("en-gb", recs[6].payload.lang)
    end)

    it("reports a line that does not decode as file:N: invalid JSON, and goes on", function()
      assert.matches("^" .. FIX:gsub("%p", "%%%0") .. "orders%.ndjson:3: invalid JSON: ", recs[2].error)
      assert.equal('{"order":{"refCode":"o2",', recs[2].raw)
      assert.equal(3, recs[2].line)
      assert.is_nil(recs[2].payload)
    end)

    it("keeps JSON null as cjson.null (the core reports it) and strips CR", function()
      local o3 = recs[3].payload.order
      assert.equal(cjson.null, o3.currency)
      assert.equal("o3", o3.refCode)
    end)

    it("rejects lines that are JSON but not an object", function()
      assert.matches(":5: invalid JSON: expected an object, got an array", recs[4].error, 1, true)
      assert.equal("[1,2,3]", recs[4].raw)
      assert.matches(':7: invalid JSON: expected an object, got a string ("just a string")',
        recs[5].error, 1, true)
    end)

    it("reads the last line without a line break", function()
      assert.equal("o4", recs[6].payload.order.refCode)
    end)
  end)

  describe("wrapper lines", function()
    it("takes a channel wrapper's payload as it is, and its channel into rec.channel", function()
      local recs = read('{"channel":"callcentre","payload":{"order":{"refCode":"o1"}}}\n'
        .. '{"payload":{"order":{"refCode":"o2"}}}\n'
        .. '{"order":{"refCode":"o3"}}\n')
      assert.equal(3, #recs)
      assert.same({ order = { refCode = "o1" } }, recs[1].payload)
      assert.equal("callcentre", recs[1].channel)
      -- without a channel a line is a plain payload, as it always was (the
      -- core then reports its missing order)
      assert.same({ payload = { order = { refCode = "o2" } } }, recs[2].payload)
      assert.is_nil(recs[2].channel) -- the client's default channel
      assert.is_nil(recs[3].channel)
      assert.same({ 1, 2, 3 }, { recs[1].line, recs[2].line, recs[3].line })
    end)

    it("refuses a wrapper with an unknown key or a channel that is not a non-empty string", function()
      local recs = read('{"channel":"web","paylod":1,"payload":{"order":{"refCode":"o1"}}}\n'
        .. '{"channel":7,"payload":{"order":{"refCode":"o2"}}}\n'
        .. '{"channel":"","payload":{"order":{"refCode":"o3"}}}\n'
        .. '{"channel":"web","payload":"o4"}\n')
      assert.equal(4, #recs)
      for _, r in ipairs(recs) do
        assert.is_nil(r.payload)
        assert.equal("wrapper", r.code)
      end
      assert.matches(':1: unknown key "paylod" in a wrapper line (did you mean "payload"?)', recs[1].error,
        1, true)
      assert.matches(":2: the wrapper's channel must be a non-empty string", recs[2].error, 1, true)
      assert.matches(":3: the wrapper's channel must be a non-empty string", recs[3].error, 1, true)
      assert.matches(":4: the wrapper's payload must be an object", recs[4].error, 1, true)
      assert.equal('{"channel":7,"payload":{"order":{"refCode":"o2"}}}', recs[2].raw)
    end)

    it("keeps the channel of a rejects-file line", function()
      local recs = read('{"payload":{"order":{"refCode":"A"}},"error":{"kind":"http"},"channel":"web",'
        .. '"source":"x.csv:4","transformed":true}\n')
      assert.same({ order = { refCode = "A" } }, recs[1].payload)
      assert.equal("web", recs[1].channel)
      assert.is_true(recs[1].transformed)
      assert.equal("x.csv:4", recs[1].origin)
    end)
  end)

  describe("hostile lines", function()
    it("refuses a NUL byte with file:line and goes on", function()
      local recs = read('{"a":"x\0y"}\n{"b":1}\n{"c"\0:1}\n')
      assert.equal(3, #recs)
      assert.matches("^" .. files.last():gsub("%p", "%%%0") .. ":1: invalid JSON: ", recs[1].error)
      assert.equal("syntax", recs[1].code)
      assert.equal(1, recs[2].payload.b)
      assert.matches(":3: invalid JSON: ", recs[3].error, 1, true)
    end)

    it("escapes control characters and caps what messages show of a line", function()
      local recs = read('"a\\u001b[31mb"\n[' .. string.rep('"x",', 100) .. '1]\n'
        .. '{"error":"bad\\nline \\u001b[2J","stage":"input","source":"x.csv:7"}\n')
      assert.matches('expected an object, got a string ("a\\x1b[31mb")', recs[1].error, 1, true)
      assert.equal("not_object", recs[1].code)
      assert.matches("expected an object, got an array (", recs[2].error, 1, true)
      assert.matches('got an array (["x","x",', recs[2].error, 1, true)
      assert.matches("...(403 bytes))", recs[2].error, 1, true)
      assert.matches("rejected record without a payload to send (x.csv:7: bad\\nline \\x1b[2J)",
        recs[3].error, 1, true)
      assert.equal("rejected", recs[3].code)
      for _, r in ipairs(recs) do assert.is_nil(r.error:find("%c")) end
    end)
  end)

  it("skips blank lines, including whitespace and CR only", function()
    local recs = read('\n  \n\r\n{"a":1}\r\n\t\n{"b":2}\n\n')
    assert.equal(2, #recs)
    assert.same({ 4, 6 }, { recs[1].line, recs[2].line })
  end)

  it("rejects numbers that are not JSON (NaN, Infinity, hex)", function()
    local recs = read('{"t":NaN}\n{"t":Infinity}\n{"t":0x10}\n{"t":1.5}\n')
    for i = 1, 3 do assert.matches(":" .. i .. ": invalid JSON: ", recs[i].error, 1, true) end
    assert.equal(1.5, recs[4].payload.t)
  end)

  it("strips a UTF-8 BOM on the first line", function()
    local recs = read('\239\187\191{"order":{"refCode":"x"}}\n')
    assert.equal("x", recs[1].payload.order.refCode)
  end)

  it("reports null, a number and an empty object only for the first two", function()
    local recs = read('null\n42\n{}\n')
    assert.matches(":1: invalid JSON: expected an object, got null", recs[1].error, 1, true)
    assert.matches(":2: invalid JSON: expected an object, got a number", recs[2].error, 1, true)
    assert.same({}, recs[3].payload)
  end)

  it("reads lines longer than the chunk size, whatever the chunk boundaries", function()
    local long = '{"order":{"refCode":"' .. string.rep("x", 300) .. '"}}'
    local content = long .. "\r\n\n" .. '{"a":1}' .. "\n" .. long
    for size = 1, 40 do
      local recs = read(content, { chunk_size = size })
      assert.equal(3, #recs)
      assert.equal(300 + 0, #recs[1].payload.order.refCode)
      assert.same({ 1, 3, 4 }, { recs[1].line, recs[2].line, recs[3].line })
      assert.equal(1, recs[2].payload.a)
    end
  end)

  it("skips a line longer than max_record_bytes without holding it, and goes on", function()
    local content = '{"a":1}\n' .. '{"x":"' .. string.rep("y", 5000) .. '"}\n{"b":2}\n'
      .. string.rep("z", 3000)
    local recs = read(content, { max_record_bytes = 1000, chunk_size = 64 })
    assert.equal(4, #recs)
    assert.equal(1, recs[1].payload.a)
    assert.matches(":2: line is longer than 1000 bytes", recs[2].error, 1, true)
    assert.is_nil(recs[2].raw)
    assert.equal(2, recs[3].payload.b)
    assert.matches(":4: line is longer than 1000 bytes", recs[4].error, 1, true)
  end)

  it("detects the format from .ndjson, .jsonl and .json", function()
    for _, ext in ipairs({ ".ndjson", ".jsonl", ".json", ".JSONL" }) do
      local recs = read('{"a":1}\n', nil, ext)
      assert.equal(1, recs[1].payload.a)
    end
    assert.equal("ndjson", input.format_of("x/y.jsonl"))
    assert.equal("csv", input.format_of("y.CSV"))
    assert.equal("xml", input.format_of("y.xml"))
    assert.is_nil(input.format_of("y.txt"))
  end)

  it("reads any file as NDJSON when the format is given", function()
    local recs = read('{"a":1}\n', { format = "ndjson" }, ".txt")
    assert.equal(1, recs[1].payload.a)
  end)

  it("works through a 200k-line file with flat memory and reports progress", function()
    local path = tmp("")
    local f = assert(io.open(path, "wb"))
    for i = 1, 200000 do
      if i % 50000 == 0 then
        f:write("{broken\n")
      else
        f:write('{"user":{"id":"u', i, '"},"order":{"refCode":"o', i,
          '","orderDate":"2024-03-15T09:12:00 GMT","currency":"GBP","total":12.5,',
          '"items":[{"refCode":"s1","qty":1,"price":12.5}]}}\n')
      end
    end
    f:close()
    local it, st = assert(input.open(path))
    collectgarbage()
    local base = collectgarbage("count")
    local n, bad, peak, last = 0, {}, 0, -1
    local monotonic = true
    for rec in it do
      n = n + 1
      if rec.error then bad[#bad + 1] = rec.line end
      if st.bytes < last then monotonic = false end
      last = st.bytes
      if n % 10000 == 0 then
        collectgarbage() -- live memory, not garbage the collector has not reached yet
        local kb = collectgarbage("count") - base
        if kb > peak then peak = kb end
      end
    end
    assert.equal(200000, n)
    assert.same({ 50000, 100000, 150000, 200000 }, bad)
    assert.is_true(monotonic)
    assert.equal(st.size, st.bytes)
    assert.is_true(peak < 2 * 1024, "memory grew by " .. peak .. " KB")
  end)
end)

-- lua-cjson is not a dependency of the rock: with the core on the path the
-- reader decodes with the core alone, and without either it says so.
describe("ndjson reader without lua-cjson", function()
  after_each(files.cleanup)
  local LUA = require("support.interp")
  local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  local core = package.searchpath and package.searchpath("optimizely.offline.core", package.cpath)
  -- a script file, not -e: the ASan suite's interpreter takes only files
  local function child(cpath, code)
    local lpath = "lua/?.lua;lua/?/init.lua"
    local script = tmp(code, ".lua")
    local cmd = ("env LUA_PATH=%s LUA_CPATH=%s LUA_PATH_5_4=%s LUA_CPATH_5_4=%s LUA_PATH_5_3=%s "
      .. "LUA_CPATH_5_3=%s %s %s 2>&1"):format(q(lpath), q(cpath), q(lpath), q(cpath), q(lpath),
      q(cpath), LUA, q(script))
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    return out
  end

  it("decodes with the core and reports a null line as null", function()
    if not core then return pending("package.searchpath (not in Lua 5.1)") end
    local dir = core:gsub("optimizely/offline/core%.so$", "")
    local path = tmp('{"order":null}\nnull\n')
    local out = child(dir .. "?.so", ([[
      local input = require("optimizely.offline.input")
      local n = 0
      for r in assert(input.open(%q)) do
        n = n + 1
        print(r.payload and "payload" or r.error:match(": (.*)$"))
      end
      print(n, package.loaded["cjson.safe"] ~= nil, package.loaded["cjson"] ~= nil)
    ]]):format(path))
    assert.equal("payload\ninvalid JSON: expected an object, got null\n2\tfalse\tfalse\n", out)
  end)

  it("without the core or lua-cjson, require names both", function()
    local out = child("/nonexistent/?.so", 'require("optimizely.offline.input.ndjson")')
    assert.matches("neither the C core %(optimizely.offline.core%) nor lua%-cjson %(cjson.safe%)", out)
  end)
end)
