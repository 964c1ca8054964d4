-- make demo: validate and encode the example orders, then send them one by
-- one (client:send) to the endpoint the environment names — the local
-- sandbox when run by scripts/demo.sh — printing each result.
-- Credentials: OPTIMIZELY_SITE, OPTIMIZELY_SITE_TOKEN, OPTIMIZELY_CHANNEL,
-- OPTIMIZELY_BASE_URL and OPTIMIZELY_CA_FILE; without them the sending part
-- is skipped. The token is never printed.
local offline = require("optimizely.offline")
local orders = dofile("examples/orders.lua")

print("optimizely-offline " .. offline.VERSION .. " — encoding examples/orders.lua")
for i, payload in ipairs(orders) do
  local json, res = offline.encode(payload)
  if json then
    print(("\n[%d] ok: %s"):format(i, json))
    for _, w in ipairs(res) do print(("    warning: %s: %s"):format(w.path, w.message)) end
  else
    print(("\n[%d] rejected (%d problems):"):format(i, #res.problems))
    for _, p in ipairs(res.problems) do print(("    %s: %s"):format(p.path, p.message)) end
  end
end

local function env(name)
  local v = os.getenv(name)
  return v ~= "" and v or nil
end

local config = {
  site = env("OPTIMIZELY_SITE"), token = env("OPTIMIZELY_SITE_TOKEN"),
  channel = env("OPTIMIZELY_CHANNEL"), base_url = env("OPTIMIZELY_BASE_URL"),
  ca_file = env("OPTIMIZELY_CA_FILE"), timeout = 5, max_attempts = 2,
}
if not (config.site and config.token and config.channel and config.base_url) then
  print("\n(set OPTIMIZELY_SITE, OPTIMIZELY_SITE_TOKEN, OPTIMIZELY_CHANNEL and OPTIMIZELY_BASE_URL"
    .. " to send them; `make demo` does it for its local sandbox)")
  return
end

local client = offline.client(config)
print("\nsending each example with client:send to " .. client:url())
local failed_unexpectedly = false
for i, payload in ipairs(orders) do
  local res, err = client:send(payload)
  if res then
    local n = res.attempts
    print(("\n[%d] sent: HTTP %d, %d attempt%s"):format(i, res.status, n, n == 1 and "" or "s"))
    for _, w in ipairs(res.warnings) do
      print(("    warning: %s: %s"):format(w.path or w.code or w.source or "", tostring(w.message)))
    end
  else
    if err.kind == "validation" then
      -- the fourth example is invalid on purpose: nothing goes out
      print(("\n[%d] not sent: invalid order, %d problems (listed above), %d attempts")
        :format(i, #err.problems, err.attempts or 0))
    else
      print(("\n[%d] not sent: %s"):format(i, tostring(err)))
    end
    if err.kind ~= "validation" then failed_unexpectedly = true end
  end
end
client:close()
if failed_unexpectedly then os.exit(1) end
