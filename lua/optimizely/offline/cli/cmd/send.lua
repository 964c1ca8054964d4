--- `optimizely-offline send FILE…`: stream, validate and send orders.
--
-- Records are read one at a time and fed to `client:send_batch` through an
-- iterator, so memory stays flat: the only per-order state is a small table
-- from batch index to record for the orders in flight, emptied as results
-- arrive. Every order ends up counted exactly once as sent, rejected
-- (input, transform, validation or send error: written to the rejects
-- file), not sent (never tried: after a stop or refused credentials;
-- stage "not_sent" in the rejects file) or unknown (in flight when the
-- run stopped: stage "interrupted"); a record the transform returned nil
-- for is no order (`filtered`). optimizely.offline.cli.report sums them up.
--
-- A run is a `Send` object going through named steps: `setup` (options,
-- files, client), `check` (with --check-first: the whole input read and
-- validated once; any failure and nothing is sent), `deliver` (the batch,
-- or the dry run), `settle` (what was not confirmed sent goes to the
-- rejects file), then `report` and `summary`.
--
-- Ctrl-C, SIGTERM, SIGHUP (optimizely.offline.cli.stop): while the batch
-- runs a signal is only recorded. The source then ends (nothing new
-- starts), the requests in flight have `--grace` seconds, then the
-- interrupt is raised in a callback; `send_batch` stops and returns what
-- it knows: the orders whose outcome is unknown and those never started.
-- An interrupt raised elsewhere (outside the batch, or by a script) lands
-- at the next Lua instruction, with no grace. Then the rest of the input
-- is read again from the last record accounted for, so nothing is left
-- unaccounted.
-- @module optimizely.offline.cli.cmd.send
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")
local common = require("optimizely.offline.cli.common")
local config = require("optimizely.offline.cli.config")
local records = require("optimizely.offline.cli.records")
local channels = require("optimizely.offline.cli.channels")
local problems = require("optimizely.offline.cli.problems")
local rejects = require("optimizely.offline.cli.rejects")
local progress = require("optimizely.offline.cli.progress")
local report = require("optimizely.offline.cli.report")
local stop = require("optimizely.offline.cli.stop")
local send_ledger = require("optimizely.offline.cli.send_ledger")
local batch = require("optimizely.offline.batch")
local sched = require("optimizely.offline.sched")

local M = {}

--- `send` accounts for a signal during its setup itself (cli.lua keeps it
-- only recorded until `Send:main` has set up): the run then stops before
-- reading, and its report and rejects say so.
M.RECORDS_SETUP = true

--- How many failure lines are printed before the rest go only to the
-- rejects file and the summary (--verbose prints them all).
M.MAX_PRINTED = 50

--- Adds the `send` command and its options to the argparse parser.
function M.register(parser)
  local cmd = records.order_command(parser, "send", "Validate and send orders (streamed, concurrent, with retries).",
    true)
  cmd:option("--concurrency", "Requests in flight at once (1..1024).", "8"):argname("<n>")
  cmd:option("--rate", "Send at most this many orders per second."):argname("<orders/s>")
  cmd:option("--max-attempts", "Attempts per order, first one included (default 4)."):argname("<n>")
  cmd:flag("-n --dry-run", "Read, transform, validate and encode; send nothing (no credentials needed).")
  cmd:flag("--check-first", "Read and validate the whole input before sending anything: if any "
    .. "record fails (or an order's CSV rows are apart), send nothing and exit 1.")
  cmd:option("--rejects", "Write orders not sent (with their error) to this NDJSON file; "
    .. "it can be sent again as it is."):argname("<file>")
  cmd:option("--report", "Write a JSON summary (where the orders went, counts, rate, error codes, latency "
    .. "percentiles) to this file."):argname("<file>")
  cmd:option("--metrics", "Write the run's metrics in the Prometheus text format to this file (for "
    .. "node-exporter's textfile collector; 0600, replaced when complete)."):argname("<file>")
  cmd:option("--metrics-mode", "Permission bits of the --metrics file, e.g. 0644 (world-readable: it holds "
    .. "counts only) or 0640 (default 0600)."):argname("<mode>")
  stop.grace_option(cmd)
  send_ledger.options(cmd)
end

-- The key an error is counted under in the report: the API's code, else
-- the HTTP status, else the kind.
local function error_key(e, stage)
  if type(e) == "table" then
    if e.code then return tostring(e.code) end
    if e.status then return "HTTP " .. tostring(e.status) end
    return tostring(e.kind or stage)
  end
  return stage
end

local plural = report.plural

local Send = {}
Send.__index = Send
M.Send = Send

--- A run of the command (nothing happens until `main`).
function Send.new(args, out, err)
  return setmetatable({
    args = args, out = out, err = err, clock = core.now or os.clock,
    quiet = args.quiet, verbose = args.verbose, dry = args.dry_run, phase = "setup",
    st = { read = 0, sent = 0, valid = 0, skipped = 0, changed = 0, rejected = 0, not_sent = 0, unknown = 0,
           filtered = 0, retried = 0, warnings = 0, printed = 0, by_stage = {}, not_sent_by = {}, errors = {},
           skipped_by = {} },
    failures = problems.new(), warned = problems.new(),
    inflight = {},          -- batch index -> item, only until its result arrives
    nbatch = 0,
    pos = { fi = 1, after = 0 }, -- the last record accounted for
  }, Send)
end

--- Runs a parsed `send` command.
-- @return exit code: 0 all sent, 1 some not sent, 2 usage or
--   configuration error, 130 interrupted (the caller makes it 143 or 129
--   after SIGTERM or SIGHUP: optimizely.offline.cli.stop)
function M.run(args, out, err)
  local self = Send.new(args, out, err)
  local ok, res = pcall(common.guard, err, function() return self:main() end)
  if ok then
    -- a usage error during setup (or a ledger refused before anything was
    -- sent): no rejects file is left, the input holds every order
    if (self.phase == "setup" or self.phase == "refused") and self.rejects then self.rejects:abort() end
    return res
  end
  if not common.is_interrupt(res) then error(res, 0) end
  return self:interrupted_outside()
end

--- Runs the command: the steps of a run.
-- @return exit code (as `run`)
function Send:main()
  self:setup()
  -- a signal during setup (only recorded until now: cli.RECORDS_SETUP) stops
  -- the run before anything is read; the report still accounts for it all
  local early = self.grace:resume()
  if self.args.check_first and not early and not self:check() then return self:refuse() end
  self.phase = "send"
  self:deliver()
  self:settle()
  local code = self:write_outputs()
  if self.client then self.client:close() end
  self.led:close()
  return code
end

--- Every record is accounted for: the rejects file, the report, the
-- metrics and the summary are written with signals only recorded (as from
-- the end of the batch on), so a signal now cannot cut them short; the run
-- ends as they say.
-- @return the exit code
-- @local
function Send:write_outputs()
  self.grace:defer() -- still, after a batch (run_batch); at once, after a dry run or a refusal
  self:close_rejects()
  local code = report.write(self, self:exit_code())
  code = report.write_metrics(self, code)
  report.summary(self)
  if self.grace:resume() and not self.interrupted then
    self:note(stop.what(), " came once every order was accounted for: the run had finished, and ends as reported")
  end
  return code
end

--- Ctrl-C outside the phases that account for it: before anything was
-- sent, or while the summary was written.
-- @local
function Send:interrupted_outside()
  if self.phase == "setup" or self.phase == "check" then
    if self.rejects then self.rejects:abort() end
    common.say(self.err, "")
    common.say(self.err, "interrupted: nothing was sent (", stop.what(), ")")
  else
    if self.rejects then pcall(self.rejects.close, self.rejects) end
    common.say(self.err, "")
    common.say(self.err, "interrupted while writing the summary: the rejects file and report may be incomplete")
  end
  return 130
end

-- ------------------------------------------------------------------ setup

--- Options, output files, transform, client, progress and the records
-- iterator: every usage error surfaces here, before anything is read.
-- @local
function Send:setup()
  local args = self.args
  self.concurrency = common.int_option(args.concurrency, "concurrency", 1, sched.MAX_CONCURRENCY)
  self.rate = common.number_option(args.rate, "rate")
  self.grace = stop.grace(common.seconds_option(args.grace, "grace"), self.clock)
  common.int_option(args.max_attempts, "max-attempts", 1, 100)
  for _, f in ipairs(args.files) do
    if args.check_first and f == "-" then
      common.config_error("--check-first reads the input twice: give files, not standard input")
    end
  end
  common.refuse_overwrite(config.inputs_of(args), { { "--rejects", args.rejects }, { "--report", args.report },
    { "--metrics", args.metrics } })
  self.transform = common.load_transform(args.transform)
  self.client = not self.dry and config.client(args, nil, self.err) or nil
  self.endpoint = report.endpoint(args, self.client)
  -- a ledger that cannot be used stops the run here: nothing is sent
  self.led = send_ledger.new(self)
  self.rejects = rejects.new(args.rejects, { keep = true })
  -- opened now: a typo in its path fails before anything is sent
  self.report_sink = args.report and common.open_output(args.report, "the report")
  self.metrics_sink = args.metrics and common.open_output(args.metrics, "the metrics file", nil,
    common.file_mode(args.metrics_mode, "metrics-mode"))
  self.progress = progress.new(self.err, self.quiet, self.clock, args.files)
  self.records = records.iter(args, self.transform, self.progress)
  self.started_at, self.t0 = os.time(), self.clock()
end

-- ------------------------------------------------------------- messages

--- A message line on stderr that does not collide with the progress bar.
-- @local
function Send:note(...)
  if self.progress then self.progress:clear() end
  common.say(self.err, ...)
end

--- Prints why an item failed (the first MAX_PRINTED, all with -v; -q too:
-- these are the errors it prints).
-- @local
function Send:print_failure(item, e)
  local st = self.st
  st.printed = st.printed + 1
  if st.printed > M.MAX_PRINTED and not self.verbose then
    if st.printed == M.MAX_PRINTED + 1 then
      self:failure_line("(more failures: see the summary and the rejects file; --verbose prints them all)")
    end
    return
  end
  for _, line in ipairs(common.failure_lines(item, e)) do self:failure_line(line) end
end

--- One line about a failed record: on standard output in a dry run, as
-- `validate` prints them (a check's findings are its output), else on
-- standard error with the other messages of a run that sends.
-- @local
function Send:failure_line(line)
  if not self.dry then return self:note(line) end
  if self.progress then self.progress:clear() end
  common.say(self.out, line)
end

--- Counts warnings of an item; with -v prints them under its line.
-- @local
function Send:warn(item, list, print_them)
  if not list or #list == 0 then return end
  self.st.warnings = self.st.warnings + #list
  self.warned:warnings(item, list)
  if print_them and self.verbose then
    for _, w in ipairs(list) do common.say(self.out, "    warning: ", common.warning_text(w)) end
  end
end

-- ------------------------------------------------------------ accounting

--- The rejects writer: the one asked for, else the default unsent file,
-- made when the first order is not sent (none in a dry run).
-- @local
function Send:reject_writer()
  if not self.rejects and not self.dry then
    self.rejects = rejects.new(nil, { default = true, keep = true })
  end
  return self.rejects
end

--- Counts and records one order that was not sent. Stage "not_sent"
-- (never tried) is counted by `reason` ("interrupted", "credentials",
-- "error").
-- @local
function Send:reject(item, stage, e, quietly, reason)
  local st = self.st
  item.stage = stage
  local w = self:reject_writer()
  if w then w:add(item, e or item.message) end
  st.by_stage[stage] = (st.by_stage[stage] or 0) + 1
  if stage == "interrupted" or stage == "unknown" then
    st.unknown = st.unknown + 1
  elseif stage == "changed" then
    st.changed = st.changed + 1
  elseif stage == "not_sent" then
    st.not_sent = st.not_sent + 1
    reason = reason or "interrupted"
    st.not_sent_by[reason] = (st.not_sent_by[reason] or 0) + 1
  else
    st.rejected = st.rejected + 1
    local k = error_key(e, stage)
    st.errors[k] = (st.errors[k] or 0) + 1
    self.failures:failure(item, e)
  end
  if not quietly then self:print_failure(item, e) end
end

--- Records that are not sendable: rejected at once, or skipped.
-- @local
function Send:other(item)
  if item.skipped then
    self.st.filtered = self.st.filtered + 1
    if self.verbose then self:note(common.where(item.rec), ": skipped by the transform") end
  else
    self:reject(item, item.stage, item.error or item.message)
  end
end

--- Moves the resume point past `item` (the place to read on from after
-- an interruption).
-- @local
function Send:account(item)
  local pos = self.pos
  if item.rec and item.rec.line == 0 and (item.rec.index or 0) == 0 and item.stage == "input" then
    pos.fi, pos.after = item.fi + 1, 0 -- the file could not be opened: it is done
  else
    pos.fi, pos.after = item.fi, item.rec.index or 0
  end
end

--- Orders with an outcome so far (for the progress bar).
-- @local
function Send:done() return self.st.sent + self.st.valid + self.st.rejected end

-- ----------------------------------------------------------------- check

--- --check-first: reads and validates the whole input once. Failures are
-- printed and grouped; nothing is written to the rejects file.
-- @return true when every record passed
-- @local
function Send:check()
  self.phase = "check"
  local validate = offline.validate
  local bar = progress.new(self.err, self.quiet, self.clock, self.args.files)
  local saved = self.progress
  self.progress = bar
  local checked = { read = 0, failed = 0, split = 0, filtered = 0 }
  for item in records.iter(self.args, self.transform, bar) do
    checked.read = checked.read + 1
    if item.skipped then checked.filtered = checked.filtered + 1 end
    local e
    if item.stage then
      e = item.error or item.message
    elseif item.payload then
      local ok, verr = validate(item.payload)
      if not ok then e, item.stage = verr, "validation" end
      if ok then e = self:channel_problem(item) or self:ledger_problem(item) end
    end
    if e then
      checked.failed = checked.failed + 1
      if item.code == "split_order" then checked.split = checked.split + 1 end
      self.failures:failure(item, e)
      self:print_failure(item, e)
    end
    if checked.read % 256 == 0 then bar:update(checked.read, checked.failed) end
  end
  bar:finish()
  self.progress, self.checked = saved, checked
  return checked.failed == 0
end

--- Why a record could not be sent on its channel (no token for it, or
-- none named and no default), asked before sending (`--check-first`, the
-- dry run); nil when it can.
-- @local
function Send:channel_problem(item)
  self.channel_check = self.channel_check or channels.checker(self.args, self.client)
  local e = self.channel_check(item.rec and item.rec.channel)
  if e then item.stage = "validation" end
  return e
end

--- A record the ledger has with other content (the run would refuse it:
-- without --force or --amend), asked before sending (`--check-first`);
-- nil when it would be sent or skipped.
-- @local
function Send:ledger_problem(item)
  if not self.led.L then return nil end
  local body = offline.encode(item.payload)
  local known, e = self.led:lookup(item, body)
  if known ~= "changed" then return nil end
  item.stage = "changed"
  return e
end

--- After a failed check: nothing sent, the grouped failures, exit 1.
-- @local
function Send:refuse()
  local c = self.checked
  if self.rejects then self.rejects:abort() end -- nothing was sent: the input holds every order
  -- the orders that passed were not sent either: the check failed
  local st = self.st
  st.read, st.rejected, st.filtered = c.read - c.filtered, c.failed, c.filtered
  st.not_sent = st.read - c.failed
  st.not_sent_by.check_failed = st.not_sent > 0 and st.not_sent or nil
  local code = report.write_metrics(self, report.write(self, 1))
  if not self.quiet then
    for _, l in ipairs(self.failures:lines("failed records by problem:")) do self:note(l) end
  end
  if c.split > 0 then
    self:note(("%s of orders whose rows are apart in the file: --group-orders gathers them")
      :format(plural(c.split, "later fragment")))
  end
  self:note(("nothing was sent (--check-first): %d of %s failed the check; fix them and run again")
    :format(c.failed, plural(c.read, "record")))
  if self.client then self.client:close() end
  self.led:close()
  return code
end

-- --------------------------------------------------------------- deliver

--- The batch's source: a function giving the next sendable payload and
-- its channel (the others are accounted for on the way). Called once per
-- record: what it needs is at hand (a run again on a file sent in full is
-- this, the reader and the ledger's answer).
-- @local
function Send:source()
  local st, grace, inflight, next_record, pos = self.st, self.grace, self.inflight, self.records, self.pos
  return function()
    while true do
      -- after a signal nothing new starts (the rest is accounted for by settle)
      if grace:stopping() then return nil end
      local item = next_record()
      if item == nil then
        self.progress.total = st.read
        return nil
      end
      if not item.skipped then st.read = st.read + 1 end
      if item.payload and not item.stage then
        if item.warnings then self:warn(item, item.warnings) end
        local n = self.nbatch + 1
        self.nbatch = n
        inflight[n] = item
        local rec = item.rec
        pos.fi, pos.after = item.fi, rec.index or 0 -- Send:account's, for an order read
        return item.payload, rec.channel
      end
      self:other(item)
      self:account(item)
    end
  end
end

--- One order's result from the batch.
-- @local
function Send:on_result(i, res, e)
  local item = self.inflight[i]
  if not item then return end
  self.inflight[i] = nil
  if res and res.skipped then return self.led:skipped(item, res.reason, res.at) end
  if send_ledger.is_changed(e) then return self:reject(item, "changed", send_ledger.changed_error(e)) end
  if not res then
    -- never tried: refused credentials stopped the batch before this one
    if batch.not_sent(e) then return self:reject(item, "not_sent", e, true, "credentials") end
    local stage = (type(e) == "table" and e.kind == "validation" and (e.attempts or 0) == 0)
      and "validation" or "send"
    return self:reject(item, stage, e)
  end
  self.st.sent = self.st.sent + 1
  if self.verbose then
    common.say(self.out, common.head(item), "sent (HTTP ", tostring(res.status), ", ", tostring(res.attempts),
      res.attempts == 1 and " attempt" or " attempts", ")")
    for _, w in ipairs(item.warnings or {}) do common.say(self.out, "    warning: ", common.warning_text(w)) end
  end
  self:warn(item, res.warnings, true)
end

--- The batch's progress callback: retries and the bar; after a signal,
-- the end of the grace period (the interrupt is raised here).
-- @local
function Send:on_progress(s)
  -- halted with nothing in flight: the batch ends by itself, accounting for
  -- what it did not start; else the grace period may end it
  if not (s.halted and s.in_flight == 0) then self.grace:check(s.in_flight) end
  self.st.retried = s.retried or self.st.retried
  self.progress:update(self:done(), self.st.rejected, false)
end

--- The real run. Signals are only recorded meanwhile (the grace period:
-- the source, `on_progress`); an interrupt anywhere in it (our
-- callbacks included: the batch raises it again) ends the batch, which
-- returns what it knows.
-- @return true when it stopped before the end of the input
-- @local
function Send:run_batch()
  self.grace:defer()
  local o = self.led:batch_options()
  o.concurrency, o.rate, o.on_interrupt = self.concurrency, self.rate, "return"
  o.on_result = function(i, res, e) self:on_result(i, res, e) end
  o.on_skipped = self.led:on_skipped(self.inflight) -- already sent, or in flight elsewhere: counted
  o.progress = function(s) self:on_progress(s) end
  -- after a signal nothing new starts; those in flight get --grace
  o.halt = function() return self.grace:stopping() end
  local ok, summary, lerr = pcall(self.client.send_batch, self.client, self:source(), o)
  -- signals stay only recorded until the outputs are written (write_outputs):
  -- one that comes now, once the batch is over, must not cut the accounting short
  local signalled = self.grace:stopping()
  if not ok then error(summary, 0) end
  if summary == nil then self.led:unusable(lerr) end -- before anything was sent: exit 2
  self.batch = summary
  -- the ledger failed during the run: what it could not look up or record
  -- failed with it (the report says so), and the run exits 2
  self.ledger_error = summary.ledger_error
  self.refused = summary.stopped
  self.st.retried = summary.retried or self.st.retried
  -- the batch stopped early on an error (not Ctrl-C): account for the rest
  if summary.error and not common.is_interrupt(summary.error) then self.failure = summary.error end
  for _, c in ipairs(summary.callback_errors or {}) do
    if not self.failure then self.failure = "internal error while recording a result: " .. c.message end
  end
  return summary.interrupted or signalled or self.failure ~= nil
end

--- The dry run: every record read, transformed, validated and encoded.
-- @local
function Send:run_dry()
  local encode = offline.encode
  local st = self.st
  for item in self.records do
    if not item.skipped then st.read = st.read + 1 end
    if item.payload and not item.stage then
      local json, e = encode(item.payload)
      local cerr = json and self:channel_problem(item)
      if cerr then json, e = nil, cerr end
      local known, detail = nil, nil
      if json then known, detail = self.led:lookup(item, json) end
      if known == "skipped" then
        self.led:skipped(item, "already_sent", detail)
      elseif known == "changed" then
        self:reject(item, "changed", detail)
      elseif json then
        st.valid = st.valid + 1
        if self.verbose then common.say(self.out, common.head(item), "valid (", tostring(#json), " bytes)") end
        self:warn(item, item.warnings, true)
        self:warn(item, e, true)
      else
        self:reject(item, "validation", e)
      end
    else
      self:other(item)
    end
    self:account(item)
    if st.read % 256 == 0 then self.progress:update(self:done(), st.rejected, false) end
  end
  return false
end

--- Sends (or dry-runs) the input; notes whether and why it stopped early.
-- @local
function Send:deliver()
  local step = self.dry and self.run_dry or self.run_batch
  if self.dry and self.grace:stopping() then step = function() error("interrupted!", 0) end end
  local ok, res = pcall(step, self)
  self.stopped = false -- the run ended before the end of the input
  if not ok then
    if not common.is_interrupt(res) then
      if getmetatable(res) == common.ConfigError then error(res, 0) end
      self.failure = tostring(res)
    end
    self.stopped = true
  else
    self.stopped = res and true or false
  end
  self.interrupted = self.stopped and not self.failure
  if not self.stopped then self.progress.total = self.st.read end
  self.progress.done, self.progress.failed = self:done(), self.st.rejected
  self.progress:finish()
end

-- ---------------------------------------------------------------- settle

--- Everything not confirmed sent goes to the rejects file: what was in
-- flight, then the rest of the input (read again from the last record
-- accounted for). A failure on the way is noted, with where the input
-- stops being accounted for.
-- @local
function Send:settle()
  if self.dry then
    if self.stopped then self:note("interrupted: nothing was sent (dry run); the input was not read to the end") end
    return
  end
  if not self.stopped and next(self.inflight) == nil then return end
  local ok, e = pcall(self.settle_all, self)
  if ok then return end
  if common.is_interrupt(e) then error(e, 0) end
  local pos = self.pos
  self.lost = ("record %d of %s"):format(pos.after + 1, common.label(self.args.files[pos.fi] or "the input"))
  e = tostring(e)
  if not (self.failure and self.failure:find(e, 1, true)) then
    self.failure = (self.failure and (self.failure .. "; ") or "") .. e
  end
end

--- The orders in flight, then (when the run stopped early) the rest of the input.
-- @local
function Send:settle_all()
  if self.stopped then
    local what = stop.what()
    self:note(self.interrupted and "interrupted" or "stopped by an error",
      ": accounting for the orders not sent (", self.interrupted and (what .. "; ") or "", what, " again aborts)")
  end
  self:settle_inflight()
  if self.stopped then self:settle_rest() end
end

--- The orders in flight: their outcome is not known.
-- @local
function Send:settle_inflight()
  local unknown, unsent, idx, pos = {}, {}, {}, self.pos
  for _, i in ipairs(self.batch and self.batch.unknown or {}) do unknown[i] = true end
  for _, i in ipairs(self.batch and self.batch.unsent or {}) do unsent[i] = true end
  for i, item in pairs(self.inflight) do
    idx[#idx + 1] = i
    if item.fi > pos.fi or (item.fi == pos.fi and (item.rec.index or 0) > pos.after) then
      pos.fi, pos.after = item.fi, item.rec.index or 0
    end
  end
  table.sort(idx)
  for _, i in ipairs(idx) do
    local stage, msg = "interrupted", unknown[i]
      and "interrupted in flight or awaiting a retry: the endpoint may or may not have it"
      or "interrupted before its result was known"
    if unsent[i] then stage, msg = "not_sent", "not sent: the run was interrupted before it started" end
    if not self.stopped then stage, msg = "unknown", "no result was recorded for this order" end
    self:reject(self.inflight[i], stage, { kind = stage, message = msg }, true)
    self.inflight[i] = nil
  end
end

--- The input not read yet: not sent.
-- @local
function Send:settle_rest()
  local why = self.interrupted and ("not sent: the run was interrupted (" .. stop.what() .. ")")
    or "not sent: the run stopped on an error"
  local reason = self.interrupted and "interrupted" or "error"
  local rest = self.records
  if self.args.files[self.pos.fi] ~= "-" then
    rest = records.iter(self.args, self.transform, nil, self.pos)
  end
  for item in rest do
    if not item.skipped then self.st.read = self.st.read + 1 end
    if item.payload and not item.stage then
      self:reject(item, "not_sent", { kind = "not_sent", message = why }, true, reason)
    else
      self:other(item)
    end
  end
end

--- Puts the rejects file in place; a failure is the run's failure.
-- @local
function Send:close_rejects()
  if not self.rejects then return end
  local ok, e = pcall(self.rejects.close, self.rejects)
  if not ok then self.failure = (self.failure and (self.failure .. "; ") or "") .. tostring(e) end
end

-- ---------------------------------------------------------------- report

--- 130 interrupted (143 SIGTERM, 129 SIGHUP), 1 something not sent (or
-- a failure), else 0.
-- @local
function Send:exit_code()
  local st = self.st
  if self.interrupted then return stop.exit_code(130) end
  if self.ledger_error then return 2 end
  if st.rejected + st.changed + st.not_sent + st.unknown > 0 or self.failure then return 1 end
  return 0
end

return M
