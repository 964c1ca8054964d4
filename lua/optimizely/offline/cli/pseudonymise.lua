--- The command line's pseudonymiser: the flags (`--pseudonymise` on send,
-- validate and convert; the id options shared with `mapping`) and the one
-- way a pseudonymiser is built from them, the environment and `--config`,
-- so that `mapping` and `send --pseudonymise` always compute the same ids.
-- @module optimizely.offline.cli.pseudonymise
local common = require("optimizely.offline.cli.common")

local M = {}

--- Adds the id options (and, with `flag`, the `--pseudonymise` switch).
function M.options(cmd, flag)
  if flag then
    cmd:flag("--pseudonymise", "Replace user.email with its pseudonymised user.id (HMAC-SHA256 with "
      .. "$OPTIMIZELY_PSEUDONYM_KEY or the config file's pseudonym_key) before validation; the e-mail "
      .. "is not sent.")
  end
  cmd:option("--length", "Id length in characters (hex: 16..64, even, default 64; "
    .. "base64url: 22..43, default 43)."):argname("<n>")
  cmd:option("--encoding", "Id encoding: hex (default) or base64url."):choices({ "hex", "base64url" })
  cmd:flag("--strip-plus-tag", "Cut the local part at its first + before hashing (jane+x@ -> jane@).")
  cmd:flag("--strip-dots", "Remove the dots of the local part before hashing (ja.ne@ -> jane@).")
end

--- The pseudonymiser of a run; any problem is a configuration error
-- (exit 2) that never shows the key.
-- @param args parsed arguments (config, length, encoding, strip_plus_tag, strip_dots)
-- @param getenv function(name) (default os.getenv)
-- @return p (see optimizely.offline.pseudonym)
function M.build(args, getenv)
  local pseudonym = require("optimizely.offline.pseudonym")
  local settings = common.settings(args, getenv)
  local key, err = pseudonym.key_from(getenv, { pseudonym_key = settings.pseudonym_key })
  if not key then common.config_error(err.message) end
  local o = {
    key = key, encoding = args.encoding,
    length = common.int_option(args.length, "length", 1),
    strip_plus_tag = args.strip_plus_tag or nil, strip_dots = args.strip_dots or nil,
  }
  local ok, p = pcall(pseudonym.new, o)
  if not ok then
    -- "opts.length must be ..." -> "--length must be ..."; the schema has
    -- already redacted the key
    local msg = tostring(p):gsub("^[^:]*:%d+: ", ""):gsub("^optimizely%.offline%.pseudonym: opts%.", "--")
    common.config_error((msg:gsub("^%-%-(%w+)_(%w+)", "--%1-%2")))
  end
  return p
end

return M
