--- `optimizely-offline spool send --spool FILE`: delivers everything a
-- spool holds, now, and exits when it is empty or only dead letters are
-- left — how a retired till host's spool is drained from the command line.
--
-- Steps: the orders waiting for a retry are made due at once
-- (`spool:due_now`); then the library's queue, over that spool, delivers
-- (no second delivery loop: the queue's thread, engine, retries and
-- leases); the command waits for it (`queue:flush`) and ends with a
-- summary. Each order gets at most `--max-attempts` attempts in all
-- (counting the earlier ones: an order that already had them gets one
-- more), then it becomes a dead letter, there to see (`spool list --dead`),
-- export or retry. The queue's age limit is lifted: an old order is sent,
-- not expired.
--
-- Refused credentials stop the run (the queue pauses; nothing more is
-- sent): exit 1, every order stays in the spool. SIGTERM, SIGHUP and
-- Ctrl-C stop it too: the queue gets `--grace` seconds to finish (it may
-- start more orders meanwhile: it has no call to stop claiming), then
-- what is still in flight goes back to the spool, to be sent again next
-- time.
-- @module optimizely.offline.cli.drain
local common = require("optimizely.offline.cli.common")
local stop = require("optimizely.offline.cli.stop")
local sched = require("optimizely.offline.sched")
local spool = require("optimizely.offline.spool")
local core = require("optimizely.offline.core")
local config = require("optimizely.offline.cli.config")
local report = require("optimizely.offline.cli.report")

local M = {}

--- Attempts per order unless `--max-attempts` says otherwise.
M.MAX_ATTEMPTS = 4

-- The queue's age limit for a drain: as long as the queue allows (10
-- years), so nothing expires to the dead letters on the way.
local NO_AGE_LIMIT = 86400 * 3650

--- Adds the options of `spool send` to its argparse command.
function M.options(cmd)
  common.credential_options(cmd)
  cmd:option("--concurrency", "Requests in flight at once (1..1024).", "8"):argname("<n>")
  cmd:option("--max-attempts", ("Attempts per order in all, earlier ones included (default %d); then it is a "
    .. "dead letter."):format(M.MAX_ATTEMPTS)):argname("<n>")
  stop.grace_option(cmd)
  common.output_options(cmd)
end

local Drain = {}
Drain.__index = Drain

local function stats_of(path)
  local sp, err = spool.open(path)
  if not sp then return nil, err end
  local s, serr = sp:stats()
  sp:close()
  return s, serr
end

--- A drain of the spool named by `args.spool` (nothing happens until
-- `run`); a bad option is a usage error here, before anything is done.
function M.new(args, out, err)
  return setmetatable({
    args = args, out = out, err = err, path = args.spool,
    concurrency = common.int_option(args.concurrency, "concurrency", 1, sched.MAX_CONCURRENCY),
    max_attempts = common.int_option(args.max_attempts, "max-attempts", 1, 100) or M.MAX_ATTEMPTS,
    grace = stop.grace(common.seconds_option(args.grace, "grace")),
    sent = 0, dead = 0, clock = core.now,
  }, Drain)
end

--- The orders waiting for a retry, due now.
-- @local
function Drain:make_due()
  local sp, e = spool.open(self.path)
  if not sp then common.config_error(tostring(e)) end
  local moved, left = sp:due_now()
  sp:close()
  if not moved then error(tostring(left), 0) end
  self.moved, self.left_waiting = moved, left
end

--- The library's queue over the spool, counting what it settles.
-- @local
function Drain:queue(client)
  local q, e = client:queue({
    spool = self.path, concurrency = self.concurrency, max_attempts = self.max_attempts,
    max_age = NO_AGE_LIMIT, logger = false,
    on_success = function(ref)
      self.sent = self.sent + 1
      if self.args.verbose then common.say(self.out, common.label(ref or "?"), ": sent") end
    end,
    on_failure = function(ref, ferr)
      self.dead = self.dead + 1
      if not self.args.quiet or self.args.verbose then
        common.say(self.err, common.label(ref or "?"), ": dead letter: ", tostring(ferr))
      end
    end,
    on_event = function(ev)
      if ev.type == "paused" and ev.reason == "credentials" then self.refused = ev.error or true end
    end,
  })
  if not q then common.config_error(tostring(e)) end
  return q
end

--- Waits for the queue until the spool holds nothing to send, the
-- credentials are refused or a signal comes.
-- @local
function Drain:wait(q)
  while true do
    if q:flush(0.25) then return "done" end
    if self.refused then return "refused" end
    if self.grace:stopping() then return "signal" end
  end
end

--- The whole drain.
-- @return exit code
-- @local
function Drain:drain()
  local client = config.client(self.args, nil, self.err)
  self.before = assert(stats_of(self.path))
  self.t0 = self.clock()
  self:make_due()
  local q = self:queue(client)
  self.how = self:wait(q)
  -- after a signal, the grace; else the queue is idle (or paused) already
  q:close(self.how == "signal" and self.grace.seconds or 0)
  client:close()
  self.after = stats_of(self.path)
  return self:summary()
end

--- The end of the run on stderr: what was delivered, what died, what is left.
-- @return exit code
-- @local
function Drain:summary()
  local a, plural = self.after or {}, report.plural
  local queued, dead = a.queued or 0, a.dead or 0
  if self.refused then
    common.say(self.err, "error: the credentials were refused (", tostring(self.refused),
      "): nothing more was sent; the orders stay in the spool")
  end
  if self.how == "signal" then
    common.say(self.err, "interrupted (", stop.what(), "): what was in flight goes back to the spool")
  end
  if not self.args.quiet or self.how ~= "done" then
    common.say(self.err, ("sent %d of %s from %s in %.1f s, %d now dead letters; the spool holds %d queued and %s")
      :format(self.sent, plural(self.before.queued, "queued order"), common.label(self.path), self.clock() - self.t0,
        self.dead, queued, plural(dead, "dead letter")))
    if dead > 0 then
      common.say(self.err, "dead letters: optimizely-offline spool list --dead --spool ", common.label(self.path),
        " (spool retry puts them back, spool export writes them out)")
    end
  end
  if self.how == "signal" then return stop.exit_code(130) end
  return (queued > 0 or self.dead > 0 or self.refused) and 1 or 0
end

--- Runs `spool send`: signals are only recorded while it delivers (the
-- run checks them between waits), so the queue is never left half-way.
-- @return exit code: 0 all sent, 1 some orders dead or left, 2 usage or
--   configuration error, 130/143/129 interrupted
function M.run(args, out, err)
  local self = M.new(args, out, err)
  self.grace:defer()
  local ok, code = pcall(self.drain, self)
  self.grace:resume()
  if not ok then error(code, 0) end
  return code
end

return M
