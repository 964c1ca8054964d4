--- HTTP/1.1 over nginx cosockets: the transport the client uses inside
-- OpenResty / ngx_http_lua_module, where libcurl would block the worker.
--
-- `T:request(method, url, headers, body)` answers exactly like the libcurl
-- handle: `status, body, info` (info: `retry_after`, `content_type`,
-- `reused`, `http_version`, `total_time`) or `nil, kind, message` with kind
-- `network` | `timeout` | `tls`.
--
-- **Time.** `timeout` is a deadline for the whole exchange — connect, TLS
-- handshake, sending, the response head and the body — like libcurl's
-- `CURLOPT_TIMEOUT`: a server trickling one byte a second cannot keep a
-- request alive past it. Every read takes what has arrived (`receiveany`)
-- under the time left, so no single read can outlast the deadline. Name
-- resolution is nginx's (`resolver`, `resolver_timeout`) and not covered:
-- keep `resolver_timeout` below `timeout`.
--
-- **Size.** Every read is bounded: the response head (status line and
-- headers) at `MAX_HEAD` (64 KiB) and `MAX_HEADER_LINES` (256) lines, a chunk-size
-- line or a trailer line at `MAX_LINE` (8 KiB), all trailers together at
-- `MAX_HEAD`, the body at `max_body` (1 MiB, as the libcurl path). Past a cap
-- the request fails with kind `network` and a message naming the cap; the
-- connection is closed, never returned to the pool.
--
-- **TLS.** The certificate is always verified (`ssl_verify = true`) against
-- the CAs of nginx's `lua_ssl_trusted_certificate`. A host name is sent as
-- SNI and checked against the certificate by nginx. An IP-literal URL sends
-- no SNI (RFC 6066) and its address is checked against the certificate's IP
-- subject-alternative names here, through OpenSSL (`X509_check_ip_asc` on the
-- handshake's session) — like libcurl; where that cannot be done (an nginx
-- whose lua module gives no session object, or OpenSSL symbols not visible
-- to LuaJIT's FFI) an IP-literal `https` URL is refused with kind `tls`
-- rather than accepted unchecked. A handshake that negotiated less than
-- TLS 1.2 is refused (set `lua_ssl_protocols TLSv1.2 TLSv1.3;` too).
-- Proxies: cosockets connect directly; `https_proxy` and friends are not
-- honoured on this path (libcurl's path honours them).
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

local opts_schema = require("optimizely.offline.opts").schema

local tcp, now, update_time, get_phase = ngx.socket.tcp, ngx.now, ngx.update_time, ngx.get_phase
local concat, tonumber, lower, floor, gmatch = table.concat, tonumber, string.lower, math.floor, string.gmatch
local find, sub, match, pcall, type = string.find, string.sub, string.match, pcall, type

local M = {}

--- Response bodies above this many bytes are refused (as libcurl's max_body).
M.MAX_BODY = 1024 * 1024

--- The response head (status line + header lines, each 1xx interim head
-- counted on its own) may not exceed this many bytes; nor may the trailers.
M.MAX_HEAD = 64 * 1024

--- Header lines in one response head, at most.
M.MAX_HEADER_LINES = 256

--- A chunk-size line, a chunk's closing line or a trailer line may not exceed
-- this many bytes.
M.MAX_LINE = 8 * 1024

local MAX_HEAD, MAX_LINE, MAX_HEADER_LINES = M.MAX_HEAD, M.MAX_LINE, M.MAX_HEADER_LINES
-- One receiveany() at most; ngx_lua's own buffer (lua_socket_buffer_size)
-- may return less.
local READ_SIZE = 16 * 1024
-- Requests above this size go out in pieces, the deadline checked between them.
local SEND_PIECE = 64 * 1024

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

--- A client config for the nginx path: the caller's, checked for what the
-- cosocket transport cannot honour (`CURL_ONLY` and `refuse`: raised,
-- naming `who`), with `transport` built from `topts` (or from
-- `config.transport` when that is a table of options), the client's
-- timeouts by default.
-- @param config the offline.client config
-- @param who the caller, for messages (e.g. "optimizely.offline.ngx.client: config")
-- @param topts transport options, or nil
-- @param refuse more keys to refuse, `{key = why}`, or nil
-- @param level as error's, from the caller
-- @return a new config table
function M.client_config(config, who, topts, refuse, level)
  level = (level or 1) + 1
  if type(config) ~= "table" then error(who .. " must be a table, got " .. type(config), level) end
  for _, list in ipairs({ M.CURL_ONLY, refuse or {} }) do
    for k, why in pairs(list) do
      if config[k] ~= nil then error(who .. "." .. k .. " is not used under nginx: " .. why, level) end
    end
  end
  if config.http_version ~= nil and config.http_version ~= "1.1" then
    error(who .. ".http_version must be \"1.1\" under nginx", level)
  end
  local cfg = {}
  for k, v in pairs(config) do cfg[k] = v end
  -- a table without :request is a table of transport options
  if type(cfg.transport) == "table" and cfg.transport.request == nil then topts, cfg.transport = cfg.transport, nil end
  if cfg.transport == nil then
    local o = {}
    for k, v in pairs(topts or {}) do o[k] = v end
    o.timeout = o.timeout or cfg.timeout
    o.connect_timeout = o.connect_timeout or cfg.connect_timeout
    cfg.transport = M.new(o)
  end
  return cfg
end

local OPTIONS = opts_schema("optimizely.offline.ngx.transport", "opts", {
  timeout = { type = "number", min = 0.001, max = 86400, default = 10 },
  connect_timeout = { type = "number", min = 0.001, max = 86400, default = 5 },
  keepalive_timeout = { type = "number", min = 0, max = 86400, default = 60 },
  pool_size = { type = "integer", min = 1, max = 10000, default = 16 },
  max_body = { type = "integer", min = 1, max = 1024 ^ 3, default = M.MAX_BODY },
  user_agent = { type = "string", pattern = "^[^%c]*$", pattern_msg = "must not contain control characters" },
})

-- ------------------------------------------------------------------------
-- The peer certificate's IP address and the negotiated TLS version, through
-- OpenSSL on the session object lua-resty-core's sslhandshake returns (an
-- SSL_SESSION *). nil when this nginx cannot give them (see the module doc).

local ssl_check = (function()
  local ok, ffi = pcall(require, "ffi")
  if not ok then return nil end
  for _, decl in ipairs({
    "void *SSL_SESSION_get0_peer(void *s);",
    "int SSL_SESSION_get_protocol_version(const void *s);",
    "int X509_check_ip_asc(void *x, const char *address, unsigned int flags);",
  }) do
    pcall(ffi.cdef, decl) -- already declared (same signature) by another module: fine
  end
  local C = ffi.C
  local found = pcall(function()
    return C.SSL_SESSION_get0_peer and C.SSL_SESSION_get_protocol_version and C.X509_check_ip_asc
  end)
  if not found then return nil end
  local TLS1_2 = 0x0303
  -- @return true | nil, message
  return function(sess, ip)
    if type(sess) ~= "cdata" or sess == nil then
      -- a host name was checked by nginx; an address cannot be
      if ip then return nil, "no TLS session to check IP address " .. ip .. " against" end
      return true
    end
    local version = C.SSL_SESSION_get_protocol_version(sess)
    if version < TLS1_2 then
      return nil, ("the server negotiated TLS below 1.2 (0x%04x)"):format(version)
    end
    if ip then
      local cert = C.SSL_SESSION_get0_peer(sess)
      if cert == nil then return nil, "no peer certificate" end
      if C.X509_check_ip_asc(cert, ip, 0) ~= 1 then
        return nil, "the certificate is not valid for IP address " .. ip
          .. " (no matching IP subjectAltName)"
      end
    end
    return true
  end
end)()

--- Can this nginx check an IP-literal `https` URL's certificate (and the
-- TLS version)? When false, such URLs are refused with kind `tls`.
M.CAN_CHECK_IP = ssl_check ~= nil

local Transport = {}
Transport.__index = Transport

local function default_user_agent()
  local ok, core = pcall(require, "optimizely.offline.core")
  local ver = ok and core.VERSION or "?"
  local lua = (type(jit) == "table" and jit.version) or _VERSION
  return "optimizely-offline/" .. ver .. " ngx_lua/" .. tostring(ngx.config and ngx.config.ngx_lua_version)
    .. " " .. lua
end

--- Create a cosocket transport.
-- @tparam[opt] table opts all optional, seconds for times:
--
--  - `timeout` (10): deadline of the whole exchange (connect, TLS, send,
--    response head and body), like libcurl's CURLOPT_TIMEOUT;
--  - `connect_timeout` (5): the TCP connect within it;
--  - `keepalive_timeout` (60): idle time of a pooled connection;
--  - `pool_size` (16): connections kept per pool (host:port:sni) and worker;
--  - `max_body` (1 MiB): larger response bodies fail with kind `network`;
--  - `user_agent`: the User-Agent line (default names the library, ngx_lua, Lua).
--
-- Unknown options and bad values raise (programmer errors).
-- @return transport object with `:request()` and `:close()`
function M.new(opts)
  local o = OPTIONS:check(opts, 2)
  local self = {
    timeout = o.timeout,
    connect_timeout = o.connect_timeout,
    keepalive_ms = floor(o.keepalive_timeout * 1000),
    pool_size = o.pool_size,
    max_body = o.max_body,
    user_agent_line = "User-Agent: " .. (o.user_agent or default_user_agent()),
    sessions = {}, -- pool name -> TLS session of the last handshake
    blocks = setmetatable({}, { __mode = "k" }), -- headers table -> header block
    urls = {}, nurls = 0,
  }
  return setmetatable(self, Transport)
end

-- ------------------------------------------------------------------------
-- URLs

local function parse_url(url)
  local scheme, authority, path = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then return nil, "not an absolute URL" end
  scheme = lower(scheme)
  if scheme ~= "https" and scheme ~= "http" then return nil, "unsupported scheme " .. scheme end
  local host, port = authority:match("^(%[[%x:%.]+%]):?(%d*)$")
  local ip = host and host:sub(2, -2)
  if not host then
    host, port = authority:match("^([%w%.%-]+):?(%d*)$")
    if not host then return nil, "bad host in URL" end
    ip = host:match("^%d+%.%d+%.%d+%.%d+$")
  end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if path == "" then path = "/" end
  path = path:gsub("#.*$", "")
  local tls = scheme == "https"
  -- no SNI for IP literals (RFC 6066 §3); their certificate is checked by address
  local sni = tls and not ip and host or nil
  return {
    tls = tls, host = host, port = port, path = path, authority = authority, sni = sni,
    ip = tls and ip or nil,
    pool = "optimizely-offline:" .. host .. ":" .. port .. ":" .. (sni or (tls and "-" or "plain")),
  }
end

--- The parsed form of `url` (cached, at most 64 entries): `{tls, host, port,
-- path, authority, sni, ip, pool}`, or nil and a message.
-- @local
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

-- ------------------------------------------------------------------------
-- Bounded reads under one deadline
--
-- A reader is `{sock, deadline, buf, pos}`: bytes received but not consumed
-- are buf[pos..]. Every socket read is one receiveany() with the time left
-- as its timeout, so a read returns as soon as anything arrives and the
-- deadline holds however slowly bytes come.

-- Milliseconds to the deadline. ngx.now() is the event loop's cached clock,
-- refreshed whenever a socket operation yields: no syscall per read.
local function ms_left(deadline)
  return floor((deadline - now()) * 1000)
end

-- One socket read of at most `max` bytes: data | nil, kind, message, closed
local function recv(rd, max, what)
  local left = ms_left(rd.deadline)
  if left <= 0 then return nil, "timeout", "timed out reading the " .. what end
  local sock = rd.sock
  sock:settimeout(left)
  local data, err = sock:receiveany(max)
  if not data then
    if err == "timeout" then return nil, "timeout", "timed out reading the " .. what end
    return nil, "network", "connection " .. tostring(err) .. " while reading the " .. what, err == "closed"
  end
  return data
end

local function too_long(what, cap)
  return nil, "network", what .. " longer than " .. cap .. " bytes"
end

-- Bytes up to `pat` (consumed, not returned), at most `cap` bytes before it.
-- Linear however the bytes are split across reads: only the last #pat - 1
-- bytes are carried over, the rest is parked in `parts`.
-- @return data | nil, kind, message, nothing (true: not one byte came)
local function read_until(rd, pat, cap, what)
  local buf, pos = rd.buf, rd.pos
  local keep = #pat - 1
  local parts, parked = nil, 0
  while true do
    local s, e = find(buf, pat, pos, true)
    if s then
      if parked + (s - pos) > cap then return too_long(what, cap) end
      rd.buf, rd.pos = buf, e + 1
      local piece = sub(buf, pos, s - 1)
      if not parts then return piece end
      parts[#parts + 1] = piece
      return concat(parts)
    end
    local pending = #buf - pos + 1
    if parked + pending > cap + keep then return too_long(what, cap) end
    if pending > keep then -- park all but the tail the pattern may start in
      parts = parts or {}
      parts[#parts + 1] = sub(buf, pos, #buf - keep)
      parked = parked + pending - keep
      pos = #buf - keep + 1
    end
    local data, kind, msg = recv(rd, READ_SIZE, what)
    if not data then return nil, kind, msg, parked == 0 and pos > #buf end
    buf = sub(buf, pos) .. data
    pos = 1
  end
end

-- A line ending in LF (a CR before it dropped), at most MAX_LINE bytes.
local function read_line(rd, what)
  local line, kind, msg = read_until(rd, "\n", MAX_LINE, what)
  if not line then return nil, kind, msg end
  if sub(line, -1) == "\r" then line = sub(line, 1, -2) end
  return line
end

-- Exactly n bytes (n already checked against max_body).
local function read_bytes(rd, n, what)
  local buf, pos = rd.buf, rd.pos
  local avail = #buf - pos + 1
  if avail >= n then
    rd.pos = pos + n
    return sub(buf, pos, pos + n - 1)
  end
  local parts, have = { sub(buf, pos) }, avail
  rd.buf, rd.pos = "", 1
  while have < n do
    local want = n - have
    local data, kind, msg = recv(rd, want < READ_SIZE and want or READ_SIZE, what)
    if not data then return nil, kind, msg end
    parts[#parts + 1] = data
    have = have + #data
  end
  return concat(parts)
end

local function too_big(self)
  return nil, "network", "response body larger than " .. self.max_body .. " bytes"
end

-- Body framed by chunked transfer coding, trailers read and dropped.
local function read_chunked(self, rd)
  local parts, total = {}, 0
  while true do
    local line, kind, msg = read_line(rd, "chunk size line")
    if not line then return nil, kind, msg end
    local hex = match(line, "^%s*(%x+)")
    local size = hex and #hex <= 8 and tonumber(hex, 16)
    if not size then return nil, "network", "malformed chunk size line" end
    if size == 0 then
      local trailers = 0
      for _ = 1, MAX_HEADER_LINES do
        line, kind, msg = read_line(rd, "chunked trailer line")
        if not line then return nil, kind, msg end
        if line == "" then return concat(parts) end
        trailers = trailers + #line
        if trailers > MAX_HEAD then return too_long("chunked trailers", MAX_HEAD) end
      end
      return nil, "network", "more than " .. MAX_HEADER_LINES .. " trailer lines"
    end
    total = total + size
    if total > self.max_body then return too_big(self) end
    local data
    data, kind, msg = read_bytes(rd, size, "response body")
    if not data then return nil, kind, msg end
    parts[#parts + 1] = data
    line, kind, msg = read_line(rd, "chunk end")
    if not line then return nil, kind, msg end
    if line ~= "" then return nil, "network", "malformed chunk (no CRLF after the data)" end
  end
end

-- Body delimited by the connection's end.
local function read_to_close(self, rd)
  local parts, total = {}, #rd.buf - rd.pos + 1
  if total > self.max_body then return too_big(self) end
  parts[1] = sub(rd.buf, rd.pos)
  rd.buf, rd.pos = "", 1
  while true do
    local data, kind, msg, closed = recv(rd, READ_SIZE, "response body")
    if not data then
      if closed then return concat(parts) end
      return nil, kind, msg
    end
    total = total + #data
    if total > self.max_body then return too_big(self) end
    parts[#parts + 1] = data
  end
end

-- The headers this transport uses; others are skipped (bounded work).
local WANTED = { ["connection"] = true, ["transfer-encoding"] = true, ["content-length"] = true,
  ["retry-after"] = true, ["content-type"] = true }

-- Status line + headers (skipping 1xx interim responses).
-- @return status, minor, headers{lower-case name -> value} | nil, kind, msg, early
local function read_head(rd)
  for i = 1, 5 do
    local head, kind, msg, early = read_until(rd, "\r\n\r\n", MAX_HEAD, "response head")
    if not head then return nil, kind, msg, early and i == 1 end
    local major, minor, status = match(head, "^HTTP/(%d)%.(%d) (%d%d%d)")
    if major ~= "1" then return nil, "network", "malformed HTTP status line" end
    status = tonumber(status)
    local h, lines = {}, 0
    for name, value in gmatch(head, "\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
      lines = lines + 1
      if lines > MAX_HEADER_LINES then
        return nil, "network", "more than " .. MAX_HEADER_LINES .. " header lines"
      end
      name = lower(name)
      if WANTED[name] then
        local old = h[name]
        h[name] = old and (old .. ", " .. value) or value
      end
    end
    if status >= 200 or status == 101 then return status, tonumber(minor), h end
  end
  return nil, "network", "too many interim (1xx) responses"
end

-- ------------------------------------------------------------------------
-- Connect and handshake

-- sslhandshake inside pcall: lua-resty-core asserts on some internal
-- states; a raise there must become a `tls` failure, not abort the caller.
local function handshake(sock, session, sni)
  local ok, sess, err = pcall(sock.sslhandshake, sock, session, sni, true)
  if not ok then return nil, "sslhandshake raised: " .. tostring(sess) end
  return sess, err
end

--- Connect (pooled) and, for https on a fresh connection, handshake and
-- check the certificate's IP address (IP literals) and the TLS version.
-- @return sock, reused | nil, kind, message
-- @local
function Transport:connect(u, deadline)
  if u.ip and u.tls and not ssl_check then
    return nil, "tls", "cannot verify the certificate of https://" .. u.authority
      .. ": this nginx's lua module gives no TLS session to check an IP address against"
      .. " (use a host name in base_url)"
  end
  local sock = tcp()
  local cms = floor(self.connect_timeout * 1000)
  local left = ms_left(deadline)
  if left <= 0 then return nil, "timeout", "timed out before connecting" end
  sock:settimeouts(cms < left and cms or left, left, left)
  local ok, err = sock:connect(u.host, u.port, { pool = u.pool, pool_size = self.pool_size })
  if not ok then
    return nil, err == "timeout" and "timeout" or "network",
      "connect to " .. u.host .. ":" .. u.port .. " failed: " .. tostring(err)
  end
  local reused = sock:getreusedtimes() or 0
  if u.tls and reused == 0 then
    left = ms_left(deadline)
    if left <= 0 then
      sock:close()
      return nil, "timeout", "timed out before the TLS handshake"
    end
    sock:settimeout(left)
    local sess, herr = handshake(sock, self.sessions[u.pool], u.sni)
    if sess and ssl_check then
      local checked, why = ssl_check(sess, u.ip)
      if not checked then sess, herr = nil, why end
    end
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

-- The request bytes, in pieces of at most SEND_PIECE above that size, each
-- under the time left.
local function send_all(sock, req, size, deadline)
  local pieces = { req }
  if size > SEND_PIECE then
    local s = concat(req)
    pieces = {}
    for i = 1, #s, SEND_PIECE do pieces[#pieces + 1] = sub(s, i, i + SEND_PIECE - 1) end
  end
  for i = 1, #pieces do
    local left = ms_left(deadline)
    if left <= 0 then return nil, "timeout", "timed out sending the request" end
    sock:settimeout(left)
    local _, err = sock:send(pieces[i])
    if err then
      if err == "timeout" then return nil, "timeout", "timed out sending the request" end
      return nil, "network", "connection " .. tostring(err) .. " while sending the request", i == 1
    end
  end
  return true
end

--- Send the request and read the whole response on a connected socket.
-- @return status, body, info, keepalive | nil, kind, message, stale
-- @local
function Transport:exchange(sock, req, size, method, deadline)
  local sent, skind, smsg, sstale = send_all(sock, req, size, deadline)
  if not sent then return nil, skind, smsg, sstale end
  local rd = { sock = sock, deadline = deadline, buf = "", pos = 1 }
  local status, minor, h, early = read_head(rd)
  if not status then return nil, minor, h, early and minor == "network" end
  local body, kind, msg
  local keepalive = true
  local conn = h["connection"] and lower(h["connection"]) or ""
  if find(conn, "close", 1, true) or (minor == 0 and not find(conn, "keep-alive", 1, true)) then
    keepalive = false
  end
  local te = h["transfer-encoding"]
  if method == "HEAD" or NO_BODY_STATUS[status] then
    body = ""
  elseif te and find(lower(te), "chunked", 1, true) then
    body, kind, msg = read_chunked(self, rd)
  elseif h["content-length"] then
    local n = tonumber(match(h["content-length"], "^(%d+)%s*$"))
    if not n then return nil, "network", "malformed Content-Length" end
    if n > self.max_body then return too_big(self) end
    body, kind, msg = read_bytes(rd, n, "response body")
  else
    keepalive = false
    body, kind, msg = read_to_close(self, rd)
  end
  if not body then return nil, kind, msg end
  -- bytes beyond the response: the connection's state is unknown, drop it
  if rd.pos <= #rd.buf then keepalive = false end
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

-- @return request pieces (for sock:send), total size
local function build_request(self, method, u, headers, body)
  local req = { method, " ", u.path, " HTTP/1.1\r\nHost: ", u.authority, "\r\n",
    header_block(self, headers), "", "Connection: keep-alive\r\n\r\n", body }
  if body then
    req[8] = "Content-Length: " .. #body .. "\r\n"
  elseif method == "POST" or method == "PUT" then
    req[8] = "Content-Length: 0\r\n"
  end
  local size = 0
  for i = 1, #req do size = size + #req[i] end
  return req, size
end

--- Make one HTTP request.
-- @param method "POST", "DELETE", ...
-- @param url absolute http(s) URL
-- @param headers array of "Name: value" lines
-- @param body request body string or nil
-- @return status, body, info (`retry_after`, `content_type`, `reused`,
--   `http_version`, `total_time`)
-- @return or nil, kind, message: kind `network` (refused, reset, closed,
--   malformed or oversized answer), `timeout` (the deadline passed) or `tls`
--   (handshake, certificate, name or IP address, TLS version)
-- @raise outside the cosocket phases, on a bad method, body or header line
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
  local req, size = build_request(self, method, u, headers, body)
  update_time()
  local started = now()
  local deadline = started + self.timeout -- total, connect included (as libcurl's)
  -- A pooled connection the server closed while idle fails on first use:
  -- retry once on a fresh one (the server never saw that request).
  for _ = 1, 2 do
    local sock, reused, msg = self:connect(u, deadline)
    if not sock then return nil, reused, msg end
    local status, rbody, info, flag = self:exchange(sock, req, size, method, deadline)
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
