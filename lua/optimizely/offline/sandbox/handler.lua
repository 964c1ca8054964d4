--- Request handler of the sandbox: a local stand-in of the offline-orders endpoint.
-- Runs inside nginx (ngx_http_lua_module, LuaJIT); loaded by the generated
-- nginx.conf, configured once in `init_by_lua` from `DIR/conf/config.lua`.
--
-- Endpoint behaviour (the real server's statuses are undocumented, spec §5.1;
-- these are the sandbox's choices, every failure uses the documented
-- `{"status":"fail","errors":[{code,message}]}` envelope):
--
--   Every endpoint request (POST and DELETE below) is first counted, then
--   answered 429 TooManyRequests (with `Retry-After: retry_after`) when more
--   than `max_concurrent` (0: no limit) are in progress, and waits `delay_ms`
--   (ngx.sleep: other requests go on meanwhile) before it is answered.
--
--   POST /tracker/smart-api/orders/offline
--     site missing/unknown      403 SiteNotRecognized
--     siteToken missing, or not 401 InvalidSiteToken   (the received value is never echoed)
--       the token of the request's channel
--     channel missing/unknown   403 ChannelNotRecognized (when the token is one of the
--                               configured ones; else 401 as above)
--     Content-Type not JSON     415 UnsupportedMediaType
--     body not a JSON object    400 MalformedJson ("Json Parsing exception: ...")
--     `order` missing/not obj   400 MalformedJson (spec §5.3: a missing mandatory element)
--     field problems            400, one error per problem, codes
--                               MissingOrMalformedOrderNo/OrderDate/Currency/Total/
--                               Product/Subtotal/Shipping
--     other method              405 MethodNotAllowed
--     valid                     200 {"status":"OK"}; recorded unless `record` is false
--   DELETE /smart-api/orders/offline/<ref>  and  DELETE /tracker/smart-api/orders/offline/<ref>
--     same header checks (no Content-Type needed); recorded refCode -> 200 OK and a
--     cancellation record; unknown -> 404 OrderNotFound. Repeating a cancel answers 200
--     again. With `record` false every cancel answers 200 (nothing to look up).
--
-- Control endpoints (no credentials; loopback only):
--   GET    /_sandbox/health          200 {"status":"OK",...}
--   GET    /_sandbox/orders          NDJSON records; ?refCode=X filters, ?since=N skips the
--                                    first N records (X-Sandbox-Total gives the count)
--   DELETE /_sandbox/orders          clears orders and cancellations
--   GET    /_sandbox/cancellations   NDJSON (same filters); DELETE clears them only
--   GET/POST/DELETE /_sandbox/faults queue / add a rule / clear
--   GET    /_sandbox/stats           counters (see `stats` below); DELETE resets them
--   GET    /_sandbox/settings        {"delay_ms","max_concurrent","retry_after"}; POST a JSON
--                                    object with any of them to change them while running
--   GET    /_sandbox/last            last endpoint request (recording sandboxes only)
--   POST   /_sandbox/reset           clears records, faults, stats and last (not settings)
--
-- Record line: {"received_at":epoch_seconds,"site","channel","token_id","refCode",
--   "token_ok":true,"headers":{request headers as sent, siteToken removed},"body":"raw body"}.
--   `channel` is the request's channel header; `token_id` the name of the configured
--   token it matched (the channel it is configured for), never the token.
--
-- Files the workers create (the records) are 0600: init_worker sets umask 077
-- (nginx's daemon mode leaves the workers with umask 0).
-- @module optimizely.offline.sandbox.handler
local ffi = require("ffi")
local cjson = require("cjson.safe").new()
cjson.decode_invalid_numbers(false) -- JSON has no NaN/Infinity/hex
cjson.encode_number_precision(14)

local ngx = ngx
local M = {}

local cfg = {}            -- set by configure() in the master, inherited by workers
local dict                -- lua_shared_dict oo_sandbox
-- this worker's maxima, published per worker; `gen` is the stats generation
-- they belong to (a reset bumps it, so every worker starts again from 0)
local worker_max = { gen = -1, cr = 0, conc = 0 }
-- this worker's copy of the settings, reloaded when the shared "ver" key
-- (bumped by a settings change or a stats reset) moves: one dict read a request
local current = { ver = -1, delay_ms = 0, max_concurrent = 0, retry_after = 1 }
-- requests of this worker holding a max_concurrent place (ngx.ctx is only
-- looked at in the log phase while there are some)
local holding = 0

local ORDERS, CANCELS = "orders.ndjson", "cancellations.ndjson"
local ENDPOINT_HINT = "POST /tracker/smart-api/orders/offline"

-- ------------------------------------------------------------------------
-- small helpers

local function json_response(status, tbl_or_string, extra_headers)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  if extra_headers then
    for k, v in pairs(extra_headers) do ngx.header[k] = v end
  end
  local body = tbl_or_string
  if type(body) ~= "string" then body = cjson.encode(body) end
  ngx.print(body)
  return ngx.exit(ngx.HTTP_OK)
end

local OK_BODY = '{"status":"OK"}'

-- the documented envelope, "status" first as in the docs' examples
local function envelope(errs)
  return '{"status":"fail","errors":' .. cjson.encode(errs) .. "}"
end

local function fail(status, errs, extra_headers)
  dict:incr("st:rejected", 1, 0)
  return json_response(status, envelope(errs), extra_headers)
end

local function fail1(status, code, message, extra_headers)
  return fail(status, { { code = code, message = message } }, extra_headers)
end

-- Spin lock on the shared dict; held only around short blocking work (no yields
-- inside), so a 5 s expiry only matters if a worker dies while holding it.
local function lock(name)
  local key = "lock:" .. name
  for _ = 1, 10000 do
    local ok, err = dict:add(key, true, 5)
    if ok then return key end
    if err ~= "exists" then return nil, err end
    ngx.sleep(0.001)
  end
  return nil, "timeout waiting for lock " .. name
end

local function unlock(key)
  dict:delete(key)
end

local function path_of(name)
  return cfg.dir .. "/" .. name
end

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  local file = ngx.req.get_body_file() -- spilled to disk (larger than the buffer)
  if not file then return "" end
  local f = io.open(file, "rb")
  if not f then return "" end
  body = f:read("*a") or ""
  f:close()
  return body
end

-- Request headers as sent (original case), without the token.
local function safe_headers()
  local h = ngx.req.get_headers(0, true)
  for k in pairs(h) do
    if type(k) == "string" and k:lower() == "sitetoken" then h[k] = nil end
  end
  return h
end

local function append_line(name, line)
  local key, err = lock("files")
  if not key then return nil, err end
  local f, oerr = io.open(path_of(name), "a")
  if not f then
    unlock(key)
    return nil, oerr
  end
  local ok, werr = f:write(line, "\n")
  f:close()
  unlock(key)
  if not ok then return nil, werr end
  return true
end

local function read_file_locked(name)
  local key, err = lock("files")
  if not key then return nil, err end
  local f = io.open(path_of(name), "rb")
  local data = ""
  if f then
    data = f:read("*a") or ""
    f:close()
  end
  unlock(key)
  return data
end

local function truncate_files(names)
  local key, err = lock("files")
  if not key then return nil, err end
  for _, name in ipairs(names) do
    local f = io.open(path_of(name), "w")
    if f then f:close() end
  end
  unlock(key)
  return true
end

local function pct_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- ------------------------------------------------------------------------
-- statistics

-- Raise this worker's maximum `name` to v, publishing it under a per-worker
-- key (no cross-worker race; /_sandbox/stats takes the largest).
local function note_max(name, v)
  if v > worker_max[name] then
    worker_max[name] = v
    dict:set("st:max" .. name .. ":" .. tostring(ngx.worker.id() or 0), v)
  end
end

-- Counts an endpoint request; the first one on a connection counts the
-- connection and its TLS handshake, full or resumed.
local refresh -- below: settings and the stats generation

local function count_request()
  refresh()
  dict:incr("st:requests", 1, 0)
  local var = ngx.var
  local cr = tonumber(var.connection_requests) or 1
  if cr > 1 then
    dict:incr("st:reused", 1, 0)
  else
    dict:incr("st:connections", 1, 0)
    if var.ssl_session_reused == "r" then
      dict:incr("st:handshakes_resumed", 1, 0)
    else
      dict:incr("st:handshakes_full", 1, 0)
    end
  end
  note_max("cr", cr)
end

local STAT_KEYS = { "requests", "accepted", "rejected", "cancelled", "faults_served", "reused",
  "connections", "handshakes_full", "handshakes_resumed", "throttled", "status_429" }

local function max_over_workers(name)
  local m = 0
  for id = 0, math.max(ngx.worker.count(), 1) - 1 do
    local v = dict:get("st:max" .. name .. ":" .. id) or 0
    if v > m then m = v end
  end
  return m
end

--- The counters of GET /_sandbox/stats (since start or the last reset):
--
--  - `requests`: endpoint requests (POST orders, DELETE cancels), all answers;
--  - `accepted`, `cancelled`: 200 answers; `rejected`: failure envelopes
--    (4xx/5xx the sandbox chose, 429 TooManyRequests included);
--  - `faults_served`: requests a fault rule took;
--  - `connections`: connections whose first request was an endpoint request;
--    `handshakes_full` / `handshakes_resumed`: their TLS handshakes
--    (`$ssl_session_reused`);
--  - `reused` (also `connections_reused`): requests on an already used connection;
--  - `max_connection_requests`: most requests seen on one connection;
--  - `concurrent_max`: most endpoint requests in progress at once (those
--    being answered 429 included: what clients had in flight);
--    `concurrent_now`: in progress now;
--  - `throttled`: 429 answers of `max_concurrent`; `status_429`: every 429
--    answer (throttled or a fault rule);
--  - `workers`, `record`, `faults_pending`, and the current `settings`.
-- @local
local function stats()
  local out = {}
  for _, k in ipairs(STAT_KEYS) do out[k] = dict:get("st:" .. k) or 0 end
  out.max_connection_requests = max_over_workers("cr")
  out.concurrent_max = max_over_workers("conc")
  out.concurrent_now = dict:get("inflight") or 0
  out.connections_reused = out.reused -- requests that came on an already used connection
  out.workers = ngx.worker.count()
  out.record = cfg.record
  out.faults_pending = dict:get("faults_n") or 0
  return out
end

local function reset_stats()
  for _, k in ipairs(STAT_KEYS) do dict:delete("st:" .. k) end
  for id = 0, math.max(ngx.worker.count(), 1) - 1 do
    dict:delete("st:maxcr:" .. id)
    dict:delete("st:maxconc:" .. id)
  end
  dict:incr("st:gen", 1, 0) -- every worker's local maxima start again from 0
  dict:incr("ver", 1, 0)
end

-- ------------------------------------------------------------------------
-- settings: delay, concurrency limit (the shared dict, so POST
-- /_sandbox/settings changes them in every worker)

local SETTINGS = {
  delay_ms = { min = 0, max = 600000 },
  max_concurrent = { min = 0, max = 1e6, integer = true },
  retry_after = { min = 0, max = 86400, integer = true },
}

local function settings()
  local out = {}
  for k in pairs(SETTINGS) do out[k] = dict:get("set:" .. k) or 0 end
  return out
end

function refresh()
  local ver = dict:get("ver") or 0
  if ver == current.ver then return end
  current.ver = ver
  for k, v in pairs(settings()) do current[k] = v end
  local gen = dict:get("st:gen") or 0
  if gen ~= worker_max.gen then
    worker_max.gen, worker_max.cr, worker_max.conc = gen, 0, 0
  end
end

-- Checks every given value first, then stores them: all or nothing.
local function store_settings(t)
  if type(t) ~= "table" then return nil, "settings must be a JSON object" end
  for k, v in pairs(t) do
    local spec = SETTINGS[k]
    if not spec then return nil, "unknown setting " .. cjson.encode(tostring(k)) end
    if type(v) ~= "number" or v ~= v or v < spec.min or v > spec.max
        or (spec.integer and v ~= math.floor(v)) then
      return nil, k .. " must be a" .. (spec.integer and "n integer" or " number") .. " in "
        .. spec.min .. ".." .. spec.max
    end
  end
  for k, v in pairs(t) do dict:set("set:" .. k, v) end
  dict:incr("ver", 1, 0)
  return true
end

-- ------------------------------------------------------------------------
-- admission: concurrency count (decremented in the log phase), limit, delay

-- Two counts, both decremented in the log phase: `inflight`, every endpoint
-- request in progress (what the client has in flight: the stats' maximum),
-- and `conc`, those admitted under max_concurrent (a 429 does not hold a place).
-- Call after count_request (fresh settings). Returns true when the request
-- may go on; otherwise the 429 has been sent.
local function admit()
  note_max("conc", dict:incr("inflight", 1, 0))
  local limit = current.max_concurrent
  local over = false
  if limit > 0 then
    if dict:incr("conc", 1, 0) <= limit then
      ngx.ctx.oo_conc = true
      holding = holding + 1
    else
      dict:incr("conc", -1, 0)
      over = true
    end
  end
  local delay = current.delay_ms
  if delay > 0 then ngx.sleep(delay / 1000) end
  if over then
    dict:incr("st:throttled", 1, 0)
    dict:incr("st:status_429", 1, 0)
    fail1(429, "TooManyRequests", "more than " .. limit .. " requests in progress; retry later",
      { ["Retry-After"] = tostring(current.retry_after) })
    return false
  end
  return true
end

-- ------------------------------------------------------------------------
-- faults: a FIFO of rules in the shared dict, consumed under a lock

local function load_queue()
  local q = cjson.decode(dict:get("faults") or "[]")
  return type(q) == "table" and q or {}
end

local function encode_queue(q)
  if #q == 0 then return "[]" end
  return cjson.encode(q)
end

local function store_queue(q)
  dict:set("faults", encode_queue(q))
  dict:set("faults_n", #q)
end

local function take_fault(method)
  local n = dict:get("faults_n")
  if not n or n <= 0 then return nil end -- the benchmark path: one dict read
  local key = lock("faults")
  if not key then return nil end
  local q = load_queue()
  local rule
  for i = 1, #q do
    local r = q[i]
    if r.match == nil or r.match == method then
      rule = {}
      for k, v in pairs(r) do rule[k] = v end
      r.count = r.count - 1
      if r.count <= 0 then table.remove(q, i) end
      break
    end
  end
  if rule then store_queue(q) end
  unlock(key)
  return rule
end

local function parse_fault(body)
  local r = cjson.decode(body)
  if type(r) ~= "table" then return nil, "fault rule must be a JSON object" end
  local rule = {}
  local count = r.count
  if count == nil then count = 1 end
  if type(count) ~= "number" or count < 1 or count ~= math.floor(count) or count > 1e9 then
    return nil, "count must be an integer >= 1"
  end
  rule.count = count
  if r.status ~= nil then
    if type(r.status) ~= "number" or r.status ~= math.floor(r.status) or r.status < 200 or r.status > 599 then
      return nil, "status must be an integer in 200..599"
    end
    rule.status = r.status
  end
  if r.retry_after ~= nil then
    if type(r.retry_after) == "number" then
      rule.retry_after = tostring(r.retry_after)
    elseif type(r.retry_after) == "string" and not r.retry_after:find("[%c]") then
      rule.retry_after = r.retry_after
    else
      return nil, "retry_after must be a string or a number"
    end
  end
  if r.body ~= nil then
    if type(r.body) ~= "string" then return nil, "body must be a string" end
    rule.body = r.body
  end
  if r.content_type ~= nil then
    if type(r.content_type) ~= "string" or r.content_type:find("[%c]") then
      return nil, "content_type must be a string"
    end
    rule.content_type = r.content_type
  end
  if r.delay ~= nil then
    if type(r.delay) ~= "number" or r.delay < 0 or r.delay > 600 then
      return nil, "delay must be a number of seconds in 0..600"
    end
    rule.delay = r.delay
  end
  if r.close ~= nil then
    if type(r.close) ~= "boolean" then return nil, "close must be a boolean" end
    if r.close then rule.close = true end
  end
  if r.stray ~= nil then
    if type(r.stray) ~= "boolean" then return nil, "stray must be a boolean" end
    if r.stray then rule.stray = true end
  end
  if r.match ~= nil then
    local m = type(r.match) == "string" and r.match:upper()
    if m ~= "POST" and m ~= "DELETE" then return nil, 'match must be "POST" or "DELETE"' end
    rule.match = m
  end
  if not (rule.status or rule.delay or rule.close) then
    return nil, "a fault needs status, delay or close"
  end
  if (rule.retry_after or rule.body) and not rule.status then
    return nil, "retry_after and body need a status"
  end
  if rule.stray and not rule.status then return nil, "stray needs a status" end
  return rule
end

-- The stray fault: the answer, then — once the client has read it — a
-- second, unasked-for `200 OK` on the same connection, which is then held
-- open for STRAY_HOLD seconds without reading. A client that reuses the
-- connection reads the stray as the answer to its next request (which the
-- sandbox never sees). Written on the raw socket (HTTP/1.x only; under
-- HTTP/2 the answer goes out alone).
local STRAY = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"OK"}'
local STRAY_GAP, STRAY_HOLD = 0.05, 1.5

local function serve_stray(rule, body)
  local sock = ngx.req.http_version() < 2 and ngx.req.socket(true)
  if not sock then return false end
  local head = { ("HTTP/1.1 %d Fault\r\n"):format(rule.status),
    "Content-Type: " .. (rule.content_type or "application/json") .. "\r\n",
    "Content-Length: " .. #body .. "\r\n" }
  if rule.retry_after then head[#head + 1] = "Retry-After: " .. rule.retry_after .. "\r\n" end
  head[#head + 1] = "\r\n"
  sock:send(table.concat(head) .. body)
  ngx.sleep(STRAY_GAP)
  sock:send(STRAY) -- fails when the client closed the connection: as it should
  ngx.sleep(STRAY_HOLD)
  return true, ngx.exit(ngx.OK)
end

-- Applies a consumed rule. Returns true when the response has been produced.
local function serve_fault(rule)
  dict:incr("st:faults_served", 1, 0)
  if rule.status == 429 then dict:incr("st:status_429", 1, 0) end
  if rule.delay and rule.delay > 0 then ngx.sleep(rule.delay) end
  if not (rule.close or rule.status) then return false end
  -- read the body first so the client has finished sending when we answer
  ngx.req.read_body()
  if rule.close then return true, ngx.exit(444) end
  local body = rule.body or envelope({ {
    code = "SandboxFault", message = "injected fault: HTTP " .. rule.status } })
  if rule.stray and serve_stray(rule, body) then return true end
  ngx.status = rule.status
  ngx.header["Content-Type"] = rule.content_type or "application/json"
  if rule.retry_after then ngx.header["Retry-After"] = rule.retry_after end
  ngx.print(body)
  return true, ngx.exit(ngx.HTTP_OK)
end

-- ------------------------------------------------------------------------
-- header checks shared by POST and DELETE

-- The name of the configured token that `token` is (whatever the channel), or nil.
local function token_id(token)
  return token and cfg.token_ids[token]
end

-- Site, then token, then channel. A token that is none of the configured
-- ones is 401 whatever the channel says (as with one token); a known token
-- with an unknown channel is 403; a known token of another channel is 401.
-- @return the request's channel (= the matching token's name) when all pass
local function check_headers()
  local var = ngx.var
  local site = var.http_site
  if site ~= cfg.site then
    return fail1(403, "SiteNotRecognized", site and ("site '" .. site .. "' is not recognized")
      or "site header is missing")
  end
  local token = var.http_sitetoken
  local channel = var.http_channel
  local expected = channel and cfg.tokens[channel]
  if token == nil or (expected ~= token and not (expected == nil and token_id(token))) then
    -- never echo the received value
    return fail1(401, "InvalidSiteToken", token and "siteToken is not valid for this site and channel"
      or "siteToken header is missing")
  end
  if expected == nil then
    return fail1(403, "ChannelNotRecognized", channel and ("channel '" .. channel .. "' is not recognized")
      or "channel header is missing")
  end
  return channel
end

-- ------------------------------------------------------------------------
-- body validation (the sandbox's own rules, spec §3; not the client's C validator)

local function is_num(v) return type(v) == "number" end

local function is_int(v) return type(v) == "number" and v == math.floor(v) end

local function valid_date(s)
  if type(s) ~= "string" then return false end
  local y, mo, d, h, mi, se = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d) GMT$")
  if not y then return false end
  mo, d, h, mi, se = tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(se)
  return mo >= 1 and mo <= 12 and d >= 1 and d <= 31 and h <= 23 and mi <= 59 and se <= 60
end

local function validate(doc)
  local order = doc.order
  if type(order) ~= "table" then
    return { { code = "MalformedJson",
      message = "Json Parsing exception: mandatory element 'order' is missing or not an object" } }
  end
  local errs = {}
  local function add(code, message) errs[#errs + 1] = { code = code, message = message } end
  if type(order.refCode) ~= "string" or order.refCode == "" then
    add("MissingOrMalformedOrderNo", "order.refCode must be a non-empty string")
  end
  if not valid_date(order.orderDate) then
    add("MissingOrMalformedOrderDate", "order.orderDate must look like 2016-05-16T14:25:00 GMT")
  end
  if type(order.currency) ~= "string" or not order.currency:match("^%u%u%u$") then
    add("MissingOrMalformedCurrency", "order.currency must be a 3-letter upper-case ISO 4217 code")
  end
  if not is_num(order.total) then
    add("MissingOrMalformedTotal", "order.total must be a number")
  end
  if order.subTotal ~= nil and not is_num(order.subTotal) then
    add("MissingOrMalformedSubtotal", "order.subTotal must be a number")
  end
  if order.shipping ~= nil and not is_num(order.shipping) then
    add("MissingOrMalformedShipping", "order.shipping must be a number")
  end
  local items = order.items
  if type(items) ~= "table" or #items == 0 then
    add("MissingOrMalformedProduct", "order.items must be a non-empty array")
  else
    for i = 1, #items do
      local it, p = items[i], "order.items[" .. (i - 1) .. "]"
      if type(it) ~= "table" then
        add("MissingOrMalformedProduct", p .. " must be an object")
      else
        if type(it.refCode) ~= "string" or it.refCode == "" then
          add("MissingOrMalformedProduct", p .. ".refCode must be a non-empty string")
        end
        if not is_int(it.qty) or it.qty < 1 then
          add("MissingOrMalformedProduct", p .. ".qty must be an integer >= 1")
        end
        if not is_num(it.price) then
          add("MissingOrMalformedProduct", p .. ".price must be a number")
        end
      end
    end
  end
  if #errs > 0 then return errs end
  return nil
end

local function is_json_type(ct)
  if not ct then return false end
  ct = ct:lower()
  return ct == "application/json" or ct:match("^application/json%s*;") ~= nil
end

local function remember_last(body)
  local token = ngx.var.http_sitetoken
  local h = {}
  for k, v in pairs(ngx.req.get_headers(0, true)) do
    if type(k) == "string" and k:lower() == "sitetoken" then v = "[REDACTED]" end
    h[k] = v
  end
  local raw
  local ok, rh = pcall(ngx.req.raw_header, true) -- fails on HTTP/2
  if ok and type(rh) == "string" then
    -- blank the token's value, keep everything else byte for byte
    raw = rh:gsub("([\r\n][Ss][Ii][Tt][Ee][Tt][Oo][Kk][Ee][Nn]:[ \t]*)[^\r\n]*", "%1[REDACTED]")
  end
  dict:set("last", cjson.encode({
    method = ngx.req.get_method(),
    uri = ngx.var.request_uri,
    http_version = ngx.req.http_version(),
    headers = h,
    raw_header = raw,
    token_ok = token ~= nil and token == cfg.tokens[ngx.var.http_channel or ""],
    token_id = token_id(token),
    body = body or "",
    received_at = ngx.now(),
  }))
end

-- ------------------------------------------------------------------------
-- public entry points (one per nginx location)

--- Loads the configuration written by the launcher (init_by_lua, master process).
-- @param path absolute path of `DIR/conf/config.lua`
function M.configure(path)
  local c = assert(loadfile(path, "t"))() -- our own file (0600): source text only, never bytecode
  assert(type(c) == "table" and c.dir and c.site and type(c.tokens) == "table", "bad sandbox config " .. path)
  c.token_ids = {}
  for name, token in pairs(c.tokens) do c.token_ids[token] = name end
  cfg = c
  dict = ngx.shared.oo_sandbox
  assert(dict, "lua_shared_dict oo_sandbox is missing")
  -- the start values; POST /_sandbox/settings changes them (a reload starts over)
  assert(store_settings({ delay_ms = c.delay_ms or 0, max_concurrent = c.max_concurrent or 0,
    retry_after = c.retry_after or 1 }))
end

local CLOSE_FDS = [[for f in /proc/$$/fd/*; do f=${f##*/}; ]]
  .. [[case $f in 0|1|2) ;; *) eval "exec $f>&-" ;; esac; done; exec "$@"]]

local function owner_alive(pid)
  if ffi.C.kill(pid, 0) == 0 then
    local f = io.open("/proc/" .. pid .. "/stat", "r")
    if not f then return true end
    local st = f:read("*l") or ""
    f:close()
    return not st:match("^%d+ %b() Z") -- a zombie owner is gone too
  end
  return ffi.errno() ~= 3 -- ESRCH
end

--- Per-worker start: umask 077 (the records a worker creates are private),
-- and the owner watchdog (test runs) in worker 0.
function M.init_worker()
  dict = ngx.shared.oo_sandbox
  pcall(ffi.cdef, "unsigned int umask(unsigned int mask);")
  ffi.C.umask(tonumber("077", 8)) -- nginx's daemon() left it at 0: files would be 0666
  local owner = tonumber(cfg.owner_pid)
  if not owner or ngx.worker.id() ~= 0 then return end
  pcall(ffi.cdef, "int kill(int pid, int sig); int getppid(void); int getpid(void);")
  local master = ffi.C.getppid() -- our master, remembered while it is surely alive
  local function check(premature)
    if premature then return end
    if ffi.C.getppid() ~= master or master <= 1 then
      -- the master is gone and we were re-parented (maybe to PID 1): never
      -- signal our new parent; quit this orphaned worker instead
      ffi.C.kill(ffi.C.getpid(), 3)
      return
    end
    if owner_alive(owner) then return end
    if cfg.cleanup_dir and cfg.dir:match("oo%-sandbox") then
      -- remove the private temp dir once nginx has gone; the helper shell must not
      -- inherit the worker's sockets (bash closes them when it is there)
      local function q(x) return "'" .. x:gsub("'", "'\\''") .. "'" end
      local inner = "while kill -0 " .. master .. " 2>/dev/null; do sleep 0.2; done; rm -rf " .. q(cfg.dir)
      os.execute("{ command -v bash >/dev/null && exec bash -c " .. q(CLOSE_FDS) .. " x sh -c " .. q(inner)
        .. " || exec sh -c " .. q(inner) .. "; } </dev/null >/dev/null 2>&1 &")
    end
    ffi.C.kill(master, 3) -- SIGQUIT: graceful shutdown
  end
  ngx.timer.every(1, check)
end

--- POST /tracker/smart-api/orders/offline
function M.order()
  count_request()
  if not admit() then return end
  local method = ngx.req.get_method()
  local rule = take_fault(method)
  if rule and serve_fault(rule) then return end
  if method ~= "POST" then
    return fail1(405, "MethodNotAllowed", method .. " is not allowed here; use " .. ENDPOINT_HINT,
      { Allow = "POST" })
  end
  local record = cfg.record
  local body
  if record then
    body = read_body()
    remember_last(body)
  end
  local channel = check_headers()
  if not channel then return end
  if not is_json_type(ngx.var.content_type) then
    return fail1(415, "UnsupportedMediaType", "Content-Type must be application/json")
  end
  body = body or read_body()
  if not body:find("^%s*{") then
    return fail1(400, "MalformedJson", body:find("^%s*$")
      and "Json Parsing exception: No content to map due to end-of-input"
      or "Json Parsing exception: the body must be a JSON object")
  end
  local doc, derr = cjson.decode(body)
  if type(doc) ~= "table" then
    return fail1(400, "MalformedJson", "Json Parsing exception: " .. tostring(derr or "not an object"))
  end
  local errs = validate(doc)
  if errs then return fail(400, errs) end
  if record then
    local line = cjson.encode({
      received_at = ngx.now(),
      site = cfg.site,
      channel = channel,
      token_id = channel,
      refCode = doc.order.refCode,
      token_ok = true,
      headers = safe_headers(),
      body = body,
    })
    local ok, err = append_line(ORDERS, line)
    if not ok then
      ngx.log(ngx.ERR, "sandbox: cannot record order: ", err)
      return fail1(500, "SandboxError", "cannot record the order")
    end
  end
  dict:incr("st:accepted", 1, 0)
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.print(OK_BODY)
end

-- Is refCode among the recorded orders? Scans the NDJSON file (survives restarts).
local function order_recorded(ref)
  local data = read_file_locked(ORDERS) or ""
  local needle = cjson.encode(ref)
  local from = 1
  while true do
    local a = data:find(needle, from, true)
    if not a then return false end
    local ls = a
    while ls > 1 and data:byte(ls - 1) ~= 10 do ls = ls - 1 end
    local le = data:find("\n", a, true) or (#data + 1)
    local rec = cjson.decode(data:sub(ls, le - 1))
    if type(rec) == "table" and rec.refCode == ref then return true end
    from = le + 1
  end
end

--- DELETE /smart-api/orders/offline/<ref> and /tracker/smart-api/orders/offline/<ref>
function M.cancel()
  count_request()
  if not admit() then return end
  local method = ngx.req.get_method()
  local rule = take_fault(method)
  if rule and serve_fault(rule) then return end
  if method ~= "DELETE" then
    return fail1(405, "MethodNotAllowed", method .. " is not allowed here; cancel with DELETE",
      { Allow = "DELETE" })
  end
  if cfg.record then remember_last(read_body()) end
  local channel = check_headers()
  if not channel then return end
  -- the raw path keeps %2F inside the segment (ngx.var.uri would have decoded it)
  local path = ngx.var.request_uri:gsub("%?.*$", "")
  local form, seg = "documented", path:match("^/smart%-api/orders/offline/(.*)$")
  if not seg then
    form, seg = "tracker", path:match("^/tracker/smart%-api/orders/offline/(.*)$")
  end
  if not seg or seg == "" or seg:find("/", 1, true) then
    return fail1(404, "OrderNotFound", "the cancel path must end with one order number segment")
  end
  local ref = pct_decode(seg)
  if cfg.record then
    if not order_recorded(ref) then
      return fail1(404, "OrderNotFound", "no order with refCode " .. cjson.encode(ref))
    end
    local ok, err = append_line(CANCELS, cjson.encode({
      received_at = ngx.now(),
      site = cfg.site,
      channel = channel,
      token_id = channel,
      refCode = ref,
      path = form,
      uri = ngx.var.request_uri,
      token_ok = true,
    }))
    if not ok then
      ngx.log(ngx.ERR, "sandbox: cannot record cancellation: ", err)
      return fail1(500, "SandboxError", "cannot record the cancellation")
    end
  end
  dict:incr("st:cancelled", 1, 0)
  return json_response(200, OK_BODY)
end

--- Log phase of the endpoint locations: the request is no longer in progress.
function M.log()
  -- every endpoint request was admitted first thing (count_request, admit)
  local n = dict:incr("inflight", -1, 0)
  if n and n < 0 then dict:set("inflight", 0) end
  if holding > 0 and ngx.ctx.oo_conc then
    holding = holding - 1
    dict:incr("conc", -1, 0)
  end
end

local function ndjson_filtered(name)
  local data, err = read_file_locked(name)
  if not data then return json_response(500, envelope({ { code = "SandboxError", message = err } })) end
  local args = ngx.req.get_uri_args()
  local since = tonumber(args.since) or 0
  local want = type(args.refCode) == "string" and args.refCode or nil
  local out, n = {}, 0
  for line in data:gmatch("[^\n]+") do
    n = n + 1
    if n > since then
      if want then
        local rec = cjson.decode(line)
        if type(rec) == "table" and rec.refCode == want then out[#out + 1] = line end
      else
        out[#out + 1] = line
      end
    end
  end
  ngx.status = 200
  ngx.header["Content-Type"] = "application/x-ndjson"
  ngx.header["X-Sandbox-Total"] = tostring(n)
  if #out > 0 then ngx.print(table.concat(out, "\n"), "\n") end
  return ngx.exit(ngx.HTTP_OK)
end

local function control_fail(status, message)
  return json_response(status, envelope({ { code = "BadRequest", message = message } }))
end

--- /_sandbox/* control endpoints
function M.control()
  local uri, method = ngx.var.uri, ngx.req.get_method()
  if uri == "/_sandbox/health" then
    return json_response(200, { status = "OK", pid = ngx.worker.pid(), record = cfg.record })
  elseif uri == "/_sandbox/orders" or uri == "/_sandbox/cancellations" then
    local name = uri == "/_sandbox/orders" and ORDERS or CANCELS
    if method == "GET" then return ndjson_filtered(name) end
    if method == "DELETE" then
      local ok, err = truncate_files(name == ORDERS and { ORDERS, CANCELS } or { CANCELS })
      if not ok then return control_fail(500, err) end
      return json_response(200, OK_BODY)
    end
  elseif uri == "/_sandbox/faults" then
    if method == "GET" then
      ngx.status = 200
      ngx.header["Content-Type"] = "application/json"
      ngx.print(dict:get("faults") or "[]")
      return ngx.exit(ngx.HTTP_OK)
    elseif method == "POST" then
      local rule, err = parse_fault(read_body())
      if not rule then return control_fail(400, err) end
      local key, lerr = lock("faults")
      if not key then return control_fail(500, lerr) end
      local q = load_queue()
      q[#q + 1] = rule
      store_queue(q)
      unlock(key)
      return json_response(200, { status = "OK", queued = #q })
    elseif method == "DELETE" then
      local key = lock("faults")
      store_queue({})
      if key then unlock(key) end
      return json_response(200, OK_BODY)
    end
  elseif uri == "/_sandbox/stats" then
    if method == "GET" then return json_response(200, stats()) end
    if method == "DELETE" then
      reset_stats()
      return json_response(200, OK_BODY)
    end
  elseif uri == "/_sandbox/settings" then
    if method == "GET" then return json_response(200, settings()) end
    if method == "POST" then
      local ok, err = store_settings(cjson.decode(read_body()))
      if not ok then return control_fail(400, err) end
      return json_response(200, settings())
    end
  elseif uri == "/_sandbox/last" then
    if method == "GET" then
      local last = dict:get("last")
      if not last then return control_fail(404, "no request recorded yet") end
      return json_response(200, last)
    end
  elseif uri == "/_sandbox/reset" then
    if method == "POST" or method == "DELETE" then
      local ok, err = truncate_files({ ORDERS, CANCELS })
      if not ok then return control_fail(500, err) end
      local key = lock("faults")
      store_queue({})
      if key then unlock(key) end
      reset_stats()
      dict:delete("last")
      return json_response(200, OK_BODY)
    end
  else
    return control_fail(404, "unknown control endpoint " .. uri)
  end
  return control_fail(405, method .. " is not allowed on " .. uri)
end

--- Anything else.
function M.not_found()
  return json_response(404, envelope({ { code = "NotFound",
    message = "no such endpoint; orders go to " .. ENDPOINT_HINT } }))
end

return M
