--- HTTPS client for the offline-orders endpoint.
--
--     local offline = require("optimizely.offline")
--     local client = offline.client{ site = "demo", token = TOKEN, channel = "store" }
--     local res, err = client:send(payload)
--
-- Several channels, each with its own token (the endpoint binds a token to
-- one channel):
--
--     local client = offline.client{ site = "demo", channel = "store",
--       tokens = { store = T1, callcentre = T2 } }
--     client:send(payload, { channel = "callcentre" })
--
-- The client turns configuration into a delivery context
-- (optimizely.offline.context: transport, headers per channel, policy,
-- metrics) once; every front door below uses
-- it, and every one delivers through the one scheduler (csrc/delivery/sched.c,
-- optimizely.offline.sched): `send` and `cancel` (a Lua driver over
-- libcurl's easy handle or the given transport, one request at a time, in
-- the caller), `send_batch` (the libcurl driver from here) and `queue`
-- (the libcurl driver on its own thread). Delivery is at-least-once: a
-- network error or timeout is retried even when the server may already
-- have stored the order.
-- @module optimizely.offline.client
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local retry = require("optimizely.offline.retry")
local opts = require("optimizely.offline.opts")
local delivery = require("optimizely.offline.delivery")
local sched = require("optimizely.offline.sched")
local metrics = require("optimizely.offline.metrics")
local context = require("optimizely.offline.context")
local batch = require("optimizely.offline.batch")
local queue = require("optimizely.offline.queue")
local gate = require("optimizely.offline.ledger_gate")
local ledger = require("optimizely.offline.ledger")

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

-- Private state per client, out of reach of pairs()/inspection: the
-- header lists carry the tokens.
local private = setmetatable({}, { __mode = "k" })

-- -------------------------------------------------------------------------
-- Configuration

local LABEL = "^[%w%._%-]+$"
local LABEL_MSG = "may contain only letters, digits, '.', '_' and '-'"

--- The shortest site token taken: a shorter one is a configuration error
-- (no real token is that short, and a secret of a letter or two cannot be
-- told apart in messages: only secrets this long are redacted).
M.TOKEN_MIN = 8

--- What is wrong with a site token, or nil: too short, a control
-- character, leading or trailing spaces (never shows the token).
function M.token_problem(v)
  if v:find("[%z\1-\31\127]") then return "contains a control character (CR, LF, ...)" end
  if v:match("^%s") or v:match("%s$") then return "has leading or trailing spaces" end
  if #v < M.TOKEN_MIN then
    return ("is too short (%d character%s; at least %d)"):format(#v, #v == 1 and "" or "s", M.TOKEN_MIN)
  end
  return nil
end
local token_problem = M.token_problem

local function check_token(v)
  local p = token_problem(v)
  if p then return nil, p end
  return true
end

local function check_tokens(t)
  local n = 0
  for k, v in pairs(t) do
    n = n + 1
    if type(k) ~= "string" or not k:find(LABEL) then
      return nil, "must map channel names to tokens (a key is " .. opts.show(k) .. ")"
    end
    if type(v) ~= "string" or v == "" then return nil, "." .. k .. " must be a non-empty string" end
    local p = token_problem(v)
    if p then return nil, "." .. k .. " " .. p end
  end
  if n == 0 then return nil, "must name at least one channel" end
  return true
end

local function check_readable(path)
  local f = io.open(path, "rb")
  if not f then return nil, "cannot be read: " .. opts.show(path) end
  f:close()
  return true
end

local function check_transport(tr)
  local t = type(tr)
  if t == "function" then return true end
  if (t == "table" or t == "userdata") and tr.request then return true end
  return nil, "must be a function or an object with :request(), got " .. t
end

local function check_backoff_max(v, all)
  local base = all.backoff_base
  if type(base) == "number" and v < base then return nil, "must be >= backoff_base" end
  return true
end

local function at_most(limit)
  return function(v) if v > limit then return nil, "must be <= " .. limit end return true end
end

local string_opt = { type = "string", nonempty = true }

--- The client's options (one schema: the CLI's config file and the nginx
-- client check against it too).
M.schema = opts.schema("optimizely.offline.client", "config", {
  site = { type = "string", required = true, nonempty = true, pattern = LABEL, pattern_msg = LABEL_MSG },
  token = { type = "string", secret = true, nonempty = true, check = check_token },
  tokens = { type = "table", secret = true, check = check_tokens },
  channel = { type = "string", nonempty = true },
  allow_custom_channel = { type = "boolean", default = false },
  env = { type = "choice", choices = { "uat", "uk", "se", "us" } },
  sitename = { type = "string", nonempty = true, pattern = LABEL, pattern_msg = LABEL_MSG },
  base_url = string_opt,
  cancel_path = string_opt,
  allow_http = { type = "boolean", default = false },
  ca_file = { type = "string", nonempty = true, check = check_readable },
  ca_path = string_opt,
  proxy = string_opt,
  timeout = { type = "number", min = 0.001, default = 10 },
  connect_timeout = { type = "number", min = 0.001, default = 5 },
  max_attempts = { type = "integer", min = 1, default = retry.DEFAULTS.max_attempts, check = at_most(100) },
  max_age = { type = "number", min = 0 },
  backoff_base = { type = "number", min = 0, default = retry.DEFAULTS.backoff_base },
  backoff_max = { type = "number", min = 0, default = retry.DEFAULTS.backoff_max, check = check_backoff_max },
  retry_after_max = { type = "number", min = 0, default = retry.DEFAULTS.retry_after_max },
  sleep = { type = "function" },
  random = { type = "function" },
  verbose = { type = "boolean", default = false },
  http_version = { type = "choice", choices = { "1.1", "2" }, default = "1.1" },
  transport = { type = "any", check = check_transport },
  pseudonymise = { type = "any", check = function(v)
    if v == true or type(v) == "table" then return true end
    return nil, "must be true (the key from $OPTIMIZELY_PSEUDONYM_KEY) or a table of pseudonymiser options"
  end },
  on_event = { type = "function" },
  logger = { type = "any", check = function(v)
    if v == false or type(v) == "function" then return true end
    return nil, "must be a function(level, message) or false"
  end },
  metrics = { type = "boolean", default = true },
})

local function config_error(cfg, field, msg)
  M.schema:fail(cfg, field, msg, 4)
end

local function has_ctl(s) return s:find("[%z\1-\31\127]") ~= nil end

-- scheme://host[:port][/prefix] → normalised base (no trailing slash), scheme
local function parse_base_url(cfg, u)
  local function bad(msg) config_error(cfg, "base_url", msg) end
  if has_ctl(u) or u:find("%s") then bad("must not contain spaces or control characters") end
  local scheme, authority, path = u:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then bad("must look like https://host[:port][/prefix] (got " .. opts.show(u) .. ")") end
  scheme = scheme:lower()
  if scheme ~= "https" and scheme ~= "http" then
    bad("must use https (got scheme " .. opts.show(scheme) .. ")")
  end
  if authority:find("@", 1, true) then bad("must not contain user information") end
  local host, port = authority:match("^([%w%.%-]+):?(%d*)$")
  if not host then host, port = authority:match("^(%[[%x:%.]+%]):?(%d*)$") end
  if not host or host == "" then bad("has no valid host (got " .. opts.show(u) .. ")") end
  if port ~= "" and (tonumber(port) < 1 or tonumber(port) > 65535) then
    bad("has an invalid port " .. opts.show(port))
  end
  if authority:sub(-1) == ":" then bad("has an empty port") end
  if path:find("[?#]") then bad("must not contain a query or fragment") end
  path = path:gsub("/+$", "")
  return scheme .. "://" .. authority .. path, scheme
end

local function check_channel_name(cfg, field, name, custom)
  if not CHANNELS[name] then
    if not custom then
      config_error(cfg, field, "must be one of " .. CHANNEL_LIST .. " (got " .. opts.show(name)
        .. "); set allow_custom_channel = true for a channel agreed with Optimizely")
    end
    if not name:find(LABEL) then config_error(cfg, field, LABEL_MSG .. " (got " .. opts.show(name) .. ")") end
  end
end

local channel_name = context.channel_name

-- The channels and their tokens: { {name =, token =}, ... } and the default.
local function channel_list(cfg, c)
  local list, by_name = {}, {}
  local function add(name, token, field)
    name = channel_name(name)
    check_channel_name(cfg, field, name, c.allow_custom_channel)
    if by_name[name] then
      if list[by_name[name]].token ~= token then
        config_error(cfg, "token", "and config.tokens." .. name .. " differ: give one token per channel"
          .. " (channel names are case-insensitive)")
      end
      return
    end
    list[#list + 1] = { name = name, token = token }
    by_name[name] = #list
  end
  if c.tokens then
    local names = {}
    for name in pairs(c.tokens) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do add(name, c.tokens[name], "tokens." .. name) end
  end
  if c.token then
    if not c.channel then config_error(cfg, "channel", "is required") end
    add(c.channel, c.token, "channel")
  elseif not c.tokens then
    config_error(cfg, "token", "is required")
  end
  local default = channel_name(c.channel)
  if default then
    check_channel_name(cfg, "channel", default, c.allow_custom_channel)
    if not by_name[default] then
      config_error(cfg, "channel", "has no token: add it to config.tokens (got " .. opts.show(default) .. ")")
    end
  elseif #list == 1 then
    default = list[1].name
  end
  return list, by_name, default
end

local function base_of(cfg, c)
  if c.base_url then
    if c.env then config_error(cfg, "env", "and config.base_url are exclusive: give one of them") end
    local base, scheme = parse_base_url(cfg, c.base_url)
    if scheme == "http" and not c.allow_http then
      config_error(cfg, "base_url", "uses http://; HTTPS is required (set allow_http = true for local testing only)")
    end
    return base
  end
  return ENVS[c.env or "uat"](c.sitename or c.site)
end

local function cancel_parts(cfg, c, base)
  local cp = c.cancel_path or M.DEFAULT_CANCEL_PATH
  if cp:sub(1, 1) ~= "/" then config_error(cfg, "cancel_path", "must start with '/'") end
  local a = cp:find("{refCode}", 1, true)
  if not a or cp:find("{refCode}", a + 1, true) then
    config_error(cfg, "cancel_path", "must contain {refCode} exactly once (got " .. opts.show(cp) .. ")")
  end
  if has_ctl(cp) or cp:find("[%s?#]") then
    config_error(cfg, "cancel_path", "must not contain spaces, control characters, '?' or '#'")
  end
  return base .. cp:sub(1, a - 1), cp:sub(a + #"{refCode}")
end

--- Check a client configuration. Raises on misuse (the message names the
-- field and never contains a token).
-- @return the checked configuration with defaults, plus derived fields
--   (channels, channel_index, default_channel, base_url, post_url,
--   cancel_prefix, cancel_suffix)
function M.check_config(cfg)
  if type(cfg) ~= "table" then
    error("optimizely.offline.client: config must be a table, got " .. type(cfg), 3)
  end
  local c = M.schema:check(cfg, 3)
  c.channels, c.channel_index, c.default_channel = channel_list(cfg, c)
  c.base_url = base_of(cfg, c)
  c.post_url = c.base_url .. POST_PATH
  c.cancel_prefix, c.cancel_suffix = cancel_parts(cfg, c, c.base_url)
  return c
end

-- -------------------------------------------------------------------------
-- The synchronous path (the delivery context is optimizely.offline.context)

-- The synchronous path's schedulers: one request at a time in the caller,
-- every job settled before `send` returns. Each call has one to itself
-- (taken from the client's idle ones, or a new one): calls from several
-- coroutines at once (one nginx client serving many requests) never wait
-- for each other, and each starts afresh — refused credentials or a 429
-- fail or delay that call only.
local function take_driver(st, g)
  local free = st.idle_drivers
  if g then
    free = st.gated_idle[g.L] or {}
    st.gated_idle[g.L] = free
  end
  local d = free[#free]
  if d then
    free[#free] = nil
    return d
  end
  -- results only for the events (retry, paused, resumed): the job's own
  -- end comes from `send`; a few kept at most when nobody reads them
  local cfg = sched.config(st, { concurrency = 1, adaptive = false, on_stop = "drain",
    report_retries = st.emit ~= nil, max_results = 16 })
  -- with a ledger the scheduler's record hook writes each end (the one
  -- rule of csrc/delivery/ledger_sink.c), flushed before `send` returns
  if g then g:configure(cfg, 0) end
  d = sched.driver(cfg, st.transport, st.sleep)
  d.free = free
  st.drivers[#st.drivers + 1] = d
  return d
end

-- A scheduler back to the idle ones, reset when its call was refused the
-- credentials or paused by a 429 (rec nil: it raised).
local function give_back(st, d, rec)
  if not st.transport then return end -- the client was closed meanwhile
  if not rec or rec.stop or rec.throttled then d:resume() end
  d.free[#d.free + 1] = d
end

-- -------------------------------------------------------------------------
-- The client object

local Client = {}
Client.__index = Client

local function state(self)
  local st = private[self]
  if not st then error("optimizely.offline.client: not a client object", 3) end
  if not st.transport then error("optimizely.offline.client: client is closed", 3) end
  return st
end

local SEND_OPTS = opts.schema("optimizely.offline.client", "opts",
  gate.add_fields({ channel = { type = "string" } }, true))
local CANCEL_OPTS = opts.schema("optimizely.offline.client", "opts", { channel = { type = "string" } })

-- The options checked (raising on misuse, level 3: the caller's) and the
-- channel's index | nil, err.
local function send_channel(st, o, schema)
  if o ~= nil then
    o = (schema or SEND_OPTS):check(o, 3)
    if (o.force or o.amend) and not o.ledger then
      error("optimizely.offline.client: opts." .. (o.force and "force" or "amend") .. " needs opts.ledger", 3)
    end
  end
  local i, err = context.channel_of(st, o and o.channel)
  if not i then err.attempts = 0 end
  return i, err, o
end

-- One job through the synchronous driver, until it settles: a POST of
-- `body`, or with `url` a DELETE. The job table is the driver's own, filled
-- anew (the scheduler copies what it needs). With a gate, the driver
-- records the end in its ledger, written before this returns (a failed
-- write is `ledger_error` on the result or error: delivered, not recorded).
-- @return res or nil, err
local function deliver(st, ch, ref, body, url, warnings, g)
  local d = take_driver(st, g)
  local job = d.job_in or {}
  d.job_in = job
  st.serial = st.serial + 1
  job.id, job.channel, job.ref, job.body, job.url = st.serial, ch, ref, body, url
  job.method = url and "DELETE" or nil
  local ok, rec, attempts, why, body_back, info = pcall(d.send, d, job, st.on_results)
  local lok, lerr = true, nil
  if g then lok, lerr = d.s:flush_ledger() end
  give_back(st, d, ok and rec)
  if not ok then error(rec, 0) end -- a transport that raised, an interrupt: nothing is left behind
  local res, err = delivery.result(rec, body_back, attempts, info, st.channels[ch].name, st.secrets, warnings)
  if not lok then (res or err).ledger_error = gate.unusable(lerr) end
  if err and st.emit then
    st.emit("failure", { ref = ref, attempt = attempts, error = err, reason = why })
  end
  return res, err, why
end

-- The amend's DELETE failed: the order's error (nothing was posted).
local function amend_failed(err)
  err.message = "amend: not sent, the DELETE of the earlier version failed: " .. err.message
  return err
end

-- One order through the ledger (`o.ledger`): looked up and reserved, then
-- skipped, refused (kind "changed"), amended (DELETE, then POST) or sent;
-- its end is recorded by the driver; a reservation not used goes back.
-- @return res or nil, err
local function send_ledgered(st, o, ch, ref, json, warnings)
  local L, lerr = gate.open(o, nil, nil, st.ledgers)
  if not L then return nil, gate.unusable(lerr) end
  local g = gate.new(st, L)
  local name = st.channels[ch].name
  if not ref then -- send_encoded: bytes the ledger must read (refCode, report fields)
    local e, why = ledger.entry(json, o.ledger_store_key)
    if not e then
      local verr = errors.validation({ { path = "body", message = "not an encoded order: " .. tostring(why) } })
      verr.attempts = 0
      return nil, verr
    end
    ref = e.ref
  end
  local item = { body = json, channel = name, ref = ref }
  local decided, derr = g:admit({ item }, o)
  if not decided then return nil, gate.unusable(derr) end
  local action, x = decided[1][1], decided[1][2]
  local m, emit = st.metrics, st.emit
  if action == "skip" then
    if m then m:skipped(x.reason) end
    if emit then emit("skipped", { ref = ref, reason = x.reason, at = x.at }) end
    return x
  elseif action == "refuse" then
    if m then m:changed() end
    if emit then emit("changed", { ref = ref, at = x.at, outcome = x.outcome, error = x }) end
    return nil, x
  end
  local ok, res, err = pcall(function()
    if action == "amend" then
      local dres, e, why = deliver(st, ch, ref, nil, g:cancel_url(ref), nil, g)
      if not dres then
        -- a stop or a refusal: the POST is not sent, its reservation goes back
        g:release({ item })
        if emit and why then emit("failure", { ref = ref, attempt = 0, error = e, reason = "amend" }) end
        return nil, amend_failed(e)
      end
    end
    local r, e = deliver(st, ch, ref, json, nil, warnings, g)
    if r and action == "amend" then r.amended = true end
    if e and e.stop then g:release({ item }) end -- refused credentials: not sent, not recorded
    return r, e
  end)
  if not ok then
    g:release({ item }) -- an interrupt: whatever was settled is recorded, the rest goes back
    error(res, 0)
  end
  return res, err
end

local function post(st, json, i, warnings, ref, o)
  if o and o.ledger then return send_ledgered(st, o, i, ref, json, warnings) end
  return deliver(st, i, ref, json, nil, warnings)
end

--- Validate, encode and send one order.
--
-- **With a ledger** (`optimizely.offline.ledger_gate`): the order is looked
-- up and reserved before anything is sent. The same bytes already
-- acknowledged give `res` with `skipped = "already sent"`, `reason =
-- "already_sent"`, `at`, `attempts = 0` (not an error; counted in
-- `metrics().skipped`, an on_event `skipped`); another version (or its
-- cancel) gives `nil, err` of kind `"changed"` whose message says when the
-- earlier version was sent (counted in `changed`, an on_event `changed`);
-- `force = true` sends it anyway, `amend = true` sends the DELETE of the
-- refCode first and posts only once it is accepted (`res.amended`; a
-- refused DELETE fails the order, "amend: not sent, ...", nothing is
-- posted). The end is recorded (sent, warned or dead) before this returns;
-- a failed write is `ledger_error` on the result or error.
-- @param payload `{lang?, user?, order}` as accepted by `offline.encode`
-- @param o optional `{channel = name (default: config.channel), ledger =
--   true | "path" | a ledger object, ledger_keep = days (200), ledger_store_key
--   = "store", force = false, amend = false}`; `force` and `amend` need
--   `ledger` and exclude each other
-- @return res (see optimizely.offline.delivery) or nil, err (an unusable
--   ledger: kind "storage" (code "foreign": not a ledger) or "busy", naming the file; nothing sent)
function Client:send(payload, o)
  local st = state(self)
  local i, cerr
  i, cerr, o = send_channel(st, o)
  if not i then return nil, cerr end
  local json, warnings = context.prepare(st, payload)
  if not json then
    if st.metrics then st.metrics:invalid() end
    warnings.attempts = 0
    return nil, warnings
  end
  return post(st, json, i, warnings, core.ref_string(payload), o)
end

--- Send bytes that `offline.encode` already produced.
-- @param json the request body, sent unchanged
-- @param o optional, as `send`'s: `{channel =, ledger =, ledger_keep =,
--   ledger_store_key =, force =, amend =}`
-- @return res or nil, err as `send`'s (with a ledger, bytes that are not an
--   encoded order: kind "validation", nothing sent)
function Client:send_encoded(json, o)
  local st = state(self)
  if type(json) ~= "string" then
    error("optimizely.offline.client: send_encoded expects a string, got " .. type(json), 2)
  end
  local i, cerr
  i, cerr, o = send_channel(st, o)
  if not i then return nil, cerr end
  return post(st, json, i, nil, nil, o)
end

-- A path segment: percent-encoded, and '.' too (libcurl would remove
-- "." and ".." segments and reach another URL): core.url_segment, the rule
-- the queue's thread follows for a spooled cancel.
local segment = core.url_segment

--- Cancel an order: DELETE on the cancel path with `refCode` percent-encoded.
-- @param ref_code the order's refCode (string, or an integer)
-- @param o optional `{channel = name}`: the channel the order was sent with
-- @return res or nil, err
function Client:cancel(ref_code, o)
  local st = state(self)
  if type(ref_code) == "number" and ref_code == math.floor(ref_code) then
    ref_code = string.format("%d", ref_code)
  end
  local problem
  if type(ref_code) ~= "string" or ref_code == "" then
    problem = "must be a non-empty string"
  elseif ref_code:match("^%.+$") then
    problem = "must not be only dots (it would name another URL)"
  end
  if problem then
    local e = errors.validation({ { path = "refCode", message = problem } })
    e.attempts = 0
    return nil, e
  end
  local i, cerr = send_channel(st, o, CANCEL_OPTS)
  if not i then return nil, cerr end
  return deliver(st, i, ref_code, nil, st.cancel_prefix .. segment(ref_code) .. st.cancel_suffix)
end

--- The URL orders are posted to.
function Client:url() return private[self].post_url end

--- Send many orders concurrently (the libcurl engine).
-- @see optimizely.offline.batch
function Client:send_batch(source, o)
  local st = state(self)
  if st.custom_transport then
    error("optimizely.offline.client: send_batch needs the libcurl transport (under nginx use a queue)", 2)
  end
  local summary, err = batch.run(st, source, o)
  return summary, err -- not a tail call: option errors point at the caller
end

--- An asynchronous queue delivering in the background (its own thread).
-- @see optimizely.offline.queue
function Client:queue(o)
  local st = state(self)
  if st.custom_transport then
    error("optimizely.offline.client: this queue needs the libcurl transport"
      .. " (under nginx use optimizely.offline.ngx)", 2)
  end
  local q, err = queue.new(st, o)
  return q, err -- not a tail call: option errors point at the caller
end

--- The channel an order would be sent on, without sending it: `name`
-- (any case; nil: the default channel) when the client has its token.
-- What `send`, `send_batch` and the queues decide, asked beforehand (the
-- command line's `--check-first` and `validate` do).
-- @param name the order's channel, or nil
-- @return the channel's name (lower case) | nil, err (kind "config"; its
--   message lists the channels that have a token)
function Client:channel(name)
  local st = private[self]
  if not st then error("optimizely.offline.client: not a client object", 2) end
  local i, err = context.channel_of(st, name)
  if not i then return nil, err end
  return st.channels[i].name
end

--- Counters of this client's own sends, cancels and finished `send_batch`
-- runs (not its queues': each queue has its own).
-- @return the metrics table (see optimizely.offline.metrics); all zeros
--   when the config says `metrics = false`
function Client:metrics()
  local st = private[self]
  if not st then error("optimizely.offline.client: not a client object", 2) end
  if not st.metrics then return metrics.empty() end
  local m = st.metrics:get()
  for _, d in ipairs(st.drivers) do metrics.merge(m, d:metrics()) end
  return m
end

--- Free the connection; the client cannot be used afterwards.
function Client:close()
  local st = private[self]
  if st and st.transport then
    if st.transport.close then st.transport:close() end
    st.transport = nil
    for _, d in ipairs(st.drivers) do
      if st.metrics then st.metrics:merge(d:metrics()) end -- metrics() still counts them
      d:close()
    end
    st.drivers, st.idle_drivers, st.gated_idle = {}, {}, {}
    for _, L in pairs(st.ledgers) do L:close() end
    st.ledgers = {}
  end
end

function Client:__tostring()
  local st = private[self]
  if not st then return "optimizely.offline.client" end
  local names = {}
  for i, ch in ipairs(st.channels) do names[i] = ch.name end
  return string.format("optimizely.offline.client{site=%s, channel=%s, url=%s%s}",
    st.site, #names == 1 and names[1] or ((st.default_channel or "-") .. " of " .. table.concat(names, ",")),
    st.post_url, st.transport and "" or ", closed")
end

--- Create a client. Raises on bad configuration (the message names the
-- field and never contains a token).
-- @param config see the schema above and doc/topics/client.md
-- @return client
function M.client(config)
  local c = M.check_config(config)
  local self = setmetatable({}, Client)
  private[self] = context.new(c)
  return self
end

--- The private delivery context of a client (for the queue and batch
-- modules and the nginx engine).
function M.state(client)
  local st = private[client]
  if not st then error("optimizely.offline.client: not a client object", 3) end
  return st
end

M.Client = Client

return M
