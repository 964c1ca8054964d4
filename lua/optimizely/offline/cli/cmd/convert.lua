--- The `convert` command: inputs (after the transform) to NDJSON, one
-- normalised request body per line — exactly the bytes `send` would post:
-- `optimizely-offline convert FILE… --to ndjson [-o FILE]`. An order read
-- with a channel (a CSV `channel` column, an NDJSON wrapper) stays wrapped,
-- `{"channel":…,"payload":…}`, so `send` posts it on that channel. Invalid
-- orders are reported and left out. The output file (`-o`) is private
-- (0600) and appears only when complete; it can never be one of the inputs.
-- @module optimizely.offline.cli.cmd.convert
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")
local common = require("optimizely.offline.cli.common")
local records = require("optimizely.offline.cli.records")
local validate = require("optimizely.offline.cli.cmd.validate")

local M = {}

--- Adds the `convert` command and its options to the argparse parser.
function M.register(parser)
  local cmd = records.order_command(parser, "convert",
    "Turn order files into payload NDJSON (normalised request bodies).")
  cmd:option("--to", "Output format (ndjson).", "ndjson"):choices({ "ndjson" })
  cmd:option("-o --output", "Output file (default: standard output)."):argname("<file>")
  cmd:option("--rejects", "Write invalid orders (with their error) to this NDJSON file."):argname("<file>")
end

--- Runs a parsed `convert` command.
-- @return exit code: 0 all converted, 1 some invalid, 2 usage error, 130
--   interrupted
function M.run(args, out, err)
  return validate.command(err, function()
    local encode = offline.encode
    local quote = core.json_encode
    local check = validate.Check.new(args, out, err, err, { { "--output", args.output } })
    local dest = common.output(args.output, out)
    check:run(function(item)
      local json, e = encode(item.payload)
      local channel = item.rec and item.rec.channel
      if json and channel then
        dest:write('{"channel":', quote(channel), ',"payload":', json, "}\n")
      elseif json then
        dest:write(json, "\n")
      end
      return json, e
    end)
    if dest ~= out then dest:close() end
    return check:finish(("%d converted, %d invalid, %d skipped"):format(check.good, check.bad, check.skipped))
  end)
end

return M
