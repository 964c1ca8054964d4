--- Local order dates for the date options of the command line (date
-- format and time zone): order dates as a till writes them
-- ("16/06/2024 14:25", local time) turned into the documented
-- "yyyy-MM-ddTHH:mm:ss GMT" before validation, so no integrator has to
-- convert them in a transform.
--
-- * With `--timezone` alone, `order.orderDate` is a local time in that zone,
--   written `YYYY-MM-DD HH:MM[:SS]` or `YYYY-MM-DDTHH:MM[:SS]`.
-- * With `--date-format`, it is written as the format says (directives:
--   `%Y` 4-digit year, `%y` 2-digit year (69-99: 19xx), `%m` month 1-12,
--   `%d`/`%e` day, `%b`/`%B` English month name or its first three letters,
--   `%H` hour 0-23, `%I` hour 1-12 with `%p` AM/PM, `%M` minutes, `%S`
--   seconds, `%f` fractions of a second (ignored), `%z` `Z` or `±hh[:]mm`,
--   `%a`/`%A` day name (ignored), `%F` = `%Y-%m-%d`, `%T` = `%H:%M:%S`,
--   `%R` = `%H:%M`, `%%` a percent sign; a space matches one or more
--   spaces; anything else matches itself). Without `--timezone` and `%z`
--   the time is UTC, as the encoder reads `YYYY-MM-DD HH:MM:SS`.
-- * A value already absolute (`… GMT`, `…Z`, `…+01:00`) is kept as that
--   instant, so a rejects file written after the conversion is sent again
--   as it is; a number (epoch seconds) is left to the encoder.
-- * Time zones come from the system's zoneinfo (`$TZDIR` or
--   /usr/share/zoneinfo), so summer time follows the real rules. A local
--   time the clocks skipped is an error; one that happened twice is taken
--   as the earlier of the two, with a warning.
-- @module optimizely.offline.cli.dates
local core = require("optimizely.offline.core")
local common = require("optimizely.offline.cli.common")

local M = {}

local PATH = "order.orderDate"

-- The time of day after a date, as --date-format directives: " %H:%M",
-- "T%H:%M:%S", " %I:%M %p"..., or nil when `rest` is not one.
local function time_format(rest)
  local sep, h, secs, ampm = rest:match("^([ T])%s*(%d%d?):%d%d(:?%d?%d?)(%s*[AaPp]%.?[Mm]%.?)$")
  if not sep then
    sep, h, secs = rest:match("^([ T])%s*(%d%d?):%d%d(:?%d?%d?)$")
  end
  if not sep or (secs ~= "" and not secs:match("^:%d%d$")) then return nil end
  local hour = ampm and "%I" or "%H"
  if ampm and (tonumber(h) < 1 or tonumber(h) > 12) then return nil end
  return sep .. hour .. ":%M" .. (secs ~= "" and ":%S" or "") .. (ampm and " %p" or "")
end

--- A `--date-format` that reads `v`, guessed from its shape
-- (`16/05/2024 15:25` -> `%d/%m/%Y %H:%M`; day first unless the first
-- number is a month and the second cannot be one), or nil.
-- @param v the date as the file writes it
function M.suggest_format(v)
  local a, s1, b, s2, y, rest = v:match("^(%d%d?)([/%.%-])(%d%d?)([/%.%-])(%d+)(.*)$")
  local date
  if a and s1 == s2 and (#y == 4 or #y == 2) then
    local day_first = not (tonumber(a) <= 12 and tonumber(b) > 12)
    date = (day_first and "%d" or "%m") .. s1 .. (day_first and "%m" or "%d") .. s2 .. (#y == 4 and "%Y" or "%y")
  else
    local t1, t2
    y, t1, t2, rest = v:match("^(%d%d%d%d)([/%.])%d%d?([/%.])%d%d?(.*)$")
    if not y or t1 ~= t2 then return nil end
    date = "%Y" .. t1 .. "%m" .. t2 .. "%d"
  end
  local time = time_format(rest)
  return time and (date .. time) or nil
end

-- The problem of a date that is not in the form --timezone reads alone:
-- what was expected, and the --date-format that would read it.
local function local_form_message(v, quote)
  local fmt = M.suggest_format(v)
  return "must be written YYYY-MM-DD HH:MM[:SS] when --timezone is given without --date-format"
    .. (fmt and (" (for dates written like this one, add --date-format '" .. fmt .. "')") or
      " (for dates written otherwise, describe them with --date-format)")
    .. ", got " .. quote(v, 60)
end

--- A converter for a run's input settings, or nil when there is nothing to
-- convert. A bad format or an unknown zone is a usage error (exit 2).
-- @param input `{date_format =, timezone =}`
-- @return function(payload) -> problems | nil, warnings | nil (lists of
--   `{path, message}`)
function M.converter(input)
  local fmt, tz = input.date_format, input.timezone
  if fmt == nil and tz == nil then return nil end
  if fmt ~= nil then
    local ok, why = core.date_check_format(fmt)
    if not ok then common.config_error("--date-format " .. core.quote(fmt, 60) .. " " .. why.message) end
  end
  local zone
  if tz ~= nil then
    local e
    zone, e = core.tz_load(tz)
    if not zone then common.config_error("--timezone: " .. e.message) end
  end
  local convert, quote = core.date_convert, core.quote
  local expected = fmt and ("the date format " .. quote(fmt, 60))
  return function(payload)
    local o = type(payload) == "table" and payload.order
    local v = type(o) == "table" and o.orderDate
    if type(v) ~= "string" then return nil end
    local out, note = convert(v, fmt, zone) -- out, warning | nil, err {message, code}
    if not out then
      local msg
      if note.code ~= "format" then msg = note.message .. ", got " .. quote(v, 60)
      elseif fmt then msg = "must match " .. expected .. " (" .. note.message .. "), got " .. quote(v, 60)
      else msg = local_form_message(v, quote) end
      return { { path = PATH, message = msg } }
    end
    o.orderDate = out
    if note then return nil, { { path = PATH, message = note .. " (" .. quote(v, 60) .. ")" } } end
    return nil
  end
end

return M
