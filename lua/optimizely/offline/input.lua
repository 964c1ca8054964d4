--- Input readers: turn exported order files into payload tables.
-- Three formats, each a streaming reader (memory stays bounded whatever the
-- file length): NDJSON (one JSON object per line,
-- `optimizely.offline.input.ndjson`), CSV (one row per order line, grouped
-- into orders, `optimizely.offline.input.csv`) and the legacy XML
-- offline-orders file (`optimizely.offline.input.xml`). See the topic
-- `input.md` for the formats in full.
--
-- Readers only report *format* problems (bad JSON line, bad CSV quoting,
-- malformed XML, unknown columns/elements, conflicting values). They keep
-- values as the file spells them (`"12.50"` stays a string): the C core's
-- `offline.encode` validates and normalises the payload later.
--
-- **Records.** The iterator returns one table per order, in file order:
--
-- * a payload: `{ payload = <table>, file = <name>, line = <first line>,
--   index = <n>, channel = <string or nil> }`. `channel` is the channel the
--   order belongs to (a CSV `channel` column, an NDJSON wrapper line's
--   `channel`); nil means the client's default channel. Lines of a rejects
--   file also carry `transformed` (true: do not transform again) and `origin`
--   (where the order first came from).
-- * an error: `{ error = "<file>:<line>: <what>", code = <kind>, file =,
--   line =, index =, raw = <text or nil>, ref = <refCode or nil>,
--   first_line = <number or nil> }`. Every value quoted in `error` is escaped
--   (control characters) and capped in length.
--
-- `index` counts records (payloads and errors) from 1. **Error kinds**
-- (`code`):
--
-- * `"syntax"`: a record that cannot be parsed: an NDJSON line that is not
--   JSON (or holds a NUL byte), malformed XML (the rest of the file is not
--   read);
-- * `"not_object"`: an NDJSON line that is JSON but not an object;
-- * `"wrapper"`: an NDJSON wrapper line (`{"channel": …, "payload": …}`) that
--   breaks the convention (unknown key, channel not a string);
-- * `"rejected"`: a rejects-file line without a payload to send;
-- * `"order"`: an order with problems (CSV: conflicting cells, bad quoting or
--   a NUL byte in one of its rows, a row with the wrong number of fields;
--   XML: unknown elements or attributes, stray text). `ref` names the order;
-- * `"split_order"`: CSV, `order_rows = "contiguous"`: rows of an order that
--   started earlier in the file (at `first_line`); `ref` names the order. The
--   earlier rows were returned as an order already: a caller that must not
--   send part of an order checks the whole file first, or reads it grouped;
-- * `"structure"`: XML outside any order: an unknown element or stray text
--   between orders (skipped; reading goes on);
-- * `"row"`: a CSV row that belongs to no order (empty refCode, wrong field
--   count or bad quoting before the refCode);
-- * `"header"`: the CSV header is unusable (unknown, duplicate or missing
--   columns); the file is not read;
-- * `"document"`: the XML document is refused as a whole (root element other
--   than `<orders>`, a DOCTYPE declaring entities); the file is not read;
-- * `"too_long"`: a line or row longer than `max_record_bytes` (NDJSON skips
--   it; CSV ends the file there);
-- * `"storage"`: CSV: the temporary database failed (disk full); the rest of
--   the file is not read;
-- * `"read_error"`: the file could not be read on (the last record).
-- @module optimizely.offline.input
local opts_schema = require("optimizely.offline.opts")

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

local function one_char(d)
  if #d == 1 and not d:find('["\r\n%z]') then return true end
  return nil, "must be one character other than a quote, a line break or NUL (got " .. opts_schema.show(d) .. ")"
end

--- Reader options (every one optional):
-- @table options
-- @field format "ndjson", "csv" or "xml" (default: from the file name)
-- @field map CSV: source column -> column name, or false to ignore it
-- @field delimiter CSV: one character (default ",")
-- @field order_rows CSV: "contiguous" (default; a later fragment of an order
--   is a `split_order` error) or "grouped" (rows grouped by refCode across
--   the whole file through a temporary database)
-- @field seen_filter_bytes CSV: the most memory the filter that remembers
--   refCodes may take (default 16 MiB; it is sized for ~24 bits a refCode of
--   the file, so files under ~5 million orders take less)
-- @field seen_exact CSV: how many of the latest refCodes are kept exactly in
--   memory before they go to the temporary database (default 262,144, about
--   10 MB; fewer trade memory for disk writes)
-- @field chunk_size bytes read at a time (default 64 KiB)
-- @field max_record_bytes the longest line (NDJSON, default 8 MiB) or row
--   (CSV, default 4 MiB)
local OPTIONS = opts_schema.schema("optimizely.offline.input", "opts", {
  format = { type = "any" }, -- an unknown format is a runtime error (nil, message)
  map = { type = "table" },
  delimiter = { type = "string", check = one_char },
  order_rows = { type = "choice", choices = { "contiguous", "grouped" } },
  seen_filter_bytes = { type = "integer", min = 64, max = 1024 * 1024 * 1024 },
  seen_exact = { type = "integer", min = 16, max = 16 * 1024 * 1024 },
  chunk_size = { type = "integer", min = 1 },
  max_record_bytes = { type = "integer", min = 16 },
})

--- The format a file name implies, from its extension (case-insensitive).
-- @param name file name or path
-- @return "ndjson" | "csv" | "xml", or nil when the extension is not known
function M.format_of(name)
  local ext = type(name) == "string" and name:match("%.([%w]+)$")
  return ext and EXTENSIONS[ext:lower()] or nil
end

local function pick_format(name, opts)
  local fmt = opts.format
  if fmt ~= nil then
    if type(fmt) ~= "string" or not READERS[fmt:lower()] then
      return nil, ("unknown input format %s (use ndjson, csv or xml)"):format(opts_schema.show(fmt))
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
-- @param opts table of `options` (unknown keys and bad values raise)
-- @return iter, state  or  nil, errmsg (unknown format)
-- `state` is `{ bytes = <bytes consumed>, size = <total bytes or nil>,
-- file = name, format = fmt, close = function }`, updated as the reader goes,
-- for a progress display.
function M.open_handle(fh, name, opts)
  opts = OPTIONS:check(opts, 2)
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
-- @param opts table of `options`, see `open_handle`
-- @return iter, state  or  nil, errmsg (missing file, unknown format)
-- @usage
-- local it, st = input.open("orders.csv", { map = { ["Order No"] = "refCode" } })
-- for rec in it do
--   if rec.error then io.stderr:write(rec.error, "\n") else send(rec.payload, rec.channel) end
-- end
function M.open(path, opts)
  opts = OPTIONS:check(opts, 2)
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
  opts.format = fmt
  local iter, state = M.open_handle(fh, path, opts)
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
  return require("optimizely.offline.sys").file_size(path)
end

return M
