--- Shared pieces of the CLI commands: the options they declare, usage
-- errors, message safety (every value a message shows is escaped), output
-- files (private, atomic, never one of the inputs) and transforms. The
-- records iterator (and the options of a command that reads orders), the
-- rejects file, the progress bar and the credentials live in their own
-- modules above this one (cli.records, cli.rejects, cli.progress,
-- cli.config): a command requires those it uses.
-- @module optimizely.offline.cli.common
local core = require("optimizely.offline.core")
local files = require("optimizely.offline.files")
local clean = require("optimizely.offline.errors").clean

local M = {}

-- ---------------------------------------------------------------- options

--- The environment variables the commands read, their precedence and the
-- exit codes: the epilog of `send --help` and `cancel --help`.
M.ENV_HELP = table.concat({
  "Environment:",
  "   OPTIMIZELY_SITE                  site code (--site)",
  "   OPTIMIZELY_SITE_TOKEN            the siteToken (never on the command line)",
  "   OPTIMIZELY_SITE_TOKEN_<CHANNEL>  the siteToken of one channel, e.g. OPTIMIZELY_SITE_TOKEN_STORE",
  "   OPTIMIZELY_CHANNEL               store, mobileapp, tv or callcentre (--channel)",
  "   OPTIMIZELY_ENV                   uat, uk, se or us (--env)",
  "   OPTIMIZELY_BASE_URL              https://host[:port] instead of the environment (--base-url)",
  "   OPTIMIZELY_CA_FILE               CA bundle for a private CA (--ca-file)",
  "   OPTIMIZELY_PSEUDONYM_KEY         key for pseudonymised user ids",
  "Precedence: command line, then environment, then the --config file.",
  "Exit codes: 0 all done, 1 some orders failed, 2 usage or configuration error, 130 interrupted.",
}, "\n")

--- The epilog of the commands that read order files without sending
-- (`validate`, `convert`): the one variable they read and the exit codes.
M.LOCAL_ENV_HELP = table.concat({
  "Environment:",
  "   OPTIMIZELY_PSEUDONYM_KEY         key for pseudonymised user ids (--pseudonymise)",
  "Exit codes: 0 all valid, 1 some orders invalid, 2 usage or configuration error, 130 interrupted.",
}, "\n")

--- Adds the config file option to an argparse command:
-- `--config FILE`, key = value lines (doc/topics/cli.md; read by
-- optimizely.offline.cli.config).
-- @param cmd the argparse command
function M.config_option(cmd)
  cmd:option("--config", "Config file: key = value lines (site, token, token.<channel>, channel, "
    .. "base_url, map.<column>, delimiter, date_format, timezone, ...)."):argname("<file>")
end

--- Options every command that reads order files takes.
function M.input_options(cmd)
  cmd:argument("files", "Order files (.ndjson/.jsonl/.json, .csv, .xml; - for stdin)."):args("+")
  cmd:option("--format", "Input format when the extension does not tell: ndjson, csv or xml.")
  cmd:option("--map", "CSV column rename, col=field (repeatable)."):argname("<col=field>")
    :count("*"):args(1)
  cmd:option("--delimiter", "CSV field delimiter (default ,; 'tab' or '\\t' for a tab)."):argname("<char>")
  cmd:option("--transform", "Lua script returning function(record, ctx) -> payload | nil."):argname("<script.lua>")
  cmd:option("--date-format", "How order dates are written, e.g. '%d/%m/%Y %H:%M' (directives: "
    .. "%Y %y %m %d %e %b %B %H %I %p %M %S %f %z %a %F %T %R %%)."):argname("<format>")
  cmd:option("--timezone", "Time zone of dates without an offset, e.g. Europe/London "
    .. "(from the system zoneinfo; default UTC)."):argname("<zone>")
  cmd:flag("--group-orders", "CSV: gather the rows of an order wherever they are in the file "
    .. "(default: an order's rows must be consecutive).")
  cmd:option("--input-encoding", "Character set of the input files: utf-8 (default), cp1252 (Windows-1252) "
    .. "or latin1 (ISO-8859-1); converted to UTF-8 as they are read."):argname("<charset>")
  cmd:flag("--decimal-comma", "Amounts are written with a decimal comma, as tills do: 2,24 and 1.234,56.")
  cmd:flag("--currency-symbols", "Amounts may carry their currency's symbol or code: £2.24, 2,24 €, GBP 2.24 "
    .. "(dropped when it is the order's currency).")
end

--- Options that say where and as whom to send.
-- The token has no option on purpose (it would show in `ps` and shell
-- history): `--token` exists, hidden, only to say so.
function M.credential_options(cmd)
  M.config_option(cmd)
  cmd:option("--env", "uat (default), uk, se or us.")
  cmd:option("--sitename", "Production host label (default: the site).")
  cmd:option("--base-url", "scheme://host[:port] instead of --env (the sandbox prints one)."):argname("<url>")
  cmd:option("--ca-file", "CA bundle for a private CA (the sandbox prints one)."):argname("<file>")
  cmd:option("--site", "Site code (default: $OPTIMIZELY_SITE).")
  cmd:option("--channel", "store, mobileapp, tv or callcentre (default: $OPTIMIZELY_CHANNEL).")
  cmd:option("--timeout", "Whole-request timeout in seconds (default 10)."):argname("<seconds>")
  cmd:flag("--allow-http", "Allow a plain http:// base URL (the token crosses the network "
    .. "unencrypted: local tests only).")
  cmd:option("--token"):hidden(true)
  cmd:epilog(M.ENV_HELP)
end

--- Adds the quiet and verbose flags to an argparse command:
-- `-q`/`--quiet` (errors only) and `-v`/`--verbose` (every order's result).
-- @param cmd the argparse command
function M.output_options(cmd)
  cmd:flag("-q --quiet", "Print nothing but errors (failed orders and fatal errors).")
  cmd:flag("-v --verbose", "Print every order's result.")
end

-- ----------------------------------------------------------------- errors

-- A usage/configuration error: the command exits 2 with this message.
local ConfigError = { __tostring = function(e) return e.message end }
M.ConfigError = ConfigError

--- Raise a usage or configuration error (the command exits 2 with `msg`).
function M.config_error(msg) error(setmetatable({ message = msg }, ConfigError), 0) end
local config_error = M.config_error

--- Is `e` an interrupt (Ctrl-C)? The library's one test
-- (`optimizely.offline.errors.is_interrupt`): lua.c's "interrupted!", or
-- the interrupt `send_batch` raises again with its summary.
M.is_interrupt = require("optimizely.offline.errors").is_interrupt

--- Runs fn(); a ConfigError becomes exit code 2 with its message on err,
-- another error message exit code 1; Ctrl-C is raised again. Output files
-- still open are thrown away (a failed `convert -o` leaves no half file).
function M.guard(err, fn)
  local ok, res = pcall(fn)
  if ok then return res end
  M.abort_outputs()
  if getmetatable(res) == ConfigError then
    M.say(err, "error: ", res.message)
    return 2
  end
  if M.is_interrupt(res) or type(res) ~= "string" then error(res, 0) end
  -- a runtime failure (a file that cannot be written...): said, no traceback
  M.say(err, "error: ", res)
  return 1
end

--- A positive integer option (nil stays nil); a bad value is a usage error.
function M.int_option(value, name, lo, hi)
  if value == nil then return nil end
  local n = tonumber(value)
  if not n or n ~= math.floor(n) or n < lo or (hi and n > hi) then
    config_error(("--%s must be an integer %s, got %s"):format(name,
      hi and (lo .. ".." .. hi) or (">= " .. lo), core.quote(tostring(value), 40)))
  end
  return n
end

--- A file mode option (`--metrics-mode 0644`): octal permission bits
-- that let no one but the owner write or run the file — 0600, 0640, 0644,
-- 0400, 0440, 0444 —, for a file that holds no orders. nil stays nil; any
-- other value is a usage error.
-- @param value the option's text
-- @param name the option's name, for the message
-- @return the mode as a number, or nil
function M.file_mode(value, name)
  if value == nil then return nil end
  local s = tostring(value)
  local m = s:match("^0?[0-7][0-7][0-7]$") and tonumber(s, 8)
  local owner, group, other = m and math.floor(m / 64), m and math.floor(m / 8) % 8, m and m % 8
  -- the owner reads (and may write), the others may only read; no one runs it
  if not m or (owner ~= 4 and owner ~= 6) or (group ~= 0 and group ~= 4) or (other ~= 0 and other ~= 4) then
    config_error(("--%s must be an octal mode that only the owner may write, such as 0644 or 0640, "
      .. "got %s"):format(name, core.quote(s, 20)))
  end
  return m
end

--- A number of seconds, 0 to a day (nil stays nil); a bad value is a
-- usage error.
function M.seconds_option(value, name)
  if value == nil then return nil end
  local n = tonumber(value)
  if not n or n ~= n or n < 0 or n > 86400 then
    config_error(("--%s must be a number of seconds from 0 to 86400, got %s"):format(name,
      core.quote(tostring(value), 40)))
  end
  return n
end

--- A positive number option (nil stays nil); a bad value is a usage error.
function M.number_option(value, name)
  if value == nil then return nil end
  local n = tonumber(value)
  if not n or n ~= n or n <= 0 or n == math.huge then
    config_error(("--%s must be a positive number, got %s"):format(name, core.quote(tostring(value), 40)))
  end
  return n
end

-- --------------------------------------------------------------- messages

--- The longest line a command prints (a 7 MB input line must not become
-- megabytes of error output).
M.MAX_LINE = 2000

--- Text made safe for one line of a terminal (`optimizely.offline.errors.clean`:
-- control characters escaped, so a value can neither forge a line nor send
-- an escape sequence); longer than `cap` (default MAX_LINE) bytes, cut with
-- a note of its length. Quotes are left alone: values inside a message are
-- quoted by `label` or `core.quote` when it is built.
function M.clean(s, cap)
  return clean(s, cap or M.MAX_LINE)
end

-- Anything shaped like an e-mail address (text@text, the domain without a
-- dot too: jane@localhost is personal data as well).
local ADDRESS = "[^%s\"'<>()%[%],;:@]+@[^%s\"'<>()%[%],;:@]+"

--- Text with every e-mail address in it replaced by `<e-mail>`: for what
-- must hold no personal data (a spool's last errors on screen, the
-- messages of a `--pseudonymise` run's rejects file).
function M.mask_emails(s)
  if type(s) ~= "string" then return s end
  return (s:gsub(ADDRESS, "<e-mail>"))
end

--- A name or refCode for a message: as it is when it reads safely (short,
-- printable, no quotes or spaces), else quoted with `core.quote` (escaped,
-- capped at 64 bytes).
function M.label(s)
  s = tostring(s)
  if #s <= 64 and not s:find("[^%w%-%._:/#+@=,]") then return s end
  return core.quote(s, 64)
end

--- Writes one message line on `w`: the pieces joined, `clean`ed, then "\n".
function M.say(w, ...)
  local parts = { ... }
  for i = 1, select("#", ...) do parts[i] = tostring(parts[i]) end
  w:write(M.clean(table.concat(parts)), "\n")
end

--- A file path for a message, whole: control characters escaped (as
-- `clean` does), never quoted or cut (a path is the user's own, not a
-- hostile value), so `path:line` stays a place an editor or a terminal can
-- open.
function M.path(p)
  return M.clean(p, 1 / 0)
end

--- "file:line" of a record, for messages (the path whole, see `path`).
function M.where(rec)
  return ("%s:%s"):format(M.path(rec.file), tostring(rec.line or "?"))
end

--- The refCode of a payload as text, or nil when it has none (or no `order`).
function M.ref_of(payload)
  local o = type(payload) == "table" and payload.order
  local r = type(o) == "table" and o.refCode
  if type(r) == "string" or type(r) == "number" then return tostring(r) end
  return nil
end

--- The start of a message about an item: "file:line (from origin): order REF: ".
function M.head(item)
  local ref = M.ref_of(item.payload)
  local origin = item.rec.origin
  return M.where(item.rec) .. (origin and (" (from " .. M.path(origin) .. ")") or "") .. ": "
    .. (ref and ("order " .. M.label(ref) .. ": ") or "")
end

--- The lines that say why an item failed: one per validation problem (with
-- its field path), else one for the error.
function M.failure_lines(item, e)
  local lines = {}
  if type(e) == "table" and e.problems then
    local h = M.head(item)
    for _, p in ipairs(e.problems) do
      lines[#lines + 1] = h .. (p.path ~= "" and (p.path .. ": ") or "") .. tostring(p.message)
    end
    if e.truncated then lines[#lines + 1] = h .. "(more problems not shown)" end
  elseif type(e) == "table" then
    lines[1] = M.head(item) .. tostring(e)
  else
    lines[1] = tostring(e or item.message)
  end
  return lines
end

--- One warning ({path=, code=, message=}) as text.
function M.warning_text(w)
  return (w.path and w.path ~= "" and (w.path .. ": ") or (w.code and (tostring(w.code) .. ": ")) or "")
    .. tostring(w.message)
end

-- ------------------------------------------------------------------ files

-- Do two paths name one file, even one that does not exist yet (the same
-- name in the same directory)?
local function same_target(a, b)
  if a == b or files.same(a, b) then return true end
  local da, na = a:match("^(.*)/([^/]*)$")
  local db, nb = b:match("^(.*)/([^/]*)$")
  da, na, db, nb = da or ".", na or a, db or ".", nb or b
  return na == nb and files.same(da == "" and "/" or da, db == "" and "/" or db)
end

--- Do two paths name one file, even one that does not exist yet (the
-- same name in the same directory, however spelled)?
-- @param a a path
-- @param b another
-- @return boolean
M.same_target = same_target
-- The directory a path names a file in ("." for a bare name).
local function dir_of(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  return d == "" and "/" or d
end

--- Refuses (exit 2) any output that is one of the inputs, whatever the
-- spelling (`./x`, `d/../x`, a symlink, a hard link): files are compared by
-- identity (device and inode); an input that is a directory (a CA path)
-- may hold no output. Two outputs on one file are refused too.
-- @param inputs list of paths (order files, the transform, the config, the CA...)
-- @param outputs list of `{flag, path}` (`path` nil or "-" is skipped)
function M.refuse_overwrite(inputs, outputs)
  for i, o in ipairs(outputs) do
    local flag, path = o[1], o[2]
    if path and path ~= "-" then
      for _, f in pairs(inputs) do
        if f ~= "-" and files.same(path, f) then
          config_error(("%s %s is the input file %s: write it elsewhere"):format(flag, M.label(path), M.label(f)))
        end
        local _, kind = core.file_id(f)
        if kind == "directory" and files.same(dir_of(path), f) then
          config_error(("%s %s is in the directory %s this command reads: write it elsewhere")
            :format(flag, M.label(path), M.label(f)))
        end
      end
      for j = 1, i - 1 do
        local other = outputs[j]
        if other[2] and other[2] ~= "-" and same_target(other[2], path) then
          config_error(("%s and %s name the same file %s"):format(other[1], flag, M.label(path)))
        end
      end
    end
  end
end

-- Writers not yet committed: thrown away by `guard` when a command fails.
local open_outputs = setmetatable({}, { __mode = "k" })

--- Throws away every output file not yet committed.
function M.abort_outputs()
  for w in pairs(open_outputs) do
    open_outputs[w] = nil
    w:abort()
  end
end

local Sink = {}
Sink.__index = Sink

--- Writes to the output (the methods of a Lua file).
function Sink:write(...)
  local ok, e = self.fh:write(...)
  if not ok then error(("cannot write %s: %s"):format(M.label(self.path), tostring(e)), 0) end
  return self
end

--- Completes the output: renames the temporary file into place.
function Sink:close()
  open_outputs[self] = nil
  if self.atomic then
    local ok, e = self.atomic:commit()
    if not ok then error(("cannot write %s: %s"):format(M.label(self.path), tostring(e)), 0) end
  elseif self.fh ~= io.stdout then
    local ok, e = self.fh:close()
    if not ok then error(("cannot write %s: %s"):format(M.label(self.path), tostring(e)), 0) end
  end
  return true
end

--- Throws the output away (the file at `path` is left as it was).
function Sink:abort()
  open_outputs[self] = nil
  if self.atomic then self.atomic:abort() elseif self.fh ~= io.stdout then pcall(self.fh.close, self.fh) end
end

--- An output file that holds orders: written to a private (0600)
-- temporary file beside `path`, renamed over it by `:close()` only when
-- complete; an existing device or pipe (/dev/stdout, a fifo) is written
-- directly. A path that cannot be written is a usage error.
-- Unless `keep` is set, a command that fails (`guard`) throws the file away.
-- @param path the file
-- @param what how messages name it ("the report", "rejects file"...)
-- @param keep true: the caller decides what happens on failure (a rejects
--   file is put in place even after an interruption: nothing is lost)
-- @param mode optional permission bits of the complete file (a file that
--   holds no orders: see `file_mode`), else 0600
-- @return sink with `fh`, `path`, `:write(...)`, `:close()`, `:abort()`
function M.open_output(path, what, keep, mode)
  local id, kind = core.file_id(path)
  local self = setmetatable({ path = path }, Sink)
  local e
  if id and kind ~= "file" then
    self.fh, e = io.open(path, "w")
  else
    self.atomic, e = files.atomic(path, mode)
    self.fh = self.atomic and self.atomic.fh
  end
  if not self.fh then config_error(("cannot write %s %s: %s"):format(what or "to", M.label(path), tostring(e))) end
  if not keep then open_outputs[self] = true end
  return self
end

--- Where a command writes its output: `out` for no path or "-", else an
-- `open_output` sink. Close it (`:close()` renames it into place) when it
-- is not `out`.
function M.output(path, out)
  if not path or path == "-" then return out end
  return M.open_output(path, "to")
end

-- A Lua file as source text only (never bytecode, which Lua does not
-- verify): a leading "#" line is skipped, as `lua` does.
local function load_source(path)
  local fh, e = io.open(path, "rb")
  if not fh then return nil, e end
  local text = fh:read("*a")
  fh:close()
  if not text then return nil, "cannot read " .. path end
  if text:byte(1) == 27 then return nil, path .. ": attempt to load a binary chunk (a transform is Lua source text)" end
  text = text:gsub("^#[^\n]*", "")
  if loadstring then return loadstring(text, "@" .. path) end -- luacheck: ignore (Lua 5.1)
  return load(text, "@" .. path, "t")
end

--- Loads a transform script: it must return a function(record, ctx). It
-- is trusted code, run with the full Lua environment (it can read the
-- environment, the token's variable included): loaded as source text
-- only, never as bytecode.
function M.load_transform(path)
  if not path then return nil end
  local chunk, e = load_source(path)
  if not chunk then config_error("cannot load transform: " .. tostring(e)) end
  local ok, fn = pcall(chunk)
  if not ok then
    if M.is_interrupt(fn) then error(fn, 0) end
    config_error("transform " .. M.label(path) .. " failed to load: " .. tostring(fn))
  end
  if type(fn) ~= "function" then
    config_error("transform " .. M.label(path) .. " must return a function(record, ctx), got " .. type(fn))
  end
  return fn
end

return M
