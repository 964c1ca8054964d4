--- Each record's channel, checked before anything is sent: `send
-- --check-first` sends nothing when any record would fail, so a record
-- whose channel has no token must fail the check, as it would fail the
-- send; `validate` and `send --dry-run` say the same.
--
-- The decision is the client's (`optimizely.offline.context.channel_of`:
-- case-insensitive names, the default channel, the message listing the
-- channels that have a token). With a client (`send`) it is asked
-- directly; without one (`validate`, a dry run, which need no
-- credentials) it is asked about the channels and tokens the environment
-- and `--config` give. With no token configured at all, only the name is
-- checked (one of the documented channels, unless `allow_custom_channel`).
-- @module optimizely.offline.cli.channels
local context = require("optimizely.offline.context")
local errors = require("optimizely.offline.errors")
local config = require("optimizely.offline.cli.config")

local M = {}

--- The channels the endpoint documents (others only by arrangement:
-- `allow_custom_channel`).
M.DOCUMENTED = { store = true, mobileapp = true, tv = true, callcentre = true }

-- The channels of a configuration as a client would hold them: the names
-- with a token and the default (the run's channel, or the only one).
local function context_of(conf)
  local st = { channels = {}, channel_index = {} }
  local function add(name)
    if name and not st.channel_index[name] then
      st.channels[#st.channels + 1] = { name = name }
      st.channel_index[name] = #st.channels
    end
  end
  for name in pairs(conf.tokens or {}) do add(name) end
  if conf.token then add(conf.channel) end
  st.default_channel = conf.channel or (#st.channels == 1 and st.channels[1].name or nil)
  return st
end

-- Only the name, when nothing is configured: a documented channel.
local function name_check(custom)
  return function(name)
    name = context.channel_name(name)
    if name == nil or custom or M.DOCUMENTED[name] then return nil end
    return errors.new({ kind = "config", retryable = false, channel = name,
      message = ("unknown channel %q: the endpoint's channels are store, mobileapp, tv and callcentre "
        .. "(allow_custom_channel = true in --config for one agreed with Optimizely)"):format(name) })
  end
end

--- The check of a run: `function(channel) -> nil | err` (an error object
-- of kind "config", as the send would give).
-- @param args parsed arguments
-- @param client the run's client, or nil (a command that does not send)
-- @param getenv function(name) (default os.getenv)
-- @return the check function
function M.checker(args, client, getenv)
  if client then
    return function(name)
      local ok, err = client:channel(name)
      if ok then return nil end
      return err
    end
  end
  local conf = config.unchecked_config(args, getenv)
  if not conf.token and not conf.tokens then
    local custom = conf.allow_custom_channel
    return name_check(custom == true or custom == "true" or custom == "yes" or custom == "1")
  end
  local st = context_of(conf)
  return function(name)
    local i, err = context.channel_of(st, name)
    if i then return nil end
    return err
  end
end

return M
