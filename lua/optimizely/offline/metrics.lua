--- Delivery metrics: the plain table every source returns, its sum over
-- several sources, latency percentiles, and the Prometheus text exposition
-- format (0.0.4).
--
--     local metrics = require("optimizely.offline.metrics")
--     local t = client:metrics()           -- or queue:metrics(), an nginx queue's
--     print(t.sent, t.failed, metrics.percentiles(t.latency, { 0.5, 0.99 })[2])
--     io.write(metrics.prometheus(client, queue))
--
-- The counting itself happens once, in the C core (csrc/delivery/metrics.c): the
-- scheduler (csrc/delivery/sched.c) counts for every driver — send_batch, the
-- queue's thread, client:send — and the nginx queue through the same
-- struct (core.metrics_new). This module only reads, sums and writes.
--
-- **The table** (`client:metrics()`, `queue:metrics()`, an nginx queue's
-- `metrics()`, `M.of(source)`): counters since the source was made (they
-- only grow), then, for queues, gauges (values now):
--
--   * `queued` orders accepted for delivery; `sent` acknowledged by the
--     endpoint; `failed` given up (after the last attempt, after refused
--     credentials, or dropped at shutdown); `dead` of those, the ones
--     rejected or out of attempts/age (a queue's dead letters); `invalid`
--     refused by validation before any request; `retried` attempts scheduled
--     again; `throttled` 429 answers; `requests` HTTP requests made;
--     `bytes_sent` request body bytes;
--   * `latency = {bounds, counts, sum, count}`: a histogram of request
--     durations in seconds, `bounds` the upper bounds of the fixed buckets
--     (5 ms … 30 s, `M.BOUNDS`), `counts` per bucket, not cumulative, with
--     one more for `+Inf`;
--   * `failures = {{kind, status?, code?, channel?, n}, ...}`: `failed` by
--     its label (error kind, HTTP status, the API's error code, channel);
--     `failures_unlabelled` those beyond 32 distinct labels (in a shared
--     dict, beyond `SHM_FAILURE_SERIES` series);
--   * `channels = {[name] = {sent, failed}}`;
--   * the ledger (`ledger =` on a send, a batch or a queue): `skipped =
--     {[reason] = n}` orders not sent because the ledger had them, by
--     reason (`already_sent`: acknowledged before with the same bytes;
--     `in_flight`: another run or process holds it now; `M.SKIP_REASONS`),
--     and `changed` orders not sent because the ledger had another version
--     of them, or their cancel;
--   * queues: `dropped = {[reason] = n}` orders refused or lost, by reason
--     (`full`, `invalid`, `config`, `closed`, `shutdown`, a spool error
--     kind); `unknown` orders in flight when an nginx worker's shutdown
--     grace ended (the endpoint may or may not have them; not in
--     `dropped`); `callback_errors`, `storage_errors`;
--   * queue gauges: `depth` (orders waiting: queued or waiting for a
--     retry, not in flight), `in_flight`, `paused = {throttled = 0|1,
--     credentials = 0|1}` and, with a spool, `spool = {orders, bytes, dead}`
--     (orders queued in it, their bytes, dead letters kept).
--
-- Missing keys count as zero everywhere here.
--
-- **Label values** (`kind`, `code`, `channel`, a drop `reason`) are only
-- ever an allow-listed shape, 1 to 40 of `[A-Za-z0-9_.-]`; anything else
-- (a code with a space, a control byte, non-ASCII text, or longer) is
-- counted under `other`, and so is a code that echoes a site token: what
-- an endpoint answers can neither break the text nor leak a secret into it.
-- The C core checks each label as it counts (`core.metric_label`); the
-- tables merged, flattened or read back here are checked again.
-- @module optimizely.offline.metrics
local core = require("optimizely.offline.core")

local M = {}

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local floor, huge = math.floor, math.huge
local concat, sort = table.concat, table.sort
local fmt = string.format

--- The latency buckets' upper bounds in seconds (the C core's, `+Inf`
-- implied after the last).
M.BOUNDS = core.metrics_new():get().latency.bounds

local COUNTERS = { "queued", "sent", "failed", "dead", "invalid", "changed", "retried", "throttled", "requests",
  "bytes_sent", "failures_unlabelled", "callback_errors", "storage_errors", "unknown" }
M.COUNTERS = COUNTERS

--- The reasons of `skipped`, the label values of
-- `optimizely_offline_orders_skipped_total` (the C core's list: a reason
-- not in it is counted as `other`).
M.SKIP_REASONS = core.SKIP_REASONS
local SKIP = {}
for _, r in ipairs(M.SKIP_REASONS) do SKIP[r] = true end

-- A skip reason as it may be counted: one of SKIP_REASONS, else "other".
local function skip_reason(r)
  return SKIP[r] and r or "other"
end

local Null = {}
Null.__index = function() return function() end end

--- A metrics object that counts nothing (`metrics = false` in a client
-- config): the methods of `core.metrics_new()` as no-ops, `get()` zeros.
function M.null()
  return setmetatable({ get = function() return M.empty() end }, Null)
end

--- A metrics table with every counter at zero (no gauges).
function M.empty()
  local t = { latency = { bounds = M.BOUNDS, counts = {}, sum = 0, count = 0 }, failures = {},
    channels = {}, dropped = {}, skipped = {} }
  for _, k in ipairs(COUNTERS) do t[k] = 0 end
  for i = 1, #M.BOUNDS + 1 do t.latency.counts[i] = 0 end
  return t
end

local function num(v) return type(v) == "number" and v or 0 end

local metric_label = core.metric_label

--- A label value as it may be shown (see the module doc): `v` itself when
-- it is 1 to 40 of `[A-Za-z0-9_.-]`, else "other"; nil for nil or "".
function M.label(v)
  if v == nil then return nil end
  v = metric_label(tostring(v))
  return v ~= "" and v or nil
end
local label = M.label

local function status_of(v)
  return type(v) == "number" and v == floor(v) and v >= 100 and v <= 999 and v or nil
end

-- A failure label, every value checked.
local function fail_label(f)
  return { kind = label(f.kind) or "unknown", status = status_of(f.status), code = label(f.code),
    channel = label(f.channel), n = num(f.n) }
end

local function fail_key(f)
  return (f.kind or "unknown") .. "\31" .. (f.status or 0) .. "\31" .. (f.code or "") .. "\31" .. (f.channel or "")
end

local function add_gauges(into, t)
  if t.depth == nil and t.in_flight == nil and t.spool == nil and t.paused == nil then return end
  into.depth = num(into.depth) + num(t.depth)
  into.in_flight = num(into.in_flight) + num(t.in_flight)
  if type(t.paused) == "table" then
    into.paused = into.paused or { throttled = 0, credentials = 0 }
    for k, v in pairs(t.paused) do into.paused[k] = num(into.paused[k]) + num(v) end
  end
  if type(t.spool) == "table" then
    into.spool = into.spool or { orders = 0, bytes = 0, dead = 0 }
    for k, v in pairs(t.spool) do into.spool[k] = num(into.spool[k]) + num(v) end
  end
end

--- Add the metrics table `t` into `into` (counters, histogram, labels and
-- gauges are summed).
-- @return into
function M.merge(into, t)
  for _, k in ipairs(COUNTERS) do into[k] = num(into[k]) + num(t[k]) end
  local lat, il = t.latency, into.latency
  if type(lat) == "table" then
    for i = 1, #M.BOUNDS + 1 do il.counts[i] = num(il.counts[i]) + num(lat.counts and lat.counts[i]) end
    il.sum, il.count = il.sum + num(lat.sum), il.count + num(lat.count)
  end
  local index = {}
  for i, f in ipairs(into.failures) do index[fail_key(f)] = i end
  for _, f in ipairs(t.failures or {}) do
    f = fail_label(f)
    local k = fail_key(f)
    local i = index[k]
    if i then
      into.failures[i].n = into.failures[i].n + f.n
    else
      into.failures[#into.failures + 1] = f
      index[k] = #into.failures
    end
  end
  for name, c in pairs(t.channels or {}) do
    name = label(name)
    if name and type(c) == "table" then
      local ic = into.channels[name] or { sent = 0, failed = 0 }
      ic.sent, ic.failed = ic.sent + num(c.sent), ic.failed + num(c.failed)
      into.channels[name] = ic
    end
  end
  for reason, n in pairs(t.dropped or {}) do
    reason = label(reason) or "other"
    into.dropped[reason] = num(into.dropped[reason]) + num(n)
  end
  into.skipped = into.skipped or {}
  for reason, n in pairs(t.skipped or {}) do
    reason = skip_reason(reason)
    into.skipped[reason] = num(into.skipped[reason]) + num(n)
  end
  add_gauges(into, t)
  return into
end

--- The sum of metrics tables.
-- @return a new table
function M.sum(...)
  local out = M.empty()
  for i = 1, select("#", ...) do M.merge(out, (select(i, ...))) end
  return out
end

local function is_shared_dict(x)
  -- an ngx.shared.DICT: a table whose metatable has get_keys and incr
  return type(x) == "table" and type(x.get_keys) == "function" and type(x.incr) == "function"
end

--- The metrics table of a source: a client, a queue, an nginx queue (any
-- object with a `metrics` method), an `ngx.shared.DICT` the nginx queues
-- aggregate into (`metrics_shm`), or a metrics table (returned as it is).
function M.of(source)
  local t = type(source)
  if is_shared_dict(source) then return M.from_shm(source) end
  if (t == "table" or t == "userdata") and type(source.metrics) == "function" then
    return source:metrics()
  end
  if t == "table" then return source end
  error("optimizely.offline.metrics: not a metrics source: " .. t, 3)
end

--- Estimated quantiles of a latency histogram, as Prometheus'
-- `histogram_quantile` computes them: linear within the bucket that holds
-- the rank; a rank in the `+Inf` bucket gives the highest finite bound.
-- @param hist a `latency` table (`{bounds, counts}`)
-- @param qs a list of quantiles in [0, 1], e.g. `{0.5, 0.9, 0.99}`
-- @return a list of seconds in the order of `qs` (nil entries when the
--   histogram is empty); raises on a quantile outside [0, 1]
function M.percentiles(hist, qs)
  local bounds, counts = hist.bounds or M.BOUNDS, hist.counts or {}
  local total = 0
  for i = 1, #bounds + 1 do total = total + num(counts[i]) end
  local out = {}
  for j, q in ipairs(qs) do
    if type(q) ~= "number" or q < 0 or q > 1 then
      error("optimizely.offline.metrics: percentiles: quantiles must be numbers in [0, 1]", 2)
    end
    if total > 0 then
      local rank, cum = q * total, 0
      for i = 1, #bounds + 1 do
        local c = num(counts[i])
        if cum + c >= rank and c > 0 then
          if i > #bounds then out[j] = bounds[#bounds] break end
          local lo = i == 1 and 0 or bounds[i - 1]
          out[j] = lo + (bounds[i] - lo) * ((rank - cum) / c)
          break
        end
        cum = cum + c
      end
      out[j] = out[j] or bounds[#bounds]
    end
  end
  return out
end

-- -------------------------------------------------------------------------
-- The shared dict (nginx: every worker adds its deltas)

local PREFIX = "m:"
local SEP = "\31"

--- The counters of a metrics table as one flat `{key = number}` map (the
-- keys of the shared dict, without their prefix). Gauges are not in it.
function M.flatten(t)
  local out = {}
  for _, k in ipairs(COUNTERS) do
    local v = num(t[k])
    if v ~= 0 then out[k] = v end
  end
  local lat = t.latency
  if type(lat) == "table" then
    for i = 1, #M.BOUNDS + 1 do
      local v = num(lat.counts and lat.counts[i])
      if v ~= 0 then out["lat" .. SEP .. i] = v end
    end
    if num(lat.count) ~= 0 then out["lat" .. SEP .. "sum"], out["lat" .. SEP .. "count"] = num(lat.sum), lat.count end
  end
  for _, f in ipairs(t.failures or {}) do
    local k = "fail" .. SEP .. fail_key(fail_label(f))
    out[k] = num(out[k]) + num(f.n)
  end
  for name, c in pairs(t.channels or {}) do
    name = label(name)
    if name and type(c) == "table" then
      for _, what in ipairs({ "sent", "failed" }) do
        local k = "ch" .. SEP .. name .. SEP .. what
        if num(c[what]) ~= 0 then out[k] = num(out[k]) + c[what] end
      end
    end
  end
  for reason, n in pairs(t.dropped or {}) do
    local k = "drop" .. SEP .. (label(reason) or "other")
    if num(n) ~= 0 then out[k] = num(out[k]) + n end
  end
  for reason, n in pairs(t.skipped or {}) do
    local k = "skip" .. SEP .. skip_reason(reason)
    if num(n) ~= 0 then out[k] = num(out[k]) + n end
  end
  return out
end

local function split(s)
  local parts = {}
  for p in (s .. SEP):gmatch("(.-)" .. SEP) do parts[#parts + 1] = p end
  return parts
end

--- The inverse of `flatten`.
-- @return a metrics table
function M.unflatten(flat)
  local t = M.empty()
  local counter = {}
  for _, k in ipairs(COUNTERS) do counter[k] = true end
  for k, v in pairs(flat) do
    if counter[k] then
      t[k] = v
    else
      local p = split(k)
      if p[1] == "lat" then
        if p[2] == "sum" then t.latency.sum = v
        elseif p[2] == "count" then t.latency.count = v
        elseif tonumber(p[2]) then t.latency.counts[tonumber(p[2])] = v end
      elseif p[1] == "fail" then -- (a key of another shape: its values are not labels)
        local f = #p == 5 and fail_label({ kind = p[2], status = tonumber(p[3]), code = p[4], channel = p[5] })
          or { kind = "other" }
        f.n = v
        t.failures[#t.failures + 1] = f
      elseif p[1] == "ch" and #p == 3 and (p[3] == "sent" or p[3] == "failed") then
        local name = label(p[2]) or "other"
        local c = t.channels[name] or { sent = 0, failed = 0 }
        c[p[3]] = c[p[3]] + v
        t.channels[name] = c
      elseif p[1] == "drop" then
        local reason = #p == 2 and label(p[2]) or "other"
        t.dropped[reason] = num(t.dropped[reason]) + v
      elseif p[1] == "skip" then
        local reason = skip_reason(p[2])
        t.skipped[reason] = num(t.skipped[reason]) + v
      end
    end
  end
  sort(t.failures, function(a, b) return fail_key(a) < fail_key(b) end)
  return t
end

--- A publisher of one process's metrics into a shared dict (nginx): each
-- call adds what changed since the last call (`shm_add`) and sets this
-- process's gauges (`shm_gauges`; `exiting` removes them).
-- @param dict the `ngx.shared` dict
-- @param o `{id = pid, ttl = seconds, spool_id = path or nil, on_error = fn(message)}`
-- @return function(t, exiting)
function M.shm_publisher(dict, o)
  local last
  return function(t, exiting)
    local ierr
    last, ierr = M.shm_add(dict, t, last)
    if ierr and o.on_error then o.on_error(ierr) end
    M.shm_gauges(dict, o.id, not exiting and t or nil, o.ttl, o.spool_id)
  end
end

--- The most failure series (`{kind, status, code, channel}` labels) a
-- shared dict holds, whatever the workers and reloads: beyond, failures are
-- counted in `failures_unlabelled` (`kind="other"`), so an endpoint that
-- answers a new code each time cannot grow the dict until it evicts real
-- counters.
M.SHM_FAILURE_SERIES = 64

-- The dict's count of failure series (outside PREFIX: not a metric).
local SERIES_KEY = "n:failure_series"

-- Adds d to counter k of the dict. A failure series the dict does not hold
-- yet takes one of its SHM_FAILURE_SERIES places, or, when they are taken,
-- adds to `failures_unlabelled` instead. (Two workers adding one new series
-- at once may take two places: the cap errs on the safe side.)
local function shm_incr(dict, k, d)
  if k:sub(1, 5) ~= "fail" .. SEP then return dict:incr(PREFIX .. k, d, 0) end
  local ok, err = dict:incr(PREFIX .. k, d)
  if ok or err ~= "not found" then return ok, err end
  local n, nerr = dict:incr(SERIES_KEY, 1, 0)
  if not n then return nil, nerr end
  if n > M.SHM_FAILURE_SERIES then
    dict:incr(SERIES_KEY, -1, 0)
    return dict:incr(PREFIX .. "failures_unlabelled", d, 0)
  end
  return dict:incr(PREFIX .. k, d, 0)
end

--- Add what changed since `last` (a `flatten` result, or nil) to the
-- shared dict: one `incr` per changed counter (a new failure series only
-- while the dict holds fewer than `SHM_FAILURE_SERIES`).
-- @return the new `last` (pass it next time), and the first error of
--   `incr` or nil (e.g. "no memory": the dict is too small)
function M.shm_add(dict, t, last)
  local flat, first_err = M.flatten(t), nil
  last = last or {}
  for k, v in pairs(flat) do
    local d = v - (last[k] or 0)
    if d ~= 0 then
      local ok, err = shm_incr(dict, k, d)
      if not ok then
        first_err = first_err or err
        flat[k] = last[k] -- not added: try again next time
      end
    end
  end
  return flat, first_err
end

--- Set this process's gauges in the shared dict (keys that expire after
-- `ttl` seconds unless set again: a crashed worker's vanish), or remove
-- them (`t` nil: the process is exiting).
-- @param dict the `ngx.shared` dict
-- @param id this process (its pid)
-- @param t its metrics table (gauges `depth`, `in_flight`, `paused`, `spool`), or nil
-- @param ttl seconds the keys live unless set again
-- @param spool_id with a spool shared by several processes, its path: the
--   spool's gauges and `depth` (the file's, the same in every process) are
--   kept once under it instead of once per process
function M.shm_gauges(dict, id, t, ttl, spool_id)
  local own = PREFIX .. "g" .. SEP .. id .. SEP
  local shared = spool_id and (PREFIX .. "g" .. SEP .. "spool:" .. spool_id:gsub(SEP, "?") .. SEP) or own
  local function put(base, k, v)
    if t == nil then
      if base == own then dict:delete(base .. k) end -- the file's stay for the other processes
    else
      dict:set(base .. k, num(v), ttl or 0)
    end
  end
  put(shared, "depth", t and t.depth)
  put(own, "in_flight", t and t.in_flight)
  for _, k in ipairs({ "throttled", "credentials" }) do put(own, "paused." .. k, t and t.paused and t.paused[k]) end
  if spool_id then
    for _, k in ipairs({ "orders", "bytes", "dead" }) do put(shared, "spool." .. k, t and t.spool and t.spool[k]) end
  end
end

--- The metrics table of a shared dict: every worker's counters (those of
-- workers gone since, before a reload, included) and the gauges of the
-- workers alive.
function M.from_shm(dict)
  local flat, gauges = {}, nil
  for _, key in ipairs(dict:get_keys(0)) do
    if key:sub(1, #PREFIX) == PREFIX then
      local k, v = key:sub(#PREFIX + 1), dict:get(key)
      if type(v) == "number" then
        if k:sub(1, 2) == "g" .. SEP then
          local p = split(k)
          local name = p[#p]
          gauges = gauges or { depth = 0, in_flight = 0, paused = { throttled = 0, credentials = 0 } }
          local group, sub = name:match("^(%a+)%.(%a+)$")
          if group then
            gauges[group] = gauges[group] or {}
            gauges[group][sub] = num(gauges[group][sub]) + v
          else
            gauges[name] = num(gauges[name]) + v
          end
        else
          flat[k] = v
        end
      end
    end
  end
  local t = M.unflatten(flat)
  if gauges then add_gauges(t, gauges) end
  return t
end

-- -------------------------------------------------------------------------
-- Prometheus text exposition format 0.0.4

local NAME = "optimizely_offline_"

local function esc(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function number(v)
  if v == huge then return "+Inf" end
  if v == -huge then return "-Inf" end
  if v ~= v then return "NaN" end
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return fmt("%d", v) end
  local s = fmt("%.15g", v)
  if tonumber(s) ~= v then s = fmt("%.17g", v) end
  return s
end

-- {name, value} pairs → `{a="x",b="y"}` (nothing when empty)
local function labels(base, extra)
  local parts = {}
  for _, kv in ipairs(base) do parts[#parts + 1] = kv[1] .. '="' .. esc(kv[2]) .. '"' end
  for _, kv in ipairs(extra or {}) do parts[#parts + 1] = kv[1] .. '="' .. esc(kv[2]) .. '"' end
  if #parts == 0 then return "" end
  return "{" .. concat(parts, ",") .. "}"
end

-- The families: name (after the prefix), type, help, and how to get the
-- samples of one metrics table: a list of {suffix, labels, value}.
local function counter(key)
  return function(t) return { { "", {}, num(t[key]) } } end
end

local function gauge(fn)
  return function(t)
    if t.depth == nil and t.in_flight == nil and t.spool == nil and t.paused == nil then return {} end
    return fn(t)
  end
end

local FAMILIES = {
  { "orders_queued_total", "counter", "Orders accepted for delivery.", counter("queued") },
  { "orders_sent_total", "counter", "Orders the endpoint acknowledged, by channel.", function(t)
    local out, names, rest = {}, {}, num(t.sent)
    for name in pairs(t.channels or {}) do names[#names + 1] = name end
    sort(names)
    for _, name in ipairs(names) do
      local n = num(t.channels[name].sent)
      out[#out + 1] = { "", { { "channel", name } }, n }
      rest = rest - n
    end
    if rest > 0 or #out == 0 then out[#out + 1] = { "", { { "channel", "" } }, rest } end
    return out
  end },
  { "orders_failed_total", "counter",
    "Orders given up, by error kind, HTTP status, API error code and channel.", function(t)
    local out = {}
    local list = {}
    for _, f in ipairs(t.failures or {}) do list[#list + 1] = f end
    sort(list, function(a, b) return fail_key(a) < fail_key(b) end)
    for _, f in ipairs(list) do
      local status = f.status and f.status ~= 0 and f.status or ""
      out[#out + 1] = { "", { { "kind", f.kind or "unknown" }, { "status", status },
        { "code", f.code or "" }, { "channel", f.channel or "" } }, num(f.n) }
    end
    if num(t.failures_unlabelled) > 0 then
      out[#out + 1] = { "", { { "kind", "other" }, { "status", "" }, { "code", "" }, { "channel", "" } },
        t.failures_unlabelled }
    end
    return out
  end },
  { "orders_dead_total", "counter", "Orders rejected for good or out of attempts or age (dead letters).",
    counter("dead") },
  { "orders_invalid_total", "counter", "Orders refused by validation before any request.", counter("invalid") },
  { "orders_skipped_total", "counter",
    "Orders not sent because the ledger had them, by reason (already_sent, in_flight).", function(t)
    local out = {}
    for _, r in ipairs(M.SKIP_REASONS) do
      local n = num(t.skipped and t.skipped[r])
      if n ~= 0 or r ~= "other" then out[#out + 1] = { "", { { "reason", r } }, n } end
    end
    return out
  end },
  { "orders_changed_total", "counter",
    "Orders not sent because the ledger had another version of them (or their cancel).", counter("changed") },
  { "orders_unknown_total", "counter",
    "Orders in flight when a worker's shutdown grace ended: the endpoint may or may not have them.",
    counter("unknown") },
  { "orders_dropped_total", "counter",
    "Orders a queue refused or lost, by reason (full, invalid, config, closed, shutdown, ...).", function(t)
    local out, reasons = {}, {}
    for r in pairs(t.dropped or {}) do reasons[#reasons + 1] = r end
    sort(reasons)
    for _, r in ipairs(reasons) do out[#out + 1] = { "", { { "reason", r } }, num(t.dropped[r]) } end
    return out
  end },
  { "retries_total", "counter", "Attempts that failed and were scheduled again.", counter("retried") },
  { "throttled_total", "counter", "HTTP 429 answers.", counter("throttled") },
  { "requests_total", "counter", "HTTP requests made (every attempt).", counter("requests") },
  { "sent_bytes_total", "counter", "Request body bytes sent.", counter("bytes_sent") },
  { "request_duration_seconds", "histogram", "Duration of each request (attempt) in seconds.", function(t)
    local lat = t.latency or {}
    local bounds, counts, out, cum = lat.bounds or M.BOUNDS, lat.counts or {}, {}, 0
    for i = 1, #bounds do
      cum = cum + num(counts[i])
      out[#out + 1] = { "_bucket", { { "le", number(bounds[i]) } }, cum }
    end
    cum = cum + num(counts[#bounds + 1])
    out[#out + 1] = { "_bucket", { { "le", "+Inf" } }, cum }
    out[#out + 1] = { "_sum", {}, num(lat.sum) }
    out[#out + 1] = { "_count", {}, cum }
    return out
  end },
  { "callback_errors_total", "counter", "Errors raised by user callbacks (on_success, on_failure, on_event).",
    counter("callback_errors") },
  { "storage_errors_total", "counter", "Failed spool operations.", counter("storage_errors") },
  { "queue_depth", "gauge", "Orders waiting in queues (queued or waiting for a retry; not in flight).",
    gauge(function(t) return { { "", {}, num(t.depth) } } end) },
  { "in_flight", "gauge", "Requests in flight.", gauge(function(t) return { { "", {}, num(t.in_flight) } } end) },
  { "paused", "gauge", "Queues paused, by reason (throttled: a 429; credentials: refused credentials).",
    gauge(function(t)
      local p = t.paused or {}
      return { { "", { { "reason", "credentials" } }, num(p.credentials) },
        { "", { { "reason", "throttled" } }, num(p.throttled) } }
    end) },
  { "spool_orders", "gauge", "Orders in spools waiting for delivery.", function(t)
    return t.spool and { { "", {}, num(t.spool.orders) } } or {}
  end },
  { "spool_bytes", "gauge", "Bytes of the orders waiting in spools.", function(t)
    return t.spool and { { "", {}, num(t.spool.bytes) } } or {}
  end },
  { "spool_dead", "gauge", "Dead letters kept in spools.", function(t)
    return t.spool and { { "", {}, num(t.spool.dead) } } or {}
  end },
}
M.FAMILIES = FAMILIES

local LABEL_NAME = "^[%a_][%w_]*$"

-- Sources grouped by their label set, each group summed.
local function groups(...)
  local list, by_key = {}, {}
  for i = 1, select("#", ...) do
    local s = select(i, ...)
    local src, extra = s, {}
    if type(s) == "table" and type(s.labels) == "table" and s[1] ~= nil then
      src = s[1]
      local names = {}
      for k in pairs(s.labels) do
        if type(k) ~= "string" or not k:find(LABEL_NAME) or k:sub(1, 2) == "__" then
          error("optimizely.offline.metrics: prometheus: a label name must match [a-zA-Z_][a-zA-Z0-9_]*"
            .. " and not start with __ (got " .. core.quote(tostring(k)) .. ")", 3)
        end
        names[#names + 1] = k
      end
      sort(names)
      for _, k in ipairs(names) do extra[#extra + 1] = { k, tostring(s.labels[k]) } end
    end
    local key = {}
    for _, kv in ipairs(extra) do key[#key + 1] = kv[1] .. "=" .. kv[2] end
    key = concat(key, "\0")
    local g = by_key[key]
    if not g then
      g = { labels = extra, metrics = M.empty() }
      by_key[key] = g
      list[#list + 1] = g
    end
    M.merge(g.metrics, M.of(src))
  end
  return list
end

--- The Prometheus text exposition format (version 0.0.4) of one or more
-- sources, summed: every name starts `optimizely_offline_`, each family
-- has its HELP and TYPE lines, label values are escaped.
--
--     metrics.prometheus(client, queue)
--     metrics.prometheus(ngx.shared.optimizely_offline_metrics)   -- nginx, all workers
--     metrics.prometheus({ q1, labels = { queue = "pos" } }, { q2, labels = { queue = "web" } })
--
-- @param ... sources (see `M.of`); a source wrapped as `{source, labels =
--   {name = value}}` gets those labels on every sample (sources with the
--   same labels are summed)
-- @return the text (serve it as `text/plain; version=0.0.4`)
function M.prometheus(...)
  local gs = groups(...)
  local out = {}
  for _, fam in ipairs(FAMILIES) do
    local name, kind, help, samples = NAME .. fam[1], fam[2], fam[3], fam[4]
    local lines = {}
    for _, g in ipairs(gs) do
      for _, s in ipairs(samples(g.metrics)) do
        lines[#lines + 1] = name .. s[1] .. labels(g.labels, s[2]) .. " " .. number(s[3])
      end
    end
    -- every family is declared, with samples or not (e.g. no failure yet):
    -- a scraper sees the whole vocabulary from the first scrape
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    for _, l in ipairs(lines) do out[#out + 1] = l end
  end
  return concat(out, "\n") .. "\n"
end

--- The content type of `prometheus`' text.
M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

return M
