--- `optimizely-offline validate FILE…`: report every invalid order with its
-- file, line and field path; exit 1 if any. Nothing is sent.
-- @module optimizely.offline.cli.validate
local common = require("optimizely.offline.cli.common")

local M = {}

function M.register(parser)
  local cmd = parser:command("validate", "Check order files without sending anything.")
  common.input_options(cmd)
  common.output_options(cmd)
  cmd:option("--rejects", "Write invalid orders (with their error) to this NDJSON file.")
end

-- "file:line: order REF: path: message", one line per problem
local function report(out, item, err)
  local rec = item.rec
  local ref = item.payload and type(item.payload.order) == "table" and item.payload.order.refCode
  local head = common.where(rec) .. ": " .. (ref ~= nil and ("order " .. tostring(ref) .. ": ") or "")
  if type(err) == "table" and err.problems then
    for _, p in ipairs(err.problems) do
      out:write(head, p.path ~= "" and (p.path .. ": ") or "", p.message, "\n")
    end
    if err.truncated then out:write(head, "(more problems not shown)\n") end
  else
    out:write(tostring(err or item.message), "\n")
  end
end
M.report = report

function M.run(args, out, err)
  return common.guard(err, function()
    local offline = require("optimizely.offline")
    local core = require("optimizely.offline.core")
    local now = core.now or os.clock
    local transform = common.load_transform(args.transform)
    local rejects = common.rejects(args.rejects)
    local progress = common.progress(err, args.quiet, now)
    local validate = offline.validate
    local valid, invalid, skipped, n = 0, 0, 0, 0
    for item in common.records(args, transform, progress) do
      n = n + 1
      if item.payload then
        local ok, e = validate(item.payload)
        if ok then
          valid = valid + 1
          if args.verbose then out:write(common.where(item.rec), ": ok\n") end
        else
          invalid = invalid + 1
          report(out, item, e)
          if rejects then rejects.add(item, e) end
        end
      elseif item.skipped then
        skipped = skipped + 1
      else
        invalid = invalid + 1
        report(out, item)
        if rejects then rejects.add(item) end
      end
      if n % 512 == 0 then progress:update(valid + invalid, invalid) end
    end
    progress:update(valid + invalid, invalid, true)
    progress:finish()
    if rejects then rejects.close() end
    if not args.quiet then
      err:write(("%d valid, %d invalid, %d skipped\n"):format(valid, invalid, skipped))
    end
    return invalid > 0 and 1 or 0
  end)
end

return M
