--- How a command stops on SIGINT (Ctrl-C), SIGTERM and SIGHUP: all three
-- the same way, and with the exit code of the signal.
--
-- The command line asks the core to trap the three signals for the length
-- of a command (`core.trap_signals`; the library never installs a handler).
-- A signal then makes the running Lua code raise "interrupted!" at its next
-- instruction, as the interpreter does for Ctrl-C, so every command's
-- Ctrl-C path (`errors.is_interrupt`) handles SIGTERM and SIGHUP too. The
-- same signal a second time ends the process at once (the default action).
--
-- While `send` delivers, a signal is only recorded (`Grace:defer`): the run
-- starts no new request, waits up to `--grace` seconds for those in flight,
-- then raises the interrupt itself (`Grace:check`) and accounts for the
-- rest as after Ctrl-C.
--
-- Exit codes: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP (128 + the
-- signal's number, as a shell reports a process the signal ended).
-- @module optimizely.offline.cli.stop
local core = require("optimizely.offline.core")

local M = {}

--- The default `--grace`: seconds `send` waits for the requests in flight
-- after a signal.
M.GRACE = 5

--- Traps SIGINT, SIGTERM and SIGHUP for a command.
-- @param raise false: a signal is only recorded (see `raise`); else it
--   raises at once
function M.trap(raise) core.trap_signals(raise ~= false) end

--- From now on a signal raises at once; one recorded before raises now.
function M.raise()
  core.trap_signals(true)
  if core.signalled() then error("interrupted!", 0) end
end

--- Puts back the handlers that were there before `trap`.
function M.release() core.untrap_signals() end

--- The signal that stopped the command: its name ("SIGTERM") and number,
-- or nil.
function M.signal()
  local n, name = core.signalled()
  return name, n
end

--- How messages name what stopped the run: "Ctrl-C" (SIGINT, or an
-- interrupt raised without a signal), "SIGTERM" or "SIGHUP".
function M.what()
  local name = M.signal()
  if name == nil or name == "SIGINT" then return "Ctrl-C" end
  return name
end

--- The exit code of an interrupted command: 130 (what the commands return
-- after an interrupt) becomes 128 + the signal's number; any other code is
-- kept.
-- @param code the command's exit code
-- @return the code to exit with
function M.exit_code(code)
  local _, n = M.signal()
  if code == 130 and n then return 128 + n end
  return code
end

--- Adds the grace option (seconds to wait for the requests in flight) to a
-- command: `--grace SECONDS`.
-- @param cmd the argparse command
function M.grace_option(cmd)
  cmd:option("--grace", ("After Ctrl-C, SIGTERM or SIGHUP: seconds to wait for the requests in flight "
    .. "before stopping (default %d)."):format(M.GRACE)):argname("<seconds>")
end

local Grace = {}
Grace.__index = Grace
M.Grace = Grace

--- The grace period of a run that delivers.
-- @param seconds how long to wait for the requests in flight (>= 0)
-- @param clock monotonic seconds (default `core.now`)
function M.grace(seconds, clock)
  return setmetatable({ seconds = seconds or M.GRACE, clock = clock or core.now }, Grace)
end

--- From now on a signal is only recorded: the run polls `stopping` and
-- `check`.
function Grace:defer() core.trap_signals(false) end

--- Signals raise at once again (the caller accounts for one recorded
-- meanwhile: see `stopping`).
-- @return true when a signal came while deferred
function Grace:resume()
  core.trap_signals(true)
  return self:stopping()
end

--- Has a signal come? Then nothing new may start (the first call that
-- sees it starts the grace period).
function Grace:stopping()
  if self.at then return true end
  if core.signalled() then
    self.at = self.clock()
    return true
  end
  return false
end

--- After a signal, raises the interrupt once nothing is in flight or the
-- grace period is over; before one, does nothing.
-- @param in_flight requests in flight now
function Grace:check(in_flight)
  if self.raised or not self:stopping() then return end
  if (in_flight or 0) == 0 or self.clock() - self.at >= self.seconds then
    self.raised = true
    error("interrupted!", 0)
  end
end

return M
