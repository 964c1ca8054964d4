--- The options both queues share — the threaded queue
-- (optimizely.offline.queue, `client:queue`) and the nginx queue
-- (optimizely.offline.ngx.queue): one vocabulary, one set of bounds and
-- defaults, and the delivery policy they make of them. Each queue adds its
-- own options with `schema`.
-- @module optimizely.offline.queue_opts
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")
local sched = require("optimizely.offline.sched")
local gate = require("optimizely.offline.ledger_gate")

local M = {}

--- The default age limit of a queued order: 3 days.
M.MAX_AGE = 3 * 86400

--- The `logger` option's check: a `function(level, message)`, or false
-- for no log lines (nil: the client's logger).
-- @param v the option's value
-- @return true | nil, message
-- @local
local function check_logger(v)
  if v == false or type(v) == "function" then return true end
  return nil, "must be a function(level, message) or false"
end

--- The shared options, as `optimizely.offline.opts` fields: `max_queue`,
-- `concurrency`, `spool` and its bounds (`spool_max_orders`,
-- `spool_max_bytes`, `spool_on_full`, `spool_sync`), `lease`,
-- `max_attempts`, `max_age`, `auth_pause`, `channel`, the callbacks
-- (`on_success`, `on_failure`, `on_event`), `logger`, `pseudonymise`, and
-- the ledger's (`ledger`, `ledger_keep`, `ledger_store_key`:
-- optimizely.offline.ledger_gate).
M.common = {
  max_queue = { type = "integer", min = 1, max = 1e9, default = 10000 },
  concurrency = { type = "integer", min = 1, max = sched.MAX_CONCURRENCY, default = 4 },
  spool = { type = "string", nonempty = true },
  spool_max_orders = { type = "integer", min = 1, max = 1e15, requires = "spool" },
  spool_max_bytes = { type = "integer", min = 1, max = 1e15, requires = "spool" },
  spool_on_full = { type = "choice", choices = { "refuse", "drop_oldest" }, requires = "spool" },
  spool_sync = { type = "choice", choices = { "normal", "full" }, requires = "spool" },
  lease = { type = "number", min = 1, max = 86400 * 7 },
  max_attempts = { type = "integer", min = 1, max = 1e6 },
  max_age = { type = "number", above = 0, max = 86400 * 3650, default = M.MAX_AGE },
  auth_pause = { type = "number", min = 0.01, max = 86400, default = sched.DEFAULTS.auth_pause },
  channel = { type = "string", nonempty = true },
  on_success = { type = "function" },
  on_failure = { type = "function" },
  on_event = { type = "function" },
  logger = { type = "any", check = check_logger },
  pseudonymise = { type = "any" },
}
gate.add_fields(M.common)

--- With a spool the ledger lives in the spool's file: `ledger = true` (a
-- separate file would not be written in the ack's transaction, so it is
-- refused). Both queues.
-- @param o the checked options
-- @param level the caller's error level
function M.check_ledger(o, level)
  if o.spool and o.ledger and o.ledger ~= true then
    error("queue: opts.ledger: with a spool the ledger lives in the spool's file: give ledger = true", level + 1)
  end
end

--- The options of one push (both queues): `channel`, and with a ledger
-- `force` and `amend` (optimizely.offline.ledger_gate).
M.push_fields = { channel = { type = "string", nonempty = true }, force = gate.call_fields.force,
  amend = gate.call_fields.amend }

--- The options of a cancel (both queues): `channel`.
M.CANCEL_OPTS = opts.schema("queue", "cancel opts", { channel = { type = "string", nonempty = true } })

--- The refCode a cancel names, checked (both queues): a string (an
-- integer is formatted), not empty, not only dots (it would name another
-- URL).
-- @param ref the caller's value
-- @return ref | nil, err (kind "validation", `attempts = 0`)
function M.check_ref(ref)
  if type(ref) == "number" and ref == math.floor(ref) then ref = string.format("%d", ref) end
  if type(ref) ~= "string" or ref == "" or ref:match("^%.+$") then
    local e = errors.validation({ { path = "refCode", message = "must be a non-empty string, not only dots" } })
    e.attempts = 0
    return nil, e
  end
  return ref
end

--- A queue's options schema: the shared options plus the queue's own.
-- @param name the queue's name in messages ("queue", "optimizely.offline.ngx.queue")
-- @param own its own fields (`optimizely.offline.opts` fields, by name)
-- @return the schema (`optimizely.offline.opts.schema`)
function M.schema(name, own)
  local fields = {}
  for k, v in pairs(M.common) do fields[k] = v end
  for k, v in pairs(own) do fields[k] = v end
  return opts.schema(name, "opts", fields)
end

--- The engine's delivery policy for a queue: the client's backoff, no
-- attempt limit unless asked, the age limit.
-- @param st the client's delivery context (optimizely.offline.context)
-- @param o the queue's checked options
-- @return the scheduler's `policy` table
function M.policy(st, o)
  local p = st.policy
  return { max_attempts = o.max_attempts or false, max_age = o.max_age, backoff_base = p.backoff_base,
    backoff_max = p.backoff_max, backoff_floor = p.backoff_floor, retry_after_max = p.retry_after_max }
end

return M
