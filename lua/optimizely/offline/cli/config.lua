--- The run's configuration: the config file, the environment and the
-- command line, merged in that order of precedence: command line first,
-- then environment, then the file named by `--config`.
--
-- A config file is data, never code: `key = value` lines, `#` starts a
-- comment line, values may be quoted ('…' or "…"; a quote not closed is an
-- error). A `#` after a blank ends the value (a trailing comment: `token =
-- abc  # production` is `abc`); a value holding ` #` is quoted. The file
-- must be the user's (or root's) and writable by no one else; holding a
-- secret readable by others, it is used with a warning. Keys:
--
--   * the client's options that can be written as text (its schema:
--     `site`, `token`, `channel`, `env`, `sitename`, `base_url`, `ca_file`,
--     `ca_path`, `proxy`, `cancel_path`, `timeout`, `connect_timeout`,
--     `max_attempts`, `max_age`, `backoff_base`, `backoff_max`,
--     `retry_after_max`, `allow_custom_channel`, `verbose`, `http_version`;
--     `-` and `_` are the same: `base-url` = `base_url`);
--   * `token.<channel>`: the siteToken of one channel (`token.store = …`);
--   * `map.<column> = field`: a CSV column rename (as `--map column=field`);
--   * `delimiter`, `format`, `date_format`, `timezone`, `input_encoding`,
--     `decimal_comma`, `currency_symbols`: the input options;
--   * `pseudonym_key`: the key for pseudonymised user ids (a secret);
--   * `ledger = FILE`, `no_ledger = true`: the delivery ledger's file, or
--     none (optimizely.offline.cli.send_ledger).
--
-- An unknown key is an error that names the line and suggests the key
-- meant (`siteToken` → `token`); a key given twice too. Messages never show
-- a value (it may be the token). `allow_http` is not read from a file:
-- plain HTTP needs `--allow-http` on the command line.
-- @module optimizely.offline.cli.config
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local common = require("optimizely.offline.cli.common")
local offline = require("optimizely.offline")

local config_error, label = common.config_error, common.label

local M = {}

local client_schema = require("optimizely.offline.client").schema
local client_token_problem = require("optimizely.offline.client").token_problem

-- The client options a file can spell as text: not the functions and
-- tables (`sleep`, `transport`, `tokens`: `token.<channel>` lines give
-- those), and not `allow_http` (it needs the flag).
local function is_text_option(k, f)
  return k ~= "allow_http" and f.type ~= "function" and f.type ~= "table" and f.type ~= "any"
end

--- Client options a config file may hold: the client's own option names
-- (`optimizely.offline.client.schema`) that can be written as text.
M.CLIENT_KEYS = {}
for _, k in ipairs(client_schema:keys()) do
  if is_text_option(k, client_schema.fields[k]) then M.CLIENT_KEYS[#M.CLIENT_KEYS + 1] = k end
end

--- Keys only the command line uses.
M.CLI_KEYS = { "delimiter", "format", "date_format", "timezone", "pseudonym_key", "input_encoding",
  "decimal_comma", "currency_symbols", "ledger", "no_ledger" }

--- The channels whose token the environment may carry without the config
-- file naming them (`OPTIMIZELY_SITE_TOKEN_<CHANNEL>`).
M.CHANNELS = { "store", "mobileapp", "tv", "callcentre" }

-- Other spellings of a key (compared lower-case, without '_' and '-'):
-- the vendor's header names first of all.
local ALIASES = { sitetoken = "token", token = "token", sitecode = "site", baseurl = "base_url" }

local KNOWN, CLIENT = {}, {}
for _, k in ipairs(M.CLIENT_KEYS) do KNOWN[k] = true; CLIENT[k] = true end
for _, k in ipairs(M.CLI_KEYS) do KNOWN[k] = true end
local NAMES = {}
for k in pairs(KNOWN) do NAMES[#NAMES + 1] = k end
NAMES[#NAMES + 1] = "token.<channel>"
NAMES[#NAMES + 1] = "map.<column>"
table.sort(NAMES)

local function squash(k) return (k:lower():gsub("[_%-]", "")) end

--- The key a misspelt config key most likely meant, or nil.
function M.suggest(key)
  local s = squash(key)
  if ALIASES[s] then return ALIASES[s] end
  for k in pairs(KNOWN) do if squash(k) == s then return k end end
  local p = key:match("^(%a+)[%._%-]") -- token_store, tokens.store, maps.X
  if p and (squash(p) == "token" or squash(p) == "tokens") then return "token.<channel>" end
  if p and (squash(p) == "map" or squash(p) == "maps") then return "map.<column>" end
  return core.suggest(key, NAMES)
end

-- ------------------------------------------------------------- the file

local File = {}
File.__index = File

-- "<path>:<line>: " for a message about a line of the file.
function File:at(line) return ("%s:%d: "):format(label(self.path), line) end

-- A value without its quotes ('…' or "…"). A quote that is not closed (or
-- closed by the other kind) is an error: it would silently become part of
-- the value, of a key or a token (the message never shows the value).
local function unquote(self, n, k, v)
  local first, last = v:sub(1, 1), v:sub(-1)
  local quoted = first == '"' or first == "'"
  if (quoted and (#v < 2 or last ~= first)) or (not quoted and (last == '"' or last == "'")) then
    config_error(self:at(n) .. "the value of " .. label(k) .. " has an unbalanced quote")
  end
  return quoted and v:sub(2, -2) or v
end

-- The value without a trailing comment: ` #…` after an unquoted value, or
-- after the closing quote of a quoted one (a `#` inside quotes, or not after
-- a blank, is part of the value).
local function without_comment(v)
  local q = v:sub(1, 1)
  if q == '"' or q == "'" then
    local close = v:find(q, 2, true)
    if close and v:sub(close + 1):match("^%s+#") then return v:sub(1, close) end
    return v
  end
  return (v:gsub("^#.*$", ""):gsub("%s+#.*$", ""))
end

-- One `key = value` line into the file's tables.
function File:add(n, s)
  local col, v = s:match("^map%.(.-)%s*=%s*(.-)$")
  local k
  if col then
    k = "map." .. col
  else
    k, v = s:match("^([%w_%.%-]+)%s*=%s*(.-)$")
    if not k then config_error(self:at(n) .. "expected key = value") end
    k = k:gsub("-", "_")
  end
  v = unquote(self, n, k, without_comment(v))
  if self.line_of[k] then
    config_error(self:at(n) .. label(k) .. " is given twice (first at line " .. self.line_of[k] .. ")")
  end
  self.line_of[k] = n
  local ch = k:match("^token%.(.+)$")
  if col then
    if col == "" then config_error(self:at(n) .. "map. needs a column name: map.<column> = field") end
    self.map[col] = v ~= "" and v or false
  elseif ch then -- (the key's pattern keeps the channel to letters, digits, '.', '_', '-')
    self.tokens[ch] = v
  elseif k == "allow_http" then
    config_error(self:at(n) .. "allow_http is not read from a config file: plain HTTP needs --allow-http "
      .. "on the command line")
  elseif KNOWN[k] then
    self.values[k] = v
  else
    local hint = M.suggest(k)
    config_error(self:at(n) .. "unknown key " .. label(k) .. (hint and (" (did you mean " .. hint .. "?)") or ""))
  end
end

-- Bits of a file mode (no bitwise operators in Lua 5.1).
local function bit(mode, b) return math.floor(mode / b) % 2 == 1 end

-- Who else may change the file: another user owning it, or group or others
-- able to write it, could point the run (and its token) anywhere. Refused.
function File:check_owner()
  local id, _, mode, uid = core.file_id(self.path)
  if not id then return end -- io.open says why
  self.mode = mode
  if uid ~= core.euid() and uid ~= 0 then
    config_error(("%s is owned by another user (uid %d): refusing to use it"):format(label(self.path), uid))
  end
  if bit(mode, 16) or bit(mode, 2) then
    config_error(("%s is writable by others (mode %04o): refusing to use it (chmod go-w %s)")
      :format(label(self.path), mode, label(self.path)))
  end
end

-- The secrets the file holds, by key; a warning (as ssh gives) when group
-- or others can read them.
function File:check_readers()
  local mode = self.mode
  if not mode or not (bit(mode, 32) or bit(mode, 4)) then return end
  local held = {}
  if self.values.token and self.values.token ~= "" then held[#held + 1] = "token" end
  local chans = {}
  for ch in pairs(self.tokens) do chans[#chans + 1] = ch end
  table.sort(chans)
  for _, ch in ipairs(chans) do held[#held + 1] = "token." .. ch end
  if self.values.pseudonym_key and self.values.pseudonym_key ~= "" then held[#held + 1] = "pseudonym_key" end
  if #held == 0 then return end
  self.warnings[#self.warnings + 1] = ("warning: %s holds a secret (%s) and is readable by others (mode %04o): "
    .. "chmod 600 %s"):format(label(self.path), table.concat(held, ", "), mode, label(self.path))
end

--- Reads a config file. Error messages name the line, never its value. A
-- file another user owns, or that group or others can write, is refused;
-- one holding a secret (a token, the pseudonym key) that they can read
-- gets a warning in `warnings`.
-- @param path the file (nil: an empty configuration)
-- @return `{path, values = {key = string}, tokens = {channel = token},
--   map = {column = field | false}, line_of = {key = line}, warnings = {text}}`
function M.read_file(path)
  local self = setmetatable({ path = path, values = {}, tokens = {}, map = {}, line_of = {}, warnings = {} }, File)
  if not path then return self end
  self:check_owner()
  local fh, e = io.open(path, "r")
  if not fh then config_error("cannot read config file: " .. tostring(e)) end
  local n = 0
  for line in fh:lines() do
    n = n + 1
    local s = line:gsub("^%s+", ""):gsub("%s+$", "")
    if s ~= "" and s:sub(1, 1) ~= "#" then
      local ok, err = pcall(File.add, self, n, s)
      if not ok then fh:close(); error(err, 0) end
    end
  end
  fh:close()
  self:check_readers()
  return self
end

-- ------------------------------------------------------------- settings

local cache = setmetatable({}, { __mode = "k" })

--- The input options of a run: the command line over the config file.
local function input_settings(args, file)
  local map = {}
  for col, field in pairs(file.map) do map[col] = field end
  for _, m in ipairs(args.map or {}) do
    local spec = type(m) == "table" and m[1] or m
    local col, field = spec:match("^(.-)=(.*)$")
    if not col or col == "" then config_error("--map takes col=field, got " .. core.quote(tostring(spec), 60)) end
    map[col] = field ~= "" and field or false
  end
  local v = file.values
  -- a flag of the command line, or true/false in the file
  local function flag(name)
    if args[name] then return true end
    local x = v[name]
    if x == nil or x == "" then return nil end
    if x == "true" or x == "yes" or x == "1" then return true end
    if x == "false" or x == "no" or x == "0" then return nil end
    config_error(file:at(file.line_of[name]) .. name .. " must be true or false")
  end
  return {
    input_encoding = args.input_encoding or v.input_encoding,
    decimal_comma = flag("decimal_comma"),
    currency_symbols = flag("currency_symbols"),
    format = args.format or v.format,
    delimiter = args.delimiter or v.delimiter,
    map = next(map) and map or nil,
    date_format = args.date_format or v.date_format,
    timezone = args.timezone or v.timezone,
    order_rows = args.group_orders and "grouped" or nil,
  }
end

--- The settings of a run, read once per parsed `args`: `{file, input,
-- pseudonym_key}` (`input`: format, delimiter, map, date_format, timezone,
-- order_rows, input_encoding, decimal_comma, currency_symbols).
-- @param args parsed arguments
-- @param getenv function(name) (default os.getenv)
function M.settings(args, getenv)
  local s = cache[args]
  if s then return s end
  getenv = getenv or os.getenv
  local file = M.read_file(args.config)
  for _, w in ipairs(file.warnings) do common.say(io.stderr, w) end
  local key = getenv("OPTIMIZELY_PSEUDONYM_KEY")
  s = { file = file, input = input_settings(args, file),
        pseudonym_key = (key and key ~= "") and key or file.values.pseudonym_key }
  cache[args] = s
  return s
end

-- ------------------------------------------------------------ the client

local function env_name(channel)
  return "OPTIMIZELY_SITE_TOKEN_" .. channel:upper():gsub("[^%w]", "_")
end

-- Per-channel tokens: the file's `token.<channel>`, then the environment's
-- OPTIMIZELY_SITE_TOKEN_<CHANNEL> over them. nil when there are none; else
-- also where each came from (for messages). Channel names are
-- case-insensitive: the keys are lower case.
local function channel_tokens(file, channel, getenv)
  local tokens, names, from = {}, {}, {}
  for _, ch in ipairs(M.CHANNELS) do names[ch] = true end
  for ch, v in pairs(file.tokens) do
    local key = "token." .. ch
    ch = ch:lower()
    if tokens[ch] and tokens[ch] ~= v then
      config_error(label(file.path) .. ": token." .. ch .. " is given twice (channel names are "
        .. "case-insensitive)")
    end
    tokens[ch], names[ch] = v, true
    from[ch] = file:at(file.line_of[key]) .. key .. " "
  end
  if channel then names[channel] = true end
  for ch in pairs(names) do
    local v = getenv(env_name(ch))
    if v and v ~= "" then tokens[ch], from[ch] = v, "$" .. env_name(ch) .. ": the token " end
  end
  if not next(tokens) then return nil end
  return tokens, from
end

-- A token that is too short (or holds a control character or spaces) is
-- a configuration error naming where it came from, never its value.
local function check_token(token, from)
  local p = token and client_token_problem(token)
  if p then config_error(from .. p) end
end

local function sorted_keys(t)
  local list = {}
  for k in pairs(t) do list[#list + 1] = k end
  table.sort(list)
  return list
end

-- Strings to the numbers and booleans the client's schema asks for (the
-- client checks ranges and choices); `origin[k]` says where a value came from.
local function convert_types(conf, origin)
  for k, v in pairs(conf) do
    local f = client_schema.fields[k]
    local t = f and type(v) == "string" and f.type
    if t == "number" or t == "integer" then
      local n = tonumber(v)
      if not n then config_error(origin[k] .. k .. " must be a number") end
      conf[k] = n
    elseif t == "boolean" then
      if v == "true" or v == "yes" or v == "1" then conf[k] = true
      elseif v == "false" or v == "no" or v == "0" then conf[k] = false
      else config_error(origin[k] .. k .. " must be true or false") end
    end
  end
end

-- Plain HTTP only with --allow-http, and then a warning every run.
local function check_http(conf, args, notes)
  local base = conf.base_url
  if type(base) ~= "string" or not base:lower():match("^http://") then return end
  if not args.allow_http then
    config_error("the base URL uses plain http: the site token would cross the network unencrypted; "
      .. "pass --allow-http to allow it (for a local test endpoint)")
  end
  conf.allow_http = true
  notes[#notes + 1] = "warning: --allow-http: the site token is sent unencrypted (plain http)"
end

-- The three things every request needs: a site, and a token with its
-- channel — or only per-channel tokens, when every record names a channel
-- that has one (a record without a channel is then rejected, with the
-- list of the channels that have a token).
local function require_identity(conf)
  if not conf.site then config_error("no site: set OPTIMIZELY_SITE, --site or site in --config") end
  if not conf.token and (not conf.tokens or conf.channel) then -- (the run's channel has no token)
    config_error("no token: set OPTIMIZELY_SITE_TOKEN (or OPTIMIZELY_SITE_TOKEN_<CHANNEL>), or token "
      .. "(or token.<channel>) in --config")
  end
  if conf.token and not conf.channel then
    config_error("no channel: set OPTIMIZELY_CHANNEL, --channel or channel in --config")
  end
end

--- The client configuration from the command line, the environment and
-- the config file. The token never comes from the command line: only
-- $OPTIMIZELY_SITE_TOKEN[_<CHANNEL>] or the config file. With per-channel
-- tokens, `tokens = {[channel] = token}` is returned beside `token` (the
-- run's channel's) and `channel` (given, or the only channel with a token);
-- with only per-channel tokens and several of them, neither (every record
-- must then name its channel). Channel names are lower-cased.
-- Raises a ConfigError (exit 2) when something is missing or malformed.
-- @param args parsed arguments
-- @param getenv function(name) (default os.getenv)
-- @return config table for `offline.client`, and a list of warnings to print
function M.client_config(args, getenv)
  getenv = getenv or os.getenv
  if args.token ~= nil then
    config_error("the site token is not taken on the command line (it would show in ps and "
      .. "the shell history): set OPTIMIZELY_SITE_TOKEN or token in --config")
  end
  local conf, origin = M.unchecked_config(args, getenv)
  local notes = {}
  convert_types(conf, origin)
  require_identity(conf)
  check_http(conf, args, notes)
  return conf, notes
end

--- The client configuration as the command line, the environment and the
-- config file give it, nothing required yet (`client_config` checks): what
-- a command that does not send (`validate`, `send --dry-run`) knows of the
-- run's channels and tokens.
-- @param args parsed arguments
-- @param getenv function(name) (default os.getenv)
-- @return conf (values as text), origin (key -> where it came from, for messages)
function M.unchecked_config(args, getenv)
  getenv = getenv or os.getenv
  local file = M.settings(args, getenv).file
  local conf, origin = {}, {}
  for k, v in pairs(file.values) do
    if CLIENT[k] and v ~= "" then conf[k], origin[k] = v, file:at(file.line_of[k]) end
  end
  local function pick(key, env)
    local v, from = args[key], "--" .. key:gsub("_", "-") .. ": "
    if v == nil and env then v, from = getenv(env), "$" .. env .. ": " end
    if v ~= nil and v ~= "" then conf[key], origin[key] = v, from end
  end
  pick("site", "OPTIMIZELY_SITE")
  pick("channel", "OPTIMIZELY_CHANNEL")
  pick("env", "OPTIMIZELY_ENV")
  pick("sitename")
  pick("base_url", "OPTIMIZELY_BASE_URL")
  pick("ca_file", "OPTIMIZELY_CA_FILE")
  pick("timeout")
  pick("max_attempts")
  if type(conf.channel) == "string" then conf.channel = conf.channel:lower() end
  if conf.token then check_token(conf.token, origin.token .. "token ") end
  local token = getenv("OPTIMIZELY_SITE_TOKEN")
  if token and token ~= "" then
    conf.token = token
    check_token(token, "$OPTIMIZELY_SITE_TOKEN: the token ")
  end
  local tokens, from = channel_tokens(file, conf.channel, getenv)
  if tokens then
    for _, ch in ipairs(sorted_keys(tokens)) do check_token(tokens[ch], from[ch]) end
    if not conf.channel and next(tokens, next(tokens)) == nil then conf.channel = next(tokens) end
    conf.token = conf.channel and tokens[conf.channel] or conf.token
    conf.tokens = tokens
  end
  return conf, origin
end

--- The secrets of a configuration (for redaction).
function M.secrets(conf, settings)
  local list = { conf.token }
  for _, v in pairs(conf.tokens or {}) do list[#list + 1] = v end
  if settings and settings.pseudonym_key then list[#list + 1] = settings.pseudonym_key end
  return list
end

--- Builds the client, turning a configuration error into exit code 2.
-- Warnings (plain HTTP) are printed on `err`. The client's own messages
-- never contain the token; the one below is scrubbed once more in case a
-- caller put a secret in another field.
-- @param args parsed arguments
-- @param getenv function(name) (default os.getenv)
-- @param err writer for warnings (default io.stderr)
function M.client(args, getenv, err)
  local conf, notes = M.client_config(args, getenv)
  for _, n in ipairs(notes) do common.say(err or io.stderr, n) end
  local secrets = M.secrets(conf, M.settings(args, getenv))
  local ok, client = pcall(offline.client, conf)
  if not ok then
    local msg = tostring(client):gsub("^[^:]*:%d+: ", "")
    config_error(errors.redact_all(msg, secrets))
  end
  return client
end

--- The paths a command reads from, which no output may overwrite (see
-- `optimizely.offline.cli.common.refuse_overwrite`): its input files, its `--transform` and `--config`
-- files, and the CA file or directory wherever it is named (`--ca-file`,
-- $OPTIMIZELY_CA_FILE, the config file's `ca_file` and `ca_path`).
-- @param args the parsed arguments
-- @param getenv function(name) (default os.getenv)
-- @return a list of paths
function M.inputs_of(args, getenv)
  getenv = getenv or os.getenv
  local list = {}
  local function add(p) if type(p) == "string" and p ~= "" then list[#list + 1] = p end end
  for _, f in ipairs(args.files or {}) do add(f) end
  add(args.transform)
  add(args.config)
  add(args.ca_file)
  add(getenv("OPTIMIZELY_CA_FILE"))
  if args.config then
    local v = M.settings(args, getenv).file.values
    add(v.ca_file)
    add(v.ca_path)
  end
  return list
end

return M
