--- Concurrent batch sending over one curl multi handle (`client:send_batch`).
-- The source is streamed: only the orders in flight or waiting for a retry
-- are held, so memory stays flat however long the source is. Every order
-- follows the same rules as `client:send` — validation first, the retry
-- policy of `optimizely.offline.retry`, Retry-After — and a 429 pauses the
-- whole batch, not just the one order. Callbacks run in Lua between curl
-- calls (never inside them), protected: an error in one is recorded in
-- `summary.callback_errors` and the batch goes on.
-- @module optimizely.offline.batch
local core = require("optimizely.offline.core")

local M = {}

local now, sleep = core.now, core.sleep
local floor, min, max = math.floor, math.min, math.max

-- Turn an array or an iterator function into a function returning payloads.
local function source_iter(source)
  if type(source) == "function" then return source end
  if type(source) == "table" then
    local i = 0
    return function()
      i = i + 1
      return source[i]
    end
  end
  error("send_batch: source must be an array of payloads or an iterator function, got " .. type(source), 3)
end

local OPTS = { concurrency = true, rate = true, on_result = true, progress = true,
               progress_interval = true }

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error("send_batch: opts must be a table", 3) end
  for k in pairs(opts) do
    if not OPTS[k] then error("send_batch: unknown option '" .. tostring(k) .. "'", 3) end
  end
  local c = opts.concurrency
  if c ~= nil and (type(c) ~= "number" or c < 1 or c > 1024 or c ~= floor(c)) then
    error("send_batch: concurrency must be an integer 1..1024", 3)
  end
  if opts.rate ~= nil and (type(opts.rate) ~= "number" or not (opts.rate > 0)) then
    error("send_batch: rate must be a positive number (orders per second)", 3)
  end
  for _, f in ipairs({ "on_result", "progress" }) do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then
      error("send_batch: " .. f .. " must be a function", 3)
    end
  end
  return opts
end

-- A tiny binary heap of retries ordered by due time.
local function heap_push(h, item)
  local i = #h + 1
  h[i] = item
  while i > 1 do
    local p = floor(i / 2)
    if h[p].due <= h[i].due then break end
    h[p], h[i] = h[i], h[p]
    i = p
  end
end

local function heap_pop(h)
  local top, n = h[1], #h
  h[1], h[n] = h[n], nil
  n = n - 1
  local i = 1
  while true do
    local l, r, s = 2 * i, 2 * i + 1, i
    if l <= n and h[l].due < h[s].due then s = l end
    if r <= n and h[r].due < h[s].due then s = r end
    if s == i then break end
    h[s], h[i] = h[i], h[s]
    i = s
  end
  return top
end

--- Run a batch. Called by `client:send_batch`.
-- @param st the client's private state (http options, headers, policy, encode, url)
-- @param outcome function(st, status, body, info, curl_code) -> res | nil, err
-- @param source array of payloads, or an iterator function returning payloads until nil
-- @param opts {concurrency=8, rate=nil, on_result=fn(i, res, err), progress=fn(summary)}
-- @return summary {sent, failed, retried, invalid, elapsed, failures={{index, err}},
--   callback_errors, interrupted, unknown}
function M.run(st, outcome, source, opts)
  opts = check_opts(opts)
  local next_payload = source_iter(source)
  local concurrency = opts.concurrency or 8
  local rate, on_result, progress = opts.rate, opts.on_result, opts.progress
  local interval = opts.progress_interval or 0.2
  local policy, encode, url = st.policy, st.encode, st.post_url

  local multi = core.multi_new(st.http_opts, concurrency)
  multi:set_headers(st.headers)

  local summary = { sent = 0, failed = 0, retried = 0, invalid = 0, elapsed = 0,
                    failures = {}, callback_errors = {}, in_flight = 0 }
  local pending = {}      -- id -> {index, json, warnings, attempt}
  local retries = {}      -- heap of {due, id}
  local exhausted = false
  local index = 0
  local started = now()
  local dispatched = 0
  local pause_until = 0   -- a 429 holds back every new request until then
  local last_progress = started

  local function callback(i, res, err)
    if not on_result then return end
    local ok, cerr = pcall(on_result, i, res, err)
    if not ok then
      local list = summary.callback_errors
      list[#list + 1] = { index = i, message = tostring(cerr) }
    end
  end

  local function fail(p, err)
    summary.failed = summary.failed + 1
    local f = summary.failures
    f[#f + 1] = { index = p.index, err = err }
    callback(p.index, nil, err)
  end

  -- Next request to start: a due retry first, else the next source payload.
  local function next_request(t)
    if retries[1] and retries[1].due <= t then
      local r = heap_pop(retries)
      return r.id
    end
    while not exhausted do
      local payload = next_payload()
      if payload == nil then exhausted = true; break end
      index = index + 1
      local json, w = encode(payload)
      if json then
        pending[index] = { index = index, json = json, warnings = w, attempt = 0 }
        return index
      end
      w.attempts = 0
      summary.invalid = summary.invalid + 1
      local f = summary.failures
      f[#f + 1] = { index = index, err = w }
      callback(index, nil, w)
    end
    return nil
  end

  local function handle(r, t)
    local p = pending[r.id]
    local res, err
    if r.status then
      res, err = outcome(st, r.status, r.body, r, nil)
    else
      res, err = outcome(st, nil, r.kind, r.message, r.curl_code)
    end
    if res then
      pending[r.id] = nil
      res.attempts = p.attempt
      local w = p.warnings
      if w and #w > 0 then
        for i = 1, #res.warnings do w[#w + 1] = res.warnings[i] end
        res.warnings = w
      end
      summary.sent = summary.sent + 1
      callback(p.index, res, nil)
      return
    end
    err.attempts = p.attempt
    if err.retryable and p.attempt < policy.max_attempts then
      local d = policy:delay(p.attempt, r.retry_after)
      summary.retried = summary.retried + 1
      heap_push(retries, { due = t + d, id = r.id })
      if r.status == 429 then pause_until = max(pause_until, t + d) end
      return
    end
    pending[r.id] = nil
    fail(p, err)
  end

  local function loop()
    while true do
      local t = now()
      -- start what we may: free slot, not paused, under the rate
      while t >= pause_until and multi:free_slots() > 0 do
        if rate and dispatched >= floor((t - started) * rate) + 1 then break end
        local id = next_request(t)
        if not id then break end
        local p = pending[id]
        p.attempt = p.attempt + 1
        dispatched = dispatched + 1
        multi:add(id, "POST", url, p.json)
      end
      local in_flight = multi:in_flight()
      if in_flight == 0 and exhausted and not retries[1] then break end
      -- wait for a completion, the next retry, the rate slot or the pause
      local wake = 0.1
      if retries[1] then wake = min(wake, retries[1].due - t) end
      if pause_until > t then wake = min(wake, pause_until - t) end
      if rate then wake = min(wake, started + dispatched / rate - t) end
      if in_flight == 0 and exhausted == false and wake <= 0 and t >= pause_until then wake = 0 end
      wake = max(wake, 0)
      local results
      if in_flight > 0 then
        results = multi:perform(wake > 0 and wake or 0.001)
      else
        if wake > 0 then sleep(wake) end
        results = nil
      end
      if results then
        local tt = now()
        for k = 1, #results do handle(results[k], tt) end
      end
      if progress and t - last_progress >= interval then
        last_progress = t
        summary.elapsed = t - started
        summary.in_flight = multi:in_flight()
        pcall(progress, summary)
      end
    end
  end

  local ok, lerr = pcall(loop)
  summary.elapsed = now() - started
  if not ok then
    -- Interrupted (Ctrl-C) or a bug: stop the transfers; what was in flight
    -- has an unknown outcome and what waited for a retry was not delivered.
    summary.interrupted = true
    summary.error = tostring(lerr)
    local unknown = multi:abort()
    summary.unknown = {}
    for _, id in ipairs(unknown) do summary.unknown[#summary.unknown + 1] = pending[id].index end
    for _, r in ipairs(retries) do summary.unknown[#summary.unknown + 1] = pending[r.id].index end
    table.sort(summary.unknown)
  end
  summary.in_flight = 0
  multi:close()
  if progress then pcall(progress, summary) end
  return summary
end

return M
