-- The nginx path with engine = "thread": the libcurl engine on a C thread
-- inside each nginx worker (delivery off the event loop), on a real Debian
-- nginx + lua module, delivering over real TLS to the sandbox.
local sb = require("support.sandbox")
local nginx = require("support.nginx")
local json = sb.json

local uid = 0
local function ref(prefix)
  uid = uid + 1
  return (prefix or "THR") .. "-" .. os.time() .. "-" .. math.random(1000, 9999) .. "-" .. uid
end

local function payload(r)
  return { user = { id = "till-7" }, order = { refCode = r, orderDate = "2016-05-16T14:25:00 GMT",
    currency = "GBP", total = "21.00", items = { { refCode = "sku-1", qty = 2, price = "10.50" } } } }
end

local function received(r) return (sb.orders({ refCode = r })) end

local function arrived(refs, timeout)
  return nginx.wait_until(function()
    for _, r in ipairs(refs) do if #received(r) == 0 then return false end end
    return true
  end, timeout or 20)
end

describe("OpenResty path with the libcurl engine on a thread (engine = thread)", function()
  local info, inst

  local function start(queue_opts, workers)
    inst = nginx.start_example({ tag = "nginx-thread", info = info, workers = workers,
      app = { site = info.site, token = info.token, channel = info.channel, base_url = info.base_url,
        ca_file = info.ca_file, backoff_base = 0.05, backoff_max = 0.3, queue = queue_opts } })
  end

  local function stop()
    if inst then inst:destroy() end
    inst = nil
  end

  setup(function()
    info = sb.ensure()
    sb.clear_faults()
  end)

  after_each(function()
    sb.clear_faults()
    stop()
  end)

  it("delivers orders pushed in the content and log phases, off the event loop", function()
    start({ engine = "thread", flush_interval = 0.05, concurrency = 4 })
    local refs = { ref(), ref(), ref() }
    local list = {}
    for i, r in ipairs(refs) do list[i] = payload(r) end
    local res = inst:request("/pos/orders", { method = "POST", body = json.encode(list) })
    assert.equal(202, res.status, res.body)
    local hook = ref("HOOK")
    assert.equal(200, inst:get("/checkout?order=" .. hook .. "&sku=s1&price=5&user=u1").status)
    refs[#refs + 1] = hook
    assert.is_true(arrived(refs))
    for _, r in ipairs(refs) do assert.equal(1, #received(r), r) end
    local st = json.decode(inst:get("/queue/stats").body)
    assert.equal(4, st.sent)
    assert.equal(0, st.dead)
  end)

  it("retries a 503 in the thread, and reports a permanent failure through on_failure", function()
    start({ engine = "thread", flush_interval = 0.05 })
    sb.faults({ count = 1, status = 503 })
    local a, b = ref(), ref()
    assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode({ payload(a) }) }).status)
    assert.is_true(arrived({ a }))
    sb.faults({ count = 1, status = 400, match = "POST" })
    assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode({ payload(b) }) }).status)
    assert.is_true(nginx.wait_until(function()
      return inst:error_log():find("order \"" .. b .. "\" failed for good", 1, true) ~= nil
    end, 10), "the 400 was not reported")
    local st = json.decode(inst:get("/queue/stats").body)
    assert.is_true(st.retried >= 1)
    assert.equal(1, st.dead)
  end)

  it("accounts for an order in flight at reload: delivered or reported, never silent", function()
    start({ engine = "thread", flush_interval = 0.05, shutdown_timeout = 0.5 })
    sb.faults({ count = 1, delay = 4 }) -- the order is in flight when the worker exits
    local r = ref("RELOAD")
    assert.equal(202, inst:request("/pos/orders", { method = "POST", body = json.encode({ payload(r) }) }).status)
    -- in flight: the sandbox is serving it (and holds it 4 s)
    nginx.wait_until(function() return sb.stats().concurrent_now > 0 end, 10, 0.02)
    assert.is_true(nginx.run("kill -HUP " .. inst:pid()))
    assert.is_true(nginx.wait_until(function()
      return #received(r) > 0 or inst:error_log():find("order \"" .. r .. "\" not delivered", 1, true) ~= nil
    end, 20), "the in-flight order was neither delivered nor reported")
  end)
end)
