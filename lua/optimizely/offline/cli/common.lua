--- Shared pieces of the CLI commands: input options, transforms, the
-- credentials, the rejects file and the progress display.
-- @module optimizely.offline.cli.common
local input = require("optimizely.offline.input")

local M = {}

-- ---------------------------------------------------------------- options

--- Options every command that reads order files takes.
function M.input_options(cmd)
  cmd:argument("files", "Order files (.ndjson/.jsonl/.json, .csv, .xml; - for stdin)."):args("+")
  cmd:option("--format", "Input format when the extension does not tell: ndjson, csv or xml.")
  cmd:option("--map", "CSV column rename, col=field (repeatable).")
    :count("*"):args(1)
  cmd:option("--delimiter", "CSV field delimiter (default ,).")
  cmd:option("--transform", "Lua script returning function(record, ctx) -> payload | nil.")
end

--- Options that say where and as whom to send.
function M.credential_options(cmd)
  cmd:option("--config", "Config file (key = value lines: site, token, channel, env, base_url, ...).")
  cmd:option("--env", "uat (default), uk, se or us.")
  cmd:option("--sitename", "Production host label (default: the site).")
  cmd:option("--base-url", "scheme://host[:port] instead of --env (the sandbox prints one).")
  cmd:option("--ca-file", "CA bundle for a private CA (the sandbox prints one).")
  cmd:option("--site", "Site code (default: $OPTIMIZELY_SITE).")
  cmd:option("--channel", "store, mobileapp, tv or callcentre (default: $OPTIMIZELY_CHANNEL).")
  cmd:option("--timeout", "Whole-request timeout in seconds (default 10).")
end

function M.output_options(cmd)
  cmd:flag("-q --quiet", "Print nothing but errors.")
  cmd:flag("-v --verbose", "Print every order's result.")
end

-- A usage/configuration error: the command exits 2 with this message.
local ConfigError = {}
M.ConfigError = ConfigError
local function config_error(msg) error(setmetatable({ message = msg }, ConfigError), 0) end
M.config_error = config_error

--- Runs fn(); a ConfigError becomes exit code 2 with its message on err.
function M.guard(err, fn)
  local ok, res = pcall(fn)
  if ok then return res end
  if getmetatable(res) == ConfigError then
    err:write("error: ", res.message, "\n")
    return 2
  end
  error(res, 0)
end

-- ------------------------------------------------------------ credentials

-- key = value lines; '#' starts a comment. No code runs: a config file is data.
local function read_config(path)
  local fh, e = io.open(path, "r")
  if not fh then config_error("cannot read config file: " .. tostring(e)) end
  local conf, n = {}, 0
  for line in fh:lines() do
    n = n + 1
    local s = line:gsub("^%s+", ""):gsub("%s+$", "")
    if s ~= "" and s:sub(1, 1) ~= "#" then
      local k, v = s:match("^([%w_%.%-]+)%s*=%s*(.-)$")
      if not k then fh:close(); config_error(("%s:%d: expected key = value"):format(path, n)) end
      v = v:match('^"(.*)"$') or v
      conf[k:gsub("-", "_")] = v
    end
  end
  fh:close()
  return conf
end

local NUMERIC = { timeout = true, connect_timeout = true, max_attempts = true,
                  backoff_base = true, backoff_max = true }

--- The client configuration from (in order of precedence) the command
-- line, the environment, then the config file. The token never comes from
-- the command line: only $OPTIMIZELY_SITE_TOKEN or the config file.
function M.client_config(args, getenv)
  getenv = getenv or os.getenv
  local conf = args.config and read_config(args.config) or {}
  local function pick(key, env)
    local v = args[key]
    if v == nil and env then v = getenv(env) end
    if v == nil or v == "" then v = conf[key] end
    if v ~= nil and v ~= "" then conf[key] = v end
  end
  pick("site", "OPTIMIZELY_SITE")
  pick("channel", "OPTIMIZELY_CHANNEL")
  pick("env", "OPTIMIZELY_ENV")
  pick("sitename")
  pick("base_url", "OPTIMIZELY_BASE_URL")
  pick("ca_file", "OPTIMIZELY_CA_FILE")
  pick("timeout")
  local token = getenv("OPTIMIZELY_SITE_TOKEN")
  if token and token ~= "" then conf.token = token end
  for k in pairs(NUMERIC) do
    if conf[k] ~= nil then
      local n = tonumber(conf[k])
      if not n then config_error(("%s must be a number, got %q"):format(k, tostring(conf[k]))) end
      conf[k] = n
    end
  end
  if conf.allow_http ~= nil then conf.allow_http = conf.allow_http == "true" or conf.allow_http == true end
  if not conf.site then config_error("no site: set OPTIMIZELY_SITE, --site or site in --config") end
  if not conf.token then config_error("no token: set OPTIMIZELY_SITE_TOKEN or token in --config") end
  if not conf.channel then config_error("no channel: set OPTIMIZELY_CHANNEL, --channel or channel in --config") end
  if conf.base_url and conf.base_url:match("^http://") and conf.allow_http == nil then
    conf.allow_http = true -- an explicit http:// base URL on the command line is a local test
  end
  return conf
end

--- Builds the client, turning a configuration error into exit code 2.
function M.client(args, getenv)
  local offline = require("optimizely.offline")
  local conf = M.client_config(args, getenv)
  local ok, client = pcall(offline.client, conf)
  if not ok then config_error(tostring(client):gsub("^[^:]*:%d+: ", "")) end
  return client
end

-- ------------------------------------------------------------- transforms

--- Loads a transform script: it must return a function(record, ctx).
function M.load_transform(path)
  if not path then return nil end
  local chunk, e = loadfile(path)
  if not chunk then config_error("cannot load transform: " .. tostring(e)) end
  local ok, fn = pcall(chunk)
  if not ok then config_error("transform " .. path .. " failed to load: " .. tostring(fn)) end
  if type(fn) ~= "function" then
    config_error("transform " .. path .. " must return a function(record, ctx), got " .. type(fn))
  end
  return fn
end

-- -------------------------------------------------------------- records

local function where(rec)
  return ("%s:%s"):format(tostring(rec.file), tostring(rec.line or "?"))
end
M.where = where

--- Iterates over every record of every file, after the transform.
-- Yields `item` tables:
--   { payload = t, rec = record }                 ready to validate/send
--   { stage = "input", message = s, rec = r }     a format problem
--   { stage = "transform", message = s, rec = r } the transform raised
--   { skipped = true, rec = r }                   the transform returned nil
-- `progress` (optional) gets :file(state) when each file opens.
function M.records(args, transform, progress)
  local files, fi = args.files, 0
  local iter, state
  local opts = { format = args.format, delimiter = args.delimiter }
  if args.map and #args.map > 0 then
    opts.map = {}
    for _, m in ipairs(args.map) do
      local spec = type(m) == "table" and m[1] or m
      local col, field = spec:match("^(.-)=(.*)$")
      if not col or col == "" then config_error("--map takes col=field, got " .. tostring(spec)) end
      opts.map[col] = field ~= "" and field or false
    end
  end
  local ctx = { state = {} }
  return function()
    while true do
      if not iter then
        fi = fi + 1
        if fi > #files then return nil end
        local e
        iter, state = input.open(files[fi], opts)
        if not iter then
          -- an unreadable file is one rejected "record", and the run goes on
          e = state
          iter = nil
          return { stage = "input", message = files[fi] .. ": " .. tostring(e),
                   rec = { file = files[fi], line = 0 } }
        end
        if progress then progress:file(state) end
      end
      local rec = iter()
      if rec == nil then
        iter = nil
      elseif rec.error then
        return { stage = "input", message = rec.error, rec = rec }
      elseif transform and not rec.transformed then
        ctx.file, ctx.line, ctx.index = rec.file, rec.line, rec.index
        local ok, res = pcall(transform, rec, ctx)
        if not ok then
          return { stage = "transform", message = ("%s: transform failed: %s"):format(where(rec), tostring(res)),
                   rec = rec }
        elseif res == nil then
          return { skipped = true, rec = rec }
        end
        return { payload = res, rec = rec, transformed = true }
      else
        return { payload = rec.payload, rec = rec, transformed = rec.transformed }
      end
    end
  end
end

-- --------------------------------------------------------------- rejects

--- A rejects file: NDJSON lines `{"payload":…, "error":…, "source":"file:line",
-- "stage":…, "transformed":bool}` that `send` reads back as they are (the
-- NDJSON reader unwraps them, and a transformed payload is not transformed
-- again).
function M.rejects(path)
  if not path then return nil end
  local cjson = require("cjson.safe")
  local fh, e = io.open(path, "w")
  if not fh then config_error("cannot write rejects file: " .. tostring(e)) end
  local self = { count = 0 }
  function self.add(item, err)
    local payload = item.payload or (item.rec and item.rec.payload)
    local errt
    if type(err) == "table" then
      errt = { kind = err.kind, message = err.message, status = err.status, code = err.code,
               problems = err.problems, attempts = err.attempts }
    else
      errt = { kind = item.stage or "input", message = tostring(err or item.message) }
    end
    local line = cjson.encode({
      payload = payload, error = errt, source = item.rec and where(item.rec) or nil,
      stage = item.stage or (type(err) == "table" and err.kind) or nil,
      transformed = item.transformed or false,
      raw = (not payload and item.rec) and item.rec.raw or nil,
    })
    if not line then
      -- a payload cjson cannot write (a function in it...): keep the error and where
      line = cjson.encode({ error = errt, source = item.rec and where(item.rec) or nil,
                            stage = item.stage, unserialisable = true })
    end
    fh:write(line, "\n")
    self.count = self.count + 1
  end
  function self.close() fh:close() end
  return self
end

-- -------------------------------------------------------------- progress

local function isatty(fh)
  -- no luaposix here: ask the shell whether stderr (fd 2) is a terminal
  if fh ~= io.stderr then return false end
  local ok, _, code = os.execute("test -t 2")
  return ok == true or ok == 0 or code == 0 and ok ~= nil and ok ~= false
end

--- A one-line progress bar on stderr, only when it is a terminal.
function M.progress(err, quiet, clock)
  local self = { done = 0, failed = 0, started = clock(), bytes = 0, size = 0, files = {} }
  self.enabled = not quiet and isatty(err)
  local last = 0
  function self:file(state) self.files[#self.files + 1] = state end
  function self:fraction()
    local b, s = 0, 0
    for _, st in ipairs(self.files) do b = b + (st.bytes or 0); s = s + (st.size or 0) end
    return s > 0 and b / s or nil
  end
  function self:update(done, failed, force)
    self.done, self.failed = done, failed
    if not self.enabled then return end
    local now = clock()
    if not force and now - last < 0.1 then return end
    last = now
    local el = now - self.started
    local rate = el > 0 and done / el or 0
    local frac = self:fraction()
    local bar, eta = "", ""
    if frac then
      local w = 24
      local n = math.floor(frac * w + 0.5)
      bar = "[" .. ("#"):rep(n) .. ("."):rep(w - n) .. "] " .. ("%3d%% "):format(math.floor(frac * 100))
      if frac > 0.01 and frac < 1 then eta = (" ETA %ds"):format(math.floor(el / frac - el + 0.5)) end
    end
    err:write(("\r%s%d done, %d failed, %.0f orders/s%s   "):format(bar, done, failed, rate, eta))
  end
  function self:finish()
    if self.enabled then self:update(self.done, self.failed, true); err:write("\n") end
  end
  return self
end

return M
