--- `optimizely-offline send FILE…`: stream, validate and send orders.
--
-- Records are read one at a time and fed to `client:send_batch` through an
-- iterator, so memory stays flat: the only per-order state is a small table
-- from batch index to record for the orders in flight, emptied as results
-- arrive. Every record ends up counted exactly once as sent, rejected
-- (input, transform, validation or send error: written to the rejects
-- file), skipped (the transform returned nil) or — after Ctrl-C — not sent
-- (written to the rejects file too, stage "interrupted" when its outcome is
-- unknown, "not_sent" when it never left).
--
-- Ctrl-C: the interpreter raises "interrupted!" at the next Lua
-- instruction. Inside the batch loop `send_batch` catches it and reports
-- what was in flight; inside one of our callbacks (which the batch calls
-- protected) we note it and raise it again once control is back in the
-- batch loop. Then the rest of the input is read again from the last
-- record accounted for, so nothing is left unaccounted.
-- @module optimizely.offline.cli.send
local common = require("optimizely.offline.cli.common")

local M = {}

--- How many failure lines are printed before the rest go only to the
-- rejects file (--verbose prints them all).
M.MAX_PRINTED = 50

--- Adds the `send` command and its options to the argparse parser.
function M.register(parser)
  local cmd = parser:command("send", "Validate and send orders (streamed, concurrent, with retries).")
  common.input_options(cmd)
  common.credential_options(cmd)
  common.output_options(cmd)
  cmd:option("--concurrency", "Requests in flight at once (1..1024).", "8"):argname("<n>")
  cmd:option("--rate", "Send at most this many orders per second."):argname("<orders/s>")
  cmd:option("--max-attempts", "Attempts per order, first one included (default 4)."):argname("<n>")
  cmd:flag("-n --dry-run", "Read, transform, validate and encode; send nothing (no credentials needed).")
  cmd:option("--rejects", "Write orders not sent (with their error) to this NDJSON file; "
    .. "it can be sent again as it is."):argname("<file>")
  cmd:option("--report", "Write a JSON summary (counts, rate, error codes) to this file."):argname("<file>")
end

local function ref_of(payload)
  local o = type(payload) == "table" and payload.order
  local r = type(o) == "table" and o.refCode
  if type(r) == "string" or type(r) == "number" then return tostring(r) end
  return nil
end

local function head(item)
  local ref = ref_of(item.payload)
  local origin = item.rec.origin
  return common.where(item.rec) .. (origin and (" (from " .. origin .. ")") or "") .. ": "
    .. (ref and ("order " .. ref .. ": ") or "")
end

-- The key an error is counted under in the report: the API's code, else
-- the HTTP status, else the kind.
local function error_key(e, stage)
  if type(e) == "table" then
    if e.code then return tostring(e.code) end
    if e.status then return "HTTP " .. tostring(e.status) end
    return tostring(e.kind or stage)
  end
  return stage
end

local function same_path(a, b)
  local function norm(p) return (p:gsub("^%./", ""):gsub("/+", "/")) end
  return norm(a) == norm(b)
end

-- A file name in the current directory that does not exist yet.
local function default_unsent_path()
  local base = "optimizely-offline-unsent-" .. os.date("%Y%m%d-%H%M%S")
  local path, n = base .. ".ndjson", 1
  while true do
    local f = io.open(path, "r")
    if not f then return path end
    f:close()
    n = n + 1
    path = base .. "-" .. n .. ".ndjson"
  end
end

-- A small JSON writer with a fixed key order, so the report reads well.
local function report_json(t, order, indent)
  local cjson = require("cjson")
  local enc = cjson.encode
  cjson = { encode = function(v) return common.unslash(enc(v)) end }
  indent = indent or ""
  local inner = indent .. "  "
  local parts, keys = {}, {}
  if order then
    for _, k in ipairs(order) do if t[k] ~= nil then keys[#keys + 1] = k end end
  else
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
  end
  for _, k in ipairs(keys) do
    local v = t[k]
    local s
    if type(v) == "table" then
      if next(v) == nil then s = "{}"
      elseif #v > 0 then
        local items = {}
        for i, x in ipairs(v) do items[i] = cjson.encode(x) end
        s = "[" .. table.concat(items, ", ") .. "]"
      else
        s = report_json(v, nil, inner)
      end
    else
      s = cjson.encode(v)
    end
    parts[#parts + 1] = inner .. cjson.encode(tostring(k)) .. ": " .. s
  end
  if #parts == 0 then return "{}" end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

local REPORT_ORDER = {
  "command", "dry_run", "files", "started_at", "finished_at", "elapsed_seconds",
  "read", "sent", "valid", "rejected", "skipped", "not_sent", "unknown_outcome",
  "retried", "warnings", "orders_per_second", "rejected_by_stage", "errors",
  "interrupted", "error", "rejects_file", "exit_code",
}

--- Runs a parsed `send` command. @return exit code: 0 all sent, 1 some
-- not sent, 2 usage or configuration error, 130 interrupted
function M.run(args, out, err)
  local ok, res = pcall(common.guard, err, function() return M.send(args, out, err) end)
  if ok then return res end
  if not common.is_interrupt(res) then
    -- e.g. the rejects file cannot be written (disk full): say so, no traceback
    err:write("error: ", tostring(res), "\n")
    return 1
  end
  -- Ctrl-C outside the phases that account for it: before anything was
  -- read, or while the summary was written
  err:write(M.phase == "setup" and "\ninterrupted: nothing was sent\n"
    or "\ninterrupted while writing the summary: the rejects file and report may be incomplete\n")
  return 130
end

--- The command itself (inside `common.guard`). @return exit code
function M.send(args, out, err)
  local core = require("optimizely.offline.core")
  local clock = core.now or os.clock
  local quiet, verbose, dry = args.quiet, args.verbose, args.dry_run
  M.phase = "setup"
  local concurrency = common.int_option(args.concurrency, "concurrency", 1, 1024)
  local rate = common.number_option(args.rate, "rate")
  common.int_option(args.max_attempts, "max-attempts", 1, 100)

  for _, f in ipairs(args.files) do
    for _, o in ipairs({ "rejects", "report" }) do
      if args[o] and f ~= "-" and same_path(args[o], f) then
        common.config_error(("--%s %s is also an input file; write it elsewhere"):format(o, f))
      end
    end
  end

  local transform = common.load_transform(args.transform)
  local client = not dry and common.client(args) or nil
  local rejects = common.rejects(args.rejects)
  -- the report file is opened now: a typo in its path fails before anything is sent
  local report_fh
  if args.report then
    local e
    report_fh, e = io.open(args.report, "w")
    if not report_fh then common.config_error("cannot write the report: " .. tostring(e)) end
  end
  local progress = common.progress(err, quiet, clock, args.files)

  local started_at, t0 = os.time(), clock()
  local st = {
    read = 0, sent = 0, valid = 0, skipped = 0, rejected = 0, not_sent = 0, unknown = 0,
    retried = 0, warnings = 0, printed = 0,
    by_stage = {}, errors = {},
  }

  -- A line on stderr that does not collide with the progress bar.
  local function note(...)
    progress:clear()
    err:write(...)
  end

  local function print_failure(item, e)
    if quiet then return end
    st.printed = st.printed + 1
    if st.printed > M.MAX_PRINTED and not verbose then
      if st.printed == M.MAX_PRINTED + 1 then
        note("(more failures: see the rejects file and the summary; --verbose prints them all)\n")
      end
      return
    end
    if type(e) == "table" and e.kind == "validation" and e.problems then
      -- one line per problem, with its field path
      local h = head(item)
      for _, p in ipairs(e.problems) do
        note(h, p.path ~= "" and (p.path .. ": ") or "", tostring(p.message), "\n")
      end
      if e.truncated then note(h, "(more problems not shown)\n") end
    elseif type(e) == "table" then
      note(head(item), tostring(e), "\n")
    else
      note(tostring(e or item.message), "\n")
    end
  end

  -- The default rejects file is made only when something is not sent.
  local function reject_writer()
    if not rejects and not dry then
      rejects = common.rejects(default_unsent_path(), { lazy = true })
      rejects.default = true
    end
    return rejects
  end

  --- Counts and records one order that was not sent.
  local function reject(item, stage, e, quietly)
    item.stage = stage
    local w = reject_writer()
    if w then w.add(item, e or item.message) end
    st.by_stage[stage] = (st.by_stage[stage] or 0) + 1
    if stage == "interrupted" or stage == "unknown" then
      st.unknown = st.unknown + 1
    elseif stage == "not_sent" then
      st.not_sent = st.not_sent + 1
    else
      st.rejected = st.rejected + 1
      local k = error_key(e, stage)
      st.errors[k] = (st.errors[k] or 0) + 1
    end
    if not quietly then print_failure(item, e) end
  end

  local function done() return st.sent + st.valid + st.rejected end
  local function show_progress(force) progress:update(done(), st.rejected, force) end

  -- Records that are not payloads: rejected at once, or skipped.
  local function other(item)
    if item.skipped then
      st.skipped = st.skipped + 1
      if verbose then note(common.where(item.rec), ": skipped by the transform\n") end
    else
      reject(item, item.stage, item.message)
    end
  end

  -- pos: the last record accounted for (file number, record index), the
  -- place to read on from after an interruption.
  local pos = { fi = 1, after = 0 }
  local function account(item)
    if item.rec and item.rec.line == 0 and (item.rec.index or 0) == 0 and item.stage == "input" then
      pos.fi, pos.after = item.fi + 1, 0 -- the file could not be opened: it is done
    else
      pos.fi, pos.after = item.fi, item.rec.index or 0
    end
  end

  local records = common.records(args, transform, progress)
  local inflight = {}  -- batch index -> item, only until its result arrives
  local nbatch = 0
  local stop = false   -- Ctrl-C was caught inside one of our callbacks
  local summary
  local failure        -- a non-interrupt error that ended the batch

  ---------------------------------------------------------------- phase 1
  local function source()
    while true do
      if stop then error("interrupted!", 0) end
      local item = records()
      if item == nil then
        -- every record read ends up sent or rejected, but the skipped ones
        progress.total = st.read - st.skipped
        return nil
      end
      st.read = st.read + 1
      if item.payload then
        nbatch = nbatch + 1
        inflight[nbatch] = item
        account(item)
        return item.payload
      end
      other(item)
      account(item)
    end
  end

  local function on_result(i, res, e)
    local item = inflight[i]
    if not item then return end
    if res then
      st.sent = st.sent + 1
      inflight[i] = nil
      local w = res.warnings
      if w and #w > 0 then st.warnings = st.warnings + #w end
      if verbose then
        out:write(head(item), "sent (HTTP ", tostring(res.status), ", ", tostring(res.attempts),
          res.attempts == 1 and " attempt" or " attempts", ")\n")
        for _, x in ipairs(w or {}) do
          out:write("    warning: ", x.path and (x.path .. ": ") or (x.code and (x.code .. ": ")) or "",
            tostring(x.message), "\n")
        end
      end
    else
      local stage = (type(e) == "table" and e.kind == "validation" and (e.attempts or 0) == 0)
        and "validation" or "send"
      reject(item, stage, e)
      inflight[i] = nil
    end
  end

  -- Our callbacks run inside the batch's pcall, and a batch may keep an
  -- error raised there as a callback error: a Ctrl-C landing in one could be
  -- swallowed. Note it, and raise it again with a hook at the first
  -- instruction that runs outside every callback (back in the batch loop).
  local guarded = {}
  local function redeliver()
    stop = true
    debug.sethook(function()
      for level = 2, 200 do
        local info = debug.getinfo(level, "f")
        if not info then break end
        if guarded[info.func] then return end
      end
      debug.sethook()
      error("interrupted!", 0)
    end, "", 1)
  end
  local function protect(fn)
    local g = function(...)
      local ok, e = pcall(fn, ...)
      if not ok then
        if common.is_interrupt(e) then redeliver() else error(e, 0) end
      end
    end
    guarded[g] = true
    return g
  end

  local function on_progress(s)
    st.retried = s.retried or st.retried
    for _, c in ipairs(s.callback_errors or {}) do
      -- a Ctrl-C that hit our callback before its own pcall
      if common.is_interrupt(c.message) and not stop then redeliver() end
    end
    show_progress(false)
  end

  local function run_batch()
    summary = client:send_batch(source, {
      concurrency = concurrency, rate = rate,
      on_result = protect(on_result), progress = protect(on_progress),
    })
    debug.sethook()
    st.retried = summary.retried or st.retried
    -- the batch stopped early on an error (not Ctrl-C): account for the rest
    if summary.error and not common.is_interrupt(summary.error) then
      failure = summary.error
    end
    for _, c in ipairs(summary.callback_errors or {}) do
      if common.is_interrupt(c.message) then stop = true
      elseif not failure then failure = "internal error while recording a result: " .. c.message end
    end
    return summary.interrupted or stop or failure ~= nil
  end

  local function run_dry()
    local encode = require("optimizely.offline").encode
    for item in records do
      st.read = st.read + 1
      if item.payload then
        local json, e = encode(item.payload)
        if json then
          st.valid = st.valid + 1
          if e and #e > 0 then st.warnings = st.warnings + #e end
          if verbose then out:write(head(item), "valid (", tostring(#json), " bytes)\n") end
        else
          reject(item, "validation", e)
        end
      else
        other(item)
      end
      account(item)
      if st.read % 256 == 0 then show_progress(false) end
    end
  end

  M.phase = "send"
  local ok, perr = pcall(dry and run_dry or run_batch)
  debug.sethook()
  local stopped = false -- the run ended before the end of the input
  if not ok then
    if not common.is_interrupt(perr) then
      if getmetatable(perr) == common.ConfigError then error(perr, 0) end
      failure = tostring(perr)
    end
    stopped = true
  elseif not dry then
    stopped = perr and true or false
  end
  local interrupted = stopped and not failure
  if not stopped then progress.total = st.read - st.skipped end
  progress.done, progress.failed = done(), st.rejected
  progress:finish()

  ---------------------------------------------------------------- phase 2
  -- Account for everything not confirmed sent: what was in flight, then the
  -- rest of the input (read again from the last record accounted for).
  local leftovers = false
  for _ in pairs(inflight) do leftovers = true; break end
  local lost -- where the input stops being accounted for, if the rejects file broke
  local function phase2()
    local unknown = {}
    for _, i in ipairs(summary and summary.unknown or {}) do unknown[i] = true end
    local idx = {}
    for i, item in pairs(inflight) do
      idx[#idx + 1] = i
      if item.fi > pos.fi or (item.fi == pos.fi and (item.rec.index or 0) > pos.after) then
        pos.fi, pos.after = item.fi, item.rec.index or 0
      end
    end
    table.sort(idx)
    if stopped then
      note(interrupted and "interrupted" or "stopped by an error",
        ": accounting for the orders not sent (Ctrl-C again aborts)\n")
    end
    for _, i in ipairs(idx) do
      local stage, msg = "interrupted", unknown[i]
        and "interrupted in flight or awaiting a retry: the endpoint may or may not have it"
        or "interrupted before its result was known"
      if not stopped then stage, msg = "unknown", "no result was recorded for this order" end
      reject(inflight[i], stage, { kind = stage, message = msg }, true)
      inflight[i] = nil
    end
    if stopped then
      local why = interrupted and "not sent: the run was interrupted" or "not sent: the run stopped on an error"
      local rest = records
      if args.files[pos.fi] ~= "-" then
        rest = common.records(args, transform, nil, pos)
      end
      for item in rest do
        st.read = st.read + 1
        if item.payload then
          reject(item, "not_sent", { kind = "not_sent", message = why }, true)
        else
          other(item)
        end
      end
    end
  end
  if (stopped or leftovers) and not dry then
    local ok2, e2 = pcall(phase2)
    if not ok2 then
      if common.is_interrupt(e2) then error(e2, 0) end
      lost = ("record %d of %s"):format(pos.after + 1, tostring(args.files[pos.fi] or "the input"))
      e2 = tostring(e2)
      if not (failure and failure:find(e2, 1, true)) then
        failure = (failure and (failure .. "; ") or "") .. e2
      end
    end
  elseif stopped and dry then
    note("interrupted: nothing was sent (dry run); the input was not read to the end\n")
  end
  if rejects then
    local ok3, e3 = pcall(rejects.close)
    if not ok3 then failure = (failure and (failure .. "; ") or "") .. tostring(e3) end
  end

  ---------------------------------------------------------------- report
  local elapsed = clock() - t0
  local unsent = st.rejected + st.not_sent + st.unknown
  local code = 0
  if interrupted then code = 130
  elseif unsent > 0 or failure then code = 1 end

  if args.report then
    local files = {}
    for i, f in ipairs(args.files) do files[i] = f end
    local rep = {
      command = "send", dry_run = dry and true or false, files = files,
      started_at = os.date("!%Y-%m-%dT%H:%M:%SZ", started_at),
      finished_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
      elapsed_seconds = math.floor(elapsed * 1000 + 0.5) / 1000,
      read = st.read, sent = st.sent, valid = dry and st.valid or nil,
      rejected = st.rejected, skipped = st.skipped,
      not_sent = st.not_sent, unknown_outcome = st.unknown,
      retried = st.retried, warnings = st.warnings,
      orders_per_second = elapsed > 0 and math.floor(((dry and st.valid or st.sent) / elapsed) * 10 + 0.5) / 10 or 0,
      rejected_by_stage = st.by_stage, errors = st.errors,
      interrupted = interrupted, error = failure,
      rejects_file = rejects and (rejects.count > 0 or not rejects.default) and rejects.path or nil,
      exit_code = code,
    }
    local okw, e = report_fh:write(report_json(rep, REPORT_ORDER), "\n")
    if okw then okw, e = report_fh:close() else report_fh:close() end
    if not okw then
      note("error: cannot write the report: ", tostring(e), "\n")
      if code == 0 then code = 1 end
    end
  end

  if failure then note("error: ", failure, "\n") end
  if lost then
    note("error: the orders not sent could not all be written down; nothing from ", lost,
      " on was sent, and the orders in flight may or may not have arrived\n")
  end
  local function plural(n, w) return n .. " " .. w .. (n == 1 and "" or "s") end
  if not quiet or stopped then
    local s = {}
    if dry then
      s[#s + 1] = ("dry run: %s valid, nothing sent"):format(plural(st.valid, "order"))
    else
      s[#s + 1] = ("sent %s in %.2f s (%.1f orders/s)"):format(plural(st.sent, "order"), elapsed,
        elapsed > 0 and st.sent / elapsed or 0)
    end
    if st.rejected > 0 then s[#s + 1] = st.rejected .. " rejected" end
    if st.unknown > 0 then
      s[#s + 1] = st.unknown .. (stopped and " interrupted in flight" or " without a result") .. " (outcome unknown)"
    end
    if st.not_sent > 0 then s[#s + 1] = st.not_sent .. " not sent" end
    if st.skipped > 0 then s[#s + 1] = st.skipped .. " skipped by the transform" end
    if st.retried > 0 then s[#s + 1] = st.retried .. (st.retried == 1 and " retry" or " retries") end
    note(table.concat(s, ", "), "\n")
    if next(st.errors) then
      local keys = {}
      for k in pairs(st.errors) do keys[#keys + 1] = k end
      table.sort(keys, function(a, b)
        if st.errors[a] ~= st.errors[b] then return st.errors[a] > st.errors[b] end
        return a < b
      end)
      local parts = {}
      for _, k in ipairs(keys) do parts[#parts + 1] = k .. " " .. st.errors[k] end
      note("errors: ", table.concat(parts, ", "), "\n")
    end
  end
  -- the default file is named even with --quiet: nobody would find it otherwise
  if rejects and rejects.count > 0 and (not quiet or stopped or rejects.default) then
    note(("%s %s %s (send %s again with: optimizely-offline send %s)\n"):format(
      plural(rejects.count, "order"), rejects.default and "not sent, saved to" or "written to",
      rejects.path, rejects.count == 1 and "it" or "them", rejects.path))
  end
  if args.report and not quiet then note("report: ", args.report, "\n") end
  if client then client:close() end
  return code
end

return M
