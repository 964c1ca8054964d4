--- The HTTP/1.1 response reader of the cosocket transport: the head, the
-- body in each framing, and whether the connection may carry another
-- request — every read bounded in size and under one deadline.
--
-- **Time.** A reader holds the exchange's deadline. Every socket read is one
-- `receiveany()` with the time left as its timeout, so a read returns as
-- soon as anything arrives and the deadline holds however slowly bytes come.
--
-- **Size.** The response head (status line and headers, each 1xx interim
-- head counted on its own) at `MAX_HEAD` bytes and `MAX_HEADER_LINES` lines;
-- a chunk-size line, a chunk's closing line or a trailer line at
-- `MAX_LINE`; all trailers together at `MAX_HEAD`; the body at the caller's
-- `max_body`. Past a cap the read fails with kind `network` and a message
-- naming the cap.
--
-- **Reuse.** A connection carries another request only after an answer it
-- understood completely: a 2xx, framed by Content-Length or chunked coding,
-- not asking to close, and with no byte beyond its end. After anything
-- else (a 503, say) the caller closes it: a server that wrote something it
-- did not declare could write more, and the next order on that connection
-- would read it as its own answer.
-- @module optimizely.offline.ngx.http1
local now = ngx.now
local concat, tonumber, lower, floor = table.concat, tonumber, string.lower, math.floor
local find, sub, match, byte = string.find, string.sub, string.match, string.byte

local M = {}

--- Response bodies above this many bytes are refused by default (as
-- libcurl's max_body).
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

--- Milliseconds to `deadline` (ngx.now() time). ngx.now() is the event
-- loop's cached clock, refreshed whenever a socket operation yields: no
-- syscall per read.
function M.ms_left(deadline)
  return floor((deadline - now()) * 1000)
end
local ms_left = M.ms_left

-- A reader is `{sock, deadline, buf, pos}`: bytes received but not
-- consumed are buf[pos..].

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

local function too_big(max_body)
  return nil, "network", "response body larger than " .. max_body .. " bytes"
end

-- The trailers after the last chunk, read and dropped.
local function read_trailers(rd)
  local trailers = 0
  for _ = 1, MAX_HEADER_LINES do
    local line, kind, msg = read_line(rd, "chunked trailer line")
    if not line then return nil, kind, msg end
    if line == "" then return true end
    trailers = trailers + #line
    if trailers > MAX_HEAD then return too_long("chunked trailers", MAX_HEAD) end
  end
  return nil, "network", "more than " .. MAX_HEADER_LINES .. " trailer lines"
end

-- Body framed by chunked transfer coding.
local function read_chunked(rd, max_body)
  local parts, total = {}, 0
  while true do
    local line, kind, msg = read_line(rd, "chunk size line")
    if not line then return nil, kind, msg end
    local hex = match(line, "^%s*(%x+)")
    local size = hex and #hex <= 8 and tonumber(hex, 16)
    if not size then return nil, "network", "malformed chunk size line" end
    if size == 0 then
      local ok
      ok, kind, msg = read_trailers(rd)
      if not ok then return nil, kind, msg end
      return concat(parts)
    end
    total = total + size
    if total > max_body then return too_big(max_body) end
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
local function read_to_close(rd, max_body)
  local parts, total = {}, #rd.buf - rd.pos + 1
  if total > max_body then return too_big(max_body) end
  parts[1] = sub(rd.buf, rd.pos)
  rd.buf, rd.pos = "", 1
  while true do
    local data, kind, msg, closed = recv(rd, READ_SIZE, "response body")
    if not data then
      if closed then return concat(parts) end
      return nil, kind, msg
    end
    total = total + #data
    if total > max_body then return too_big(max_body) end
    parts[#parts + 1] = data
  end
end

-- The headers this transport uses, found by name in the lower-cased head
-- (plain searches, no pattern per line); others are skipped.
local WANTED = { "connection", "transfer-encoding", "content-length", "retry-after", "content-type" }
local KEYS = {}
for i, name in ipairs(WANTED) do KEYS[i] = "\n" .. name .. ":" end

-- Does the head hold more than MAX_HEADER_LINES lines after the status
-- line? (A line takes at least 3 bytes: only a long head is counted.)
local function too_many_lines(head)
  if #head <= 3 * MAX_HEADER_LINES then return false end
  local pos = 1
  for _ = 1, MAX_HEADER_LINES + 1 do
    pos = find(head, "\n", pos, true)
    if not pos then return false end
    pos = pos + 1
  end
  return true
end

-- The value of every line of one header (`key` = "\nname:" in `low`, the
-- lower-cased `head`), repeated ones joined with ", "; nil when absent.
local function header_value(head, low, key)
  local value, pos = nil, 1
  while true do
    local _, e = find(low, key, pos, true)
    if not e then return value end
    local vs, ve = e + 1, find(head, "\n", e + 1, true) or #head + 1
    pos = ve
    vs = find(head, "[^ \t]", vs) or ve -- past the leading blanks (one search: no loop to trace)
    local v = sub(head, vs, byte(head, ve - 1) == 13 and ve - 2 or ve - 1)
    value = value and (value .. ", " .. v) or v
  end
end

-- The wanted headers of one head (lower-case names), or nil and a message.
local function parse_headers(head)
  if too_many_lines(head) then return nil, "more than " .. MAX_HEADER_LINES .. " header lines" end
  local low, h = lower(head), {}
  for i = 1, #WANTED do h[WANTED[i]] = header_value(head, low, KEYS[i]) end
  return h
end

-- Status line + headers (skipping 1xx interim responses).
-- @return status, minor, headers{lower-case name -> value} | nil, kind, msg, early
local function read_head(rd)
  for i = 1, 5 do
    local head, kind, msg, early = read_until(rd, "\r\n\r\n", MAX_HEAD, "response head")
    if not head then return nil, kind, msg, early and i == 1 end
    local major, minor, status = match(head, "^HTTP/(%d)%.(%d) (%d%d%d)")
    if major ~= "1" then return nil, "network", "malformed HTTP status line" end
    status = tonumber(status)
    local h, herr = parse_headers(head)
    if not h then return nil, "network", herr end
    if status >= 200 or status == 101 then return status, tonumber(minor), h end
  end
  return nil, "network", "too many interim (1xx) responses"
end

local NO_BODY_STATUS = { [204] = true, [304] = true }

-- The body in the framing the head declares; the second value says whether
-- the framing leaves the connection usable (not delimited by its end).
-- @return body, framed | nil, kind, message
local function read_body(rd, method, status, h, max_body)
  local te = h["transfer-encoding"]
  if method == "HEAD" or NO_BODY_STATUS[status] then return "", true end
  if te and find(lower(te), "chunked", 1, true) then
    local body, kind, msg = read_chunked(rd, max_body)
    return body, kind or true, msg
  end
  if h["content-length"] then
    local n = tonumber(match(h["content-length"], "^(%d+)%s*$"))
    if not n then return nil, "network", "malformed Content-Length" end
    if n > max_body then return too_big(max_body) end
    local body, kind, msg = read_bytes(rd, n, "response body")
    return body, kind or true, msg
  end
  local body, kind, msg = read_to_close(rd, max_body)
  return body, kind or false, msg
end

--- May the connection carry another request after this answer? Only when
-- it was understood completely: a 2xx, framed, not asking to close, and
-- no byte beyond its declared end.
-- @param status the answer's status
-- @param minor the HTTP minor version
-- @param h its headers
-- @param framed the body was framed (not delimited by the connection's end)
-- @param rd the reader when nothing may follow the answer (bytes still
--   buffered are then bytes beyond it), or nil (a pipelined answer that
--   others follow)
-- @return boolean
function M.reusable(status, minor, h, framed, rd)
  if status < 200 or status > 299 or not framed or (rd and rd.pos <= #rd.buf) then return false end
  local conn = h["connection"] and lower(h["connection"]) or ""
  if find(conn, "close", 1, true) then return false end
  return minor ~= 0 or find(conn, "keep-alive", 1, true) ~= nil
end

--- A reader of the responses on `sock`: bytes received and not consumed
-- are kept between responses (pipelined answers come in one read).
-- @param sock a connected cosocket
-- @param deadline ngx.now() time the next response must be read by
-- @return the reader (`deadline` may be moved for each response)
function M.reader(sock, deadline)
  return { sock = sock, deadline = deadline, buf = "", pos = 1 }
end

--- Read the next whole response from a reader.
-- @param rd the reader
-- @param method the request's method (a HEAD answer has no body)
-- @param max_body the largest body accepted
-- @param last no other response may follow: a byte beyond this one makes
--   the connection unusable
-- @return status, body, info (`retry_after`, `content_type`,
--   `http_version`), reusable | nil, kind, message, early (true: the
--   connection ended before one byte of the answer: a stale pooled one)
function M.read_next(rd, method, max_body, last)
  local status, minor, h, early = read_head(rd)
  if not status then return nil, minor, h, early and minor == "network" end
  local body, framed, msg = read_body(rd, method, status, h, max_body)
  if not body then return nil, framed, msg end
  local ok = M.reusable(status, minor, h, framed, last and rd or nil)
  return status, body, {
    retry_after = h["retry-after"],
    content_type = h["content-type"],
    http_version = "1." .. minor,
  }, ok
end

--- Read one whole response from `sock` before `deadline` (nothing may
-- follow it).
-- @param sock a connected cosocket, the request sent
-- @param deadline ngx.now() time the exchange must end by
-- @param method the request's method
-- @param max_body the largest body accepted
-- @return as `read_next`
function M.read_response(sock, deadline, method, max_body)
  return M.read_next(M.reader(sock, deadline), method, max_body, true)
end

return M
