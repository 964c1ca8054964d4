-- Black-box rules of offline.encode / offline.validate, field by field.
-- Written from the contract (issue text + spec §3, §4, §7), not from csrc/.
local offline = require("optimizely.offline")
local cjson = require("cjson")
local O = require("support.orders")

-- encode + validate, asserting neither raises and both agree.
local function run(p)
  local ok, a, b = pcall(offline.encode, p)
  assert(ok, "encode raised: " .. tostring(a))
  local vok, va, vb = pcall(offline.validate, p)
  assert(vok, "validate raised: " .. tostring(va))
  if a == nil then
    assert(va == nil, "encode rejected but validate accepted")
    assert.same(O.paths(b), O.paths(vb))
  else
    assert(va == true, "encode accepted but validate rejected: " .. O.show(vb))
    assert.same(b, vb)
  end
  return a, b
end

local function accepts(p)
  local json, w = run(p)
  assert(type(json) == "string", "expected acceptance, got problems " .. O.show(w))
  assert.is_table(w)
  return json, w, cjson.decode(json)
end

local function rejects(p, path)
  local json, err = run(p)
  assert(json == nil, "expected a problem at " .. tostring(path) .. ", got JSON " .. tostring(json))
  assert.is_table(err)
  assert.equal("validation", err.kind)
  assert.is_true(#err.problems >= 1)
  if path then
    assert(O.find(err, path), "expected a problem at '" .. path .. "', got " .. O.show(err))
  end
  return err
end

local function no_warnings(w)
  assert(#w == 0, "expected no warnings, got " .. O.show(w))
end

local function top_problem(err)
  for _, p in ipairs(err.problems) do
    if O.is_top(p.path) then return p end
  end
end

describe("offline module", function()
  it("has a VERSION string", function()
    assert.is_string(offline.VERSION)
    assert.is_true(#offline.VERSION > 0)
  end)

  it("exposes encode and validate", function()
    assert.is_function(offline.encode)
    assert.is_function(offline.validate)
  end)
end)

describe("encode of the spec §4 example", function()
  it("produces the exact documented bytes", function()
    local json = accepts(O.base())
    assert.equal(O.BASE_JSON, json)
  end)

  it("gives an empty warnings list (totals agree, user has an id)", function()
    local _, w = accepts(O.base())
    no_warnings(w)
  end)

  it("round-trips through cjson to the normalised values", function()
    local _, _, t = accepts(O.base())
    assert.equal("en-gb", t.lang)
    assert.equal("abcd1234efgh", t.user.id)
    assert.equal("male", t.user.info.gender)
    assert.equal(100, t.order.total)
    assert.equal(2, #t.order.items)
    assert.equal("value21", t.order.items[2].attributes.attr21)
  end)

  it("is deterministic", function()
    local a = accepts(O.base())
    local b = accepts(O.base())
    assert.equal(a, b)
  end)

  it("does not modify the caller's table", function()
    local p = O.base()
    p.lang = "EN-GB"
    p.order.currency = "gbp"
    p.order.items[1].qty = "1"
    local before = O.copy(p)
    accepts(p)
    assert.same(before, p)
  end)

  it("produces the exact bytes for the §4 minimal payload", function()
    local json, w = accepts(O.minimal())
    assert.equal(O.MINIMAL_JSON, json)
    no_warnings(w)
  end)

  it("validate returns true and the same (empty) warnings", function()
    local ok, w = offline.validate(O.base())
    assert.is_true(ok)
    assert.same({}, w)
  end)
end)

describe("error and warning objects", function()
  it("err has kind, problems with string path and message", function()
    local err = rejects(O.with("order.total", -1), "order.total")
    for _, p in ipairs(err.problems) do
      assert.is_string(p.path)
      assert.is_string(p.message)
      assert.is_true(#p.message > 0)
    end
  end)

  it("tostring(err) lists every problem as 'path: message'", function()
    local err = rejects(O.with("order.total", -1, "order.items[2].qty", 0, "lang", "en_GB"))
    local s = tostring(err)
    assert.is_true(#err.problems >= 3)
    for _, p in ipairs(err.problems) do
      assert.truthy(s:find(p.path .. ": " .. p.message, 1, true), "missing in tostring: " .. p.path)
    end
  end)

  it("warnings are {path=, message=} tables", function()
    local _, w = accepts(O.with("user", { email = "a@b.com" }))
    assert.is_true(#w >= 1)
    for _, x in ipairs(w) do
      assert.is_string(x.path)
      assert.is_string(x.message)
    end
  end)
end)

describe("top level", function()
  local nonsense = {
    ["nil"] = nil, string = "order", number = 42, boolean = true,
    ["function"] = print, coroutine = coroutine.create(function() end),
    userdata = io.stdout, ["cjson.null"] = cjson.null,
  }
  for _, name in ipairs({ "nil", "string", "number", "boolean", "function", "coroutine", "userdata", "cjson.null" }) do
    it("rejects a " .. name .. " payload with a top-level problem", function()
      local err = rejects(nonsense[name])
      assert(top_problem(err), "expected a problem with path '' or 'payload', got " .. O.show(err))
    end)
  end

  it("rejects {} with a problem at order", function()
    rejects({}, "order")
  end)

  it("rejects an unknown top-level key, naming it", function()
    local err = rejects(O.with("foo", 1), "foo")
    assert.truthy(O.find(err, "foo").message:find("unknown field", 1, true))
  end)

  it("suggests the right spelling for a case slip at the top (Lang)", function()
    local err = rejects(O.with("Lang", "en"), "Lang")
    assert.truthy(O.find(err, "Lang").message:find("lang", 1, true))
  end)

  it("rejects a non-table order", function()
    rejects(O.with("order", "x"), "order")
  end)

  it("rejects a missing order", function()
    rejects(O.without("order"), "order")
  end)

  it("writes top-level keys in spec order: lang, user, order", function()
    assert.same({ "lang", "user", "order" }, O.keys_at(accepts(O.base())))
  end)
end)

describe("lang", function()
  local good = {
    { "en-gb", "en-gb" }, { "EN-GB", "en-gb" }, { "Sv-SE", "sv-se" }, { "sv", "sv" },
    { "agq", "agq" }, { "agq-CM", "agq-cm" }, { "ar-001", "ar-001" },
    { "az-Cyrl-AZ", "az-cyrl-az" }, { "zh-hant-tw", "zh-hant-tw" }, { "en-12345678", "en-12345678" },
  }
  for _, c in ipairs(good) do
    it("accepts " .. c[1] .. " as " .. c[2], function()
      local json, _, t = accepts(O.with("lang", c[1]))
      assert.equal(c[2], t.lang)
      assert.truthy(json:find('{"lang":"' .. c[2] .. '",', 1, true))
    end)
  end

  it("is omitted from the output when absent", function()
    local json = accepts(O.without("lang"))
    assert.falsy(json:find('"lang"', 1, true))
    assert.same({ "user", "order" }, O.keys_at(json))
  end)

  local bad = { "en_GB", "e", "english", "en-", "-en", "en-gb-", "en-a", "en-abcdefghi", "",
    " en", "en ", "1en", "enGB", "en--gb", "\195\169n", "en-g_b" }
  for _, v in ipairs(bad) do
    it(string.format("rejects %q", v), function()
      rejects(O.with("lang", v), "lang")
    end)
  end

  for _, v in ipairs({ 12, true, { "en" } }) do
    it("rejects a " .. type(v) .. " lang", function()
      rejects(O.with("lang", v), "lang")
    end)
  end
end)

describe("user", function()
  it("accepts an id alone without warnings", function()
    local json, w = accepts(O.with("user", { id = "u1" }))
    no_warnings(w)
    assert.truthy(json:find('"user":{"id":"u1"}', 1, true))
  end)

  it("warns (not fails) when user is absent, and omits it", function()
    local json, w = accepts(O.without("user"))
    assert.same({ "lang", "order" }, O.keys_at(json))
    assert.equal(1, #w, O.show(w))
    assert(w[1].path == "user" or O.is_top(w[1].path), "warning path: " .. tostring(w[1].path))
  end)

  it("rejects an empty user (no identifier)", function()
    rejects(O.with("user", {}), "user")
  end)

  it("rejects a user with info but no identifier", function()
    rejects(O.with("user", { info = { a = "b" } }), "user")
  end)

  it("rejects a string user", function()
    rejects(O.with("user", "abcd"), "user")
  end)

  it("rejects an empty id", function()
    rejects(O.with("user.id", ""), "user.id")
  end)

  it("rejects a numeric id (id must be a string)", function()
    rejects(O.with("user.id", 123), "user.id")
  end)

  it("rejects an unknown user key, naming it", function()
    local err = rejects(O.with("user.name", "Bob"), "user.name")
    assert.truthy(O.find(err, "user.name").message:find("unknown field", 1, true))
  end)

  describe("email", function()
    it("is accepted with a deprecation warning at user.email", function()
      local json, w, t = accepts(O.with("user", { email = "customer@email.com" }))
      assert.equal("customer@email.com", t.user.email)
      assert.truthy(O.find(w, "user.email"), O.show(w))
      assert.equal(1, #w, O.show(w))
      assert.truthy(json:find('"user":{"email":"customer@email.com"}', 1, true))
    end)

    it("is accepted next to an id (still warned)", function()
      local json, w = accepts(O.with("user.email", "a@b"))
      assert.truthy(O.find(w, "user.email"))
      assert.same({ "id", "email", "info" }, O.keys_at(json, { "user" }))
    end)

    for _, v in ipairs({ "ab", "@b.com", "a@", "a@@b.com", "a@b@c.com", "", "@" }) do
      it(string.format("rejects %q", v), function()
        rejects(O.with("user", { email = v }), "user.email")
      end)
    end

    it("rejects a non-string email", function()
      rejects(O.with("user", { email = 42 }), "user.email")
    end)

    it("rejects an invalid email even when an id is present", function()
      rejects(O.with("user.email", "nope"), "user.email")
    end)
  end)

  describe("segments", function()
    it("accepts a non-empty array of strings, in order, without warnings", function()
      local json, w, t = accepts(O.with("user", { segments = { "vip", "b2b" } }))
      no_warnings(w)
      assert.same({ "vip", "b2b" }, t.user.segments)
      assert.truthy(json:find('"segments":["vip","b2b"]', 1, true))
    end)

    it("rejects an empty array", function()
      rejects(O.with("user", { segments = {} }), "user.segments")
    end)

    it("rejects an empty string element, naming its index", function()
      rejects(O.with("user", { segments = { "a", "" } }), "user.segments[2]")
    end)

    it("rejects a non-string element, naming its index", function()
      rejects(O.with("user", { segments = { 5 } }), "user.segments[1]")
    end)

    it("rejects a string instead of an array", function()
      rejects(O.with("user", { segments = "vip" }), "user.segments")
    end)

    it("rejects an array with a hole", function()
      rejects(O.with("user", { segments = { "a", nil, "b" } }), "user.segments")
    end)

    it("rejects a map instead of an array", function()
      rejects(O.with("user", { segments = { x = "a" } }), "user.segments")
    end)
  end)

  it("writes user keys in spec order: id, email, segments, info", function()
    local json = accepts(O.with("user", { info = { k = "v" }, segments = { "s" }, email = "a@b", id = "i" }))
    assert.same({ "id", "email", "segments", "info" }, O.keys_at(json, { "user" }))
  end)

  describe("info", function()
    it("emits strings, numbers and booleans as strings", function()
      local json, _, t = accepts(O.with("user.info", { s = "x", n = 12, f = 0.5, b = true, c = false }))
      assert.same({ s = "x", n = "12", f = "0.5", b = "true", c = "false" }, t.user.info)
      assert.truthy(json:find('"info":{"b":"true","c":"false","f":"0.5","n":"12","s":"x"}', 1, true))
    end)

    it("sorts keys by byte order", function()
      local json = accepts(O.with("user.info", { b = "1", B = "2", a = "3", _ = "4", ["10"] = "5", ["9"] = "6" }))
      assert.same({ "10", "9", "B", "_", "a", "b" }, O.keys_at(json, { "user", "info" }))
    end)

    it("accepts any string keys, including field names of the schema", function()
      local _, _, t = accepts(O.with("user.info", { refCode = "r", total = "t", ["store name"] = "s" }))
      assert.equal("t", t.user.info.total)
      assert.equal("s", t.user.info["store name"])
    end)

    it("rejects a table value, naming the key", function()
      rejects(O.with("user.info", { diet = { "vegan" } }), "user.info.diet")
    end)

    it("rejects a numeric key", function()
      local err = rejects(O.with("user.info", { [1] = "x" }))
      assert.truthy(O.find_under(err, "user.info"), O.show(err))
    end)

    it("rejects an empty key", function()
      local err = rejects(O.with("user.info", { [""] = "x" }))
      assert.truthy(O.find_under(err, "user.info"), O.show(err))
    end)

    it("rejects a non-table info", function()
      rejects(O.with("user.info", "gender=male"), "user.info")
    end)
  end)
end)

describe("order", function()
  for _, f in ipairs({ "refCode", "orderDate", "currency", "total", "items" }) do
    it("requires " .. f, function()
      rejects(O.without("order." .. f), "order." .. f)
    end)
  end

  it("rejects order.subtotal with the documented suggestion", function()
    local p = O.without("order.subTotal")
    p.order.subtotal = 90
    local err = rejects(p, "order.subtotal")
    assert.truthy(tostring(err):find("order.subtotal: unknown field (did you mean subTotal?)", 1, true),
      tostring(err))
  end)

  it("suggests refCode for order.refcode", function()
    local p = O.base()
    p.order.refcode = p.order.refCode
    p.order.refCode = nil
    local err = rejects(p, "order.refcode")
    assert.truthy(O.find(err, "order.refcode").message:find("refCode", 1, true))
  end)

  it("rejects an unknown order key, naming it", function()
    rejects(O.with("order.channel", "store"), "order.channel")
  end)

  it("writes order keys in spec order", function()
    assert.same({ "refCode", "orderDate", "customerId", "currency", "shipping", "subTotal", "total", "items",
      "attributes" }, O.keys_at(accepts(O.base()), { "order" }))
  end)

  it("omits optional order fields that are absent", function()
    local json = accepts(O.without("order.customerId", "order.shipping", "order.subTotal", "order.attributes"))
    assert.same({ "refCode", "orderDate", "currency", "total", "items" }, O.keys_at(json, { "order" }))
  end)
end)

describe("refCode-like fields", function()
  for _, path in ipairs({ "order.refCode", "order.items[1].refCode", "order.customerId" }) do
    local keys = O.split(path)
    describe(path, function()
      it("keeps a string", function()
        local _, _, t = accepts(O.with(path, "ABC-123/x"))
        assert.equal("ABC-123/x", O.get(t, path))
      end)

      it("emits an integer as a string (12345 -> \"12345\")", function()
        local json, _, t = accepts(O.with(path, 12345))
        assert.equal("12345", O.get(t, path))
        assert.truthy(json:find('"' .. keys[#keys] .. '":"12345"', 1, true))
      end)

      it("rejects a fractional number (1.5)", function()
        rejects(O.with(path, 1.5), path)
      end)

      it("rejects an empty string", function()
        rejects(O.with(path, ""), path)
      end)

      it("rejects a boolean", function()
        rejects(O.with(path, true), path)
      end)

      it("rejects a table", function()
        rejects(O.with(path, { "x" }), path)
      end)
    end)
  end

  it("customerId is optional", function()
    local json = accepts(O.without("order.customerId"))
    assert.falsy(json:find('"customerId"', 1, true))
  end)
end)

describe("orderDate", function()
  local function date_of(v)
    local _, _, t = accepts(O.with("order.orderDate", v))
    return t.order.orderDate
  end

  local good = {
    { "2016-05-16T14:25:00 GMT", "2016-05-16T14:25:00 GMT" },
    { "2016-05-16T14:25:00 UTC", "2016-05-16T14:25:00 GMT" },
    { "2017-04-23T14:25 GMT", "2017-04-23T14:25:00 GMT" },
    { "2017-04-23T14:25 UTC", "2017-04-23T14:25:00 GMT" },
    { "2024-03-01T01:30:00+02:00", "2024-02-29T23:30:00 GMT" },
    { "2024-03-01T01:30:00Z", "2024-03-01T01:30:00 GMT" },
    { "2024-03-01T01:30:00.123Z", "2024-03-01T01:30:00 GMT" },
    { "2024-03-01T01:30:00.500+01:00", "2024-03-01T00:30:00 GMT" },
    { "2024-03-01T01:30:00-0530", "2024-03-01T07:00:00 GMT" },
    { "2024-03-01T01:30:00+0000", "2024-03-01T01:30:00 GMT" },
    { "2024-03-01T01:30:00+00:00", "2024-03-01T01:30:00 GMT" },
    { "2024-12-31T23:30:00-01:00", "2025-01-01T00:30:00 GMT" },
    { "2025-01-01T00:15:00+01:00", "2024-12-31T23:15:00 GMT" },
    { "2024-03-01 01:30:00", "2024-03-01T01:30:00 GMT" },
    { "2000-02-29T12:00:00 GMT", "2000-02-29T12:00:00 GMT" },
    { "2024-02-29T23:59:59Z", "2024-02-29T23:59:59 GMT" },
  }
  for _, c in ipairs(good) do
    it("accepts " .. c[1] .. " as " .. c[2], function()
      assert.equal(c[2], date_of(c[1]))
    end)
  end

  it("accepts epoch 0 as 1970-01-01T00:00:00 GMT", function()
    assert.equal("1970-01-01T00:00:00 GMT", date_of(0))
  end)

  it("accepts epoch seconds (1463408700)", function()
    assert.equal("2016-05-16T14:25:00 GMT", date_of(1463408700))
  end)

  it("accepts epoch seconds given as a float (1463408700.0)", function()
    assert.equal("2016-05-16T14:25:00 GMT", date_of(1463408700.0))
  end)

  it("emits the date as a string in the documented place", function()
    local json = accepts(O.with("order.orderDate", "2024-03-01T01:30:00+02:00"))
    assert.truthy(json:find('"orderDate":"2024-02-29T23:30:00 GMT"', 1, true))
  end)

  local bad = {
    "2023-02-29T00:00:00 GMT", -- not a leap year
    "1900-02-29T00:00:00 GMT", -- century, not a leap year
    "2024-02-30T00:00:00 GMT",
    "2024-04-31T00:00:00 GMT",
    "2024-01-01T24:00:00 GMT",
    "2024-01-01T23:60:00 GMT",
    "2024-13-01T00:00:00 GMT",
    "2024-00-10T00:00:00 GMT",
    "2024-01-00T00:00:00 GMT",
    "2024-01-01T25:00:00Z",
    "2023-02-29 10:00:00",
    "2016-05-16T14:25:00 EST",
    "2016-5-16T14:25:00 GMT",
    "16/05/2016 14:25",
    "2016-05-16",
    "yesterday",
    "",
  }
  for _, v in ipairs(bad) do
    it(string.format("rejects %q", v), function()
      rejects(O.with("order.orderDate", v), "order.orderDate")
    end)
  end

  for _, v in ipairs({ true, { 2016, 5, 16 } }) do
    it("rejects a " .. type(v), function()
      rejects(O.with("order.orderDate", v), "order.orderDate")
    end)
  end

  it("rejects NaN and infinite epochs", function()
    rejects(O.with("order.orderDate", 0 / 0), "order.orderDate")
    rejects(O.with("order.orderDate", math.huge), "order.orderDate")
    rejects(O.with("order.orderDate", -math.huge), "order.orderDate")
  end)

  it("rejects an absurd epoch (1e300)", function()
    rejects(O.with("order.orderDate", 1e300), "order.orderDate")
  end)

  describe("in the future", function()
    local function gmt(t) return os.date("!%Y-%m-%dT%H:%M:%S GMT", t) end

    it("rejects an order dated more than a day ahead, in every form, saying why", function()
      local later = os.time() + 86400 + 3600
      for _, v in ipairs({ later, gmt(later), os.date("!%Y-%m-%d %H:%M:%S", later), "2999-01-01T00:00:00Z" }) do
        local err = rejects(O.with("order.orderDate", v), "order.orderDate")
        local p = O.find(err, "order.orderDate")
        assert.matches("must not be more than a day in the future", p.message)
        assert.matches("day and the month swapped", p.message)
        assert.matches(", got ", p.message)
      end
    end)

    it("accepts one up to a day ahead (a till clock or a zone a little off), and now", function()
      local soon = os.time() + 86400 - 120
      assert.equal(gmt(soon), date_of(soon))
      assert.equal(gmt(soon), date_of(gmt(soon)))
      assert.equal(gmt(os.time()), date_of(os.time()))
    end)

    it("validate says the same as encode (one rule)", function()
      local ok, err = offline.validate(O.with("order.orderDate", os.time() + 3 * 86400))
      assert.is_nil(ok)
      assert.matches("more than a day in the future", tostring(err))
    end)
  end)

  describe("core.order_time", function()
    local core = require("optimizely.offline.core")

    it("reads a date as the encoder does: every accepted form, epoch seconds", function()
      assert.equal(1463408700, core.order_time("2016-05-16T14:25:00 GMT"))
      assert.equal(1709256600, core.order_time("2024-03-01T01:30:00Z"))
      assert.equal(1709249400, core.order_time("2024-03-01T01:30:00+02:00"))
      assert.equal(1709256600, core.order_time("2024-03-01 01:30:00"))
      assert.equal(1463408700, core.order_time(1463408700.5))
    end)

    it("is nil for what the encoder would refuse to read", function()
      for _, v in ipairs({ "16/05/2016 14:25", "2023-02-29T00:00:00 GMT", "", 0 / 0, 1e300, -1, true, {}, nil }) do
        assert.is_nil(core.order_time(v), tostring(v))
      end
    end)
  end)
end)

describe("currency", function()
  for _, c in ipairs({ { "GBP", "GBP" }, { "gbp", "GBP" }, { "Gbp", "GBP" }, { "usd", "USD" },
    { "EUR", "EUR" }, { "sek", "SEK" }, { "CHF", "CHF" }, { "jpy", "JPY" }, { "bhd", "BHD" } }) do
    it("accepts " .. c[1] .. " as " .. c[2], function()
      local json, _, t = accepts(O.with("order.currency", c[1]))
      assert.equal(c[2], t.order.currency)
      assert.truthy(json:find('"currency":"' .. c[2] .. '"', 1, true))
    end)
  end

  for _, v in ipairs({ "XYZ", "\194\163", "GB", "GBPX", "", " GBP", "GBP ", "G B", "123", "ABC" }) do
    it(string.format("rejects %q", v), function()
      rejects(O.with("order.currency", v), "order.currency")
    end)
  end

  it("rejects a number", function()
    rejects(O.with("order.currency", 826), "order.currency")
  end)

  -- The minor unit fixes how many decimals every money field carries.
  local units = {
    GBP = 2, USD = 2, EUR = 2, CHF = 2, SEK = 2, NOK = 2, DKK = 2,
    JPY = 0, KRW = 0, ISK = 0, CLP = 0, VND = 0, PYG = 0, UGX = 0, XOF = 0, XAF = 0,
    BHD = 3, KWD = 3, OMR = 3, JOD = 3, TND = 3, IQD = 3, LYD = 3,
  }
  local codes = {}
  for k in pairs(units) do codes[#codes + 1] = k end
  table.sort(codes)
  for _, code in ipairs(codes) do
    local d = units[code]
    local text = d == 0 and "7" or ("7." .. string.rep("0", d))
    it(code .. " has " .. d .. " decimals (7 -> " .. text .. ")", function()
      local p = O.with("order.currency", code, "order.total", 7)
      local json = accepts(p)
      assert.equal(text, O.number_text(json, { "order", "total" }))
      assert.truthy(json:find('"total":' .. text .. ',', 1, true))
    end)
  end
end)

describe("money", function()
  local function money_text(path, v, currency)
    local p = O.with(path, v)
    if currency then p.order.currency = currency end
    local json = accepts(p)
    return O.number_text(json, O.split(path)), json
  end

  for _, path in ipairs({ "order.shipping", "order.subTotal", "order.total", "order.items[1].price" }) do
    describe(path, function()
      it("accepts an integer number (12 -> 12.00)", function()
        assert.equal("12.00", money_text(path, 12))
      end)

      it("accepts a float (12.5 -> 12.50)", function()
        assert.equal("12.50", money_text(path, 12.5))
      end)

      it("accepts a plain decimal string (\"12.50\" -> 12.50, a JSON number)", function()
        local text, json = money_text(path, "12.50")
        assert.equal("12.50", text)
        local keys = O.split(path)
        assert.truthy(json:find('"' .. keys[#keys] .. '":12.50', 1, true))
      end)

      it("accepts zero", function()
        assert.equal("0.00", money_text(path, 0))
        assert.equal("0.00", money_text(path, "0"))
      end)

      for _, v in ipairs({ "1,50", "\194\1633", "1e3", " 12", "12 ", "-1", "", "abc", "1.2.3", "0x10", "nan",
        "inf" }) do
        it(string.format("rejects the string %q", v), function()
          rejects(O.with(path, v), path)
        end)
      end

      it("rejects a negative number", function()
        rejects(O.with(path, -1), path)
        rejects(O.with(path, -0.001), path)
      end)

      it("rejects NaN, infinities and absurd magnitudes", function()
        rejects(O.with(path, 0 / 0), path)
        rejects(O.with(path, math.huge), path)
        rejects(O.with(path, 1e300), path)
      end)

      it("rejects a boolean and a table", function()
        rejects(O.with(path, true), path)
        rejects(O.with(path, { 12 }), path)
      end)
    end)
  end

  it("shipping and subTotal are optional and omitted when absent", function()
    local json = accepts(O.without("order.shipping", "order.subTotal"))
    assert.falsy(json:find('"shipping"', 1, true))
    assert.falsy(json:find('"subTotal"', 1, true))
  end)

  it("item price is required", function()
    rejects(O.without("order.items[2].price"), "order.items[2].price")
  end)

  describe("rounding half away from zero on the written decimal", function()
    local cases = {
      { 1.005, "GBP", "1.01" }, { "1.005", "GBP", "1.01" },
      { 2.675, "GBP", "2.68" }, { "2.675", "GBP", "2.68" },
      { 0.1 + 0.2, "GBP", "0.30" },
      { 1.015, "GBP", "1.02" }, { 8.345, "GBP", "8.35" }, { 1.255, "GBP", "1.26" },
      { 0.125, "GBP", "0.13" }, { "0.135", "GBP", "0.14" }, { "0.134999", "GBP", "0.13" },
      { "12.345", "GBP", "12.35" }, { "12.344", "GBP", "12.34" },
      { "999.995", "GBP", "1000.00" }, { 123456789.99, "GBP", "123456789.99" },
      { 1500, "JPY", "1500" }, { 1500.5, "JPY", "1501" }, { "1500.5", "JPY", "1501" },
      { 2.5, "JPY", "3" }, { 0.5, "JPY", "1" }, { 1500.4999, "JPY", "1500" }, { "999.5", "JPY", "1000" },
      { 1.5, "BHD", "1.500" }, { "1.5", "BHD", "1.500" }, { 1.0005, "BHD", "1.001" },
      { "1.0004", "BHD", "1.000" }, { "0.0005", "KWD", "0.001" },
      { "12.5000000", "GBP", "12.50" }, { "0.004", "GBP", "0.00" },
    }
    for _, c in ipairs(cases) do
      local shown = type(c[1]) == "string" and string.format("%q", c[1]) or string.format("%.17g", c[1])
      it(string.format("%s %s -> %s", shown, c[2], c[3]), function()
        assert.equal(c[3], (money_text("order.total", c[1], c[2])))
      end)
    end

    it("rounds item prices too (\"19.999\" -> 20.00)", function()
      assert.equal("20.00", (money_text("order.items[2].price", "19.999")))
    end)

    it("uses the decimal text, not the nearest double (\"1.00499999999999999999\" -> 1.00)", function()
      assert.equal("1.00", (money_text("order.total", "1.00499999999999999999")))
    end)
  end)

  it("writes money as a JSON number (no quotes)", function()
    local json = accepts(O.with("order.total", "90"))
    assert.truthy(json:find('"total":90.00', 1, true))
    assert.falsy(json:find('"total":"', 1, true))
  end)
end)

describe("items", function()
  it("rejects an empty list", function()
    rejects(O.with("order.items", {}), "order.items")
  end)

  it("rejects a list with a hole", function()
    local p = O.base()
    p.order.items[4] = O.copy(p.order.items[1])
    rejects(p, "order.items")
  end)

  it("rejects a non-integer key", function()
    rejects(O.with("order.items.extra", { refCode = "x", qty = 1, price = 1 }), "order.items")
  end)

  it("rejects a string in place of the list", function()
    rejects(O.with("order.items", "ref1"), "order.items")
  end)

  it("rejects a non-table item, naming its index", function()
    rejects(O.with("order.items[2]", "ref2"), "order.items[2]")
  end)

  for _, f in ipairs({ "refCode", "qty", "price" }) do
    it("requires item " .. f, function()
      rejects(O.without("order.items[2]." .. f), "order.items[2]." .. f)
    end)
  end

  it("rejects an unknown item key, naming it", function()
    local err = rejects(O.with("order.items[2].sku", "x"), "order.items[2].sku")
    assert.truthy(O.find(err, "order.items[2].sku").message:find("unknown field", 1, true))
  end)

  it("writes item keys in spec order: refCode, qty, price, attributes", function()
    local json = accepts(O.base())
    assert.same({ "refCode", "qty", "price", "attributes" }, O.keys_at(json, { "order", "items", 1 }))
  end)

  it("omits absent item attributes", function()
    local json = accepts(O.without("order.items[1].attributes"))
    assert.same({ "refCode", "qty", "price" }, O.keys_at(json, { "order", "items", 1 }))
  end)

  it("keeps items in index order", function()
    local _, _, t = accepts(O.base())
    assert.equal("ref1", t.order.items[1].refCode)
    assert.equal("ref2", t.order.items[2].refCode)
  end)

  describe("qty", function()
    local function qty_text(v)
      return O.number_text(accepts(O.with("order.items[1].qty", v)), { "order", "items", 1, "qty" })
    end

    it("accepts 2 as the integer 2", function() assert.equal("2", qty_text(2)) end)
    it("accepts 2.0 as the integer 2", function() assert.equal("2", qty_text(2.0)) end)
    it("accepts the string \"2\" as the integer 2", function() assert.equal("2", qty_text("2")) end)
    it("accepts 1", function() assert.equal("1", qty_text(1)) end)
    it("accepts 1000", function() assert.equal("1000", qty_text(1000)) end)

    for _, v in ipairs({ 1.5, 0, -3, "1.5", "0", "-3", "", "two", "2x" }) do
      it(string.format("rejects %s %s", type(v), tostring(v)), function()
        rejects(O.with("order.items[1].qty", v), "order.items[1].qty")
      end)
    end

    it("rejects NaN, inf and 1e300", function()
      rejects(O.with("order.items[1].qty", 0 / 0), "order.items[1].qty")
      rejects(O.with("order.items[1].qty", math.huge), "order.items[1].qty")
      rejects(O.with("order.items[1].qty", 1e300), "order.items[1].qty")
    end)

    it("rejects a boolean", function()
      rejects(O.with("order.items[1].qty", true), "order.items[1].qty")
    end)
  end)
end)

describe("attributes (free maps)", function()
  for _, path in ipairs({ "order.attributes", "order.items[2].attributes" }) do
    describe(path, function()
      it("keeps string values and stringifies numbers and booleans", function()
        local _, _, t = accepts(O.with(path, { a = "x", n = 12, f = 0.5, b = true }))
        assert.same({ a = "x", n = "12", f = "0.5", b = "true" }, O.get(t, path))
      end)

      it("sorts keys by byte order", function()
        local json = accepts(O.with(path, { z = "1", Z = "2", ["\195\169"] = "3", a = "4", ["a b"] = "5" }))
        local keys = O.split(path)
        assert.same({ "Z", "a", "a b", "z", "\195\169" }, O.keys_at(json, keys))
      end)

      it("accepts keys that are schema field names", function()
        local _, _, t = accepts(O.with(path, { qty = "many", total = "t" }))
        assert.equal("many", O.get(t, path).qty)
      end)

      it("rejects a numeric key", function()
        local err = rejects(O.with(path, { "first" }))
        assert.truthy(O.find_under(err, path), O.show(err))
      end)

      it("rejects an empty key", function()
        local err = rejects(O.with(path, { [""] = "x" }))
        assert.truthy(O.find_under(err, path), O.show(err))
      end)

      it("rejects a table value, naming the key", function()
        rejects(O.with(path, { store = { "x" } }), path .. ".store")
      end)

      it("rejects a non-table map", function()
        rejects(O.with(path, "store=x"), path)
      end)
    end)
  end
end)

describe("totals", function()
  it("warns (path order.subTotal) when subTotal disagrees with sum of qty*price", function()
    local json, w = accepts(O.with("order.subTotal", 91, "order.total", 101))
    assert.truthy(json)
    assert.truthy(O.find(w, "order.subTotal"), O.show(w))
    assert.falsy(O.find(w, "order.total"), O.show(w))
  end)

  it("warns (path order.total) when total disagrees with subTotal + shipping", function()
    local _, w = accepts(O.with("order.total", 99.99))
    assert.truthy(O.find(w, "order.total"), O.show(w))
    assert.falsy(O.find(w, "order.subTotal"), O.show(w))
  end)

  it("compares after rounding to minor units (90.004 equals 90.00)", function()
    local _, w = accepts(O.with("order.subTotal", "90.004", "order.total", "100.001"))
    no_warnings(w)
  end)

  it("a half-unit difference after rounding is a mismatch (90.005 -> 90.01)", function()
    local _, w = accepts(O.with("order.subTotal", "90.005", "order.total", "100.01"))
    assert.truthy(O.find(w, "order.subTotal"), O.show(w))
    assert.falsy(O.find(w, "order.total"), O.show(w))
  end)

  it("uses rounded unit prices in the sum (3 x 0.333 = 3 x 0.33 = 0.99)", function()
    local p = O.base()
    p.order.items = { { refCode = "a", qty = 3, price = "0.333" } }
    p.order.subTotal, p.order.shipping, p.order.total = "0.99", 0, "0.99"
    local _, w = accepts(p)
    no_warnings(w)
  end)

  it("checks JPY totals in whole yen", function()
    local p = O.base()
    p.order.currency = "JPY"
    p.order.items = { { refCode = "a", qty = 2, price = 1500.4 } }
    p.order.subTotal, p.order.shipping, p.order.total = 3000, 500, 3500
    local _, w = accepts(p)
    no_warnings(w)
  end)

  it("never turns a mismatch into an error", function()
    local json = accepts(O.with("order.subTotal", 1, "order.total", 5000))
    assert.truthy(json:find('"subTotal":1.00', 1, true))
    assert.truthy(json:find('"total":5000.00', 1, true))
  end)
end)

describe("strings", function()
  local bad_utf8 = {
    { "\255", "byte 0xFF" }, { "\192\175", "overlong /" }, { "\237\160\128", "surrogate U+D800" },
    { "ab\226\130", "truncated sequence" }, { "\244\144\128\128", "above U+10FFFF" },
    { "\128", "lone continuation" }, { "\224\128\175", "overlong 3-byte" },
  }
  local places = { "order.refCode", "user.id", "order.items[1].refCode", "order.attributes.store",
    "user.info.gender", "order.items[2].attributes.attr21", "user.segments[1]" }
  for _, place in ipairs(places) do
    for _, b in ipairs(bad_utf8) do
      it("rejects invalid UTF-8 (" .. b[2] .. ") in " .. place, function()
        local p = O.with(place, "x" .. b[1] .. "y")
        rejects(p, place)
      end)
    end
  end

  it("rejects invalid UTF-8 in a map key", function()
    local err = rejects(O.with("order.attributes", { ["k\255"] = "v" }))
    assert.truthy(O.find_under(err, "order.attributes"), O.show(err))
  end)

  it("rejects invalid UTF-8 in lang and currency", function()
    rejects(O.with("lang", "e\255"), "lang")
    rejects(O.with("order.currency", "GB\255"), "order.currency")
  end)

  local tricky = {
    "quote \" and backslash \\", "slash / here", "tab\tnewline\nCR\r", "bell\7 escape\27 del\127",
    "nul\0inside", "\1\2\3\31", "caf\195\169", "\226\130\172 euro", "emoji \240\159\152\128",
    "line sep \226\128\168 para sep \226\128\169", "BOM \239\187\191", "max \244\143\191\191",
  }
  for i, s in ipairs(tricky) do
    it("round-trips tricky string #" .. i .. " through cjson in every string position", function()
      local p = O.base()
      p.user.id = s
      p.user.info = { [s] = s }
      p.order.refCode = s
      p.order.items[1].refCode = s
      p.order.attributes = { k = s }
      local json, _, t = accepts(p)
      assert.equal(s, t.user.id)
      assert.equal(s, t.user.info[s])
      assert.equal(s, t.order.refCode)
      assert.equal(s, t.order.items[1].refCode)
      assert.equal(s, t.order.attributes.k)
      assert.falsy(json:find("[%z\1-\31]"), "raw control byte in output")
    end)
  end
end)

describe("problems", function()
  it("reports all independent problems, in document order", function()
    local p = O.base()
    p.lang = "en_GB"
    p.user.id = ""
    p.order.refCode = ""
    p.order.orderDate = "2023-02-29T00:00:00 GMT"
    p.order.currency = "gbp"
    p.order.shipping = "£3"
    p.order.total = -1
    p.order.items[1].qty = 0
    p.order.items[2].refCode = 1.5
    p.order.items[2].price = "1,50"
    local err = rejects(p)
    assert.same({ "lang", "user.id", "order.refCode", "order.orderDate", "order.shipping", "order.total",
      "order.items[1].qty", "order.items[2].refCode", "order.items[2].price" }, O.paths(err))
  end)

  it("gives exactly 3 problems for 3 independent errors", function()
    local err = rejects(O.with("lang", "x", "order.currency", "XYZ", "order.items[2].qty", -3))
    assert.same({ "lang", "order.currency", "order.items[2].qty" }, O.paths(err))
  end)

  it("reports a missing required field at its place in spec order", function()
    local p = O.with("order.refCode", "", "order.total", -5)
    p.order.currency = nil
    local err = rejects(p)
    assert.same({ "order.refCode", "order.currency", "order.total" }, O.paths(err))
  end)

  it("reports item problems in index order", function()
    local p = O.base()
    for i = 1, 5 do p.order.items[i] = { refCode = "r" .. i, qty = (i % 2 == 1) and 0 or 1, price = 1 } end
    local err = rejects(p)
    assert.same({ "order.items[1].qty", "order.items[3].qty", "order.items[5].qty" }, O.paths(err))
  end)

  it("still checks money format under an unknown currency", function()
    local err = rejects(O.with("order.currency", "XYZ", "order.total", "1,50"))
    assert.truthy(O.find(err, "order.currency"))
    assert.truthy(O.find(err, "order.total"))
  end)

  it("caps problems for 900 bad items (2,700 problems) and keeps the first ones in document order", function()
    local p = O.base()
    p.order.items = {}
    for i = 1, 900 do p.order.items[i] = { refCode = "", qty = 0, price = -1 } end
    local err = rejects(p)
    assert.is_true(#err.problems < 1000, "got " .. #err.problems .. " problems")
    assert.same({ "order.items[1].refCode", "order.items[1].qty", "order.items[1].price", "order.items[2].refCode" },
      { err.problems[1].path, err.problems[2].path, err.problems[3].path, err.problems[4].path })
  end)

  it("caps the number of problems for 10,000 bad items", function()
    local p = O.base()
    p.order.items = {}
    for i = 1, 10000 do p.order.items[i] = { refCode = "", qty = 0, price = -1 } end
    local err = rejects(p)
    assert.is_true(#err.problems >= 1)
    assert.is_true(#err.problems < 10000, "got " .. #err.problems .. " problems")
    assert.is_true(#tostring(err) < 1000000)
  end)
end)
