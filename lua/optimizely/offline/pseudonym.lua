--- Pseudonymised user ids: `user.id` from `user.email`, with a keyed
-- HMAC-SHA256 (OpenSSL libcrypto, in the C core).
--
-- The endpoint deprecates `user.email` in favour of a pseudonymised
-- `user.id`, which must equal the id the retailer's web shop sends for the
-- same person. The built-in pseudonym is
--
--     lower-case-hex( HMAC-SHA256(key, normalise(email)) )   -- 64 characters
--
-- where `normalise` trims ASCII whitespace at both ends and lower-cases the
-- ASCII letters A-Z, nothing else (no Unicode case folding; `+tags` and dots
-- stay unless `strip_plus_tag` / `strip_dots` ask). A web shop that computes
-- its ids differently plugs its own function in with `fn`. The guide, with
-- the normalisation table and the mapping file: doc/topics/pseudonymisation.md.
--
--     local pseudonym = require("optimizely.offline.pseudonym")
--     local p = pseudonym.new({ key = secret })         -- raises on bad options
--     local id, err = p:id("Jane.Doe@Example.com")     -- "3f0c…" | nil, err
--     local payload2, warnings = p:apply(payload)      -- | nil, err
--
-- The key is a secret, like the site token: it is kept only in C memory
-- (wiped by `p:close()` or when `p` is collected), never in `p`'s Lua
-- table, and never appears in an error, a warning or `tostring(p)`.
--
-- Errors. Misuse of the API raises (bad option types or values, a key given
-- in `opts` that is shorter than 16 bytes, using `p` after `close`). Runtime
-- failures are `nil, err` with an error object from optimizely.offline.errors:
--
-- * kind `"validation"`: the e-mail is not a string, is empty after
--   trimming, has no or several `@`, nothing before or after the `@`, a
--   space or control character, invalid UTF-8, or more than 254 bytes; or
--   `fn` gave no id. `err.problems[1].path` names the field (`"email"` for
--   `pseudonymise` and `p:id`, `"user.email"` for `p:apply`). The message
--   says what is wrong and never quotes the address.
-- * kind `"config"`: no key in the environment (or config table), or the key
--   found there is empty or too short (`pseudonymise`, `key_from`, `resolve`).
-- @module optimizely.offline.pseudonym
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")

local M = {}

--- The environment variable the key is read from when none is given.
M.ENV = "OPTIMIZELY_PSEUDONYM_KEY"
--- Shortest key in bytes: a shorter key is an error, not a weak hash.
M.KEY_MIN = 16
--- Longest key in bytes.
M.KEY_MAX = 1024
-- Output lengths (characters) per encoding: `{min, max, default}`. Hex
-- lengths are even (whole bytes); 16 hex characters are 64 bits, 22
-- base64url characters 132 bits.
M.LENGTHS = { hex = { 16, 64, 64 }, base64url = { 22, 43, 43 } }

local STRIP_PLUS, STRIP_DOTS = core.EMAIL_STRIP_PLUS_TAG, core.EMAIL_STRIP_DOTS

local function key_problem(key)
  if key == "" then return "is empty" end
  if #key < M.KEY_MIN then
    return ("is too short (%d bytes; at least %d, e.g. 32 random bytes)"):format(#key, M.KEY_MIN)
  end
  if #key > M.KEY_MAX then return ("is too long (%d bytes; at most %d)"):format(#key, M.KEY_MAX) end
  return nil
end

local function length_check(v, all)
  local enc = type(all.encoding) == "string" and all.encoding or "hex"
  local r = M.LENGTHS[enc]
  if not r then return true end -- the encoding field reports itself
  if v < r[1] or v > r[2] then
    return nil, ("must be %d..%d for %s, got %d"):format(r[1], r[2], enc, v)
  end
  if enc == "hex" and v % 2 ~= 0 then return nil, ("must be even for hex (whole bytes), got %d"):format(v) end
  return true
end

local FIELDS = {
  key = { type = "string", secret = true,
          check = function(v) local p = key_problem(v); if p then return nil, p end; return true end },
  length = { type = "integer", check = length_check },
  encoding = { type = "choice", choices = { "hex", "base64url" }, default = "hex" },
  strip_plus_tag = { type = "boolean", default = false },
  strip_dots = { type = "boolean", default = false },
  replace_email = { type = "boolean", default = true },
  fn = { type = "function" },
}
--- The options schema of `new` (optimizely.offline.opts), for callers that
-- check a `pseudonymise = {...}` option of their own against it.
-- @field schema
local NEW = opts.schema("optimizely.offline.pseudonym", "opts", FIELDS)
-- The options of one pseudonym (the function form has no use for the rest).
local SHAPE = NEW:only({ "key", "length", "encoding", "strip_plus_tag", "strip_dots" },
  "optimizely.offline.pseudonymise", "opts")
M.schema = NEW

local BUILT_IN_ONLY = { "key", "length", "encoding", "strip_plus_tag", "strip_dots" }

local function flags_of(o)
  return (o.strip_plus_tag and STRIP_PLUS or 0) + (o.strip_dots and STRIP_DOTS or 0)
end

local function invalid(path, why)
  return errors.new({ kind = "validation", message = path .. ": " .. why,
                      problems = { { path = path, message = why } }, retryable = false })
end

local function config_error(msg)
  return errors.new({ kind = "config", message = msg, retryable = false })
end

-- An address shown in a warning: the first character of the local part,
-- then the domain ("j…@example.com"), escaped for a message.
local function masked(email)
  local first = email:match("^%s*([%z\1-\127\194-\244][\128-\191]*)") or ""
  local domain = email:match("@([^@]*)$") or ""
  return core.quote(first .. "…@" .. domain:gsub("%s+$", ""))
end

-- ------------------------------------------------------------- the object

local Pseudonym = {}
Pseudonym.__index = Pseudonym
M.Pseudonym = Pseudonym

function Pseudonym.__tostring(p)
  if p._fn then return "optimizely.offline.pseudonym (custom fn)" end
  return ("optimizely.offline.pseudonym (HMAC-SHA256, %s, %d characters%s%s%s)"):format(
    p.encoding, p.length, p.strip_plus_tag and ", strip_plus_tag" or "",
    p.strip_dots and ", strip_dots" or "", p._c and "" or ", closed")
end

--- A pseudonymiser. Raises on bad options (the message never shows the key).
-- @tparam table o options:
--
-- * `key` (string, 16..1024 bytes, secret): the HMAC key, used as the bytes
--   it is (a hex or base64 text is not decoded). Required unless `fn` is
--   given; to read it from the environment or a config file use `resolve`.
-- * `length` (integer): characters of output, the id truncated to its
--   first `length` characters. hex: 16..64, even (default 64); base64url:
--   22..43 (default 43).
-- * `encoding` (`"hex"` | `"base64url"`, default `"hex"`): lower-case hex,
--   or unpadded base64url (RFC 4648 §5: `A-Z a-z 0-9 - _`).
-- * `strip_plus_tag` (boolean, default false): cut the local part at its
--   first `+` ("jane+news@x.com" → "jane@x.com"), for every domain.
-- * `strip_dots` (boolean, default false): remove every `.` from the local
--   part ("jane.doe@x.com" → "janedoe@x.com"), for every domain.
-- * `replace_email` (boolean, default true): `apply` removes `user.email`
--   once `user.id` is set (the endpoint deprecates the e-mail).
-- * `fn` (function(email) -> id | nil, message): replaces the built-in
--   pseudonym (then `key`, `length`, `encoding` and the strip options are not
--   allowed). It gets the address as the payload holds it (not trimmed or
--   lower-cased: it does its own normalisation, as the web shop does) once
--   the address passes the same checks as the built-in one. It must return
--   a non-empty string, or nil and a message (then `id`/`apply` fail with a
--   validation error); anything else raises.
-- @return a pseudonymiser `p` (methods `id`, `apply`, `close`)
function M.new(o)
  local c = NEW:check(o, 2)
  local raw = o or {}
  if c.fn then
    for _, k in ipairs(BUILT_IN_ONLY) do
      if raw[k] ~= nil then NEW:fail(raw, k, "does not apply with opts.fn (fn replaces the built-in pseudonym)", 2) end
    end
    return setmetatable({ _fn = c.fn, replace_email = c.replace_email }, Pseudonym)
  end
  if c.key == nil then
    NEW:fail(raw, "key", "is required (or opts.fn); pseudonym.resolve reads it from " .. M.ENV, 2)
  end
  local length = c.length or M.LENGTHS[c.encoding][3]
  local p = setmetatable({
    encoding = c.encoding, length = length, strip_plus_tag = c.strip_plus_tag,
    strip_dots = c.strip_dots, replace_email = c.replace_email,
  }, Pseudonym)
  p._c = core.pseudonymiser(c.key, c.encoding, length, flags_of(c))
  return p
end

-- The id for `email`, or nil, a validation error naming `path`.
function Pseudonym:_id(email, path)
  local c = self._c
  if c then
    local id, why = c:id(email)
    if id then return id end
    return nil, invalid(path, why.message)
  end
  local fn = self._fn
  if not fn then error("optimizely.offline.pseudonym: used after close", 3) end
  local ok, why = core.email_normalise(email)
  if not ok then return nil, invalid(path, why.message) end
  local id, msg = fn(email)
  if type(id) == "string" and id ~= "" then return id end
  if id == nil then
    return nil, invalid(path, "the pseudonym function gave no id"
      .. (msg ~= nil and (": " .. core.quote(tostring(msg))) or ""))
  end
  error("optimizely.offline.pseudonym: opts.fn must return a non-empty string (or nil, message), got "
    .. (type(id) == "string" and "an empty string" or type(id)), 3)
end

--- The pseudonym of `email`.
-- @return id, or nil and a validation error (path `"email"`)
function Pseudonym:id(email)
  return self:_id(email, "email")
end

local function copy(t)
  local out = {}
  for k, v in next, t do out[k] = v end
  return out
end

--- Pseudonymise a payload `{user = {email = …}, …}` before validation.
--
-- * `user.email` and no `user.id`: the result has `user.id` = the pseudonym,
--   and no `email` (unless `replace_email = false`).
-- * both: when `user.id` is not the pseudonym of `user.email`, a warning
--   `{source = "pseudonymise", path = "user.id", message = …}` (the address
--   masked) and the given id is kept; `email` is removed unless
--   `replace_email = false`.
-- * no `user.email` (or no `user` table, or a payload that is not a plain
--   table): the payload as it is, for validation to judge.
--
-- The caller's tables are never changed: a changed payload is a new top
-- table with a new `user` table; everything else is shared.
-- @return payload2, warnings (a list, empty when none) | nil, err (kind
--   `"validation"`, path `"user.email"`)
function Pseudonym:apply(payload)
  if type(payload) ~= "table" or getmetatable(payload) ~= nil then return payload, {} end
  local user = rawget(payload, "user")
  if type(user) ~= "table" or getmetatable(user) ~= nil then return payload, {} end
  local email = rawget(user, "email")
  if email == nil then return payload, {} end
  local id, err = self:_id(email, "user.email")
  if not id then return nil, err end
  local given, warnings = rawget(user, "id"), {}
  local user2
  if given == nil then
    user2 = copy(user)
    user2.id = id
    if self.replace_email then user2.email = nil end
  else
    if given ~= id then
      warnings[1] = { source = "pseudonymise", path = "user.id",
                      message = "user.id is not the pseudonym of user.email (" .. masked(email)
                        .. "): the given user.id is kept" }
    end
    if not self.replace_email then return payload, warnings end
    user2 = copy(user)
    user2.email = nil
  end
  local top = copy(payload)
  top.user = user2
  return top, warnings
end

--- Wipe the key (C memory); later calls raise. Closing twice is fine.
function Pseudonym:close()
  if self._c then self._c:close(); self._c = nil end
  self._fn = nil
end

-- ------------------------------------------------------------------ keys

--- The key from the environment, else from a config table.
-- `OPTIMIZELY_PSEUDONYM_KEY` wins over `conf.pseudonym_key` (as the token's
-- variable wins over the config file). A variable set but empty is an
-- error, not "absent".
-- @param getenv function(name) (default os.getenv)
-- @param conf optional table (e.g. a config file's `pseudonym_key = …`)
-- @return key, source (a description for messages: the variable's name or
--   "pseudonym_key") | nil, err (kind "config"; never shows the key)
function M.key_from(getenv, conf)
  getenv = getenv or os.getenv
  local key, source = getenv(M.ENV), M.ENV
  if key == nil and type(conf) == "table" then key, source = conf.pseudonym_key, "pseudonym_key" end
  if key == nil then
    return nil, config_error("no pseudonym key: set " .. M.ENV .. " (or pseudonym_key in the config file)")
  end
  if type(key) ~= "string" then return nil, config_error(source .. " must be a string, got " .. type(key)) end
  local why = key_problem(key)
  if why then return nil, config_error("the pseudonym key in " .. source .. " " .. why) end
  return key, source
end

--- A pseudonymiser from `o` (as for `new`), the key taken with `key_from`
-- when `o` has neither `key` nor `fn`: for clients, queues and the CLI,
-- whose key is runtime configuration.
-- @return p | nil, err (kind "config"); raises on bad options
function M.resolve(o, getenv, conf)
  if o ~= nil and type(o) ~= "table" then
    error("optimizely.offline.pseudonym: opts must be a table, got " .. type(o), 2)
  end
  o = o or {}
  if o.key == nil and o.fn == nil then
    local key, err = M.key_from(getenv, conf)
    if not key then return nil, err end
    o = copy(o)
    o.key = key
  end
  return M.new(o)
end

-- ------------------------------------------------ offline.pseudonymise

-- One pseudonymiser kept between calls (its key is compared in C, in
-- constant time).
local cached

-- The checked form of each opts table seen, while the caller keeps that
-- table (weak keys) and its content is unchanged: a call with the same opts
-- skips the schema walk, most of the cost of a call.
local memo = setmetatable({}, { __mode = "k" })
local DEFAULTS

local function checked(o)
  if o == nil then
    DEFAULTS = DEFAULTS or SHAPE:check(nil)
    return DEFAULTS
  end
  local m = type(o) == "table" and memo[o]
  if m then
    local n, raw = 0, m.raw
    for k, v in next, o do
      n = n + 1
      if raw[k] ~= v then n = -1; break end
    end
    if n == m.n then return m.checked end
  end
  local c = SHAPE:check(o, 3)
  local raw, n = {}, 0
  for k, v in next, o do raw[k] = v; n = n + 1 end
  memo[o] = { checked = c, raw = raw, n = n }
  return c
end

--- `offline.pseudonymise(email [, opts]) -> id | nil, err`: the pseudonym
-- of one address. `opts`: `key`, `length`, `encoding`, `strip_plus_tag`,
-- `strip_dots` as for `new`; without `opts.key` the key is read from
-- `OPTIMIZELY_PSEUDONYM_KEY` at each call.
-- Raises on bad `opts` (including a short `opts.key`).
-- @return id | nil, err (kind "validation", path "email"; or kind "config"
--   when the environment has no usable key)
function M.pseudonymise(email, o)
  local c = checked(o)
  local key = c.key
  if key == nil then
    local err
    key, err = M.key_from(os.getenv)
    if not key then return nil, err end
  end
  local length = c.length or M.LENGTHS[c.encoding][3]
  local flags = flags_of(c)
  if not (cached and cached:same(key, c.encoding, length, flags)) then
    if cached then cached:close() end
    cached = nil
    cached = core.pseudonymiser(key, c.encoding, length, flags)
  end
  local id, why = cached:id(email)
  if id then return id end
  return nil, invalid("email", why.message)
end

return M
