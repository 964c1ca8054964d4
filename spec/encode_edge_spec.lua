-- Hostile input for offline.encode / offline.validate: junk values in every
-- position, till/CSV leftovers, absurd sizes, metatables that bite.
-- The rule under test: never a raise, never a crash, a problem naming the place.
local offline = require("optimizely.offline")
local cjson = require("cjson")
local O = require("support.orders")

local function run(p)
  local ok, a, b = pcall(offline.encode, p)
  assert(ok, "encode raised: " .. tostring(a))
  local vok, va, vb = pcall(offline.validate, p)
  assert(vok, "validate raised: " .. tostring(va))
  assert((a == nil) == (va == nil), "encode and validate disagree")
  if a == nil then assert.same(O.paths(b), O.paths(vb)) end
  return a, b
end

local function accepts(p)
  local json, w = run(p)
  assert(type(json) == "string", "expected acceptance, got problems " .. O.show(w))
  return json, w, cjson.decode(json)
end

-- Rejected with at least one problem at or below `prefix` (exact match when exact=true).
local function rejects(p, prefix, exact)
  local json, err = run(p)
  assert(json == nil, "expected a problem at " .. tostring(prefix) .. ", got JSON " .. tostring(json))
  assert.equal("validation", err.kind)
  assert.is_true(#err.problems >= 1)
  assert.is_string(tostring(err))
  if prefix then
    local hit = exact and O.find(err, prefix) or O.find_under(err, prefix)
    assert(hit, "expected a problem at '" .. prefix .. "', got " .. O.show(err))
  end
  return err
end

local has_ffi, ffi = pcall(require, "ffi")
if not (jit and has_ffi) then ffi = nil end

-- A metatable whose every metamethod raises: the encoder must not call any of them.
local function biting_mt()
  local function boom() error("metamethod called", 0) end
  return {
    __index = boom, __newindex = boom, __len = boom, __pairs = boom, __ipairs = boom,
    __call = boom, __tostring = boom, __eq = boom, __lt = boom, __le = boom, __concat = boom,
    __name = "Biting", __metatable = "locked",
  }
end

-- name -> function(original value at the location) -> junk value
local junk = {
  { "a function", function() return function() end end },
  { "a coroutine", function() return coroutine.create(function() end) end },
  { "a userdata (io.stdout)", function() return io.stdout end },
  { "cjson.null", function() return cjson.null end },
  { "NaN", function() return 0 / 0 end },
  { "+inf", function() return math.huge end },
  { "-inf", function() return -math.huge end },
  { "1e300", function() return 1e300 end },
  { "a cyclic table", function() local t = {}; t.self = t; t[1] = t; return t end },
  { "a table with an empty metatable", function(orig)
    return setmetatable(type(orig) == "table" and O.copy(orig) or {}, {})
  end },
  { "a table with a biting metatable", function(orig)
    return setmetatable(type(orig) == "table" and O.copy(orig) or {}, biting_mt())
  end },
}
if newproxy then
  junk[#junk + 1] = { "a newproxy userdata", function() return newproxy(true) end }
end
if ffi then
  junk[#junk + 1] = { "an ffi cdata int64", function() return ffi.new("int64_t", 5) end }
  junk[#junk + 1] = { "an ffi cdata struct", function() return ffi.new("struct { int a; }") end }
end

local locations = {
  "lang", "user", "user.id", "user.email", "user.segments", "user.segments[1]", "user.info", "user.info.gender",
  "order", "order.refCode", "order.orderDate", "order.customerId", "order.currency", "order.shipping",
  "order.subTotal", "order.total", "order.items", "order.items[1]", "order.items[2].refCode",
  "order.items[2].qty", "order.items[2].price", "order.items[2].attributes",
  "order.items[2].attributes.attr21", "order.attributes", "order.attributes.store",
}

describe("junk in every position", function()
  for _, loc in ipairs(locations) do
    for _, j in ipairs(junk) do
      it(j[1] .. " at " .. loc .. " is a problem there", function()
        local p = O.base()
        if loc:find("^user%.segments") then p.user.segments = { "s1" } end
        local v = j[2](O.get(p, loc))
        O.set(p, loc, v)
        rejects(p, loc)
      end)
    end
  end

  for _, j in ipairs(junk) do
    if j[1]:find("table") then
      it(j[1] .. " as the whole payload is rejected", function()
        local err = rejects(j[2](O.base()))
        assert.is_true(#err.problems >= 1)
      end)
    end
  end

  it("a payload with the biting metatable but valid content is a top-level problem", function()
    local err = rejects(setmetatable(O.base(), biting_mt()))
    local top = false
    for _, p in ipairs(err.problems) do if O.is_top(p.path) then top = true end end
    assert.is_true(top, O.show(err))
  end)

  it("a payload referring to itself is rejected, not looped on", function()
    local p = O.base()
    p.order.attributes.self = p
    p.user.info.loop = p.user
    p.self = p
    local err = rejects(p)
    assert.truthy(O.find(err, "order.attributes.self"), O.show(err))
    assert.truthy(O.find(err, "user.info.loop"), O.show(err))
  end)

  it("user = the order table (a wrong table, not a cycle) is rejected with problems under user", function()
    local p = O.base()
    p.user = p.order
    rejects(p, "user")
  end)

  it("an order whose __index would supply the fields is still missing them", function()
    local p = O.base()
    p.order = setmetatable({}, { __index = O.base().order })
    rejects(p, "order")
  end)
end)

describe("junk keys in fixed-schema tables", function()
  local keyjunk = {
    { "true", true }, { "1", 1 }, { "1.5", 1.5 }, { "a table", {} }, { "a function", print },
  }
  for _, where in ipairs({ "", "user", "order", "order.items[1]" }) do
    for _, k in ipairs(keyjunk) do
      it("a key of " .. k[1] .. " in " .. (where == "" and "the payload" or where) .. " is a problem", function()
        local p = O.base()
        local t = where == "" and p or O.get(p, where)
        t[k[2]] = "x"
        rejects(p, where ~= "" and where or nil)
      end)
    end
  end

  it("a key of 1.5 in a free map is a problem", function()
    rejects(O.with("order.attributes", { [1.5] = "x" }), "order.attributes")
  end)

  it("a boolean key in a free map is a problem", function()
    rejects(O.with("user.info", { [true] = "x" }), "user.info")
  end)
end)

describe("empty and half-empty tables", function()
  it("order = {} names every required field, in spec order", function()
    local err = rejects(O.with("order", {}))
    assert.same({ "order.refCode", "order.orderDate", "order.currency", "order.total", "order.items" }, O.paths(err))
  end)

  it("an empty item names refCode, qty and price, in that order", function()
    local err = rejects(O.with("order.items[2]", {}))
    assert.same({ "order.items[2].refCode", "order.items[2].qty", "order.items[2].price" }, O.paths(err))
  end)

  it("an item written as a positional array is a problem under that item", function()
    rejects(O.with("order.items[1]", { "ref1", 1, 50 }), "order.items[1]")
  end)

  it("an empty map in attributes is accepted", function()
    local _, _, t = accepts(O.with("order.attributes", {}))
    assert.truthy(t.order)
  end)
end)

describe("till/CSV leftovers", function()
  describe("money strings", function()
    local bad = {
      "1.234,56", "12,50", "12.50 GBP", "GBP 12.50", "$3", "12.50\226\130\172", "(12.50)", "12.50-",
      "1 234.56", "1'234.56", "\217\161\217\162", "\239\188\145\239\188\146", "12\r", "12\n",
      "12\0", "\239\187\19112", "NaN", "Infinity", "+5", "-0", "0x1A", "1_000", "  ", "12..5", ".",
      "1e-2", "1E2", "12.5.", "12\194\160", "1" .. string.rep("0", 400),
    }
    for _, v in ipairs(bad) do
      it(string.format("total %q is a problem", v), function()
        rejects(O.with("order.total", v), "order.total", true)
      end)
    end

    it("a 10,000-character money string is a problem", function()
      rejects(O.with("order.items[1].price", string.rep("9", 10000)), "order.items[1].price", true)
    end)

    it("-0.0 is zero and is written without a sign", function()
      local json = accepts(O.with("order.shipping", -0.0))
      assert.equal("0.00", O.number_text(json, { "order", "shipping" }))
    end)

    it("\"0.000\" is 0.00 and \"007.5\"-style padding is not needed to accept \"7.5\"", function()
      assert.equal("0.00", O.number_text(accepts(O.with("order.shipping", "0.000")), { "order", "shipping" }))
      assert.equal("7.50", O.number_text(accepts(O.with("order.shipping", "7.5")), { "order", "shipping" }))
    end)

    it("0.124999999 rounds down to 0.12", function()
      assert.equal("0.12", O.number_text(accepts(O.with("order.shipping", 0.124999999)), { "order", "shipping" }))
    end)

    it("CLF carries 4 decimals (an ISO 4217 fund code)", function()
      local json = accepts(O.with("order.currency", "CLF", "order.total", "7.00005"))
      assert.equal("7.0001", O.number_text(json, { "order", "total" }))
    end)
  end)

  describe("qty strings", function()
    for _, v in ipairs({ " 2", "2 ", "+2", "2\r", "0x2", "\239\188\146", "2\0", "99999999999999999999999" }) do
      it(string.format("qty %q is a problem", v), function()
        rejects(O.with("order.items[1].qty", v), "order.items[1].qty", true)
      end)
    end
  end)

  describe("currency strings", function()
    for _, v in ipairs({ "GBP\r", "\239\187\191GBP", "GBP\0", "\239\188\167\239\188\162\239\188\176",
      "G\226\128\139BP", "gbp ", "\"GBP\"" }) do
      it(string.format("currency %q is a problem", v), function()
        rejects(O.with("order.currency", v), "order.currency", true)
      end)
    end
  end)

  describe("date strings", function()
    for _, v in ipairs({
      "2016-05-16T14:25:00 GMT\r", " 2016-05-16T14:25:00 GMT", "2016-05-16T14:25:00  GMT",
      "2016-05-16T14:25:00", "2016-05-16T14:25:00,000Z", "05/16/2016 2:25 PM", "2016-05-16T14:25:00 GMT+1",
      "1463408700", "2016-05-16T14:25:00\0 GMT", "2016-05-16T14:25:00ZZ", "2016-05-16T14:25:00+2",
      "2016-05-16T14:25:00 GMTX", "2016-05-16 14:25:00 GMT extra", "2016-05-16T14:25:60Z",
    }) do
      it(string.format("orderDate %q is a problem", v), function()
        rejects(O.with("order.orderDate", v), "order.orderDate", true)
      end)
    end
  end)

  describe("lang strings", function()
    for _, v in ipairs({ "en-GB\r", "\239\187\191en-gb", "en-gb\0", "en.gb", "en gb" }) do
      it(string.format("lang %q is a problem", v), function()
        rejects(O.with("lang", v), "lang", true)
      end)
    end
  end)

  it("whitespace-only identifiers are refused as blank (a CSV cell of spaces is not an id)", function()
    for _, path in ipairs({ "order.refCode", "order.items[1].refCode", "order.customerId", "user.id" }) do
      local err = rejects(O.with(path, "   "), path, true)
      assert.truthy(tostring(err):find("blank", 1, true), tostring(err))
    end
    rejects(O.with("user.segments", { " " }), "user.segments[1]", true)
  end)

  describe("refCodes that are odd but legal strings round-trip", function()
    for _, v in ipairs({ '"ref1"', "=HYPERLINK(\"x\")", "ref1\r", "ref,1", "ref;1\t", "'0012", "a\\b" }) do
      it(string.format("%q", v), function()
        local _, _, t = accepts(O.with("order.items[1].refCode", v, "order.refCode", v))
        assert.equal(v, t.order.items[1].refCode)
        assert.equal(v, t.order.refCode)
      end)
    end
  end)

  describe("whole numbers given as floats", function()
    it("refCode 12345.0 is \"12345\"", function()
      local _, _, t = accepts(O.with("order.refCode", 12345.0))
      assert.equal("12345", t.order.refCode)
    end)

    it("refCode 0 is \"0\"", function()
      local _, _, t = accepts(O.with("order.refCode", 0))
      assert.equal("0", t.order.refCode)
    end)

    it("info value 12.0 is \"12\" (same text as in LuaJIT)", function()
      local _, _, t = accepts(O.with("user.info.n", 12.0))
      assert.equal("12", t.user.info.n)
    end)
  end)
end)

describe("map key sorting is by bytes, with length", function()
  it("orders keys that share a prefix or contain NUL", function()
    local json = accepts(O.with("order.attributes", { ab = "1", a = "2", ["a\0b"] = "3", ["a\0"] = "4", b = "5" }))
    assert.same({ "a", "a\0", "a\0b", "ab", "b" }, O.keys_at(json, { "order", "attributes" }))
  end)

  it("orders bytes above 0x7F after ASCII (unsigned compare)", function()
    local json = accepts(O.with("order.attributes",
      { ["\195\169"] = "1", z = "2", ["\240\159\152\128"] = "3", ["~"] = "4" }))
    assert.same({ "z", "~", "\195\169", "\240\159\152\128" }, O.keys_at(json, { "order", "attributes" }))
  end)

  it("keys with quotes and control characters round-trip", function()
    local m = { ['say "hi"'] = "1", ["tab\there"] = "2", ["nl\n"] = "3", ["back\\slash"] = "4" }
    local _, _, t = accepts(O.with("order.attributes", m))
    assert.same(m, t.order.attributes)
  end)
end)

describe("shared (non-cyclic) tables", function()
  it("the same attributes table in two items is fine", function()
    local p = O.base()
    local shared = { colour = "red" }
    p.order.items[1].attributes = shared
    p.order.items[2].attributes = shared
    local _, _, t = accepts(p)
    assert.equal("red", t.order.items[1].attributes.colour)
    assert.equal("red", t.order.items[2].attributes.colour)
  end)

  it("the same item table twice is two items", function()
    local p = O.base()
    local it1 = p.order.items[1]
    p.order.items = { it1, it1 }
    p.order.subTotal, p.order.total = 100, 110
    local json, w, t = accepts(p)
    assert.equal(2, #t.order.items)
    assert.equal(0, #w, O.show(w))
    assert.truthy(json)
  end)
end)

describe("absurd sizes are problems, not crashes", function()
  local big -- one 10 MB string, reused
  setup(function() big = string.rep("x", 10 * 1024 * 1024) end)
  teardown(function() big = nil; collectgarbage() end)

  for _, loc in ipairs({ "order.refCode", "order.items[1].refCode", "user.id", "order.attributes.store",
    "user.info.gender", "lang", "order.orderDate", "order.currency", "order.customerId", "user.segments[1]" }) do
    it("a 10 MB string at " .. loc, function()
      rejects(O.with(loc, big), loc, true)
    end)
  end

  it("a 10 MB money string", function()
    rejects(O.with("order.total", "1" .. string.rep("0", #big)), "order.total", true)
  end)

  it("a 10 MB map key", function()
    rejects(O.with("order.attributes", { [big] = "v" }), "order.attributes")
  end)

  it("100,000 items", function()
    local p = O.base()
    local item = { refCode = "r", qty = 1, price = 1 }
    for i = 1, 100000 do p.order.items[i] = item end
    local err = rejects(p, "order.items")
    assert.is_true(#err.problems < 1000, #err.problems .. " problems")
  end)

  it("100,000 attribute entries", function()
    local m = {}
    for i = 1, 100000 do m["k" .. i] = "v" end
    local err = rejects(O.with("order.attributes", m), "order.attributes")
    assert.is_true(#err.problems < 1000, #err.problems .. " problems")
  end)

  it("100,000 info entries", function()
    local m = {}
    for i = 1, 100000 do m["k" .. i] = "v" end
    rejects(O.with("user.info", m), "user.info")
  end)

  it("a value nested 100,000 tables deep", function()
    local deep = {}
    local cur = deep
    for _ = 1, 100000 do cur.x = {}; cur = cur.x end
    rejects(O.with("order.attributes.store", deep), "order.attributes.store", true)
    rejects(O.with("order.items[1]", deep), "order.items[1]")
  end)

  it("10,000 bad attribute values stay below a sane problem count", function()
    local m = {}
    for i = 1, 10000 do m[string.format("k%05d", i)] = {} end
    local err = rejects(O.with("order.attributes", m), "order.attributes")
    assert.is_true(#err.problems < 10000, #err.problems .. " problems")
  end)

  it("200 valid items are fine", function()
    local p = O.base()
    p.order.items = {}
    for i = 1, 200 do p.order.items[i] = { refCode = "r" .. i, qty = 1, price = "0.50" } end
    p.order.subTotal, p.order.shipping, p.order.total = 100, 0, 100
    local json, w, t = accepts(p)
    assert.equal(200, #t.order.items)
    assert.equal(0, #w, O.show(w))
    assert.truthy(json:find('"refCode":"r200"', 1, true))
  end)
end)

describe("calling conventions", function()
  it("encode() with no argument returns nil, err", function()
    local ok, json, err = pcall(offline.encode)
    assert.is_true(ok, tostring(json))
    assert.is_nil(json)
    assert.equal("validation", err.kind)
  end)

  it("validate() with no argument returns nil, err", function()
    local ok, res, err = pcall(offline.validate)
    assert.is_true(ok, tostring(res))
    assert.is_nil(res)
    assert.equal("validation", err.kind)
  end)

  it("works inside a coroutine", function()
    local json = coroutine.wrap(function() return offline.encode(O.base()) end)()
    assert.equal(O.BASE_JSON, json)
  end)

  it("survives a garbage collection between calls on big rejected input", function()
    for _ = 1, 3 do
      local p = O.base()
      for i = 1, 3000 do p.order.items[i] = { refCode = "", qty = "x", price = "y" } end
      local json, err = offline.encode(p)
      assert.is_nil(json)
      assert.is_true(#err.problems >= 1)
      collectgarbage()
    end
    assert.equal(O.BASE_JSON, (offline.encode(O.base())))
  end)
end)
