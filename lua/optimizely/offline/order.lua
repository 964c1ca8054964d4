--- Order builder for scripts: add lines, get exact `subTotal` and `total`.
-- Money is summed as integers of the currency's minor unit (pence, cents,
-- fils), never as floats, with the encoder's own rounding rules, so
-- `0.1 + 0.2` style drift cannot creep into a receipt.
--
--    local o = offline.order{ refCode = "R-1", orderDate = os.time(), currency = "GBP",
--                             user = { id = "abcd1234" }, shipping = "4.95" }
--    o:add{ refCode = "SKU-1", qty = 2, price = "9.99" }
--    o:add("SKU-2", 1, 5)
--    local payload = o:payload()   -- subTotal "24.98", total "29.93"
--    local json = assert(offline.encode(payload))
--
-- Bad values raise (this is a construction helper): the message names the
-- field path, e.g. `order.items[2].price: must not be negative`.
-- @module optimizely.offline.order
local core = require("optimizely.offline.core")

local M = {}
local Order = {}
Order.__index = Order

local function money(value, currency, path)
  local units, decimals, text = core.money(value, currency)
  if not units then error(path .. ": " .. decimals.message, 3) end
  return units, decimals, text
end

local ORDER_FIELDS = { refCode = true, orderDate = true, customerId = true, currency = true,
                       shipping = true, attributes = true, user = true, lang = true }

--- Start an order. `fields.currency` is required (it fixes the precision).
function M.order(fields)
  if type(fields) ~= "table" then error("order: fields table expected", 2) end
  for k in pairs(fields) do
    if not ORDER_FIELDS[k] then
      error(("order.%s: unknown field (subTotal and total are computed; items via :add)"):format(tostring(k)), 2)
    end
  end
  if type(fields.currency) ~= "string" or not core.money(0, fields.currency) then
    error("order.currency: must be an ISO 4217 code like \"GBP\", got " .. tostring(fields.currency), 2)
  end
  local self = setmetatable({ fields = fields, items = {}, sub_units = 0 }, Order)
  self.ship_units, self.decimals = 0, select(2, core.money(0, fields.currency))
  if fields.shipping ~= nil then
    self.ship_units = money(fields.shipping, fields.currency, "order.shipping")
  end
  return self
end

--- Add a line: `o:add{refCode=, qty=, price=, attributes=}` or `o:add(refCode, qty, price, attributes)`.
-- @return self (chainable)
function Order:add(item, qty, price, attributes)
  if type(item) ~= "table" then
    item = { refCode = item, qty = qty, price = price, attributes = attributes }
  end
  local i = #self.items + 1
  local path = "order.items[" .. i .. "]"
  local q = tonumber(item.qty)
  if not q or q < 1 or q ~= math.floor(q) then
    error(path .. ".qty: must be a positive integer, got " .. tostring(item.qty), 2)
  end
  if item.refCode == nil then error(path .. ".refCode: is required", 2) end
  local units, _, text = money(item.price, self.fields.currency, path .. ".price")
  self.sub_units = self.sub_units + q * units
  self.items[i] = { refCode = item.refCode, qty = q, price = text, attributes = item.attributes }
  return self
end

--- subTotal (Σ qty × price) and total (subTotal + shipping) as exact decimal strings.
function Order:totals()
  local d = self.decimals
  return core.format_money(self.sub_units, d), core.format_money(self.sub_units + self.ship_units, d)
end

--- The payload table for `offline.encode` / `client:send`.
function Order:payload()
  local f = self.fields
  local sub, total = self:totals()
  local items = {}
  for i, it in ipairs(self.items) do
    items[i] = { refCode = it.refCode, qty = it.qty, price = it.price, attributes = it.attributes }
  end
  return {
    lang = f.lang,
    user = f.user,
    order = {
      refCode = f.refCode, orderDate = f.orderDate, customerId = f.customerId,
      currency = f.currency,
      shipping = f.shipping ~= nil and core.format_money(self.ship_units, self.decimals) or nil,
      subTotal = sub, total = total, items = items, attributes = f.attributes,
    },
  }
end

return M
