--- The delivery context: what a client configuration becomes once, and
-- what every way of sending asks of it — the channel of an order
-- (`channel_of`), the order's bytes (`prepare`: pseudonymise, validate,
-- encode) and the pseudonymiser of a `pseudonymise` option.
--
-- The client (optimizely.offline.client) checks the configuration and
-- makes the context; `client:send`, `send_batch`
-- (optimizely.offline.batch), the threaded queue
-- (optimizely.offline.queue) and the nginx paths (optimizely.offline.ngx.*)
-- all sit above this module and take their decisions from it, so none of
-- them needs another.
-- @module optimizely.offline.context
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")
local retry = require("optimizely.offline.retry")
local delivery = require("optimizely.offline.delivery")
local events = require("optimizely.offline.events")
local encode = require("optimizely.offline.payload").encode
local pseudonym = require("optimizely.offline.pseudonym")

local M = {}

--- A channel's name as every part of the library uses it: channel names
-- are case-insensitive (`Callcentre` is `callcentre`), so they are
-- lower-cased wherever they come in (the config, `{channel = …}`, a CSV
-- column, a wrapper line). Anything but a string is returned as it is.
-- @param name a channel name
-- @return the name in lower case
function M.channel_name(name)
  if type(name) == "string" then return (name:lower()) end
  return name
end
local channel_name = M.channel_name

--- The User-Agent every libcurl request sends:
-- `optimizely-offline/<version> libcurl/<version> <Lua or LuaJIT version>`.
-- @return the header's value
function M.user_agent()
  local lua = (type(jit) == "table" and jit.version) or _VERSION
  return "optimizely-offline/" .. core.VERSION .. " libcurl/" .. (core.curl_version()) .. " " .. lua
end

-- The only place a token is used: the request headers of its channel.
local function headers_for(site, ch)
  return {
    "site: " .. site,
    "siteToken: " .. ch.token,
    "channel: " .. ch.name,
    "Content-Type: application/json",
    "Accept: application/json",
  }
end

local function as_transport(tr)
  if type(tr) == "function" then
    return { request = function(_, ...) return tr(...) end, close = function() end }
  end
  return tr
end

-- The events of the synchronous path (optimizely.offline.events): the
-- on_event hook, protected, and the logger. A failing hook must not break
-- delivery (its errors already carry no token: delivery.failure redacts them).
local function emitter(ev)
  if not ev.on_event and not ev.logger then return nil end
  return function(kind, fields) ev:emit(kind, fields) end
end

--- A pseudonymiser from a `pseudonymise` option (true or a table; nil:
-- none). A missing or short key raises: it is configuration, found when
-- the client, queue or batch is made, never at the first order.
-- @param o the option's value (true, a table of
--   `optimizely.offline.pseudonym.resolve` options, nil or false)
-- @param level as error's, from the caller
-- @return the pseudonymiser, or nil for none
function M.pseudonymiser(o, level)
  if o == nil or o == false then return nil end
  local p, err = pseudonym.resolve(o == true and {} or o)
  if not p then error("optimizely.offline: pseudonymise: " .. err.message, (level or 1) + 1) end
  return p
end

-- The events of one synchronous job's results (retry, paused, resumed).
local function results_emitter(st)
  local emit = st.emit
  if not emit then return nil end
  return function(r)
    local w = r.what
    if w == "retry" then
      emit("retry", { ref = r.ref, attempt = r.attempts, delay = r["until"],
        error = delivery.failure(r, nil, r.attempts, r.channel, st.secrets) })
    elseif w == "paused" or w == "resumed" then
      emit(w, { reason = r.why, seconds = r["until"],
        error = r.kind and delivery.failure(r, nil, 0, nil, st.secrets) or nil })
    end
  end
end

--- The delivery context of a checked client configuration: the transport
-- (the given one, or libcurl's), the channels with their request headers
-- (the default channel first), the secrets to redact, the retry policy,
-- the metrics, the pseudonymiser and the events. Every front door — the
-- client's `send`, `send_batch`, the threaded queue and the nginx queue —
-- delivers with one.
-- @param c a configuration checked by `optimizely.offline.client.check_config`
-- @return the context (a table; fields `config`, `http_opts`,
--   `custom_transport`, `transport`, `channels` (`{name, token, headers}`),
--   `channel_index`, `default_channel`, `secrets`, `site`, `post_url`,
--   `cancel_prefix`, `cancel_suffix`, `sleep`, `encode`, `policy`,
--   `metrics`, `pseudonym`, `events`, `emit`, `on_event`, `logger`,
--   `on_results`, and the synchronous drivers' `serial`, `drivers`,
--   `idle_drivers`, `gated_idle` (those recording to a ledger, by ledger),
--   and `ledgers` (those `ledger = true | "path"` opened, closed with the client))
-- @raise on a `pseudonymise` option without a usable key
function M.new(c)
  local secrets, channels, index = {}, {}, {}
  -- the default channel first: a spooled order without a channel (an
  -- older spool file) goes out with it
  local list = {}
  for _, ch in ipairs(c.channels) do
    if ch.name == c.default_channel then table.insert(list, 1, ch) else list[#list + 1] = ch end
  end
  for i, ch in ipairs(list) do
    secrets[#secrets + 1] = ch.token
    channels[i] = { name = ch.name, token = ch.token, headers = headers_for(c.site, ch) }
    index[ch.name] = i
  end
  local http_opts = {
    ca_file = c.ca_file, ca_path = c.ca_path, proxy = c.proxy,
    timeout = c.timeout, connect_timeout = c.connect_timeout,
    user_agent = M.user_agent(), verbose = c.verbose, http_version = c.http_version,
  }
  local transport = c.transport and as_transport(c.transport) or core.http_new(http_opts)
  local ev = events.new({ on_event = c.on_event, logger = c.logger,
    prefix = "optimizely.offline client: " })
  local st = {
    config = c, http_opts = http_opts, custom_transport = c.transport ~= nil,
    transport = transport, channels = channels, channel_index = index,
    default_channel = c.default_channel, secrets = secrets,
    site = c.site, post_url = c.post_url,
    cancel_prefix = c.cancel_prefix, cancel_suffix = c.cancel_suffix,
    sleep = c.sleep or core.sleep, encode = encode,
    policy = retry.new({ max_attempts = c.max_attempts, max_age = c.max_age, backoff_base = c.backoff_base,
      backoff_max = c.backoff_max, retry_after_max = c.retry_after_max, random = c.random }),
    metrics = c.metrics and core.metrics_new(secrets) or nil, -- no label may echo a token
    pseudonym = M.pseudonymiser(c.pseudonymise, 5),
    events = ev, emit = emitter(ev),
    on_event = c.on_event, logger = c.logger,
    serial = 0, drivers = {}, idle_drivers = {},
    gated_idle = {}, -- idle drivers recording to a ledger, by ledger object
    ledgers = {}, -- the ledgers `ledger = true | "path"` opened, by path: closed with the client
  }
  st.on_results = results_emitter(st)
  return st
end

-- "callcentre, store": the channels a context has a token for.
local function token_channels(st)
  local names = {}
  for i, ch in ipairs(st.channels) do names[i] = ch.name end
  table.sort(names)
  return table.concat(names, ", ")
end

--- The channel index for an order, or nil, err (kind "config": no token,
-- or no channel and no default; the message lists the channels that have
-- a token). `name` is compared case-insensitively.
-- @param st a delivery context (`M.new`), or any table with `channels`
--   (`{name =}` list), `channel_index` (name -> index) and `default_channel`
-- @param name the order's channel, or nil for the default
-- @return the channel's index in `st.channels` | nil, err
function M.channel_of(st, name)
  name = channel_name(name) or st.default_channel
  if name == nil then
    return nil, errors.new({ kind = "config", retryable = false,
      message = "the order names no channel and there is no default channel (config.channel); "
        .. "channels with a token: " .. token_channels(st) })
  end
  local i = st.channel_index[name]
  if not i then
    return nil, errors.new({ kind = "config", retryable = false, channel = tostring(name),
      message = "no token for channel " .. opts.show(name) .. " (config.tokens); channels with a token: "
        .. token_channels(st) })
  end
  return i
end

--- The one way an order becomes bytes: pseudonymise (when asked) before
-- validation, then encode. The pseudonymiser's warnings come first.
-- @param st the delivery context (`M.new`)
-- @param payload `{lang?, user?, order}` as `offline.encode` takes it
-- @param p a pseudonymiser instead of the client's (a queue's or batch's
--   own), false for none, nil for the client's
-- @return json, warnings (a list, maybe empty) | nil, err (kind
--   "validation", with `problems`)
function M.prepare(st, payload, p)
  if p == nil then p = st.pseudonym end
  local pw
  if p then
    local p2, w = p:apply(payload)
    if not p2 then return nil, w end
    payload, pw = p2, w
  end
  local json, warnings = st.encode(payload)
  if not json then return nil, warnings end
  if pw and pw[1] then
    for i = 1, #warnings do pw[#pw + 1] = warnings[i] end
    warnings = pw
  end
  return json, warnings
end

return M
