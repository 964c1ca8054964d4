-- Log injection (issue 19): an endpoint's error code holding a line break
-- and a forged nginx log line, or ESC and CR, reaches no log line and no
-- `tostring(err)` raw: control characters (C0, DEL, C1) are escaped by one
-- helper (errors.clean, the CLI's too) in Error.__tostring and in every log
-- line — the events logger and the nginx queue's own lines.
local errors = require("optimizely.offline.errors")
local events = require("optimizely.offline.events")
local common = require("optimizely.offline.cli.common")
local sb = require("support.sandbox")

local FORGED = "X\n2099/01/01 00:00:00 [emerg] 1#1: forged line"

local function no_controls(s)
  for i = 1, #s do
    local c = s:byte(i)
    if c < 0x20 or c == 0x7f then return false, ("control byte %d at %d"):format(c, i) end
    if c == 0xc2 then
      local n = s:byte(i + 1)
      if n and n >= 0x80 and n <= 0x9f then return false, "C1 control at " .. i end
    end
  end
  return true
end

describe("control characters", function()
  it("are escaped by tostring(err): message, code, problems", function()
    local e = errors.new({ kind = "api", status = 400, message = "refused \27[31mred\27[0m\rover",
      code = FORGED .. "\194\133nel" })
    local s = tostring(e)
    assert.is_true(no_controls(s))
    assert.truthy(s:find("X\\n2099/01/01", 1, true), s)
    assert.truthy(s:find("\\x1b[31m", 1, true), s)
    assert.truthy(s:find("\\r", 1, true), s)
    local v = errors.validation({ { path = "order.refCode", message = "bad\nline" } })
    assert.is_true(no_controls(tostring(v)))
  end)

  it("are escaped by one helper the command line shares", function()
    assert.equal("a\\nb\\x1b\\u0085c\\t", errors.clean("a\nb\27\194\133c\t"))
    assert.equal(errors.clean("a\nb\27\194\133c\t"), common.clean("a\nb\27\194\133c\t"))
    assert.equal("ab...(3 bytes)", errors.clean("abc", 2))
    assert.equal("plain text", errors.clean("plain text"))
  end)

  it("are escaped in every line of the events logger", function()
    local lines = {}
    local ev = events.new({ logger = function(_, msg) lines[#lines + 1] = msg end })
    ev:log("warn", "a\nb")
    ev:emit("failure", { ref = "R\r1", attempt = 1, reason = "rejected",
      error = errors.new({ kind = "api", message = "m", code = FORGED }) })
    assert.equal(2, #lines)
    for _, l in ipairs(lines) do assert.is_true(no_controls(l), l) end
  end)

  it("are escaped by the log-line helper nginx code logs through", function()
    local got
    local log = errors.logger(function(level, msg) got = { level, msg } end)
    log(4, "order ", "R1", " failed: ", FORGED, nil)
    assert.equal(4, got[1])
    assert.equal("order R1 failed: X\\n2099/01/01 00:00:00 [emerg] 1#1: forged linenil", got[2])
  end)
end)

describe("a forged log line from the endpoint under nginx", function()
  local nginx = require("support.nginx")
  local info

  setup(function() info = sb.ensure() end)
  after_each(function() sb.clear_faults() end)

  local function payload(ref)
    return { user = { id = "till-1" }, order = { refCode = ref, orderDate = "2016-05-16T14:25:00 GMT",
      currency = "GBP", total = "21.00", items = { { refCode = "sku-1", qty = 2, price = "10.50" } } } }
  end

  it("is escaped in the queue's 'failed for good' lines", function()
    local queue = { flush_interval = 0.05, max_attempts = 1 }
    local inst = nginx.start_example({ tag = "nginx-inject", info = info,
      app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        ca_file = info.ca_file, backoff_base = 0.05, backoff_max = 0.2, queue = queue } })
    finally(function() inst:destroy() end)
    sb.faults({ count = 1, status = 400, match = "POST",
      body = sb.json.encode({ status = "fail", errors = { { code = FORGED, message = "m\r\27[2Jcleared" } } }) })
    local ref = "INJ-" .. os.time()
    local res = inst:request("/pos/orders", { method = "POST", body = sb.json.encode({ payload(ref) }) })
    assert.equal(202, res.status, res.body)
    local log = nginx.wait_until(function()
      local l = inst:error_log()
      return l:find("failed for good", 1, true) and l
    end, 15)
    assert.is_string(log, "no 'failed for good' line")
    for line in log:gmatch("[^\n]+") do
      assert.is_nil(line:find("^2099/01/01"), "a forged line: " .. line)
      assert.is_true(no_controls(line), line)
    end
    assert.truthy(log:find("X\\n2099/01/01", 1, true), log)
  end)
end)
