--- `send` and the delivery ledger: where the ledger is, opening it, and
-- what it said about each order.
--
-- `send` keeps a ledger by default (optimizely.offline.ledger): the file
-- `--ledger FILE` names, else the config file's `ledger` key, else
-- `$XDG_STATE_HOME/optimizely-offline/ledger.db` (`~/.local/state/…` when
-- the variable is unset; the directories are made 0700). `--no-ledger`
-- (or `no_ledger = true` in the config file) turns it off.
--
-- The library decides (`client:send_batch{ledger = L, force =, amend =}`):
-- an order the ledger has with the same bytes is skipped ("already
-- sent"), one it has with other bytes fails with kind "changed" (not sent)
-- unless `--force` (sent anyway) or `--amend` (DELETE, then POST). This
-- module opens the ledger — a file that cannot be used stops the run
-- before anything is sent, exit 2 — and turns those results into the
-- run's counts and lines.
--
-- A dry run and `--check-first` only read the ledger (`check`): they never
-- create it nor write to it. They say what a real run would skip, and a
-- changed order fails them as it would fail the run.
-- @module optimizely.offline.cli.send_ledger
local common = require("optimizely.offline.cli.common")
local config = require("optimizely.offline.cli.config")
local client = require("optimizely.offline.client")
local context = require("optimizely.offline.context")
local delivery = require("optimizely.offline.delivery")
local ledger = require("optimizely.offline.ledger")

local M = {}

--- Adds the ledger's options to a command: ledger, no-ledger, force, amend.
-- @param cmd the argparse command
function M.options(cmd)
  cmd:option("--ledger", "The delivery ledger: what was sent before is not sent again (default "
    .. "$XDG_STATE_HOME/optimizely-offline/ledger.db, ~/.local/state/… without it)."):argname("<file>")
  cmd:flag("--no-ledger", "Keep no ledger: send every order, whether or not it was sent before.")
  cmd:flag("--force", "Send orders the ledger has with other content (or cancelled) anyway.")
  cmd:flag("--amend", "Replace orders the ledger has with other content: DELETE the old version, then POST "
    .. "the new one.")
end

-- `no_ledger` of the config file as a boolean (true/false, yes/no, 1/0).
local function file_flag(file, name)
  local v = file.values[name]
  if v == nil or v == "" then return nil end
  if v == "true" or v == "yes" or v == "1" then return true end
  if v == "false" or v == "no" or v == "0" then return false end
  common.config_error(file:at(file.line_of[name]) .. name .. " must be true or false")
end

--- The ledger file a command uses: the option's file, else the config
-- file's `ledger`, else the default path (`ledger.default_path`). A usage
-- error when there is none.
-- @param args the parsed arguments
-- @param who the commands asking (for the message when no path can be made)
-- @return the path, and true when it is the default one
function M.path(args, who)
  if args.ledger == "" then common.config_error("--ledger needs a file name") end
  if args.ledger then return args.ledger, false end
  local file = config.settings(args).file
  local v = file.values.ledger
  if v and v ~= "" then return v, false end
  local p, why = ledger.default_path()
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
  return file_flag(config.settings(args).file, "no_ledger") == true
end

-- ------------------------------------------------------------ a run's use

local Use = {}
Use.__index = Use
M.Use = Use

-- An error whose text is its message (a line about an order shows it
-- after "file:line: order REF: ").
local Note = { __tostring = function(e) return e.message end }

local function iso_minute(t)
  return os.date("!%Y-%m-%d %H:%M UTC", math.floor(t))
end

--- The ledger of a `send` run, opened (or not): `off` (no ledger), else
-- `path`, `L` (nil when a dry run finds no file: nothing is known).
-- A file that cannot be used is a usage error (exit 2) naming it, before
-- anything is read or sent.
-- @param run the `send` run (its `args`, `dry`, `client`)
-- @return a Use
function M.new(run)
  local args = run.args
  local self = setmetatable({ run = run, force = args.force or nil, amend = args.amend or nil }, Use)
  if args.force and args.amend then common.config_error("--force and --amend are exclusive: give one of them") end
  if M.off(args) then
    if args.force or args.amend then
      common.config_error((args.force and "--force" or "--amend") .. " decides what the ledger does with a changed "
        .. "order: not with --no-ledger")
    end
    self.off = true
    return self
  end
  local path, default = M.path(args, "send")
  self.path = path
  if run.dry or args.check_first then
    -- only read: a missing ledger knows nothing, and is not created
    local f = io.open(path, "rb")
    if not f then
      if run.dry then return self end
    else
      f:close()
    end
  end
  -- a dry run keeps every row (no prune: it records nothing)
  local L, err = ledger.open(not default and path or nil, run.dry and { keep = 36500 } or nil)
  if not L then
    common.config_error(("%s; nothing was sent (--no-ledger sends without a ledger)"):format(tostring(err)))
  end
  self.L = L
  return self
end

--- The ledger could not be used before anything was sent (`send_batch`
-- returned nil, err): a usage error (exit 2) naming the file; the run
-- writes no rejects file and no report (the input holds every order).
-- @param err the library's error (kind "storage", "busy" or "foreign")
function Use:unusable(err)
  self.run.phase = "refused"
  common.config_error(("%s; nothing was sent (--no-ledger sends without a ledger)"):format(tostring(err)))
end

--- The options `send_batch` gets for the ledger. Each acknowledgement is
-- written after the engine's turn that got it (`ledger_window = 0`), so a
-- kill -9 leaves unknown to the ledger only the requests then in flight.
-- @return `{ledger =, force =, amend =, ledger_window = 0}` (empty without a ledger)
function Use:batch_options()
  if self.off or not self.L then return {} end
  return { ledger = self.L, force = self.force, amend = self.amend, ledger_window = 0 }
end

--- Closes the ledger.
function Use:close()
  if self.L then self.L:close() end
end

--- How the summary names the ledger: "ledger: FILE" or why there is none.
function Use:line()
  if self.off then return "ledger: none (--no-ledger): every order was sent, whether or not it was before" end
  if not self.L then return "ledger: " .. common.path(self.path) .. " (not there yet: nothing known)" end
  return "ledger: " .. common.path(self.path)
end

--- What the report says of the ledger: its path, or false.
function Use:report_value()
  if self.off then return false end
  return self.path
end

-- ---------------------------------------------------------------- results

--- One order the library skipped: counted by reason (already_sent,
-- in_flight); with -v a line.
-- @param item the records item
-- @param reason why ("already_sent" or "in_flight")
-- @param at when it was sent (epoch seconds), or nil
function Use:skipped(item, reason, at)
  local run, st = self.run, self.run.st
  st.skipped = st.skipped + 1
  local by = st.skipped_by
  by[reason] = (by[reason] or 0) + 1
  if run.verbose then
    common.say(run.out, common.head(item), delivery.SKIPPED[reason] or tostring(reason),
      type(at) == "number" and (" (on " .. iso_minute(at) .. ")") or "")
  end
end

--- The batch's `on_skipped` for a run: the item of index `i` is taken
-- from `inflight` and counted as `skipped` does, with no call per order
-- but a line with -v.
-- @param inflight the run's batch index -> item table
-- @return fn(i, reason, at)
function Use:on_skipped(inflight)
  local run, st = self.run, self.run.st
  local by = st.skipped_by
  return function(i, reason, at)
    local item = inflight[i]
    if not item then return end
    inflight[i] = nil
    if run.verbose then return self:skipped(item, reason, at) end
    st.skipped = st.skipped + 1
    by[reason] = (by[reason] or 0) + 1
  end
end

--- Is `e` the library's "changed" failure?
function M.is_changed(e)
  return type(e) == "table" and e.kind == "changed"
end

--- The line of a changed order (after "file:line: order REF: "): when the
-- earlier version was sent, and what to do.
-- @param e the library's error (kind "changed"; `at`, `outcome` when known)
-- @return an error object whose text is that line
function M.changed_error(e)
  local at = type(e) == "table" and (e.at or e.sent_at)
  local what = (type(e) == "table" and e.outcome == "cancelled") and "cancelled" or "sent"
  local msg
  if type(at) == "number" then
    msg = ("changed since it was %s on %s; --amend replaces it"):format(what, iso_minute(at))
  else
    msg = ("changed since it was %s (%s); --amend replaces it"):format(what, tostring(e and e.message or e))
  end
  if what == "cancelled" then msg = msg:gsub("; %-%-amend replaces it$", "; --force sends it again") end
  return setmetatable({ kind = "changed", message = msg, at = at, outcome = type(e) == "table" and e.outcome
    or nil }, Note)
end

-- --------------------------------------------------------- read-only checks

-- The host, site and default channel a run would send to, without a
-- client (a dry run needs no token): the client's own URL rule, asked with
-- a placeholder token. nil when the configuration does not say.
local function where_without_client(args)
  local ok, conf = pcall(config.unchecked_config, args)
  if not ok or not conf.site then return nil end
  local default = conf.channel
  if not default and conf.tokens and next(conf.tokens, next(conf.tokens)) == nil then default = next(conf.tokens) end
  local checked
  ok, checked = pcall(client.check_config, { site = conf.site, env = conf.env, sitename = conf.sitename,
    base_url = conf.base_url, allow_http = true, token = "placeholder", channel = "store" })
  if not ok then return nil end
  return checked.post_url, conf.site, default
end

--- The scope an order of `channel` is keyed under.
-- @local
function Use:scope(channel)
  if self.url == nil then
    local run = self.run
    local url, site, default
    if run.client then
      local st = client.state(run.client)
      url, site, default = run.client:url(), st.site, st.default_channel
    else
      url, site, default = where_without_client(run.args)
    end
    self.url, self.site, self.default = url or false, site, default
  end
  if not self.url then return nil end
  local name = context.channel_name(channel) or self.default
  if not name then return nil end
  return ledger.scope(self.url, self.site, name)
end

--- What the ledger knows of an encoded order (a dry run, `--check-first`):
-- nil (not known, or no ledger), "skipped" (already sent: `at`), or a
-- "changed" error (unless --force or --amend would send it).
-- @param item the records item (its channel)
-- @param body the encoded order
-- @return nil | "skipped", at | "changed", err
function Use:lookup(item, body)
  if not self.L then return nil end
  local scope = self:scope(item.rec and item.rec.channel)
  if not scope then return nil end
  local a, err = self.L:check(scope, nil, body)
  if not a then common.config_error(tostring(err)) end
  if a.state == "same" then return "skipped", a.at end
  if a.state == "changed" and not (self.force or self.amend) then
    return "changed", M.changed_error({ kind = "changed", at = a.at, outcome = a.outcome })
  end
  return nil
end

return M
