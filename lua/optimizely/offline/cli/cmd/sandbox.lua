--- `optimizely-offline sandbox start|stop|status`: the local stand-in endpoint.
--
--     optimizely-offline sandbox start [--dir DIR] [--port N] [--site S] [--token T]
--         [--channel C] [--channel-token NAME=TOKEN]... [--workers N] [--no-record]
--         [--delay-ms MS] [--max-concurrent N] [--retry-after S] [--log]
--     optimizely-offline sandbox stop|status [--dir DIR]
--
-- Exit codes: 0 done, 1 runtime failure (nginx did not start, not running
-- for `status`), 2 usage or configuration error. See doc/topics/sandbox.md.
-- @module optimizely.offline.cli.cmd.sandbox
local sandbox = require("optimizely.offline.sandbox")
local core = require("optimizely.offline.core")

local M = {}

--- Adds the `sandbox` command and its subcommands to the argparse parser.
function M.register(parser)
  local cmd = parser:command("sandbox", "Run a local stand-in of the offline-orders endpoint (nginx over TLS).")
  cmd:command_target("sandbox_command")
  cmd:require_command(true)

  local start = cmd:command("start", "Start the sandbox (or show the one already running in DIR).")
  start:option("--dir", "Directory for certs, config, logs and records.", sandbox.DEFAULTS.dir)
  start:option("--port", "TCP port on 127.0.0.1 (0 picks a free one).", tostring(sandbox.DEFAULTS.port))
  start:option("--site", "Expected site header.", sandbox.DEFAULTS.site)
  start:option("--token", "Expected siteToken header (default: a fixed sandbox token).")
  start:option("--channel", "Expected channel header.", sandbox.DEFAULTS.channel)
  start:option("--channel-token", "Another channel and its own token, NAME=TOKEN (repeatable).")
    :count("*"):args(1)
  start:option("--workers", "nginx worker processes.", tostring(sandbox.DEFAULTS.workers))
  start:option("--delay-ms", "Answer every endpoint request this many ms later (nginx keeps serving others).",
    tostring(sandbox.DEFAULTS.delay_ms))
  start:option("--max-concurrent", "Answer 429 above this many endpoint requests in progress (0: no limit).",
    tostring(sandbox.DEFAULTS.max_concurrent))
  start:option("--retry-after", "Retry-After seconds of those 429 answers.", tostring(sandbox.DEFAULTS.retry_after))
  start:flag("--no-record", "Answer OK to valid orders without recording them (benchmarks).")
  start:flag("--log", "Write an access log into DIR/logs.")

  local stop = cmd:command("stop", "Stop the sandbox running in DIR.")
  stop:option("--dir", "Sandbox directory.", sandbox.DEFAULTS.dir)

  local status = cmd:command("status", "Show whether a sandbox runs in DIR.")
  status:option("--dir", "Sandbox directory.", sandbox.DEFAULTS.dir)
end

local function number_option(value, name, err, integer)
  local n = tonumber(value)
  if not n or n ~= n or (integer and n ~= math.floor(n)) then
    err:write("error: --", name, " must be a", integer and "n integer" or " number", ", got ",
      core.quote(tostring(value)), "\n")
    return nil
  end
  return n
end

local function int_option(value, name, err) return number_option(value, name, err, true) end

-- --channel-token NAME=TOKEN... -> {NAME = TOKEN} | nil (message written)
local function channel_tokens(list, err)
  if not list or #list == 0 then return nil, true end
  local out = {}
  for _, item in ipairs(list) do
    local name, tok = tostring(item):match("^([^=]+)=(.+)$")
    if not name then
      err:write("error: --channel-token must be NAME=TOKEN\n") -- the value may be a token: not echoed
      return nil, false
    end
    if out[name] then
      err:write("error: --channel-token: channel ", name, " given twice\n")
      return nil, false
    end
    out[name] = tok
  end
  return out, true
end

-- Does the running sandbox know every given channel with its token?
local function has_tokens(info, tokens)
  for name, tok in pairs(tokens or {}) do
    if (info.tokens or {})[name] ~= tok then return false end
  end
  return true
end

local function channel_names(info)
  local names = {}
  for name in pairs(info.tokens or {}) do names[#names + 1] = name end
  table.sort(names)
  return table.concat(names, ", ")
end

-- The token is not a secret here, but only the default one is printed.
local function token_origin(info, given)
  if given then return "(as given)" end
  if info.token == sandbox.DEFAULTS.token then return info.token .. " (default)" end
  return "(custom, set when this sandbox was started)"
end

local function print_info(out, info, headline, given_token)
  out:write(headline, "\n",
    "  base_url: ", info.base_url, "\n",
    "  ca_file:  ", info.ca_file, "\n",
    "  site:     ", info.site, "\n",
    "  channel:  ", info.channel, "\n",
    "  token:    ", token_origin(info, given_token), "\n",
    "  channels: ", channel_names(info), "\n",
    "  record:   ", tostring(info.record), "\n",
    "  delay_ms: ", tostring(info.delay_ms), "\n",
    "  max_concurrent: ", tostring(info.max_concurrent), " (429 Retry-After ", tostring(info.retry_after), ")\n",
    "  dir:      ", info.dir, "\n",
    "  pid:      ", tostring(info.pid), "\n")
end

--- Runs a parsed `sandbox` command.
-- @return exit code
function M.run(args, out, err)
  out, err = out or io.stdout, err or io.stderr
  local sub = args.sandbox_command
  if sub == "start" then
    local port = int_option(args.port, "port", err)
    local workers = int_option(args.workers, "workers", err)
    local delay = number_option(args.delay_ms, "delay-ms", err)
    local maxc = int_option(args.max_concurrent, "max-concurrent", err)
    local retry_after = int_option(args.retry_after, "retry-after", err)
    local tokens, tok_ok = channel_tokens(args.channel_token, err)
    if not (port and workers and delay and maxc and retry_after and tok_ok) then return 2 end
    local before = sandbox.status({ dir = args.dir })
    local info, msg, kind = sandbox.start({
      dir = args.dir, port = port, site = args.site, token = args.token,
      channel = args.channel, tokens = tokens, record = not args.no_record, workers = workers,
      delay_ms = delay, max_concurrent = maxc, retry_after = retry_after,
      log = args.log or nil,
    })
    if not info then
      err:write("error: ", msg, "\n")
      return kind == "config" and 2 or 1
    end
    if before and (info.site ~= args.site or info.channel ~= args.channel
        or (args.token and info.token ~= args.token) or (port ~= 0 and port ~= info.port)
        or info.record == (args.no_record and true or false) or info.delay_ms ~= delay
        or info.max_concurrent ~= maxc or not has_tokens(info, tokens)) then
      err:write("note: a sandbox already runs in ", info.dir, " with other settings; ",
        "stop it first to apply new options\n")
    end
    print_info(out, info, before and "sandbox already running" or "sandbox started",
      args.token ~= nil and not before)
    return 0
  elseif sub == "stop" then
    local running = sandbox.status({ dir = args.dir })
    local ok, msg = sandbox.stop({ dir = args.dir })
    if not ok then
      err:write("error: ", msg, "\n")
      return 1
    end
    out:write(running and "sandbox stopped\n" or "no sandbox was running\n")
    return 0
  elseif sub == "status" then
    local info, msg = sandbox.status({ dir = args.dir })
    if not info then
      out:write(msg, "\n")
      return 1
    end
    print_info(out, info, "sandbox running")
    return 0
  end
  err:write("error: unknown sandbox command\n")
  return 2
end

return M
