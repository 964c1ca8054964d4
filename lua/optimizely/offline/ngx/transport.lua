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
-- request alive past it. Name resolution is nginx's (`resolver`,
-- `resolver_timeout`) and not covered: keep `resolver_timeout` below
-- `timeout`.
--
-- **Size.** Every read is bounded (optimizely.offline.ngx.http1: the head
-- at 64 KiB and 256 lines, a chunk or trailer line at 8 KiB, the body at
-- `max_body`, 1 MiB as the libcurl path). Past a cap the request fails with
-- kind `network` and a message naming the cap.
--
-- **Reuse.** A connection goes back to the pool only after a 2xx answer
-- read completely, with no byte beyond its declared end; after any other
-- answer (a 503, say), a failure or a cap it is closed: a server that wrote
-- what it did not declare could write more, read as the next order's answer.
--
-- **TLS.** The certificate is always verified (`ssl_verify = true`) against
-- the CAs of nginx's `lua_ssl_trusted_certificate`. A host name is sent as
-- SNI and checked against the certificate by nginx. An IP-literal URL sends
-- no SNI (RFC 6066) and its address is checked against the certificate's IP
-- subject-alternative names here, through OpenSSL (`X509_check_ip_asc` on the
-- handshake's session, optimizely.offline.ngx.tls) — like libcurl; where
-- that cannot be done an IP-literal `https` URL is refused with kind `tls`
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
local http1 = require("optimizely.offline.ngx.http1")
local writer = require("optimizely.offline.ngx.writer")
local ssl_check = require("optimizely.offline.ngx.tls").check

local tcp, now, get_phase = ngx.socket.tcp, ngx.now, ngx.get_phase
local floor, pcall, type = math.floor, pcall, type
local ms_left, read_response, read_next = http1.ms_left, http1.read_response, http1.read_next
local send_all, build_request = writer.send_all, writer.build_request

local M = {}

--- Response bodies above this many bytes are refused (as libcurl's max_body).
M.MAX_BODY = http1.MAX_BODY

--- The response head's bytes at most (each 1xx head on its own; the
-- trailers too): optimizely.offline.ngx.http1's cap.
M.MAX_HEAD = http1.MAX_HEAD

--- Header lines in one response head, at most.
M.MAX_HEADER_LINES = http1.MAX_HEADER_LINES

--- A chunk-size, chunk-end or trailer line's bytes, at most.
M.MAX_LINE = http1.MAX_LINE

local COSOCKET_PHASES = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}
M.COSOCKET_PHASES = COSOCKET_PHASES

local OPTIONS = opts_schema("optimizely.offline.ngx.transport", "opts", {
  timeout = { type = "number", min = 0.001, max = 86400, default = 10 },
  connect_timeout = { type = "number", min = 0.001, max = 86400, default = 5 },
  keepalive_timeout = { type = "number", min = 0, max = 86400, default = 60 },
  pool_size = { type = "integer", min = 1, max = 10000, default = 16 },
  max_body = { type = "integer", min = 1, max = 1024 ^ 3, default = M.MAX_BODY },
  user_agent = { type = "string", pattern = "^[^%c]*$", pattern_msg = "must not contain control characters" },
})

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

--- The parsed form of `url` (cached, at most 64 entries): `{tls, host, port,
-- path, authority, sni, ip, pool}`, or nil and a message.
-- @local
function Transport:url(url)
  local u = self.urls[url]
  if u then return u end
  local err
  u, err = writer.parse_url(url)
  if not u then return nil, err end
  if self.nurls >= 64 then self.urls, self.nurls = {}, 0 end -- cancel URLs vary: stay bounded
  self.urls[url] = u
  self.nurls = self.nurls + 1
  return u
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
  local copts = u.copts -- one options table per URL, not one per request
  if not copts then
    copts = { pool = u.pool, pool_size = self.pool_size }
    u.copts = copts
  end
  local ok, err = sock:connect(u.host, u.port, copts)
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

--- Send the request and read the whole response on a connected socket.
-- @return status, body, info, reusable | nil, kind, message, stale
-- @local
function Transport:exchange(sock, req, size, method, deadline)
  local sent, skind, smsg, sstale = send_all(sock, req, size, deadline)
  if not sent then return nil, skind, smsg, sstale end
  return read_response(sock, deadline, method, self.max_body)
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
  -- the event loop's clock (refreshed at every wake-up): no update_time()
  -- per request, which formats nginx's cached time strings each time
  local started = now()
  local deadline = started + self.timeout -- total, connect included (as libcurl's)
  -- A pooled connection the server closed while idle fails on first use:
  -- retry once on a fresh one (the server never saw that request).
  for _ = 1, 2 do
    local sock, reused, msg = self:connect(u, deadline)
    if not sock then return nil, reused, msg end
    local status, rbody, info, flag = self:exchange(sock, req, size, method, deadline)
    if status then
      if flag then -- reusable: a 2xx understood completely (http1.reusable)
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

-- pipeline's default `on_reply`: the reply kept in `jobs.replies`.
local function keep_reply(jobs, i, a, b, c) jobs.replies[i] = { a, b, c } end

local NOT_ANSWERED = "not answered: the connection was closed after an earlier answer on it (the endpoint may"
  .. " or may not have the request)"

-- One try of a pipeline on a connection: `emit(jobs, i, ...)` for each
-- of `idx`'s jobs as its answer is read; false (nothing emitted) when a
-- pooled connection turned out stale before one byte of the first answer
-- (the server saw none of it: try again on a fresh one).
local function pipeline_once(self, u, jobs, idx, req, size, started, emit, retry_stale)
  local deadline = started + self.timeout
  local sock, reused, msg = self:connect(u, deadline)
  if not sock then
    for k = 1, #idx do emit(jobs, idx[k], nil, reused, msg) end
    return true
  end
  local sent, skind, smsg, stale = send_all(sock, req, size, deadline)
  if not sent then
    sock:close()
    if reused and stale and retry_stale then return false end
    for k = 1, #idx do emit(jobs, idx[k], nil, skind, smsg) end
    return true
  end
  local rd, usable, last = http1.reader(sock, deadline), true, #idx
  for k = 1, last do
    local i = idx[k]
    if not usable then
      emit(jobs, i, nil, "network", NOT_ANSWERED)
    else
      local status, body, info, ok = read_next(rd, jobs[i].method, self.max_body, k == last)
      if not status and k == 1 and reused and ok and retry_stale then
        sock:close()
        return false
      end
      usable = status ~= nil and ok
      if usable and k == last then sock:setkeepalive(self.keepalive_ms, self.pool_size) end
      if not usable then sock:close() end
      if status then
        info.reused, info.total_time = reused, now() - started
        rd.deadline = now() + self.timeout -- the next answer gets a whole timeout
      end
      emit(jobs, i, status, body, info)
    end
  end
  return true
end

--- Several requests written at once on one connection (HTTP/1.1
-- pipelining), their answers read in order: one write and as few reads as
-- the answers allow, instead of a round trip each. The connection rule
-- holds: after an answer it did not fully understand (a non-2xx, a byte
-- beyond the last answer, a failure) the connection is closed and the
-- requests not answered yet fail with kind `network` (the endpoint may or
-- may not have them: the policy retries them). A job for another host
-- than the first's goes alone.
-- @param jobs a list of `{method, url, headers, body}`
-- @param n how many of them
-- @param on_reply `function(jobs, i, status, body, info)` or `(jobs, i,
--   nil, kind, message)`, called for each job as its answer is read (in
--   order; an answer before the next one is read); nil: the replies are
--   returned (`jobs.replies`)
-- @return without `on_reply`, the replies in order: `{status, body, info}`
--   or `{nil, kind, message}`
-- @raise outside the cosocket phases, on a bad header line
function Transport:pipeline(jobs, n, on_reply)
  local phase = get_phase()
  if not COSOCKET_PHASES[phase] then
    error("optimizely.offline.ngx: cosockets are not available in the " .. tostring(phase) .. " phase", 2)
  end
  local emit = on_reply or keep_reply
  if not on_reply then jobs.replies = {} end
  local idx, req, size = {}, {}, 0
  local u, uerr = self:url(jobs[1].url)
  for i = 1, n do
    local job = jobs[i]
    local ju = u and self:url(job.url)
    if not u then
      emit(jobs, i, nil, "network", "cannot use URL: " .. uerr)
    elseif ju ~= u and (not ju or ju.pool ~= u.pool) then
      emit(jobs, i, self:request(job.method, job.url, job.headers, job.body))
    else
      idx[#idx + 1] = i
      local r, len = build_request(self, job.method, ju, job.headers, job.body)
      for k = 1, 3 do if r[k] then req[#req + 1] = r[k] end end
      size = size + len
    end
  end
  if #idx > 0 then
    local started = now()
    local _ = pipeline_once(self, u, jobs, idx, req, size, started, emit, true)
      or pipeline_once(self, u, jobs, idx, req, size, started, emit, false)
  end
  return jobs.replies
end

--- Nothing to free: connections live in nginx's per-worker pool.
function Transport:close() end

function Transport:__tostring()
  return "optimizely.offline.ngx.transport"
end

M.Transport = Transport
return M
