--- Durable on-disk spool of encoded orders (SQLite in WAL mode).
--
-- An order is stored as the exact request body (`offline.encode(payload)`)
-- plus its refCode, claimed under a lease by one delivery loop, and removed
-- only when that loop `ack`s it (the endpoint accepted it) or `kill`s it
-- (a permanent failure: it moves to the dead letters with its error).
--
-- Several processes (nginx workers, the CLI, a daemon) may share one file:
-- writes take the lock with `BEGIN IMMEDIATE` and wait up to `busy_timeout`;
-- a claim stamps the rows with this handle's owner token and a lease end, so
-- two handles never deliver one order at the same time, and a lease that runs
-- out (its process died) makes the row claimable again.
--
-- Bounds, each refusing with an error of kind `"full"` that names the bound
-- (`err.bound`), never dropping silently:
--   max_orders  queued orders
--   max_bytes   queued body bytes (dead letters are not counted; `purge` them)
--   max_age     seconds an order may wait; older unclaimed orders move to the
--               dead letters with kind `"expired"` (checked on put and claim)
--   on_full     `"refuse"` (default) or `"drop_oldest"`: make room by moving
--               the oldest unclaimed orders to the dead letters, kind `"dropped"`
--
-- Durability: `sync = "normal"` (default) keeps every returned put across a
-- crash or `kill -9` of the process; `sync = "full"` (an fsync per commit)
-- also across power loss.
--
-- Times are wall-clock epoch seconds (`spool.now()`); every call that needs
-- the time takes an optional `now` (tests pass their own clock).
--
-- Runtime failures return `nil, err` (an `errors` object: kind `"full"`,
-- `"busy"` (retryable), `"lease"` or `"storage"`, with a message naming the
-- file and SQLite's reason); misuse (bad arguments, closed spool) raises.
-- @module optimizely.offline.spool
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

local Spool = {}
Spool.__index = Spool

local new_error = errors.new

-- C returns `value` or `nil, fields`: turn the fields into an error object.
local function wrap(v, e)
  if v == nil then return nil, new_error(e) end
  return v
end

--- Wall-clock epoch seconds, the spool's time base.
M.now = core.spool_now

--- Open (creating on first use) the spool file at `path`.
-- @param path file path (its directory must exist)
-- @param opts {busy_timeout=5, sync="normal"|"full", max_orders=, max_bytes=,
--   max_age=, on_full="refuse"|"drop_oldest"} (all optional; unknown keys raise)
-- @return spool, or nil, err
function M.open(path, opts)
  if type(path) ~= "string" or path == "" then
    error("spool.open: path must be a non-empty string, got " .. type(path), 2)
  end
  local h, e = core.spool_open(path, opts)
  if not h then return nil, new_error(e) end
  return setmetatable({ handle = h, path = path }, Spool)
end

--- Store one order. @return id, or nil, err (kind "full" names the bound)
function Spool:put(body, ref, now)
  return wrap(self.handle:put(body, ref, now))
end

--- Store many orders in one transaction (group commit): all or none.
-- @param list array of `{body=, ref=}` tables or body strings
-- @return array of ids (same order), or nil, err
function Spool:put_many(list, now)
  return wrap(self.handle:put_many(list, now))
end

--- Lease up to `max_n` due orders for `lease_seconds`.
-- @return array of `{id=, ref=, body=, attempts=}` (oldest first; empty when
--   nothing is due), or nil, err
function Spool:claim(max_n, lease_seconds, now)
  return wrap(self.handle:claim(max_n, lease_seconds, now))
end

--- Delivered: delete the order. Only the handle holding its lease may.
-- @return true, or nil, err (kind "lease": not ours any more)
function Spool:ack(id)
  return wrap(self.handle:ack(id))
end

--- Failed for now: attempts + 1, due again at `next_at`, lease cleared.
-- @param err the error (object or string; stored as text) or nil
function Spool:retry(id, next_at, err)
  if err ~= nil and type(err) ~= "string" then err = tostring(err) end
  return wrap(self.handle:retry(id, next_at, err))
end

--- Failed for good: move the order to the dead letters (attempts + 1).
-- @param err `{kind=, status=, code=, message=}` (an error object fits) or a string
function Spool:kill(id, err, now)
  return wrap(self.handle:kill(id, err, now))
end

--- Give a claimed order back without counting an attempt.
function Spool:release(id)
  return wrap(self.handle:release(id))
end

--- Counts: `{queued, due, claimed, dead, bytes, oldest_age}`. `due` and
-- `claimed` scan the queue: for monitoring, not for every order.
function Spool:stats(now)
  return wrap(self.handle:stats(now))
end

--- Epoch seconds at which the earliest unclaimed order is due (may be in
-- the past), or false when nothing waits. Lets a timer sleep just long enough.
function Spool:next_due(now)
  return wrap(self.handle:next_due(now))
end

--- Rows in id order.
-- @param opts {dead=false, limit=100, offset=0, after=id, body=false}
-- @return array of rows: queued `{id, ref, bytes, created_at, attempts,
--   next_at, claimed_by?, claimed_until?, last_error?, body?}` or dead
--   `{id, ref, bytes, created_at, failed_at, attempts, kind, status?, code?,
--   message?, body?}`; or nil, err
function Spool:list(opts)
  return wrap(self.handle:list(opts))
end

--- Put dead letters back in the queue, due now, attempts 0 (max_age counts
-- from the requeue). Bounds refuse (kind "full") rather than drop anything.
-- @param which an id or "all"
-- @return how many were requeued, or nil, err
function Spool:requeue_dead(which, now)
  return wrap(self.handle:requeue_dead(which, now))
end

--- Delete dead letters and/or unclaimed queued orders.
-- @param opts {dead=true, queued=true, older_than=seconds (default: all), now=}
-- @return how many rows were deleted, or nil, err
function Spool:purge(opts)
  return wrap(self.handle:purge(opts))
end

--- Every dead letter, in id order, read in pages (keyset paging, so rows
-- added meanwhile do not shift the pages).
-- @param sink a function `sink(row)` (row as in `list{dead=true, body=true}`;
--   returning `false` or `nil, err` stops the export), or an open file: each
--   body is written as one line (NDJSON that `send` accepts)
-- @param opts {batch=256}
-- @return the number exported, or nil, err
function Spool:export_dead(sink, opts)
  local batch = 256
  if opts ~= nil then
    if type(opts) ~= "table" then error("spool:export_dead: opts must be a table or nil", 2) end
    for k, v in pairs(opts) do
      if k ~= "batch" then error("spool:export_dead: unknown option opts." .. tostring(k), 2) end
      if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then
        error("spool:export_dead: opts.batch must be a positive integer", 2)
      end
      batch = v
    end
  end
  local file = io.type(sink) == "file" and sink or nil
  if not file and type(sink) ~= "function" then
    error("spool:export_dead: sink must be a function or an open file, got " .. type(sink), 2)
  end
  local n, after = 0, 0
  while true do
    local rows, err = self:list({ dead = true, body = true, limit = batch, after = after })
    if not rows then return nil, err end
    for i = 1, #rows do
      local row = rows[i]
      if file then
        if row.body:find("[\r\n]") then
          return nil, new_error({ kind = "export", message = ("spool %s: dead letter %d has a line break"
            .. " in its body; it cannot be written as one NDJSON line"):format(self.path, row.id) })
        end
        local ok, werr = file:write(row.body, "\n")
        if not ok then
          return nil, new_error({ kind = "storage", message = "export: write failed: " .. tostring(werr) })
        end
      else
        local ok, serr = sink(row)
        if ok == false or (ok == nil and serr ~= nil) then
          if errors.is(serr) then return nil, serr end
          return nil, new_error({ kind = "export", message = "export stopped by the sink"
            .. (serr ~= nil and (": " .. tostring(serr)) or "") })
        end
      end
      n = n + 1
      after = row.id
    end
    if #rows < batch then return n end
  end
end

--- This handle's lease owner token ("pid:hex").
function Spool:owner()
  return self.handle:owner()
end

--- Is the spool still open?
function Spool:is_open()
  return self.handle:is_open()
end

--- Close the file (idempotent; also done by the garbage collector).
function Spool:close()
  self.handle:close()
end

function Spool:__tostring()
  return tostring(self.handle)
end

Spool.__close = Spool.close -- Lua 5.4: local sp <close> = spool.open(...)

M.Spool = Spool

return M
