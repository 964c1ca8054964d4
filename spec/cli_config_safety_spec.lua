-- The command line's files on a shared host (issue 19): a --config file
-- holding a secret that others can read is warned about (as ssh does), one
-- others can write (or another user owns) is refused; an unclosed quote in
-- a value is an error naming the line; an output is refused when it is any
-- input — the CA file included, however it was named — compared by
-- identity; a transform is loaded as text only, never as bytecode.
local cli = require("support.cli")
local sys = require("optimizely.offline.sys")

local KEY = "config-safety-key-0123456789abcdef"

local function conf(name, text, mode)
  local path = cli.write_file(cli.tmp(name), text)
  os.execute(("chmod %s %s"):format(mode, cli.q(path)))
  return path
end

local function orders(name)
  return cli.orders(cli.tmp(name), 1, "CS-" .. math.random(1e6))
end

-- `validate --pseudonymise` reads the key from the config file: no network.
local function validate_with(path)
  return cli.run({ "validate", "--pseudonymise", "--config", path, orders("v.ndjson") })
end

local function is_root()
  return sys.capture("id -u"):match("^0") ~= nil
end

describe("a --config file", function()
  teardown(cli.cleanup)

  it("holding a secret and readable by others is used with a warning naming the fix", function()
    for _, mode in ipairs({ "644", "640", "604" }) do
      local path = conf("open-" .. mode .. ".conf", "pseudonym_key = " .. KEY .. "\n", mode)
      local r = validate_with(path)
      assert.equal(0, r.code, r.all)
      assert.matches("warning: " .. path:gsub("%p", "%%%0") .. " holds a secret %(pseudonym_key%) and is readable by "
        .. "others %(mode 0" .. mode .. "%): chmod 600 ", r.err)
      assert.is_nil(r.all:find(KEY, 1, true))
    end
    local path = conf("token.conf", "site = demo\ntoken.store = abcdefgh-token\nchannel = store\n", "644")
    local r = cli.run({ "send", "--dry-run", "--config", path, orders("t.ndjson") })
    assert.equal(0, r.code, r.all)
    assert.matches("holds a secret %(token%.store%) and is readable by others", r.err)
  end)

  it("that is private, or holds no secret, is used without a warning", function()
    local r = validate_with(conf("private.conf", "pseudonym_key = " .. KEY .. "\n", "600"))
    assert.equal(0, r.code, r.all)
    assert.is_nil(r.err:find("readable by others", 1, true))
    r = cli.run({ "validate", "--config", conf("plain.conf", "delimiter = ;\n", "644"), orders("p.ndjson") })
    assert.equal(0, r.code, r.all)
    assert.is_nil(r.err:find("readable by others", 1, true))
  end)

  it("that others can write is refused (exit 2), secret or not", function()
    for _, mode in ipairs({ "664", "646", "666" }) do
      local path = conf("writable-" .. mode .. ".conf", "delimiter = ;\n", mode)
      local r = cli.run({ "validate", "--config", path, orders("w.ndjson") })
      assert.equal(2, r.code, r.all)
      assert.matches(path:gsub("%p", "%%%0") .. " is writable by others %(mode 0" .. mode
        .. "%): refusing to use it %(chmod go%-w ", r.err)
    end
  end)

  it("that another user owns is refused (exit 2)", function()
    if not is_root() then pending("needs root to give the file away") return end
    local path = conf("theirs.conf", "delimiter = ;\n", "644")
    local given = os.execute("chown nobody " .. cli.q(path))
    assert.is_true(given == true or given == 0) -- 5.1 and LuaJIT: 0
    local r = cli.run({ "validate", "--config", path, orders("o.ndjson") })
    assert.equal(2, r.code, r.all)
    assert.matches("is owned by another user %(uid %d+%): refusing to use it", r.err)
  end)

  it("with an unclosed quote in a value is an error naming the line, never the value", function()
    for _, line in ipairs({ 'pseudonym_key = "' .. KEY, "pseudonym_key = '" .. KEY, 'pseudonym_key = ' .. KEY .. '"',
      'pseudonym_key = "' .. KEY .. "'", 'pseudonym_key = "' }) do
      local path = conf("quote.conf", "delimiter = ;\n" .. line .. "\n", "600")
      local r = validate_with(path)
      assert.equal(2, r.code, r.all)
      assert.matches("quote%.conf:2: the value of pseudonym_key has an unbalanced quote", r.err)
      assert.is_nil(r.all:find(KEY, 1, true))
    end
    local ok = validate_with(conf("quoted.conf", 'pseudonym_key = "' .. KEY .. '"\n', "600"))
    assert.equal(0, ok.code, ok.all)
  end)
end)

describe("outputs and inputs", function()
  teardown(cli.cleanup)

  local function ca_copy()
    local info = require("support.sandbox").ensure()
    local ca = cli.tmp("ca.pem")
    cli.write_file(ca, assert(cli.read_file(info.ca_file)))
    os.execute("chmod 644 " .. cli.q(ca))
    return ca
  end

  it("--rejects, --report or --metrics naming the CA file is refused, however the CA was given", function()
    local ca = ca_copy()
    local before = cli.read_file(ca)
    local input = orders("ca.ndjson")
    local cfg = conf("ca.conf", "ca_file = " .. ca .. "\n", "600")
    local ways = { -- how the CA file is given: the option, the environment, the config file
      { { "--ca-file", ca }, {} },
      { {}, { OPTIMIZELY_CA_FILE = ca } },
      { { "--config", cfg }, { OPTIMIZELY_CA_FILE = false } },
    }
    for _, way in ipairs(ways) do
      for _, flag in ipairs({ "--rejects", "--report", "--metrics" }) do
        local args = { "send", input, flag, cli.tmpdir() .. "/./ca.pem" } -- another spelling of it
        for _, a in ipairs(way[1]) do args[#args + 1] = a end
        local r = cli.run(args, { env = cli.creds(way[2]) })
        assert.equal(2, r.code, flag .. " " .. r.all)
        assert.matches(flag:gsub("%-", "%%-") .. " .- is the input file", r.err)
      end
    end
    assert.equal(before, cli.read_file(ca))
    assert.equal("644", cli.mode(ca))
  end)

  it("mapping -o naming an input is refused by the same check", function()
    local input = orders("map.ndjson")
    local link = cli.tmp("map-link.ndjson")
    os.execute("ln -s " .. cli.q(input) .. " " .. cli.q(link))
    local r = cli.run({ "mapping", input, "-o", link }, { env = { OPTIMIZELY_PSEUDONYM_KEY = KEY } })
    assert.equal(2, r.code, r.all)
    assert.matches("%-o .- is the input file", r.err)
  end)
end)

describe("a transform", function()
  teardown(cli.cleanup)

  it("is loaded as text only: a bytecode file is refused (exit 2)", function()
    local src = cli.write_file(cli.tmp("t-src.lua"), "return function(rec) return rec.payload end\n")
    local bc = cli.tmp("t.luac")
    local f = assert(io.open(bc, "wb"))
    f:write(string.dump(assert(loadfile(src))))
    f:close()
    local input = orders("tr.ndjson")
    local r = cli.run({ "validate", input, "--transform", bc })
    assert.equal(2, r.code, r.all)
    assert.matches("cannot load transform: .*binary chunk", r.err)
    r = cli.run({ "validate", input, "--transform", src })
    assert.equal(0, r.code, r.all)
  end)
end)
