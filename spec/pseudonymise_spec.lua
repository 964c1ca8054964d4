-- Pseudonymised ids: HMAC-SHA256 against RFC 4231 and the openssl command,
-- e-mail normalisation, key handling (never shown), and p:apply on payloads.
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")
local pseudonym = require("optimizely.offline.pseudonym")
local sys = require("optimizely.offline.sys")
local LUA = require("support.interp")

local KEY = "SECRET-pseudonym-KEY-0123456789" -- must never show anywhere

local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

-- Every string reachable from v (keys and values), for "the key is not in here".
local function strings_in(v, out, seen)
  out, seen = out or {}, seen or {}
  if type(v) == "string" then out[#out + 1] = v
  elseif type(v) == "table" and not seen[v] then
    seen[v] = true
    for k, x in pairs(v) do strings_in(k, out, seen); strings_in(x, out, seen) end
  elseif v ~= nil then out[#out + 1] = tostring(v) end
  return out
end

local function assert_no_key(v, key)
  key = key or KEY
  for _, s in ipairs(strings_in(v)) do
    assert.is_nil(s:lower():find(key:lower():sub(1, 8), 1, true), "the key shows in: " .. s)
  end
end

-- A child Lua with this build, an environment and a chunk; its output.
local function child(env, code)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  local parts = { "env -u OPTIMIZELY_PSEUDONYM_KEY" }
  for k, v in pairs(env) do parts[#parts + 1] = sys.q(k .. "=" .. v) end
  parts[#parts + 1] = "LUA_PATH=" .. sys.q(package.path) .. " LUA_CPATH=" .. sys.q(package.cpath)
  parts[#parts + 1] = LUA .. " " .. sys.q(script) .. " 2>&1"
  local out = sys.capture(table.concat(parts, " "))
  os.remove(script)
  return out
end

describe("HMAC-SHA256", function()
  -- RFC 4231 section 4: the HMAC-SHA-256 results of test cases 1 to 7
  local cases = {
    { "1", ("\11"):rep(20), "Hi There",
      "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
    { "2 (key shorter than the output)", "Jefe", "what do ya want for nothing?",
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
    { "3", ("\170"):rep(20), ("\221"):rep(50),
      "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe" },
    { "4", unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"), ("\205"):rep(50),
      "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b" },
    { "6 (key larger than a block)", ("\170"):rep(131),
      "Test Using Larger Than Block-Size Key - Hash Key First",
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" },
    { "7 (key and data larger than a block)", ("\170"):rep(131),
      "This is a test using a larger than block-size key and a larger than block-size data. "
        .. "The key needs to be hashed before being used by the HMAC algorithm.",
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2" },
  }
  for _, c in ipairs(cases) do
    it("gives RFC 4231 test case " .. c[1], function()
      local p = core.pseudonymiser(c[2], "hex", 64)
      assert.are.equal(c[4], p:digest(c[3]))
      p:close()
    end)
  end

  it("gives RFC 4231 test case 5, truncated to 128 bits (32 hex characters)", function()
    local p = core.pseudonymiser(("\12"):rep(20), "hex", 32)
    assert.are.equal("a3b6167473100ee06e0c796c2955552b", p:digest("Test With Truncation"))
  end)

  it("equals `openssl dgst -sha256 -hmac KEY` for random keys and addresses, hex and base64url", function()
    local seed = os.time()
    math.randomseed(seed)
    local function rand(alphabet, lo, hi)
      local t = {}
      for i = 1, math.random(lo, hi) do
        local k = math.random(1, #alphabet)
        t[i] = alphabet:sub(k, k)
      end
      return table.concat(t)
    end
    local keychars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=!#%"
    local localchars = "abcdefghijklmnopqrstuvwxyz0123456789._%+-'&!#"
    local file = os.tmpname()
    for i = 1, 40 do
      local key = rand(keychars, 16, 80)
      local email = rand(localchars, 1, 30) .. "@" .. rand("abcdefghijklmnopqrstuvwxyz0123456789-", 1, 20)
        .. "." .. rand("abcdefghijklmnopqrstuvwxyz", 2, 6)
      if i % 5 == 0 then email = "\195\169" .. email end -- é: UTF-8 bytes are hashed as they are
      local f = assert(io.open(file, "wb")); f:write(email); f:close()
      local want = sys.capture("openssl dgst -sha256 -hmac " .. sys.q(key) .. " -r " .. sys.q(file)):match("^(%x+)")
      assert.are.equal(64, #want)
      local shown = ("seed %d, key %q, email %q"):format(seed, key, email)
      -- the same address written with capitals and spaces normalises to it
      local messy = "  \t" .. email:upper():gsub("\195\137", "\195\169") .. " \r\n"
      assert.are.equal(want, offline.pseudonymise(messy, { key = key }), shown)
      assert.are.equal(want:sub(1, 32), offline.pseudonymise(email, { key = key, length = 32 }), shown)
      local b64 = sys.capture("openssl dgst -sha256 -hmac " .. sys.q(key) .. " -binary " .. sys.q(file)
        .. " | base64 -w0 | tr '+/' '-_' | tr -d '='")
      assert.are.equal(b64, offline.pseudonymise(email, { key = key, encoding = "base64url" }), shown)
      assert.are.equal(b64:sub(1, 22),
        offline.pseudonymise(email, { key = key, encoding = "base64url", length = 22 }), shown)
    end
    os.remove(file)
  end)
end)

describe("normalisation", function()
  local n = core.email_normalise
  local PLUS, DOTS = core.EMAIL_STRIP_PLUS_TAG, core.EMAIL_STRIP_DOTS

  it("trims ASCII whitespace at both ends and lower-cases ASCII letters", function()
    assert.are.equal("jane.doe@example.com", n(" \t\n\v\f\rJane.DOE@Example.COM\r\n \t"))
    assert.are.equal("jane@x.com", n("jane@x.com"))
  end)

  it("keeps everything else: non-ASCII letters, +tags, dots, quotes, inner characters", function()
    -- no Unicode case folding: É stays É, Straße stays Straße
    assert.are.equal("\195\137lodie@exemple.fr", n("\195\137LODIE@EXEMPLE.FR"))
    assert.are.equal("stra\195\159e@x.de", n("STRA\195\159E@X.DE"))
    assert.are.equal("jane+news@x.com", n("Jane+News@x.com"))
    assert.are.equal("j.a.n.e@x.co.uk", n("J.A.N.E@X.CO.UK"))
    assert.are.equal("o'brien,\"q\"@x.com", n("O'Brien,\"Q\"@x.com"))
    -- a no-break space (U+00A0) is not ASCII whitespace: it stays, so the
    -- id differs from the address without it
    assert.are.equal("jane@x.com\194\160", n("jane@x.com\194\160"))
    assert.are_not.equal(offline.pseudonymise("jane@x.com", { key = KEY }),
      offline.pseudonymise("jane@x.com\194\160", { key = KEY }))
  end)

  it("cuts the local part at its first + only with strip_plus_tag", function()
    assert.are.equal("jane@x.com", n("Jane+News+More@x.com", PLUS))
    assert.are.equal("jane@x+y.com", n("jane+a@x+y.com", PLUS)) -- the domain is not touched
    assert.are.equal("jane.doe@x.com", n("jane.doe+a@x.com", PLUS))
    local p = pseudonym.new({ key = KEY, strip_plus_tag = true })
    assert.are.equal(p:id("jane@x.com"), p:id("JANE+shop@x.com"))
  end)

  it("removes the dots of the local part only with strip_dots", function()
    assert.are.equal("jane@x.co.uk", n("J.a.n.e.@x.co.uk", DOTS))
    local p = pseudonym.new({ key = KEY, strip_dots = true, strip_plus_tag = true })
    assert.are.equal(p:id("janedoe@gmail.com"), p:id(" Jane.Doe+x.y@Gmail.com "))
    assert.are_not.equal(p:id("janedoe@gmail.com"), p:id("janedoe@gmailcom"))
  end)

  it("gives one id for the variants of one address, and different ids otherwise", function()
    local id = offline.pseudonymise("jane@x.com", { key = KEY })
    assert.are.equal(id, offline.pseudonymise("  JANE@X.COM\n", { key = KEY }))
    assert.are_not.equal(id, offline.pseudonymise("jane+a@x.com", { key = KEY }))
    assert.are_not.equal(id, offline.pseudonymise("ja.ne@x.com", { key = KEY }))
    assert.are_not.equal(id, offline.pseudonymise("jane@x.com", { key = KEY .. "2" }))
    assert.matches("^[0-9a-f]+$", id)
    assert.are.equal(64, #id)
  end)

  it("refuses what is not an address, saying why without quoting it", function()
    local bad = {
      { "", "is empty after trimming whitespace" },
      { " \t\r\n", "is empty after trimming whitespace" },
      { "jane.example.com", "has no @" },
      { "jane@doe@x.com", "has more than one @" },
      { "@x.com", "has nothing before the @" },
      { "jane@", "has nothing after the @" },
      { "jane doe@x.com", "contains a space or control character (at offset 4)" },
      { "jane\0@x.com", "contains a space or control character (at offset 4)" },
      { "jane\127@x.com", "contains a space or control character (at offset 4)" },
      { "jane\255@x.com", "is not valid UTF-8 (bad byte at offset 4)" },
      { ("j"):rep(250) .. "@x.com", "is 256 bytes long, more than 254" },
    }
    for _, c in ipairs(bad) do
      local id, err = offline.pseudonymise(c[1], { key = KEY })
      assert.is_nil(id, c[1])
      assert.are.equal("validation", err.kind)
      assert.are.equal("email", err.problems[1].path)
      assert.are.equal(c[2], err.problems[1].message)
      assert.are.equal("validation: email: " .. c[2], tostring(err))
      if #c[1] > 3 then assert.is_nil(tostring(err):find(c[1], 1, true)) end
    end
    -- at most 254 bytes once trimmed
    assert.is_string(offline.pseudonymise("  " .. ("j"):rep(248) .. "@x.com  ", { key = KEY }))
  end)

  it("refuses an address left empty by the strip options", function()
    local p = pseudonym.new({ key = KEY, strip_plus_tag = true, strip_dots = true })
    local id, err = p:id("+tag@x.com")
    assert.is_nil(id)
    assert.are.equal("email: has nothing before the @ once its +tag and dots are removed", err.message)
    id, err = pseudonym.new({ key = KEY, strip_dots = true }):id("...@x.com")
    assert.is_nil(id)
    assert.are.equal("has nothing before the @ once its dots are removed", err.problems[1].message)
  end)

  it("refuses a value that is not a string", function()
    for _, v in ipairs({ 42, true, {}, function() end }) do
      local id, err = offline.pseudonymise(v, { key = KEY })
      assert.is_nil(id)
      assert.are.equal("email: must be a string, got " .. type(v), err.message)
    end
    local id, err = offline.pseudonymise(nil, { key = KEY })
    assert.is_nil(id)
    assert.are.equal("email: must be a string, got nil", err.message)
  end)

  it("is the rule the encoder applies to user.email", function()
    local order = { refCode = "R1", orderDate = "2024-03-15T09:12:04Z", currency = "GBP",
                    subTotal = 1, total = 1, items = { { refCode = "S", qty = 1, price = 1 } } }
    local json, err = offline.encode({ user = { email = "jane.example.com" }, order = order })
    assert.is_nil(json)
    assert.are.equal("user.email: must be an e-mail address: has no @", tostring(err):match("user%.email:.-@$"))
    assert.is_nil(tostring(err):find("jane.example.com", 1, true))
  end)
end)

describe("options and output shapes", function()
  it("truncates hex to an even length of 16..64 and base64url to 22..43", function()
    local full = offline.pseudonymise("jane@x.com", { key = KEY })
    assert.are.equal(full:sub(1, 16), offline.pseudonymise("jane@x.com", { key = KEY, length = 16 }))
    local b = offline.pseudonymise("jane@x.com", { key = KEY, encoding = "base64url" })
    assert.are.equal(43, #b)
    assert.matches("^[A-Za-z0-9_-]+$", b)
    for _, bad in ipairs({ { length = 14 }, { length = 66 }, { length = 33 },
                           { encoding = "base64url", length = 21 }, { encoding = "base64url", length = 44 },
                           { encoding = "base64" }, { length = 32.5 } }) do
      bad.key = KEY
      local ok, msg = pcall(offline.pseudonymise, "jane@x.com", bad)
      assert.is_false(ok)
      assert.matches("opts%.", msg)
      assert_no_key(msg)
    end
    assert.are.equal(33, #pseudonym.new({ key = KEY, encoding = "base64url", length = 33 }):id("a@b"))
  end)

  it("sees every change to an opts table reused between calls", function()
    local o = { key = KEY }
    local full = offline.pseudonymise("jane@x.com", o)
    o.length = 16
    assert.are.equal(full:sub(1, 16), offline.pseudonymise("jane@x.com", o))
    o.length = nil
    o.key = KEY .. "-2"
    assert.are.equal(offline.pseudonymise("jane@x.com", { key = KEY .. "-2" }), offline.pseudonymise("jane@x.com", o))
    o.lenght = 16
    assert.has_error(function() offline.pseudonymise("jane@x.com", o) end,
      "optimizely.offline.pseudonymise: opts.lenght is not a known option (did you mean 'length'?)")
    o.lenght, o.key = nil, "tiny-key"
    local ok, msg = pcall(offline.pseudonymise, "jane@x.com", o)
    assert.is_false(ok)
    assert.matches("opts.key is too short", msg)
    o.key = KEY
    assert.are.equal(full, offline.pseudonymise("jane@x.com", o))
  end)

  it("raises on unknown options with a suggestion, never showing the key", function()
    local ok, msg = pcall(pseudonym.new, { key = KEY, lenght = 32 })
    assert.is_false(ok)
    assert.matches("opts.lenght is not a known option %(did you mean 'length'%?%)", msg)
    -- the key pasted into another field is redacted there too
    ok, msg = pcall(pseudonym.new, { key = KEY, encoding = KEY })
    assert.is_false(ok)
    assert.matches("opts.encoding must be one of hex, base64url", msg)
    assert_no_key(msg)
    ok, msg = pcall(pseudonym.new, "key")
    assert.is_false(ok)
    assert.matches("opts must be a table, got string", msg)
  end)

  it("takes fn instead of the built-in pseudonym, not both", function()
    local ok, msg = pcall(pseudonym.new, { key = KEY, fn = function() return "x" end })
    assert.is_false(ok)
    assert.matches("opts.key does not apply with opts.fn", msg)
    assert_no_key(msg)
    ok, msg = pcall(pseudonym.new, { fn = function() return "x" end, length = 32 })
    assert.is_false(ok)
    assert.matches("opts.length does not apply with opts.fn", msg)
    ok, msg = pcall(pseudonym.new, {})
    assert.is_false(ok)
    assert.matches("opts.key is required", msg)
  end)
end)

describe("keys", function()
  it("refuses an empty, short or oversized opts.key (a raise, without the key)", function()
    for _, k in ipairs({ "", "fifteen-bytes!!", ("k"):rep(1025) }) do
      local ok, msg = pcall(pseudonym.new, { key = k })
      assert.is_false(ok)
      assert.matches("opts%.key is", msg)
      if k ~= "" then assert_no_key(msg, k) end
      ok, msg = pcall(offline.pseudonymise, "jane@x.com", { key = k })
      assert.is_false(ok)
      assert.matches("optimizely.offline.pseudonymise: opts%.key is", msg)
    end
    local _, msg = pcall(pseudonym.new, { key = "fifteen-bytes!!" })
    assert.matches("is too short %(15 bytes; at least 16", msg)
    assert.is_string(pseudonym.new({ key = ("k"):rep(16) }):id("a@b"))
    assert.is_string(pseudonym.new({ key = ("k"):rep(1024) }):id("a@b"))
  end)

  it("reads the key from OPTIMIZELY_PSEUDONYM_KEY, else a config table (key_from)", function()
    local env = {}
    local function getenv(k) return env[k] end
    local key, src = pseudonym.key_from(getenv, { pseudonym_key = KEY })
    assert.are.equal(KEY, key)
    assert.are.equal("pseudonym_key", src)
    env.OPTIMIZELY_PSEUDONYM_KEY = KEY .. "-env"
    key, src = pseudonym.key_from(getenv, { pseudonym_key = KEY })
    assert.are.equal(KEY .. "-env", key) -- the environment wins, as for the token
    assert.are.equal("OPTIMIZELY_PSEUDONYM_KEY", src)
  end)

  it("gives config errors for a missing, empty or short key from the environment or a file", function()
    local cases = {
      { {}, nil, "no pseudonym key: set OPTIMIZELY_PSEUDONYM_KEY (or pseudonym_key in the config file)" },
      { { OPTIMIZELY_PSEUDONYM_KEY = "" }, { pseudonym_key = KEY },
        "the pseudonym key in OPTIMIZELY_PSEUDONYM_KEY is empty" },
      { { OPTIMIZELY_PSEUDONYM_KEY = "S3CRET-short" }, nil,
        "the pseudonym key in OPTIMIZELY_PSEUDONYM_KEY is too short (12 bytes; at least 16, e.g. 32 random bytes)" },
      { {}, { pseudonym_key = "S3CRET-short" },
        "the pseudonym key in pseudonym_key is too short (12 bytes; at least 16, e.g. 32 random bytes)" },
    }
    for _, c in ipairs(cases) do
      local key, err = pseudonym.key_from(function(k) return c[1][k] end, c[2])
      assert.is_nil(key)
      assert.are.equal("config", err.kind)
      assert.are.equal(c[3], err.message)
      local p, err2 = pseudonym.resolve({ length = 32 }, function(k) return c[1][k] end, c[2])
      assert.is_nil(p)
      assert.are.equal(c[3], err2.message)
    end
    local p = assert(pseudonym.resolve({ length = 32 }, function() end, { pseudonym_key = KEY }))
    assert.are.equal(offline.pseudonymise("a@b", { key = KEY, length = 32 }), p:id("A@B"))
  end)

  it("offline.pseudonymise reads the environment at each call", function()
    local code = [[
      local o = require("optimizely.offline")
      local id, err = o.pseudonymise(" Jane@X.com ")
      io.write(tostring(id), "|", tostring(err), "|",
        o.pseudonymise("jane@x.com", {key = ]] .. ("%q"):format(KEY) .. [[}))
    ]]
    local good = child({ OPTIMIZELY_PSEUDONYM_KEY = KEY }, code)
    local id, with_opts = good:match("^(%x+)|nil|(%x+)$")
    assert.is_string(id, good)
    assert.are.equal(with_opts, id) -- the same key from the environment or opts
    assert.are.equal("nil|config: no pseudonym key: set OPTIMIZELY_PSEUDONYM_KEY (or pseudonym_key in the config file)|"
      .. id, child({}, code))
    local short = child({ OPTIMIZELY_PSEUDONYM_KEY = "S3CRET-short" }, code)
    assert.matches("^nil|config: the pseudonym key in OPTIMIZELY_PSEUDONYM_KEY is too short %(12 bytes", short)
    assert.is_nil(short:find("S3CRET", 1, true))
    assert.matches("^nil|config: the pseudonym key in OPTIMIZELY_PSEUDONYM_KEY is empty|",
      child({ OPTIMIZELY_PSEUDONYM_KEY = "" }, code))
  end)

  it("never shows the key: tostring, the object's fields, errors, warnings", function()
    local p = pseudonym.new({ key = KEY, length = 32, encoding = "hex" })
    assert.are.equal("optimizely.offline.pseudonym (HMAC-SHA256, hex, 32 characters)", tostring(p))
    assert.matches("^optimizely.offline.pseudonymiser %(hex, 32 characters%)$", tostring(p._c))
    assert_no_key(p)
    local _, e1 = p:id("no-at-sign")
    local _, e2 = p:apply({ user = { email = KEY } })
    local _, w = p:apply({ user = { email = "jane@x.com", id = "other" } })
    assert_no_key({ e1, e2, tostring(e1), tostring(e2), w })
    p:close()
    assert.are.equal("optimizely.offline.pseudonym (HMAC-SHA256, hex, 32 characters, closed)", tostring(p))
    local ok, msg = pcall(p.id, p, "jane@x.com")
    assert.is_false(ok)
    assert.matches("used after close", msg)
    p:close() -- twice is fine
    local c = core.pseudonymiser(KEY, "hex", 64)
    c:close()
    assert.are.equal("optimizely.offline.pseudonymiser (closed)", tostring(c))
  end)
end)

describe("p:apply", function()
  local p = pseudonym.new({ key = KEY })
  local ID = p:id("jane@x.com")
  local order = { refCode = "R1", orderDate = "2024-03-15T09:12:04Z", currency = "GBP",
                  subTotal = 1, total = 1, items = { { refCode = "S", qty = 1, price = 1 } } }

  -- a deep copy, to show that apply left the caller's tables as they were
  local function snapshot(t)
    if type(t) ~= "table" then return t end
    local out = {}
    for k, v in pairs(t) do out[k] = snapshot(v) end
    return out
  end

  it("replaces user.email with user.id, without touching the caller's tables", function()
    local payload = { lang = "en-gb", user = { email = " Jane@X.com ", info = { tier = "gold" } }, order = order }
    local before = snapshot(payload)
    local out, warnings = p:apply(payload)
    assert.are.same({}, warnings)
    assert.are.same({ id = ID, info = { tier = "gold" } }, out.user)
    assert.are.same(before, payload)
    assert.are_not.equal(payload, out)
    assert.are_not.equal(payload.user, out.user)
    assert.are.equal(payload.order, out.order) -- the rest is shared
    assert.are.equal(payload.user.info, out.user.info)
    local json, w = offline.encode(out)
    assert.matches('"user":{"id":"' .. ID .. '"', json)
    assert.is_nil(json:find("email", 1, true))
    assert.are.same({}, w) -- no deprecation warning any more
  end)

  it("leaves a payload with only user.id (or no user) as it is", function()
    for _, payload in ipairs({ { user = { id = "abc" }, order = order }, { order = order }, "not a table",
                               { user = "odd" } }) do
      local out, warnings = p:apply(payload)
      assert.are.equal(payload, out)
      assert.are.same({}, warnings)
    end
  end)

  it("removes the e-mail when user.id agrees with it, without a warning", function()
    local payload = { user = { id = ID, email = "JANE@x.com" }, order = order }
    local out, warnings = p:apply(payload)
    assert.are.same({}, warnings)
    assert.are.same({ id = ID }, out.user)
    assert.are.equal("JANE@x.com", payload.user.email)
  end)

  it("warns when user.id disagrees with user.email, keeps the id, masks the address", function()
    local payload = { user = { id = "crm-42", email = "jane.doe@example.com" }, order = order }
    local out, warnings = p:apply(payload)
    assert.are.same({ id = "crm-42" }, out.user)
    assert.are.equal(1, #warnings)
    assert.are.equal("pseudonymise", warnings[1].source)
    assert.are.equal("user.id", warnings[1].path)
    assert.are.equal('user.id is not the pseudonym of user.email ("j…@example.com"): the given user.id is kept',
      warnings[1].message)
    assert.is_nil(warnings[1].message:find("jane.doe", 1, true))
    assert.are.equal("jane.doe@example.com", payload.user.email)
  end)

  it("adds the id and keeps the e-mail with replace_email = false", function()
    local keep = pseudonym.new({ key = KEY, replace_email = false })
    local payload = { user = { email = "jane@x.com" }, order = order }
    local out, warnings = keep:apply(payload)
    assert.are.same({ id = ID, email = "jane@x.com" }, out.user)
    assert.are.same({}, warnings)
    assert.is_nil(payload.user.id)
    local both = { user = { email = "jane@x.com", id = "other" } }
    out, warnings = keep:apply(both)
    assert.are.equal(both, out) -- nothing to change
    assert.are.equal(1, #warnings)
  end)

  it("fails with a validation error on user.email when the address is not one", function()
    local payload = { user = { email = "jane.example.com" }, order = order }
    local out, err = p:apply(payload)
    assert.is_nil(out)
    assert.are.equal("validation", err.kind)
    assert.are.equal("user.email", err.problems[1].path)
    assert.are.equal("validation: user.email: has no @", tostring(err))
    out, err = p:apply({ user = { email = 42 } })
    assert.is_nil(out)
    assert.are.equal("user.email: must be a string, got number", err.message)
  end)

  it("uses a custom fn: it gets the address as given, its id must be a string", function()
    local seen
    local shop = pseudonym.new({ fn = function(email)
      seen = email
      if email:find("unknown") then return nil, "not in the web shop" end
      if email:find("broken") then return 42 end
      return "shop-" .. #email
    end })
    assert.are.equal("optimizely.offline.pseudonym (custom fn)", tostring(shop))
    local out, warnings = shop:apply({ user = { email = " Jane@X.com" }, order = order })
    assert.are.equal(" Jane@X.com", seen)
    assert.are.same({ id = "shop-11" }, out.user)
    assert.are.same({}, warnings)
    local id, err = shop:id("unknown@x.com")
    assert.is_nil(id)
    assert.are.equal('email: the pseudonym function gave no id: "not in the web shop"', err.message)
    id, err = shop:id("no-at")
    assert.is_nil(id)
    assert.are.equal("email: has no @", err.message) -- checked before fn is called
    local ok, msg = pcall(shop.id, shop, "broken@x.com")
    assert.is_false(ok)
    assert.matches("opts.fn must return a non%-empty string %(or nil, message%), got number", msg)
    local _, w = shop:apply({ user = { email = "jane@x.com", id = "shop-10" } })
    assert.are.same({}, w)
    _, w = shop:apply({ user = { email = "jane@x.com", id = "shop-1" } })
    assert.are.equal(1, #w)
  end)
end)
