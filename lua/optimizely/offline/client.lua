--- HTTPS client for the offline-orders endpoint (libcurl, one reused handle).
--
--     local offline = require("optimizely.offline")
--     local client = offline.client{ site = "demo", token = TOKEN, channel = "store" }
--     local res, err = client:send(payload)
--
-- Delivery is at-least-once: a network error or timeout is retried even when
-- the server may already have stored the order (the request can time out
-- after it arrived), so the endpoint can see the same order twice.
-- @module optimizely.offline.client
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local retry = require("optimizely.offline.retry")

local okjson, cjson = pcall(require, "cjson.safe")
if not okjson then cjson = nil end

local M = {}

local CHANNELS = { store = true, mobileapp = true, tv = true, callcentre = true }
local CHANNEL_LIST = "store, mobileapp, tv, callcentre"
local ENVS = {
  uat = function() return "https://uat.peerius.com" end,
  uk = function(n) return "https://" .. n .. ".peerius.com" end,
  se = function(n) return "https://" .. n .. ".peerius.episerver.net" end,
  us = function(n) return "https://" .. n .. ".uswe01.productrecs.episerver.net" end,
}
local POST_PATH = "/tracker/smart-api/orders/offline"
M.DEFAULT_CANCEL_PATH = "/smart-api/orders/offline/{refCode}"

local KNOWN = {
  "site", "token", "channel", "allow_custom_channel", "env", "sitename", "base_url",
  "cancel_path", "allow_http", "ca_file", "ca_path", "proxy", "timeout",
  "connect_timeout", "max_attempts", "backoff_base", "backoff_max", "retry_after_max",
  "sleep", "random", "verbose", "http_version", "transport",
}
local KNOWN_SET = {}
for _, k in ipairs(KNOWN) do KNOWN_SET[k] = true end

-- Private state per client, out of reach of pairs()/inspection: the
-- header list carries the token.
local private = setmetatable({}, { __mode = "k" })

---------------------------------------------------------------------------
-- Configuration

local function levenshtein(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function did_you_mean(key)
  local best, bestd
  for _, k in ipairs(KNOWN) do
    local d = levenshtein(key:lower(), k)
    if not bestd or d < bestd then best, bestd = k, d end
  end
  if bestd and bestd <= math.max(2, math.floor(#key / 3)) then
    return " (did you mean '" .. best .. "'?)"
  end
  return ""
end

-- Raised config errors go through this so the token never shows, whatever
-- field the caller put it in by mistake.
local ConfigError = {}

local function bad(field, msg)
  error(setmetatable({ msg = "optimizely.offline.client: config." .. field .. " " .. msg },
    ConfigError))
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

local function has_ctl(s) return s:find("[%z\1-\31\127]") ~= nil end

local function want_string(cfg, field, required)
  local v = cfg[field]
  if v == nil then
    if required then bad(field, "is required") end
    return nil
  end
  if type(v) ~= "string" then bad(field, "must be a string, got " .. type(v)) end
  if v == "" then bad(field, "must not be empty") end
  return v
end

local function want_label(cfg, field, required)
  local v = want_string(cfg, field, required)
  if v and not v:match("^[%w%._%-]+$") then
    bad(field, "may contain only letters, digits, '.', '_' and '-' (got " .. show(v) .. ")")
  end
  return v
end

local function want_bool(cfg, field)
  local v = cfg[field]
  if v ~= nil and type(v) ~= "boolean" then bad(field, "must be a boolean, got " .. type(v)) end
  return v == true
end

local function want_number(cfg, field, dflt, lo, integer)
  local v = cfg[field]
  if v == nil then return dflt end
  if type(v) ~= "number" or v ~= v or v == math.huge then
    bad(field, "must be a finite number, got " .. show(v))
  end
  if v < lo then bad(field, "must be >= " .. lo .. " (got " .. show(v) .. ")") end
  if integer and v ~= math.floor(v) then bad(field, "must be an integer (got " .. show(v) .. ")") end
  return v
end

local function want_func(cfg, field)
  local v = cfg[field]
  if v ~= nil and type(v) ~= "function" then bad(field, "must be a function, got " .. type(v)) end
  return v
end

-- scheme://host[:port][/prefix] → normalised base (no trailing slash), scheme
local function parse_base_url(u)
  if has_ctl(u) or u:find("%s") then bad("base_url", "must not contain spaces or control characters") end
  local scheme, authority, path = u:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then bad("base_url", "must look like https://host[:port][/prefix] (got " .. show(u) .. ")") end
  scheme = scheme:lower()
  if scheme ~= "https" and scheme ~= "http" then
    bad("base_url", "must use https (got scheme " .. show(scheme) .. ")")
  end
  if authority:find("@", 1, true) then bad("base_url", "must not contain user information") end
  local host, port = authority:match("^([%w%.%-]+):?(%d*)$")
  if not host then host, port = authority:match("^(%[[%x:%.]+%]):?(%d*)$") end
  if not host or host == "" then bad("base_url", "has no valid host (got " .. show(u) .. ")") end
  if port ~= "" and (tonumber(port) < 1 or tonumber(port) > 65535) then
    bad("base_url", "has an invalid port " .. show(port))
  end
  if authority:sub(-1) == ":" then bad("base_url", "has an empty port") end
  if path:find("[?#]") then bad("base_url", "must not contain a query or fragment") end
  path = path:gsub("/+$", "")
  return scheme .. "://" .. authority .. path, scheme
end

local function user_agent()
  local lua = (type(jit) == "table" and jit.version) or _VERSION
  return "optimizely-offline/" .. core.VERSION .. " libcurl/" .. (core.curl_version()) .. " " .. lua
end

local function check_config(cfg)
  if type(cfg) ~= "table" then
    error(setmetatable({ msg = "optimizely.offline.client: config must be a table, got " .. type(cfg) },
      ConfigError))
  end
  local keys = {}
  for k in pairs(cfg) do
    if type(k) ~= "string" then bad("?", "has a non-string key " .. show(k)) end
    if not KNOWN_SET[k] then keys[#keys + 1] = k end
  end
  if #keys > 0 then
    table.sort(keys)
    bad(keys[1], "is not a known option" .. did_you_mean(keys[1]))
  end

  local c = {}
  c.site = want_label(cfg, "site", true)
  local token = want_string(cfg, "token", true)
  -- Never echo the token, not even in part.
  if has_ctl(token) then bad("token", "contains a control character (CR, LF, ...)") end
  if token:match("^%s") or token:match("%s$") then bad("token", "has leading or trailing spaces") end
  c.token = token

  local channel = want_string(cfg, "channel", true)
  c.allow_custom_channel = want_bool(cfg, "allow_custom_channel")
  if not CHANNELS[channel] then
    if not c.allow_custom_channel then
      bad("channel", "must be one of " .. CHANNEL_LIST .. " (got " .. show(channel)
        .. "); set allow_custom_channel = true for a channel agreed with Optimizely")
    end
    if not channel:match("^[%w%._%-]+$") then
      bad("channel", "may contain only letters, digits, '.', '_' and '-' (got " .. show(channel) .. ")")
    end
  end
  c.channel = channel

  local env = want_string(cfg, "env", false)
  local sitename = want_label(cfg, "sitename", false)
  local base = want_string(cfg, "base_url", false)
  c.allow_http = want_bool(cfg, "allow_http")
  local scheme
  if base then
    if env then bad("env", "and config.base_url are exclusive: give one of them") end
    base, scheme = parse_base_url(base)
    if scheme == "http" and not c.allow_http then
      bad("base_url", "uses http://; HTTPS is required (set allow_http = true for local testing only)")
    end
  else
    env = env or "uat"
    local mk = ENVS[env]
    if not mk then bad("env", "must be one of uat, uk, se, us (got " .. show(env) .. ")") end
    base = mk(sitename or c.site)
  end
  c.base_url = base
  c.post_url = base .. POST_PATH

  local cp = want_string(cfg, "cancel_path", false) or M.DEFAULT_CANCEL_PATH
  if cp:sub(1, 1) ~= "/" then bad("cancel_path", "must start with '/'") end
  local a = cp:find("{refCode}", 1, true)
  if not a or cp:find("{refCode}", a + 1, true) then
    bad("cancel_path", "must contain {refCode} exactly once (got " .. show(cp) .. ")")
  end
  if has_ctl(cp) or cp:find("[%s?#]") then
    bad("cancel_path", "must not contain spaces, control characters, '?' or '#'")
  end
  c.cancel_prefix = base .. cp:sub(1, a - 1)
  c.cancel_suffix = cp:sub(a + #"{refCode}")

  local ca_file = want_string(cfg, "ca_file", false)
  if ca_file then
    local f = io.open(ca_file, "rb")
    if not f then bad("ca_file", "cannot be read: " .. show(ca_file)) end
    f:close()
  end
  c.ca_file = ca_file
  c.ca_path = want_string(cfg, "ca_path", false)
  c.proxy = want_string(cfg, "proxy", false)

  c.timeout = want_number(cfg, "timeout", 10, 0.001)
  c.connect_timeout = want_number(cfg, "connect_timeout", 5, 0.001)
  c.max_attempts = want_number(cfg, "max_attempts", 4, 1, true)
  if c.max_attempts > 100 then bad("max_attempts", "must be <= 100") end
  c.backoff_base = want_number(cfg, "backoff_base", 0.25, 0)
  c.backoff_max = want_number(cfg, "backoff_max", 10, 0)
  if c.backoff_max < c.backoff_base then bad("backoff_max", "must be >= backoff_base") end
  c.retry_after_max = want_number(cfg, "retry_after_max", 60, 0)
  c.sleep = want_func(cfg, "sleep") or core.sleep
  -- Another transport than libcurl (the nginx cosocket one, or a function
  -- for tests): an object with :request(method, url, headers, body) and
  -- :close(), or a bare function(method, url, headers, body). It returns
  -- status, body, info | nil, kind, message, curl_code — like core.http_new's.
  local tr = cfg.transport
  if tr ~= nil then
    if type(tr) == "function" then
      local fn = tr
      tr = { request = function(_, ...) return fn(...) end, close = function() end }
    elseif type(tr) ~= "table" and type(tr) ~= "userdata" or not tr.request then
      bad("transport", "must be a function or an object with :request(), got " .. type(tr))
    end
    c.transport = tr
  end
  c.random = want_func(cfg, "random")
  c.verbose = want_bool(cfg, "verbose")
  -- HTTP/1.1 by default: one request at a time gains nothing from HTTP/2
  -- multiplexing, and 1.1 keep-alive costs ~20% less CPU per order (bench).
  c.http_version = want_string(cfg, "http_version", false) or "1.1"
  if c.http_version ~= "1.1" and c.http_version ~= "2" then
    bad("http_version", "must be \"1.1\" or \"2\" (got " .. show(c.http_version) .. ")")
  end
  return c
end

---------------------------------------------------------------------------
-- Responses

-- Drop commas that directly precede '}' or ']' outside strings: the docs'
-- own success example is {"status":"OK",}.
local function strip_trailing_commas(s)
  local out, i, n, instr = {}, 1, #s, false
  local start = 1
  while i <= n do
    local c = s:sub(i, i)
    if instr then
      if c == "\\" then i = i + 1 elseif c == '"' then instr = false end
    elseif c == '"' then
      instr = true
    elseif c == "," then
      local j = i + 1
      while j <= n and s:sub(j, j):match("%s") do j = j + 1 end
      local nx = s:sub(j, j)
      if nx == "}" or nx == "]" then
        out[#out + 1] = s:sub(start, i - 1)
        start = i + 1
      end
    end
    i = i + 1
  end
  out[#out + 1] = s:sub(start)
  return table.concat(out)
end

--- Decode a response envelope leniently.
-- @return the decoded object (a table), or nil when the body is empty or not
--   a JSON object
function M.decode_envelope(body)
  if not cjson or type(body) ~= "string" then return nil end
  if body:byte(1) ~= 123 and not body:find("^%s*{") then return nil end -- 123 = "{"
  local v = cjson.decode(body)
  if v == nil then v = cjson.decode(strip_trailing_commas(body)) end
  if type(v) ~= "table" then return nil end
  return v
end

local function str(v)
  if type(v) == "string" then return v end
  if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
  return nil
end

-- {code, message} pairs from the envelope's `errors`.
local function envelope_errors(env)
  local list = {}
  if env and type(env.errors) == "table" then
    for _, e in ipairs(env.errors) do
      if type(e) == "table" then
        list[#list + 1] = { code = str(e.code), message = str(e.message) }
      elseif str(e) then
        list[#list + 1] = { message = str(e) }
      end
    end
  end
  return list
end

local function env_status(env)
  local s = env and str(env.status)
  return s and s:lower() or nil
end

local function one_line(s, limit)
  s = tostring(s):gsub("[%c]+", " ")
  if #s > limit then s = s:sub(1, limit) .. "..." end
  return s
end

local function describe(list)
  local e = list[1]
  if not e then return nil end
  local s = e.code or ""
  if e.message then s = (s ~= "" and (s .. ": ") or "") .. e.message end
  if #list > 1 then s = s .. " (+" .. (#list - 1) .. " more)" end
  return s
end

-- The one exit for failures: every string is scrubbed of the token.
local function make_error(st, fields)
  local tok = st.token
  fields.message = one_line(errors.redact(fields.message, tok), 500)
  if fields.body then fields.body = errors.redact(fields.body, tok) end
  if fields.errors then
    for _, e in ipairs(fields.errors) do
      e.code = errors.redact(e.code, tok)
      e.message = errors.redact(e.message, tok)
    end
    fields.code = fields.errors[1] and fields.errors[1].code or nil
  end
  return errors.new(fields)
end

-- One attempt's outcome: res (success) or err with retryable set.
local function outcome(st, status, body, info, curl_code)
  if not status then
    -- transport failure: body = kind, info = message
    return nil, make_error(st, { kind = body, message = info, curl_code = curl_code,
      retryable = retry.classify(body) })
  end
  local env = M.decode_envelope(body)
  local es = env_status(env)
  if status >= 200 and status < 300 then
    if es == "ok" and env.warnings == nil then -- the common case, kept cheap
      return { status = status, body = body, envelope = env, warnings = {}, info = info }
    end
    local list = envelope_errors(env)
    if es == "fail" then
      return nil, make_error(st, { kind = "api", status = status, body = body, envelope = env,
        errors = list, retryable = false,
        message = "order rejected: " .. (describe(list) or "status fail") })
    end
    local warnings = {}
    if es == "warning" then
      for _, e in ipairs(list) do
        warnings[#warnings + 1] = { source = "api", code = e.code, message = e.message }
      end
    end
    if env and type(env.warnings) == "table" then
      for _, w in ipairs(env.warnings) do
        local m = type(w) == "table" and (str(w.warning) or str(w.message)) or str(w)
        if m then warnings[#warnings + 1] = { source = "api", message = m } end
      end
    end
    if env and es ~= "ok" and es ~= "warning" then
      warnings[#warnings + 1] = { source = "api",
        message = "unrecognised response status " .. string.format("%q", tostring(env.status)) }
    end
    return { status = status, body = body, envelope = env, warnings = warnings, info = info }
  end
  local list = envelope_errors(env)
  local what = describe(list)
  return nil, make_error(st, { kind = "http", status = status, body = body, envelope = env,
    errors = list, retryable = retry.classify(status), retry_after = info.retry_after,
    message = "server answered HTTP " .. status .. (what and (": " .. what) or "") })
end

---------------------------------------------------------------------------
-- The client object

local Client = {}
Client.__index = Client

local function state(self)
  local st = private[self]
  if not st then error("optimizely.offline.client: not a client object", 3) end
  if not st.http then error("optimizely.offline.client: client is closed", 3) end
  return st
end

-- Send one request, retrying per the policy. Returns res or nil, err.
local function deliver(st, method, url, body, warnings)
  local attempt = 0
  while true do
    attempt = attempt + 1
    local status, rbody, info, curl_code = st.http:request(method, url, st.headers, body)
    local res, err = outcome(st, status, rbody, info, curl_code)
    if res then
      res.attempts = attempt
      if warnings and #warnings > 0 then
        -- the encoder's warnings first, then the server's
        local all = {}
        for i = 1, #warnings do all[i] = warnings[i] end
        for i = 1, #res.warnings do all[#all + 1] = res.warnings[i] end
        res.warnings = all
      end
      return res
    end
    err.attempts = attempt
    if not err.retryable or attempt >= st.policy.max_attempts then return nil, err end
    st.sleep(st.policy:delay(attempt, status and info.retry_after or nil))
  end
end

--- Validate, encode and send one order.
-- @param payload `{lang?, user?, order}` as accepted by `offline.encode`
-- @return res `{status, attempts, body, envelope, warnings, info}` or nil, err
function Client:send(payload)
  local st = state(self)
  local json, warnings = st.encode(payload)
  if not json then
    warnings.attempts = 0
    return nil, warnings
  end
  return deliver(st, "POST", st.post_url, json, warnings)
end

--- Send bytes that `offline.encode` already produced (queue, batch).
-- @param json the request body, sent unchanged
-- @return res or nil, err
function Client:send_encoded(json)
  local st = state(self)
  if type(json) ~= "string" then
    error("optimizely.offline.client: send_encoded expects a string, got " .. type(json), 2)
  end
  return deliver(st, "POST", st.post_url, json, nil)
end

--- Cancel an order: DELETE on the cancel path with `refCode` percent-encoded.
-- @param ref_code the order's refCode (string, or an integer)
-- @return res or nil, err
function Client:cancel(ref_code)
  local st = state(self)
  if type(ref_code) == "number" and ref_code == math.floor(ref_code) then
    ref_code = string.format("%d", ref_code)
  end
  if type(ref_code) ~= "string" or ref_code == "" then
    local e = errors.validation({ { path = "refCode", message = "must be a non-empty string" } })
    e.attempts = 0
    return nil, e
  end
  local url = st.cancel_prefix .. core.url_escape(ref_code) .. st.cancel_suffix
  return deliver(st, "DELETE", url, nil, nil)
end

--- The URL orders are posted to.
function Client:url() return private[self].post_url end

--- Send many orders concurrently through one curl multi handle.
-- @param source an array of payloads, or an iterator function returning
--   payloads until nil (streamed: memory stays flat)
-- @param opts {concurrency=8, rate=orders/s, on_result=fn(i, res, err),
--   progress=fn(summary)}
-- @return summary {sent, failed, retried, invalid, elapsed, failures={{index, err}}}
-- @see optimizely.offline.batch
function Client:send_batch(source, opts)
  if private[self] and private[self].transport then
    error("optimizely.offline.client: send_batch needs the libcurl transport (use a queue under nginx)", 2)
  end
  return require("optimizely.offline.batch").run(state(self), outcome, source, opts)
end

--- An asynchronous queue delivering in the background (a C worker thread).
-- @see optimizely.offline.queue
function Client:queue(opts)
  if private[self] and private[self].transport then
    error("optimizely.offline.client: this queue needs the libcurl transport (under nginx use optimizely.offline.ngx)", 2)
  end
  return require("optimizely.offline.queue").new(state(self), outcome, opts)
end

--- Free the connection; the client cannot be used afterwards.
function Client:close()
  local st = private[self]
  if st and st.http then
    st.http:close()
    st.http = nil
  end
end

function Client:__tostring()
  local st = private[self]
  if not st then return "optimizely.offline.client" end
  return string.format("optimizely.offline.client{site=%s, channel=%s, url=%s%s}",
    st.site, st.channel, st.post_url, st.http and "" or ", closed")
end

--- Create a client. Raises on bad configuration (the message names the
-- field and never contains the token).
-- @param config see the module documentation
-- @return client
function M.client(config)
  local ok, c = pcall(check_config, config)
  if not ok then
    local tok = type(config) == "table" and type(config.token) == "string" and config.token or nil
    local msg = getmetatable(c) == ConfigError and c.msg or tostring(c)
    error(errors.redact(msg, tok), 2)
  end
  local http_opts = {
    ca_file = c.ca_file, ca_path = c.ca_path, proxy = c.proxy,
    timeout = c.timeout, connect_timeout = c.connect_timeout,
    user_agent = user_agent(), verbose = c.verbose, http_version = c.http_version,
  }
  local http = c.transport or core.http_new(http_opts)
  -- The only place the token is used: the request headers.
  local headers = {
    "site: " .. c.site,
    "siteToken: " .. c.token,
    "channel: " .. c.channel,
    "Content-Type: application/json",
    "Accept: application/json",
  }
  local self = setmetatable({}, Client)
  private[self] = {
    http_opts = http_opts, -- send_batch builds its curl multi pool from these
    transport = c.transport,
    http = http, headers = headers, token = c.token,
    site = c.site, channel = c.channel, post_url = c.post_url,
    cancel_prefix = c.cancel_prefix, cancel_suffix = c.cancel_suffix,
    sleep = c.sleep, encode = require("optimizely.offline").encode,
    policy = retry.new({ max_attempts = c.max_attempts, backoff_base = c.backoff_base,
      backoff_max = c.backoff_max, retry_after_max = c.retry_after_max, random = c.random }),
  }
  return self
end

M.Client = Client
M.user_agent = user_agent

return M
