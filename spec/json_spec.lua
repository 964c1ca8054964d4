-- core.json_decode: strict RFC 8259 decoder, checked against cjson.
local core = require("optimizely.offline.core")
local cjson = require("cjson")
local decode = core.json_decode
local is54 = math.type ~= nil

-- deep equality, numbers by value (cjson gives floats where we give integers)
local function same(a, b, path)
  path = path or "$"
  if type(a) == "number" and type(b) == "number" then
    if a ~= a and b ~= b then return true end
    if a == b then return true end
    -- cjson rounds every number through a double; we keep int64 exact
    if math.type and math.type(a) ~= math.type(b) and a + 0.0 == b + 0.0 then return true end
    return false, path .. ": " .. tostring(a) .. " ~= " .. tostring(b)
  end
  if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
  if type(a) ~= "table" then
    if a == b then return true end
    return false, path .. ": " .. tostring(a) .. " ~= " .. tostring(b)
  end
  for k, v in pairs(a) do
    local ok, why = same(v, b[k], path .. "." .. tostring(k))
    if not ok then return false, why end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "." .. tostring(k) .. " missing" end
  end
  return true
end

local function assert_like_cjson(s)
  local ours, err = decode(s)
  assert(err == nil, "decode failed on " .. s .. ": " .. tostring(err))
  local ok, why = same(ours, cjson.decode(s))
  assert(ok, s .. " -> " .. tostring(why))
end

local function assert_error(s, pattern, depth)
  local v, err = decode(s, depth)
  assert.is_nil(v, "accepted: " .. s)
  assert.is_string(err)
  assert.matches("at character %d+$", err)
  if pattern then assert.matches(pattern, err, 1, true) end
  return err
end

describe("core.json_decode", function()
  it("decodes a corpus of valid documents like cjson", function()
    local corpus = {
      '{}', '[]', '""', '0', '-0', '1', '-1', '1.5', '-1.5e3', '1E2', '1e-2', '1e+2', '0.1',
      '123456789', '3.141592653589793', '2.2250738585072014e-308', '1.7976931348623157e308',
      '0.30000000000000004', '9007199254740993', '1234567890123456789012', '5e-324',
      '0.000001234', '123.456e-7', '1e22', '1e23', '4.35', '99999999999999999999.5',
      'true', 'false', '[true,false,null]', '  {"a" : 1 , "b" : [ 1 , 2 ] }  ',
      '{"order":{"refCode":"o1","total":12.5,"items":[{"refCode":"s1","qty":1,"price":12.5}]}}',
      '"\\" \\\\ \\/ \\b \\f \\n \\r \\t"', '"\\u0041\\u00e9\\u20ac\\ud83d\\ude00"',
      '"caf\195\169 \226\130\172 \240\159\152\128"', '[[[[[]]]]]', '[{},[],{"":""}]',
      '\t\r\n [1]\n', '{"a":{"b":{"c":{"d":[1,{"e":null}]}}}}', '"\\u0000x"',
      '[1,-2,3.25,-4e-1,' .. string.rep("7,", 200) .. '8]',
    }
    for _, s in ipairs(corpus) do assert_like_cjson(s) end
  end)

  it("decodes generated documents like cjson", function()
    local seed = 12345
    local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n end
    local function gen(depth)
      local k = rnd(depth > 2 and 4 or 7)
      if k == 0 then return tostring(rnd(100000) - 50000)
      elseif k == 1 then return ("%d.%de%d"):format(rnd(1000), rnd(1000), rnd(40) - 20)
      elseif k == 2 then return '"s\\n' .. rnd(1000) .. '\\u00e9\\ud83d\\ude00\\"x"'
      elseif k == 3 then return ({ "true", "false", "null" })[rnd(3) + 1]
      elseif k == 4 then
        local t = {}
        for i = 1, rnd(12) do t[i] = gen(depth + 1) end
        return "[" .. table.concat(t, ",") .. "]"
      else
        local t = {}
        for i = 1, rnd(12) do t[i] = '"k' .. rnd(50) .. '":' .. gen(depth + 1) end
        return "{" .. table.concat(t, ",") .. "}"
      end
    end
    for _ = 1, 500 do assert_like_cjson(gen(0)) end
  end)

  it("returns cjson.null for null, at the top and inside", function()
    assert.equal(cjson.null, decode("null"))
    assert.equal(cjson.null, decode('{"a":null}').a)
    assert.equal(cjson.null, decode('[null]')[1])
  end)

  it("gives integers for int64 integers and floats otherwise (5.3+)", function()
    if not is54 then
      assert.equal(42, decode("42"))
      return
    end
    assert.equal("integer", math.type(decode("42")))
    assert.equal("integer", math.type(decode("-7")))
    assert.equal(math.maxinteger, decode("9223372036854775807"))
    assert.equal(math.mininteger, decode("-9223372036854775808"))
    assert.equal("float", math.type(decode("9223372036854775808")))
    assert.equal("float", math.type(decode("1.0")))
    assert.equal("float", math.type(decode("1e2")))
    assert.equal(100.0, decode("1e2"))
    -- -0 keeps its sign, as a float
    assert.equal("float", math.type(decode("-0")))
    assert.equal(-math.huge, 1 / decode("-0"))
  end)

  it("converts numbers exactly like strtod", function()
    for _, s in ipairs({ "0.1", "0.7", "12.34", "1e-7", "123456789012345.6", "8.98846567431158e307",
                         "4.9406564584124654e-324", "1.00000000000000011102230246251565", "1e400" }) do
      assert.equal(tonumber(s), decode(s), s)
    end
  end)

  it("decodes unicode escapes and surrogate pairs to UTF-8", function()
    assert.equal("A", decode('"\\u0041"'))
    assert.equal("\195\169", decode('"\\u00E9"'))
    assert.equal("\226\130\172", decode('"\\u20ac"'))
    assert.equal("\240\159\152\128", decode('"\\ud83d\\ude00"'))
    assert.equal("\244\143\191\191", decode('"\\udbff\\udfff"'))
    assert.equal("a\0b", decode('"a\\u0000b"'))
    local long = string.rep("x", 1000) .. "\\n" .. string.rep("y", 1000)
    assert.equal(string.rep("x", 1000) .. "\n" .. string.rep("y", 1000), decode('"' .. long .. '"'))
  end)

  describe("refuses", function()
    it("lone and broken surrogates", function()
      assert_error('"\\ud800"', "surrogate")
      assert_error('"\\udc00"', "surrogate")
      assert_error('"\\ud800\\u0041"', "surrogate")
      assert_error('"\\ud800x"', "surrogate")
      assert_error('"\\ud83d\\ud83d"', "surrogate")
    end)

    it("bad escapes", function()
      assert_error('"\\x"', "Invalid escape")
      assert_error('"\\u12"', "Invalid unicode escape")
      assert_error('"\\u12g4"', "Invalid unicode escape")
      assert_error('"\\', "Unterminated string")
      assert_error('"abc\\"', "Unterminated string")
    end)

    it("invalid UTF-8 and raw control characters in strings", function()
      for _, bad in ipairs({ "\128", "\192\128", "\193\191", "\224\128\128", "\237\160\128",
                             "\244\144\128\128", "\245\128\128\128", "\255", "\195", "\226\130" }) do
        assert_error('"a' .. bad .. 'b"', "Invalid UTF-8")
        assert_error('"a' .. bad .. '\\n"', "Invalid UTF-8")
      end
      assert_error('"a\nb"', "Control character")
      assert_error('"a\tb"', "Control character")
      assert_error('"a\0b"', "Control character")
      assert_error('"\31"', "Control character")
    end)

    it("numbers outside the JSON grammar", function()
      for _, s in ipairs({ "NaN", "Infinity", "-Infinity", "0x10", "+1", "01", "-01", "1.", ".5",
                           "1e", "1e+", "-", "1.e3", "--1", "0x", "inf", "nan" }) do
        assert_error(s)
        assert_error('{"t":' .. s .. '}')
      end
    end)

    it("bad literals, structure and trailing garbage", function()
      assert_error("", "Expected value but found the end at character 1")
      assert_error("   ", "Expected value")
      assert_error("tru", "Expected value")
      assert_error("nul", "Expected value")
      assert_error("True", "Expected value")
      assert_error("[1,2", "Expected comma or array end but found the end at character 5")
      assert_error("[1,]", "Expected value but found ']' at character 4")
      assert_error('{"a":1,}', "Expected object key string but found '}'")
      assert_error('{"a" 1}', "Expected colon")
      assert_error("{a:1}", "Expected object key string")
      assert_error('{"a":1 "b":2}', "Expected comma or object end")
      assert_error("[1] x", "Expected the end but found 'x' at character 5")
      assert_error("{} {}", "Expected the end")
      assert_error("1 2", "Expected the end")
      assert_error("[1]\0", "Expected the end but found byte 0x00")
      assert_error('"abc', "Unterminated string at character 1")
      assert_error("{", "Expected object key string")
      assert_error("[", "Expected value")
      assert_error("\239\187\191{}", "Expected value") -- the reader strips BOMs, not the decoder
    end)

    it("nesting deeper than the limit, without overflowing the C stack", function()
      assert.is_table(decode(string.rep("[", 64) .. string.rep("]", 64)))
      assert_error(string.rep("[", 65) .. string.rep("]", 65), "too many nested")
      assert_error(string.rep('{"a":', 65) .. "1" .. string.rep("}", 65), "too many nested")
      assert_error(string.rep("[", 100000), "too many nested")
      assert.is_table(decode(string.rep("[", 1000) .. string.rep("]", 1000), 1000))
      assert_error(string.rep("[", 1001) .. string.rep("]", 1001), "too many nested")
      assert_error("[[1]]", "too many nested", 1)
      assert.is_nil(decode("[[]]", 1))
      assert.is_table(decode("[]", 1))
    end)
  end)

  it("raises only for programmer errors", function()
    assert.has_error(function() decode() end)
    assert.has_error(function() decode({}) end)
    assert.has_error(function() decode("1", 0) end)
    assert.has_error(function() decode("1", 1001) end)
  end)

  it("lets the last duplicate key win, in batches and beyond", function()
    assert.equal(2, decode('{"a":1,"a":2}').a)
    local parts = {}
    for i = 1, 100 do parts[i] = ('"k%d":%d'):format(i % 40, i) end
    local t = decode("{" .. table.concat(parts, ",") .. "}")
    for k = 0, 39 do
      local last
      for i = 1, 100 do if i % 40 == k then last = i end end
      assert.equal(last, t["k" .. k])
    end
  end)

  it("decodes big documents: long arrays, wide objects, long strings", function()
    local n = 100000
    local parts = {}
    for i = 1, n do parts[i] = tostring(i) end
    local a = decode("[" .. table.concat(parts, ",") .. "]")
    assert.equal(n, #a)
    for i = 1, n, 997 do assert.equal(i, a[i]) end
    assert.equal(n, a[n])
    for i = 1, n do parts[i] = ('"key%d":[%d,"v%d"]'):format(i, i, i) end
    local o = decode("{" .. table.concat(parts, ",") .. "}")
    local count = 0
    for k, v in pairs(o) do
      count = count + 1
      assert.equal(k, "key" .. v[1])
    end
    assert.equal(n, count)
    local s = string.rep("abc\\\"", 200000)
    assert.equal(string.rep('abc"', 200000), decode('"' .. s .. '"'))
    for _, len in ipairs({ 0, 1, 63, 64, 65, 127, 128, 129 }) do
      local arr = decode("[" .. string.rep("1,", len) .. "2]")
      assert.equal(len + 1, #arr)
    end
  end)

  it("never raises or crashes on truncated or mutated documents", function()
    local doc = '{"lang":"en-gb","user":{"id":"c\\u00e9"},"order":{"refCode":"o-1","total":12.50,'
      .. '"items":[{"refCode":"s","qty":1,"price":-1.5e2}],"x":[true,false,null]}}'
    for i = 0, #doc do
      local v, err = decode(doc:sub(1, i))
      assert(v ~= nil or type(err) == "string")
    end
    for i = 1, #doc do
      for _, c in ipairs({ "\0", "\"", "\\", "{", "]", ",", "\255", "e", "-" }) do
        local v, err = decode(doc:sub(1, i - 1) .. c .. doc:sub(i + 1))
        assert(v ~= nil or type(err) == "string")
      end
    end
  end)
end)

describe("the NDJSON reader on core.json_decode", function()
  local input = require("optimizely.offline.input")
  local function read(content)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
    local out = {}
    for rec in assert(input.open(path, { format = "ndjson" })) do out[#out + 1] = rec end
    os.remove(path)
    return out
  end

  it("reports lone surrogates as invalid JSON lines, and goes on", function()
    local recs = read('{"a":"\\ud800"}\n{"a":"caf\195\169"}\n')
    assert.matches(":1: invalid JSON: Invalid unicode escape code", recs[1].error, 1, true)
    assert.equal('{"a":"\\ud800"}', recs[1].raw)
    assert.equal("caf\195\169", recs[2].payload.a)
  end)

  it("stops at a line that is not UTF-8, naming it and the --input-encoding option", function()
    local recs = read('{"a":"caf\195\169"}\n{"a":"\255"}\n{"a":"b"}\n')
    assert.equal("caf\195\169", recs[1].payload.a)
    assert.matches(":2: not UTF-8 text", recs[2].error, 1, true)
    assert.matches("--input-encoding", recs[2].error, 1, true)
    assert.is_nil(recs[3])
  end)

  it("keeps cjson's nesting limit of 1000 for lines", function()
    local recs = read('{"a":' .. string.rep("[", 999) .. string.rep("]", 999) .. "}\n"
      .. '{"a":' .. string.rep("[", 1000) .. string.rep("]", 1000) .. "}\n")
    assert.is_table(recs[1].payload)
    assert.matches(":2: invalid JSON: Found too many nested data structures", recs[2].error, 1, true)
  end)

  it("gives integers for integral numbers (5.3+), as the core expects", function()
    local recs = read('{"qty":2,"price":12.50}\n')
    assert.equal(2, recs[1].payload.qty)
    if math.type then assert.equal("integer", math.type(recs[1].payload.qty)) end
    assert.equal(12.5, recs[1].payload.price)
  end)
end)
