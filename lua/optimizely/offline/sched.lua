--- The delivery scheduler, from Lua: the one place that decides what is
-- sent when (csrc/delivery/sched.c, bound by csrc/binding/l_sched.c).
--
-- The scheduler does no I/O. It owns the jobs (queued, ready, retrying, in
-- flight), the in-flight limit (adaptive or fixed), the pause after a 429,
-- the stop after refused credentials and its probe, the age limit, result
-- records and counters; it classifies every answer and settles it by the
-- one retry policy. A *driver* moves the bytes: it asks `s:next()` for a
-- job, sends it, and hands back what came back with `s:done()`. The
-- libcurl driver (send_batch, the queue's thread) does that in C; a Lua
-- driver does it with a transport (the contract of
-- optimizely.offline.delivery): `client:send` and user transports through
-- `M.driver` below, the nginx queue with light threads over cosockets.
--
--     local s = sched.new(sched.config(client_state, { concurrency = 4 }))
--     s:add({ id = 1, body = json, ref = "R-1" })
--     while s:pending() > 0 do
--       local job, wait = s:next()
--       if job then
--         s:done(job.token, transport:request(job.method, job.url, job.headers, job.body))
--       else
--         sleep(math.min(wait, 1))
--       end
--       for _, r in ipairs(s:results()) do ... end
--     end
--
-- A driver that needs only the action settles with `s:settle(token, ...)`
-- (`done` without the outcome record), fills one table of its own again
-- with `s:next(t)`, and asks `s:has_results()` before building the list:
-- the nginx senders do, one order at a time.
--
-- **Stores behind hooks.** A store that lives in Lua (the nginx memory
-- ring, a spool handle, a shared dict) gives `cfg.hooks`, Lua functions the
-- scheduler calls synchronously from inside `s:next()` (`feed`), `s:done()`
-- (`record`, `ack`, `retry`, `dead`, `release`) and `s:drop()` (`release`).
-- A hook must not yield (no cosocket, no `ngx.sleep`) and must not call
-- `next`, `done`, `drop` or `close` (that raises); it may call `s:take`
-- (from `feed`). A hook that raises is counted in `stats().hook_errors`
-- (`hook_error`: the last message) and never breaks delivery (a `retry`
-- hook that raised leaves the job with the scheduler). Each hook gets a job
-- info `{id, store_id, ref, attempts, channel, channel_index, method,
-- created, blob}`:
--
-- - `feed(room)`: the store may have jobs due and there is room for `room`
--   more; it calls `s:take(job)` for each. Returns the seconds until a look
--   is worth it again (nil: at the next call).
-- - `record(job, what, record)`: every job (store or memory) that reached
--   its end, `what` "sent" or "dead" — the ledger's hook. Always just
--   before `ack` or `dead`, so a store writing both in one transaction can
--   pair them.
-- - `ack(job, record)`: a job with a `store_id` was delivered (`record.warned`:
--   with warnings).
-- - `retry(job, next_at, record)`: a job with a `store_id` failed and goes
--   again at `next_at` (epoch seconds). Returns true when the store keeps
--   it (the scheduler lets it go), else the scheduler keeps it in memory.
-- - `dead(job, record, why)`: a job with a `store_id` was given up (`why`:
--   rejected, attempts, expired). It may return the dead letters the store
--   made with it (a spool's cancel with an amend's new version behind it:
--   `spool:kill`'s second value), a list of `{id, ref, channel = index,
--   attempts, message}`: each becomes a "dead" result, `why` "amend", with
--   the job's outcome and its own message, counted failed — as an
--   `after_ok` job of the scheduler's own.
-- - `release(job)`: a job with a `store_id` goes back unsent (a
--   credentials pause, `drop`).
--
-- **Counting.** A job is always in exactly one of queued (waiting, or
-- parked behind its refCode), retrying or in flight; `pending()` is their
-- sum, and every job ends in exactly one result (`sent`, `dead`,
-- `stopped`) — or is taken back by `remove_ref` or `drop`.
-- @module optimizely.offline.sched
local core = require("optimizely.offline.core")

local M = {}

local pairs, pcall, error, min, ipairs, type = pairs, pcall, error, math.min, ipairs, type
local now = core.now

--- The scheduler's defaults, declared once in C: `{concurrency = 8,
-- max_concurrency = 1024, auth_pause = 300, max_results = 100000, on_stop = "drain"}`.
M.DEFAULTS = core.sched_defaults()

--- The most requests in flight a scheduler allows (1024), declared once in
-- C: every path's `concurrency` option (send_batch, both queues, the CLI)
-- has this maximum.
M.MAX_CONCURRENCY = M.DEFAULTS.max_concurrency

--- The configuration table of a scheduler for a client's delivery context:
-- the one builder, for send_batch's engine, the queue's thread,
-- `client:send` and the nginx queue.
-- @param st the client's delivery context (`optimizely.offline.client.state`)
-- @param o the scheduler's options, all optional: `concurrency` (most in
--   flight, 1..1024), `adaptive`, `initial_limit`, `on_stop` ("drain": a
--   refusal of the credentials fails every job left, as `stopped`;
--   "pause": they wait, one probes every `auth_pause` seconds),
--   `auth_pause`, `report_all` (a `sent` result for every job, not only
--   warned ones), `report_retries` (a `retry` event per failed attempt),
--   `max_results`, `policy` (default: the client's), `max_pending` (`add`
--   refuses beyond), `hooks` (the store hooks above), and for the engine
--   and the queue's thread `http` (the HTTP options) and theirs
-- @return the table for `M.new`, `core.engine_new` or `core.worker_new`
function M.config(st, o)
  local cfg = { url = st.post_url, channels = st.channels, policy = st.policy,
    no_metrics = st.metrics == nil, random = st.policy and st.policy.random }
  for k, v in pairs(o or {}) do cfg[k] = v end
  return cfg
end

--- A new scheduler (`core.sched_new`): see the methods of `Sched` below.
-- @param cfg as `M.config` builds it: `url`, `channels` (`{{name, token,
--   headers = {"Name: value", ...}}, ...}`), `policy` (`{max_attempts,
--   max_age, backoff_base, backoff_max, backoff_floor, retry_after_max}`)
--   and the options of `M.config`; `random` a function returning the
--   backoff's jitter in [0, 1) (default: the scheduler's own)
-- @return a `Sched`
function M.new(cfg)
  return core.sched_new(cfg)
end

local Driver = {}
Driver.__index = Driver

--- A Lua driver over a new scheduler: see `Driver` below.
-- @param cfg the scheduler's configuration (`M.config`)
-- @param transport an object with `:request(method, url, headers, body)`
-- @param sleep `function(seconds)` for the waits (default core.sleep;
--   ngx.sleep under nginx)
-- @return a `Driver`
function M.driver(cfg, transport, sleep)
  return setmetatable({ s = core.sched_new(cfg), transport = transport, sleep = sleep or core.sleep,
    job = {} }, Driver)
end

--- A scheduler object (userdata, csrc/binding/l_sched.c).
-- @type Sched

--- Queue a job.
-- @function Sched:add
-- @param job `{id = integer (the caller's, in results), body = the request
--   body (a POST), ref = refCode, channel = index into cfg.channels (1),
--   method = "POST" | "DELETE", url = a DELETE's own URL (the caller
--   builds it; a POST goes to cfg.url), after_ref = true (do not start
--   while an earlier job of this refCode is queued, retrying or in flight
--   here: a cancel waits behind its create), after_ok = true (as
--   after_ref, and when an earlier DELETE of its refCode ends dead this
--   job ends dead too, never sent, `why` "amend": the new version of an
--   amend is posted only once the cancel of the old one was accepted),
--   blob = bytes returned in the
--   hooks and results (the ledger's), created = epoch seconds the order was
--   queued (the age limit; default now), store_id = the store's handle
--   (store hooks are called for such jobs only), attempts = made before}`
-- @return true, or false when `max_pending` jobs are pending (not queued)

--- From a `feed` hook: a job straight into the ready list (not counted as
-- pushed: the store counted it when it took it).
-- @function Sched:take
-- @param job as for `add`

--- The next job that may start now: the scheduler counts it in flight.
-- Send it, then hand back what came back with `done`.
-- @function Sched:next
-- @param t a table to fill instead of a new one (optional: a driver that
--   sends one job at a time reuses one table; every field is set or
--   cleared)
-- @return job `{token, id, method, url, headers (the channel's list: do not
--   change it), channel (name), body (POST), ref, attempt (this one's
--   number), blob, store_id}`; or nil, wait — seconds until a
--   job may be due (a retry, the end of a pause, a probe, a look at the
--   store; 1e9 when only an add can bring one)

--- Hand back the answer to a job in flight, exactly as the transport
-- returned it (the contract of optimizely.offline.delivery): the scheduler
-- checks the contract (a breach is a failure of kind "transport", not
-- retried), classifies the answer and settles the job (ack, retry with
-- backoff, pause, stop, dead letter, age limit).
-- @function Sched:done
-- @param token the job's `token`
-- @param status an HTTP status, or nil for a transport failure
-- @param body the response body (a string; nil = ""), or the failure's kind
--   ("network", "timeout", "tls")
-- @param info `{retry_after = raw header value, reused = bool, ...}` or nil,
--   or the failure's message
-- @param code the failure's own error number (optional)
-- @return the decision ("ack", "retry", "dead" or "stop"), the classified
--   outcome record (`{ok, kind, status, code, message, retryable,
--   retry_after, stop, warned, throttled, curl_code}`), the policy's reason
--   (dead: rejected, attempts, expired; stop: credentials; else nil) and the
--   attempts made, this one included

--- The results since the last call, in order. One shape for every driver
-- (send_batch's engine, the queue's thread, this object): `{what, id, ref,
-- attempts, channel, channel_index, method, store_id, blob, why, latency,
-- until, body}` plus the outcome record's fields (`ok, kind, status, code,
-- message, retryable, retry_after, stop, warned, throttled, curl_code`).
-- `what`: "sent" (with `report_all`, or warned), "dead" (`why`: rejected,
-- attempts, expired, memory, amend), "stopped" (not sent: credentials refused,
-- `on_stop = "drain"`), "retry" (`report_retries`: another attempt after
-- `until` seconds), "paused" (`why`: throttled or credentials; `until`
-- seconds), "resumed".
-- @function Sched:results
-- @return a list of result tables

--- Jobs not settled yet (queued, parked, retrying, in flight).
-- @function Sched:pending
-- @return integer

--- Counters and gauges: `{queued, retrying, in_flight, sent, retried,
-- throttled, dead, failed, pushed, removed, results_dropped,
-- pending_results, limit, stopped, paused_for, hook_errors, hook_error}`.
-- @function Sched:stats
-- @return table

--- The delivery metrics (see optimizely.offline.metrics for the shape).
-- Cancels (DELETE jobs) count as requests only.
-- @function Sched:metrics
-- @return table

--- Take every unstarted job of a refCode out (a cancel of an order not
-- sent yet: nothing is sent). Store hooks are not called: the caller
-- settles its store.
-- @function Sched:remove_ref
-- @param ref the refCode
-- @param method "POST" or "DELETE" to take only those (default: both)
-- @return the removed jobs (job infos, as the hooks get them), and whether
--   a job of that refCode is in flight now

--- The driver's sleep returned before the time it asked for (a test's stub
-- that records and returns): the scheduler's clock moves ahead by what it
-- did not wait, so what it waited for is due and what comes later keeps
-- its delay.
-- @function Sched:advance
-- @param seconds what the sleep did not wait

--- Clear a credentials stop and a pause: sending starts again now.
-- @function Sched:resume

--- The store behind the `feed` hook has new jobs: it is fed at the next
-- `next()`.
-- @function Sched:hint_feed

--- Take every unsettled job out: store jobs are released (`release`
-- hook); the tokens in flight are void from now on.
-- @function Sched:drop
-- @return unknown, unsent: the memory jobs attempted (in flight, or waiting
--   for a retry: the server may have them) and those never started, as job
--   infos

--- Free the scheduler (also when collected): jobs left are freed without
-- hooks or results.
-- @function Sched:close

-- ------------------------------------------------------------- Lua driver

--- A Lua driver: a scheduler driven by a transport that answers one
-- request at a time (libcurl's easy handle, a user transport, a cosocket
-- transport in one light thread). It has the methods of send_batch's
-- engine (`add, pending, turn, results, stats, metrics, remove_ref, drop,
-- close`), so a batch runs on either, and `send` for one job at a time.
-- @type Driver

--- Queue a job (`Sched:add`).
-- @param job the job table
-- @return true | false (max_pending)
function Driver:add(job) return self.s:add(job) end

--- Jobs not settled yet.
-- @return integer
function Driver:pending() return self.s:pending() end

--- Stats of the scheduler.
-- @return table
function Driver:stats() return self.s:stats() end

--- Metrics of the scheduler.
-- @return table
function Driver:metrics() return self.s:metrics() end

--- Take unstarted jobs of a refCode out (`Sched:remove_ref`).
-- @param ref the refCode
-- @param method "POST" | "DELETE" | nil
-- @return removed jobs, in flight
function Driver:remove_ref(ref, method) return self.s:remove_ref(ref, method) end

--- Clear a credentials stop and a pause.
function Driver:resume() self.s:resume() end

-- Sleeps `wait` seconds with the driver's sleep. Its word is trusted: a
-- sleep that returns early (a test's stub that records and returns) moves
-- the driver's clock ahead by what it did not wait, so what it waited for
-- is due.
local function nap(self, wait)
  local t0 = now()
  self.sleep(wait)
  local short = wait - (now() - t0)
  if short > 0 then self.s:advance(short + 1e-6) end
end

--- One attempt over the transport, or — when nothing may start — a sleep
-- until something may be due, at most `max_wait` seconds.
-- @param max_wait seconds (default 1)
-- @return 1 when an attempt was made, else 0
function Driver:turn(max_wait)
  local s = self.s
  local job, wait = s:next(self.job) -- one table, filled anew: one request at a time
  if not job then
    wait = min(wait, max_wait or 1)
    if wait > 0 then nap(self, wait) end
    return 0
  end
  local status, body, info, code = self.transport:request(job.method, job.url, job.headers, job.body)
  s:done(job.token, status, body, info, code)
  return 1
end

--- The results since the last call (`Sched:results`).
-- @return list of result tables
function Driver:results() return self.s:results() end

--- Take every unsettled job out (as send_batch's engine: ids).
-- @return unknown ids, unsent ids
function Driver:drop()
  local unknown, unsent = self.s:drop()
  for i, j in ipairs(unknown) do unknown[i] = j.id end
  for i, j in ipairs(unsent) do unsent[i] = j.id end
  return unknown, unsent
end

--- Free the scheduler.
function Driver:close() self.s:close() end

-- Hands the results gathered so far to `on` (events: retry, paused, ...).
local function gather(self, on)
  local rs = self.s:results()
  for i = 1, #rs do on(rs[i]) end
end

-- Drives until the job `id` is settled; returns what `send` returns.
local function drive(self, id, on)
  local s, t, transport = self.s, self.job, self.transport
  while true do
    local job, wait = s:next(t) -- one table, filled anew: one request at a time
    if job then
      local jid = job.id
      local status, body, info, code = transport:request(job.method, job.url, job.headers, job.body)
      local action, rec, why, attempts = s:done(job.token, status, body, info, code)
      if on then gather(self, on) end
      if jid == id and action ~= "retry" then
        if type(status) ~= "number" then return rec, attempts, why end
        return rec, attempts, why, type(body) == "string" and body or nil, type(info) == "table" and info or nil
      end
    else
      nap(self, wait)
      if on then gather(self, on) end
    end
  end
end

--- Deliver one job and wait for its end, in the calling coroutine: the
-- synchronous path of `client:send` and `client:cancel`. Any raise on the
-- way (a transport that raised, an interrupt during a sleep) takes every
-- unsettled job out before it propagates: nothing is sent later behind the
-- caller's back.
-- @param job the job table (an `id` of its own)
-- @param on function(result) for the results reported meanwhile (with
--   `report_retries`: `retry`, `paused`, `resumed`, and the failures), or nil
-- @return the last attempt's outcome record (`s:done`'s: `ok`, `kind`,
--   `status`, `code`, `message`, `retryable`, `retry_after`, `stop`,
--   `warned`, `throttled`, `curl_code`), the attempts made, the policy's
--   reason (`why`: rejected, attempts, expired, credentials; nil when
--   delivered), and the body and info of the last answer (nil when the
--   last attempt got none)
function Driver:send(job, on)
  self.s:add(job)
  local ok, rec, attempts, why, body, info = pcall(drive, self, job.id, on)
  if not ok then
    self.s:drop()
    error(rec, 0)
  end
  return rec, attempts, why, body, info
end

M.Driver = Driver

return M
