--- What a delivery result looks like, and the synchronous send loop.
--
-- Every path — `client:send`, `send_batch`, both queues — hands its
-- classified outcome (csrc/classify.c) to `M.result`, so a result or an error
-- has one shape whichever engine produced it:
--
--   success `res`: `{ok = true, status, body, attempts, warnings, info,
--     channel}` plus `res.envelope` (the response envelope `{status, errors,
--     warnings}`, read on first use; nil when the body is not a JSON object)
--   failure `err` (an `optimizely.offline.errors` object): `{kind, message,
--     status, code, errors = {{code, message}...}, body, retryable,
--     retry_after, attempts, stop, channel}`; kinds "api" (a `fail`
--     envelope), "http" (another status), "auth" (the site, token or channel
--     was refused: nothing more is sent with them), "network", "timeout",
--     "tls", "transport" (a user transport broke its contract). No field
--     ever holds a site token: messages, the body and the errors list are
--     redacted after they are built.
--
-- The transport contract (libcurl's easy handle, the nginx cosocket
-- transport, and any user transport satisfy it):
--
--     status, body, info = transport:request(method, url, headers, body)
--       status  an HTTP status (integer 100..999); body a string (nil = "");
--               info a table or nil: {retry_after = raw header value,
--               content_type, reused, http_version, total_time}
--     nil, kind, message [, code] = transport:request(...)  -- no HTTP answer
--       kind    "network" | "timeout" | "tls"; message one line; code the
--               transport's own error number (libcurl's CURLcode), optional
--
-- Anything else comes back as an error of kind "transport" (not retried),
-- never as a crash.
-- @module optimizely.offline.delivery
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

local classify, classify_failure, envelope_of = core.classify, core.classify_failure, core.envelope
local now = core.now
local type, floor, tostring = type, math.floor, tostring

-- ---------------------------------------------------------------- results

local Result = {}
Result.__index = function(res, k)
  if k == "envelope" then
    local env = envelope_of(rawget(res, "body") or "")
    rawset(res, "envelope", env or false)
    return env or nil
  end
  return nil
end
M.Result = Result

local function odd_status(env)
  local s = env.status
  if s == nil then return env.status_not_string and "(not a string)" or "(none)" end
  return core.quote(s, 40)
end

--- The server's warnings of a delivered order: `{source = "api", code?,
-- message}` for each item of a `warning` envelope's errors and of its
-- `warnings`, and one for a status that is neither OK nor warning.
function M.api_warnings(body)
  local env = envelope_of(body or "")
  local list = {}
  if not env then return list end
  local s = env.status and env.status:lower()
  if s == "warning" then
    for _, e in ipairs(env.errors) do
      list[#list + 1] = { source = "api", code = e.code, message = e.message }
    end
  end
  for _, w in ipairs(env.warnings) do list[#list + 1] = { source = "api", message = w } end
  if s ~= "ok" and s ~= "warning" then
    list[#list + 1] = { source = "api", message = "unrecognised response status " .. odd_status(env) }
  end
  return list
end

local function scrub_errors(body, secrets)
  local env = envelope_of(body or "")
  if not env then return {} end
  local list = {}
  for i, e in ipairs(env.errors) do
    list[i] = { code = errors.redact_all(e.code, secrets), message = errors.redact_all(e.message, secrets) }
  end
  return list
end

--- A success. `rec` is the classified outcome; `enc_warnings` the
-- encoder's warnings, listed before the server's.
function M.success(rec, body, attempts, info, channel, enc_warnings)
  local warnings = enc_warnings or {}
  if rec.warned then
    local api = M.api_warnings(body)
    if enc_warnings then
      local all = {}
      for i = 1, #enc_warnings do all[i] = enc_warnings[i] end
      for i = 1, #api do all[#all + 1] = api[i] end
      warnings = all
    else
      warnings = api
    end
  end
  return setmetatable({ ok = true, status = rec.status, body = body, attempts = attempts,
    warnings = warnings, info = info, channel = channel }, Result)
end

--- A failure as an error object; every string is scrubbed of the secrets.
function M.failure(rec, body, attempts, channel, secrets)
  local fields = {
    kind = rec.kind, status = rec.status, retryable = rec.retryable == true,
    retry_after = rec.retry_after, attempts = attempts, stop = rec.stop or nil, channel = channel,
    curl_code = rec.curl_code,
    message = errors.redact_all(rec.message or rec.kind, secrets),
  }
  if rec.code then fields.code = errors.redact_all(rec.code, secrets) end
  if body and body ~= "" then
    fields.body = errors.redact_all(body, secrets)
    fields.errors = scrub_errors(body, secrets)
  end
  return errors.new(fields)
end

--- `res` or `nil, err` from a classified outcome.
function M.result(rec, body, attempts, info, channel, secrets, enc_warnings)
  if rec.ok then return M.success(rec, body, attempts, info, channel, enc_warnings) end
  return nil, M.failure(rec, body, attempts, channel, secrets)
end

-- ---------------------------------------------------------- the contract

local function contract_broken(what)
  return { ok = false, kind = "transport", retryable = false,
    message = "the transport broke its contract: " .. what
      .. " (expected status, body, info or nil, kind, message)" }
end

--- Classify what a transport returned (see the module doc).
-- @return record, body (string), info (table)
function M.check_response(status, body, info, code)
  if status == nil then
    local kind = body
    if type(kind) ~= "string" then return contract_broken("a failure without a kind"), "", {} end
    local rec = classify_failure(kind, type(info) == "string" and info or kind)
    if type(code) == "number" then rec.curl_code = code end
    return rec, "", {}
  end
  if type(status) ~= "number" or status ~= floor(status) or status < 100 or status > 999 then
    return contract_broken("status is " .. (type(status) == "number" and tostring(status) or ("a " .. type(status)))),
      "", {}
  end
  if body ~= nil and type(body) ~= "string" then
    return contract_broken("body is a " .. type(body)), "", {}
  end
  if info ~= nil and type(info) ~= "table" then
    return contract_broken("info is a " .. type(info)), "", {}
  end
  info = info or {}
  body = body or ""
  local ra = info.retry_after
  return classify(status, body, type(ra) == "string" and ra or (type(ra) == "number" and tostring(ra)) or nil),
    body, info
end

--- One attempt over a transport: request, contract check, classification.
-- @return record, body, info, seconds taken
function M.attempt(transport, method, url, headers, body)
  local t0 = now()
  local status, rbody, info, code = transport:request(method, url, headers, body)
  local rec, b, i = M.check_response(status, rbody, info, code)
  return rec, b, i, now() - t0
end

-- ------------------------------------------------------- the send loop

--- Send one request, retrying as the policy says, sleeping with
-- `ctx.sleep` between attempts (the client's, or ngx.sleep under nginx).
-- ctx: {transport, policy (optimizely.offline.retry), sleep, secrets,
-- metrics (core.metrics_new object or nil), emit (function(kind, fields) or
-- nil: the `retry` and `failure` events, see optimizely.offline.events)};
-- `ref` the order's refCode for those events (optional).
-- @return res or nil, err
function M.send(ctx, method, url, headers, body, channel, enc_warnings, ref)
  local attempt, age0 = 0, now()
  local metrics, emit = ctx.metrics, ctx.emit
  -- a cancel is a request, not an order: it counts in requests and latency only
  local orders = metrics and method == "POST" and metrics
  while true do
    attempt = attempt + 1
    local rec, rbody, info, took = M.attempt(ctx.transport, method, url, headers, body)
    if metrics then
      metrics:attempt(took, body and #body or 0)
      if rec.status == 429 then metrics:throttled() end
    end
    local action, delay, _, _, why = ctx.policy:decide(rec, attempt, now() - age0)
    if action ~= "retry" then
      local res, err = M.result(rec, rbody, attempt, info, channel, ctx.secrets, enc_warnings)
      if orders then
        if res then orders:sent(channel) else orders:failed(rec, action == "dead", channel) end
      end
      if err and emit then emit("failure", { ref = ref, attempt = attempt, error = err, reason = why }) end
      return res, err
    end
    if orders then orders:retried() end
    if emit then
      emit("retry", { ref = ref, attempt = attempt, delay = delay,
        error = M.failure(rec, rbody, attempt, channel, ctx.secrets) })
    end
    ctx.sleep(delay)
  end
end

return M
