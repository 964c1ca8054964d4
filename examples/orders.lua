-- Example payloads: what a till integration builds. Returned as a list so
-- the demo (and your own scripts) can loop over them.
return {
  -- the full shape, as in the API reference
  {
    lang = "en-gb",
    user = { id = "abcd1234efgh", info = { gender = "male", loyalty = "gold" } },
    order = {
      refCode = "orderRef123", orderDate = "2016-05-16T14:25:00 GMT",
      customerId = "SomeCustomerId", currency = "GBP",
      shipping = 10, subTotal = 90, total = 100,
      items = {
        { refCode = "ref1", qty = 1, price = 50, attributes = { attr11 = "value11" } },
        { refCode = "ref2", qty = 2, price = 20, attributes = { attr21 = "value21" } },
      },
      attributes = { store = "StreamlyCool Bluewater" },
    },
  },
  -- the minimal valid order; an ISO 8601 time with an offset is converted to UTC
  {
    user = { id = "u-0001" },
    order = { refCode = 100234, orderDate = "2024-03-01T01:30:00+02:00", currency = "eur",
              total = "19.90", items = { { refCode = "SKU-7", qty = "1", price = "19.90" } } },
  },
  -- yen have no minor unit: 1500.5 rounds half away from zero to 1501
  {
    lang = "ja-jp",
    user = { segments = { "vip", "tokyo" } },
    order = { refCode = "T-88", orderDate = 1714557600, currency = "JPY", total = 1500.5,
              items = { { refCode = "TEA-1", qty = 3, price = 500.2 } } },
  },
  -- a hostile export row: every problem is reported with its field path
  {
    user = { email = "not-an-address" },
    order = { refCode = "", orderDate = "2024-02-30 10:00:00", currency = "£",
              subtotal = 5, total = "1,50",
              items = { { refCode = "X", qty = 1.5, price = -3 } } },
  },
}
