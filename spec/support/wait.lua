--- Waiting on events in specs: poll a condition until it holds or a
-- deadline passes, instead of sleeping a fixed time and hoping. A fixed
-- sleep is too long on a quiet machine and too short on a loaded one (the
-- suite runs spec files in parallel lanes: scripts/test_lanes.lua).
--
--   local wait = require("support.wait")
--   assert.is_true(wait.poll(function() return sb.stats().accepted >= 20 end, 30))
--   local rows = wait.poll(function() return #rows() > 0 and rows() end, 10, 0.02)
--
-- Monotonic time and sleeps from the C core (core.now, core.sleep), so a
-- deadline is exact to the millisecond and a step forks nothing.
local core = require("optimizely.offline.core")

local M = {}

--- Sleep `s` seconds (blocks the process).
function M.sleep(s) core.sleep(s) end

--- Poll `cond` every `step` seconds (0.05) until it returns a truthy value
-- or `timeout` seconds (20) pass.
-- @return cond's value, or cond's value at the deadline (nil/false: timed out)
function M.poll(cond, timeout, step)
  local deadline = core.now() + (timeout or 20)
  step = step or 0.05
  repeat
    local v = cond()
    if v then return v end
    core.sleep(step)
  until core.now() > deadline
  return cond()
end

return M
