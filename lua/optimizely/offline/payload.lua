--- A payload's one way to bytes, with the library's error objects: the C
-- encoder (`optimizely.offline.core`) returns `nil, err` with its problems
-- in `err.problems`, and these word it and give it the errors' metatable
-- (`errors.validation`, kind "validation"). `optimizely.offline`
-- hands them on as `offline.encode` and `offline.validate`; the delivery
-- context (optimizely.offline.context) encodes with them, so a module that
-- sends never needs the facade above it.
-- @module optimizely.offline.payload
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

local c_encode, c_validate, new_error = core.encode, core.validate, errors.validation

--- Validate, normalise and serialise one payload `{lang?, user?, order}`.
-- @param payload the payload
-- @return json, warnings  or  nil, err (kind "validation")
function M.encode(payload)
  local json, w = c_encode(payload)
  if json then return json, w end
  return nil, new_error(w.problems, w.truncated)
end

--- The same rules as `encode`, without producing output.
-- @param payload the payload
-- @return true, warnings  or  nil, err
function M.validate(payload)
  local ok, w = c_validate(payload)
  if ok then return true, w end
  return nil, new_error(w.problems, w.truncated)
end

return M
