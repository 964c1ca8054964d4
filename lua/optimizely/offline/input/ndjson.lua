--- NDJSON reader: one JSON object per line, each one payload.
-- Blank lines are skipped, CRLF and a leading UTF-8 BOM are accepted. A line
-- that does not decode, or decodes to something other than an object, gives
-- an error record and the reader goes on with the next line. JSON `null`
-- stays in the payload as `cjson.null`, so the core can report it. Lines
-- are decoded by the C core's strict `json_decode` when it is loadable.
-- Lines are cut from fixed-size chunks, so memory is bounded by the longest
-- line; a line longer than `opts.max_record_bytes` (default 8 MiB) is
-- reported and skipped without being held in memory.
-- A line of a rejects file — an object with a `payload` object and an
-- `error`, and no `order` — is unwrapped into its payload, with
-- `record.transformed` set from its `transformed` flag and `record.origin`
-- from its `source`, so rejects re-send as they are.
-- @module optimizely.offline.input.ndjson
local cjson = require("cjson.safe")

local M = {}

local find, sub, byte, concat = string.find, string.sub, string.byte, table.concat
local CR = 13

M.CHUNK = 65536
M.MAX_RECORD = 8 * 1024 * 1024

-- A private instance, so the reader's settings never leak into other users
-- of cjson.
local json = cjson.new()
json.decode_invalid_numbers(false) -- NaN, Infinity and 0x10 are not JSON
local MAX_DEPTH = 1000 -- cjson's default, kept for both decoders
json.decode_max_depth(MAX_DEPTH)
local cjson_decode = json.decode
local function decode(s) return cjson_decode(s) end -- cjson wants exactly 1 argument

-- The C core's strict decoder is ~2x faster than cjson on order lines (and
-- also refuses invalid UTF-8 and lone surrogates); cjson stays the fallback
-- when the core is not built. Same null (lightuserdata NULL), same depth.
local has_core, core = pcall(require, "optimizely.offline.core")
if has_core and type(core) == "table" and core.json_decode then
  decode = core.json_decode
end

local function short(s)
  if #s > 60 then return sub(s, 1, 57) .. "..." end
  return s
end

--- Iterator over the records of one NDJSON stream.
-- @param fh readable handle
-- @param name file name for messages
-- @param opts `chunk_size`, `max_record_bytes`
-- @param state progress table (`bytes` is updated)
function M.new(fh, name, opts, state)
  local chunk_size = opts.chunk_size or M.CHUNK
  local max_len = opts.max_record_bytes or M.MAX_RECORD
  local buf, pos = "", 1       -- unread text is buf[pos..]
  local consumed = 0           -- bytes before buf[1]
  local eof = false
  local lineno = 0
  local index = 0
  local first = true
  local done = false
  local read_error

  local function fill()
    -- the first read takes at least 3 bytes, so a BOM is seen whole
    local chunk, rerr = fh:read(first and chunk_size < 3 and 3 or chunk_size)
    if not chunk then eof = true; read_error = rerr; return false end
    if first then
      first = false
      if sub(chunk, 1, 3) == "\239\187\191" then
        chunk = sub(chunk, 4); consumed = consumed + 3
      end
    end
    consumed = consumed + (pos - 1)
    buf = sub(buf, pos) .. chunk
    pos = 1
    return true
  end

  -- Next physical line without its terminator, or nil at the end.
  -- Second value: true when the line was too long and was skipped.
  local function next_line()
    local parts, plen = nil, 0
    while true do
      local nl = find(buf, "\n", pos, true)
      if nl then
        local piece = sub(buf, pos, nl - 1)
        pos = nl + 1
        lineno = lineno + 1
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
      pos = #buf + 1
      if parts ~= false and #rest > 0 then
        parts = parts or {}
        plen = plen + #rest
        if plen > max_len then parts = false else parts[#parts + 1] = rest end
      end
      if not fill() then
        if parts == nil then return nil end
        lineno = lineno + 1
        if parts == false then return "", true end
        local piece = concat(parts)
        if byte(piece, -1) == CR then piece = sub(piece, 1, -2) end
        return piece, false
      end
    end
  end

  return function()
    if done then return nil end
    while true do
      local line, too_long = next_line()
      state.bytes = consumed + pos - 1
      if line == nil then
        done = true
        if read_error then
          index = index + 1
          return {
            error = ("%s:%d: read error: %s"):format(name, lineno + 1, tostring(read_error)),
            file = name, line = lineno + 1, index = index,
          }
        end
        return nil
      end
      local n = lineno
      if too_long then
        index = index + 1
        return {
          error = ("%s:%d: line is longer than %d bytes"):format(name, n, max_len),
          file = name, line = n, index = index,
        }
      end
      local s = byte(line, 1) == 123 and 1 or find(line, "[^ \t\r]") -- most lines start with {
      if s then
        index = index + 1
        local value, err = decode(line, MAX_DEPTH)
        if value == nil then
          if err == nil then err = "null is not an object" end
          return {
            error = ("%s:%d: invalid JSON: %s"):format(name, n, tostring(err)),
            file = name, line = n, index = index, raw = line,
          }
        end
        if type(value) ~= "table" or byte(line, s) ~= 123 then -- '{'
          local what = type(value) == "table" and "an array" or ("a " .. type(value))
          if value == cjson.null then what = "null" end
          return {
            error = ("%s:%d: invalid JSON: expected an object, got %s (%s)")
              :format(name, n, what, short(sub(line, s))),
            file = name, line = n, index = index, raw = line,
          }
        end
        if value.error ~= nil and value.order == nil then
          -- a line of a rejects file (`optimizely-offline send --rejects`):
          -- send its payload as it is, and do not transform it twice
          local p = value.payload
          if type(p) == "table" then
            return { payload = p, transformed = value.transformed == true,
                     origin = type(value.origin) == "string" and value.origin
                       or type(value.source) == "string" and value.source or nil,
                     file = name, line = n, index = index }
          end
          if value.stage ~= nil or value.source ~= nil then
            local e = tostring(type(value.error) == "table" and value.error.message or value.error)
            local src = type(value.source) == "string" and value.source or "?"
            if not find(e, src, 1, true) then e = src .. ": " .. e end
            if #e > 200 then e = sub(e, 1, 197) .. "..." end
            return {
              error = ("%s:%d: rejected record without a payload to send (%s); fix it in its source")
                :format(name, n, e),
              file = name, line = n, index = index, raw = line,
            }
          end
        end
        return { payload = value, file = name, line = n, index = index }
      end
    end
  end
end

return M
