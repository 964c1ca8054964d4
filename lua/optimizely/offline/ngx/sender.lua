--- The nginx driver of the scheduler: light threads that take the next
-- job from the scheduler, run it over the cosocket transport and hand the
-- answer back (`s:done`) to be classified and settled. A sender knows no
-- HTTP status, no Retry-After, no backoff, pause or limit: the scheduler
-- (csrc/delivery/sched.c) decides all of that, and says when to look again.
--
-- A sender takes up to `pipeline` jobs at a time and, when the transport
-- can (`transport:pipeline`), writes them on one connection at once and
-- reads their answers in order; the connection rule of the transport
-- holds (after an answer it did not fully understand it closes, and the
-- jobs not answered yet fail as `network`, retried by the policy).
--
-- While jobs are in flight the sender keeps them in `q.flying` by token,
-- so that the worker's exit can tell which orders are in flight when the
-- grace ends; a job whose token was voided then is not settled when its
-- answer comes — the answer is only logged (optimizely.offline.ngx.report).
-- @module optimizely.offline.ngx.sender
local ngx = ngx

local log, ERR, sleep = require("optimizely.offline.errors").logger(ngx.log), ngx.ERR, ngx.sleep
local pcall, tostring = pcall, tostring

local M = {}

--- Hands one answer back to the scheduler, unless the job's token was
-- voided at exit (then the answer is only logged).
-- @param q the queue
-- @param job the job
-- @param status what the transport returned: the status (nil: a failure)
-- @param body the body, or the failure's kind
-- @param info the transfer info, or the failure's message
-- @param code the failure's own error number, or nil
function M.settle(q, job, status, body, info, code)
  local token = job.token
  q.flying[token] = nil
  if q.void[token] then
    q.void[token] = nil
    return q.report:late(job, status, body, info, code)
  end
  local ok, err = pcall(q.s.settle, q.s, token, status, body, info, code)
  if not ok then log(ERR, "optimizely.offline queue: settling an answer raised: ", tostring(err)) end
end

-- The pipeline's `on_reply` (no closure per round: a trace-breaker).
local function settle_reply(jobs, i, status, body, info, code)
  return M.settle(jobs.q, jobs[i], status, body, info, code)
end

-- A transport that raised: a bug, not the network. Every job not settled
-- yet is kept (a retryable failure) and the raise logged.
local function raised(q, jobs, n, err)
  local why = "the transport raised: " .. tostring(err)
  log(ERR, "optimizely.offline queue: ", why)
  for i = 1, n do
    if q.flying[jobs[i].token] then M.settle(q, jobs[i], nil, "network", why) end
  end
end

-- Sends `jobs` and settles each as its answer comes: pipelined when the
-- transport can and there are several, else one request at a time.
local function exchange(q, jobs, n)
  local transport = q.st.transport
  if n > 1 and transport.pipeline then
    jobs.q = q
    local ok, err = pcall(transport.pipeline, transport, jobs, n, settle_reply)
    if not ok then raised(q, jobs, n, err) end
    return
  end
  for i = 1, n do
    local job = jobs[i]
    local ok, status, body, info, code = pcall(transport.request, transport, job.method, job.url, job.headers,
      job.body)
    if ok then M.settle(q, job, status, body, info, code) else raised(q, jobs, i, status) end
  end
end

--- Takes up to `max` jobs that may start now, into the sender's own job
-- tables (`jobs[i]`, filled again by `s:next` each round: a sender settles
-- every job of a round before its next round, so no table per order).
-- @param q the queue
-- @param max how many at most
-- @param jobs the sender's job tables (grown as needed)
-- @return jobs, n, wait (seconds until a job may be due, when none was)
function M.take(q, max, jobs)
  local s, flying = q.s, q.flying
  jobs = jobs or {}
  local n = 0
  while n < max do
    local t = jobs[n + 1] or {}
    local job, wait = s:next(t)
    if not job then return jobs, n, wait end
    n = n + 1
    jobs[n] = job
    flying[job.token] = job
  end
  return jobs, n, 0
end

--- One round: take jobs, send them, settle their answers, report (only
-- when the scheduler has results: a plain delivery leaves none).
-- @param q the queue
-- @param jobs the sender's job tables, or nil
-- @return jobs sent, and the scheduler's wait when none could start
function M.round(q, jobs)
  local n, wait
  jobs, n, wait = M.take(q, q.o.pipeline, jobs)
  if n == 0 then return 0, wait end
  exchange(q, jobs, n)
  if q.s:has_results() then q.report:drain() end
  if q.after_round then q:after_round() end
  return n, 0
end

--- A sender's life: rounds until nothing may start, then a wait on the
-- flusher's semaphore (a push posts it) for the scheduler's wait, at most
-- `linger` seconds; idle that long, or stopped, it ends. After a round
-- that could not fill a pipeline it waits `send_delay` seconds, so that
-- the orders pushed meanwhile go out together (at exit it does not wait).
-- @param q the queue
-- @param flusher the flusher (`sema`, `linger`, `stopping()`)
function M.run(q, flusher)
  local depth, delay = q.o.pipeline, q.o.send_delay
  local jobs = {}
  while true do
    if flusher:stopping() then return end
    local ok, n, wait = pcall(M.round, q, jobs)
    if not ok then
      log(ERR, "optimizely.offline queue: sender round failed: ", tostring(n))
      n, wait = 0, 1
    end
    if n > 0 and n < depth and delay > 0 and not flusher.exiting then
      sleep(delay)
    elseif n == 0 then
      if flusher:idle_ends() then return end
      local pause = wait < flusher.linger and wait or flusher.linger
      local woken = flusher.sema:wait(pause > 0.001 and pause or 0.001)
      if not woken and wait >= flusher.linger then return end -- idle long enough
    end
  end
end

return M
