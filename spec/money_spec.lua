-- Money as tills write it (issue 20): opt-in forms read by the C money
-- parser (csrc/payload/money.c, oo_money_from_till) through core.money and
-- offline.money — a decimal comma ("2,24", "1.234,56"), thousands grouped
-- in threes, a currency symbol or code dropped when it is the order's
-- currency — exact to the minor unit; never read by the encoder itself.
-- Then the command line's --decimal-comma and --currency-symbols, end to
-- end through the sandbox.
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")

local S = { currency_symbols = true }
local D = { decimal_comma = true }
local DS = { decimal_comma = true, currency_symbols = true }

-- core.money's normalised text, or nil and the error code
local function norm(v, cur, opts)
  local units, e, c = core.money(v, cur, opts) -- units, decimals, text | nil, err {message, code}
  if units then return c end
  return nil, e.code
end

describe("money as tills write it", function()
  it("reads a decimal comma, grouped thousands and the order's own symbol or code", function()
    local cases = {
      { "2,24", "EUR", D, "2.24" }, { "1.234,56", "EUR", D, "1234.56" }, { "12.345.678,9", "EUR", D, "12345678.90" },
      { "1 234,56", "EUR", D, "1234.56" }, { "1\194\160234,56", "EUR", D, "1234.56" },
      { "1\226\128\175234,56", "EUR", D, "1234.56" }, { "1'234,56", "CHF", D, "1234.56" },
      { "1.234", "EUR", D, "1234.00" }, { "0,5", "EUR", D, "0.50" }, { " 2,24 ", "EUR", D, "2.24" },
      { "1,234.56", "GBP", S, "1234.56" }, { "£2.24", "GBP", S, "2.24" }, { "£ 2.24", "GBP", S, "2.24" },
      { "2.24£", "GBP", S, "2.24" }, { "GBP 2.24", "GBP", S, "2.24" }, { "2.24 gbp", "GBP", S, "2.24" },
      { "1.234,56 €", "EUR", DS, "1234.56" }, { "€1.234,56", "EUR", DS, "1234.56" },
      { "EUR 2,24", "EUR", DS, "2.24" }, { "kr 12,50", "SEK", DS, "12.50" }, { "12,50 kr", "NOK", DS, "12.50" },
      { "R$ 1.234,56", "BRL", DS, "1234.56" }, { "R 10.00", "ZAR", S, "10.00" }, { "US$5", "USD", S, "5.00" },
      { "$5", "AUD", S, "5.00" }, { "¥1,000", "JPY", S, "1000" }, { "1,000", "JPY", S, "1000" },
      { "12,345 د.ك", "KWD", D, nil }, -- not a symbol we know: refused, never guessed
      { "1.2345", "KWD", S, "1.235" }, { "0,005", "EUR", D, "0.01" }, { "2.245", "GBP", S, "2.25" },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[4], (norm(c[1], c[2], c[3])), ("%q %s"):format(c[1], c[2]))
    end
  end)

  it("is exact to the minor unit on amounts a double cannot hold", function()
    assert.equal("999999999999.99", (norm("999.999.999.999,99", "EUR", D)))
    assert.equal("999999999999.99", (norm("£999,999,999,999.99", "GBP", S)))
    assert.equal("0.10", (norm("0,1", "EUR", D)))
    local text, units, decimals = offline.money("1.234,56 €", "EUR", DS)
    assert.same({ "1234.56", 123456, 2 }, { text, units, decimals })
  end)

  it("refuses what would be a guess: another currency, bad grouping, a sign, stray text", function()
    local refused = {
      { "$2.24", "EUR", S, "other_currency" }, { "£2.24", "EUR", S, "other_currency" },
      { "EUR 2,24", "GBP", DS, "other_currency" }, { "2,24 kr", "EUR", DS, "other_currency" },
      { "2,24", "GBP", S, "grouping" },     -- a decimal comma needs decimal_comma: never 224
      { "2.24", "EUR", D, "grouping" },     -- '.' groups thousands there: never 224
      { "1,23,456.00", "INR", S, "grouping" }, { "1.234.56", "EUR", D, "grouping" },
      { "1.234 567,00", "EUR", D, "grouping" }, { "12345.678,9", "EUR", D, "grouping" },
      { "-2,24", "EUR", D, "negative" }, { "-£2", "GBP", S, "negative" }, { "£-2", "GBP", S, "negative" },
      { "2,", "EUR", D, "syntax" }, { ",5", "EUR", D, "syntax" }, { "2,2,4", "EUR", D, "syntax" },
      { "two", "GBP", S, "syntax" }, { "£", "GBP", S, "syntax" }, { "2.24 £ x", "GBP", S, "syntax" },
      { "£2.24", "GBP", D, "syntax" }, -- a symbol needs currency_symbols
      { "1e3", "GBP", S, "syntax" }, { "0x10", "GBP", S, "syntax" },
      { string.rep("9", 14) .. ",00", "EUR", D, "too_large" },
    }
    for _, c in ipairs(refused) do
      local text, code = norm(c[1], c[2], c[3])
      assert.is_nil(text, ("%q %s: %s"):format(c[1], c[2], tostring(text)))
      assert.equal(c[4], code, ("%q %s"):format(c[1], c[2]))
    end
    local _, err = offline.money("$2.24", "EUR", S)
    assert.equal("validation", err.kind)
    assert.equal("amount has the currency $, which is not the order's currency", err.message)
  end)

  it("is opt-in: without options the strict rules stay, and the encoder never reads till forms", function()
    assert.is_nil((norm("2,24", "EUR")))
    assert.is_nil((norm("£2.24", "GBP")))
    assert.equal("2.24", (norm("2.24", "GBP")))
    local ok, err = offline.validate({ order = { refCode = "M", orderDate = "2024-03-15T09:12:00 GMT",
      currency = "GBP", total = "£2.24", items = { { refCode = "s", qty = 1, price = "2.24" } } } })
    assert.is_nil(ok)
    assert.matches("order.total: must be a plain decimal", tostring(err), 1, true)
  end)

  describe("on the command line", function()
    local cli = require("support.cli")
    local sb = require("support.sandbox")
    teardown(cli.cleanup)

    it("--decimal-comma and --currency-symbols send a till's amounts exact; a mismatch is named", function()
      sb.ensure()
      sb.reset()
      local csv = cli.write_file(cli.tmp("till.csv"), "refCode,orderDate,currency,total,itemRefCode,qty,price\n"
        .. 'TM-1,2024-05-16 15:25:00,EUR,"1.234,56 €",s1,2,"617,28 €"\n'
        .. "TM-2,2024-05-16 15:25:00,EUR,€ 2,s2,1,\"2,00\"\n"
        .. "TM-3,2024-05-16 15:25:00,EUR,$2.24,s3,1,\"2,24\"\n")
      local r = cli.run({ "send", csv, "--decimal-comma", "--currency-symbols", "--rejects", cli.tmp("till.rej") },
        { env = cli.creds() })
      assert.equal(1, r.code, r.all)
      local body = sb.json.decode(sb.orders({ refCode = "TM-1" })[1].body)
      assert.equal(1234.56, tonumber(body.order.total))
      assert.matches('"total":"?1234.56"?', sb.orders({ refCode = "TM-1" })[1].body)
      assert.matches('"price":"?617.28"?', sb.orders({ refCode = "TM-1" })[1].body)
      assert.equal(1, #sb.orders({ refCode = "TM-2" }))
      assert.equal(0, #sb.orders({ refCode = "TM-3" }))
      assert.matches('till.csv:4: order TM-3: order.total: has the currency $, which is not the order\'s currency, '
        .. 'got "$2.24"', r.err, 1, true)
      -- the same options from the config file; without them, a hint
      local conf = cli.write_file(cli.tmp("money.conf"), "decimal_comma = true\ncurrency_symbols = yes\n")
      r = cli.run({ "validate", csv, "--config", conf })
      assert.matches("2 valid, 1 invalid", r.err, 1, true)
      r = cli.run({ "validate", csv })
      assert.matches('order.items[1].price: must be a plain decimal like "12.50" (for amounts written like '
        .. 'this one, add --decimal-comma --currency-symbols), got "617,28 €"', r.out, 1, true)
      assert.matches('order TM-2: order.total: must be a plain decimal like "12.50" (for amounts written like '
        .. 'this one, add --currency-symbols), got "€ 2"', r.out, 1, true)
      local csv2 = cli.write_file(cli.tmp("comma.csv"), "refCode,orderDate,currency,total,itemRefCode,qty,price\n"
        .. 'TM-4,2024-05-16 15:25:00,GBP,"2,24",s1,1,2.24\n')
      r = cli.run({ "validate", csv2, "--currency-symbols" })
      assert.matches('(amounts like "2,24" need --decimal-comma), got "2,24"', r.out, 1, true)
      sb.reset()
    end)
  end)
end)
