--- Durable on-disk spool of encoded orders (SQLite in WAL mode).
--
-- An order is stored as the exact request body (`offline.encode(payload)`),
-- its refCode and its channel, claimed under a lease by one delivery loop,
-- and removed only when that loop `ack`s it (the endpoint accepted it) or
-- `kill`s it (a permanent failure: it moves to the dead letters with its
-- error). See the topic `spool.md` for the whole picture (files, sharing,
-- bounds, migration, the CLI).
--
-- **The file** is created mode 0600 whatever the umask (and so are SQLite's
-- `-wal` and `-shm` beside it). A path is a plain file name, never an SQLite
-- URI: `"file:x.db"` is the file `./file:x.db`. A file that is not a spool
-- (another program's SQLite database, a text file, a spool written by a
-- newer version) is refused with kind `"foreign"` and left byte for byte as
-- it was. A spool written by an earlier version of this library is
-- migrated in place (one transaction) the first time it is opened. A spool,
-- `-wal` or `-shm` file that another user owns, that other users may read or
-- write, or that is a symbolic link is refused with kind `"storage"`, naming
-- the file: a file someone else pre-created in a shared directory is never
-- adopted.
--
-- **Cancels**: a row is a create (a POST of its body) or a cancel (a DELETE
-- of its refCode, `put_cancel`). A cancel is not claimed while an earlier
-- row of its refCode is still in the spool (queued or being delivered), and
-- a create not while an earlier cancel of its refCode is (an amend: the
-- DELETE first, then the new version, op `"amend"`, which ends dead with
-- its cancel when the DELETE is refused or given up). `cancel_queued` removes the queued,
-- undelivered creates of a refCode; `purge_customer` one customer's orders.
--
-- **The ledger** (`spool:ledger{...}`, see `optimizely.offline.ledger`) lives
-- in the spool's file: each ack then writes its ledger row in the same
-- transaction as the row's delete, so a `kill -9` at any moment leaves the
-- two consistent.
--
-- **Several processes** (nginx workers, the CLI, a daemon) may share one
-- file: writes take the lock with `BEGIN IMMEDIATE` and wait up to
-- `busy_timeout`; a claim stamps the rows with this handle's owner token and
-- a lease end, so two handles never deliver one order at the same time, and
-- a lease that runs out (its process died) makes the row claimable again.
--
-- **Bounds**, each refusing with an error of kind `"full"` that names the
-- bound (`err.bound`), never dropping silently:
--
-- - `max_orders`: queued orders
-- - `max_bytes`: queued body bytes (dead letters are not counted; `purge` them)
-- - `max_age`: seconds an order may wait; older unclaimed orders move to the
--   dead letters with kind `"expired"` (checked on put and claim)
-- - `on_full`: `"refuse"` (default) or `"drop_oldest"`: make room by moving
--   the oldest unclaimed orders to the dead letters, kind `"dropped"`
--
-- **Durability**: `sync = "normal"` (default) keeps every returned put across
-- a crash or `kill -9` of the process; `sync = "full"` (an fsync per commit)
-- also across power loss.
--
-- **Times** are wall-clock epoch seconds (`spool.now()`); every call that
-- needs the time takes an optional `now` (tests pass their own clock).
--
-- **Errors**: runtime failures return `nil, err`, an `errors` object whose
-- message names the file (and SQLite's reason), with `kind`:
--
-- - `"full"`: a bound refused the orders; `err.bound` is `"max_orders"` or `"max_bytes"`
-- - `"busy"`: another process held the lock longer than `busy_timeout`
--   (`err.retryable` is true)
-- - `"lease"`: ack/retry/kill/release of an order this handle does not hold
--   (its lease ran out and another handle took it, or it is gone)
-- - `"storage"`: SQLite failed: disk full (the message says "disk full"),
--   I/O error, damaged file, out of memory; `err.sqlite_code` is SQLite's
--   extended result code
-- - `"foreign"` (open only): the file is not a spool this version can use;
--   nothing was written to it
--
-- Misuse (bad arguments, a closed spool) raises.
-- @module optimizely.offline.spool
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local ledger = require("optimizely.offline.ledger")
local opts = require("optimizely.offline.opts")

local M = {}

local Spool = {}
Spool.__index = Spool

local new_error = errors.new

-- C returns `value` or `nil, fields`: turn the fields into an error object.
local function wrap(v, e)
  if v == nil then return nil, new_error(e) end
  return v
end

--- Options of `spool.open` (all optional).
-- @table open_options
-- @field busy_timeout seconds to wait for another process's lock (default 5, at most 86400)
-- @field sync `"normal"` (default: survives a process crash) or `"full"` (fsync per commit:
--   survives power loss)
-- @field max_orders bound on queued orders (integer >= 1)
-- @field max_bytes bound on queued body bytes (integer >= 1)
-- @field max_age seconds an unclaimed order may wait before it expires to the dead letters
-- @field on_full `"refuse"` (default) or `"drop_oldest"`
-- @field max_file_bytes hard cap on the database file's size (integer >= 4096): past it every
--   write fails with kind `"storage"` like a full disk. Prefer `max_bytes`, which refuses
--   gracefully; this one guards the disk.
local OPEN = opts.schema("optimizely.offline.spool.open", "opts", {
  busy_timeout = { type = "number", min = 0, max = 86400 },
  sync = { type = "choice", choices = { "normal", "full" } },
  max_orders = { type = "integer", min = 1, max = 1e15 },
  max_bytes = { type = "integer", min = 1, max = 1e15 },
  max_age = { type = "number", above = 0 },
  on_full = { type = "choice", choices = { "refuse", "drop_oldest" } },
  max_file_bytes = { type = "integer", min = 4096, max = 1e15 },
})

local EXPORT = opts.schema("optimizely.offline.spool:export_dead", "opts", {
  batch = { type = "integer", min = 1, max = 1e6, default = 256 },
})

--- Wall-clock epoch seconds, the spool's time base.
-- @function now
M.now = core.spool_now

--- Open (creating on first use) the spool file at `path`.
-- @param path file path (its directory must exist); a plain name, never a URI
-- @param options see `open_options`; unknown keys raise (with a did-you-mean)
-- @return spool, or nil, err (kind `"foreign"`, `"storage"` or `"busy"`)
function M.open(path, options)
  if type(path) ~= "string" or path == "" then
    error("spool.open: path must be a non-empty string, got " .. (path == "" and "an empty string" or type(path)), 2)
  end
  local o = OPEN:check(options, 2)
  local h, e = core.spool_open(path, o)
  if not h then return nil, new_error(e) end
  return setmetatable({ handle = h, path = path, max_age = o and o.max_age }, Spool)
end

--- A claimed order, as `claim` returns it.
-- @table claimed_row
-- @field id the order's id (never reused: it keeps it through dead letters and requeue)
-- @field op `"create"` (POST the body) or `"cancel"` (DELETE the refCode; the body is the
--   cancelled order's, or empty)
-- @field ref its refCode, or nil
-- @field body the request body, byte for byte as stored
-- @field attempts failed attempts so far
-- @field created_at when it was put (or requeued), epoch seconds
-- @field channel its channel, or nil for the client's default channel

--- A queued order, as `list` returns it: the `claimed_row` fields (`body` only with
-- `list{body=true}`) and:
-- @table queued_row
-- @field bytes body length
-- @field next_at when it is due, epoch seconds
-- @field claimed_by lease owner token, or nil when not claimed
-- @field claimed_until lease end (only when claimed)
-- @field last_error the last retry's error text, or nil

--- A dead letter, as `list{dead=true}` returns it: the `claimed_row` fields (`body`
-- only with `body=true`) and:
-- @table dead_row
-- @field bytes body length
-- @field failed_at when it died, epoch seconds
-- @field kind why: an error kind (`"api"`, `"http"`, ...), `"failed"`, `"expired"` (max_age)
--   or `"dropped"` (on_full = "drop_oldest")
-- @field status HTTP status, or nil
-- @field code the endpoint's error code, or nil
-- @field message the error message, or nil

--- Store one order.
-- @param body the request body (non-empty string)
-- @param ref its refCode (string or nil)
-- @param now epoch seconds (default: the clock)
-- @param channel its channel name (string or nil: the client's default channel)
-- @return id, or nil, err (kind "full" names the bound)
function Spool:put(body, ref, now, channel)
  return wrap(self.handle:put(body, ref, now, channel))
end

--- Store many orders in one transaction (group commit): all or none.
-- @param list array of `{body=, ref=, channel=, op=}` tables or body strings (`op`:
--   `"create"`, the default, `"cancel"`: see `put_cancel`, a cancel's body may be nil; or
--   `"amend"`: the new version of an amend, right after the cancel of its refCode in the
--   same list — claimed only once that cancel is acked, and ended dead with it, never
--   posted, when the cancel is killed or dropped)
-- @param now epoch seconds (default: the clock)
-- @return array of ids (same order), or nil, err
function Spool:put_many(list, now)
  return wrap(self.handle:put_many(list, now))
end

--- Store a cancel: a row asking for the DELETE of `ref`. It is not claimed
-- while an earlier row of that refCode is still in the spool.
-- @param ref the refCode to cancel
-- @param channel its channel (nil: the client's default)
-- @param now epoch seconds (default: the clock)
-- @param body the cancelled order's body when known (the ledger's report fields), or nil
-- @return id, or nil, err
function Spool:put_cancel(ref, channel, now, body)
  return wrap(self.handle:put_cancel(ref, channel, now, body))
end

--- Remove the queued creates of a refCode that no one is delivering (one
-- transaction): the first step of a queue's cancel. With the ledger on,
-- when none is in flight and the ledger holds no acknowledged row of it,
-- the removed orders are recorded as `"cancelled"` in the same
-- transaction: nothing is left to send. Put a cancel (`put_cancel`) when
-- one is `in_flight`, when it was `seen`, or when nothing was removed.
-- @param ref the refCode
-- @param channel its channel for the ledger lookup (nil: the default)
-- @param now epoch seconds (default: the clock)
-- @return `{removed=, in_flight=, seen=}`, or nil, err
function Spool:cancel_queued(ref, channel, now)
  return wrap(self.handle:cancel_queued(ref, channel, now))
end

--- The ledger in this spool's file (`optimizely.offline.ledger.of_spool`):
-- from now on this spool's acks, kills and expiries are recorded in it.
-- @param options `{host=, site=, channel=, store_key=, keep=}` (see the ledger's `spool_options`)
-- @return a ledger, or nil, err
function Spool:ledger(options)
  return ledger.of_spool(self, options)
end

--- Lease up to `max_n` due orders for `lease_seconds`.
-- @param max_n 1 to 100000
-- @param lease_seconds how long the orders stay ours without an ack
-- @param now epoch seconds (default: the clock)
-- @return array of `claimed_row` (oldest first; empty when nothing is due), or nil, err
function Spool:claim(max_n, lease_seconds, now)
  return wrap(self.handle:claim(max_n, lease_seconds, now))
end

--- Delivered: delete the order. Only the handle holding its lease may.
-- With the ledger on, its ledger row is written in the same transaction
-- (a cancel row's as `"cancelled"`).
-- @param id the order's id
-- @param outcome for the ledger: `"sent"` (default) or `"warned"` (accepted with warnings)
-- @return true, or nil, err (kind "lease": not ours any more)
function Spool:ack(id, outcome)
  return wrap(self.handle:ack(id, outcome))
end

--- Delivered, many at once: one transaction. Every order this handle holds
-- is deleted; if some were not ours any more the call returns kind "lease"
-- (saying how many), the others being acked all the same.
-- @param ids array of ids
-- @param outcomes nil (all `"sent"`), or an array beside `ids` of `"sent"` / `"warned"`
-- @return true, or nil, err
function Spool:ack_many(ids, outcomes)
  return wrap(self.handle:ack_many(ids, outcomes))
end

--- Failed for now: attempts + 1, due again at `next_at`, lease cleared.
-- @param id the order's id (claimed by this handle)
-- @param next_at epoch seconds at which it is due again
-- @param err the error (object or string; stored as `last_error` text) or nil
-- @return true, or nil, err (kind "lease": not ours any more)
function Spool:retry(id, next_at, err)
  if err ~= nil and type(err) ~= "string" then err = tostring(err) end
  return wrap(self.handle:retry(id, next_at, err))
end

--- Failed for good: move the order to the dead letters (attempts + 1),
-- keeping its body, refCode and channel. With the ledger on, a `"dead"`
-- ledger row is written in the same transaction, unless the order was
-- already acknowledged (a dead cancel row leaves the ledger as it was).
-- @param id the order's id (claimed by this handle)
-- @param err `{kind=, status=, code=, message=}` (an error object fits), a message
--   string (kind "failed"), or nil
-- @param now epoch seconds (default: the clock)
-- When the row is a cancel put by an amend (see `put_many`), the new
-- version behind it moves to the dead letters in the same transaction,
-- never posted (the cancel's kind, status and code; message "amend: not
-- sent, the DELETE of the earlier version failed: ..."), and is returned.
-- @return true and, when an amend's new version went with it, the list of
--   those dead letters (`{id, ref, channel, attempts, kind, status, code,
--   message}`); or nil, err (kind "lease": not ours any more)
function Spool:kill(id, err, now)
  local ok, e = self.handle:kill(id, err, now)
  if ok == nil then return nil, new_error(e) end
  return ok, e
end

--- Give a claimed order back without counting an attempt.
-- @param id the order's id (claimed by this handle)
-- @return true, or nil, err (kind "lease": not ours any more)
function Spool:release(id)
  return wrap(self.handle:release(id))
end

--- Counts: `{queued, due, claimed, dead, bytes, oldest_age}` (`due`: ready
-- to claim now; `claimed`: under a live lease; `oldest_age`: seconds since
-- the oldest queued order was put). From the totals row and two index
-- ranges, not a scan of the queue: cheap enough to call often.
-- @param now epoch seconds (default: the clock)
-- @return the counts table, or nil, err
function Spool:stats(now)
  return wrap(self.handle:stats(now))
end

--- Epoch seconds at which the earliest unclaimed order is due (may be in
-- the past), or false when nothing waits. Lets a timer sleep just long enough.
-- @param now epoch seconds (default: the clock)
-- @return epoch seconds, false, or nil, err
function Spool:next_due(now)
  return wrap(self.handle:next_due(now))
end

--- Rows in id order.
-- @param options {dead=false, limit=100, offset=0, after=id, body=false}
-- @return array of `queued_row` or `dead_row`; or nil, err
function Spool:list(options)
  return wrap(self.handle:list(options))
end

--- Put dead letters back in the queue, due now, attempts 0, with their
-- channel (max_age counts from the requeue). Bounds refuse (kind "full")
-- rather than drop anything.
-- @param which an id or "all"
-- @param now epoch seconds (default: the clock)
-- @return how many were requeued, or nil, err (kind "full")
function Spool:requeue_dead(which, now)
  return wrap(self.handle:requeue_dead(which, now))
end

--- Delete dead letters and/or unclaimed queued orders.
-- @param options {dead=true, queued=true, older_than=seconds (default: all), now=}
-- @return how many rows were deleted, or nil, err
function Spool:purge(options)
  return wrap(self.handle:purge(options))
end

--- Every dead letter, in id order, read in pages (keyset paging, so rows
-- added meanwhile do not shift the pages).
-- @param sink a function `sink(row)` (row as in `list{dead=true, body=true}`;
--   returning `false` or `nil, err` stops the export), or an open file: each
--   body is written as one line (NDJSON that `send` accepts)
-- @param options {batch=256}
-- @return the number exported, or nil, err
function Spool:export_dead(sink, options)
  local batch = EXPORT:check(options, 2).batch
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

-- ------------------------------------------------- whole-spool operations

local PAGE = 1000

--- Calls `fn(row)` for every queued row (or dead letter with `o.dead`;
-- bodies with `o.body`), in id order, a page at a time.
-- @param fn function(row)
-- @param o `{dead = bool, body = bool}`
-- @return true, or nil, err
-- @local
function Spool:each_row(fn, o)
  local after = 0
  while true do
    local rows, err = self:list({ limit = PAGE, after = after, dead = o and o.dead or nil, body = o and o.body or nil })
    if not rows then return nil, err end
    for i = 1, #rows do fn(rows[i]) end
    if #rows < PAGE then return true end
    after = rows[#rows].id
  end
end

--- Makes every queued order that waits for its next attempt due now (for
-- draining a spool at once: `optimizely-offline spool send`), in one
-- UPDATE of their due time: the attempts they made and their last error
-- are kept. An order under another handle's live lease is left alone (that
-- process is delivering it) and, when it is due later, counted in
-- `still_waiting`.
-- @param now epoch seconds (default: the clock)
-- @return how many were made due, how many still wait; or nil, err
function Spool:due_now(now)
  local moved, waiting = self.handle:due_now(now)
  if not moved then return nil, new_error(waiting) end
  return moved, waiting
end

local PURGE = opts.schema("optimizely.offline.spool:purge_user", "who", {
  email = { type = "string", nonempty = true },
  user_id = { type = "string", nonempty = true },
})

--- Removes one customer's orders that were not delivered — queued orders
-- and dead letters — for an erasure request, in one transaction (the
-- bodies are read in C). An order matches when its `user.email` is
-- `email` (both trimmed and compared in ASCII lower case; an `email` that
-- is not an address matches nothing) or its `user.id` is `user_id`; give
-- the pseudonymised id as `user_id` too when orders were pseudonymised. An
-- order another process is delivering right now (under its live lease)
-- cannot be removed: it is counted in `left` (run it again once that
-- process is stopped).
-- @param who `{email = address, user_id = id}` (one or both)
-- @param now epoch seconds (default: the clock)
-- @return how many were removed (queued and dead letters) and how many matching were left;
--   or nil, err
function Spool:purge_user(who, now)
  who = PURGE:check(who, 2)
  if not who.email and not who.user_id then error("spool:purge_user: give email or user_id", 2) end
  local r, err = self.handle:purge_customer(who.email, who.user_id, now)
  if not r then return nil, new_error(err) end
  return r.queued + r.dead, r.in_flight
end

--- This handle's lease owner token ("pid:hex"), as `claimed_by` shows it.
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
