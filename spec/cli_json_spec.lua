-- core.json_encode: the JSON writer of the CLI's files (rejects lines, the
-- report), which replaced lua-cjson there. Its output is read back with the
-- project's strict decoder.
local core = require("optimizely.offline.core")
local rejects = require("optimizely.offline.cli.rejects")

local enc, dec = core.json_encode, core.json_decode

describe("core.json_encode", function()
  it("writes values as lua-cjson did: 14 significant digits, '/' as is, control characters escaped", function()
    assert.equal('{"a":19.9}', enc({ a = 19.9 }))
    assert.equal("0.3", enc(0.1 + 0.2))
    assert.equal("3.1415926535898", enc(math.pi))
    assert.equal('"a/b \\"q\\" \\\\ \\n\\t\\u0001\\u007f é"', enc('a/b "q" \\ \n\t\1\127 é'))
    assert.equal("true", enc(true))
    assert.equal("null", enc(nil))
    assert.equal("null", enc(dec("null")))
    assert.equal('[1,"x",false]', enc({ 1, "x", false }))
    assert.equal("{}", enc({}))
  end)

  it("integers exactly (where lua-cjson wrote 1.2345678901235e+15)", function()
    assert.equal("1234567890123456", enc(1234567890123456))
    if math.type then assert.equal("123456789012345678", enc(123456789012345678)) end -- Lua integers
    assert.equal("9007199254740992", enc(2 ^ 53))
    assert.equal("-42", enc(-42))
    assert.equal("0", enc(-0.0))
    assert.equal("1e+20", enc(1e20))
  end)

  it("keeps what the lenient lua-cjson kept: NaN and infinities as null, a sparse array as an object", function()
    assert.equal('{"n":null}', enc({ n = 0 / 0 }))
    assert.equal("[null,null]", enc({ math.huge, -math.huge }))
    assert.same({ ["1"] = "a", ["3"] = "c" }, dec(enc({ [1] = "a", [3] = "c" })))
    assert.same({ ["1"] = 1, x = 2 }, dec(enc({ 1, x = 2 })))
    assert.same({ ["1.5"] = true }, dec(enc({ [1.5] = true })))
  end)

  it("refuses what JSON cannot hold, with a message (the caller decides what to keep)", function()
    local s, e = enc({ f = print })
    assert.is_nil(s)
    assert.equal("cannot write a value of type function", e.message)
    s, e = enc({ [true] = 1 })
    assert.is_nil(s)
    assert.equal("cannot write a table key of type boolean", e.message)
    local t = {}
    t.self = t
    s, e = enc(t)
    assert.is_nil(s)
    assert.matches("nested more than 100 levels deep", e.message)
    s = enc(coroutine.create(function() end))
    assert.is_nil(s)
  end)

  it("sort, first and indent give a stable, readable report", function()
    local v = { b = 1, a = { z = 1, y = { 2, 1 } }, command = "send" }
    assert.equal('{"a":{"y":[2,1],"z":1},"b":1,"command":"send"}', enc(v, { sort = true }))
    assert.equal('{\n  "command": "send",\n  "a": {\n    "y": [2, 1],\n    "z": 1\n  },\n  "b": 1\n}',
      enc(v, { sort = true, first = { "command" }, indent = 2 }))
    -- what an array holds is compact, on its line
    assert.equal('{\n  "l": [{"a":1}, {"b":2}]\n}', enc({ l = { { a = 1 }, { b = 2 } } }, { indent = 2 }))
    assert.has_error(function() enc({}, { indent = 99 }) end)
  end)

  it("round-trips every payload the decoder reads", function()
    local line = '{"user":{"id":"u1","info":{"tier":"gold"}},'
      .. '"order":{"refCode":"A/1","orderDate":"2024-03-15T09:12:00 GMT",'
      .. '"currency":"GBP","total":12.5,"items":[{"refCode":"s1","qty":1,"price":12.5}],"attributes":{"note":"a\\nb"}}}'
    local v = assert(dec(line))
    assert.same(v, dec(enc(v)))
    assert.same(v, dec(enc(v, { sort = true, indent = 2 })))
  end)

  it("a rejects line keeps the error when the payload cannot be written", function()
    local path = os.tmpname()
    local w = rejects.new(path)
    w:add({ payload = { order = { refCode = "F", f = print } }, stage = "transform",
            rec = { file = "x.csv", line = 3 } }, "boom")
    w:close()
    local f = assert(io.open(path))
    local t = assert(dec(f:read("*l")))
    f:close()
    os.remove(path)
    assert.is_true(t.unserialisable)
    assert.is_nil(t.payload)
    assert.equal("x.csv:3", t.source)
    assert.equal("boom", t.error.message)
  end)
end)
