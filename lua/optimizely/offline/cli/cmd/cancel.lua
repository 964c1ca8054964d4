--- `optimizely-offline cancel REF…`: cancel orders by their refCode
-- (DELETE on the cancel path, one request per ref, with the client's
-- retries). One result line per ref on stdout; exit 1 if any failed.
-- `-` reads refs from standard input, one per line.
-- @module optimizely.offline.cli.cmd.cancel
local common = require("optimizely.offline.cli.common")
local config = require("optimizely.offline.cli.config")

local M = {}

--- Adds the `cancel` command to the argparse parser.
function M.register(parser)
  local cmd = parser:command("cancel", "Cancel orders by refCode.")
  cmd:argument("refs", "Order refCodes to cancel (- reads them from standard input, one per line).")
    :args("+")
  common.credential_options(cmd)
  common.output_options(cmd)
end

-- The refs in order; "-" expands to the non-blank lines of stdin.
local function refs_of(args)
  local i, pending = 0, nil
  return function()
    while true do
      if pending then
        local line = pending()
        if line then
          line = line:gsub("\r$", ""):gsub("^%s+", ""):gsub("%s+$", "")
          if line ~= "" then return line end
        else
          pending = nil
        end
      else
        i = i + 1
        local r = args.refs[i]
        if r == nil then return nil end
        if r == "-" then pending = io.stdin:lines() else return r end
      end
    end
  end
end

-- One cancel: a result line on `out`; true when cancelled.
local function cancel_one(client, ref, args, out)
  local res, e = client:cancel(ref)
  if res then
    if not args.quiet then
      common.say(out, common.label(ref), ": cancelled (HTTP ", tostring(res.status),
        res.attempts and res.attempts > 1 and (", " .. res.attempts .. " attempts") or "", ")")
    end
    return true
  end
  common.say(out, common.label(ref), ": not cancelled: ", tostring(e))
  return false
end

-- After Ctrl-C: what was done and what was not.
local function interrupted(err, counts, current, next_ref)
  local rest = {}
  if current then rest[1] = common.label(current) end
  for ref in next_ref do rest[#rest + 1] = common.label(ref) end
  common.say(err, "")
  common.say(err, ("interrupted: %d cancelled, %d failed, %d not done%s%s"):format(counts.ok, counts.failed,
    #rest, current and (" (the cancel of " .. common.label(current) .. " may or may not have arrived)") or "",
    #rest > 0 and (": " .. table.concat(rest, " ")) or ""))
  return 130
end

--- Runs a parsed `cancel` command.
-- @return exit code: 0 all cancelled, 1 some failed, 2 usage or
--   configuration error, 130 interrupted
function M.run(args, out, err)
  return common.guard(err, function()
    local client = config.client(args, nil, err)
    local counts = { ok = 0, failed = 0 }
    local next_ref = refs_of(args)
    local current
    local run_ok, perr = pcall(function()
      for ref in next_ref do
        current = ref
        local k = cancel_one(client, ref, args, out) and "ok" or "failed"
        counts[k] = counts[k] + 1
        current = nil
      end
    end)
    client:close()
    if not run_ok then
      if not common.is_interrupt(perr) then error(perr, 0) end
      return interrupted(err, counts, current, next_ref)
    end
    if not args.quiet then
      common.say(err, ("%d cancelled, %d failed"):format(counts.ok, counts.failed))
    end
    return counts.failed > 0 and 1 or 0
  end)
end

return M
