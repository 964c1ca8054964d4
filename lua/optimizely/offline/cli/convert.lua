--- `optimizely-offline convert FILE… --to ndjson`: inputs (after the
-- transform) to NDJSON, one normalised request body per line — exactly the
-- bytes `send` would post. Invalid orders are reported and left out.
-- @module optimizely.offline.cli.convert
local common = require("optimizely.offline.cli.common")
local validate_cmd = require("optimizely.offline.cli.validate")

local M = {}

function M.register(parser)
  local cmd = parser:command("convert", "Turn order files into payload NDJSON (normalised request bodies).")
  common.input_options(cmd)
  common.output_options(cmd)
  cmd:option("--to", "Output format (ndjson).", "ndjson"):choices({ "ndjson" })
  cmd:option("-o --output", "Output file (default: standard output).")
  cmd:option("--rejects", "Write invalid orders (with their error) to this NDJSON file.")
end

function M.run(args, out, err)
  return common.guard(err, function()
    local offline = require("optimizely.offline")
    local core = require("optimizely.offline.core")
    local transform = common.load_transform(args.transform)
    local rejects = common.rejects(args.rejects)
    local dest = common.output(args.output, out)
    local progress = common.progress(err, args.quiet, core.now or os.clock)
    local encode = offline.encode
    local good, bad, skipped = 0, 0, 0
    for item in common.records(args, transform, progress) do
      if item.payload then
        local json, e = encode(item.payload)
        if json then
          dest:write(json, "\n")
          good = good + 1
        else
          bad = bad + 1
          validate_cmd.report(err, item, e)
          if rejects then rejects.add(item, e) end
        end
      elseif item.skipped then
        skipped = skipped + 1
      else
        bad = bad + 1
        validate_cmd.report(err, item)
        if rejects then rejects.add(item) end
      end
      if (good + bad) % 512 == 0 then progress:update(good + bad, bad) end
    end
    progress:finish()
    if dest ~= out then dest:close() end
    if rejects then rejects.close() end
    if not args.quiet then
      err:write(("%d converted, %d invalid, %d skipped\n"):format(good, bad, skipped))
    end
    return bad > 0 and 1 or 0
  end)
end

return M
