--- Input readers: turn exported order files into payload tables.
-- Three formats, each a streaming reader (memory stays flat whatever the
-- file length): NDJSON (one JSON object per line), CSV (one row per order
-- line, grouped into orders) and the legacy XML offline-orders file.
--
-- Readers only report *format* problems (bad JSON line, bad CSV quoting,
-- malformed XML, unknown columns/elements, conflicting values). They keep
-- values as the file spells them (`"12.50"` stays a string): the C core's
-- `offline.encode` validates and normalises the payload later.
--
-- Every record the iterator returns is one of
--   `{ payload = <table>, file = <name>, line = <first line>, index = <n> }`
--   `{ error = "<file>:<line>: <what>", file =, line =, index =, raw = <text or nil> }`
-- `index` counts records (payloads and errors) from 1.
-- @module optimizely.offline.input
local M = {}

local READERS = {
  ndjson = "optimizely.offline.input.ndjson",
  csv = "optimizely.offline.input.csv",
  xml = "optimizely.offline.input.xml",
}

local EXTENSIONS = {
  ndjson = "ndjson", jsonl = "ndjson", json = "ndjson",
  csv = "csv",
  xml = "xml",
}

M.FORMATS = { "ndjson", "csv", "xml" }

--- The format a file name implies, from its extension (case-insensitive).
-- @param name file name or path
-- @return "ndjson" | "csv" | "xml", or nil when the extension is not known
function M.format_of(name)
  local ext = type(name) == "string" and name:match("%.([%w]+)$")
  return ext and EXTENSIONS[ext:lower()] or nil
end

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("input: opts must be a table, got " .. type(opts), 3)
  end
  return opts
end

local function pick_format(name, opts)
  local fmt = opts.format
  if fmt ~= nil then
    if type(fmt) ~= "string" or not READERS[fmt:lower()] then
      return nil, ("unknown input format %q (use ndjson, csv or xml)"):format(tostring(fmt))
    end
    return fmt:lower()
  end
  fmt = M.format_of(name)
  if not fmt then
    return nil, ("cannot tell the format of %s from its name; give the format (ndjson, csv or xml)")
      :format(tostring(name))
  end
  return fmt
end

-- Size of a seekable handle, leaving its position where it was.
local function handle_size(fh)
  local ok, here = pcall(fh.seek, fh, "cur")
  if not ok or not here then return nil end
  local size = fh:seek("end")
  fh:seek("set", here)
  if size then return size - here end
  return nil
end

--- Read records from an already open handle.
-- The handle is never closed here: the caller owns it (`state.close` is a
-- no-op, present so callers can treat both entry points alike).
-- @param fh file handle opened for reading (binary mode recommended)
-- @param name name used in records and error messages
-- @param opts table: `format`, and per format: `map`, `delimiter` (CSV),
--   `chunk_size`, `max_record_bytes`
-- @return iter, state  or  nil, errmsg
-- `state` is `{ bytes = <bytes consumed>, size = <total bytes or nil>,
-- file = name, format = fmt, close = function }`, updated as the reader goes,
-- for a progress display.
function M.open_handle(fh, name, opts)
  opts = check_opts(opts)
  if (type(fh) ~= "userdata" and type(fh) ~= "table") or not fh.read then
    error("input.open_handle: a readable file handle is required", 2)
  end
  name = name and tostring(name) or "<input>"
  local fmt, err = pick_format(name, opts)
  if not fmt then return nil, err end
  local state = { bytes = 0, size = handle_size(fh), file = name, format = fmt }
  state.close = function() end
  local reader = require(READERS[fmt])
  local iter = reader.new(fh, name, opts, state)
  return iter, state
end

--- Open a file (or `-` for standard input) and read its records.
-- The format comes from `opts.format`, else from the extension
-- (.ndjson/.jsonl/.json, .csv, .xml); standard input needs `opts.format`.
-- The file is closed when the iterator reaches its end, or by `state.close()`.
-- @param path file path, or "-" for standard input
-- @param opts see `open_handle`
-- @return iter, state  or  nil, errmsg (missing file, unknown format)
-- @usage
-- local it, st = input.open("orders.csv", { map = { ["Order No"] = "refCode" } })
-- for rec in it do
--   if rec.error then io.stderr:write(rec.error, "\n") else send(rec.payload) end
-- end
function M.open(path, opts)
  opts = check_opts(opts)
  if type(path) ~= "string" or path == "" then
    error("input.open: path must be a non-empty string", 2)
  end
  if path == "-" then
    if opts.format == nil then
      return nil, "reading standard input needs a format (ndjson, csv or xml)"
    end
    return M.open_handle(io.stdin, "<stdin>", opts)
  end
  local fmt, err = pick_format(path, opts)
  if not fmt then return nil, err end
  local fh, oerr = io.open(path, "rb")
  if not fh then return nil, "cannot open " .. tostring(oerr) end
  -- io.open succeeds on a directory; the first read tells
  local probe, rerr = fh:read(0)
  if probe == nil and rerr then
    fh:close()
    return nil, ("cannot read %s: %s"):format(path, tostring(rerr))
  end
  local sub = {}
  for k, v in pairs(opts) do sub[k] = v end
  sub.format = fmt
  local iter, state = M.open_handle(fh, path, sub)
  if not iter then fh:close(); return nil, state end
  local closed = false
  local function close()
    if not closed then closed = true; fh:close() end
  end
  state.close = close
  return function()
    if closed then return nil end
    local rec = iter()
    if rec == nil then close() end
    return rec
  end, state
end

--- Total size in bytes of a file (for a progress bar), or nil.
-- @param path file path
function M.total_hint(path)
  if path == "-" then return nil end
  local fh = io.open(path, "rb")
  if not fh then return nil end
  local size = fh:seek("end")
  fh:close()
  return size
end

return M
