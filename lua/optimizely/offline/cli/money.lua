--- Amounts as tills write them, for the money options of the command line
-- (`--decimal-comma`, `--currency-symbols`; `decimal_comma`,
-- `currency_symbols` in the config file): `order.shipping`, `subTotal`,
-- `total` and every item's `price`, when written as text, are read by the C
-- money parser (`core.money` with those options: `2,24`, `1.234,56`,
-- `£2.24`, `2,24 €`, `GBP 2.24`) and replaced by the plain decimal the
-- encoder takes (`2.24`), exact to the currency's minor unit, before
-- validation. So no transform has to parse them.
--
-- * A symbol or ISO code is dropped only when it is the order's own
--   currency: `$2.24` in a EUR order is a problem of that field.
-- * Thousands are grouped in threes (`1.234,56`, `1 234,56`, `1,234.56`);
--   `2,24` without `--decimal-comma` is a problem, never 224.
-- * An order whose currency is missing or not an ISO 4217 code is left
--   alone: the encoder names that problem.
-- * Numbers (not text) and values already plain are kept as they are, so a
--   rejects file written after the conversion goes out again unchanged.
-- @module optimizely.offline.cli.money
local core = require("optimizely.offline.core")

local M = {}

--- The order-level money fields.
M.ORDER_FIELDS = { "shipping", "subTotal", "total" }

-- What to do about a code of core.money: a hint for the command line.
local HINT = {
  grouping = function(opts)
    return opts.decimal_comma and "" or " (amounts like \"2,24\" need --decimal-comma)"
  end,
  syntax = function(opts, v)
    if opts.currency_symbols or not v:find("[^%d%s%.,']") then return "" end
    return " (a currency symbol needs --currency-symbols)"
  end,
}

-- The options that would read `v` in currency `cur`, as flags for a
-- message, or nil.
local TRIES = {
  { { currency_symbols = true }, "--currency-symbols" },
  { { decimal_comma = true }, "--decimal-comma" },
  { { decimal_comma = true, currency_symbols = true }, "--decimal-comma --currency-symbols" },
}
local function options_for(v, cur)
  for _, t in ipairs(TRIES) do
    if core.money(v, cur, t[1]) then return t[2] end
  end
  return nil
end

-- Without the options: the strict rules stay (the encoder's), but an
-- amount that one of them would read says which.
local function hinter(payload, one_field)
  local o = type(payload) == "table" and payload.order
  if type(o) ~= "table" then return nil end
  local cur = o.currency
  if type(cur) ~= "string" or not core.money(0, cur) then return nil end
  return one_field(o, cur)
end

--- A converter for a run's input settings. Without either option it only
-- names the option that would read an amount the encoder refuses
-- (`£2.24`: "add --currency-symbols"), and the strict rules stay.
-- @param input `{decimal_comma =, currency_symbols =}`
-- @return function(payload) -> problems | nil (a list of `{path, message}`)
function M.converter(input)
  local opts = { decimal_comma = input.decimal_comma or nil, currency_symbols = input.currency_symbols or nil }
  local money, quote = core.money, core.quote
  if not (opts.decimal_comma or opts.currency_symbols) then
    return function(payload)
      return hinter(payload, function(o, cur)
        local problems
        M.each_field(o, function(t, key, path)
          local v = t[key]
          if type(v) ~= "string" or money(v, cur) then return end
          local flags = options_for(v, cur)
          if not flags then return end -- the encoder says what is wrong
          problems = problems or {}
          problems[#problems + 1] = { path = path, message = ("must be a plain decimal like \"12.50\" (for "
            .. "amounts written like this one, add %s), got %s"):format(flags, quote(v, 60)) }
        end)
        return problems
      end)
    end
  end
  return function(payload)
    local o = type(payload) == "table" and payload.order
    if type(o) ~= "table" then return nil end
    local cur = o.currency
    if type(cur) ~= "string" or not money(0, cur) then return nil end
    local problems
    local function one(t, key, path)
      local v = t[key]
      if type(v) ~= "string" then return end
      local units, e, text = money(v, cur, opts) -- units, decimals, text | nil, err {message, code}
      if units then t[key] = text; return end
      local hint, msg = HINT[e.code], e.message
      problems = problems or {}
      problems[#problems + 1] = { path = path,
        message = msg .. (hint and hint(opts, v) or "") .. ", got " .. quote(v, 60) }
    end
    M.each_field(o, one)
    return problems
  end
end

--- Calls `fn(table, key, path)` for each money field of an order:
-- `shipping`, `subTotal`, `total`, then every item's `price`.
-- @param o the payload's `order`
-- @param fn function(t, key, path)
function M.each_field(o, fn)
  for _, k in ipairs(M.ORDER_FIELDS) do fn(o, k, "order." .. k) end
  if type(o.items) == "table" then
    for i, it in ipairs(o.items) do
      if type(it) == "table" then fn(it, "price", ("order.items[%d].price"):format(i)) end
    end
  end
end

return M
