--- Waiting inside nginx without blocking the worker: the one polling loop
-- both nginx queues' `flush` (and the thread engine's exit grace) use.
-- @module optimizely.offline.ngx.wait
local ngx = ngx

local M = {}

--- The phases where a Lua handler may yield (ngx.sleep, cosockets).
M.YIELDABLE = { rewrite = true, access = true, content = true, timer = true }

--- Raise unless the current phase may yield.
-- @param what the caller's name for the message
-- @param level as error's (from the caller of `check_phase`)
function M.check_phase(what, level)
  local phase = ngx.get_phase()
  if not M.YIELDABLE[phase] then
    error(what .. " cannot wait in the " .. tostring(phase)
      .. " phase (use it in a timer, rewrite, access or content handler)", (level or 1) + 1)
  end
end

--- Call `done()` until it returns a truthy value or `timeout` seconds pass,
-- sleeping (yielding) 5 ms, then twice as long each time up to `max_pause`.
-- `step()`, when given, runs before each sleep (e.g. to start work).
-- @return true, or false and done's last value on timeout
function M.until_done(done, timeout, step, max_pause)
  ngx.update_time()
  local deadline = ngx.now() + timeout
  local pause = 0.005
  while true do
    local v = done()
    if v then return true end
    ngx.update_time()
    if ngx.now() >= deadline then return false, v end
    if step then step() end
    ngx.sleep(math.min(pause, math.max(0.001, deadline - ngx.now())))
    pause = math.min(pause * 2, max_pause or 0.1)
  end
end

--- Where yielding is allowed, `q:flush(timeout)`; elsewhere (log phase,
-- init_worker) nothing to wait for: true.
-- @return true, or flush's nil, err
function M.flush_first(q, timeout)
  if not M.YIELDABLE[ngx.get_phase()] then return true end
  return q:flush(timeout)
end

return M
