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

local function escape_char(c)
  if c == "\n" then return "\\n" end
  if c == "\r" then return "\\r" end
  if c == "\t" then return "\\t" end
  if #c == 2 then return ("\\u%04x"):format(c:byte(2)) end -- a C1 control (U+0080..U+009F)
  return ("\\x%02x"):format(c:byte())
end

--- Text made safe for one line of a log or a terminal: control characters
-- (C0, DEL and the C1 range) escaped (`\n`, `\r`, `\t`, `\x1b`, `\u0085`),
-- so a value can neither forge a line nor send an escape sequence. With
-- `cap`, text longer than `cap` bytes is cut (never inside a character)
-- with a note of its length. The one such helper: error texts, log lines
-- and the command line's messages all pass here.
-- @param s any value (tostring'd)
-- @param cap optional byte limit
function M.clean(s, cap)
  s = tostring(s)
  local n = #s
  if cap and n > cap then
    s = s:sub(1, cap):gsub("[\192-\255][\128-\191]*$", "") -- never cut a character in two
  end
  s = s:gsub("[%z\1-\31\127]", escape_char):gsub("\194[\128-\159]", escape_char)
  if cap and n > cap then s = s .. ("...(%d bytes)"):format(n) end
  return s
end

--- A log function whose lines are `clean`: `logger(ngx.log)` is a
-- `function(level, ...)` that joins its arguments (as `ngx.log` does) and
-- escapes the control characters an endpoint's answer may carry.
function M.logger(logf)
  return function(level, ...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    return logf(level, M.clean(table.concat(parts)))
  end
end

--- One line: `kind: message [status 503, code X, curl 28, attempts 3]`,
-- control characters escaped (`clean`): a code or message from the endpoint
-- cannot forge a log line.
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
  return M.clean(s)
end

--- Is `x` one of our error objects?
function M.is(x)
  return getmetatable(x) == Error
end

-- How many leading (or trailing) characters of a secret, echoed on their
-- own, count as an echo of it: a server or a message that cuts the token
-- short must not leak most of it.
local ECHO_MIN = 8

local function lower_plain(s) return (s:lower()) end

-- Spans [a, b] of `ls` (lower-cased text) that echo `lsec` (lower-cased
-- secret): the whole secret, or a run of at least ECHO_MIN characters that
-- starts like it or ends like it.
local function echo_spans(ls, lsec)
  local spans, n = {}, #lsec
  local k = n < ECHO_MIN and n or ECHO_MIN
  local head, tail = lsec:sub(1, k), lsec:sub(n - k + 1)
  local i = 1
  while true do
    local a = ls:find(head, i, true)
    if not a then break end
    local b = a + k - 1
    while b - a + 1 < n and ls:byte(b + 1) == lsec:byte(b - a + 2) do b = b + 1 end
    spans[#spans + 1] = { a, b }
    i = b + 1
  end
  if k < n then
    i = 1
    while true do
      local a = ls:find(tail, i, true)
      if not a then break end
      local b = a + k - 1
      local j = n - k -- secret index matching ls[a - 1]
      while j >= 1 and a > 1 and ls:byte(a - 1) == lsec:byte(j) do a, j = a - 1, j - 1 end
      spans[#spans + 1] = { a, b }
      i = b + 1
    end
  end
  return spans
end

-- core.quote, when the core is loadable (errors.lua is also used without it)
local has_core, core = pcall(require, "optimizely.offline.core")
local core_quote = has_core and type(core) == "table" and core.quote

-- The forms a secret takes in a message: as it is, and escaped as `%q` and
-- core.quote write it (a token holding `"` or `\` is echoed escaped, and
-- messages are quoted before they are redacted).
local function forms(secret)
  local list, seen = { secret }, { [secret] = true }
  local function add(f)
    if f and f ~= "" and not seen[f] then seen[f], list[#list + 1] = true, f end
  end
  add((("%q"):format(secret):gsub("\\\n", "\\n")):sub(2, -2))
  if core_quote then
    local q = core_quote(secret, #secret * 4 + 16)
    add(type(q) == "string" and q:sub(2, -2) or nil)
  end
  return list
end

--- The shortest secret redacted. A shorter one would garble every message
-- it hides in ("SSL c[REDACTED]rtificat[REDACTED]" for a token `e`), so it
-- is refused where it is configured instead (a site token of fewer than 8
-- characters is a configuration error; a pseudonym key needs 16 bytes).
M.SECRET_MIN = ECHO_MIN

--- Remove every echo of `secret` from `s`: the whole secret in any letter
-- case, as it is or escaped (`%q`, core.quote), and runs of 8 or more of
-- its first or last characters (a cut-short echo). Plain matching, no
-- patterns. A secret shorter than `SECRET_MIN` is left alone.
function M.redact(s, secret)
  if type(s) ~= "string" or type(secret) ~= "string" or #secret < M.SECRET_MIN then return s end
  local ls, spans = lower_plain(s), {}
  for _, form in ipairs(forms(secret)) do
    for _, sp in ipairs(echo_spans(ls, lower_plain(form))) do spans[#spans + 1] = sp end
  end
  if #spans == 0 then return s end
  table.sort(spans, function(x, y) return x[1] < y[1] end)
  local out, i = {}, 1
  for _, sp in ipairs(spans) do
    if sp[2] >= i then
      if sp[1] >= i then -- not the tail of a span already replaced
        if sp[1] > i then out[#out + 1] = s:sub(i, sp[1] - 1) end
        out[#out + 1] = "[REDACTED]"
      end
      i = sp[2] + 1
    end
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

--- `redact` for each secret of a list (the longest first).
function M.redact_all(s, secrets)
  if not secrets or #secrets == 0 then return s end
  local list = {}
  for i, v in ipairs(secrets) do list[i] = v end
  table.sort(list, function(a, b) return #a > #b end)
  for _, sec in ipairs(list) do s = M.redact(s, sec) end
  return s
end

-- The interrupt raised again after send_batch returned its summary: prints
-- as lua.c's own "interrupted!" (so an uncaught one looks as usual) and
-- carries the summary for whoever catches it.
local Interrupted = { __tostring = function() return "interrupted!" end }
M.Interrupted = Interrupted

--- An interrupt (Ctrl-C) carrying what was done before it.
function M.interrupted(summary)
  return setmetatable({ kind = "interrupted", message = "interrupted!", summary = summary }, Interrupted)
end

--- Is `e` an interrupt: lua.c's / luajit's "interrupted!" error (with its
-- position prefix) raised at the next Lua instruction after SIGINT, or one
-- of ours carrying a summary?
function M.is_interrupt(e)
  if getmetatable(e) == Interrupted then return true end
  return type(e) == "string" and e:find("interrupted!%s*$") ~= nil
end

--- Call a user's callback protected: its error must not break delivery
-- (the caller counts or logs it), but an interrupt (Ctrl-C) is raised again.
-- @return nil when it returned, else the text of its error
function M.callback(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then return nil end
  if M.is_interrupt(err) then error(err, 0) end
  return tostring(err)
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
