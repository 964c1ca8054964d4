--- What a delivery result looks like, and the transport contract.
--
-- Every path — `client:send`, `send_batch`, both queues — turns the
-- scheduler's result record (csrc/delivery/sched.c: the classified outcome of
-- csrc/delivery/classify.c, settled by csrc/delivery/policy.c) into `M.result`, so a result
-- or an error has one shape whichever driver produced it. Nothing here
-- decides: statuses, Retry-After, backoff, pauses and the in-flight limit
-- are the scheduler's (optimizely.offline.sched). The shapes:
--
--   success `res`: `{ok = true, status, body, attempts, warnings, info,
--     channel}` plus `res.envelope` (the response envelope `{status, errors,
--     warnings}`, read on first use; nil when the body is not a JSON object);
--     `amended = true` when a DELETE of the earlier version went first
--   skipped `res` (the ledger had the order: nothing was sent, not an
--     error): `{ok = true, skipped = "already sent" | "already in flight",
--     reason = "already_sent" | "in_flight" (the metric's label), at (when
--     it was recorded), outcome ("sent" | "warned"), until (in flight: the
--     reservation's end), attempts = 0, warnings = {}, channel, ref}`
--   changed `err` (the ledger had another version, or a cancel: nothing
--     was sent): kind "changed", `at` and `outcome` of the earlier version
--     ("sent", "warned" or "cancelled"), `ref`, `attempts = 0`; its message
--     says when, and that `amend = true` replaces it and `force = true`
--     sends it anyway
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
-- never as a crash. The scheduler checks the contract (`s:done`); a Lua
-- driver (`optimizely.offline.sched.driver`) hands it what the transport
-- returned, as returned.
-- @module optimizely.offline.delivery
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

local check_reply, envelope_of = core.check_reply, core.envelope
local now = core.now

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

-- ------------------------------------------------------ ledger outcomes

--- Why an order was skipped: the metric's `reason` label
-- (optimizely.offline.metrics `SKIP_REASONS`) and the words of the result's
-- `skipped` field.
M.SKIPPED = { already_sent = "already sent", in_flight = "already in flight" }

--- An order the ledger had: not sent, and not an error.
-- @param reason "already_sent" or "in_flight"
-- @param answer the ledger's answer (`at`, `outcome`, `until`)
-- @param channel the order's channel
-- @param ref its refCode
-- @return the skipped result (see the module doc)
function M.skipped(reason, answer, channel, ref)
  return setmetatable({ ok = true, skipped = M.SKIPPED[reason], reason = reason, at = answer.at,
    outcome = answer.outcome, ["until"] = answer["until"], attempts = 0, warnings = {}, channel = channel,
    ref = ref }, Result)
end

local function when(at)
  return at and os.date("!%Y-%m-%d %H:%M:%S UTC", math.floor(at)) or "an earlier run"
end

--- An order the ledger had another version of (or a cancel of): not sent.
-- @param answer the ledger's answer (`at`, `outcome` of the earlier version)
-- @param channel the order's channel
-- @param ref its refCode
-- @return the error (kind "changed", see the module doc)
function M.changed(answer, channel, ref)
  local shown = core.quote(ref or "", 80)
  local msg
  if answer.outcome == "cancelled" then
    msg = "order " .. shown .. " was cancelled on " .. when(answer.at)
      .. "; it is not sent again (force = true sends it anyway)"
  else
    msg = "order " .. shown .. " changed since it was sent on " .. when(answer.at)
      .. "; not sent (amend = true replaces it: DELETE, then POST; force = true sends it anyway)"
  end
  return errors.new({ kind = "changed", retryable = false, attempts = 0, channel = channel, ref = ref,
    at = answer.at, outcome = answer.outcome, message = msg })
end

-- ---------------------------------------------------------- the contract

--- Check what a transport returned against the contract (see the module
-- doc) and classify it: the same check and classifier the scheduler
-- applies in `s:done` (csrc/binding/l_sched.c).
-- @return record, body (string), info (table)
function M.check_response(status, body, info, code)
  local rec = check_reply(status, body, info, code)
  if status == nil or rec.kind == "transport" then return rec, "", {} end
  return rec, body or "", info or {}
end

--- One attempt over a transport: request, contract check, classification.
-- @return record, body, info, seconds taken
function M.attempt(transport, method, url, headers, body)
  local t0 = now()
  local status, rbody, info, code = transport:request(method, url, headers, body)
  local rec, b, i = M.check_response(status, rbody, info, code)
  return rec, b, i, now() - t0
end

return M
