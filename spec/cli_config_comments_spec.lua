-- A `# comment` after a value in --config (issue 20): it once became part
-- of the token and gave a 401. A `#` after a blank starts a comment; inside
-- quotes, or not after a blank, it is part of the value.
local sb = require("support.sandbox")
local cli = require("support.cli")
local config = require("optimizely.offline.cli.config")

describe("config file comments", function()
  teardown(cli.cleanup)

  local function values(body)
    return config.read_file(cli.write_file(cli.tmp("c.conf"), body)).values
  end

  it("end a value at a # after a blank, whatever the quoting", function()
    local v = values(table.concat({
      "site = acme  # the production site",
      "channel = store\t# tabs too",
      'sitename = "acme # uk"  # quoted: the # inside stays',
      "env = 'uk' # single quotes",
      "base_url = https://x.example/#frag",
      "format = # nothing but a comment",
      "date_format = %d/%m/%Y %H:%M # the till's",
      'delimiter = "#"',
      "" }, "\n"))
    assert.equal("acme", v.site)
    assert.equal("store", v.channel)
    assert.equal("acme # uk", v.sitename)
    assert.equal("uk", v.env)
    assert.equal("https://x.example/#frag", v.base_url)
    assert.equal("", v.format)
    assert.equal("%d/%m/%Y %H:%M", v.date_format)
    assert.equal("#", v.delimiter)
  end)

  it("a token followed by a comment is sent without it", function()
    local info = sb.ensure()
    sb.reset()
    local conf = cli.write_file(cli.tmp("tok.conf"), table.concat({
      "site = " .. info.site .. "   # sandbox",
      "token = " .. info.token .. "  # from the vault, 2024-05",
      "channel = " .. info.channel,
      "base_url = " .. info.base_url .. " # local",
      "ca_file = " .. info.ca_file, "" }, "\n"))
    local r = cli.run({ "send", "--config", conf, cli.FIX .. "spec-sample.xml" })
    assert.equal(0, r.code, r.all)
    assert.equal(1, #sb.orders({ refCode = "orderRef" }))
    assert.equal(0, sb.stats().status_401 or 0)
  end)
end)
