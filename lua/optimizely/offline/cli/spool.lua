--- `optimizely-offline spool stats|list|retry|purge|export --spool FILE`:
-- look into and manage a queue's SQLite spool.
-- @module optimizely.offline.cli.spool
local common = require("optimizely.offline.cli.common")

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
  local list = with_file(cmd:command("list", "List queued orders (or dead letters with --dead)."))
  list:flag("--dead", "List dead letters.")
  list:option("--limit", "Rows to show.", "50")
  local r = with_file(cmd:command("retry", "Move dead letters back into the queue."))
  r:argument("ids", "Dead-letter ids (default: all)."):args("*")
  local p = with_file(cmd:command("purge", "Delete dead letters (default) or queued orders."))
  p:flag("--queued", "Purge queued (not yet delivered) orders instead. They are lost.")
  p:option("--older-than", "Only rows older than this many seconds.")
  local e = with_file(cmd:command("export", "Write dead letters as NDJSON that `send` accepts."))
  e:option("-o --output", "Output file (default: standard output; written 0600, in place when complete).")
    :argname("<file>")
end

local function open(args)
  local spool = require("optimizely.offline.spool")
  local f = io.open(args.spool, "rb")
  if not f then common.config_error("no spool file at " .. common.label(args.spool)) end
  f:close()
  local sp, err = spool.open(args.spool)
  if not sp then common.config_error(tostring(err)) end
  return sp
end

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

function sub.purge(sp, args, out, err)
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

--- Runs a parsed `spool` command. @return exit code: 0 done, 1 failed,
-- 2 usage error
function M.run(args, out, err)
  return common.guard(err, function()
    common.refuse_overwrite({ args.spool, args.spool .. "-wal", args.spool .. "-shm" },
      { { "--output", args.output } })
    local sp = open(args)
    local ok, rc = pcall(sub[args.spool_command], sp, args, out, err)
    sp:close()
    if not ok then error(rc, 0) end
    return rc
  end)
end

return M
