--- `optimizely-offline spool stats|list|retry|purge|export --spool FILE`:
-- look into and manage a queue's SQLite spool.
-- @module optimizely.offline.cli.spool
local common = require("optimizely.offline.cli.common")

local M = {}

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
  e:option("-o --output", "Output file (default: standard output).")
end

local function open(args)
  local spool = require("optimizely.offline.spool")
  local f = io.open(args.spool, "rb")
  if not f then common.config_error("no spool file at " .. args.spool) end
  f:close()
  local sp, err = spool.open(args.spool)
  if not sp then common.config_error(tostring(err)) end
  return sp
end

local function fail(err_out, err)
  err_out:write("error: ", tostring(err), "\n")
  return 1
end

function M.run(args, out, err)
  return common.guard(err, function()
    local sp = open(args)
    local sub = args.spool_command
    local rc = 0
    if sub == "stats" then
      local s, e = sp:stats()
      if not s then return fail(err, e) end
      out:write(("queued %d  due %d  claimed %d  dead %d  bytes %d  oldest %.0fs\n"):format(
        s.queued, s.due, s.claimed, s.dead, s.bytes, s.oldest_age))
    elseif sub == "list" then
      local rows, e = sp:list({ dead = args.dead, limit = tonumber(args.limit) or 50 })
      if not rows then return fail(err, e) end
      for _, row in ipairs(rows) do
        if args.dead then
          out:write(("%d\t%s\tattempts=%d\t%s%s\t%s\n"):format(row.id, tostring(row.ref), row.attempts,
            tostring(row.kind), row.status and (" " .. row.status) or "", tostring(row.message or "")))
        else
          out:write(("%d\t%s\tattempts=%d\tnext_at=%s\t%s\n"):format(row.id, tostring(row.ref), row.attempts,
            os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(row.next_at)), tostring(row.last_error or "")))
        end
      end
    elseif sub == "retry" then
      local total = 0
      local ids = (#args.ids > 0) and args.ids or { "all" }
      for _, id in ipairs(ids) do
        local which = id == "all" and "all" or tonumber(id)
        if not which then common.config_error("not a dead-letter id: " .. id) end
        local n, e = sp:requeue_dead(which)
        if not n then return fail(err, e) end
        total = total + n
      end
      out:write(("%d dead letters back in the queue\n"):format(total))
    elseif sub == "purge" then
      local older = args.older_than and tonumber(args.older_than)
      if args.older_than and not older then common.config_error("--older-than takes seconds") end
      local n, e = sp:purge({ dead = not args.queued, queued = args.queued or nil, older_than = older })
      if not n then return fail(err, e) end
      out:write(("%d %s purged\n"):format(n, args.queued and "queued orders" or "dead letters"))
    elseif sub == "export" then
      local dest = common.output(args.output, out)
      local n, e = sp:export_dead(dest)
      if dest ~= out then dest:close() end
      if not n then rc = fail(err, e) else err:write(("%d dead letters exported\n"):format(n)) end
    end
    sp:close()
    return rc
  end)
end

return M
