--- Concurrent batch sending over one curl multi handle (`client:send_batch`).
-- The source is streamed: only the orders in flight or waiting for a retry
-- are held, so memory stays flat however long the source is. Every order
-- follows the same rules as `client:send` — validation first, the retry
-- policy of `optimizely.offline.retry`, Retry-After — and a 429 slows the
-- whole batch: no new request starts until its delay has passed, and the
-- number of requests in flight is halved (it grows back by one per round of
-- successes). `on_result` runs once per order, in completion order (not
-- source order). Callbacks run in Lua between curl calls (never inside
-- them), protected: an error in one is recorded in `summary.callback_errors`
-- and the batch goes on.
-- @module optimizely.offline.batch
local core = require("optimizely.offline.core")

local M = {}

local now, sleep = core.now, core.sleep
local floor, min, max, huge = math.floor, math.min, math.max, math.huge
local type, pcall, tostring = type, pcall, tostring

-- The documented success envelope, byte for byte (what the endpoint and the
-- sandbox answer); outcome() decodes it to a success without warnings.
local OK_BODY = '{"status":"OK"}'

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
  if type(opts) ~= "table" then error("send_batch: opts must be a table, got " .. type(opts), 3) end
  for k in pairs(opts) do
    if not OPTS[k] then error("send_batch: unknown option '" .. tostring(k) .. "'", 3) end
  end
  local c = opts.concurrency
  if c ~= nil and (type(c) ~= "number" or not (c >= 1 and c <= 1024) or c ~= floor(c)) then
    error("send_batch: opts.concurrency must be an integer 1..1024", 3)
  end
  local r = opts.rate
  if r ~= nil and (type(r) ~= "number" or not (r > 0)) then
    error("send_batch: opts.rate must be a positive number (orders per second)", 3)
  end
  local pi = opts.progress_interval
  if pi ~= nil and (type(pi) ~= "number" or not (pi >= 0 and pi < huge)) then
    error("send_batch: opts.progress_interval must be a number of seconds >= 0", 3)
  end
  for _, f in ipairs({ "on_result", "progress" }) do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then
      error("send_batch: opts." .. f .. " must be a function", 3)
    end
  end
  return opts
end

-- Retries waiting for their time: a binary heap ordered by due time (ties
-- by order index, so equal delays go out in source order).
local function before(a, b)
  return a.due < b.due or (a.due == b.due and a.id < b.id)
end

local function heap_push(h, item)
  local i = #h + 1
  h[i] = item
  while i > 1 do
    local p = floor(i / 2)
    if not before(h[i], h[p]) then break end
    h[p], h[i] = h[i], h[p]
    i = p
  end
end

local function heap_pop(h)
  local n = #h
  local top = h[1]
  -- two statements: `h[1], h[n] = h[n], nil` leaves h[1] in place when n == 1
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, s = 2 * i, 2 * i + 1, i
    if l <= n and before(h[l], h[s]) then s = l end
    if r <= n and before(h[r], h[s]) then s = r end
    if s == i then break end
    h[s], h[i] = h[i], h[s]
    i = s
  end
  return top
end

-- A Ctrl-C (lua.c's "interrupted!") must stop the batch even when it lands
-- inside a callback or the source iterator, whose errors are otherwise kept.
local function is_interrupt(e)
  return type(e) == "string" and e:find("interrupted!", 1, true) ~= nil
end

--- Run a batch. Called by `client:send_batch`.
-- @param st the client's private state (http_opts, headers, policy, encode, post_url)
-- @param outcome function(st, status, body, info, curl_code) -> res | nil, err
-- @param source array of payloads, or an iterator function returning payloads until nil
-- @param opts {concurrency=8, rate=nil, on_result=fn(i, res, err), progress=fn(summary),
--   progress_interval=0.2}
-- @return summary `{sent, failed, retried, invalid, elapsed, failures={{index, err}},
--   callback_errors={{index, message}}, read, throttled, in_flight, concurrency}`
--   (`failed` counts every order not sent, invalid ones included, so `failed ==
--   #failures` and `sent + failed == read`; `read`: orders taken from the source;
--   `retried`: attempts repeated; `throttled`: 429 answers; `in_flight` and
--   `concurrency`, the current limit, are for progress callbacks); when the batch
--   stopped early also `error` (message), and after an interruption `interrupted`
--   and `unknown` (indexes whose outcome is not known: in flight or awaiting a retry)
function M.run(st, outcome, source, opts)
  opts = check_opts(opts)
  local next_payload = source_iter(source)
  local concurrency = opts.concurrency or 8
  local rate, on_result, progress = opts.rate, opts.on_result, opts.progress
  if rate == huge then rate = nil end
  local interval = opts.progress_interval or 0.2
  local policy, encode, url = st.policy, st.encode, st.post_url

  local multi = core.multi_new(st.http_opts, concurrency)
  multi:set_headers(st.headers)
  if not on_result then multi:set_plain_ok(OK_BODY) end

  local summary = { sent = 0, failed = 0, retried = 0, invalid = 0, elapsed = 0,
                    failures = {}, callback_errors = {}, read = 0, throttled = 0,
                    in_flight = 0, concurrency = concurrency }
  local failures, cb_errors = summary.failures, summary.callback_errors
  -- per order in flight or awaiting a retry, by index (no table per order)
  local json_of, attempts_of, warnings_of = {}, {}, {}
  local retries = {}      -- heap of {due, id}
  local exhausted = false
  local index = 0
  local started = now()
  local in_flight = 0
  local limit = concurrency -- lowered by a 429, grown back by successes
  local grow = 0
  local pause_until = 0     -- a 429 holds back every new request until then
  -- rate: a token bucket holding at most `burst` tokens (no catch-up burst
  -- after a pause), refilled at `rate` per second
  local burst = rate and max(1, min(concurrency, floor(rate / 50))) or 0
  local tokens, refilled = 1, started
  local last_progress = started

  local function callback(i, res, err)
    local ok, cerr = pcall(on_result, i, res, err)
    if not ok then
      if is_interrupt(cerr) then error(cerr, 0) end
      cb_errors[#cb_errors + 1] = { index = i, message = tostring(cerr) }
    end
  end

  local function fail(i, err)
    summary.failed = summary.failed + 1
    failures[#failures + 1] = { index = i, err = err }
    if on_result then callback(i, nil, err) end
  end

  local function pull()
    local ok, payload = pcall(next_payload)
    if ok then return payload end
    if is_interrupt(payload) then error(payload, 0) end
    -- a failing source ends the batch early; what is in flight still finishes
    summary.error = "send_batch: the source raised an error: " .. tostring(payload)
    return nil
  end

  -- Next request to start: a due retry first, else the next source payload.
  local function next_request(t)
    local r = retries[1]
    if r and r.due <= t then
      heap_pop(retries)
      return r.id
    end
    while not exhausted do
      local payload = pull()
      if payload == nil then exhausted = true; break end
      index = index + 1
      summary.read = index
      local json, w = encode(payload)
      if json then
        json_of[index], attempts_of[index] = json, 0
        if w[1] then warnings_of[index] = w end
        return index
      end
      w.attempts = 0
      summary.invalid = summary.invalid + 1
      summary.failed = summary.failed + 1
      failures[#failures + 1] = { index = index, err = w }
      if on_result then callback(index, nil, w) end
    end
    return nil
  end

  local function forget(id)
    json_of[id], attempts_of[id], warnings_of[id] = nil, nil, nil
  end

  local function succeeded()
    summary.sent = summary.sent + 1
    if limit < concurrency then
      grow = grow + 1
      if grow >= limit then limit, grow = limit + 1, 0 end
    end
  end

  local function handle(r)
    if type(r) == "number" then
      -- the endpoint's plain success (200 with OK_BODY, see set_plain_ok)
      -- and nobody asked for the result object: outcome() would say the
      -- same, without warnings
      forget(r)
      succeeded()
      return
    end
    local id = r.id
    local attempt = attempts_of[id]
    local status = r.status
    local res, err
    if status then
      res, err = outcome(st, r.status, r.body, r, nil)
    else
      res, err = outcome(st, nil, r.kind, r.message, r.curl_code)
    end
    if res then
      res.attempts = attempt
      local w = warnings_of[id]
      if w then
        -- the encoder's warnings first, then the server's (as client:send)
        for i = 1, #res.warnings do w[#w + 1] = res.warnings[i] end
        res.warnings = w
      end
      forget(id)
      succeeded()
      if on_result then callback(id, res, nil) end
      return
    end
    err.attempts = attempt
    if status == 429 then
      summary.throttled = summary.throttled + 1
      limit, grow = max(1, floor(limit / 2)), 0
    end
    if err.retryable and attempt < policy.max_attempts then
      local t = now()
      local d = policy:delay(attempt, r.retry_after)
      summary.retried = summary.retried + 1
      heap_push(retries, { due = t + d, id = id })
      if status == 429 then pause_until = max(pause_until, t + d) end
      return
    end
    forget(id)
    fail(id, err)
  end

  local function report(t)
    last_progress = t
    summary.elapsed = t - started
    summary.in_flight = in_flight
    summary.concurrency = limit
    local ok, perr = pcall(progress, summary)
    if not ok then
      if is_interrupt(perr) then error(perr, 0) end
      cb_errors[#cb_errors + 1] = { progress = true, message = tostring(perr) }
    end
  end

  local function loop()
    while true do
      local t = now()
      if rate then
        tokens = min(burst, tokens + (t - refilled) * rate)
        refilled = t
      end
      -- start what we may: a free slot, not paused, a rate token
      if t >= pause_until then
        while in_flight < limit and (not rate or tokens >= 1) do
          local id = next_request(t)
          if not id then break end
          attempts_of[id] = attempts_of[id] + 1
          multi:add(id, "POST", url, json_of[id])
          in_flight = in_flight + 1
          if rate then tokens = tokens - 1 end
        end
      end
      if in_flight == 0 and exhausted and not retries[1] then break end
      -- How long to wait: completions wake perform() anyway; a free slot
      -- also waits for the end of a pause, a rate token or a due retry.
      local wake = 1
      if t < pause_until then
        wake = pause_until - t
      elseif in_flight < limit then
        if rate and tokens < 1 then wake = min(wake, (1 - tokens) / rate) end
        if retries[1] then wake = min(wake, retries[1].due - t) end
      end
      if progress then wake = min(wake, max(0, last_progress + interval - t)) end
      if wake < 0 then wake = 0 end
      if in_flight > 0 then
        local results
        results, in_flight = multi:perform(wake)
        if results then
          for k = 1, #results do handle(results[k]) end
        end
      elseif wake > 0 then
        sleep(wake)
      end
      if progress then
        local tt = now()
        if tt - last_progress >= interval then report(tt) end
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
    local unknown = {}
    for _, id in ipairs(multi:abort()) do unknown[#unknown + 1] = id end
    for _, r in ipairs(retries) do unknown[#unknown + 1] = r.id end
    table.sort(unknown)
    summary.unknown = unknown
  end
  summary.in_flight = 0
  multi:close()
  if progress then report(now()) end
  return summary
end

return M
