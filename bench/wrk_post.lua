-- wrk script for bench/batch.lua: POST one order body with the endpoint's
-- headers over every connection (wrk keeps them alive, HTTP/1.1).
--   WRK_BODY=order.json WRK_SITE=s WRK_TOKEN=t WRK_CHANNEL=c \
--     wrk -c16 -t1 -d2s -s bench/wrk_post.lua https://127.0.0.1:PORT/tracker/smart-api/orders/offline
-- Prints one line: "wrk requests=N seconds=S rps=R errors=E" (E counts
-- socket errors, timeouts and non-2xx answers).
local function env(name)
  local v = os.getenv(name)
  if not v or v == "" then error("wrk_post.lua: " .. name .. " is not set") end
  return v
end

local f = assert(io.open(env("WRK_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["site"] = env("WRK_SITE")
wrk.headers["siteToken"] = env("WRK_TOKEN")
wrk.headers["channel"] = env("WRK_CHANNEL")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"

function done(summary, _latency, _requests) -- wrk calls done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local secs = summary.duration / 1e6
  io.write(string.format("wrk requests=%d seconds=%.4f rps=%.1f errors=%d\n",
    summary.requests, secs, summary.requests / secs, errors))
end
