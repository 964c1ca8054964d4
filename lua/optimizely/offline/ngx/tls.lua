--- What nginx does not check of a TLS session, checked here through
-- OpenSSL: the negotiated version (at least TLS 1.2) and, for an IP-literal
-- URL (no SNI, RFC 6066), the certificate's IP subject-alternative names
-- (`X509_check_ip_asc` on the session lua-resty-core's `sslhandshake`
-- returns, an `SSL_SESSION *`) — as libcurl does.
--
-- `M.check` is nil where this cannot be done (an nginx whose lua module
-- gives no session object, or OpenSSL symbols not visible to LuaJIT's
-- FFI); the transport then refuses IP-literal `https` URLs rather than
-- accept them unchecked.
-- @module optimizely.offline.ngx.tls
local M = {}

local TLS1_2 = 0x0303

local function load()
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
  return C
end

local C = load()

-- The session's TLS version and, with `ip`, the certificate's address.
-- @return true | nil, message
local function check(sess, ip)
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
      return nil, "the certificate is not valid for IP address " .. ip .. " (no matching IP subjectAltName)"
    end
  end
  return true
end

--- `check(session, ip)`: true, or nil and a message (TLS below 1.2; with
-- `ip`, a certificate that does not name the address). nil when OpenSSL
-- cannot be reached from here.
M.check = C and check or nil

return M
