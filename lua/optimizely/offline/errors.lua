--- Error objects: the one place that knows their shape and how they print.
-- Every runtime failure in the library is returned as `nil, err` where `err`
-- is one of these tables. Fields (absent when they do not apply):
--   kind       "validation" | "network" | "timeout" | "tls" | "http" | "api" | "full" | ...
--   message    one human sentence
--   problems   list of {path=, message=} (validation)
--   status     HTTP status
--   code       first API error code (e.g. "MalformedJson")
--   errors     list of {code=, message=} from the response envelope
--   retryable  boolean
--   attempts   how many requests were made
--   curl_code  libcurl's CURLcode number
-- No error ever carries the site token: `redact` scrubs every string we put in.
-- @module optimizely.offline.errors
local M = {}

local Error = {}
Error.__index = Error
M.Error = Error

local function problem_list(problems)
  local parts = {}
  for i = 1, #problems do
    local p = problems[i]
    parts[i] = (p.path and p.path ~= "" and (p.path .. ": ") or "") .. tostring(p.message)
  end
  return table.concat(parts, "; ")
end

--- One line: `kind: message [status 503, code X, curl 28, attempts 3]`.
function Error.__tostring(e)
  local s = tostring(e.kind) .. ": " .. tostring(e.message)
  if e.kind == "validation" and e.problems and #e.problems > 0 then
    s = "validation: " .. problem_list(e.problems)
    if e.truncated then s = s .. "; ..." end
  end
  local extra = {}
  if e.status then extra[#extra + 1] = "status " .. tostring(e.status) end
  if e.code then extra[#extra + 1] = "code " .. tostring(e.code) end
  if e.curl_code then extra[#extra + 1] = "curl " .. tostring(e.curl_code) end
  if e.attempts and e.attempts > 1 then extra[#extra + 1] = "attempts " .. tostring(e.attempts) end
  if #extra > 0 then s = s .. " [" .. table.concat(extra, ", ") .. "]" end
  return s
end

--- Is `x` one of our error objects?
function M.is(x)
  return getmetatable(x) == Error
end

--- Remove every occurrence of `secret` from `s` (plain find, no patterns).
function M.redact(s, secret)
  if type(s) ~= "string" or type(secret) ~= "string" or secret == "" then return s end
  local out, i = {}, 1
  while true do
    local a, b = s:find(secret, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = "[REDACTED]"
    i = b + 1
  end
  if i == 1 then return s end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

--- Build an error object from a table of fields (kind and message required).
function M.new(fields)
  assert(type(fields) == "table" and fields.kind and fields.message, "errors.new needs kind and message")
  return setmetatable(fields, Error)
end

--- Validation error from the C core's problem list.
function M.validation(problems, truncated)
  local n = #problems
  local msg
  if n == 1 then
    msg = "invalid order: " .. problem_list(problems)
  else
    msg = "invalid order: " .. n .. (truncated and "+" or "") .. " problems"
  end
  return setmetatable({
    kind = "validation", message = msg, problems = problems,
    truncated = truncated or nil, retryable = false,
  }, Error)
end

return M
