--- optimizely.offline: send in-store orders to Optimizely Product Recommendations.
-- The C core (`optimizely.offline.core`) validates, normalises and encodes;
-- this module gives it the Lua face: `nil, err` with error objects.
-- @module optimizely.offline
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

M.VERSION = core.VERSION
M.errors = errors

local c_encode, c_validate, new_error = core.encode, core.validate, errors.validation

--- Validate, normalise and serialise one payload `{lang?, user?, order}`.
-- @return json, warnings  or  nil, err (kind "validation")
function M.encode(payload)
  local json, w, truncated = c_encode(payload)
  if json then return json, w end
  return nil, new_error(w, truncated)
end

--- The same rules as `encode`, without producing output.
-- @return true, warnings  or  nil, err
function M.validate(payload)
  local ok, w, truncated = c_validate(payload)
  if ok then return true, w end
  return nil, new_error(w, truncated)
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
    local v = require(mod)
    if type(v) == "table" and v[k] ~= nil then v = v[k] end
    rawset(t, k, v)
    return v
  end,
})

return M
