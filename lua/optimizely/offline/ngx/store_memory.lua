--- The nginx queue's memory store: the scheduler's own lists. A push adds
-- the job to the scheduler (refused with kind "full" at `max_queue`
-- pending orders, those in flight included); nothing outlives the worker:
-- at exit each order left is reported not delivered, or unknown when it
-- was in flight (optimizely.offline.ngx.report).
-- @module optimizely.offline.ngx.store_memory
local M = {}

local Store = {}
Store.__index = Store

--- The store of queue `q`.
-- @param q the queue
-- @return the store
function M.new(q)
  return setmetatable({ q = q, name = "memory" }, Store)
end

--- No hooks: the scheduler holds the jobs.
-- @return nil
function Store.hooks() return nil end

--- Orders pending (queued, retrying, in flight) against `max_queue`,
-- checked before a push is encoded.
-- @return count
function Store:pending()
  return self.q.s:pending()
end

--- Hands a pushed order to the scheduler.
-- @param job `{id, body, ref, channel, created}`
-- @return true | nil, "full"
function Store:put(job)
  if not self.q.s:add(job) then return nil, "full" end
  return true
end

--- Orders waiting (queued or retrying, not in flight).
-- @return depth
function Store:depth()
  return self.q.s:stats().queued
end

--- Orders not settled yet (for flush).
-- @return count
function Store:left()
  return self.q.s:pending()
end

--- Nothing to look at outside the scheduler.
-- @return false
function Store.has_due() return false end

--- The worker's last chance: every retry due now (and a 429 pause over),
-- so the final flush attempts everything once more.
function Store:final()
  self.q.s:hurry()
end

--- The grace ended: what is in flight is unknown, everything else is
-- reported not delivered.
-- @param flying the jobs in flight, by token
function Store:at_exit(flying)
  local attempted, unsent = self.q.s:drop()
  self.q.report:exit_memory(flying, attempted, unsent)
end

--- Pushes are refused once the worker exits: nothing would send them.
-- @return true
function Store.refuses_at_exit() return true end

--- For the startup line.
-- @return text
function Store.describe() return "in memory" end

M.Store = Store
return M
