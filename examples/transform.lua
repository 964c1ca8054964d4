--- Example transform script for the order readers.
-- A transform file returns one function `function(record, ctx)`; it receives
-- each record a reader produced (`record.payload`, `record.file`,
-- `record.line`, `record.index`) and returns the payload to send, or nil to
-- skip the order. This one, written for examples/till-export.csv:
--   * replaces the customer's e-mail with its pseudonymised `user.id`;
--   * turns the till's store code (`order.attributes.store`) into the store
--     name configured with Optimizely;
--   * upper-cases the currency (some tills write "gbp");
--   * skips till test orders, whose refCode starts with "TEST".
--
-- The pseudonym is the library's built-in one (optimizely.offline.pseudonym):
-- HMAC-SHA256 of the address trimmed and lower-cased, keyed with the secret
-- in OPTIMIZELY_PSEUDONYM_KEY (at least 16 bytes; `make demo` sets a demo
-- key). `user.id` must equal the id your web shop sends for the same person,
-- so the shop must compute it with the same key and normalisation (or pass
-- your own function as `fn`): see doc/topics/pseudonymisation.md.
--
-- Before switching, send Optimizely the e-mail -> id mapping of your
-- customers once: `optimizely-offline mapping examples/till-export.csv -o
-- mapping.csv` (without this transform, which removes the e-mails).

local pseudonym = require("optimizely.offline.pseudonym")

local STORES = {
  BW01 = "StreamlyCool Bluewater",
  LN02 = "StreamlyCool London Oxford Street",
  MC03 = "StreamlyCool Manchester Arndale",
}

-- The key is read once, when the transform loads: without a usable key the
-- command stops before reading any order.
local PSEUDONYM, err = pseudonym.resolve()
if not PSEUDONYM then error(tostring(err), 0) end

return function(record, ctx)
  local payload = record.payload
  local order = payload.order
  if type(order) ~= "table" then return payload end -- let the core report it

  if type(order.refCode) == "string" and order.refCode:sub(1, 4) == "TEST" then
    return nil
  end

  -- user.id from user.email, and the address itself removed. An address
  -- that is not one is left for validation to reject with its reason.
  local pseudonymised, warnings = PSEUDONYM:apply(payload)
  if pseudonymised then
    payload = pseudonymised
    for _, w in ipairs(warnings) do
      io.stderr:write(("%s:%s: %s: %s\n"):format(ctx.file, ctx.line, w.path, w.message))
    end
  end

  if type(order.currency) == "string" then order.currency = order.currency:upper() end

  local attrs = order.attributes
  if type(attrs) == "table" and attrs.store ~= nil then
    attrs.store = STORES[attrs.store] or attrs.store
  end
  return payload
end
