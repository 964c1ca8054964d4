--- The `ledger` command: what the delivery ledger knows, from the command
-- line: `optimizely-offline ledger report|show|forget|export [--ledger FILE]`.
--
-- The ledger is the file `send` keeps by default
-- (optimizely.offline.cli.send_ledger: `--ledger FILE`, the config file's
-- `ledger` key, else `$XDG_STATE_HOME/optimizely-offline/ledger.db`). These
-- commands never create it: a missing file is an error.
--
-- * `report`: orders and exact totals per day, store and currency (`--by`
--   any of day, store, channel, currency; the currency is always a key),
--   for each outcome (sent, warned, dead, cancelled), within `--from` /
--   `--to`, days in `--timezone`; CSV (default) or `--json`; it says on
--   standard error how far back the ledger knows (`ledger:span`).
-- * `show REFCODE`: every row of a refCode, across endpoints, sites and
--   channels, with any reservation in flight (exit 1 when there is none).
-- * `forget --before DATE`: deletes the rows recorded before that day
--   (retention on demand) and says how many.
-- * `export`: every row, streamed page by page: CSV or `--json` lines, to
--   standard output or `-o FILE` (0600, in place when complete, never the
--   ledger itself).
--
-- Exit codes: 0 done, 1 `show` found nothing, 2 a usage error or a ledger
-- that cannot be used (missing, foreign, damaged, busy, unreadable: the
-- message names the file).
-- @module optimizely.offline.cli.cmd.ledger
local common = require("optimizely.offline.cli.common")
local core = require("optimizely.offline.core")
local ledger = require("optimizely.offline.ledger")
local report = require("optimizely.offline.cli.report")
local where = require("optimizely.offline.cli.send_ledger").path

local M = {}

--- The report's grouping keys, in the order their columns come.
M.KEYS = { "day", "store", "channel", "currency" }
--- The outcomes a report and an export know, in the order their columns come.
M.OUTCOMES = { "sent", "warned", "dead", "cancelled" }
--- The columns of `ledger export`'s CSV, in order.
M.EXPORT_COLUMNS = { "host", "site", "channel", "ref", "outcome", "at", "order_at", "order_date", "store",
  "currency", "total", "total_minor", "fingerprint" }

local function ledger_option(c)
  c:option("--ledger", "The ledger file (default: $XDG_STATE_HOME/optimizely-offline/ledger.db, or the "
    .. "config file's ledger).")
    :argname("<file>")
  common.config_option(c)
  return c
end

local function output_option(c)
  c:option("-o --output", "Output file (default: standard output; written 0600, in place when complete)."):argname(
    "<file>")
end

--- Adds the `ledger` command and its subcommands to the argparse parser.
function M.register(parser)
  local cmd = parser:command("ledger", "What the delivery ledger knows: reports, one order, retention, export.")
  cmd:command_target("ledger_command")
  cmd:require_command(true)
  local rep = ledger_option(cmd:command("report", "Orders and exact totals per day, store and currency, for "
    .. "sent, warned, dead and cancelled (CSV, or --json)."))
  rep:option("--by", "Group by any of day, store, channel, currency, comma-separated (default day,store,currency; "
    .. "the currency is always a key)."):argname("<keys>")
  rep:option("--from", "First day of the orders' dates (YYYY-MM-DD, in --timezone)."):argname("<date>")
  rep:option("--to", "Last day of the orders' dates (YYYY-MM-DD, in --timezone)."):argname("<date>")
  rep:option("--timezone", "Time zone of the days, e.g. Europe/London (default UTC)."):argname("<zone>")
  rep:flag("--json", "Write JSON (the groups, with how far back the ledger knows) instead of CSV.")
  output_option(rep)
  local show = ledger_option(cmd:command("show", "Every ledger row of a refCode (across endpoints, sites and "
    .. "channels), with any reservation in flight; exit 1 when there is none."))
  show:argument("refcode", "The order's refCode.")
  show:flag("--json", "Write the rows as a JSON array.")
  local forget = ledger_option(cmd:command("forget", "Delete the rows recorded before a day (retention); says how "
    .. "many."))
  forget:option("--before", "Forget the rows recorded before this day (YYYY-MM-DD, midnight UTC)."):argname("<date>")
    :count(1)
  local export = ledger_option(cmd:command("export", "Write every row (streamed): CSV, or --json lines."))
  export:flag("--json", "Write one JSON object a line instead of CSV.")
  output_option(export)
  cmd:epilog("Exit codes: 0 done, 1 show found no row, 2 usage error or a ledger that cannot be used "
    .. "(missing, not a ledger, damaged, busy: the message names the file).")
end

-- ------------------------------------------------------------ the file

--- Opens the ledger the arguments name; a missing file or one that cannot
-- be opened is an error (exit 2) naming it. Nothing is created.
-- @param args the parsed arguments
-- @return the open ledger
function M.open(args)
  local path = where(args, "the ledger commands")
  local f = io.open(path, "rb")
  if not f then
    common.config_error(("no ledger at %s: `optimizely-offline send` creates it (or name one with --ledger)")
      :format(common.path(path)))
  end
  f:close()
  local L, err = ledger.open(path)
  if not L then common.config_error(tostring(err)) end
  return L
end

-- A ledger call's failure: exit 2 with its message (it names the file).
local function check(v, err)
  if v == nil then common.config_error(tostring(err)) end
  return v
end

-- ------------------------------------------------------------- values

local function iso(t)
  if type(t) ~= "number" then return nil end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

--- A day option (`YYYY-MM-DD`, a real date) or nil; a bad one is a usage error.
-- @param value the option's text
-- @param name the option's name, for the message
function M.day_option(value, name)
  if value == nil then return nil end
  local y, m, d = tostring(value):match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  if not y or not core.ledger_day(tonumber(y), tonumber(m), tonumber(d)) then
    common.config_error(("--%s must be a day YYYY-MM-DD, got %s"):format(name, core.quote(tostring(value), 40)))
  end
  return value
end

-- The --by keys in column order (the currency always among them).
local function by_keys(value)
  local asked = {}
  for w in (value or "day,store,currency"):gmatch("[^,%s]+") do
    local known = false
    for _, k in ipairs(M.KEYS) do known = known or k == w end
    if not known then
      common.config_error(("--by: unknown key %s (day, store, channel, currency)"):format(common.label(w)))
    end
    asked[w] = true
  end
  asked.currency = true
  local keys = {}
  for _, k in ipairs(M.KEYS) do
    if asked[k] then keys[#keys + 1] = k end
  end
  return keys
end

local function zone_option(value)
  if value == nil or value == "UTC" then return nil end
  local zone, why = core.tz_load(value)
  if not zone then common.config_error("--timezone: " .. why.message) end
  return zone
end

--- One CSV field (RFC 4180: quoted when it holds a comma, a quote or a
-- line break; nil is empty).
function M.csv_field(v)
  if v == nil then return "" end
  v = tostring(v)
  if v:find('[,"\r\n]') then return '"' .. v:gsub('"', '""') .. '"' end
  return v
end

local function csv_line(fields, n)
  local parts = {}
  for i = 1, n do parts[i] = M.csv_field(fields[i]) end
  return table.concat(parts, ",") .. "\r\n"
end

-- ------------------------------------------------------------- report

-- "the ledger FILE knows the orders recorded since DATE (...)": what
-- `ledger:span` says, for a person.
local function span_line(path, s)
  local kept = ("rows are kept %d days"):format(s.keep)
  if not s.oldest then
    return ("ledger %s: empty (created %s; %s)"):format(common.path(path), iso(s.created), kept)
  end
  return ("ledger %s: knows the orders recorded since %s (oldest row %s, newest %s; %s%s)"):format(
    common.path(path), iso(s.since), iso(s.oldest), iso(s.newest), kept,
    s.pruned_before and (", older ones were pruned or forgotten") or "")
end

local function report_csv(dest, keys, groups)
  local head = {}
  for i, k in ipairs(keys) do head[i] = k end
  for _, o in ipairs(M.OUTCOMES) do
    head[#head + 1] = o .. "_orders"
    head[#head + 1] = o .. "_total"
  end
  dest:write(csv_line(head, #head))
  local row = {}
  for _, g in ipairs(groups) do
    local n = 0
    for _, k in ipairs(keys) do
      n = n + 1
      row[n] = g[k]
    end
    for _, o in ipairs(M.OUTCOMES) do
      row[n + 1], row[n + 2] = g[o].orders, g[o].total
      n = n + 2
    end
    dest:write(csv_line(row, n))
  end
end

local REPORT_FIRST = { "ledger", "by", "from", "to", "timezone", "since", "oldest", "newest", "pruned_before",
  "keep_days", "groups", "day", "store", "channel", "currency", "sent", "warned", "dead", "cancelled", "orders",
  "total", "total_minor" }

local function report_json(dest, meta, groups)
  local o = { first = REPORT_FIRST, sort = true }
  local head = assert(core.json_encode(meta, { first = REPORT_FIRST, sort = true, indent = 2 }))
  dest:write(head:gsub("\n}$", ""), ',\n  "groups": [')
  for i, g in ipairs(groups) do
    dest:write(i > 1 and ",\n    " or "\n    ", assert(core.json_encode(g, o)))
  end
  dest:write(#groups > 0 and "\n  ]\n}\n" or "]\n}\n")
end

-- Runs fn(dest) on the output the arguments name, then puts it in place.
local function to_output(args, out, fn)
  local dest = common.output(args.output, out)
  fn(dest)
  if dest ~= out then dest:close() end
end

local sub = {}

function sub.report(L, args, out, err)
  local keys = by_keys(args.by)
  local from, to = M.day_option(args.from, "from"), M.day_option(args.to, "to")
  if from and to and from > to then
    common.config_error(("--from %s is after --to %s"):format(from, to))
  end
  local zone = zone_option(args.timezone)
  local groups = check(L:report({ by = keys, from = from, to = to, timezone = zone }))
  local s = check(L:span())
  to_output(args, out, function(dest)
    if args.json then
      report_json(dest, { ledger = L.path, by = keys, from = from, to = to, timezone = args.timezone or "UTC",
        since = iso(s.since), oldest = iso(s.oldest), newest = iso(s.newest), pruned_before = iso(s.pruned_before),
        keep_days = s.keep }, groups)
    else
      report_csv(dest, keys, groups)
    end
  end)
  common.say(err, span_line(L.path, s))
  return 0
end

-- ---------------------------------------------------------------- show

local SHOW_COLUMNS = { "host", "site", "channel", "outcome", "at", "order_date", "store", "currency", "total",
  "fingerprint" }

function sub.show(L, args, out, err)
  local rows = check(L:show(args.refcode))
  if args.json then
    local parts = {}
    for i, r in ipairs(rows) do parts[i] = assert(core.json_encode(r, { sort = true })) end
    out:write("[", table.concat(parts, ",\n "), "]\n")
  elseif #rows > 0 then
    out:write(table.concat(SHOW_COLUMNS, "\t"), "\n")
    for _, r in ipairs(rows) do
      local f = {}
      for i, k in ipairs(SHOW_COLUMNS) do
        local v = r[k]
        if k == "at" then v = iso(v) end
        if k == "outcome" and v == "pending" then
          v = ("pending (reserved by %s until %s)"):format(tostring(r.owner), iso(r["until"]))
        end
        f[i] = common.clean(v == nil and "-" or v, 200)
      end
      out:write(table.concat(f, "\t"), "\n")
    end
  end
  if #rows == 0 then
    common.say(err, "no ledger row for ", common.label(args.refcode), " in ", common.path(L.path))
    return 1
  end
  return 0
end

-- -------------------------------------------------------------- forget

function sub.forget(L, args, out)
  local day = M.day_option(args.before, "before")
  local n = check(L:forget(day))
  common.say(out, ("forgot %s recorded before %s (UTC) in %s"):format(
    report.plural(n, "row"), day, common.path(L.path)))
  return 0
end

-- -------------------------------------------------------------- export

local function export_csv_row(r)
  local f = {}
  for i, k in ipairs(M.EXPORT_COLUMNS) do
    local v = r[k]
    if k == "at" or k == "order_at" then v = iso(v) end
    f[i] = v
  end
  return csv_line(f, #M.EXPORT_COLUMNS)
end

function sub.export(L, args, out, err)
  local n
  to_output(args, out, function(dest)
    if not args.json then dest:write(csv_line(M.EXPORT_COLUMNS, #M.EXPORT_COLUMNS)) end
    local o = { sort = true }
    n = check(L:export(function(r)
      dest:write(args.json and (assert(core.json_encode(r, o)) .. "\n") or export_csv_row(r))
      return true
    end))
  end)
  common.say(err, ("%s exported from %s"):format(report.plural(n, "row"),
    common.path(L.path)))
  return 0
end

--- Refuses (exit 2) an output that is the ledger or one of SQLite's files
-- beside it (`-wal`, `-shm`, `-journal`), even before they exist, however
-- spelled; or the config file.
-- @param path the ledger
-- @param output the output path ("-": standard output)
-- @param config the config file, or nil
function M.refuse_onto(path, output, config)
  if output == "-" then return end
  for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do
    if common.same_target(path .. suffix, output) then
      common.config_error(("--output %s is the ledger%s: write it elsewhere"):format(common.label(output),
        suffix == "" and "" or (" (its " .. suffix .. " file)")))
    end
  end
  common.refuse_overwrite({ config }, { { "--output", output } })
end

--- Runs a parsed `ledger` command.
-- @return exit code: 0 done, 1 `show` found nothing, 2 usage error or a
--   ledger that cannot be used
function M.run(args, out, err)
  return common.guard(err, function()
    if args.output then M.refuse_onto(where(args, "the ledger commands"), args.output, args.config) end
    local L = M.open(args)
    local ok, rc = pcall(sub[args.ledger_command], L, args, out, err)
    L:close()
    if not ok then error(rc, 0) end
    return rc
  end)
end

return M
