-- `optimizely-offline mapping`: the e-mail -> id mapping file, run as a
-- subprocess on real files (NDJSON, CSV, legacy XML), and its external sort.
local core = require("optimizely.offline.core")
local offline = require("optimizely.offline")
local sys = require("optimizely.offline.sys")
local mapping = require("optimizely.offline.cli.cmd.mapping")
local distinct = require("optimizely.offline.distinct")
local LUA = require("support.interp")
local q, read_file = sys.q, sys.read_file

local ROOT = io.popen("pwd"):read("*l")
local BIN = ROOT .. "/bin/optimizely-offline"
local KEY = "Kx9-SECRET-mapping-key-0123456789" -- must never show anywhere

local TMP
local function tmp(name) return TMP .. "/" .. name end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

--- Runs the CLI in TMP under umask 022; o = {env=, cwd=}. @return {code, out, err}
local n_runs = 0
local function cli(args, o)
  o = o or {}
  n_runs = n_runs + 1
  local outf, errf = tmp("run" .. n_runs .. ".out"), tmp("run" .. n_runs .. ".err")
  local parts = { "cd", q(o.cwd or TMP), "&& umask 022 && env -u OPTIMIZELY_PSEUDONYM_KEY" }
  for k, v in pairs(o.env or { OPTIMIZELY_PSEUDONYM_KEY = KEY }) do parts[#parts + 1] = q(k .. "=" .. v) end
  parts[#parts + 1] = LUA .. " " .. q(BIN)
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  local p = io.popen(table.concat(parts, " ") .. " >" .. q(outf) .. " 2>" .. q(errf) .. " </dev/null; echo $?")
  local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local r = { code = code, out = read_file(outf) or "", err = read_file(errf) or "" }
  assert.is_nil((r.out .. r.err):lower():find(KEY:lower():sub(1, 8), 1, true), "the key shows")
  return r
end

local function id(email, o)
  o = o or {}
  o.key = o.key or KEY
  return assert(offline.pseudonymise(email, o))
end

local function mode_of(path)
  local _, _, mode = core.file_id(path)
  return mode
end

-- The three inputs: the same people in different spellings and formats.
local NDJSON = table.concat({
  '{"user":{"email":"Jane.Doe@Example.com"},"order":{"refCode":"N1"}}',
  '{"user":{"email":"  jane.doe@example.COM\\t"},"order":{"refCode":"N2"}}',
  '{"user":{"email":"o\'brien,\\"x\\"@example.com"},"order":{"refCode":"N3"}}',
  '{"user":{"id":"crm-1"},"order":{"refCode":"N4"}}',
  '{"user":{"email":"zoe+news@example.com","id":"whatever"},"order":{"refCode":"N5"}}',
  '{"order":{"refCode":"N6"}}',
}, "\n") .. "\n"
local CSV = "refCode,user.email,itemRefCode\n"
  .. "C1,JANE.DOE@EXAMPLE.COM,S1\n"
  .. "C1,JANE.DOE@EXAMPLE.COM,S2\n"
  .. "C2,adam@example.com,S1\n"
local XML = [[<?xml version="1.0" encoding="UTF-8"?>
<orders>
  <order refCode="X1" orderDate="2017-04-23T14:25:00 GMT" currency="GBP" total="1">
    <user email="Adam@Example.com"></user>
    <product refCode="S1" qty="1" price="1"/>
  </order>
  <order refCode="X2" orderDate="2017-04-23T14:25:00 GMT" currency="GBP" total="1">
    <user email="bea@example.com"></user>
    <product refCode="S1" qty="1" price="1"/>
  </order>
</orders>
]]

local function expected(o)
  local list = { "adam@example.com", "bea@example.com", "jane.doe@example.com",
                 "o'brien,\"x\"@example.com", "zoe+news@example.com" }
  table.sort(list)
  local lines = { "email,id" }
  for _, e in ipairs(list) do lines[#lines + 1] = mapping.csv_field(e) .. "," .. id(e, o) end
  return table.concat(lines, "\n") .. "\n"
end

describe("optimizely-offline mapping", function()
  setup(function()
    TMP = io.popen("mktemp -d"):read("*l")
    write_file(tmp("a.ndjson"), NDJSON)
    write_file(tmp("b.csv"), CSV)
    write_file(tmp("c.xml"), XML)
  end)
  teardown(function()
    if TMP and TMP:match("^/tmp/") then os.execute("rm -rf " .. q(TMP)) end
  end)

  it("writes one line per distinct normalised e-mail from NDJSON, CSV and XML, header first, 0600", function()
    local r = cli({ "mapping", "a.ndjson", "b.csv", "c.xml", "-o", "map.csv" })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.out)
    local text = read_file(tmp("map.csv"))
    assert.are.equal(expected(), text)
    -- variants of one address collapsed; the quoted one is RFC 4180
    assert.matches('\n"o\'brien,""x""@example.com",%x+\n', text)
    assert.are.equal(6, select(2, text:gsub("\n", "")))
    assert.are.equal(tonumber("600", 8), mode_of(tmp("map.csv"))) -- under umask 022
    assert.are.equal("8 e-mails read, 5 distinct, 5 written to map.csv; "
      .. "1 records with a user.id and no e-mail\n", r.err)
  end)

  it("writes to standard output without -o", function()
    local r = cli({ "mapping", "a.ndjson", "b.csv", "c.xml" })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(expected(), r.out)
    assert.matches("written to standard output", r.err)
  end)

  it("replaces an existing output only once complete, and keeps it 0600", function()
    write_file(tmp("old.csv"), "old\n")
    os.execute("chmod 644 " .. q(tmp("old.csv")))
    local r = cli({ "mapping", "c.xml", "-o", "old.csv", "-q" })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("", r.err)
    assert.are.equal("email,id\nadam@example.com," .. id("adam@example.com") .. "\nbea@example.com,"
      .. id("bea@example.com") .. "\n", read_file(tmp("old.csv")))
    assert.are.equal(tonumber("600", 8), mode_of(tmp("old.csv")))
  end)

  it("refuses -o naming an input, whatever the spelling (exit 2, input intact)", function()
    os.execute("mkdir -p " .. q(tmp("d")) .. " && ln -sf ../a.ndjson " .. q(tmp("d/link.ndjson")))
    for _, o in ipairs({ "a.ndjson", "./a.ndjson", "d/../a.ndjson", "d/link.ndjson", TMP .. "/c.xml" }) do
      local r = cli({ "mapping", "a.ndjson", "c.xml", "-o", o })
      assert.are.equal(2, r.code, o)
      assert.matches("%-o .* is the input file .*: write it elsewhere", r.err)
    end
    assert.are.equal(NDJSON, read_file(tmp("a.ndjson")))
    assert.are.equal(XML, read_file(tmp("c.xml")))
  end)

  it("takes the key from --config, the environment winning; refuses a missing or short key", function()
    write_file(tmp("k.conf"), "# pseudonym settings\npseudonym_key = \"" .. KEY .. "-conf\"\nsite = x\n")
    os.execute("chmod 600 " .. q(tmp("k.conf"))) -- a key others can read gets a warning
    local r = cli({ "mapping", "c.xml", "--config", "k.conf" }, { env = {} })
    assert.are.equal(0, r.code, r.err)
    assert.matches("\nadam@example.com," .. id("adam@example.com", { key = KEY .. "-conf" }), r.out)
    r = cli({ "mapping", "c.xml", "--config", "k.conf" })
    assert.matches("\nadam@example.com," .. id("adam@example.com"), r.out)
    r = cli({ "mapping", "c.xml" }, { env = {} })
    assert.are.equal(2, r.code)
    assert.are.equal("error: no pseudonym key: set OPTIMIZELY_PSEUDONYM_KEY (or pseudonym_key in the config file)\n",
      r.err)
    assert.are.equal("", r.out)
    r = cli({ "mapping", "c.xml" }, { env = { OPTIMIZELY_PSEUDONYM_KEY = "Kx9-SECRET-map" } })
    assert.are.equal(2, r.code)
    assert.matches("^error: the pseudonym key in OPTIMIZELY_PSEUDONYM_KEY is too short %(14 bytes", r.err)
    r = cli({ "mapping", "c.xml", "-o", "m2.csv", "--config", "k.conf", "--length", "8" })
    assert.are.equal(2, r.code)
    assert.are.equal("error: --length must be 16..64 for hex, got 8\n", r.err)
    assert.is_nil(read_file(tmp("m2.csv")))
  end)

  it("applies --length, --id-encoding, --strip-plus-tag and --strip-dots to the ids", function()
    local o = { length = 24, encoding = "base64url", strip_plus_tag = true, strip_dots = true }
    local r = cli({ "mapping", "a.ndjson", "b.csv", "c.xml", "--length", "24", "--id-encoding", "base64url",
                    "--strip-plus-tag", "--strip-dots" })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(expected(o), r.out)
    assert.is_nil(r.err:find("warning", 1, true))
    -- the old name still works, and says the new one; a character set given to it is refused
    local old = cli({ "mapping", "a.ndjson", "b.csv", "c.xml", "--length", "24", "--encoding", "base64url",
                      "--strip-plus-tag", "--strip-dots" })
    assert.are.equal(0, old.code, old.err)
    assert.are.equal(expected(o), old.out)
    assert.matches("^warning: %-%-encoding is now %-%-id%-encoding", old.err)
    local bad = cli({ "mapping", "a.ndjson", "--encoding", "cp1252" })
    assert.are.equal(2, bad.code)
    assert.matches("error: --encoding is the old name of --id-encoding, the pseudonym id's encoding "
      .. "(hex or base64url), got cp1252; the input file's character set is --input-encoding", bad.err, 1, true)
    -- the e-mail column keeps the address; the id is that of janedoe@, zoe@
    assert.matches("\njane%.doe@example%.com," .. id("janedoe@example.com", o):gsub("%-", "%%-") .. "\n", r.out)
    assert.matches("\nzoe%+news@example%.com," .. id("zoe@example.com", o):gsub("%-", "%%-") .. "\n", r.out)
  end)

  it("reports invalid e-mails and unreadable records (exit 1) and still writes the rest", function()
    write_file(tmp("bad.ndjson"), table.concat({
      '{"user":{"email":"secret.person.example.com"},"order":{"refCode":"B1"}}',
      '{"user":{"email":42},"order":{"refCode":"B2"}}',
      'not json',
      '{"user":{"email":"ok@example.com"},"order":{"refCode":"B3"}}',
    }, "\n") .. "\n")
    local r = cli({ "mapping", "bad.ndjson", "-o", "bad.csv" })
    assert.are.equal(1, r.code)
    assert.matches("bad.ndjson:1: order B1: user.email: has no @\n", r.err, 1, true)
    assert.matches("bad.ndjson:2: order B2: user.email: must be a string, got number\n", r.err, 1, true)
    assert.matches("bad.ndjson:3: invalid JSON", r.err, 1, true)
    assert.is_nil(r.err:find("secret.person", 1, true))
    assert.matches("3 e-mails read, 1 distinct, 1 written to bad.csv; 2 invalid e-mails, 1 unreadable records\n",
      r.err, 1, true)
    assert.are.equal("email,id\nok@example.com," .. id("ok@example.com") .. "\n", read_file(tmp("bad.csv")))
  end)

  it("reads the payloads after --transform, as send does", function()
    write_file(tmp("t.lua"), [[
      return function(record)
        local p = record.payload
        if p.order.refCode == "X2" then return nil end
        p.user = { email = "via-transform+" .. p.order.refCode .. "@example.com" }
        return p
      end]])
    local r = cli({ "mapping", "c.xml", "--transform", "t.lua" })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal("email,id\nvia-transform+x1@example.com," .. id("via-transform+x1@example.com") .. "\n", r.out)
    assert.matches("1 e-mails read, 1 distinct, 1 written to standard output; 1 skipped by the transform",
      r.err, 1, true)
    r = cli({ "mapping", "c.xml", "--transform", "t.lua", "-o", "t.lua" })
    assert.are.equal(2, r.code)
  end)

  it("gives the same file through many sorted runs and merge passes, and leaves no temporary file", function()
    local lines = {}
    for i = 1, 120 do
      lines[#lines + 1] = ('{"user":{"email":"%sPerson%03d@example.com"},"order":{"refCode":"M%d"}}')
        :format(i % 2 == 0 and " " or "", (i * 37) % 50, i)
    end
    write_file(tmp("many.ndjson"), table.concat(lines, "\n") .. "\n")
    os.execute("mkdir -p " .. q(tmp("sort")))
    local one = cli({ "mapping", "many.ndjson" })
    local many = cli({ "mapping", "many.ndjson", "--run-size", "1", "--tmpdir", "sort" })
    assert.are.equal(0, many.code, many.err)
    assert.are.equal(one.out, many.out)
    assert.are.equal(51, select(2, many.out:gsub("\n", "")))
    assert.matches("120 e-mails read, 50 distinct, 50 written", many.err, 1, true)
    assert.are.equal("", sys.capture("ls -A " .. q(tmp("sort"))))
    local r = cli({ "mapping", "many.ndjson", "--tmpdir", "no/such/dir" })
    assert.are.equal(2, r.code)
    assert.matches("^error: cannot create a temporary file in no/such/dir", r.err)
  end)
end)

describe("optimizely-offline mapping, interrupted", function()
  setup(function() TMP = io.popen("mktemp -d"):read("*l") end)
  teardown(function()
    if TMP and TMP:match("^/tmp/") then os.execute("rm -rf " .. q(TMP)) end
  end)

  it("on Ctrl-C writes nothing, removes its temporary files and exits 130", function()
    local lines = {}
    for i = 1, 300 do
      lines[i] = ('{"user":{"email":"p%d@example.com"},"order":{"refCode":"I%d"}}'):format(i, i)
    end
    write_file(tmp("int.ndjson"), table.concat(lines, "\n") .. "\n")
    os.execute("mkdir -p " .. q(tmp("sort")))
    local r = cli({ "mapping", "int.ndjson", "-o", "int.csv", "--run-size", "10", "--tmpdir", "sort",
                    "--transform", ROOT .. "/spec/fixtures/cli/interrupt.lua" },
      { env = { OPTIMIZELY_PSEUDONYM_KEY = KEY, KILL_AT = "150" } })
    assert.are.equal(130, r.code, r.err)
    assert.are.equal("interrupted: no mapping written\n", r.err)
    assert.is_nil(read_file(tmp("int.csv")))
    assert.are.equal("", sys.capture("ls -A " .. q(tmp("sort"))))
  end)
end)

describe("optimizely.offline.distinct (mapping's external sort)", function()
  it("returns each distinct string once, in byte order, whatever the run size", function()
    local dir = io.popen("mktemp -d"):read("*l")
    math.randomseed(os.time())
    local input, want, seen = {}, {}, {}
    for i = 1, 600 do
      local s = ("%x@%s"):format(math.random(1, 200), ({ "a", "B", "\195\169", "z" })[i % 4 + 1])
      input[i] = s
      if not seen[s] then seen[s] = true; want[#want + 1] = s end
    end
    table.sort(want)
    for _, size in ipairs({ 1, 7, 100, 5000 }) do
      local d = distinct.new(dir, { run_size = size, fan_in = 2 + size % 3 })
      for _, s in ipairs(input) do assert.is_true(d:add(s)) end
      local got = {}
      assert.are.equal(#want, d:each(function(s) got[#got + 1] = s end))
      assert.are.same(want, got)
      d:cleanup()
      assert.are.equal("", sys.capture("ls -A " .. q(dir)))
    end
    os.execute("rm -rf " .. q(dir))
  end)

  it("returns nil, err when a run cannot be written, and lets an error of emit through", function()
    local dir = io.popen("mktemp -d"):read("*l")
    local d = distinct.new(dir .. "/missing", { run_size = 2 })
    assert.is_true(d:add("a"))
    local ok, err = d:add("b") -- the run is full: written to a directory that is not there
    assert.is_nil(ok)
    assert.equal("storage", err.kind)
    assert.matches("cannot create a temporary file in " .. dir .. "/missing", err.message, 1, true)
    d:cleanup()
    local e = distinct.new(dir, { run_size = 1 })
    assert.is_true(e:add("x"))
    assert.is_true(e:add("y"))
    assert.has_error(function() e:each(function() error("stop here", 0) end) end, "stop here")
    e:cleanup()
    assert.are.equal("", sys.capture("ls -A " .. q(dir)))
    assert.has_error(function() distinct.new(dir, { run_size = 0 }) end)
    os.execute("rm -rf " .. q(dir))
  end)

  it("quotes CSV fields as RFC 4180 says", function()
    assert.are.equal("a@b", mapping.csv_field("a@b"))
    assert.are.equal('"a,b@c"', mapping.csv_field("a,b@c"))
    assert.are.equal('"""a""@c"', mapping.csv_field('"a"@c'))
  end)
end)
