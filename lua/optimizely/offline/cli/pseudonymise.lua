--- The command line's pseudonymiser: its flags (the switch on send,
-- validate and convert, `--pseudonymise`; the id options shared with
-- `mapping`) and the one way a pseudonymiser is built from them, the
-- environment and `--config`, so that `mapping` and `send --pseudonymise`
-- always compute the same ids.
-- @module optimizely.offline.cli.pseudonymise
local common = require("optimizely.offline.cli.common")
local config = require("optimizely.offline.cli.config")
local pseudonym = require("optimizely.offline.pseudonym")

local M = {}

--- Adds the pseudonym id options to an argparse command:
-- `--length`, `--id-encoding` (`--encoding`, its old name, still works
-- and warns), `--strip-plus-tag`, `--strip-dots` and, with
-- `flag`, the `--pseudonymise` switch (send, validate and convert;
-- `mapping` always pseudonymises).
-- @param cmd the argparse command
-- @param flag add `--pseudonymise` too
function M.options(cmd, flag)
  if flag then
    cmd:flag("--pseudonymise", "Replace user.email with its pseudonymised user.id (HMAC-SHA256 with "
      .. "$OPTIMIZELY_PSEUDONYM_KEY or the config file's pseudonym_key) before validation; the e-mail "
      .. "is not sent.")
  end
  cmd:option("--length", "Id length in characters (hex: 16..64, even, default 64; "
    .. "base64url: 22..43, default 43)."):argname("<n>")
  cmd:option("--id-encoding", "Id encoding: hex (default) or base64url (the file's character set is "
    .. "--input-encoding)."):choices({ "hex", "base64url" })
  cmd:option("--encoding"):hidden(true):action(M.old_encoding)
  cmd:flag("--strip-plus-tag", "Cut the local part at its first + before hashing (jane+x@ -> jane@).")
  cmd:flag("--strip-dots", "Remove the dots of the local part before hashing (ja.ne@ -> jane@).")
end

--- The argparse action of `--encoding`, the old name of `--id-encoding`:
-- the value goes to `id_encoding` with a warning in `args._warnings` (the
-- command line prints them), so it cannot be taken for the file's
-- character set (`--input-encoding`). A character-set name is a usage
-- error that says so.
-- @param args the parsed arguments so far (`_warnings`, `_usage_error`: read by
--   `optimizely.offline.cli.main`)
-- @param _ the option's target name
-- @param value the value given
function M.old_encoding(args, _, value)
  if value ~= "hex" and value ~= "base64url" then
    args._usage_error = ("--encoding is the old name of --id-encoding, the pseudonym id's encoding "
      .. "(hex or base64url), got %s; the input file's character set is --input-encoding "
      .. "(cp1252, latin1 or utf-8)"):format(common.label(value))
    return
  end
  args.id_encoding = value
  local w = args._warnings or {}
  w[#w + 1] = "warning: --encoding is now --id-encoding (the pseudonym id's encoding; "
    .. "the input file's character set is --input-encoding)"
  args._warnings = w
end

--- The pseudonymiser of a run; any problem is a configuration error
-- (exit 2) that never shows the key.
-- @param args parsed arguments (config, length, id_encoding, strip_plus_tag, strip_dots)
-- @param getenv function(name) (default os.getenv)
-- @return p (see optimizely.offline.pseudonym)
function M.build(args, getenv)
  local settings = config.settings(args, getenv)
  local key, err = pseudonym.key_from(getenv, { pseudonym_key = settings.pseudonym_key })
  if not key then common.config_error(err.message) end
  local o = {
    key = key, encoding = args.id_encoding,
    length = common.int_option(args.length, "length", 1),
    strip_plus_tag = args.strip_plus_tag or nil, strip_dots = args.strip_dots or nil,
  }
  local ok, p = pcall(pseudonym.new, o)
  if not ok then
    -- "opts.length must be ..." -> "--length must be ..."; the schema has
    -- already redacted the key
    local msg = tostring(p):gsub("^[^:]*:%d+: ", ""):gsub("^optimizely%.offline%.pseudonym: opts%.", "--")
    msg = msg:gsub("^%-%-encoding", "--id-encoding"):gsub("^%-%-(%w+)_(%w+)", "--%1-%2")
    common.config_error(msg)
  end
  return p
end

return M
