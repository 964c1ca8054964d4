--- `send` and the delivery ledger: where the ledger is, opening it, and
-- what it said about each order.
--
-- `send` keeps a ledger by default (optimizely.offline.ledger): the file
-- `--ledger FILE` names, else the config file's `ledger` key, else
-- `$XDG_STATE_HOME/optimizely-offline/ledger.db` (`~/.local/state/…` when
-- the variable is unset; the directories are made 0700). `--no-ledger`
-- (or `no_ledger = true` in the config file) turns it off.
-- @module optimizely.offline.cli.send_ledger
local common = require("optimizely.offline.cli.common")

local M = {}

-- `no_ledger` of the config file as a boolean (true/false, yes/no, 1/0).
local function file_flag(file, name)
  local v = file.values[name]
  if v == nil or v == "" then return nil end
  if v == "true" or v == "yes" or v == "1" then return true end
  if v == "false" or v == "no" or v == "0" then return false end
  common.config_error(file:at(file.line_of[name]) .. name .. " must be true or false")
end

--- The ledger file a command uses: `--ledger`, else the config file's
-- `ledger`, else the default path (`ledger.default_path`). A usage error
-- when there is none.
-- @param args the parsed arguments
-- @param who the commands asking (for the message when no path can be made)
-- @return the path, and true when it is the default one
function M.path(args, who)
  if args.ledger == "" then common.config_error("--ledger needs a file name") end
  if args.ledger then return args.ledger, false end
  local file = common.settings(args).file
  local v = file.values.ledger
  if v and v ~= "" then return v, false end
  local p, why = require("optimizely.offline.ledger").default_path()
  if not p then common.config_error(("%s: %s; name a file with --ledger"):format(who or "ledger", why)) end
  return p, true
end

--- Is the ledger off for this run (`--no-ledger`, or `no_ledger = true` in
-- the config file without `--ledger` on the command line)? `--ledger` with
-- `--no-ledger` is a usage error.
-- @param args the parsed arguments
function M.off(args)
  if args.no_ledger then
    if args.ledger then common.config_error("--ledger and --no-ledger are exclusive: give one of them") end
    return true
  end
  if args.ledger then return false end
  return file_flag(common.settings(args).file, "no_ledger") == true
end

return M
