--- NDJSON reader: one JSON object per line, each one payload.
-- Blank lines are skipped, CRLF and a leading UTF-8 BOM are accepted. A line
-- that does not decode (a NUL byte, invalid UTF-8 and lone surrogates
-- included), or decodes to something other than an object, gives an error
-- record and the reader goes on with the next line. JSON `null` stays in the
-- payload as lightuserdata NULL (what `cjson.null` is), so the core can
-- report it. Lines are decoded by the C core's strict `json_decode` (lua-cjson
-- only where the core is not built). Lines are cut from
-- fixed-size chunks, so memory is bounded by the longest line; a line longer
-- than `opts.max_record_bytes` (default 8 MiB) is reported and skipped
-- without being held in memory, and so is one holding more than
-- `MAX_VALUES` JSON values (`code = "too_long"`).
--
-- **Wrapper lines.** Two kinds of line carry a payload instead of being one,
-- so that nothing unknown ever reaches the endpoint:
--
-- * a channel wrapper, `{"channel": "callcentre", "payload": {…}}` (both
--   keys, no `order`): the payload is sent on that channel
--   (`record.channel`, lower-cased: channel names are case-insensitive).
--   `channel` must be a non-empty string and `payload` an object; any other key makes the line an error record (`code =
--   "wrapper"`), so nothing is sent from a line that says more than we read.
--   A line without a `channel` is a plain payload (the client's default
--   channel);
-- * a line of a rejects file — a `payload` and an `error`, no `order` — is
--   unwrapped into its payload, with `record.transformed` set from its
--   `transformed` flag, `record.origin` from its `origin` (or `source`) and
--   `record.channel` from its `channel`, so rejects re-send as they are. A
--   rejects line without a payload that kept the raw text it was read from
--   (`raw` with `raw_format` "ndjson", "xml" (an `<order>` element), or
--   "csv" with `raw_header` and `raw_delimiter`) is read again from that
--   text (CSV: with the run's `map`), so a row fixed there is sent; still
--   broken, it is an error record again, keeping the text. One with
--   `split_from` (the later rows of a split CSV order) is an error record
--   until that key is removed: sent alone it would replace the order.
-- @module optimizely.offline.input.ndjson
local records = require("optimizely.offline.input.records")

local M = {}

local find, sub, byte, concat = string.find, string.sub, string.byte, table.concat
local fail = records.error
local CR = 13

M.CHUNK = 65536
M.MAX_RECORD = 8 * 1024 * 1024
--- The most JSON values (objects, arrays, scalars) one line may hold: a
-- legal order (a body of at most 1 MiB, at least ~6 bytes a value) holds
-- fewer than 180,000; past it the line is a `too_long` record, so the
-- memory of a line stays bounded whatever it holds.
M.MAX_VALUES = 256 * 1024

local MAX_DEPTH = 1000 -- cjson's default, kept for both decoders
-- Both decoders give JSON null as lightuserdata NULL (cjson.null is one too).
local NULL

-- lua-cjson, only where the core is not built (the rock always builds it, so
-- it is not a dependency): a private instance, so the reader's settings never
-- leak into other users of cjson. Missing, it is a clear error here.
local function cjson_decoder()
  local ok, cjson = pcall(require, "cjson.safe")
  if not ok then
    error("optimizely.offline.input.ndjson: neither the C core (optimizely.offline.core) "
      .. "nor lua-cjson (cjson.safe) can be loaded to decode JSON", 0)
  end
  local json = cjson.new()
  json.decode_invalid_numbers(false) -- NaN, Infinity and 0x10 are not JSON
  json.decode_max_depth(MAX_DEPTH)
  NULL = cjson.null
  local cjson_decode = json.decode
  return function(s) return cjson_decode(s) end -- cjson wants exactly 1 argument
end

-- The C core's strict decoder is ~2x faster than cjson on order lines (and
-- also refuses invalid UTF-8 and lone surrogates); cjson is the fallback
-- when the core is not built. Same null, same depth.
-- core.quote escapes what messages show of a line; without the core, %q.
local has_core, core = pcall(require, "optimizely.offline.core")
local quote = function(s, cap)
  if #s > cap then s = sub(s, 1, cap) .. "..." end
  return (("%q"):format(s):gsub("\\\n", "\\n"))
end
local decode
if has_core and type(core) == "table" then
  if core.json_decode then decode, NULL = core.json_decode, core.json_decode("null") end
  if core.quote then quote = core.quote end
end
decode = decode or cjson_decoder()

-- A quoted value without its quotes, for text shown in parentheses.
local function escaped(s, cap)
  local body, tail = quote(s, cap):match('^"(.*)"(.*)$')
  return body .. tail
end

-- JSON text for a message: printable ASCII as it is (capped), anything
-- else escaped.
local function shown(text, cap)
  if find(text, "[^ -~]") then return escaped(text, cap) end
  if #text <= cap then return text end
  return sub(text, 1, cap) .. ("...(%d bytes)"):format(#text)
end

local Reader = {}
Reader.__index = Reader

-- The methods call each other through these locals, not `self:`: a line
-- costs a few table lookups fewer (this reader is the speed baseline).

-- Appends the next chunk to the unread text; false at the end. The first
-- read takes at least 3 bytes, so a BOM is seen whole.
local function fill(self)
  local size = self.chunk_size
  local chunk, rerr = self.fh:read(self.first and size < 3 and 3 or size)
  if not chunk then self.read_error = rerr; return false end
  if self.first then
    self.first = false
    if sub(chunk, 1, 3) == "\239\187\191" then
      chunk = sub(chunk, 4); self.consumed = self.consumed + 3
    end
  end
  self.consumed = self.consumed + (self.pos - 1)
  self.buf = sub(self.buf, self.pos) .. chunk
  self.pos = 1
  return true
end

-- The next physical line without its terminator, or nil at the end.
-- Second value: true when the line was too long and was skipped.
local function next_line(self)
  local buf, pos = self.buf, self.pos
  local nl = find(buf, "\n", pos, true)
  if nl and nl - pos <= self.max_len then -- the common case: a whole line in the buffer
    self.pos = nl + 1
    self.lineno = self.lineno + 1
    if byte(buf, nl - 1) == CR and nl > pos then return sub(buf, pos, nl - 2), false end
    return sub(buf, pos, nl - 1), false
  end
  local parts, plen, max_len = nil, 0, self.max_len
  while true do
    buf, pos = self.buf, self.pos
    nl = find(buf, "\n", pos, true)
    if nl then
      local piece = sub(buf, pos, nl - 1)
      self.pos = nl + 1
      self.lineno = self.lineno + 1
      if parts == false then return "", true end
      if parts then
        if plen + #piece > max_len then return "", true end
        parts[#parts + 1] = piece
        piece = concat(parts)
      elseif #piece > max_len then
        return "", true
      end
      if byte(piece, -1) == CR then piece = sub(piece, 1, -2) end
      return piece, false
    end
    -- No terminator in the buffer: keep the partial line aside so the
    -- buffer never grows past one chunk, and read on.
    local rest = sub(buf, pos)
    self.pos = #buf + 1
    if parts ~= false and #rest > 0 then
      parts = parts or {}
      plen = plen + #rest
      if plen > max_len then parts = false else parts[#parts + 1] = rest end
    end
    if not fill(self) then
      if parts == nil then return nil end
      self.lineno = self.lineno + 1
      if parts == false then return "", true end
      local piece = concat(parts)
      if byte(piece, -1) == CR then piece = sub(piece, 1, -2) end
      return piece, false
    end
  end
end

-- The fields of an error record that keep the line, so a rejects file can
-- hold it to be fixed and sent again.
local function raw_of(line) return { raw = line, raw_format = "ndjson" } end

local reread -- (below: it reads records the way this reader does)

-- A rejects-file line (`optimizely-offline send --rejects`): its payload is
-- sent as it is, and not transformed twice; a line without one that kept
-- the raw text it was read from (`raw`, `raw_format`) is read again from
-- that text, so a row fixed in the rejects file is sent.
local function rejected(self, value, line, n)
  local p = value.payload
  if type(p) == "table" then
    local origin = value.origin
    if type(origin) ~= "string" then origin = value.source end
    return { payload = p, transformed = value.transformed == true,
             origin = type(origin) == "string" and origin or nil,
             channel = type(value.channel) == "string" and value.channel ~= "" and value.channel:lower() or nil,
             file = self.name, line = n }
  end
  if value.stage ~= nil or value.source ~= nil then
    if type(value.raw) == "string" and (value.raw_format == "csv" or value.raw_format == "ndjson"
      or value.raw_format == "xml") then
      return reread(self, value, n)
    end
    local e = tostring(type(value.error) == "table" and value.error.message or value.error)
    local src = type(value.source) == "string" and value.source or "?"
    if not find(e, src, 1, true) then e = src .. ": " .. e end
    return fail(self.name, n, "rejected",
      ("rejected record without a payload to send (%s); fix it in its source"):format(escaped(e, 200)),
      raw_of(line))
  end
  return nil -- an object that merely has an "error" key: a payload like any other
end

local WRAPPER_KEYS = { "channel", "payload" }

-- A channel wrapper: {"channel": "...", "payload": {...}}.
local function wrapper(self, value, line, n)
  for k in pairs(value) do
    if k ~= "channel" and k ~= "payload" then
      k = tostring(k)
      local hint = core and core.suggest and core.suggest(k, WRAPPER_KEYS)
      return fail(self.name, n, "wrapper", ('unknown key %s in a wrapper line%s (a line with "channel" '
        .. 'and "payload" and no "order" holds nothing else)')
        :format(quote(k, 60), hint and (" (did you mean %s?)"):format(quote(hint, 60)) or ""), raw_of(line))
    end
  end
  local channel, p = value.channel, value.payload
  if channel ~= nil and (type(channel) ~= "string" or channel == "") then
    return fail(self.name, n, "wrapper", "the wrapper's channel must be a non-empty string", raw_of(line))
  end
  if type(p) ~= "table" then
    return fail(self.name, n, "wrapper", "the wrapper's payload must be an object", raw_of(line))
  end
  return { payload = p, channel = channel and channel:lower(), file = self.name, line = n }
end

-- Why a decoded value is not an object, for the message.
local function not_object(value, text)
  if value == NULL then return "null" end
  local t = type(value)
  if t == "string" then return "a string (" .. quote(value, 60) .. ")" end
  if t == "table" then return "an array (" .. shown(text, 60) .. ")" end
  return ("a %s (%s)"):format(t, shown(text, 60))
end

-- The record of a non-blank line that is not a plain payload with an
-- `order` (those take next_record's fast path): a JSON error, a value that
-- is not an object, a wrapper line, or an object without `order`.
local function record(self, value, err, line, s, n)
  if value == nil then
    if err == nil then err = "null is not an object" end
    if find(err, "^Found too many values") then
      return fail(self.name, n, "too_long", ("line holds more than %d JSON values (an order holds far fewer)")
        :format(M.MAX_VALUES))
    end
    return fail(self.name, n, "syntax", "invalid JSON: " .. tostring(err), raw_of(line))
  end
  if type(value) ~= "table" or byte(line, s) ~= 123 then -- '{'
    return fail(self.name, n, "not_object",
      "invalid JSON: expected an object, got " .. not_object(value, sub(line, s)), raw_of(line))
  end
  if value.order == nil then
    if value.error ~= nil then
      local rec = rejected(self, value, line, n)
      if rec then return rec end
    elseif value.channel ~= nil and value.payload ~= nil then
      return wrapper(self, value, line, n)
    end
  end
  return { payload = value, file = self.name, line = n }
end

-- A string as a file handle (for the CSV reader).
local function string_handle(text)
  local pos = 1
  return { read = function(_, size)
    if pos > #text then return nil end
    local piece = sub(text, pos, pos + size - 1)
    pos = pos + #piece
    return piece
  end }
end

-- The records of a rejects line's raw CSV rows, read with its header and
-- delimiter and this run's column map.
local function reread_csv(self, value)
  local header = value.raw_header
  if type(header) ~= "string" then
    return { fail(self.name, 0, "rejected", "a rejects line with raw CSV rows needs raw_header") }
  end
  local csv = require("optimizely.offline.input.csv") -- optional-require: needs the C core
  local delimiter = type(value.raw_delimiter) == "string" and value.raw_delimiter or ","
  local ok, it = pcall(csv.new, string_handle(header .. "\n" .. value.raw .. "\n"), self.name,
    { map = self.opts.map, delimiter = delimiter }, { bytes = 0 })
  if not ok then return { fail(self.name, 0, "rejected", tostring(it):gsub("^[^:]*:%d+: ", "")) } end
  local out = {}
  for rec in it do out[#out + 1] = rec end
  return out
end

-- The records of a rejects line's raw text (see `rejected`): where they
-- came from is the rejects line (`origin`: its source), and an error among
-- them names that line and keeps the raw text again.
function reread(self, value, n)
  local list
  if value.split_from ~= nil then
    list = { fail(self.name, n, "split_order", ("the later rows of an order whose first rows (line %s) were read "
      .. "as an order already: sent alone they would replace it; add those rows to raw and remove "
      .. "split_from, or send the file again with its rows grouped (--group-orders)")
      :format(tostring(value.split_from)), { raw = value.raw, raw_format = value.raw_format,
        raw_header = value.raw_header, raw_delimiter = value.raw_delimiter, first_line = value.split_from }) }
  elseif value.raw_format == "csv" then
    list = reread_csv(self, value)
  elseif value.raw_format == "xml" then
    list = {}
    local xml = require("optimizely.offline.input.xml") -- optional-require: needs lxp and the C core
    local it = xml.new(string_handle("<orders>" .. value.raw .. "</orders>"),
      self.name, {}, { bytes = 0 })
    for rec in it do list[#list + 1] = rec end
  else
    local raw = value.raw
    local v, err = decode(raw, MAX_DEPTH)
    list = { record(self, v, err, raw, find(raw, "[^ \t\r]") or 1, n) }
  end
  local origin = type(value.source) == "string" and value.source or nil
  for _, rec in ipairs(list) do
    if rec.error then
      rec.error = ("%s:%d: %s (the raw text of a rejected record)"):format(self.name, n,
        (rec.error:gsub("^.-:%d+: ", "", 1)))
    end
    rec.file, rec.line, rec.origin = self.name, n, rec.origin or origin
  end
  if #list == 0 then
    return fail(self.name, n, "rejected", "a rejected record's raw text holds no order")
  end
  for i = 2, #list do self.pending[#self.pending + 1] = list[i] end
  return list[1]
end

-- The record at the end: nil, or the read error.
local function finish(self)
  self.done = true
  if not self.read_error then return nil end
  return fail(self.name, self.lineno + 1, "read_error", "read error: " .. tostring(self.read_error))
end

-- The next record, or nil at the end.
local function next_record(self)
  local pending = self.pending
  if pending[1] then
    local rec = table.remove(pending, 1)
    self.index = self.index + 1
    rec.index = self.index
    return rec
  end
  if self.done then return nil end
  local state = self.state
  while true do
    local line, too_long = next_line(self)
    local n = self.lineno
    state.bytes = self.consumed + self.pos - 1
    local rec
    if line == nil then
      rec = finish(self)
      if not rec then return nil end
    elseif too_long then
      rec = fail(self.name, n, "too_long", ("line is longer than %d bytes"):format(self.max_len))
    else
      local s = byte(line, 1) == 123 and 1 or find(line, "[^ \t\r]") -- most lines start with {
      if s then
        local value, err = decode(line, MAX_DEPTH, M.MAX_VALUES)
        if type(value) == "table" and byte(line, s) == 123 and value.order ~= nil then
          local i = self.index + 1 -- a plain payload: almost every line
          self.index = i
          return { payload = value, file = self.name, line = n, index = i }
        end
        rec = record(self, value, err, line, s, n)
      end
    end
    if rec then
      local i = self.index + 1
      self.index = i
      rec.index = i
      return rec
    end
  end
end

Reader.fill, Reader.next_line, Reader.record, Reader.next_record = fill, next_line, record, next_record
Reader.rejected, Reader.wrapper = rejected, wrapper

--- Iterator over the records of one NDJSON stream (see
-- `optimizely.offline.input` for the record shape and error codes).
-- @param fh readable handle
-- @param name file name for messages
-- @param opts `chunk_size`, `max_record_bytes`
-- @param state progress table (`bytes` is updated)
-- @return iterator
function M.new(fh, name, opts, state)
  local self = setmetatable({
    fh = fh, name = name, state = state, opts = opts, pending = {},
    chunk_size = opts.chunk_size or M.CHUNK, max_len = opts.max_record_bytes or M.MAX_RECORD,
    buf = "", pos = 1, consumed = 0, lineno = 0, index = 0, first = true, done = false,
  }, Reader)
  return function() return next_record(self) end
end

return M
