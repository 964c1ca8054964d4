--- Fixture builders and JSON helpers for the encoder specs.
-- Every builder returns a fresh table, so a test can mutate what it gets
-- without leaking into the next test.
-- @module support.orders
local M = {}

--- Sentinel for `merge`/`set`: remove the key instead of setting it.
M.NIL = setmetatable({}, { __tostring = function() return "orders.NIL" end })

--- The spec §4 example payload (full; totals agree, so no warnings).
function M.base()
  return {
    lang = "en-gb",
    user = { id = "abcd1234efgh", info = { gender = "male" } },
    order = {
      refCode = "orderRef123",
      orderDate = "2016-05-16T14:25:00 GMT",
      customerId = "SomeCustomerId",
      currency = "GBP",
      shipping = 10.0,
      subTotal = 90.0,
      total = 100.0,
      items = {
        { refCode = "ref1", qty = 1, price = 50.0, attributes = { attr11 = "value11" } },
        { refCode = "ref2", qty = 2, price = 20.0, attributes = { attr21 = "value21" } },
      },
      attributes = { store = "StreamlyCool Bluewater" },
    },
  }
end

--- The exact bytes `encode(base())` must produce.
M.BASE_JSON = '{"lang":"en-gb","user":{"id":"abcd1234efgh","info":{"gender":"male"}},'
  .. '"order":{"refCode":"orderRef123","orderDate":"2016-05-16T14:25:00 GMT",'
  .. '"customerId":"SomeCustomerId","currency":"GBP","shipping":10.00,"subTotal":90.00,'
  .. '"total":100.00,"items":[{"refCode":"ref1","qty":1,"price":50.00,'
  .. '"attributes":{"attr11":"value11"}},{"refCode":"ref2","qty":2,"price":20.00,'
  .. '"attributes":{"attr21":"value21"}}],"attributes":{"store":"StreamlyCool Bluewater"}}}'

--- The spec §4 minimal payload.
--- Minimal payloads with refCodes prefix..from, .., prefix..(from+n-1)
-- (from defaults to 1), fresh tables every call.
function M.numbered(prefix, n, from)
  local list = {}
  for i = from or 1, (from or 1) + n - 1 do
    local p = M.minimal()
    p.order.refCode = prefix .. i
    list[#list + 1] = p
  end
  return list
end

function M.minimal()
  return {
    user = { id = "abcd1234efgh" },
    order = {
      refCode = "orderRef123", orderDate = "2016-05-16T14:25:00 GMT",
      currency = "GBP", total = 100.0,
      items = { { refCode = "ref1", qty = 1, price = 100.0 } },
    },
  }
end

--- The exact bytes `encode(minimal())` must produce.
M.MINIMAL_JSON = '{"user":{"id":"abcd1234efgh"},"order":{"refCode":"orderRef123",'
  .. '"orderDate":"2016-05-16T14:25:00 GMT","currency":"GBP","total":100.00,'
  .. '"items":[{"refCode":"ref1","qty":1,"price":100.00}]}}'

--- Deep copy (keys and values; cycles preserved; metatables kept by reference).
function M.copy(v, seen)
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do out[M.copy(k, seen)] = M.copy(x, seen) end
  return setmetatable(out, getmetatable(v))
end

--- Deep merge: a new table with `patch` laid over a copy of `base`.
-- Plain tables merge recursively; any other value replaces; `M.NIL` deletes.
function M.merge(base, patch)
  local out = M.copy(base)
  for k, v in pairs(patch) do
    if rawequal(v, M.NIL) then
      out[k] = nil
    elseif type(v) == "table" and getmetatable(v) == nil and type(out[k]) == "table" then
      out[k] = M.merge(out[k], v)
    else
      out[k] = v
    end
  end
  return out
end

--- Split a contract path (`order.items[2].qty`) into keys {"order","items",2,"qty"}.
function M.split(path)
  local keys = {}
  for part in path:gmatch("[^%.]+") do
    local name, rest = part:match("^([^%[]*)(.*)$")
    if name ~= "" then keys[#keys + 1] = name end
    for idx in rest:gmatch("%[(%d+)%]") do keys[#keys + 1] = tonumber(idx) end
  end
  return keys
end

--- Set `value` at `path` inside `t` (mutates; creates missing tables). `M.NIL` deletes.
function M.set(t, path, value)
  local keys = M.split(path)
  local cur = t
  for i = 1, #keys - 1 do
    local k = keys[i]
    if type(cur[k]) ~= "table" then cur[k] = {} end
    cur = cur[k]
  end
  if rawequal(value, M.NIL) then value = nil end
  cur[keys[#keys]] = value
  return t
end

--- Value at `path` (nil when any step is missing).
function M.get(t, path)
  local cur = t
  for _, k in ipairs(M.split(path)) do
    if type(cur) ~= "table" then return nil end
    cur = cur[k]
  end
  return cur
end

--- A fresh base() with `path` set to `value` (pairs of path, value may repeat).
function M.with(...)
  local t, args = M.base(), { ... }
  for i = 1, select("#", ...), 2 do M.set(t, args[i], args[i + 1]) end
  return t
end

--- A fresh base() with `path` removed.
function M.without(...)
  local t = M.base()
  for _, p in ipairs({ ... }) do M.set(t, p, M.NIL) end
  return t
end

--- Problem paths of an error, in order.
function M.paths(err)
  local out = {}
  if type(err) == "table" and type(err.problems) == "table" then
    for i, p in ipairs(err.problems) do out[i] = p.path end
  end
  return out
end

--- First problem/warning at `path` (exact), or nil.
function M.find(list, path)
  if type(list) ~= "table" then return nil end
  if list.problems then list = list.problems end
  for _, p in ipairs(list) do
    if p.path == path then return p end
  end
  return nil
end

--- Is `path` equal to `prefix` or below it (`prefix.` / `prefix[`)?
function M.under(path, prefix)
  if type(path) ~= "string" then return false end
  if path == prefix then return true end
  local n = #prefix
  local nxt = path:sub(n + 1, n + 1)
  return path:sub(1, n) == prefix and (nxt == "." or nxt == "[")
end

--- First problem at or below `prefix`, or nil.
function M.find_under(err, prefix)
  local list = type(err) == "table" and err.problems or {}
  for _, p in ipairs(list) do
    if M.under(p.path, prefix) then return p end
  end
  return nil
end

--- Is a path the top level (empty or "payload")?
function M.is_top(path)
  return path == "" or path == "payload"
end

--- Render a problem list for assertion messages.
function M.show(list)
  if type(list) ~= "table" then return tostring(list) end
  if list.problems then list = list.problems end
  local parts = {}
  for i, p in ipairs(list) do
    if i > 12 then parts[#parts + 1] = "... (" .. #list .. " total)"; break end
    parts[#parts + 1] = tostring(p.path) .. ": " .. tostring(p.message)
  end
  return "{" .. table.concat(parts, " | ") .. "}"
end

-- ---------------------------------------------------------------------------
-- Order-preserving JSON reader. It keeps object key order and the raw text of
-- numbers, so tests can compare the encoder's exact number formatting and key
-- order while staying indifferent to how strings were escaped.

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end
M.utf8_char = utf8_char

local OBJ, NUM = {}, {}

--- Expected-value constructors for `canon_of`.
-- obj{ {"k", v}, ... } keeps the order given; num("12.50") is a raw number text.
function M.obj(pairs_list) return { [OBJ] = pairs_list } end
function M.num(text) return { [NUM] = text } end
M.arr = function(list) return list end

local function parse(s)
  local pos = 1
  local function fail(msg) error("json: " .. msg .. " at byte " .. pos, 0) end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    pos = pos + 1
    local out = {}
    while true do
      local a = s:find('["\\]', pos)
      if not a then fail("unterminated string") end
      out[#out + 1] = s:sub(pos, a - 1)
      if s:sub(a, a) == '"' then pos = a + 1; break end
      local e = s:sub(a + 1, a + 1)
      local simple = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
      if simple[e] then
        out[#out + 1] = simple[e]; pos = a + 2
      elseif e == "u" then
        local cp = tonumber(s:sub(a + 2, a + 5), 16) or fail("bad \\u")
        pos = a + 6
        if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
          local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
            pos = pos + 6
          end
        end
        out[#out + 1] = utf8_char(cp)
      else
        fail("bad escape")
      end
    end
    return table.concat(out)
  end
  value = function()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local list = {}
      ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return M.obj(list) end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("key expected") end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ":" then fail(": expected") end
        pos = pos + 1
        list[#list + 1] = { k, value() }
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return M.obj(list) end
        if d ~= "," then fail(", or } expected") end
      end
    elseif c == "[" then
      pos = pos + 1
      local list = {}
      ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return list end
      while true do
        list[#list + 1] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return list end
        if d ~= "," then fail(", or ] expected") end
      end
    elseif c == '"' then
      return str()
    elseif s:find("^true", pos) then pos = pos + 4; return true
    elseif s:find("^false", pos) then pos = pos + 5; return false
    elseif s:find("^null", pos) then pos = pos + 4; return M.NIL
    else
      local a, b = s:find("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not a then fail("unexpected " .. c) end
      pos = b + 1
      return M.num(s:sub(a, b))
    end
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing bytes") end
  return v
end
M.parse = parse

local function esc(s)
  return '"' .. s:gsub('[%c"\\\128-\255]', function(c) return string.format("\\x%02X", c:byte()) end) .. '"'
end

--- Canonical text of an expected/parsed value: key order and number texts kept,
-- strings escaped one fixed way.
function M.canon_of(v)
  local t = type(v)
  if t == "string" then return esc(v) end
  if t == "boolean" then return tostring(v) end
  if rawequal(v, M.NIL) then return "null" end
  if t ~= "table" then error("canon_of: unexpected " .. t) end
  if v[NUM] then return v[NUM] end
  if v[OBJ] then
    local parts = {}
    for i, kv in ipairs(v[OBJ]) do parts[i] = esc(kv[1]) .. ":" .. M.canon_of(kv[2]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  local parts = {}
  for i, x in ipairs(v) do parts[i] = M.canon_of(x) end
  return "[" .. table.concat(parts, ",") .. "]"
end

--- Canonical text of a JSON document (raises on malformed JSON).
function M.canon(json) return M.canon_of(parse(json)) end

-- The value at `keys` (object keys and array indices) of a parsed document, or nil.
local function walk(v, keys)
  for _, k in ipairs(keys) do
    if type(k) == "number" then
      v = v[k]
    else
      local found
      for _, kv in ipairs(v[OBJ]) do if kv[1] == k then found = kv[2] end end
      v = found
    end
    if v == nil then return nil end
  end
  return v
end

--- Object keys, in order, of the object found at `keys` (list of keys/indices) in `json`.
function M.keys_at(json, keys)
  local v = walk(parse(json), keys or {})
  if v == nil then return nil end
  local out = {}
  for i, kv in ipairs(v[OBJ] or {}) do out[i] = kv[1] end
  return out
end

--- Raw text of the number at `keys` in `json` (e.g. {"order","items",1,"price"}).
function M.number_text(json, keys)
  local v = walk(parse(json), keys)
  if v == nil then return nil end
  return type(v) == "table" and v[NUM] or nil
end

-- ---------------------------------------------------------------------------
-- UTC calendar, computed here (days-from-civil) so date expectations do not
-- come from the code under test.

--- Fields {y,mo,d,h,mi,s} of UTC epoch seconds `t` (t >= 0 or negative, whole).
function M.civil(t)
  local days = math.floor(t / 86400)
  local secs = t - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local mo = mp < 10 and mp + 3 or mp - 9
  if mo <= 2 then y = y + 1 end
  return { y = y, mo = mo, d = d, h = math.floor(secs / 3600), mi = math.floor(secs / 60) % 60, s = secs % 60 }
end

--- The documented output form of epoch `t`: `YYYY-MM-DDTHH:MM:SS GMT`.
function M.gmt(t)
  local c = M.civil(t)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02d GMT", c.y, c.mo, c.d, c.h, c.mi, c.s)
end

return M
