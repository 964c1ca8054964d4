-- Redaction: a secret never shows in a message, whatever form its echo takes.
local errors = require("optimizely.offline.errors")
local offline = require("optimizely.offline")
local core = require("optimizely.offline.core")

-- a token holding the characters quoting changes
local TOKEN = 'Tok"en\\S3cret-Value-42'

-- every 8-character run of the token's start or end, as is or escaped
local function assert_clean(s)
  local escaped = ("%q"):format(TOKEN):sub(2, -2)
  for _, form in ipairs({ TOKEN, escaped, TOKEN:lower(), escaped:upper() }) do
    assert.is_nil(s:lower():find(form:lower():sub(1, 8), 1, true), "token head in: " .. s)
    assert.is_nil(s:lower():find(form:lower():sub(-8), 1, true), "token tail in: " .. s)
  end
end

describe("errors.redact", function()
  it("removes the secret as it is and in another letter case", function()
    local s = errors.redact("a " .. TOKEN .. " b " .. TOKEN:upper() .. " c", TOKEN)
    assert.equal("a [REDACTED] b [REDACTED] c", s)
  end)

  it("removes a cut-short echo: 8 or more of the first or last characters", function()
    local s = errors.redact("head " .. TOKEN:sub(1, 9) .. ", tail " .. TOKEN:sub(-10) .. ".", TOKEN)
    assert.equal("head [REDACTED], tail [REDACTED].", s)
    assert_clean(s)
  end)

  it("removes the echo quoted by %q and by core.quote (redaction after quoting)", function()
    local q1 = ("%q"):format(TOKEN)
    local q2 = core.quote(TOKEN, 200)
    assert.equal('got "[REDACTED]"', errors.redact("got " .. q1, TOKEN))
    assert.equal('got "[REDACTED]"', errors.redact("got " .. q2, TOKEN))
    assert.equal('cut "[REDACTED]', errors.redact('cut "' .. q1:sub(2, 12), TOKEN))
  end)

  it("leaves a message without the secret as it is, and non-strings alone", function()
    assert.equal("nothing here", errors.redact("nothing here", TOKEN))
    assert.is_nil(errors.redact(nil, TOKEN))
    assert.equal("x", errors.redact("x", ""))
  end)

  it("redact_all takes the longest secret first", function()
    assert.equal("[REDACTED]/[REDACTED]",
      errors.redact_all("abcdefghijkl/zyxwvuts", { "abcdefghijkl", "zyxwvuts" }))
  end)
end)

describe("a client's configuration errors", function()
  it("never show a token holding quotes or backslashes that lands in another field", function()
    for _, field in ipairs({ "site", "channel" }) do
      local cfg = { site = "s", token = TOKEN, channel = "store" }
      cfg[field] = TOKEN
      local ok, msg = pcall(offline.client, cfg)
      assert.is_false(ok)
      assert.matches("config%." .. field, msg)
      assert.matches("[REDACTED]", msg, 1, true)
      assert_clean(msg)
    end
  end)
end)
