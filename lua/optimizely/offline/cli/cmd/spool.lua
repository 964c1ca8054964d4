--- The `spool` command: look into and manage a queue's SQLite spool:
-- `optimizely-offline spool stats|pending|list|send|retry|purge|export --spool FILE`.
-- `pending` shows what waits without personal data; `send` delivers it all
-- now (optimizely.offline.cli.drain); `purge --email|--user-id` removes one
-- customer's undelivered orders (an erasure request).
-- @module optimizely.offline.cli.cmd.spool
local common = require("optimizely.offline.cli.common")
local drain = require("optimizely.offline.cli.drain")
local report = require("optimizely.offline.cli.report")
local pseudonymise = require("optimizely.offline.cli.pseudonymise")
local spool = require("optimizely.offline.spool")

local M = {}

--- Adds the `spool` command and its subcommands to the argparse parser.
function M.register(parser)
  local cmd = parser:command("spool", "Inspect and manage a delivery spool (SQLite file).")
  cmd:command_target("spool_command")
  cmd:require_command(true)
  local function with_file(c)
    c:option("--spool", "Spool file."):count(1)
    return c
  end
  with_file(cmd:command("stats", "Counts: queued, due, claimed, dead, bytes, oldest age."))
  local pend = with_file(cmd:command("pending", "What waits to be sent: refCode, channel, attempts, next "
    .. "attempt, age and last error (no personal data)."))
  pend:option("--limit", "Rows to show (default: all)."):argname("<n>")
  drain.options(with_file(cmd:command("send", "Deliver every queued order now (due times ignored); exit when "
    .. "the spool is empty or holds only dead letters.")))
  local list = with_file(cmd:command("list", "List queued orders (or dead letters with --dead)."))
  list:flag("--dead", "List dead letters.")
  list:option("--limit", "Rows to show.", "50")
  local r = with_file(cmd:command("retry", "Move dead letters back into the queue."))
  r:argument("ids", "Dead-letter ids (default: all)."):args("*")
  local p = with_file(cmd:command("purge", "Delete dead letters (default) or queued orders; or one "
    .. "customer's undelivered orders (--email, --user-id)."))
  p:flag("--queued", "Purge queued (not yet delivered) orders instead. They are lost.")
  p:option("--older-than", "Only rows older than this many seconds.")
  p:option("--email", "Remove this customer's undelivered orders (queued and dead letters): an erasure "
    .. "request. With --pseudonymise also those sent under the pseudonymised id."):argname("<address>")
  p:option("--user-id", "Remove the undelivered orders of this user.id."):argname("<id>")
  pseudonymise.options(p, true)
  common.config_option(p)
  local e = with_file(cmd:command("export", "Write dead letters as NDJSON that `send` accepts."))
  e:option("-o --output", "Output file (default: standard output; written 0600, in place when complete).")
    :argname("<file>")
end

local function open(args)
  local f = io.open(args.spool, "rb")
  if not f then common.config_error("no spool file at " .. common.label(args.spool)) end
  f:close()
  local sp, err = spool.open(args.spool)
  if not sp then common.config_error(tostring(err)) end
  return sp
end

local spool_now = spool.now

local function fail(err_out, err)
  common.say(err_out, "error: ", tostring(err))
  return 1
end

local sub = {}

-- Each subcommand: function(spool, args, out, err) -> exit code.

function sub.stats(sp, _, out, err)
  local s, e = sp:stats()
  if not s then return fail(err, e) end
  common.say(out, ("queued %d  due %d  claimed %d  dead %d  bytes %d  oldest %.0fs"):format(
    s.queued, s.due, s.claimed, s.dead, s.bytes, s.oldest_age))
  return 0
end

-- "2h05m" for a number of seconds.
local function duration(s)
  local floor = math.floor
  s = math.max(0, floor(s + 0.5))
  if s < 60 then return s .. "s" end
  if s < 3600 then return ("%dm%02ds"):format(floor(s / 60), s % 60) end
  if s < 86400 then return ("%dh%02dm"):format(floor(s / 3600), floor(s % 3600 / 60)) end
  return ("%dd%02dh"):format(floor(s / 86400), floor(s % 86400 / 3600))
end

-- An error text for a screen with no personal data: e-mail addresses
-- masked, control characters escaped, cut short.
local function scrub(text)
  if not text then return "" end
  return common.clean(common.mask_emails(tostring(text)), 300)
end

-- When a queued row goes next: "due", "in delivery", or the time and how long until it.
local function next_attempt(row, now)
  if row.claimed_by and (row.claimed_until or 0) > now then return "in delivery" end
  if row.next_at <= now then return "due" end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(row.next_at)) .. " (in " .. duration(row.next_at - now) .. ")"
end

-- One line of `pending`: tab-separated, each field cleaned.
local function pending_line(row, now)
  local f = { row.ref or "-", row.channel or "(default)", tostring(row.attempts), next_attempt(row, now),
    duration(now - row.created_at), scrub(row.last_error) }
  for i = 1, 5 do f[i] = common.clean(f[i], 200) end
  return table.concat(f, "\t")
end

function sub.pending(sp, args, out, err)
  local limit = common.int_option(args.limit, "limit", 1)
  local now, shown, total = spool_now(), 0, 0
  out:write("ref\tchannel\tattempts\tnext_attempt\tage\tlast_error\n")
  local ok, e = sp:each_row(function(row)
    total = total + 1
    if limit and shown >= limit then return end
    shown = shown + 1
    out:write(pending_line(row, now), "\n")
  end)
  if not ok then return fail(err, e) end
  local s = sp:stats(now)
  if s then
    common.say(err, ("%d queued (%d due, %d in delivery), %d dead letters; oldest %s%s"):format(s.queued, s.due,
      s.claimed, s.dead, duration(s.oldest_age), shown < total and ("; %d not shown (--limit)"):format(total - shown)
      or ""))
  end
  return 0
end

function sub.list(sp, args, out, err)
  local rows, e = sp:list({ dead = args.dead, limit = common.int_option(args.limit, "limit", 1) or 50 })
  if not rows then return fail(err, e) end
  local clean = common.clean
  for _, row in ipairs(rows) do
    -- tab-separated; refs and messages come from orders and from the
    -- endpoint, so each field is cleaned (a tab inside one is escaped)
    local f
    if args.dead then
      f = { row.id, common.label(row.ref), "attempts=" .. row.attempts,
            tostring(row.kind) .. (row.status and (" " .. row.status) or ""), tostring(row.message or "") }
    else
      f = { row.id, common.label(row.ref), "attempts=" .. row.attempts,
            "next_at=" .. os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(row.next_at)), tostring(row.last_error or "") }
    end
    for i = 1, #f do f[i] = clean(f[i], 500) end
    out:write(table.concat(f, "\t"), "\n")
  end
  return 0
end

function sub.retry(sp, args, out, err)
  local total = 0
  local ids = (#args.ids > 0) and args.ids or { "all" }
  for _, id in ipairs(ids) do
    local which = id == "all" and "all" or tonumber(id)
    if not which then common.config_error("not a dead-letter id: " .. common.label(id)) end
    local n, e = sp:requeue_dead(which)
    if not n then return fail(err, e) end
    total = total + n
  end
  common.say(out, ("%d dead letters back in the queue"):format(total))
  return 0
end

-- The customer of `purge --email/--user-id`: `{email =, user_id =}`; with
-- --pseudonymise the e-mail's pseudonymised id is a user_id too (made as
-- `send --pseudonymise` makes it: the same key and id options).
local function customer(args)
  if args.queued or args.older_than then
    common.config_error("--email and --user-id remove one customer's orders: not with --queued or --older-than")
  end
  local ids = {}
  if args.user_id then ids[#ids + 1] = args.user_id end
  if args.pseudonymise then
    if not args.email then common.config_error("--pseudonymise needs --email") end
    local p = pseudonymise.build(args)
    local id, e = p:id(args.email)
    if not id then common.config_error("--email: " .. tostring(e)) end
    ids[#ids + 1] = id
  end
  return { email = args.email, user_ids = ids }
end

-- Removes one customer's undelivered orders and says how many.
local function purge_customer(sp, args, out, err)
  local who = customer(args)
  local removed, left = 0, 0
  local ids = #who.user_ids > 0 and who.user_ids or { false }
  for i, id in ipairs(ids) do
    local n, l = sp:purge_user({ email = i == 1 and who.email or nil, user_id = id or nil })
    if not n then return fail(err, l) end
    removed, left = removed + n, math.max(left, l)
  end
  common.say(out, ("removed %s of that customer (queued or dead letters)")
    :format(report.plural(removed, "undelivered order")))
  if left > 0 then
    common.say(err, ("error: %d more are being delivered by another process right now (or could not be moved): "
      .. "stop it and run the purge again"):format(left))
    return 1
  end
  return 0
end

function sub.purge(sp, args, out, err)
  if args.email or args.user_id then return purge_customer(sp, args, out, err) end
  if args.pseudonymise then common.config_error("--pseudonymise goes with --email") end
  local older = args.older_than and tonumber(args.older_than)
  if args.older_than and not older then common.config_error("--older-than takes seconds") end
  local n, e = sp:purge({ dead = not args.queued, queued = args.queued or nil, older_than = older })
  if not n then return fail(err, e) end
  common.say(out, ("%d %s purged"):format(n, args.queued and "queued orders" or "dead letters"))
  return 0
end

-- The output is private and appears only when complete; it is never the spool.
function sub.export(sp, args, out, err)
  local dest = common.output(args.output, out)
  local n, e = sp:export_dead(dest == out and out or dest.fh)
  if not n then
    if dest ~= out then dest:abort() end
    return fail(err, e)
  end
  if dest ~= out then dest:close() end
  common.say(err, ("%d dead letters exported"):format(n))
  return 0
end

--- Runs a parsed `spool` command.
-- @return exit code: 0 done, 1 failed, 2 usage error (`send`: 130, 143,
--   129 interrupted)
function M.run(args, out, err)
  return common.guard(err, function()
    common.refuse_overwrite({ args.spool, args.spool .. "-wal", args.spool .. "-shm" },
      { { "--output", args.output } })
    if args.spool_command == "send" then
      open(args):close() -- a missing or foreign file is a usage error, before any credential
      return drain.run(args, out, err)
    end
    local sp = open(args)
    local ok, rc = pcall(sub[args.spool_command], sp, args, out, err)
    sp:close()
    if not ok then error(rc, 0) end
    return rc
  end)
end

return M
