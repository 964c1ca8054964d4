--- The delivery ledger: what each endpoint acknowledged, kept in SQLite, so
-- a later run never sends an acknowledged order twice.
--
-- **What it keeps** per order, under the key (endpoint host, site, channel,
-- refCode): the fingerprint of the body sent (SHA-256 of its exact bytes:
-- the encoder is deterministic), the outcome (`"sent"`, `"warned"`,
-- `"dead"` or `"cancelled"`), when it was recorded, and for reports the
-- order's date, store (`order.attributes.store`, or the key `store_key`
-- names), currency and total in minor units. Never the e-mail, the user id
-- or the body. See the topic `ledger.md` for the whole picture.
--
-- **Seen** orders are the acknowledged ones (`"sent"`, `"warned"`) and the
-- `"cancelled"` ones: a lookup answers `"unknown"`, `"same"` (the same
-- fingerprint: already sent) or `"changed"` (another fingerprint: the
-- earlier version's outcome and time come with it). A `"dead"` row never
-- blocks a send, and the next outcome replaces it.
--
-- **Two processes** may share one ledger: `reserve` takes, in one write
-- transaction, the orders of a batch that are neither seen nor in flight
-- elsewhere (a reservation under this handle's owner token with a lease);
-- an order another live handle reserved answers `"in_flight"`. `record`
-- writes the outcomes and drops the reservations, `release` drops them
-- unsent. After a `kill -9` (or a crash) the reservations of the dead
-- process count as gone at once (its pid is looked up, in its own pid
-- namespace; from another namespace they expire with their lease), and
-- the orders they held may be sent again (they were in flight).
--
-- **The file** follows the spool's rules: created 0600 whatever the umask,
-- never through a symbolic link, its own `application_id` ("OOLG"); a
-- file that is not a ledger is refused with kind `"foreign"` and left as it
-- was; a file another user owns, or that others may read, is refused with
-- kind `"storage"`. A path is a plain file name, never an SQLite URI. With
-- a spool the ledger lives in the spool's file (`of_spool`), and an ack
-- writes its ledger row in the same transaction as the spool row's delete.
--
-- **Retention**: rows recorded more than `keep` days ago (default 200,
-- longer than Optimizely's six months) are pruned as it goes; `span` says
-- how far back the ledger knows.
--
-- **Errors**: runtime failures return `nil, err`, an `errors` object of
-- kind `"storage"` (SQLite failed: disk full, I/O error, damaged file, a
-- directory it cannot write; `err.sqlite_code`), `"busy"` (another process
-- held the lock past `busy_timeout`; `err.retryable`) or `"foreign"` (open:
-- not a ledger), whose message names the file. Misuse raises.
-- @module optimizely.offline.ledger
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")

local M = {}

local Ledger = {}
Ledger.__index = Ledger

local new_error = errors.new

local function wrap(v, e, ...)
  if v == nil then return nil, new_error(e) end
  return v, e, ...
end

--- Options of `ledger.open` (all optional).
-- @table open_options
-- @field keep days a row is kept after it was recorded (default 200; 1 to 36500)
-- @field store_key the `order.attributes` key that names the store (default `"store"`)
-- @field busy_timeout seconds to wait for another process's lock (default 5)
local OPEN = opts.schema("optimizely.offline.ledger.open", "opts", {
  keep = { type = "integer", min = 1, max = 36500, default = 200 },
  store_key = { type = "string", nonempty = true },
  busy_timeout = { type = "number", min = 0, max = 86400, default = 5 },
})

--- Options of `ledger.of_spool` (`host`, `site` and `channel` required).
-- @table spool_options
-- @field host the endpoint's host (`ledger.scope` makes it from a URL)
-- @field site the `site` header
-- @field channel the channel of the orders spooled without one (the client's default)
-- @field store_key as in `open_options`
-- @field keep as in `open_options`
local OF_SPOOL = opts.schema("optimizely.offline.ledger.of_spool", "opts", {
  host = { type = "string", nonempty = true, required = true },
  site = { type = "string", nonempty = true, required = true },
  channel = { type = "string", nonempty = true, required = true },
  store_key = { type = "string", nonempty = true },
  keep = { type = "integer", min = 1, max = 36500, default = 200 },
})

local RESERVE = opts.schema("optimizely.offline.ledger:reserve", "opts", {
  lease = { type = "number", above = 0, max = 86400 * 7, default = 300 },
  now = { type = "number" },
  short = { type = "boolean" },
  refs = { type = "table" },
})

local RECORD = opts.schema("optimizely.offline.ledger:record", "opts", {
  outcome = { type = "choice", choices = { "sent", "warned", "dead", "cancelled" } },
  now = { type = "number" },
})

local REPORT = opts.schema("optimizely.offline.ledger:report", "opts", {
  by = { type = "any" },
  from = { type = "string", pattern = "^%d%d%d%d%-%d%d%-%d%d$", pattern_msg = "a date YYYY-MM-DD" },
  to = { type = "string", pattern = "^%d%d%d%d%-%d%d%-%d%d$", pattern_msg = "a date YYYY-MM-DD" },
  timezone = { type = "any" },
})

local EXPORT = opts.schema("optimizely.offline.ledger:export", "opts", {
  batch = { type = "integer", min = 1, max = 100000, default = 1000 },
})

-- report's `by` words and their bits (ledger.h OO_LEDGER_BY_*)
local BY = { day = 1, store = 2, channel = 4, currency = 8 }

--- Where the command line keeps its ledger:
-- `$XDG_STATE_HOME/optimizely-offline/ledger.db`, or
-- `~/.local/state/optimizely-offline/ledger.db` when `XDG_STATE_HOME` is
-- unset, empty or not an absolute path (as the XDG base directory
-- specification says).
-- @return the path, or nil and a message when neither variable gives one
function M.default_path()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state:sub(1, 1) ~= "/" then
    local home = os.getenv("HOME")
    if not home or home:sub(1, 1) ~= "/" then
      return nil, "no ledger path: neither XDG_STATE_HOME nor HOME is an absolute directory"
    end
    state = home .. "/.local/state"
  end
  return state .. "/optimizely-offline/ledger.db"
end

--- Open (creating on first use) a ledger file.
-- @param path the file (its directory must exist), or nil for `default_path()`,
--   whose directories are created 0700 when missing
-- @param options see `open_options`
-- @return a ledger (its field `path` is the file), or nil, err (kind `"storage"`,
--   `"foreign"` or `"busy"`)
function M.open(path, options)
  if path ~= nil and (type(path) ~= "string" or path == "") then
    error("ledger.open: path must be a non-empty string or nil, got "
      .. (path == "" and "an empty string" or type(path)), 2)
  end
  local o = OPEN:check(options, 2)
  if path == nil then
    local p, why = M.default_path()
    if not p then return nil, new_error({ kind = "storage", message = "ledger: " .. why }) end
    local dir = p:match("^(.*)/[^/]*$")
    local ok, merr = core.mkdir_private(dir)
    if not ok then return nil, new_error({ kind = "storage", message = "ledger " .. p .. ": " .. merr.message }) end
    path = p
  end
  local h, e = core.ledger_open(path, o.keep, o.store_key, o.busy_timeout)
  if not h then return nil, new_error(e) end
  return setmetatable({ handle = h, path = path, keep = o.keep }, Ledger)
end

--- The ledger inside a spool's file. From this call on, the spool's acks
-- write `"sent"`/`"warned"` rows, its kills and expiries `"dead"` rows and
-- the ack of a cancel row a `"cancelled"` row, each in the spool's own
-- transaction, under (host, site, the order's channel or `channel`) —
-- also on the handles the queue's delivery thread reopened from it.
-- @param sp an open `optimizely.offline.spool` object
-- @param options see `spool_options`
-- @return a ledger (close it on its own; the spool stays open; its field `path` is the
--   spool's file), or nil, err
function M.of_spool(sp, options)
  if type(sp) ~= "table" or type(sp.handle) ~= "userdata" then
    error("ledger.of_spool: expected a spool (optimizely.offline.spool.open), got " .. type(sp), 2)
  end
  local o = OF_SPOOL:check(options, 2)
  local h, e = core.ledger_of_spool(sp.handle, o.host, o.site, o.channel, o.store_key, o.keep)
  if not h then return nil, new_error(e) end
  return setmetatable({ handle = h, path = sp.path, keep = o.keep, spool = sp }, Ledger)
end

--- The SHA-256 fingerprint of a body, as the ledger keeps it.
-- @param body the exact bytes sent (a string)
-- @return 64 lower-case hex digits
function M.fingerprint(body)
  if type(body) ~= "string" then error("ledger.fingerprint: body must be a string, got " .. type(body), 2) end
  return core.ledger_fingerprint(body)
end

--- What the ledger keeps of an encoded order (from its bytes, with the
-- strict JSON decoder).
-- @param body an encoded order (`offline.encode`)
-- @param store_key the `order.attributes` key of the store (default `"store"`)
-- @return `{ref=, fingerprint=, order_at=?, currency=?, total=?, total_minor=?, store=?}`
--   (`total` formatted in the currency's decimals), or nil and the reason
function M.entry(body, store_key)
  if type(body) ~= "string" then error("ledger.entry: body must be a string, got " .. type(body), 2) end
  local e, err = core.ledger_entry(body, store_key)
  if e then return e end
  return nil, err.message
end

--- A scope from an endpoint URL, as the ledger keys orders: the URL's host
-- (lower-case, with its port when it is not 443), the site and the channel.
-- @param url the endpoint (base URL or full URL)
-- @param site the `site` header
-- @param channel the channel
-- @return `{host=, site=, channel=}`
function M.scope(url, site, channel)
  if type(url) ~= "string" then error("ledger.scope: url must be a string, got " .. type(url), 2) end
  local hostport = url:match("^%a[%w+.-]*://([^/?#]+)") or url:match("^([^/?#]+)")
  if not hostport or hostport == "" then error("ledger.scope: no host in " .. opts.show(url), 2) end
  hostport = hostport:gsub("^.*@", ""):lower():gsub(":443$", "")
  return { host = hostport, site = site, channel = channel }
end

--- A scope: the key's first three parts.
-- @table scope
-- @field host the endpoint's host (see `ledger.scope`)
-- @field site the `site` header
-- @field channel the channel (of the orders that do not name their own)

--- What a lookup or a reservation found for one order.
-- @table answer
-- @field state `"unknown"` (check: not seen, send it), `"reserved"` (reserve: not seen,
--   now reserved by this handle), `"same"` (seen with this fingerprint: already sent),
--   `"changed"` (seen with another fingerprint), `"seen"` (check without a body) or
--   `"in_flight"` (reserved by a live handle, this one or another)
-- @field outcome same/changed/seen: the row's outcome (`"sent"`, `"warned"`, `"cancelled"`)
-- @field at same/changed/seen: when it was recorded (epoch seconds)
-- @field until in_flight: when the reservation expires (epoch seconds)
-- @field mine in_flight: reserved by this handle
-- @field reserved reserve: this handle holds the order's reservation now (`"reserved"`, or a
--   forced item's `"same"`/`"changed"`)

--- One order of a batched call: a body string, or a table.
-- @table item
-- @field body the encoded order (its refCode and fingerprint are read from it)
-- @field ref the refCode, when there is no body (release; record of a cancel)
-- @field channel the order's channel (default: the scope's)
-- @field outcome record only: `"sent"`, `"warned"`, `"dead"` or `"cancelled"`
-- @field force reserve only: reserve it even when the ledger has it (a forced send, an
--   amend): its answer says what the ledger has (`"same"`, `"changed"`) with `reserved = true`

local function check_scope(scope, fn)
  if type(scope) ~= "table" then
    error(fn .. ": scope must be a table {host=, site=, channel=}, got " .. type(scope), 3)
  end
end

--- Look one order up.
-- @param scope see `scope`
-- @param ref its refCode (or nil: read from the body)
-- @param body the encoded order, or nil (then a seen order answers `"seen"`)
-- @param now epoch seconds (default: the clock), for reservations' leases
-- @return an `answer`, or nil, err
function Ledger:check(scope, ref, body, now)
  check_scope(scope, "ledger:check")
  if ref == nil and body == nil then error("ledger:check: give a ref or a body", 2) end
  local answers, err = self.handle:check(scope, { { ref = ref, body = body } }, now)
  if not answers then return nil, new_error(err) end
  return answers[1]
end

--- Look many orders up (one read snapshot).
-- @param scope see `scope`
-- @param list array of `item`
-- @param now epoch seconds (default: the clock)
-- @return array of `answer` (same order), or nil, err
function Ledger:check_many(scope, list, now)
  check_scope(scope, "ledger:check_many")
  return wrap(self.handle:check(scope, list, now))
end

--- Look up and reserve a batch in one write transaction: every order that
-- is neither seen nor in flight is reserved by this handle for `lease`
-- seconds (answer `"reserved"`: send it, then `record` or `release` it);
-- an item with `force` is reserved seen or not (unless in flight). A
-- reservation whose process is gone is taken over.
-- @param scope see `scope`
-- @param list array of `item`
-- @param options `{lease = 300, now = clock, short = false}`; `short`:
--   the two common answers without a table — `true` for an order reserved
--   now, the number `at` for one sent before (outcome "sent") with the
--   same bytes and not reserved; the others as tables (how `send_batch` asks: a
--   run again on a file sent in full gets no table per order); `refs`:
--   an array beside `list`, `refs[i]` the refCode of body string `list[i]`
--   (as `core.ref_string` gives it) — an order recorded before with the
--   same bytes is then found by it and its fingerprint, without reading
--   the body (the answer is the same; anything else is looked up as usual)
-- @return array of `answer` (same order), or nil, err
function Ledger:reserve(scope, list, options)
  check_scope(scope, "ledger:reserve")
  local o = RESERVE:check(options, 2)
  return wrap(self.handle:reserve(scope, list, o.lease, o.now, o.short, o.refs))
end

--- Record outcomes (one write transaction) and drop the reservations of
-- them, whichever handle took them (the order is settled). A `"dead"`
-- outcome never replaces a seen row; a
-- `"cancelled"` without a body marks the row there is (keeping its
-- fingerprint and report fields).
-- @param scope see `scope`
-- @param list array of `item`s: tables with their `outcome`, or body strings (then
--   `options.outcome` is theirs)
-- @param options `{outcome = "sent" | "warned" | "dead" | "cancelled" (of the items naming
--   none), now = clock}`
-- @return true, or nil, err
function Ledger:record(scope, list, options)
  check_scope(scope, "ledger:record")
  local o = RECORD:check(options, 2)
  return wrap(self.handle:record(scope, list, o.now, o.outcome))
end

--- Drop this handle's reservations of the orders (not sent after all).
-- @param scope see `scope`
-- @param list array of `item` (a body or a ref each)
-- @return true, or nil, err
function Ledger:release(scope, list)
  check_scope(scope, "ledger:release")
  return wrap(self.handle:release(scope, list))
end

--- A ledger row, as `show` and `export` give it.
-- @table row
-- @field host
-- @field site
-- @field channel
-- @field ref the refCode
-- @field outcome `"sent"`, `"warned"`, `"dead"`, `"cancelled"`, or `"pending"` (a reservation: `show` only)
-- @field at when it was recorded (epoch seconds)
-- @field fingerprint 64 hex digits (absent for a cancel recorded without a body)
-- @field order_at the order's date (epoch seconds), when known
-- @field order_date the same as `YYYY-MM-DD` (UTC)
-- @field store the store, when known
-- @field currency the currency, when known
-- @field total the total in the currency's decimals (`"12.34"`), when known
-- @field total_minor the same in minor units (an integer)
-- @field owner pending: the reservation's owner token
-- @field until pending: when it expires

--- Every row of a refCode, across endpoints, sites and channels, with the
-- reservations in flight.
-- @param ref the refCode
-- @return array of `row`, or nil, err
function Ledger:show(ref)
  if type(ref) ~= "string" or ref == "" then error("ledger:show: ref must be a non-empty string", 2) end
  return wrap(self.handle:show(ref))
end

--- Every row, in key order, read in pages (bounded memory, whatever the
-- ledger's size).
-- @param sink `sink(row)` for each `row`; returning `false` (or `nil, err`) stops the export
-- @param options `{batch = 1000}` rows per page
-- @return how many rows were exported, or nil, err
function Ledger:export(sink, options)
  if type(sink) ~= "function" then error("ledger:export: sink must be a function, got " .. type(sink), 2) end
  local batch = EXPORT:check(options, 2).batch
  local n, scope, ref = 0, 0, nil
  while true do
    local rows, last_scope, last_ref = self.handle:page(scope, ref, batch)
    if not rows then return nil, new_error(last_scope) end
    for i = 1, #rows do
      local ok, serr = sink(rows[i])
      if ok == false or (ok == nil and serr ~= nil) then
        if errors.is(serr) then return nil, serr end
        return nil, new_error({ kind = "export", message = "export stopped by the sink"
          .. (serr ~= nil and (": " .. tostring(serr)) or "") })
      end
      n = n + 1
    end
    if #rows < batch then return n end
    scope, ref = last_scope, last_ref
  end
end

local function day_of(date, name)
  local y, m, d = date:match("^(%d+)%-(%d+)%-(%d+)$")
  local day = core.ledger_day(tonumber(y), tonumber(m), tonumber(d))
  if not day then error("ledger:report: opts." .. name .. " is not a date: " .. opts.show(date), 4) end
  return day
end

local function by_bits(by)
  if by == nil then return BY.day + BY.store end
  local words = by
  if type(by) == "string" then
    words = {}
    for w in by:gmatch("[^,%s]+") do words[#words + 1] = w end
  elseif type(by) ~= "table" then
    error("ledger:report: opts.by must be a list or a comma-separated string, got " .. type(by), 4)
  end
  local bits, seen = 0, {}
  for _, w in ipairs(words) do
    if not BY[w] then
      error("ledger:report: opts.by: unknown " .. opts.show(w) .. " (day, store, channel, currency)", 4)
    end
    if not seen[w] then bits = bits + BY[w] end
    seen[w] = true
  end
  return bits
end

local function zone_of(tz)
  if tz == nil or tz == "UTC" then return nil end
  if type(tz) ~= "string" then return tz end -- a core.tz_load zone
  local zone, why = core.tz_load(tz)
  if not zone then error("ledger:report: opts.timezone: " .. why.message, 4) end
  return zone
end

--- One group of a report: orders and exact totals for each outcome.
-- @table group
-- @field day `YYYY-MM-DD` in the report's time zone (by day; absent for orders without a date)
-- @field store the store (by store; absent when the orders name none)
-- @field channel (by channel)
-- @field currency always: totals never mix currencies
-- @field sent `{orders=, total=, total_minor=}` (`total` in the currency's decimals)
-- @field warned the same
-- @field dead the same
-- @field cancelled the same

--- Orders and exact totals per group, for each outcome, to the penny.
-- Grouped by the order's date (in `timezone`), store, channel and
-- currency, as `by` asks; currency is always a key.
-- @param options `{by = "day,store,currency" (a list or a comma-separated string of day, store,
--   channel, currency), from = "YYYY-MM-DD", to = "YYYY-MM-DD" (inclusive days of the orders'
--   dates), timezone = "Europe/London" (default UTC)}`
-- @return array of `group`, sorted by its keys, or nil, err
function Ledger:report(options)
  local o = REPORT:check(options, 2)
  local bits = by_bits(o.by)
  if bits % 16 < 8 then bits = bits + BY.currency end
  local from = o.from and day_of(o.from, "from")
  local to = o.to and day_of(o.to, "to")
  return wrap(self.handle:report(bits, from, to, zone_of(o.timezone)))
end

--- Forget rows recorded before a date (retention on demand).
-- @param before epoch seconds, or `"YYYY-MM-DD"` (its midnight, UTC)
-- @return how many rows were deleted, or nil, err
function Ledger:forget(before)
  if type(before) == "string" then
    local y, m, d = before:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
    local day = y and core.ledger_day(tonumber(y), tonumber(m), tonumber(d))
    if not day then error("ledger:forget: before must be epoch seconds or YYYY-MM-DD, got " .. opts.show(before), 2) end
    before = day * 86400
  elseif type(before) ~= "number" then
    error("ledger:forget: before must be epoch seconds or YYYY-MM-DD, got " .. type(before), 2)
  end
  return wrap(self.handle:forget(before))
end

--- Prune now the rows older than `keep` days (it also happens on its own:
-- on open and every 1000 rows recorded, a bounded number at a time).
-- @param now epoch seconds (default: the clock)
-- @return how many rows were deleted, or nil, err
function Ledger:prune(now)
  return wrap(self.handle:prune(now, 0))
end

--- How far back the ledger knows.
-- @return `{since=, created=, oldest=?, newest=?, pruned_before=?, keep=}` (epoch seconds):
--   `since` is when its knowledge starts (the horizon of the last prune or forget: rows
--   recorded before it were dropped, none after; else its creation or its oldest row),
--   `oldest`/`newest` the recorded times of its oldest and newest rows; or nil, err
function Ledger:span()
  local s, err = self.handle:span()
  if not s then return nil, new_error(err) end
  s.keep = self.keep
  -- nothing recorded after the last prune/forget horizon was dropped
  s.since = s.pruned_before or math.min(s.created, s.oldest or s.created)
  return s
end

--- This handle's reservation owner token ("pid:hex@ns": its process id, a
-- random part, and its pid namespace when the system tells it).
function Ledger:owner()
  return self.handle:owner()
end

--- Is it the ledger inside a spool's file?
function Ledger:in_spool()
  return self.handle:in_spool()
end

--- Is the ledger still open?
function Ledger:is_open()
  return self.handle:is_open()
end

--- Close the handle (idempotent; also done by the garbage collector). An
-- embedded ledger leaves its spool open, still recording acks.
function Ledger:close()
  self.handle:close()
end

function Ledger:__tostring()
  return tostring(self.handle)
end

Ledger.__close = Ledger.close -- Lua 5.4: local l <close> = ledger.open(...)

M.Ledger = Ledger

return M
