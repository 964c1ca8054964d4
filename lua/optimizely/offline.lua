--- optimizely.offline: send in-store orders to Optimizely Product Recommendations.
-- The C core (`optimizely.offline.core`) validates, normalises and encodes;
-- this module gives it the Lua face: `nil, err` with error objects.
-- @module optimizely.offline
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local payload = require("optimizely.offline.payload")

local M = {}

M.VERSION = core.VERSION
M.errors = errors

--- Validate, normalise and serialise one payload `{lang?, user?, order}`
-- (optimizely.offline.payload).
-- @function encode
-- @return json, warnings  or  nil, err (kind "validation")
M.encode = payload.encode

--- The same rules as `encode`, without producing output
-- (optimizely.offline.payload).
-- @function validate
-- @return true, warnings  or  nil, err
M.validate = payload.validate

--- An amount normalised as the encoder writes it: a plain decimal with
-- exactly the currency's minor-unit digits, exact (digits past the minor
-- unit round half away from zero). By default the value is what the
-- encoder takes (a number, or a plain decimal string like "12.50"); `opts`
-- opts in to amounts as tills write them, read by the C money parser:
-- `decimal_comma = true` ("2,24", "1.234,56"; '.', blanks and ' group
-- thousands in threes) and `currency_symbols = true` ("£2.24", "2,24 €",
-- "GBP 2.24": a symbol or ISO code before or after the amount is dropped
-- when it is `currency`'s; another currency's is an error).
-- @param value a number or a string
-- @param currency the order's ISO 4217 code ("GBP")
-- @param opts optional `{decimal_comma = bool, currency_symbols = bool}`
-- @return text ("1234.56"), minor units (123456), decimals (2) | nil, err
--   (kind "validation")
-- @usage offline.money("1.234,56 €", "EUR", { decimal_comma = true, currency_symbols = true }) --> "1234.56", 123456, 2
function M.money(value, currency, opts)
  local units, decimals, text = core.money(value, currency, opts)
  if not units then
    return nil, errors.new({ kind = "validation", message = "amount " .. decimals.message, retryable = false })
  end
  return text, units, decimals
end

--- The order's refCode as the encoder writes it (a string as is, an
-- integer in decimal), or nil: the one conversion queues, reports and
-- messages use.
M.ref_of = core.ref_string

--- The pseudonym of an e-mail address: HMAC-SHA256 with a secret key of
-- the address trimmed and ASCII-lower-cased, as 64 lower-case hex
-- characters (see optimizely.offline.pseudonym and
-- doc/topics/pseudonymisation.md).
-- @function pseudonymise
-- @param email string
-- @param opts optional `{key=, length=, encoding=, strip_plus_tag=, strip_dots=}`;
--   without `key`, the key is `$OPTIMIZELY_PSEUDONYM_KEY`
-- @return id  or  nil, err (kind "validation" naming `email`, or "config"
--   when the environment has no usable key); raises on bad `opts`

-- Lazily loaded parts, so `require "optimizely.offline"` stays cheap and
-- scripts that only encode never load the HTTP client.
local lazy = {
  order = "optimizely.offline.order",
  client = "optimizely.offline.client",
  queue = "optimizely.offline.queue",
  pseudonymise = "optimizely.offline.pseudonym",
  metrics = "optimizely.offline.metrics",
}
setmetatable(M, {
  __index = function(t, k)
    local mod = lazy[k]
    if not mod then return nil end
    local v = require(mod) -- optional-require: a part loaded on first use
    if type(v) == "table" and v[k] ~= nil then v = v[k] end
    rawset(t, k, v)
    return v
  end,
})

return M
