-- make demo: validate and encode the example orders, then (when the HTTPS
-- client and the sandbox are available) send them to a local sandbox.
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
