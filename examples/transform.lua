--- Example transform script for the order readers.
-- A transform file returns one function `function(record, ctx)`; it receives
-- each record a reader produced (`record.payload`, `record.file`,
-- `record.line`, `record.index`) and returns the payload to send, or nil to
-- skip the order. This one, written for examples/till-export.csv:
--   * replaces the customer's e-mail with a pseudonymous `user.id`;
--   * turns the till's store code (`order.attributes.store`) into the store
--     name configured with Optimizely;
--   * upper-cases the currency (some tills write "gbp");
--   * skips till test orders, whose refCode starts with "TEST".
--
-- The pseudonym is FNV-1a (two 32-bit passes, 16 hex digits): a stable,
-- dependency-free example, NOT a security measure: e-mail addresses are easy
-- to guess and hash back. `user.id` must equal the id your online tracking
-- sends for the same person, so in production use the same pseudonymisation
-- as your web shop (and a secret salt, here read from
-- OPTIMIZELY_PSEUDONYM_SALT).

local STORES = {
  BW01 = "StreamlyCool Bluewater",
  LN02 = "StreamlyCool London Oxford Street",
  MC03 = "StreamlyCool Manchester Arndale",
}

local SALT = os.getenv("OPTIMIZELY_PSEUDONYM_SALT") or ""

-- XOR of two bytes with arithmetic only (runs on Lua 5.1, LuaJIT and 5.4).
local function xor8(a, b)
  local r, bit = 0, 1
  for _ = 1, 8 do
    local x, y = a % 2, b % 2
    if x ~= y then r = r + bit end
    a, b, bit = (a - x) / 2, (b - y) / 2, bit * 2
  end
  return r
end

-- 32-bit FNV-1a. The multiply by the FNV prime 16777619 = 2^24 + 403 is
-- split so every intermediate stays below 2^53 (exact in a double).
local function fnv1a32(s, h)
  h = h or 2166136261
  for i = 1, #s do
    local low = h % 256
    h = h - low + xor8(low, s:byte(i))
    h = ((h % 256) * 16777216 + h * 403) % 4294967296
  end
  return math.floor(h)
end

local function pseudonym(email)
  local norm = email:gsub("^%s+", ""):gsub("%s+$", ""):lower()
  local a = fnv1a32(SALT .. norm)
  local b = fnv1a32(norm .. "\0" .. SALT, a)
  return ("%08x%08x"):format(a, b)
end

return function(record, ctx) -- luacheck: ignore ctx
  local payload = record.payload
  local order = payload.order
  if type(order) ~= "table" then return payload end -- let the core report it

  if type(order.refCode) == "string" and order.refCode:sub(1, 4) == "TEST" then
    return nil
  end

  local user = payload.user
  if type(user) == "table" and type(user.email) == "string" and user.email ~= "" then
    if user.id == nil then user.id = pseudonym(user.email) end
    user.email = nil -- never send the address itself
  end

  if type(order.currency) == "string" then order.currency = order.currency:upper() end

  local attrs = order.attributes
  if type(attrs) == "table" and attrs.store ~= nil then
    attrs.store = STORES[attrs.store] or attrs.store
  end
  return payload
end
