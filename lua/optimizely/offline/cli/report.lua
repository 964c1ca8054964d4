--- The end of a `send` run: the JSON report (`--report`), the metrics
-- file (`--metrics`) and the summary on standard error. They read the
-- run's one tally (`run.st`); nothing here counts again.
--
-- Every order read ends in exactly one state, so
--
--     sent + skipped + changed + rejected + not_sent + unknown_outcome = read
--
-- (`valid` takes the place of `sent` in a dry run). `skipped` (already
-- sent) and `changed` (sent before with other content) come from the
-- delivery ledger and stay 0 until it is on; `unknown_outcome` counts the
-- orders still in flight when a stop's grace period ran out; `not_sent`
-- those never tried (a stop, refused credentials). Records the transform
-- returned nil for are not orders: they are counted in `filtered`, outside
-- `read`.
--
-- The report and the summary name where the orders went: the environment
-- (`uat` when none was given) or the base URL, the URL, the site and the
-- channels — a production run against UAT must not look like success.
-- @module optimizely.offline.cli.report
local core = require("optimizely.offline.core")
local common = require("optimizely.offline.cli.common")
local stop = require("optimizely.offline.cli.stop")
local config = require("optimizely.offline.cli.config")
local metrics = require("optimizely.offline.metrics")

local M = {}

--- The report's keys, in the order they are written (the rest sorted after).
M.ORDER = {
  "command", "dry_run", "files", "endpoint", "ledger", "started_at", "finished_at", "elapsed_seconds",
  "read", "sent", "valid", "skipped", "changed", "rejected", "not_sent", "unknown_outcome", "filtered",
  "retried", "warnings", "orders_per_second", "skipped_by_reason",
  "rejected_by_stage", "not_sent_by_reason", "errors", "problems",
  "warning_kinds", "latency_seconds", "check_failed", "interrupted", "signal", "credentials_refused", "error",
  "rejects_file", "exit_code",
}

--- "1 order", "3 orders": a count and its noun.
-- @param n the count
-- @param w the noun (singular)
local function plural(n, w) return n .. " " .. w .. (n == 1 and "" or "s") end
M.plural = plural

-- ------------------------------------------------------------- endpoint

--- Where a run sends: `{env = "uat" | nil, base_url = url | nil, url =
-- the orders URL, site, channels = {names}}` (the run's channel first),
-- or nil without a client (a dry run).
-- @param args the parsed arguments
-- @param client the run's client
function M.endpoint(args, client)
  if not client then return nil end
  local ok, conf = pcall(config.client_config, args)
  if not ok then return nil end
  local names, seen, extra = {}, {}, {}
  for n in pairs(conf.tokens or {}) do extra[#extra + 1] = n end
  table.sort(extra)
  table.insert(extra, 1, conf.channel)
  for _, n in ipairs(extra) do
    if not seen[n] then seen[n], names[#names + 1] = true, n end
  end
  return { env = (not conf.base_url) and (conf.env or "uat") or nil, base_url = conf.base_url,
           url = client:url(), site = conf.site, channels = names }
end

--- The endpoint as one line: "to uat (https://…): site acme, channel store".
function M.endpoint_line(ep)
  local where = ep.env and (ep.env .. " (" .. common.label(ep.url) .. ")") or common.label(ep.url)
  local labels = {}
  for i, n in ipairs(ep.channels) do labels[i] = common.label(n) end
  return ("to %s: site %s, %s %s"):format(where, common.label(ep.site or "?"),
    #labels == 1 and "channel" or "channels", #labels > 0 and table.concat(labels, ", ") or "-")
end

-- ---------------------------------------------------------------- report

--- The request latency of the run: `{p50, p90, p99}` in seconds (estimated
-- from the client's latency histogram), or nil when nothing was sent.
function M.latency(client)
  if not client then return nil end
  local q = metrics.percentiles(client:metrics().latency, { 0.5, 0.9, 0.99 })
  if q[1] == nil then return nil end
  local function ms(x) return math.floor(x * 1e6 + 0.5) / 1e6 end
  return { p50 = ms(q[1]), p90 = ms(q[2]), p99 = ms(q[3]) }
end

--- The report of a run as a table (see the module's accounting).
-- @param run the `send` run
-- @param code its exit code
function M.table(run, code)
  local st, elapsed = run.st, run.clock() - (run.t0 or run.clock())
  local files = {}
  for i, f in ipairs(run.args.files) do files[i] = f end
  local r = run.rejects
  local done = run.dry and st.valid or st.sent
  return {
    command = "send", dry_run = run.dry and true or false, files = files, endpoint = run.endpoint,
    ledger = run.led and run.led:report_value(),
    started_at = os.date("!%Y-%m-%dT%H:%M:%SZ", run.started_at or os.time()),
    finished_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    elapsed_seconds = math.floor(elapsed * 1000 + 0.5) / 1000,
    read = st.read, sent = st.sent, valid = run.dry and st.valid or nil,
    skipped = st.skipped, changed = st.changed, rejected = st.rejected, not_sent = st.not_sent,
    unknown_outcome = st.unknown, filtered = st.filtered,
    retried = st.retried, warnings = st.warnings,
    orders_per_second = elapsed > 0 and math.floor((done / elapsed) * 10 + 0.5) / 10 or 0,
    skipped_by_reason = st.skipped_by, rejected_by_stage = st.by_stage, not_sent_by_reason = st.not_sent_by,
    errors = st.errors,
    problems = run.failures.items > 0 and run.failures:list() or nil,
    warning_kinds = run.warned.items > 0 and run.warned:list() or nil,
    latency_seconds = M.latency(run.client),
    check_failed = run.checked and run.checked.failed > 0 or nil,
    interrupted = run.interrupted or false, signal = run.interrupted and (stop.signal()) or nil,
    credentials_refused = run.refused and tostring(run.refused) or nil,
    error = run.failure, rejects_file = r and r.count > 0 and r.path or nil,
    exit_code = code,
  }
end

-- Writes `text` to an output of the run and puts it in place; a failure
-- is said on stderr and makes a 0 exit code 1.
local function put(run, sink, text, what, code)
  local ok, e = pcall(function() sink:write(text); sink:close() end)
  if ok then return code end
  sink:abort()
  run:note("error: cannot write ", what, ": ", tostring(e))
  return code == 0 and 1 or code
end

--- Writes the JSON report when the run was asked for one (the report
-- option). The file is private (0600) and appears only when complete.
-- @param run the `send` run (its `report_sink` is the open file)
-- @param code the run's exit code so far
-- @return the exit code: `code`, or 1 when the report could not be written
--   (said on stderr)
function M.write(run, code)
  if not run.report_sink then return code end
  local json = core.json_encode(M.table(run, code), { first = M.ORDER, sort = true, indent = 2 })
  return put(run, run.report_sink, json .. "\n", "the report", code)
end

--- Writes the metrics file when the run was asked for one (the metrics
-- option): the Prometheus text of the run's client (requests, orders sent
-- and failed by kind/status/code/channel, the latency histogram; all zero
-- in a dry run). Private (0600), replaced only when complete.
-- @param run the `send` run (its `metrics_sink` is the open file)
-- @param code the run's exit code so far
-- @return the exit code: `code`, or 1 when the file could not be written
function M.write_metrics(run, code)
  if not run.metrics_sink then return code end
  return put(run, run.metrics_sink, metrics.prometheus(run.client or metrics.empty()), "the metrics file", code)
end

-- --------------------------------------------------------------- summary

--- The skipped orders by reason: {"12 already sent", "2 in flight in
-- another run"}, the most frequent first.
-- @param st the run's tally
function M.skipped_parts(st)
  local by, keys, parts = st.skipped_by or {}, {}, {}
  for k in pairs(by) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if by[a] ~= by[b] then return by[a] > by[b] end
    return a < b
  end)
  local counted = 0
  for _, k in ipairs(keys) do
    counted = counted + by[k]
    parts[#parts + 1] = by[k] .. " " .. (M.SKIP_WORDS[k] or common.clean(k, 60))
  end
  if st.skipped > counted then parts[#parts + 1] = (st.skipped - counted) .. " already sent" end
  return parts
end

--- How the summary says a reason an order was skipped.
M.SKIP_WORDS = { already_sent = "already sent", in_flight = "in flight in another run" }

--- "sent 3 orders in 0.12 s (25.0 orders/s), 1 rejected, ..."
function M.summary_line(run)
  local st, elapsed = run.st, run.clock() - run.t0
  local s = {}
  if run.dry then
    s[1] = ("dry run: %s valid, nothing sent"):format(plural(st.valid, "order"))
  else
    s[1] = ("sent %s in %.2f s (%.1f orders/s)"):format(plural(st.sent, "order"), elapsed,
      elapsed > 0 and st.sent / elapsed or 0)
  end
  for _, part in ipairs(M.skipped_parts(st)) do s[#s + 1] = part end
  if st.changed > 0 then s[#s + 1] = st.changed .. " changed since sent (not sent)" end
  if st.rejected > 0 then s[#s + 1] = st.rejected .. " rejected" end
  if st.unknown > 0 then
    s[#s + 1] = st.unknown .. (run.stopped and " interrupted in flight" or " without a result") .. " (outcome unknown)"
  end
  if st.not_sent > 0 then s[#s + 1] = st.not_sent .. " not sent" end
  if st.filtered > 0 then s[#s + 1] = st.filtered .. " skipped by the transform" end
  if st.retried > 0 then s[#s + 1] = ("%d %s"):format(st.retried, st.retried == 1 and "retry" or "retries") end
  if st.warnings > 0 then s[#s + 1] = plural(st.warnings, "warning") end
  return table.concat(s, ", ")
end

--- "errors: SandboxFault 2, validation 1" (most frequent first), or nil.
function M.errors_line(st)
  local errs, keys, parts = st.errors, {}, {}
  for k in pairs(errs) do keys[#keys + 1] = k end
  if #keys == 0 then return nil end
  table.sort(keys, function(a, b)
    if errs[a] ~= errs[b] then return errs[a] > errs[b] end
    return a < b
  end)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. " " .. errs[k] end
  return "errors: " .. table.concat(parts, ", ")
end

-- The lines that say why the run ended early or failed as a whole.
local function trouble(run)
  if run.failure then run:note("error: ", run.failure) end
  if run.lost then
    run:note("error: the orders not sent could not all be written down; nothing from ", run.lost,
      " on was sent, and the orders in flight may or may not have arrived")
  end
  if run.refused then
    run:note("error: the credentials were refused (", tostring(run.refused), "): ",
      plural(run.st.not_sent_by.credentials or 0, "order"), " not tried")
  end
end

--- The end of a run on stderr: errors always; with -q nothing else but
-- where the orders not sent are.
-- @param run the `send` run
function M.summary(run)
  trouble(run)
  if not run.quiet or run.stopped then
    run:note(M.summary_line(run))
    if run.endpoint then run:note(M.endpoint_line(run.endpoint)) end
    if run.led then run:note(run.led:line()) end
    local el = M.errors_line(run.st)
    if el then run:note(el) end
    for _, l in ipairs(run.failures:lines("failed orders by problem:")) do run:note(l) end
    for _, l in ipairs(run.warned:lines("warnings by kind:")) do run:note(l) end
  end
  local r = run.rejects
  -- the default file is named even with --quiet: nobody would find it otherwise
  if r and r.count > 0 and (not run.quiet or run.stopped or r.default) then
    run:note(("%s %s %s (send %s again with: optimizely-offline send %s)"):format(
      plural(r.count, "order"), r.default and "not sent, saved to" or "written to",
      common.label(r.path), r.count == 1 and "it" or "them", common.label(r.path)))
  end
  if run.args.report and not run.quiet then run:note("report: ", common.label(run.args.report)) end
end

return M
