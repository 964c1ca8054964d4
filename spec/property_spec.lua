-- Property tests for offline.encode / offline.validate.
-- (1) Random junk never raises and always gets a well-formed answer.
-- (2) Random valid payloads encode to exactly the values computed here,
--     independently of the C code (minor units formatted by hand, dates from
--     an epoch through our own calendar, key order and number text checked on
--     the raw JSON).
-- Seeded: the seed is printed; set OO_SEED=<n> to replay a run.
local offline = require("optimizely.offline")
local cjson = require("cjson")
local O = require("support.orders")

local SEED = tonumber(os.getenv("OO_SEED") or "") or (os.time() % 2147483646)
-- OO_PROPERTY_SCALE shrinks the case counts (scripts/test.sh uses 0.2 under ASan).
local SCALE = tonumber(os.getenv("OO_PROPERTY_SCALE") or "") or 1
local function cases(n) return math.max(1, math.floor(n * SCALE)) end
print(string.format("property_spec: OO_SEED=%d OO_PROPERTY_SCALE=%s", SEED, tostring(SCALE)))

-- Park-Miller minimal standard generator: exact in doubles and in 5.4 integers,
-- so a seed replays the same cases on every interpreter.
local function prng(seed)
  local x = math.floor(seed) % 2147483646 + 1
  local r = {}
  function r.next() x = (x * 16807) % 2147483647; return x end
  function r.int(a, b) return a + r.next() % (b - a + 1) end
  function r.float() return (r.next() - 1) / 2147483646 end
  function r.chance(p) return r.float() < p end
  function r.pick(t) return t[r.int(1, #t)] end
  return r
end

local function bytes_less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local unpack_ = table.unpack or unpack

local function int_text(n) return string.format("%d", n) end

-- Collects failures instead of stopping at the first, grouped by kind (one
-- example each), so a run shows every distinct way the encoder disagrees.
local function collector(label)
  local c = { n = 0, kinds = {}, order = {} }
  function c.fail(kind, msg)
    c.n = c.n + 1
    local k = c.kinds[kind]
    if not k then
      k = { n = 0, example = msg }
      c.kinds[kind] = k
      c.order[#c.order + 1] = kind
    end
    k.n = k.n + 1
  end
  function c.check()
    if c.n == 0 then return end
    local lines = {}
    for _, kind in ipairs(c.order) do
      local k = c.kinds[kind]
      lines[#lines + 1] = string.format("[%d x] %s\n      e.g. %s", k.n, kind, k.example)
    end
    error(string.format("%s: %d failing cases (OO_SEED=%d):\n  %s", label, c.n, SEED,
      table.concat(lines, "\n  ")), 0)
  end
  return c
end

-- ---------------------------------------------------------------------------
-- Junk

local FIELDS = { "lang", "user", "order", "id", "email", "segments", "info", "refCode", "orderDate",
  "customerId", "currency", "shipping", "subTotal", "total", "items", "qty", "price", "attributes",
  "subtotal", "refcode", "" }

local SAMPLE_STRINGS = { "GBP", "jpy", "bhd", "XYZ", "2016-05-16T14:25:00 GMT", "2024-02-30T00:00:00 GMT",
  "12.50", "1,50", "1e3", "-1", "2", "0", "en-gb", "en_GB", "a@b", "@", "", "\255", "\192\175",
  "\237\160\128", "caf\195\169", "\0", "\"\\" }

local function random_bytes(r, n)
  local t = {}
  for i = 1, n do t[i] = string.char(r.int(0, 255)) end
  return table.concat(t)
end

local function junk_scalar(r)
  local k = r.int(1, 24)
  if k == 1 then return true
  elseif k == 2 then return false
  elseif k == 3 then return r.int(-5, 5)
  elseif k == 4 then return (r.float() - 0.5) * 1e6
  elseif k == 5 then return 0 / 0
  elseif k == 6 then return math.huge
  elseif k == 7 then return -math.huge
  elseif k == 8 then return r.pick({ 1e308, -1e308, 2 ^ 53 + 2, 2 ^ 63, -2 ^ 63, 1e-320, -0.0, 1e20 })
  elseif k == 9 then return print
  elseif k == 10 then return coroutine.create(function() end)
  elseif k == 11 then return io.stdout
  elseif k == 12 then return cjson.null
  elseif k <= 16 then return random_bytes(r, r.int(0, 12))
  elseif k <= 20 then return r.pick(SAMPLE_STRINGS)
  elseif k == 21 then return r.pick(FIELDS)
  elseif k == 22 then return r.int(0, 2000000000)
  elseif k == 23 then return r.float() * 100
  else return nil end
end

local function junk_key(r)
  local k = r.int(1, 10)
  if k <= 4 then return r.pick(FIELDS)
  elseif k <= 6 then return r.int(1, 4)
  elseif k == 7 then return random_bytes(r, r.int(0, 6))
  elseif k == 8 then return r.pick({ 1.5, -1, 0, true, false, 2 ^ 40 })
  elseif k == 9 then return {}
  else return print end
end

local function junk_value(r, depth, ancestors)
  if depth <= 0 or r.chance(0.45) then return junk_scalar(r) end
  if #ancestors > 0 and r.chance(0.1) then return r.pick(ancestors) end -- a cycle
  local t = {}
  ancestors[#ancestors + 1] = t
  for _ = 1, r.int(0, 6) do
    local k = junk_key(r)
    if k ~= nil then t[k] = junk_value(r, depth - 1, ancestors) end
  end
  ancestors[#ancestors] = nil
  if r.chance(0.05) then setmetatable(t, {}) end
  if r.chance(0.03) then
    setmetatable(t, { __index = function() error("mt") end, __pairs = function() error("mt") end,
      __len = function() error("mt") end })
  end
  return t
end

-- A value that must always be a problem wherever it is put, and its name.
local function certain_junk(r)
  local k = r.int(1, 10)
  if k == 1 then return print, "a function"
  elseif k == 2 then return coroutine.create(function() end), "a coroutine"
  elseif k == 3 then return io.stdout, "a userdata"
  elseif k == 4 then return cjson.null, "cjson.null"
  elseif k == 5 then return 0 / 0, "NaN"
  elseif k == 6 then return math.huge, "inf"
  elseif k == 7 then return 1e300, "1e300"
  elseif k == 8 then local t = {}; t.self = t; return t, "a cyclic table"
  elseif k == 9 then return setmetatable({}, {}), "a table with a metatable"
  else return "x\255y", "invalid UTF-8" end -- a problem where a string belongs, a type problem elsewhere
end

-- Check the answer's shape; returns accepted?, json/err.
local function check_shape(c, p, what)
  local ok, a, b = pcall(offline.encode, p)
  if not ok then c.fail("encode raised", what .. ": " .. tostring(a)); return end
  local vok, va, vb = pcall(offline.validate, p)
  if not vok then c.fail("validate raised", what .. ": " .. tostring(va)); return end
  if a ~= nil then
    if type(a) ~= "string" or type(b) ~= "table" then
      c.fail("accepted with wrong return types", what .. ": " .. type(a) .. ", " .. type(b)); return
    end
    for _, w in ipairs(b) do
      if type(w) ~= "table" or type(w.path) ~= "string" or type(w.message) ~= "string" then
        c.fail("malformed warning", what); return
      end
    end
    if va ~= true then c.fail("encode accepted, validate rejected", what .. ": " .. O.show(vb)); return end
    local dok, derr = pcall(cjson.decode, a)
    if not dok then c.fail("output is not JSON", what .. ": " .. tostring(derr)); return end
    return true, a
  end
  if type(b) ~= "table" or b.kind ~= "validation" or type(b.problems) ~= "table" or #b.problems < 1 then
    c.fail("rejected without a validation error", what); return
  end
  for _, pr in ipairs(b.problems) do
    if type(pr) ~= "table" or type(pr.path) ~= "string" or type(pr.message) ~= "string" then
      c.fail("malformed problem", what); return
    end
  end
  local sok = pcall(tostring, b)
  if not sok then c.fail("tostring(err) raised", what); return end
  if va ~= nil then c.fail("encode rejected, validate accepted", what); return end
  if type(vb) ~= "table" or #vb.problems ~= #b.problems then
    c.fail("validate's problems differ from encode's", what); return
  end
  return false, b
end

-- ---------------------------------------------------------------------------
-- Valid payloads with independently computed expectations

local CURRENCIES = { { "GBP", 2 }, { "USD", 2 }, { "EUR", 2 }, { "SEK", 2 }, { "CHF", 2 }, { "JPY", 0 },
  { "KRW", 0 }, { "ISK", 0 }, { "BHD", 3 }, { "KWD", 3 }, { "JOD", 3 } }
local LANGS = { { "en-gb", "en-gb" }, { "EN-GB", "en-gb" }, { "sv", "sv" }, { "Sv-Se", "sv-se" },
  { "az-Cyrl-AZ", "az-cyrl-az" }, { "ar-001", "ar-001" }, { "agq-CM", "agq-cm" }, { "zh-Hant-TW", "zh-hant-tw" } }
local PIECES = { "a", "B", "z", "0", "9", " ", "-", "_", "/", "\"", "\\", "\n", "\t", "\r", "\0", "\1", "\31",
  "\127", "caf\195\169", "\226\130\172", "\240\159\152\128", "\226\128\168", "\239\187\191", "{", "}", ":", "," }

local function rand_string(r, min)
  local t = {}
  for i = 1, r.int(min or 1, 10) do t[i] = r.pick(PIECES) end
  return table.concat(t)
end

-- An identifier: non-empty and not whitespace-only (blank ids are their own
-- edge case, tested in encode_edge_spec).
local function rand_id(r)
  local s = rand_string(r, 1)
  if not s:find("[^ \t\r\n]") then s = s .. "a" end
  return s
end

local function rand_case(r, s)
  return (s:gsub("%a", function(ch) return r.chance(0.5) and ch:lower() or ch:upper() end))
end

-- Minor units -> the text the encoder must write.
local function fmt_minor(m, d)
  if d == 0 then return int_text(m) end
  local scale = 10 ^ d
  local major = math.floor(m / scale)
  return string.format("%d.%0" .. d .. "d", major, m - major * scale)
end

local function digits(r, n)
  local t = {}
  for i = 1, n do t[i] = tostring(r.int(0, 9)) end
  return table.concat(t)
end

-- An input (string or number) whose half-away-from-zero rounding is `m` minor units.
local function money_input(r, m, d)
  local sep = d == 0 and "." or ""
  local form = r.int(1, 8)
  local text
  if form == 1 or form == 5 then
    text = fmt_minor(m, d)
  elseif form == 2 then
    text = fmt_minor(m, d) .. sep .. string.rep("0", r.int(1, 3))
  elseif form == 3 or form == 6 then -- extra digits that round down
    text = fmt_minor(m, d) .. sep .. tostring(r.int(0, 4)) .. digits(r, r.int(0, 2))
  elseif m >= 1 and (form == 4 or form == 7) then -- extra digits that round up into m
    text = fmt_minor(m - 1, d) .. sep .. tostring(r.int(5, 9)) .. digits(r, r.int(0, 2))
  else
    text = fmt_minor(m, d)
  end
  if form >= 5 then return tonumber(text) end -- <= 15 significant digits: the shortest form is `text`'s value
  return text
end

local function two(n) return string.format("%02d", n) end

-- A date input for epoch `t` in one of the accepted forms, and the expected output.
local function date_input(r, t)
  local form = r.int(1, 9)
  if form == 4 then t = t - t % 60 end
  local c = O.civil(t)
  local ymd = string.format("%04d-%02d-%02d", c.y, c.mo, c.d)
  local hms = two(c.h) .. ":" .. two(c.mi) .. ":" .. two(c.s)
  local v
  if form == 1 then v = t
  elseif form == 2 then v = ymd .. "T" .. hms .. " GMT"
  elseif form == 3 then v = ymd .. "T" .. hms .. " UTC"
  elseif form == 4 then v = ymd .. "T" .. two(c.h) .. ":" .. two(c.mi) .. r.pick({ " GMT", " UTC" })
  elseif form == 5 then v = ymd .. "T" .. hms .. "Z"
  elseif form == 6 then
    -- < .5 s: truncating and rounding agree
    v = ymd .. "T" .. hms .. "." .. string.format("%03d", r.int(0, 499)) .. "Z"
  elseif form == 7 or form == 8 then
    local off = r.int(-56, 56) * 15 -- minutes, -14:00 .. +14:00
    local l = O.civil(t + off * 60)
    local a = math.abs(off)
    local sign = off < 0 and "-" or "+"
    local hh, mm = two(math.floor(a / 60)), two(a % 60)
    local frac = r.chance(0.3) and ("." .. string.format("%03d", r.int(0, 499))) or ""
    v = string.format("%04d-%02d-%02dT%s:%s:%s%s%s%s%s", l.y, l.mo, l.d, two(l.h), two(l.mi), two(l.s), frac,
      sign, hh, (form == 7 and ":" or "") .. mm)
  else v = ymd .. " " .. hms end
  return v, O.gmt(t)
end

local function map_value(r)
  local k = r.int(1, 6)
  if k <= 3 then local s = rand_string(r, 0); return s, s end
  if k == 4 then local n = r.int(-1000, 100000); return n, int_text(n) end
  if k == 5 then local b = r.chance(0.5); return b, tostring(b) end
  local f = r.pick({ 0.5, 0.25, 1.5, 2.75 })
  return f, ({ [0.5] = "0.5", [0.25] = "0.25", [1.5] = "1.5", [2.75] = "2.75" })[f]
end

-- A free map and its expected object (keys sorted by bytes, values stringified).
local function rand_map(r)
  local m, exp = {}, {}
  for _ = 1, r.int(1, 5) do
    local key = rand_string(r, 1)
    local v, e = map_value(r)
    m[key], exp[key] = v, e
  end
  local keys = {}
  for k in pairs(exp) do keys[#keys + 1] = k end
  table.sort(keys, bytes_less)
  local list = {}
  for i, k in ipairs(keys) do list[i] = { k, exp[k] } end
  return m, O.obj(list)
end

local function ref_code(r)
  if r.chance(0.3) then local n = r.int(0, 2000000000); return n, int_text(n) end
  local s = rand_id(r)
  return s, s
end

-- Returns payload, expected canonical text, expected warning paths (sorted).
local function valid_payload(r)
  local p, top, warns = {}, {}, {}
  local cur = r.pick(CURRENCIES)
  local code, d = cur[1], cur[2]

  if r.chance(0.7) then
    local l = r.pick(LANGS)
    p.lang = l[1]
    top[#top + 1] = { "lang", l[2] }
  end

  if r.chance(0.85) then
    local u, ue = {}, {}
    local want_id, want_email, want_seg = r.chance(0.8), r.chance(0.2), r.chance(0.3)
    if not (want_id or want_email or want_seg) then want_id = true end
    if want_id then u.id = rand_id(r); ue[#ue + 1] = { "id", u.id } end
    if want_email then
      u.email = "c" .. r.int(1, 999) .. "@shop" .. r.int(1, 9) .. ".example"
      ue[#ue + 1] = { "email", u.email }
      warns[#warns + 1] = "user.email"
    end
    if want_seg then
      u.segments = {}
      for i = 1, r.int(1, 3) do u.segments[i] = rand_id(r) end
      ue[#ue + 1] = { "segments", O.copy(u.segments) }
    end
    if r.chance(0.5) then
      local m, me = rand_map(r)
      u.info = m
      ue[#ue + 1] = { "info", me }
    end
    p.user = u
    top[#top + 1] = { "user", O.obj(ue) }
  else
    warns[#warns + 1] = "user"
  end

  local o, oe = {}, {}
  local rc, rce = ref_code(r)
  o.refCode = rc
  oe[#oe + 1] = { "refCode", rce }
  -- up to now: the encoder refuses a date more than a day in the future
  local t = r.int(3 * 86400, os.time())
  local dv, de = date_input(r, t)
  o.orderDate = dv
  oe[#oe + 1] = { "orderDate", de }
  if r.chance(0.3) then
    local cv, ce = ref_code(r)
    o.customerId = cv
    oe[#oe + 1] = { "customerId", ce }
  end
  o.currency = rand_case(r, code)
  oe[#oe + 1] = { "currency", code }

  local items, ie, sum = {}, {}, 0
  for i = 1, r.int(1, 5) do
    local it, ite = {}, {}
    local irc, irce = ref_code(r)
    it.refCode = irc
    ite[#ite + 1] = { "refCode", irce }
    local q = r.int(1, 50)
    it.qty = r.chance(0.3) and int_text(q) or q
    ite[#ite + 1] = { "qty", O.num(int_text(q)) }
    local pm = r.int(0, 10000000)
    it.price = money_input(r, pm, d)
    ite[#ite + 1] = { "price", O.num(fmt_minor(pm, d)) }
    sum = sum + q * pm
    if r.chance(0.5) then
      local m, me = rand_map(r)
      it.attributes = m
      ite[#ite + 1] = { "attributes", me }
    end
    items[i] = it
    ie[i] = O.obj(ite)
  end

  local ship = r.chance(0.6) and r.int(0, 5000) or nil
  if ship then
    o.shipping = money_input(r, ship, d)
    oe[#oe + 1] = { "shipping", O.num(fmt_minor(ship, d)) }
  end
  local sub
  if r.chance(0.7) then
    sub = sum
    if r.chance(0.2) then
      sub = sum + r.int(1, 999)
      warns[#warns + 1] = "order.subTotal"
    end
    o.subTotal = money_input(r, sub, d)
    oe[#oe + 1] = { "subTotal", O.num(fmt_minor(sub, d)) }
  end
  local total = (sub or sum) + (ship or 0)
  if sub and r.chance(0.2) then
    total = total + r.int(1, 999)
    warns[#warns + 1] = "order.total"
  end
  o.total = money_input(r, total, d)
  oe[#oe + 1] = { "total", O.num(fmt_minor(total, d)) }
  o.items = items
  oe[#oe + 1] = { "items", ie }
  if r.chance(0.5) then
    local m, me = rand_map(r)
    o.attributes = m
    oe[#oe + 1] = { "attributes", me }
  end
  p.order = o
  top[#top + 1] = { "order", O.obj(oe) }
  table.sort(warns)
  return p, O.canon_of(O.obj(top)), warns
end

-- Every place in a payload, as a key list and the path prefix a problem there must carry.
local function locations(p)
  local out = {}
  local function add(keys, prefix) out[#out + 1] = { keys = keys, prefix = prefix } end
  local function walk_map(keys, path, m)
    add(keys, path)
    for k in pairs(m) do
      local kk = { unpack_(keys) }
      kk[#kk + 1] = k
      add(kk, path)
    end
  end
  for _, f in ipairs({ "lang", "user", "order" }) do add({ f }, f) end
  if type(p.user) == "table" then
    for _, f in ipairs({ "id", "email", "segments" }) do add({ "user", f }, "user." .. f) end
    if type(p.user.segments) == "table" then
      for i = 1, #p.user.segments do add({ "user", "segments", i }, "user.segments[" .. i .. "]") end
    end
    if type(p.user.info) == "table" then walk_map({ "user", "info" }, "user.info", p.user.info) end
  end
  for _, f in ipairs({ "refCode", "orderDate", "customerId", "currency", "shipping", "subTotal", "total", "items" }) do
    add({ "order", f }, "order." .. f)
  end
  if type(p.order) ~= "table" or type(p.order.items) ~= "table" then return out end
  for i, it in ipairs(p.order.items) do
    local base = "order.items[" .. i .. "]"
    add({ "order", "items", i }, base)
    for _, f in ipairs({ "refCode", "qty", "price" }) do add({ "order", "items", i, f }, base .. "." .. f) end
    if type(it) == "table" and type(it.attributes) == "table" then
      walk_map({ "order", "items", i, "attributes" }, base .. ".attributes", it.attributes)
    end
  end
  if type(p.order.attributes) == "table" then
    walk_map({ "order", "attributes" }, "order.attributes", p.order.attributes)
  end
  return out
end

local function set_keys(t, keys, v)
  for i = 1, #keys - 1 do t = t[keys[i]] end
  t[keys[#keys]] = v
end

local function warning_paths(w)
  local out = {}
  for i, x in ipairs(w) do out[i] = O.is_top(x.path) and "user" or x.path end
  table.sort(out)
  return out
end

-- ---------------------------------------------------------------------------

describe("property: junk never raises", function()
  it("random junk values get a well-formed answer", function()
    local r = prng(SEED)
    local c = collector("junk")
    for i = 1, cases(3000) do
      local p = junk_value(r, r.int(0, 4), {})
      if r.chance(0.3) and type(p) == "table" and getmetatable(p) == nil then
        p.order = junk_value(r, 3, { p }) -- bias towards plausible top-level keys
      end
      check_shape(c, p, "junk #" .. i)
    end
    c.check()
  end)

  it("valid payloads with certain junk planted are rejected at that place", function()
    local r = prng(SEED + 1)
    local c = collector("planted junk")
    for i = 1, cases(1500) do
      local p = valid_payload(r)
      local locs = locations(p)
      local loc = r.pick(locs)
      local v, name = certain_junk(r)
      set_keys(p, loc.keys, v)
      local accepted, err = check_shape(c, p, "planted #" .. i .. " at " .. loc.prefix)
      local where = loc.prefix:gsub("%[%d+%]", "[i]")
      if accepted == true then
        c.fail(name .. " accepted at " .. where, "planted #" .. i .. " at " .. loc.prefix)
      elseif accepted == false and not O.find_under(err, loc.prefix) then
        c.fail(name .. " not reported under " .. where, "planted #" .. i .. ": got " .. O.show(err))
      end
    end
    c.check()
  end)

  it("valid payloads with random mutations get a well-formed answer", function()
    local r = prng(SEED + 2)
    local c = collector("mutations")
    for i = 1, cases(1500) do
      local p = valid_payload(r)
      for _ = 1, r.int(1, 3) do
        local lok, locs = pcall(locations, p) -- an earlier mutation may have broken the shape
        if not lok or #locs == 0 then break end
        local loc = r.pick(locs)
        local kind = r.int(1, 4)
        local ok = pcall(function()
          if kind == 1 then set_keys(p, loc.keys, nil)
          elseif kind == 2 then set_keys(p, loc.keys, junk_scalar(r))
          elseif kind == 3 then set_keys(p, loc.keys, junk_value(r, 2, { p }))
          else
            local keys = { unpack_(loc.keys) }
            keys[#keys] = nil
            local t = p
            for _, k in ipairs(keys) do t = t[k] end
            if type(t) == "table" then local k = junk_key(r); if k ~= nil then t[k] = junk_scalar(r) end end
          end
        end)
        if not ok then break end -- an earlier mutation removed the parent; fine
      end
      check_shape(c, p, "mutation #" .. i)
    end
    c.check()
  end)
end)

describe("property: valid payloads encode to the computed values", function()
  it("random valid payloads match field for field, byte for byte in numbers and key order", function()
    local r = prng(SEED + 3)
    local c = collector("valid")
    for i = 1, cases(1500) do
      local p, expected, warns = valid_payload(r)
      local snapshot = O.copy(p)
      local accepted, json = check_shape(c, p, "valid #" .. i)
      if accepted == false then
        c.fail("valid payload rejected", "valid #" .. i .. ": " .. O.show(json))
      elseif accepted then
        local got = O.canon(json)
        if got ~= expected then
          c.fail("output differs from the computed expectation",
            "valid #" .. i .. ":\n    expected " .. expected .. "\n    got      " .. got)
        end
        local _, w = offline.encode(p)
        local wp = warning_paths(w)
        if table.concat(wp, ",") ~= table.concat(warns, ",") then
          c.fail("warnings differ", "valid #" .. i .. ": warnings {" .. table.concat(wp, ",") .. "} expected {" ..
            table.concat(warns, ",") .. "} " .. O.show(w))
        end
        if json:find("[%z\1-\31]") then c.fail("raw control byte in output", "valid #" .. i) end
      end
      local same = pcall(assert.same, snapshot, p)
      if not same then c.fail("encode modified its input", "valid #" .. i) end
    end
    c.check()
  end)

  it("our calendar agrees with os.date for sampled epochs (guards the test itself)", function()
    local r = prng(SEED + 4)
    for _ = 1, 500 do
      local t = r.int(0, 4102444800)
      assert.equal(os.date("!%Y-%m-%dT%H:%M:%S GMT", t), O.gmt(t))
    end
  end)

  it("our money inputs really round to the intended minor units (guards the test itself)", function()
    local r = prng(SEED + 5)
    for _ = 1, 2000 do
      local d = r.pick({ 0, 2, 3 })
      local m = r.int(0, 10000000)
      local v = money_input(r, m, d)
      local x = type(v) == "number" and v or tonumber(v)
      local scaled = x * 10 ^ d
      assert.is_true(math.abs(scaled - m) <= 0.5 + 1e-6, tostring(v) .. " vs " .. m)
    end
  end)
end)
