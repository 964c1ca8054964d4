--- The records of a run's input files, one at a time, after the transform
-- and the date conversion: what `send`, `validate` and `convert` consume.
-- @module optimizely.offline.cli.records
local input = require("optimizely.offline.input")
local errors = require("optimizely.offline.errors")
local common = require("optimizely.offline.cli.common")
local config = require("optimizely.offline.cli.config")
local dates = require("optimizely.offline.cli.dates")
local money = require("optimizely.offline.cli.money")
local age = require("optimizely.offline.cli.age")
local pseudonymise = require("optimizely.offline.cli.pseudonymise")
local core = require("optimizely.offline.core")

local config_error, where = common.config_error, common.where

local M = {}

--- Reader options from the command line and the config file; a bad value
-- is a usage error found before anything is read (a bad CSV option must not
-- surface after the files before it were sent).
-- @param settings the `input` part of `config.settings`
function M.reader_opts(settings)
  local opts = { format = settings.format, map = settings.map, order_rows = settings.order_rows,
    input_encoding = settings.input_encoding }
  if settings.input_encoding ~= nil and not core.decoder(settings.input_encoding) then
    config_error("--input-encoding must be utf-8, cp1252 (Windows-1252) or latin1 (ISO-8859-1), got "
      .. common.label(settings.input_encoding))
  end
  if settings.format ~= nil then
    local f = tostring(settings.format):lower()
    if f ~= "ndjson" and f ~= "csv" and f ~= "xml" then
      config_error("--format must be ndjson, csv or xml, got " .. common.label(settings.format))
    end
  end
  local d = settings.delimiter
  if d ~= nil then
    if d == "tab" or d == "\\t" then d = "\t" end
    if #d ~= 1 or d:find('["\r\n]') or d == "\0" then
      config_error("--delimiter must be one character other than a quote, a line break or NUL, got "
        .. common.label(d))
    end
    opts.delimiter = d
  end
  return opts
end

-- The transform applied to one record: an item, as `iter` documents.
local function transformed(transform, ctx, rec, fi)
  ctx.file, ctx.line, ctx.index = rec.file, rec.line, rec.index
  local ok, res = pcall(transform, rec, ctx)
  if not ok then
    if common.is_interrupt(res) then error(res, 0) end
    return { stage = "transform", message = ("%s: transform failed: %s"):format(where(rec), tostring(res)),
             rec = rec, fi = fi }
  elseif res == nil then
    return { skipped = true, rec = rec, fi = fi }
  elseif type(res) ~= "table" then
    return { stage = "transform", rec = rec, fi = fi,
             message = ("%s: transform returned a %s, expected a payload table or nil"):format(where(rec), type(res)) }
  end
  return { payload = res, rec = rec, transformed = true, fi = fi }
end

-- The conversions of a payload item (money, dates), each
-- `function(payload) -> problems | nil, warnings | nil`: problems (of all of
-- them) make it a validation failure (with an error object), warnings ride
-- along.
local function converted(converters, item)
  local problems, warnings
  for _, convert in ipairs(converters) do
    local p, w = convert(item.payload)
    for _, x in ipairs(p or {}) do problems = problems or {}; problems[#problems + 1] = x end
    for _, x in ipairs(w or {}) do warnings = warnings or {}; warnings[#warnings + 1] = x end
  end
  if problems then
    item.stage = "validation"
    item.error = errors.validation(problems)
    item.message = tostring(item.error)
  end
  item.warnings = warnings
  return item
end

-- Pseudonymise a payload item (--pseudonymise): a problem makes it a
-- validation failure, warnings (an id that disagrees) ride along. An item
-- already failed (its date) is pseudonymised too: its payload goes to the
-- rejects file, which must hold the id, never the address. A payload that
-- cannot be pseudonymised is marked `withhold`: it is kept nowhere.
local function pseudonymised(p, item)
  local payload, w = p:apply(item.payload)
  if not payload then
    item.withhold = true
    if not item.stage then
      item.stage = "validation"
      item.error = w
      item.message = tostring(w)
    end
    return item
  end
  item.payload, item.pseudonymised = payload, true
  if item.stage then return item end
  if w[1] then
    local all = item.warnings or {}
    for _, x in ipairs(w) do all[#all + 1] = x end
    item.warnings = all
  end
  return item
end

-- The item for one record read from a file (nil: skip it).
local function item_of(self, rec, fi)
  if rec.error then
    if common.is_interrupt(rec.error) then error(rec.error, 0) end
    return { stage = "input", message = rec.error, code = rec.code, rec = rec, fi = fi,
             pseudonymise = self.pseudonym and true or nil }
  end
  local item
  if self.transform and not rec.transformed then
    item = transformed(self.transform, self.ctx, rec, fi)
  else
    item = { payload = rec.payload, rec = rec, transformed = rec.transformed, fi = fi }
  end
  if item.payload and self.converters[1] then converted(self.converters, item) end
  if self.pseudonym then
    item.pseudonymise = true -- the rejects file keeps no address of it (cli.rejects)
    if item.payload then pseudonymised(self.pseudonym, item) end
  end
  if item.payload and not item.stage and self.age then self.age(item) end
  return item
end

--- A command that reads orders (send, validate, convert): the input, the
-- pseudonymiser and the output options, plus `--config` (with `credentials`
-- the whole set of where-and-as-whom options).
-- @param parser the argparse parser
-- @param name the command's name
-- @param help its one-line help
-- @param credentials true for the credential options (send), else `--config`
-- @return the argparse command
function M.order_command(parser, name, help, credentials)
  local cmd = parser:command(name, help)
  common.input_options(cmd)
  age.option(cmd)
  pseudonymise.options(cmd, true)
  if credentials then
    common.credential_options(cmd)
  else
    common.config_option(cmd)
    cmd:epilog(common.LOCAL_ENV_HELP)
  end
  common.output_options(cmd)
  return cmd
end

--- Iterates over every record of every file, after the transform and the
-- date conversion. Yields `item` tables, each with `fi` (the file's
-- position in `args.files`):
--
--   { payload = t, rec = record, transformed = bool, warnings = list|nil }  ready to send
--   { stage = "input", message = s, code = c|nil, rec = r }  a format problem
--     (`code = "split_order"`: a later fragment of an order whose rows are not together)
--   { stage = "transform", message = s, rec = r }   the transform raised
--   { stage = "validation", payload = t, error = err, message = s, rec = r }
--     the date could not be converted (`--date-format`, `--timezone`)
--   { skipped = true, rec = r }                      the transform returned nil
--
-- With --pseudonymise, every item has `pseudonymise = true`, and `user.email`
-- has become the pseudonymised `user.id` (`pseudonymised = true`; a bad
-- address: a validation item, `withhold = true`), also in an item that
-- failed at its date. An order older than `--max-order-age` carries a
-- warning (optimizely.offline.cli.age).
-- Items with a `stage` are not sendable. A record from a rejects file
-- (`rec.transformed`) is not transformed again. Ctrl-C inside the
-- transform or a reader is raised again, never reported as a bad record.
-- @param args parsed arguments (files, format, delimiter, map, config, date options)
-- @param transform function or nil
-- @param progress optional; gets :file(state) when each file opens
-- @param resume optional `{fi = n, after = index}`: start with file n and
--   skip its records up to `after` (used to account for the rest of the
--   input after an interruption)
function M.iter(args, transform, progress, resume)
  local settings = config.settings(args).input
  local self = {
    files = args.files, opts = M.reader_opts(settings),
    converters = {},
    transform = transform, ctx = { state = {} },
    pseudonym = args.pseudonymise and pseudonymise.build(args) or nil,
    age = age.guard(args.max_order_age),
  }
  -- the conversions asked for, in this order (nil: not asked)
  for _, c in ipairs({ money.converter(settings) or false, dates.converter(settings) or false }) do
    if c then self.converters[#self.converters + 1] = c end
  end
  local fi = resume and resume.fi - 1 or 0
  local skip_to = resume and resume.after or 0
  local iter
  return function()
    while true do
      if not iter then
        fi = fi + 1
        if fi > #self.files then return nil end
        local it, state = M.open(self.files[fi], self.opts)
        if not it then
          -- an unreadable file is one rejected "record", and the run goes on
          return { stage = "input", message = common.path(self.files[fi]) .. ": " .. tostring(state),
                   rec = { file = self.files[fi], line = 0, index = 0 }, fi = fi,
                   pseudonymise = self.pseudonym and true or nil }
        end
        iter = it
        if progress then progress:file(state) end
      end
      local rec = iter()
      if rec == nil then
        iter, skip_to = nil, 0
      elseif not (skip_to > 0 and (rec.index or 0) <= skip_to) then -- else: accounted for before
        return item_of(self, rec, fi)
      end
    end
  end
end

--- Opens one input file: iter, state, or nil, message (a Ctrl-C is raised).
function M.open(path, opts)
  local ok, it, state = pcall(input.open, path, opts)
  if ok then return it, state end
  if common.is_interrupt(it) then error(it, 0) end
  return nil, (tostring(it):gsub("^[^:]*:%d+: ", ""))
end

return M
