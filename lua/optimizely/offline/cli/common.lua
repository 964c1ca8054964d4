--- Shared pieces of the CLI commands: input options, transforms, the
-- credentials, the rejects file, the progress display and Ctrl-C.
-- @module optimizely.offline.cli.common
local input = require("optimizely.offline.input")

local M = {}

-- ---------------------------------------------------------------- options

--- Options every command that reads order files takes.
function M.input_options(cmd)
  cmd:argument("files", "Order files (.ndjson/.jsonl/.json, .csv, .xml; - for stdin)."):args("+")
  cmd:option("--format", "Input format when the extension does not tell: ndjson, csv or xml.")
  cmd:option("--map", "CSV column rename, col=field (repeatable)."):argname("<col=field>")
    :count("*"):args(1)
  cmd:option("--delimiter", "CSV field delimiter (default ,; 'tab' or '\\t' for a tab)."):argname("<char>")
  cmd:option("--transform", "Lua script returning function(record, ctx) -> payload | nil."):argname("<script.lua>")
end

--- Options that say where and as whom to send.
-- The token has no option on purpose (it would show in `ps` and shell
-- history): `--token` exists, hidden, only to say so.
function M.credential_options(cmd)
  cmd:option("--config", "Config file (key = value lines: site, token, channel, env, base_url, ...)."):argname("<file>")
  cmd:option("--env", "uat (default), uk, se or us.")
  cmd:option("--sitename", "Production host label (default: the site).")
  cmd:option("--base-url", "scheme://host[:port] instead of --env (the sandbox prints one)."):argname("<url>")
  cmd:option("--ca-file", "CA bundle for a private CA (the sandbox prints one)."):argname("<file>")
  cmd:option("--site", "Site code (default: $OPTIMIZELY_SITE).")
  cmd:option("--channel", "store, mobileapp, tv or callcentre (default: $OPTIMIZELY_CHANNEL).")
  cmd:option("--timeout", "Whole-request timeout in seconds (default 10)."):argname("<seconds>")
  cmd:option("--token"):hidden(true)
end

--- -q/--quiet and -v/--verbose.
function M.output_options(cmd)
  cmd:flag("-q --quiet", "Print nothing but errors.")
  cmd:flag("-v --verbose", "Print every order's result.")
end

-- A usage/configuration error: the command exits 2 with this message.
local ConfigError = { __tostring = function(e) return e.message end }
M.ConfigError = ConfigError
local function config_error(msg) error(setmetatable({ message = msg }, ConfigError), 0) end
M.config_error = config_error

--- Where a command writes its NDJSON: `out` for no path or "-", else the
-- file (a configuration error when it cannot be created). Close it when it
-- is not `out`.
function M.output(path, out)
  if not path or path == "-" then return out end
  local fh, e = io.open(path, "wb")
  if not fh then config_error("cannot write " .. path .. ": " .. tostring(e)) end
  return fh
end

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

--- Is `e` the error the interpreter raises on SIGINT (Ctrl-C)? lua.c and
-- luajit.c raise "interrupted!" (with a position prefix) at the next Lua
-- instruction after the signal.
function M.is_interrupt(e)
  return type(e) == "string" and e:find("interrupted!%s*$") ~= nil
end

--- A positive integer option (nil stays nil); a bad value is a usage error.
function M.int_option(value, name, lo, hi)
  if value == nil then return nil end
  local n = tonumber(value)
  if not n or n ~= math.floor(n) or n < lo or (hi and n > hi) then
    config_error(("--%s must be an integer %s, got %q"):format(name,
      hi and (lo .. ".." .. hi) or (">= " .. lo), tostring(value)))
  end
  return n
end

--- A positive number option (nil stays nil); a bad value is a usage error.
function M.number_option(value, name)
  if value == nil then return nil end
  local n = tonumber(value)
  if not n or n ~= n or n <= 0 or n == math.huge then
    config_error(("--%s must be a positive number, got %q"):format(name, tostring(value)))
  end
  return n
end

-- ------------------------------------------------------------ credentials

-- key = value lines; '#' starts a comment. No code runs: a config file is
-- data. Error messages name the line, never its content (it may hold the
-- token).
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
      v = v:match('^"(.*)"$') or v:match("^'(.*)'$") or v
      conf[(k:gsub("-", "_"))] = v
    end
  end
  fh:close()
  return conf
end

local NUMERIC = { timeout = true, connect_timeout = true, max_attempts = true,
                  backoff_base = true, backoff_max = true, retry_after_max = true }
local BOOLEAN = { allow_http = true, allow_custom_channel = true, verbose = true }

--- The client configuration from (in order of precedence) the command
-- line, the environment, then the config file. The token never comes from
-- the command line: only $OPTIMIZELY_SITE_TOKEN or the config file.
-- Raises a ConfigError (exit 2) when something is missing or malformed.
-- @param args parsed arguments
-- @param getenv function(name) (default os.getenv)
-- @return config table for `offline.client`
function M.client_config(args, getenv)
  getenv = getenv or os.getenv
  if args.token ~= nil then
    config_error("the site token is not taken on the command line (it would show in ps and "
      .. "the shell history): set OPTIMIZELY_SITE_TOKEN or token in --config")
  end
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
  pick("max_attempts")
  local token = getenv("OPTIMIZELY_SITE_TOKEN")
  if token and token ~= "" then conf.token = token end
  -- values are not echoed: a token pasted into the wrong key must not show
  for k in pairs(NUMERIC) do
    if conf[k] ~= nil then
      local n = tonumber(conf[k])
      if not n then config_error(k .. " must be a number") end
      conf[k] = n
    end
  end
  for k in pairs(BOOLEAN) do
    local v = conf[k]
    if type(v) == "string" then
      if v == "true" or v == "yes" or v == "1" then conf[k] = true
      elseif v == "false" or v == "no" or v == "0" then conf[k] = false
      else config_error(k .. " must be true or false") end
    end
  end
  if not conf.site then config_error("no site: set OPTIMIZELY_SITE, --site or site in --config") end
  if not conf.token then config_error("no token: set OPTIMIZELY_SITE_TOKEN or token in --config") end
  if not conf.channel then config_error("no channel: set OPTIMIZELY_CHANNEL, --channel or channel in --config") end
  if conf.base_url and conf.base_url:match("^http://") and conf.allow_http == nil then
    conf.allow_http = true -- an explicit http:// base URL on the command line is a local test
  end
  return conf
end

--- Builds the client, turning a configuration error into exit code 2.
-- The client's own messages never contain the token; the one below is
-- scrubbed once more in case a caller put the token in another field.
function M.client(args, getenv)
  local offline = require("optimizely.offline")
  local conf = M.client_config(args, getenv)
  local ok, client = pcall(offline.client, conf)
  if not ok then
    local msg = tostring(client):gsub("^[^:]*:%d+: ", "")
    config_error(require("optimizely.offline.errors").redact(msg, conf.token))
  end
  return client
end

-- ------------------------------------------------------------- transforms

--- Loads a transform script: it must return a function(record, ctx).
function M.load_transform(path)
  if not path then return nil end
  local chunk, e = loadfile(path)
  if not chunk then config_error("cannot load transform: " .. tostring(e)) end
  local ok, fn = pcall(chunk)
  if not ok then
    if M.is_interrupt(fn) then error(fn, 0) end
    config_error("transform " .. path .. " failed to load: " .. tostring(fn))
  end
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

-- Reader options from the command line; a bad value is a usage error found
-- before anything is read (a bad CSV option must not surface after the
-- files before it were sent).
local function reader_opts(args)
  local opts = { format = args.format }
  if args.format ~= nil then
    local f = tostring(args.format):lower()
    if f ~= "ndjson" and f ~= "csv" and f ~= "xml" then
      config_error(("--format must be ndjson, csv or xml, got %q"):format(tostring(args.format)))
    end
  end
  local d = args.delimiter
  if d ~= nil then
    if d == "tab" or d == "\\t" then d = "\t" end
    if #d ~= 1 or d:find('["\r\n]') then
      config_error(("--delimiter must be one character other than a quote or a line break, got %q"):format(d))
    end
    opts.delimiter = d
  end
  if args.map and #args.map > 0 then
    opts.map = {}
    for _, m in ipairs(args.map) do
      local spec = type(m) == "table" and m[1] or m
      local col, field = spec:match("^(.-)=(.*)$")
      if not col or col == "" then config_error("--map takes col=field, got " .. tostring(spec)) end
      opts.map[col] = field ~= "" and field or false
    end
  end
  return opts
end

--- Iterates over every record of every file, after the transform.
-- Yields `item` tables, each with `fi` (the file's position in `args.files`):
--   { payload = t, rec = record, transformed = bool }  ready to validate/send
--   { stage = "input", message = s, rec = r }          a format problem
--   { stage = "transform", message = s, rec = r }      the transform raised
--   { skipped = true, rec = r }                        the transform returned nil
-- A record from a rejects file (`rec.transformed`) is not transformed again.
-- Ctrl-C inside the transform or a reader is raised again, never reported
-- as a bad record.
-- @param args parsed arguments (files, format, delimiter, map)
-- @param transform function or nil
-- @param progress optional; gets :file(state) when each file opens
-- @param resume optional `{fi = n, after = index}`: start with file n and
--   skip its records up to `after` (used to account for the rest of the
--   input after an interruption)
function M.records(args, transform, progress, resume)
  local files = args.files
  local fi = resume and resume.fi - 1 or 0
  local skip_to = resume and resume.after or 0
  local iter
  local opts = reader_opts(args)
  local ctx = { state = {} }
  local is_interrupt = M.is_interrupt
  return function()
    while true do
      if not iter then
        fi = fi + 1
        if fi > #files then return nil end
        local ok, it, state = pcall(input.open, files[fi], opts)
        if not ok then
          if is_interrupt(it) then error(it, 0) end
          it, state = nil, tostring(it):gsub("^[^:]*:%d+: ", "")
        end
        if not it then
          -- an unreadable file is one rejected "record", and the run goes on
          return { stage = "input", message = files[fi] .. ": " .. tostring(state),
                   rec = { file = files[fi], line = 0, index = 0 }, fi = fi }
        end
        iter = it
        if progress then progress:file(state) end
      end
      local rec = iter()
      if rec == nil then
        iter = nil
        skip_to = 0
      elseif skip_to > 0 and (rec.index or 0) <= skip_to then
        -- already accounted for before the interruption
      elseif rec.error then
        if is_interrupt(rec.error) then error(rec.error, 0) end
        return { stage = "input", message = rec.error, rec = rec, fi = fi }
      elseif transform and not rec.transformed then
        ctx.file, ctx.line, ctx.index = rec.file, rec.line, rec.index
        local ok, res = pcall(transform, rec, ctx)
        if not ok then
          if is_interrupt(res) then error(res, 0) end
          return { stage = "transform", message = ("%s: transform failed: %s"):format(where(rec), tostring(res)),
                   rec = rec, fi = fi }
        elseif res == nil then
          return { skipped = true, rec = rec, fi = fi }
        elseif type(res) ~= "table" then
          return { stage = "transform", rec = rec, fi = fi,
                   message = ("%s: transform returned a %s, expected a payload table or nil")
                     :format(where(rec), type(res)) }
        end
        return { payload = res, rec = rec, transformed = true, fi = fi }
      else
        return { payload = rec.payload, rec = rec, transformed = rec.transformed, fi = fi }
      end
    end
  end
end

-- --------------------------------------------------------------- rejects

-- A private cjson (14 significant digits, the most lua-cjson 2.1 writes:
-- 19.9 stays 19.9), and a lenient fallback that keeps what the strict one
-- refuses (sparse arrays, NaN) rather than lose the payload.
local json, lenient
local function encoders()
  if json then return json, lenient end
  local cjson = require("cjson")
  json = cjson.new()
  json.encode_number_precision(14)
  lenient = cjson.new()
  lenient.encode_number_precision(14)
  lenient.encode_sparse_array(true)
  lenient.encode_invalid_numbers("null")
  return json, lenient
end

-- lua-cjson writes "/" as "\/"; a raw "/" never follows a backslash in
-- its output, so every "\/" is that escape and can go.
local function unslash(s) return (s:gsub("\\/", "/")) end
M.unslash = unslash

local function safe_encode(enc, v)
  local ok, s = pcall(enc.encode, v)
  if ok and s then return unslash(s) end
  return nil
end

-- The fields of an error worth keeping in a rejects line (never a body:
-- the message says what it held).
local function error_fields(err, stage, message)
  if type(err) == "table" then
    local list
    if type(err.errors) == "table" and #err.errors > 0 then
      list = {}
      for i, e in ipairs(err.errors) do list[i] = { code = e.code, message = e.message } end
    end
    return { kind = err.kind, message = err.message, status = err.status, code = err.code,
             problems = err.problems, errors = list, attempts = err.attempts,
             curl_code = err.curl_code, retryable = err.retryable }
  end
  return { kind = stage or "input", message = tostring(err or message) }
end
M.error_fields = error_fields

--- A rejects file: NDJSON lines `{"payload":…, "error":…, "source":"file:line",
-- "stage":…, "transformed":bool}` that `send` reads back as they are (the
-- NDJSON reader unwraps them, and a transformed payload is not transformed
-- again). Lines without a payload (input errors) keep `raw` text when the
-- reader had it; `origin` is the first source of a record re-sent from a
-- rejects file.
-- @param path file to write (truncated), or nil for no rejects file
-- @param opts optional `{lazy = true}`: create the file at the first line
-- @return writer `{add(item, err), close(), count, path}` or nil
function M.rejects(path, opts)
  if not path then return nil end
  local enc, len = encoders()
  local fh
  local function open()
    local e
    fh, e = io.open(path, "w")
    if not fh then config_error("cannot write rejects file: " .. tostring(e)) end
  end
  if not (opts and opts.lazy) then open() end
  local self = { count = 0, path = path }
  --- Writes one line for `item` (a records() item, with `stage`) and `err`.
  function self.add(item, err)
    if not fh then open() end
    local payload = item.payload or (item.rec and item.rec.payload)
    local errt = error_fields(err, item.stage, item.message)
    local rec = item.rec
    local t = {
      payload = payload, error = errt, source = rec and where(rec) or nil,
      origin = rec and rec.origin or nil,
      stage = item.stage or (type(err) == "table" and err.kind) or nil,
      transformed = item.transformed or false,
      raw = (not payload and rec) and rec.raw or nil,
    }
    local line = safe_encode(enc, t) or safe_encode(len, t)
    if not line then
      -- a payload no encoder can write (a function in it...): keep the error and where
      t.payload, t.unserialisable = nil, true
      line = safe_encode(len, t)
    end
    -- flushed line by line: what was written survives a second Ctrl-C, and
    -- a full disk shows at once
    local ok, werr = fh:write(line, "\n")
    if ok then ok, werr = fh:flush() end
    if not ok then error("cannot write rejects file " .. path .. ": " .. tostring(werr), 0) end
    self.count = self.count + 1
  end
  function self.close()
    if fh then
      local ok, e = fh:close()
      fh = nil
      if not ok then error("cannot write rejects file " .. path .. ": " .. tostring(e), 0) end
    end
  end
  return self
end

-- -------------------------------------------------------------- progress

local function isatty(fh)
  -- no luaposix here: ask the shell whether stderr (fd 2) is a terminal
  if fh ~= io.stderr then return false end
  local ok, _, code = os.execute("test -t 2")
  return ok == true or ok == 0 or (code == 0 and ok ~= nil and ok ~= false)
end
M.isatty = isatty

local function duration(s)
  s = math.floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return ("%dm%02ds"):format(math.floor(s / 60), s % 60) end
  return ("%dh%02dm"):format(math.floor(s / 3600), math.floor(s % 3600 / 60))
end

--- A one-line progress bar on stderr, only when it is a terminal (and not
-- --quiet): done/total once the total is known (`self.total`), else the
-- share of input bytes read, orders/s, failures and an ETA.
-- @param err writer (the bar shows only when it is io.stderr on a terminal)
-- @param quiet no bar at all
-- @param clock function returning seconds
-- @param paths optional list of input files (their sizes give the fraction)
function M.progress(err, quiet, clock, paths)
  local self = { done = 0, failed = 0, started = clock(), files = {}, total = nil }
  self.enabled = not quiet and isatty(err)
  local size = 0
  if self.enabled and paths then
    for _, p in ipairs(paths) do
      local s = input.total_hint(p)
      if not s then size = nil; break end
      size = size + s
    end
  end
  local last, shown = 0, nil -- shown: the line on screen
  function self:file(state) self.files[#self.files + 1] = state end
  function self:fraction()
    if self.total and self.total > 0 then return math.min(self.done / self.total, 1) end
    local b, s = 0, 0
    for _, st in ipairs(self.files) do b = b + (st.bytes or 0); s = s + (st.size or 0) end
    if size and size > 0 then s = size end
    return s > 0 and math.min(b / s, 1) or nil
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
      if frac > 0.01 and frac < 1 then eta = ", ETA " .. duration(el / frac - el) end
    end
    local count = self.total and (done .. "/" .. self.total) or tostring(done)
    local line = ("\r%s%s done, %d failed, %.0f orders/s%s\27[K"):format(bar, count, failed, rate, eta)
    if line == shown then return end
    err:write(line)
    shown = line
  end
  --- Clears the bar so a message line can be printed; the next update redraws it.
  function self:clear()
    if self.enabled and shown then err:write("\r\27[K"); shown = nil; last = 0 end
  end
  function self:finish()
    if self.enabled then self:update(self.done, self.failed, true); err:write("\n"); shown = nil end
  end
  return self
end

return M
