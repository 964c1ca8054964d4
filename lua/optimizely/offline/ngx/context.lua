--- The delivery context of the nginx paths: a client config checked for
-- what the cosocket transport cannot honour, with the cosocket transport
-- in it, and the client (and its state: channels with their headers, the
-- URL, the secrets to redact) built from it. The nginx client and the
-- nginx queue both start here. The context itself (channels, `channel_of`,
-- `prepare`, the pseudonymiser) is optimizely.offline.context's, made by
-- the client: this module only adapts the configuration to nginx.
-- @module optimizely.offline.ngx.context
local transport = require("optimizely.offline.ngx.transport")
local client = require("optimizely.offline.client")

local M = {}

--- Client options that only libcurl understands: the nginx client and queue
-- refuse them rather than silently ignore a TLS setting.
M.CURL_ONLY = {
  ca_file = "set lua_ssl_trusted_certificate in nginx.conf instead",
  ca_path = "set lua_ssl_trusted_certificate in nginx.conf instead",
  proxy = "the cosocket transport does not go through proxies",
  verbose = "use nginx's error_log",
}

--- A client config for the nginx path: the caller's, checked for what the
-- cosocket transport cannot honour (`CURL_ONLY` and `refuse`: raised,
-- naming `who`), with `transport` built from `topts` (or from
-- `config.transport` when that is a table of options), the client's
-- timeouts by default.
-- @param config the offline.client config
-- @param who the caller, for messages (e.g. "optimizely.offline.ngx.client: config")
-- @param topts transport options, or nil
-- @param refuse more keys to refuse, `{key = why}`, or nil
-- @param level as error's, from the caller
-- @return a new config table
function M.client_config(config, who, topts, refuse, level)
  level = (level or 1) + 1
  if type(config) ~= "table" then error(who .. " must be a table, got " .. type(config), level) end
  for _, list in ipairs({ M.CURL_ONLY, refuse or {} }) do
    for k, why in pairs(list) do
      if config[k] ~= nil then error(who .. "." .. k .. " is not used under nginx: " .. why, level) end
    end
  end
  if config.http_version ~= nil and config.http_version ~= "1.1" then
    error(who .. ".http_version must be \"1.1\" under nginx", level)
  end
  local cfg = {}
  for k, v in pairs(config) do cfg[k] = v end
  -- a table without :request is a table of transport options
  if type(cfg.transport) == "table" and cfg.transport.request == nil then topts, cfg.transport = cfg.transport, nil end
  if cfg.transport == nil then
    local o = {}
    for k, v in pairs(topts or {}) do o[k] = v end
    o.timeout = o.timeout or cfg.timeout
    o.connect_timeout = o.connect_timeout or cfg.connect_timeout
    cfg.transport = transport.new(o)
  end
  return cfg
end

--- The client and its delivery context (`optimizely.offline.client`'s
-- state: `transport`, `channels` with their headers, `channel_index`,
-- `default_channel`, `post_url`, `secrets`, `config`, ...).
-- @param config the offline.client config
-- @param who the caller, for messages
-- @param topts transport options, or nil
-- @param refuse more keys to refuse, or nil
-- @param level as error's, from the caller
-- @return client, context
function M.new(config, who, topts, refuse, level)
  local c = client.client(M.client_config(config, who, topts, refuse, (level or 1) + 1))
  return c, client.state(c)
end

return M
