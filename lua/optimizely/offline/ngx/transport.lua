--- HTTP/1.1 over nginx cosockets: the transport the client uses inside
-- OpenResty / ngx_http_lua_module, where libcurl would block the worker.
--
-- `T:request(method, url, headers, body)` answers exactly like the libcurl
-- handle: `status, body, info` (info: `retry_after`, `content_type`,
-- `reused`, `http_version`, `total_time`) or `nil, kind, message` with kind
-- `network` | `timeout` | `tls`.
--
-- TLS: the certificate is always verified (`ssl_verify = true`) against the
-- CAs of nginx's `lua_ssl_trusted_certificate`; host names are checked
-- against the certificate too. An IP-literal URL sends no SNI (RFC 6066) and
-- gets the chain check only.
--
-- Connections are kept alive in the worker's cosocket pool (one pool per
-- host:port:sni), TLS sessions are resumed on new connections.
--
-- Cosockets exist in the rewrite, access, content and timer phases (and
-- ssl_*); elsewhere (log, header/body filters, init) `request` raises:
-- use the queue there.
-- @module optimizely.offline.ngx.transport
local ngx = ngx
if type(ngx) ~= "table" or not ngx.socket then
  error("optimizely.offline.ngx needs ngx_http_lua_module (OpenResty or nginx + lua module)", 2)
end

local tcp, now, update_time, get_phase = ngx.socket.tcp, ngx.now, ngx.update_time, ngx.get_phase
local concat, tonumber, lower, floor, gmatch = table.concat, tonumber, string.lower, math.floor, string.gmatch

local M = {}

--- Response bodies above this many bytes are refused (as libcurl's max_body).
M.MAX_BODY = 1024 * 1024

local MAX_HEADER_LINES = 200
local MAX_HEAD = 65536

local COSOCKET_PHASES = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}
M.COSOCKET_PHASES = COSOCKET_PHASES

--- Client options that only libcurl understands: the nginx client and queue
-- refuse them rather than silently ignore a TLS setting.
M.CURL_ONLY = {
  ca_file = "set lua_ssl_trusted_certificate in nginx.conf instead",
  ca_path = "set lua_ssl_trusted_certificate in nginx.conf instead",
  proxy = "the cosocket transport does not go through proxies",
  verbose = "use nginx's error_log",
}

local KNOWN = { timeout = true, connect_timeout = true, keepalive_timeout = true,
  pool_size = true, max_body = true, user_agent = true }

local Transport = {}
Transport.__index = Transport

local function opt_number(opts, name, dflt, lo, hi)
  local v = opts[name]
  if v == nil then return dflt end
  if type(v) ~= "number" or v ~= v or v < lo or v > hi then
    error("optimizely.offline.ngx.transport: opts." .. name .. " must be a number in "
      .. lo .. ".." .. hi .. " (got " .. tostring(v) .. ")", 3)
  end
  return v
end

local function default_user_agent()
  local ok, core = pcall(require, "optimizely.offline.core")
  local ver = ok and core.VERSION or "?"
  local lua = (type(jit) == "table" and jit.version) or _VERSION
  return "optimizely-offline/" .. ver .. " ngx_lua/" .. tostring(ngx.config and ngx.config.ngx_lua_version)
    .. " " .. lua
end

--- Create a cosocket transport.
-- @param opts `{timeout = 10, connect_timeout = 5, keepalive_timeout = 60,
--   pool_size = 16, max_body = 1 MiB, user_agent = ...}` (seconds; all optional).
--   `timeout` bounds the whole exchange, connect included (like libcurl's
--   CURLOPT_TIMEOUT); `connect_timeout` the TCP connect within it.
-- @return transport object with `:request()` and `:close()`
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("optimizely.offline.ngx.transport: opts must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not KNOWN[k] then
      error("optimizely.offline.ngx.transport: unknown option opts." .. tostring(k), 2)
    end
  end
  local ua = opts.user_agent
  if ua ~= nil and (type(ua) ~= "string" or ua:find("[%c]")) then
    error("optimizely.offline.ngx.transport: opts.user_agent must be a string without control characters", 2)
  end
  local self = {
    timeout = opt_number(opts, "timeout", 10, 0.001, 86400),
    connect_timeout = opt_number(opts, "connect_timeout", 5, 0.001, 86400),
    keepalive_ms = floor(opt_number(opts, "keepalive_timeout", 60, 0, 86400) * 1000),
    pool_size = floor(opt_number(opts, "pool_size", 16, 1, 10000)),
    max_body = floor(opt_number(opts, "max_body", M.MAX_BODY, 1, 1024 ^ 3)),
    user_agent_line = "User-Agent: " .. (ua or default_user_agent()),
    sessions = {}, -- pool name -> TLS session of the last handshake
    blocks = setmetatable({}, { __mode = "k" }), -- headers table -> header block
    urls = {}, nurls = 0,
  }
  return setmetatable(self, Transport)
end

---------------------------------------------------------------------------
-- URLs

local function parse_url(url)
  local scheme, authority, path = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then return nil, "not an absolute URL" end
  scheme = lower(scheme)
  if scheme ~= "https" and scheme ~= "http" then return nil, "unsupported scheme " .. scheme end
  local host, port = authority:match("^(%[[%x:%.]+%]):?(%d*)$")
  local literal = host ~= nil
  if not host then
    host, port = authority:match("^([%w%.%-]+):?(%d*)$")
    if not host then return nil, "bad host in URL" end
    literal = host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil
  end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if path == "" then path = "/" end
  path = path:gsub("#.*$", "")
  local tls = scheme == "https"
  -- no SNI for IP literals (RFC 6066 §3)
  local sni = tls and not literal and host or nil
  return {
    tls = tls, host = host, port = port, path = path, authority = authority, sni = sni,
    pool = "optimizely-offline:" .. host .. ":" .. port .. ":" .. (sni or (tls and "-" or "plain")),
  }
end

function Transport:url(url)
  local u = self.urls[url]
  if u then return u end
  local err
  u, err = parse_url(url)
  if not u then return nil, err end
  if self.nurls >= 64 then self.urls, self.nurls = {}, 0 end -- cancel URLs vary: stay bounded
  self.urls[url] = u
  self.nurls = self.nurls + 1
  return u
end

---------------------------------------------------------------------------
-- One exchange

-- Milliseconds to the deadline. ngx.now() is the event loop's cached clock,
-- refreshed whenever a socket operation yields: no syscall per read.
local function ms_left(deadline)
  return floor((deadline - now()) * 1000)
end

local function io_kind(err)
  return err == "timeout" and "timeout" or "network"
end

-- Reads one CRLF line under the deadline: line or nil, kind, message.
local function read_line(sock, deadline, what)
  local left = ms_left(deadline)
  if left <= 0 then return nil, "timeout", "timed out reading the " .. what end
  sock:settimeout(left)
  local line, err = sock:receive("*l")
  if not line then
    if err == "timeout" then return nil, "timeout", "timed out reading the " .. what end
    return nil, "network", "connection " .. tostring(err) .. " while reading the " .. what
  end
  return line
end

local function read_bytes(sock, n, deadline)
  local left = ms_left(deadline)
  if left <= 0 then return nil, "timeout", "timed out reading the response body" end
  sock:settimeout(left)
  local data, err = sock:receive(n)
  if not data then
    if err == "timeout" then return nil, "timeout", "timed out reading the response body" end
    return nil, "network", "connection " .. tostring(err) .. " while reading the response body"
  end
  return data
end

local function too_big(self)
  return nil, "network", "response body larger than " .. self.max_body .. " bytes"
end

-- Body framed by chunked transfer coding.
local function read_chunked(self, sock, deadline)
  local parts, total = {}, 0
  while true do
    local line, kind, msg = read_line(sock, deadline, "chunk size")
    if not line then return nil, kind, msg end
    local hex = line:match("^%s*(%x+)")
    local size = hex and #hex <= 8 and tonumber(hex, 16)
    if not size then return nil, "network", "malformed chunk size line" end
    if size == 0 then
      for _ = 1, MAX_HEADER_LINES do -- trailers, up to the blank line
        line, kind, msg = read_line(sock, deadline, "chunked trailer")
        if not line then return nil, kind, msg end
        if line == "" then return concat(parts) end
      end
      return nil, "network", "too many trailer lines"
    end
    total = total + size
    if total > self.max_body then return too_big(self) end
    local data
    data, kind, msg = read_bytes(sock, size, deadline)
    if not data then return nil, kind, msg end
    parts[#parts + 1] = data
    line, kind, msg = read_line(sock, deadline, "chunk end")
    if not line then return nil, kind, msg end
    if line ~= "" then return nil, "network", "malformed chunk (no CRLF after the data)" end
  end
end

-- Body delimited by the connection's end.
local function read_to_close(self, sock, deadline)
  local parts, total = {}, 0
  while true do
    local left = ms_left(deadline)
    if left <= 0 then return nil, "timeout", "timed out reading the response body" end
    sock:settimeout(left)
    local data, err = sock:receiveany(65536)
    if not data then
      if err == "closed" then return concat(parts) end
      if err == "timeout" then return nil, "timeout", "timed out reading the response body" end
      return nil, "network", "connection " .. tostring(err) .. " while reading the response body"
    end
    total = total + #data
    if total > self.max_body then return too_big(self) end
    parts[#parts + 1] = data
  end
end

-- The response head (status line + headers) up to the blank line, in one
-- read: nil, kind, message, early (nothing at all came back).
local function read_head_block(sock, deadline)
  local left = ms_left(deadline)
  if left <= 0 then return nil, "timeout", "timed out waiting for the response" end
  sock:settimeout(left)
  local reader = sock:receiveuntil("\r\n\r\n")
  local parts, total = {}, 0
  while true do
    local data, err, partial = reader(16384)
    if not data then
      if not err then return concat(parts) end
      local early = total == 0 and (partial == nil or partial == "")
      if err == "timeout" then return nil, "timeout", "timed out reading the response head", early end
      return nil, "network", "connection " .. tostring(err) .. " while reading the response head", early
    end
    total = total + #data
    if total > MAX_HEAD then return nil, "network", "response head larger than " .. MAX_HEAD .. " bytes" end
    parts[#parts + 1] = data
  end
end

-- Status line + headers (skipping 1xx interim responses).
-- @return status, minor, headers{lower-case name -> value} | nil, kind, msg, early
local function read_head(sock, deadline)
  for i = 1, 5 do
    local head, kind, msg, early = read_head_block(sock, deadline)
    if not head then return nil, kind, msg, early and i == 1 end
    local major, minor, status = head:match("^HTTP/(%d)%.(%d) (%d%d%d)")
    if major ~= "1" then return nil, "network", "malformed HTTP status line" end
    status = tonumber(status)
    -- one pass over "name: value" lines (a line without a colon is ignored)
    local h = {}
    for name, value in gmatch(head, "\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
      name = lower(name)
      local old = h[name]
      h[name] = old and (old .. ", " .. value) or value
    end
    if status >= 200 or status == 101 then return status, tonumber(minor), h end
  end
  return nil, "network", "too many interim (1xx) responses"
end

-- Connect (pooled) and, for https on a fresh connection, handshake.
-- @return sock, reused | nil, kind, message
function Transport:connect(u, deadline)
  local sock = tcp()
  local cms = floor(self.connect_timeout * 1000)
  local left = ms_left(deadline)
  sock:settimeouts(cms < left and cms or left, left, left)
  local ok, err = sock:connect(u.host, u.port, { pool = u.pool, pool_size = self.pool_size })
  if not ok then
    return nil, io_kind(err), "connect to " .. u.host .. ":" .. u.port .. " failed: " .. tostring(err)
  end
  local reused = sock:getreusedtimes() or 0
  if u.tls and reused == 0 then
    left = ms_left(deadline)
    if left <= 0 then
      sock:close()
      return nil, "timeout", "timed out before the TLS handshake"
    end
    sock:settimeout(left)
    local sess, herr = sock:sslhandshake(self.sessions[u.pool], u.sni, true)
    if not sess then
      sock:close()
      -- a failed resumption must not poison the next attempt
      self.sessions[u.pool] = nil
      if herr == "timeout" then return nil, "timeout", "TLS handshake with " .. u.host .. " timed out" end
      return nil, "tls", "TLS handshake with " .. u.host .. ":" .. u.port .. " failed: " .. tostring(herr)
    end
    self.sessions[u.pool] = sess
  end
  return sock, reused > 0
end

local NO_BODY_STATUS = { [204] = true, [304] = true }

-- Send the request and read the whole response on a connected socket.
-- @return status, body, info, keepalive | nil, kind, message, stale
function Transport:exchange(sock, u, req, method, deadline)
  local left = ms_left(deadline)
  if left <= 0 then return nil, "timeout", "timed out before sending the request" end
  sock:settimeout(left)
  local _, err = sock:send(req)
  if err then
    if err == "timeout" then return nil, "timeout", "timed out sending the request" end
    return nil, "network", "connection " .. tostring(err) .. " while sending the request", true
  end
  local status, minor, h, early = read_head(sock, deadline)
  if not status then return nil, minor, h, early and minor == "network" end
  local body, kind, msg
  local keepalive = true
  local conn = h["connection"] and lower(h["connection"]) or ""
  if conn:find("close", 1, true) or (minor == 0 and not conn:find("keep-alive", 1, true)) then
    keepalive = false
  end
  local te = h["transfer-encoding"]
  if method == "HEAD" or NO_BODY_STATUS[status] then
    body = ""
  elseif te and lower(te):find("chunked", 1, true) then
    body, kind, msg = read_chunked(self, sock, deadline)
  elseif h["content-length"] then
    local n = tonumber(h["content-length"]:match("^(%d+)%s*$"))
    if not n then return nil, "network", "malformed Content-Length" end
    if n > self.max_body then return too_big(self) end
    if n == 0 then body = "" else body, kind, msg = read_bytes(sock, n, deadline) end
  else
    keepalive = false
    body, kind, msg = read_to_close(self, sock, deadline)
  end
  if not body then return nil, kind, msg end
  return status, body, {
    retry_after = h["retry-after"],
    content_type = h["content-type"],
    http_version = "1." .. minor,
  }, keepalive
end

-- The header lines as one string (plus a User-Agent unless given), built
-- and checked once per headers table: the client passes the same table on
-- every request. Tables are treated as immutable once used.
local function header_block(self, headers)
  local block = self.blocks[headers]
  if block then return block end
  local parts, has_ua = {}, false
  for i = 1, #headers do
    local line = headers[i]
    if type(line) ~= "string" or line:find("[\r\n]") or not line:find(":", 1, true) then
      error("optimizely.offline.ngx.transport: header " .. i .. " must be one \"Name: value\" line", 4)
    end
    if lower(line:sub(1, 11)) == "user-agent:" then has_ua = true end
    parts[#parts + 1] = line
  end
  if not has_ua then parts[#parts + 1] = self.user_agent_line end
  parts[#parts + 1] = ""
  block = concat(parts, "\r\n")
  self.blocks[headers] = block
  return block
end

local function build_request(self, method, u, headers, body)
  local req = { method, " ", u.path, " HTTP/1.1\r\nHost: ", u.authority, "\r\n",
    header_block(self, headers), "", "Connection: keep-alive\r\n\r\n", body }
  if body then
    req[8] = "Content-Length: " .. #body .. "\r\n"
  elseif method == "POST" or method == "PUT" then
    req[8] = "Content-Length: 0\r\n"
  end
  return req
end

--- Make one HTTP request.
-- @param method "POST", "DELETE", ...
-- @param url absolute http(s) URL
-- @param headers array of "Name: value" lines
-- @param body request body string or nil
-- @return status, body, info  or  nil, kind, message
function Transport:request(method, url, headers, body)
  local phase = get_phase()
  if not COSOCKET_PHASES[phase] then
    error("optimizely.offline.ngx: cosockets are not available in the " .. tostring(phase)
      .. " phase; push to a queue (optimizely.offline.ngx.queue) instead", 2)
  end
  if type(method) ~= "string" or not method:match("^%u+$") then
    error("optimizely.offline.ngx.transport: bad method " .. tostring(method), 2)
  end
  if body ~= nil and type(body) ~= "string" then
    error("optimizely.offline.ngx.transport: body must be a string or nil", 2)
  end
  local u, uerr = self:url(url)
  if not u then return nil, "network", "cannot use URL: " .. uerr end
  local req = build_request(self, method, u, headers, body)
  update_time()
  local started = now()
  local deadline = started + self.timeout -- total, connect included (as libcurl's)
  -- A pooled connection the server closed while idle fails on first use:
  -- retry once on a fresh one (the server never saw that request).
  for _ = 1, 2 do
    local sock, reused, msg = self:connect(u, deadline)
    if not sock then return nil, reused, msg end
    local status, rbody, info, flag = self:exchange(sock, u, req, method, deadline)
    if status then
      if flag then -- keep-alive
        sock:setkeepalive(self.keepalive_ms, self.pool_size)
      else
        sock:close()
      end
      info.reused = reused
      info.total_time = now() - started
      return status, rbody, info
    end
    sock:close()
    -- flag: the request died before any byte of the answer (a stale connection)
    if not (reused and flag) then return nil, rbody, info end
  end
  return nil, "network", "connection closed by the server"
end

--- Nothing to free: connections live in nginx's per-worker pool.
function Transport:close() end

function Transport:__tostring()
  return "optimizely.offline.ngx.transport"
end

M.Transport = Transport
return M
