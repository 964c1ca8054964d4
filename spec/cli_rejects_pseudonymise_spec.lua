-- The rejects file of a --pseudonymise run (issue 19): whatever the stage
-- at which a record is rejected — input, transform, pseudonymisation,
-- channel, date, validation, server — the file never holds the clear
-- e-mail (nor its local part), every line says the run pseudonymised, and
-- sending the file again, with or without --pseudonymise, never posts an
-- e-mail. Real CLI, real sandbox.
local cli = require("support.cli")
local sb = require("support.sandbox")
local offline = require("optimizely.offline")

local KEY = "rejects-pseudonym-key-0123456789"
local EMAIL = "Jane.Doe@Example.com"
local NEEDLE = "jane.doe" -- the address's local part, in any case: never in the file

local function order(ref, extra)
  local p = { user = { email = EMAIL }, order = { refCode = ref, orderDate = "2016-05-16T14:25:00 GMT",
    currency = "GBP", total = 1, items = { { refCode = "a", qty = 1, price = 1 } } } }
  for k, v in pairs(extra or {}) do p.order[k] = v end
  return p
end

local function ndjson(name, lines)
  local out = {}
  for i, l in ipairs(lines) do out[i] = type(l) == "string" and l or sb.json.encode(l) end
  return cli.write_file(cli.tmp(name), table.concat(out, "\n") .. "\n")
end

local function env(extra)
  local e = cli.creds({ OPTIMIZELY_PSEUDONYM_KEY = KEY })
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

-- The rejects file holds `n` lines, none with the address, each marked;
-- returns them decoded.
local function clean_rejects(path, n, stage)
  local text = assert(cli.read_file(path), "no rejects file")
  assert.is_nil(text:lower():find(NEEDLE, 1, true), text)
  local lines = cli.lines_of(path)
  assert.equal(n, #lines, text)
  for _, l in ipairs(lines) do
    assert.is_true(l.pseudonymised, text)
    if stage then assert.equal(stage, l.stage, text) end
    if type(l.payload) == "table" and type(l.payload.user) == "table" then
      assert.is_nil(l.payload.user.email, text)
    end
  end
  return lines
end

-- Sends the rejects file again, without and with --pseudonymise: the
-- sandbox never receives an e-mail.
local function resend_posts_no_email(path)
  sb.reset()
  for _, flag in ipairs({ false, true }) do
    local args = { "send", path, "--rejects", cli.tmp("again-" .. tostring(flag) .. ".ndjson") }
    if flag then table.insert(args, 2, "--pseudonymise") end
    local r = cli.run(args, { env = env() })
    assert.is_true(r.code == 0 or r.code == 1, r.all)
  end
  for _, rec in ipairs(sb.orders()) do
    assert.is_nil(rec.body:lower():find(NEEDLE, 1, true), rec.body)
    assert.is_nil(rec.body:find("@", 1, true), rec.body)
  end
end

local function send(input, extra_args, e)
  local rejects = cli.tmp("rejects-" .. math.random(1e9) .. ".ndjson")
  local args = { "send", "--pseudonymise", input, "--rejects", rejects, "--max-attempts", "1" }
  for _, a in ipairs(extra_args or {}) do args[#args + 1] = a end
  local r = cli.run(args, { env = e or env() })
  assert.equal(1, r.code, r.all)
  return rejects, r
end

describe("send --pseudonymise --rejects", function()
  setup(function() sb.ensure() end)
  before_each(function() sb.clear_faults(); sb.reset() end)
  teardown(function() sb.clear_faults(); cli.cleanup() end)

  it("input stage: a line that does not parse is kept by its source, not its text", function()
    local input = ndjson("in.ndjson", { '{"user":{"email":"' .. EMAIL .. '"},"order":{"refCode":"IN-1",' })
    local rejects = send(input)
    local l = clean_rejects(rejects, 1, "input")[1]
    assert.matches("in%.ndjson:1", l.source)
    assert.is_nil(l.raw)
    assert.equal("record", l.withheld)
    resend_posts_no_email(rejects)
  end)

  it("input stage: a CSV row that belongs to no order keeps no raw text", function()
    local csv = cli.write_file(cli.tmp("in.csv"), "refCode,orderDate,currency,total,user.email,itemRefCode,qty,price\n"
      .. ",2016-05-16T14:25:00 GMT,GBP,1," .. EMAIL .. ",a,1,1\n")
    local rejects = send(csv)
    clean_rejects(rejects, 1, "input")
    resend_posts_no_email(rejects)
  end)

  it("transform stage: the record and the transform's message are not kept in clear", function()
    local script = cli.write_file(cli.tmp("t.lua"),
      'return function(rec) error("cannot map " .. rec.payload.user.email) end\n')
    local input = ndjson("tr.ndjson", { order("TR-1") })
    local rejects = send(input, { "--transform", script })
    local l = clean_rejects(rejects, 1, "transform")[1]
    assert.is_nil(l.payload)
    assert.equal("record", l.withheld)
    resend_posts_no_email(rejects)
  end)

  it("pseudonymise stage: an address the pseudonymiser refuses is not kept", function()
    local bad = order("PS-1")
    bad.user.email = "jane.doe.example.com"
    local rejects = send(ndjson("ps.ndjson", { bad }))
    local l = clean_rejects(rejects, 1, "validation")[1]
    assert.is_nil(l.payload)
    assert.equal("record", l.withheld)
    resend_posts_no_email(rejects)
  end)

  it("channel stage: an order for a channel without a token keeps the pseudonymised id", function()
    local rejects = send(ndjson("ch.ndjson", { { channel = "tv", payload = order("CH-1") } }))
    local l = clean_rejects(rejects, 1)[1]
    assert.equal("tv", l.channel)
    assert.equal(assert(offline.pseudonymise(EMAIL, { key = KEY })), l.payload.user.id)
    resend_posts_no_email(rejects)
  end)

  it("date stage: an order whose date does not convert keeps the pseudonymised id, not the e-mail", function()
    local input = ndjson("dt.ndjson", { order("DT-1", { orderDate = "31/02/2024 10:00" }) })
    local rejects = send(input, { "--date-format", "%d/%m/%Y %H:%M" })
    local l = clean_rejects(rejects, 1, "validation")[1]
    assert.equal(assert(offline.pseudonymise(EMAIL, { key = KEY })), l.payload.user.id)
    assert.equal("31/02/2024 10:00", l.payload.order.orderDate)
    resend_posts_no_email(rejects)
  end)

  it("validation stage: an invalid order keeps the pseudonymised id", function()
    local rejects = send(ndjson("va.ndjson", { order("VA-1", { currency = "EURO" }) }))
    local l = clean_rejects(rejects, 1, "validation")[1]
    assert.equal(assert(offline.pseudonymise(EMAIL, { key = KEY })), l.payload.user.id)
    resend_posts_no_email(rejects)
  end)

  it("server stage: an order the endpoint refused keeps the pseudonymised id", function()
    sb.faults({ count = 1, status = 400, match = "POST" })
    local rejects = send(ndjson("sv.ndjson", { order("SV-1") }))
    local l = clean_rejects(rejects, 1, "send")[1]
    assert.equal(assert(offline.pseudonymise(EMAIL, { key = KEY })), l.payload.user.id)
    resend_posts_no_email(rejects)
    assert.equal(2, #sb.orders({ refCode = "SV-1" })) -- sent by its id, once by each run
  end)

  it("validate and convert write their rejects the same way", function()
    for _, cmd in ipairs({ "validate", "convert" }) do
      local input = ndjson(cmd .. ".ndjson", { order(cmd .. "-1", { orderDate = "31/02/2024 10:00" }),
        '{"user":{"email":"' .. EMAIL .. '"}' })
      local rejects = cli.tmp(cmd .. "-rejects.ndjson")
      local args = { cmd, "--pseudonymise", input, "--rejects", rejects, "--date-format", "%d/%m/%Y %H:%M" }
      if cmd == "convert" then args[#args + 1] = "-o"; args[#args + 1] = cli.tmp("conv.ndjson") end
      local r = cli.run(args, { env = { OPTIMIZELY_PSEUDONYM_KEY = KEY } })
      assert.equal(1, r.code, r.all)
      clean_rejects(rejects, 2)
    end
  end)
end)
