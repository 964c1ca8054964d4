--- `optimizely-offline mapping FILE… [-o mapping.csv]`: the one-time
-- e-mail → pseudonymised id mapping Optimizely asks for before a retailer
-- switches from `user.email` to `user.id`.
--
-- Reads the same inputs as `send` (NDJSON, CSV, legacy XML, `--transform`)
-- and writes CSV: a header `email,id`, then one line per distinct e-mail
-- address (trimmed, ASCII-lower-cased), sorted by its bytes, with its
-- pseudonym (optimizely.offline.pseudonym: the same key and options as the
-- sending side). UTF-8, LF line ends, RFC 4180 quoting.
--
-- Memory stays bounded however many customers: distinct addresses are
-- gathered in runs of `RUN_SIZE`, each sorted and written to a private
-- temporary file (0600, removed at the end, also on failure or Ctrl-C),
-- then merged (an external sort: optimizely.offline.distinct), so only one run and one line per run
-- file are in memory. The output is written to a temporary file renamed
-- into place when complete (0600); `-o` naming an input is refused.
-- Guide: doc/topics/pseudonymisation.md.
-- @module optimizely.offline.cli.cmd.mapping
local common = require("optimizely.offline.cli.common")
local validate_cmd = require("optimizely.offline.cli.cmd.validate")
local files = require("optimizely.offline.files")
local distinct = require("optimizely.offline.distinct")
local core = require("optimizely.offline.core")
local config = require("optimizely.offline.cli.config")
local records = require("optimizely.offline.cli.records")
local progress = require("optimizely.offline.cli.progress")
local pseudonymise = require("optimizely.offline.cli.pseudonymise")

local M = {}

--- Distinct addresses held in memory before a run is sorted to disk
-- (optimizely.offline.distinct sorts them).
M.RUN_SIZE = distinct.RUN_SIZE

local config_error = common.config_error

-- A failure of the run itself (a temporary file cannot be written...):
-- exit 1 with its message.
local RunError = {}
local function run_error(msg) error(setmetatable({ message = msg }, RunError), 0) end

--- Adds the `mapping` command and its options to the argparse parser.
function M.register(parser)
  local cmd = parser:command("mapping",
    "Write the one-time e-mail -> pseudonymised id mapping file (CSV: email,id) for Optimizely.")
  common.input_options(cmd)
  cmd:option("-o --output", "Mapping file to write (default: standard output); created 0600, "
    .. "replaced only once complete."):argname("<mapping.csv>")
  cmd:option("--config", "Config file with a pseudonym_key = ... line "
    .. "(default: $OPTIMIZELY_PSEUDONYM_KEY, which wins over the file)."):argname("<file>")
  pseudonymise.options(cmd, false)
  cmd:option("--tmpdir", "Directory for the temporary sort files (default: the output's directory, "
    .. "else $TMPDIR or /tmp)."):argname("<dir>")
  cmd:option("--run-size"):hidden(true) -- specs: force many runs and merge passes
  cmd:flag("-q --quiet", "Print nothing but errors.")
  cmd:epilog(table.concat({
    "Environment:",
    "   OPTIMIZELY_PSEUDONYM_KEY         the pseudonym key (required here or in --config)",
    "Exit codes: 0 done, 1 some records left out (the file is still written) or an I/O failure,",
    "2 usage or configuration error, 130 interrupted (no file written).",
  }, "\n"))
end

-- ---------------------------------------------------------------- config

-- ------------------------------------------------------------ temp files

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- The result of an I/O call (ok, err), or a RunError saying `what` failed.
local function must(what, ok, e)
  if not ok then run_error(what .. ": " .. tostring(e)) end
  return ok
end

-- ------------------------------------------------------------------- run

--- A CSV field as RFC 4180 writes it: a value with a comma, a quote or a
-- line break is quoted, its quotes doubled; any other is as it is.
-- @param s the value
-- @return the field
local function csv_field(s)
  if s:find('[,"\r\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end
M.csv_field = csv_field


local Mapping = {}
Mapping.__index = Mapping

function Mapping.new(args, out, err, getenv)
  local self = setmetatable({ args = args, out = out, err = err, read = 0, invalid = 0, id_only = 0,
                              bad = 0, skipped = 0, written = 0 }, Mapping)
  self.to_file = args.output ~= nil and args.output ~= "-"
  if self.to_file then common.refuse_overwrite(config.inputs_of(args, getenv), { { "-o", args.output } }) end
  self.p = pseudonymise.build(args, getenv)
  self.transform = common.load_transform(args.transform)
  local dir = args.tmpdir or (self.to_file and dirname(args.output)) or getenv("TMPDIR") or "/tmp"
  local fh, path = distinct.temp_file(dir) -- fail now, not after reading gigabytes
  if not fh then config_error(path.message) end
  fh:close()
  os.remove(path)
  self.distinct = distinct.new(dir, { run_size = common.int_option(args.run_size, "run-size", 1) or M.RUN_SIZE })
  self.clock = core.now or os.clock
  return self
end

function Mapping:report(item, problem)
  self.progress:clear()
  validate_cmd.report(self.err, item, problem)
end

-- One record: its user.email, when it has one, joins the distinct set.
function Mapping:take(item)
  if item.skipped then self.skipped = self.skipped + 1; return end
  if not item.payload then
    self.bad = self.bad + 1
    self:report(item)
    return
  end
  local user = type(item.payload) == "table" and item.payload.user
  if type(user) ~= "table" then return end
  if user.email == nil then
    if user.id ~= nil then self.id_only = self.id_only + 1 end
    return
  end
  self.read = self.read + 1
  local norm, why = core.email_normalise(user.email)
  if norm then
    local ok, e = self.distinct:add(norm)
    if not ok then run_error(e.message) end
    return
  end
  self.invalid = self.invalid + 1
  self:report(item, { problems = { { path = "user.email", message = why.message } } })
end

function Mapping:gather()
  local args = self.args
  self.progress = progress.new(self.err, args.quiet, self.clock, args.files)
  local n = 0
  for item in records.iter(args, self.transform, self.progress) do
    self:take(item)
    n = n + 1
    if n % 512 == 0 then self.progress:update(n, self.bad + self.invalid) end
  end
  self.progress:update(n, self.bad + self.invalid, true)
  self.progress:finish()
end

function Mapping:write()
  local dest, writer = self.out, nil
  if self.to_file then
    local e
    writer, e = files.atomic(self.args.output)
    if not writer then run_error("cannot write " .. self.args.output .. ": " .. tostring(e)) end
    self.writer, dest = writer, writer.fh
  end
  local bar = progress.new(self.err, self.args.quiet, self.clock)
  local p = self.p
  local what = "cannot write " .. (self.to_file and self.args.output or "standard output")
  must(what, dest:write("email,id\n"))
  local n, e = self.distinct:each(function(email)
    local id = assert(p:id(email)) -- normalised and checked already
    must(what, dest:write(csv_field(email), ",", id, "\n"))
    self.written = self.written + 1
    if self.written % 4096 == 0 then bar:update(self.written, 0) end
  end)
  if not n then run_error(e.message) end
  bar:finish()
  if writer then
    must(what, writer:commit())
    self.writer = nil
  else
    must(what, dest:flush())
  end
end

function Mapping:cleanup()
  if self.writer then self.writer:abort(); self.writer = nil end
  self.distinct:cleanup()
  if self.p then self.p:close() end
end

function Mapping:summary()
  if self.args.quiet then return end
  local s = ("%d e-mails read, %d distinct, %d written to %s"):format(self.read, self.written,
    self.written, self.to_file and self.args.output or "standard output")
  local extra = {}
  if self.invalid > 0 then extra[#extra + 1] = self.invalid .. " invalid e-mails" end
  if self.bad > 0 then extra[#extra + 1] = self.bad .. " unreadable records" end
  if self.id_only > 0 then extra[#extra + 1] = self.id_only .. " records with a user.id and no e-mail" end
  if self.skipped > 0 then extra[#extra + 1] = self.skipped .. " skipped by the transform" end
  if #extra > 0 then s = s .. "; " .. table.concat(extra, ", ") end
  self.err:write(s, "\n")
end

--- Runs the command. Exit codes: 0 done, 1 some records left out (the file
-- is still written) or an I/O failure, 2 usage or configuration error,
-- 130 interrupted (no file written, temporary files removed).
function M.run(args, out, err, getenv)
  getenv = getenv or os.getenv
  return common.guard(err, function()
    local m = Mapping.new(args, out, err, getenv)
    local ok, e = pcall(function()
      m:gather()
      m:write()
    end)
    m:cleanup()
    if not ok then
      if common.is_interrupt(e) then
        if m.progress then m.progress:clear() end
        err:write("interrupted: no mapping written", m.to_file and "" or " (standard output is incomplete)", "\n")
        return 130
      end
      if getmetatable(e) ~= RunError then error(e, 0) end
      err:write("error: ", e.message, "\n")
      return 1
    end
    m:summary()
    return (m.invalid > 0 or m.bad > 0) and 1 or 0
  end)
end

return M
