--- Delivery events and log lines: the one place the `on_event` hook is
-- called and the `logger` option is served, for clients, `send_batch` and
-- both queues.
--
-- **Events** (`on_event(ev)`): a table with `type` and, where they apply,
-- `ref` (the order's refCode), `attempt` (attempts made so far), `error`
-- (an `optimizely.offline.errors` object, redacted: no token in it) and
-- `reason`:
--
-- | type | when | reason |
-- |---|---|---|
-- | `retry` | an attempt failed and another follows after `delay` seconds | — |
-- | `failure` | `send`/`cancel`/`send_batch` gave an order up | `rejected`, `attempts`, `expired`, `credentials` |
-- | `dead` | a queue gave an order up (a dead letter) | `rejected`, `attempts`, `expired`, `memory` |
-- | `dropped` | a queue lost an accepted order | `shutdown` |
-- | `unknown` | an nginx queue's order was in flight when the worker's shutdown grace ended | `shutdown` |
-- | `paused` | sending paused for `seconds` | `throttled` (a 429), `credentials` |
-- | `resumed` | sending again | `throttled`, `credentials` |
-- | `storage` | a spool or ledger operation failed (`operation`) | — |
-- | `skipped` | the ledger had the order (`at`): it was not sent | `already_sent`, `in_flight` |
-- | `changed` | the ledger had another version of the order, or its cancel (`at`, `outcome`, `error`): not sent | — |
--
-- `send_batch` events also carry `index` (the order's position in the
-- source). Pushes a queue refuses are not events: `push` returns `nil,
-- err` (and the metrics count them in `dropped`).
--
-- **Logger** (`logger` option of the client config and of both queues):
-- `function(level, message)`, `level` one of "error", "warn", "notice",
-- "info"; each message one line naming the order's refCode where there is
-- one, never a token, its control characters escaped. Under nginx the default is `ngx.log` (ERR, WARN,
-- NOTICE, INFO); elsewhere there is no default. `logger = false` silences
-- it. Lines are rate-limited: at most one per second for each event type
-- and reason, the next one saying how many were suppressed — except
-- `dropped` and `unknown`, logged for every order (each is an order lost
-- or in doubt).
-- @module optimizely.offline.events
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local is_interrupt, clean = errors.is_interrupt, errors.clean

local M = {}

local type, pcall, tostring = type, pcall, tostring
local quote = core.quote

--- The level each event is logged at.
M.LEVELS = { retry = "info", failure = "warn", dead = "warn", dropped = "error", unknown = "error",
  paused = "warn", resumed = "notice", storage = "error", start = "notice", skipped = "info", changed = "warn" }

local function ngx_logger()
  local ngx = ngx -- luacheck: globals ngx
  if type(ngx) ~= "table" or type(ngx.log) ~= "function" or not ngx.get_phase then return nil end
  local by_name = { error = ngx.ERR, warn = ngx.WARN, notice = ngx.NOTICE, info = ngx.INFO }
  return function(level, message) ngx.log(by_name[level] or ngx.ERR, message) end
end

local function clock()
  local ngx = ngx -- luacheck: globals ngx
  if type(ngx) == "table" and type(ngx.now) == "function" and ngx.get_phase then return ngx.now end
  return core.now
end

local Events = {}
Events.__index = Events

--- An emitter.
-- @param o `{on_event = fn, logger = fn | false | nil, prefix =
--   "optimizely.offline queue: ", on_error = fn(name, err) (a raising
--   callback; default: ignored)}`
-- @return the emitter
function M.new(o)
  local logger = o.logger
  if logger == nil then logger = ngx_logger() end
  return setmetatable({ on_event = o.on_event, logger = logger or nil, prefix = o.prefix or "optimizely.offline: ",
    on_error = o.on_error, last = {}, suppressed = {}, now = clock() }, Events)
end

--- Log one line (rate-limited per `key`; `key` false: never limited).
function Events:log(level, message, key)
  local logger = self.logger
  if not logger then return end
  if key then
    local t = self.now()
    local last = self.last[key]
    if last and t - last < 1 then
      self.suppressed[key] = (self.suppressed[key] or 0) + 1
      return
    end
    self.last[key] = t
    local n = self.suppressed[key]
    if n and n > 0 then
      message = message .. " (" .. n .. " similar line" .. (n == 1 and "" or "s") .. " suppressed)"
      self.suppressed[key] = 0
    end
  end
  local ok, err = pcall(logger, level, clean(self.prefix .. message)) -- no line forged by a value in it
  if not ok then
    if is_interrupt(err) then error(err, 0) end
    if self.on_error then self.on_error("logger", err) end
  end
end

local function ref_text(ev)
  if ev.ref == nil or ev.ref == "" then return "an order" end
  return "order " .. quote(tostring(ev.ref))
end

local function err_text(ev)
  return ev.error and (": " .. tostring(ev.error)) or ""
end

-- The default line for an event.
local function line(ev)
  local t = ev.type
  if t == "retry" then
    return ("%s: attempt %s failed, retrying in %.2f s%s"):format(ref_text(ev), tostring(ev.attempt or "?"),
      tonumber(ev.delay) or 0, err_text(ev))
  elseif t == "failure" or t == "dead" then
    return ("%s failed for good (%s, after %s attempt%s)%s"):format(ref_text(ev), tostring(ev.reason or "error"),
      tostring(ev.attempt or 0), ev.attempt == 1 and "" or "s", err_text(ev))
  elseif t == "dropped" then
    return ("%s not delivered (%s)%s"):format(ref_text(ev), tostring(ev.reason or "dropped"), err_text(ev))
  elseif t == "paused" then
    if ev.reason == "credentials" then
      return ("the endpoint refused the credentials; paused, probing every %s s%s"):format(
        tostring(ev.seconds or "?"), err_text(ev))
    end
    return ("paused for %s s (%s)%s"):format(tostring(ev.seconds or "?"), tostring(ev.reason or "?"), err_text(ev))
  elseif t == "resumed" then
    if ev.reason == "credentials" then return "the credentials work again; sending resumes" end
    return "sending resumes (" .. tostring(ev.reason or "?") .. ")"
  elseif t == "storage" then
    return (ev.ledger and "ledger " or "spool ") .. tostring(ev.operation or "operation") .. " failed" .. err_text(ev)
  elseif t == "skipped" then
    return ("%s not sent: %s (recorded %s)"):format(ref_text(ev),
      ev.reason == "in_flight" and "already in flight" or "already sent",
      ev.at and os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(ev.at)) or "before")
  elseif t == "changed" then
    return ev.error and tostring(ev.error) or (ref_text(ev) .. " changed: not sent")
  end
  return t .. err_text(ev)
end

--- Emit an event: `on_event` (protected), then one log line.
-- @param kind the event type
-- @param fields its table (gets `type`)
-- @param message the log line instead of the default one (optional)
function Events:emit(kind, fields, message)
  fields.type = kind
  local err = self.on_event and errors.callback(self.on_event, fields)
  if err and self.on_error then self.on_error("on_event", err) end
  if self.logger then
    local level = M.LEVELS[kind] or "warn"
    if kind == "paused" and fields.reason == "credentials" then level = "error" end
    local every = kind == "dropped" or kind == "unknown" -- an order each: never rate-limited
    self:log(level, message or line(fields), not every and (kind .. ":" .. tostring(fields.reason)))
  end
end

local UAT = "https://uat.peerius.com" -- where a config without env or base_url posts

--- The startup line of a queue: the URL it posts to and its channels
-- (never a token). A client without `env` or `base_url` posts to the UAT
-- test endpoint: said as a warning.
function Events:started(what, st, extra)
  local names = {}
  for i, ch in ipairs(st.channels) do names[i] = ch.name end
  local c = st.config or {}
  local msg = ("%s started: posting to %s as site %s, channel%s %s%s"):format(what, st.post_url, quote(st.site),
    #names == 1 and "" or "s", table.concat(names, ", "), extra and ("; " .. extra) or "")
  if c.env == nil and c.base_url == UAT then
    self:log("warn", msg .. " (the UAT test endpoint: the config names no env or base_url)", false)
  else
    self:log("notice", msg, false)
  end
end

M.Events = Events
return M
