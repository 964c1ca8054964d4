--- `optimizely-offline validate FILE…`: check every order (file, line and
-- field path of each problem) and its channel (`optimizely.offline.cli.channels`),
-- end with the problems grouped; exit 1 if any. Nothing is sent.
--
-- The loop it shares with `convert` is the `Check` object: records in,
-- failures counted, printed (the first MAX_PRINTED; all with -v; with -q
-- too: they are the errors), grouped and written to the rejects file.
-- @module optimizely.offline.cli.cmd.validate
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")
local common = require("optimizely.offline.cli.common")
local config = require("optimizely.offline.cli.config")
local records = require("optimizely.offline.cli.records")
local channels = require("optimizely.offline.cli.channels")
local problems = require("optimizely.offline.cli.problems")
local rejects = require("optimizely.offline.cli.rejects")
local progress = require("optimizely.offline.cli.progress")

local M = {}

--- Failure lines printed before the rest go only to the summary.
M.MAX_PRINTED = 50

--- Adds the `validate` command and its options to the argparse parser.
function M.register(parser)
  local cmd = records.order_command(parser, "validate", "Check order files without sending anything.")
  cmd:option("--rejects", "Write invalid orders (with their error) to this NDJSON file."):argname("<file>")
end

--- Prints the problems of one item on `out` ("file:line: order REF: path:
-- message", one line per problem).
function M.report(out, item, err)
  for _, line in ipairs(common.failure_lines(item, err)) do common.say(out, line) end
end

local Check = {}
Check.__index = Check
M.Check = Check

--- A checking run over the records of `args` (the rejects file, the
-- progress bar and the records iterator are set up here).
-- @param args parsed arguments
-- @param out standard output
-- @param err standard error
-- @param to where failure lines go (stdout for validate, stderr for
--   convert, whose stdout holds the data)
-- @param outputs extra `{flag, path}` outputs to keep off the inputs
function Check.new(args, out, err, to, outputs)
  local self = setmetatable({ args = args, out = out, err = err, to = to, good = 0, bad = 0, skipped = 0,
    printed = 0, failures = problems.new(), warned = problems.new() }, Check)
  table.insert(outputs, 1, { "--rejects", args.rejects })
  common.refuse_overwrite(config.inputs_of(args), outputs)
  self.transform = common.load_transform(args.transform)
  self.rejects = rejects.new(args.rejects)
  self.progress = progress.new(err, args.quiet, core.now or os.clock, args.files)
  self.records = records.iter(args, self.transform, self.progress)
  return self
end

--- Counts, prints, groups and writes down one failed item.
function Check:fail(item, e)
  self.bad = self.bad + 1
  self.failures:failure(item, e)
  if self.rejects then self.rejects:add(item, e) end
  self.printed = self.printed + 1
  if self.printed <= M.MAX_PRINTED or self.args.verbose then
    self.progress:clear()
    M.report(self.to, item, e)
  elseif self.printed == M.MAX_PRINTED + 1 then
    self.progress:clear()
    common.say(self.to, "(more invalid records: see the summary; --verbose prints them all)")
  end
end

--- Runs `each(item) -> ok, err_or_warnings` over the sendable items.
function Check:run(each)
  for item in self.records do
    if item.payload and not item.stage then
      local ok, e = each(item)
      if ok then
        self.good = self.good + 1
        self.warned:warnings(item, item.warnings)
        self.warned:warnings(item, e)
      else
        self:fail(item, e)
      end
    elseif item.skipped then
      self.skipped = self.skipped + 1
    else
      self:fail(item, item.error or item.message)
    end
    if (self.good + self.bad) % 512 == 0 then self.progress:update(self.good + self.bad, self.bad) end
  end
  self.progress:update(self.good + self.bad, self.bad, true)
  self.progress:finish()
end

--- Closes the rejects file and prints the summary (`counts`: the first
-- line) unless -q.
-- @return exit code
function Check:finish(counts)
  if self.rejects then self.rejects:close() end
  if not self.args.quiet then
    common.say(self.err, counts)
    for _, l in ipairs(self.failures:lines("invalid records by problem:")) do common.say(self.err, l) end
    for _, l in ipairs(self.warned:lines("warnings by kind:")) do common.say(self.err, l) end
  end
  return self.bad > 0 and 1 or 0
end

--- Runs `fn` as a command: usage errors exit 2, Ctrl-C 130 (and the
-- outputs are thrown away).
function M.command(err, fn)
  local ok, res = pcall(common.guard, err, fn)
  if ok then return res end
  if not common.is_interrupt(res) then error(res, 0) end
  common.say(err, "")
  common.say(err, "interrupted: no output file was written")
  return 130
end

--- Runs a parsed `validate` command.
-- @return exit code: 0 all valid, 1 some invalid, 2 usage error, 130
--   interrupted
function M.run(args, out, err)
  return M.command(err, function()
    local validate = offline.validate
    local check = Check.new(args, out, err, out, {})
    local channel_problem = channels.checker(args)
    check:run(function(item)
      local ok, e = validate(item.payload)
      if ok then
        local cerr = channel_problem(item.rec.channel)
        if cerr then return nil, cerr end
      end
      if ok and args.verbose then common.say(out, common.where(item.rec), ": ok") end
      return ok, e
    end)
    return check:finish(("%d valid, %d invalid, %d skipped"):format(check.good, check.bad, check.skipped))
  end)
end

return M
