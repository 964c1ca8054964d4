--- The request side of the cosocket transport: where a request goes (the
-- URL's parts), the bytes of an HTTP/1.1 request (the header block built
-- and checked once per headers table) and sending them under the
-- exchange's deadline.
-- @module optimizely.offline.ngx.writer
local ms_left = require("optimizely.offline.ngx.http1").ms_left

local concat, lower, sub, type, tonumber = table.concat, string.lower, string.sub, type, tonumber

local M = {}

-- Requests above this size go out in pieces, the deadline checked between them.
local SEND_PIECE = 64 * 1024

--- Where a request goes: the parts of an absolute http(s) URL, and the
-- name of its connection pool (one per host:port:sni).
-- @param url the URL
-- @return `{tls, host, port, path, authority, sni, ip, pool}` | nil, message
function M.parse_url(url)
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

-- One piece under the time left: true | nil, kind, message, stale
local function send_piece(sock, piece, deadline, first)
  local left = ms_left(deadline)
  if left <= 0 then return nil, "timeout", "timed out sending the request" end
  sock:settimeout(left)
  local _, err = sock:send(piece)
  if not err then return true end
  if err == "timeout" then return nil, "timeout", "timed out sending the request" end
  return nil, "network", "connection " .. tostring(err) .. " while sending the request", first
end

--- The request bytes, in pieces of at most SEND_PIECE above that size, each
-- under the time left (a small request: one send of its pieces, no copy).
-- @return true | nil, kind, message, stale (true: nothing was sent on a
--   connection that turned out closed)
function M.send_all(sock, req, size, deadline)
  if size <= SEND_PIECE then return send_piece(sock, req, deadline, true) end
  local s = concat(req)
  for i = 1, #s, SEND_PIECE do
    local ok, kind, msg, stale = send_piece(sock, sub(s, i, i + SEND_PIECE - 1), deadline, i == 1)
    if not ok then return nil, kind, msg, stale end
  end
  return true
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

-- Connection and framing lines after the header block.
local KEEP_ALIVE = "Connection: keep-alive\r\n\r\n"
local NO_BODY = "Content-Length: 0\r\n" .. KEEP_ALIVE

--- The request of `method` to the parsed URL `u` with `headers` (a list
-- of "Name: value" lines) and `body` (or nil), for `sock:send`: the
-- request line, Host and header block made once per URL and headers
-- table (kept in `u.heads`), then the framing and the body.
-- @param self the transport (its `blocks` cache and `user_agent_line`)
-- @param method the request's method
-- @param u the parsed URL (`path`, `authority`)
-- @param headers the header lines
-- @param body the body, or nil
-- @return request pieces (at most 3), total size
function M.build_request(self, method, u, headers, body)
  local heads = u.heads
  if not heads then
    heads = { POST = setmetatable({}, { __mode = "k" }) }
    u.heads = heads
  end
  local cache = heads[method]
  local head = cache and cache[headers]
  if not head then
    head = method .. " " .. u.path .. " HTTP/1.1\r\nHost: " .. u.authority .. "\r\n" .. header_block(self, headers)
    if cache then cache[headers] = head end
  end
  local tail
  if body then
    tail = "Content-Length: " .. #body .. "\r\n" .. KEEP_ALIVE
    return { head, tail, body }, #head + #tail + #body
  end
  tail = (method == "POST" or method == "PUT") and NO_BODY or KEEP_ALIVE
  return { head, tail }, #head + #tail
end

return M
