--- One options layer: every constructor (client, send_batch, both queues,
-- the nginx transport, the CLI's config file) checks its options through a
-- schema built here, so types, ranges, choices, "did you mean" and the
-- redaction of secrets are decided once.
--
--     local opts = require("optimizely.offline.opts")
--     local S = opts.schema("optimizely.offline.queue", "opts", {
--       concurrency = { type = "integer", min = 1, max = 256, default = 4 },
--       spool       = { type = "string", nonempty = true },
--       spool_sync  = { type = "choice", choices = { "normal", "full" }, requires = "spool" },
--     })
--     local o = S:check(user_opts, 2)   -- a new table, defaults filled in; raises on misuse
--
-- Field types: `string`, `number` (finite), `integer`, `boolean`, `function`,
-- `table`, `choice` (one of `choices`), `any`. Field keys: `min`, `max`
-- (inclusive), `above` (exclusive lower bound), `default`, `required`,
-- `nonempty` (strings), `pattern` + `pattern_msg` (strings), `secret` (the
-- value — or, for a table, each string in it — is never shown, and is
-- scrubbed from every message of this check),
-- `requires` (another field that must be given too), `check`
-- (`function(value, all) -> true | nil, message` for what the rest cannot say).
--
-- Misuse raises (programmer error, as everywhere in the library): the
-- message names the table and the field (`config.timeout must be ...`), quotes
-- the offending value with control characters escaped and its length capped,
-- and never contains a secret: the values of the table's secret fields are
-- redacted after quoting, case-insensitively.
-- @module optimizely.offline.opts
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

local huge, floor = math.huge, math.floor
local quote, suggest = core.quote, core.suggest

--- Show a value in a message: strings quoted and escaped (capped), numbers
-- as numbers, anything else by its type.
function M.show(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "number" then
    if v ~= v then return "nan" end
    if v == floor(v) and v > -1e15 and v < 1e15 then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  if t == "boolean" or t == "nil" then return tostring(v) end
  return t
end
local show = M.show

local function range_text(f)
  local lo = f.above and ("> " .. show(f.above)) or (f.min and (">= " .. show(f.min)))
  local hi = f.max and ("<= " .. show(f.max))
  if f.min and f.max then return "in " .. show(f.min) .. ".." .. show(f.max) end
  if lo and hi then return lo .. " and " .. hi end
  return lo or hi
end

local function choice_list(choices)
  local parts = {}
  for i, c in ipairs(choices) do
    parts[i] = (type(c) == "string" and c:match("^[%a_][%w_]*$")) and c or show(c)
  end
  return table.concat(parts, ", ")
end

-- What is wrong with `v` for field `f`, or nil when it is fine.
local function problem(f, v, all)
  local t, want = type(v), f.type
  local shown = f.secret and "" or (" (got " .. show(v) .. ")")
  if want == "integer" or want == "number" then
    if t ~= "number" or v ~= v or v == huge or v == -huge then
      if t == "number" then
        return (want == "integer" and "must be an integer" or "must be a finite number") .. shown
      end
      return "must be a" .. (want == "integer" and "n integer" or " finite number") .. ", got " .. t
    end
    if want == "integer" and v ~= floor(v) then return "must be an integer" .. shown end
    if (f.min and v < f.min) or (f.max and v > f.max) or (f.above and v <= f.above) then
      return "must be " .. (want == "integer" and "an integer " or "") .. range_text(f) .. shown
    end
  elseif want == "choice" then
    local ok = false
    for _, c in ipairs(f.choices) do if c == v then ok = true; break end end
    if not ok then return "must be one of " .. choice_list(f.choices) .. shown end
  elseif want ~= "any" and t ~= want then
    return "must be a" .. (want:match("^[aeiou]") and "n " or " ") .. want .. ", got " .. t
  elseif want == "string" then
    if f.nonempty and v == "" then return "must not be empty" end
    if f.pattern and not v:find(f.pattern) then
      return (f.pattern_msg or ("must match " .. f.pattern)) .. shown
    end
  end
  if f.check then
    local ok, msg = f.check(v, all)
    if not ok then return msg end
  end
  return nil
end

local Schema = {}
Schema.__index = Schema

--- Build a schema.
-- @param name who checks (message prefix), e.g. "optimizely.offline.client"
-- @param what how the table is called in messages, e.g. "config" or "opts"
-- @param fields map of field name -> field spec (see the module doc)
-- @return schema with `:check(t, level)`, `:keys()`, `:secrets(t)`
function M.schema(name, what, fields)
  local names = {}
  for k in pairs(fields) do names[#names + 1] = k end
  table.sort(names)
  return setmetatable({ name = name, what = what, fields = fields, names = names }, Schema)
end

--- Field names, sorted.
function Schema:keys() return self.names end

--- Values of the secret fields present in `t` (for redaction).
function Schema:secrets(t)
  local list = {}
  if type(t) == "table" then
    for _, k in ipairs(self.names) do
      local v = self.fields[k].secret and rawget(t, k)
      if type(v) == "string" and v ~= "" then list[#list + 1] = v end
      if type(v) == "table" then -- a map of secrets (tokens per channel)
        for _, s in pairs(v) do
          if type(s) == "string" and s ~= "" then list[#list + 1] = s end
        end
      end
    end
  end
  return list
end

--- Raise a message about field `key` of this schema's table, redacted.
function Schema:fail(t, key, msg, level)
  -- a message about a sub-field (".store must be ...") follows the key directly
  local s = self.name .. ": " .. self.what .. (key and ("." .. key) or "") .. (msg:sub(1, 1) == "." and "" or " ")
    .. msg
  error(errors.redact_all(s, self:secrets(t)), (level or 1) + 1)
end

--- Check `t` (nil counts as `{}`): unknown keys, then every field. Raises
-- at `level` (as `error`'s level, from the caller of `check`).
-- @return a new table: the given values, and defaults for the missing ones
function Schema:check(t, level)
  level = (level or 1) + 1
  if t == nil then t = {} end
  if type(t) ~= "table" then
    error(self.name .. ": " .. self.what .. " must be a table, got " .. type(t), level)
  end
  local unknown
  for k in pairs(t) do
    if type(k) ~= "string" then
      self:fail(t, nil, "has a non-string key " .. show(k), level)
    elseif not self.fields[k] and (not unknown or k < unknown) then
      unknown = k
    end
  end
  if unknown then
    local hint = suggest(unknown, self.names)
    self:fail(t, unknown, "is not a known option" .. (hint and (" (did you mean '" .. hint .. "'?)") or ""),
      level)
  end
  local out = {}
  for _, k in ipairs(self.names) do
    local f, v = self.fields[k], rawget(t, k)
    if v == nil then
      if f.required then self:fail(t, k, "is required", level) end
      v = f.default
    else
      local msg = problem(f, v, t)
      if msg then self:fail(t, k, msg, level) end
      if f.requires and rawget(t, f.requires) == nil then
        self:fail(t, k, "needs " .. self.what .. "." .. f.requires, level)
      end
    end
    out[k] = v
  end
  return out
end

--- A new schema with this one's fields plus `more` (a field set to false is removed).
function Schema:extend(name, what, more)
  local fields = {}
  for k, f in pairs(self.fields) do fields[k] = f end
  for k, f in pairs(more or {}) do fields[k] = f or nil end
  return M.schema(name or self.name, what or self.what, fields)
end

--- A copy of the schema restricted to `keys` (a list).
function Schema:only(keys, name, what)
  local fields = {}
  for _, k in ipairs(keys) do fields[k] = assert(self.fields[k], k) end
  return M.schema(name or self.name, what or self.what, fields)
end

M.Schema = Schema
return M
