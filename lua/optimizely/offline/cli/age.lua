--- The age guard of the commands that read orders (`send`, `validate`,
-- `convert`): an order dated more than `--max-order-age` days ago (180 by
-- default) gets a warning, because Optimizely keeps tracked data for about
-- six months and an older order may add nothing. It is still sent.
--
-- The other end is the encoder's (csrc/payload/encode.c): an order dated more than
-- a day in the future is a validation problem everywhere — the library,
-- the queue and every command — since no till sells in the future and the
-- endpoint would keep the nonsense. This module only reads the date the
-- way the encoder does (`core.order_time`); it never decides validity.
-- @module optimizely.offline.cli.age
local core = require("optimizely.offline.core")
local common = require("optimizely.offline.cli.common")

local M = {}

--- The default of `--max-order-age`, in days.
M.DEFAULT_DAYS = 180

local DAY = 86400

--- Adds `--max-order-age DAYS` to a command.
-- @param cmd the argparse command
function M.option(cmd)
  cmd:option("--max-order-age", "Warn about orders dated more than this many days ago (Optimizely keeps "
    .. "tracked data for about six months; 0: no warning).", tostring(M.DEFAULT_DAYS)):argname("<days>")
end

--- The guard of a run, or nil when there is none (`--max-order-age 0`, or a
-- command without the option).
-- @param value the option's value (text or nil)
-- @param now epoch seconds (default: the clock)
-- @return function(item) that adds the warning to `item.warnings`, or nil
function M.guard(value, now)
  if value == nil then return nil end
  local days = common.int_option(value, "max-order-age", 0, 36500)
  if days == 0 then return nil end
  local limit = (now or core.wall_now()) - days * DAY
  -- one text for every order (the summary groups them in one line)
  local message = ("dated more than %d days ago (--max-order-age): Optimizely keeps tracked data for about "
    .. "six months, so it may add nothing"):format(days)
  local order_time = core.order_time
  return function(item)
    local o = type(item.payload) == "table" and item.payload.order
    local t = type(o) == "table" and order_time(o.orderDate)
    if not t or t >= limit then return end
    local w = item.warnings or {}
    w[#w + 1] = { path = "order.orderDate", code = "old_order", source = "cli", message = message }
    item.warnings = w
  end
end

return M
