-- Short secrets (issue 19): a site token shorter than 8 characters is a
-- configuration error (the library's config, the nginx queues' and the
-- command line's), and redaction replaces whole occurrences of secrets of 8
-- or more characters only, so a message is never garbled ("SSL
-- c[REDACTED]rtificat[REDACTED]") by a secret that is a letter or a word.
local offline = require("optimizely.offline")
local errors = require("optimizely.offline.errors")
local cli = require("support.cli")

local BASE = { site = "demo", channel = "store", base_url = "https://127.0.0.1:1" }

local function config_with(over)
  local c = {}
  for k, v in pairs(BASE) do c[k] = v end
  for k, v in pairs(over) do c[k] = v end
  return c
end

describe("a short site token", function()
  teardown(cli.cleanup)

  it("is a configuration error of the client, naming the field and never the token", function()
    for _, tok in ipairs({ "e", "t", "abc1234" }) do
      local ok, err = pcall(offline.client, config_with({ token = tok }))
      assert.is_false(ok)
      assert.matches("config%.token is too short %(" .. #tok .. " characters?; at least 8%)", tostring(err))
      assert.is_nil(tostring(err):find(tok .. tok, 1, true))
    end
    local ok, err = pcall(offline.client, config_with({ tokens = { store = "abcdefgh", callcentre = "short" } }))
    assert.is_false(ok)
    assert.matches("config%.tokens%.callcentre is too short %(5 characters; at least 8%)", tostring(err))
  end)

  it("of 8 characters is accepted", function()
    local c = offline.client(config_with({ token = "abcdefgh" }))
    c:close()
  end)

  it("is refused by the command line, wherever it comes from (exit 2)", function()
    local input = cli.orders(cli.tmp("short.ndjson"), 1, "SHORT")
    local env = { OPTIMIZELY_SITE = "demo", OPTIMIZELY_CHANNEL = "store", OPTIMIZELY_BASE_URL = "https://127.0.0.1:9" }
    local function run(e, args)
      local all = {}
      for k, v in pairs(env) do all[k] = v end
      for k, v in pairs(e) do all[k] = v end
      local r = cli.run(args or { "send", input }, { env = all })
      assert.equal(2, r.code, r.all)
      return r
    end
    local r = run({ OPTIMIZELY_SITE_TOKEN = "tok" })
    assert.matches("%$OPTIMIZELY_SITE_TOKEN: the token is too short %(3 characters; at least 8%)", r.err)
    r = run({ OPTIMIZELY_SITE_TOKEN_STORE = "tok" })
    assert.matches("%$OPTIMIZELY_SITE_TOKEN_STORE: the token is too short", r.err)
    local conf = cli.write_file(cli.tmp("short.conf"), "site = demo\ntoken = e\n")
    os.execute("chmod 600 " .. cli.q(conf))
    r = run({}, { "send", input, "--config", conf })
    assert.matches("short%.conf:2: token is too short %(1 character; at least 8%)", r.err)
    assert.is_nil(r.err:find("[REDACTED]", 1, true))
  end)
end)

describe("redaction", function()
  it("leaves text alone for a secret shorter than 8 characters", function()
    assert.equal("SSL certificate problem", errors.redact("SSL certificate problem", "e"))
    assert.equal("too short", errors.redact("too short", "short"))
    assert.equal("t t t", errors.redact_all("t t t", { "t", "abcdefghij" }))
  end)

  it("replaces whole occurrences of a secret of 8 or more characters, in any case", function()
    assert.equal("a [REDACTED] b [REDACTED]", errors.redact("a abcdefgh b ABCDEFGH", "abcdefgh"))
    assert.equal("key [REDACTED].", errors.redact("key Sandbox-Token-1.", "sandbox-token-1"))
  end)

  it("keeps a pseudonym key's own error readable", function()
    local ok, err = pcall(require("optimizely.offline.pseudonym").new, { key = "short" })
    assert.is_false(ok)
    assert.matches("is too short %(5 bytes", tostring(err))
    assert.is_nil(tostring(err):find("REDACTED", 1, true))
  end)
end)
