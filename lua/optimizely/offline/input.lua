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
--   first_line = <number or nil> }`. `raw` is the text the record was read
--   from (an NDJSON line; a CSV row, or a bad order's rows) with
--   `raw_format` ("ndjson" or "csv") and, for CSV, `raw_header` and
--   `raw_delimiter`: enough to read it again once fixed (a rejects file
--   keeps them). Every value quoted in `error` is escaped
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
-- * `"read_error"`: the file could not be read on (the last record);
-- * `"encoding"`: the file is not text in its encoding (`input_encoding`,
--   default UTF-8): the line at fault is named, with the byte, and the rest
--   of the file is not read (the last record). A CSV order still open at
--   that line is an error record of this code too (`ref`): its rows may go
--   on past it.
--
-- **Encodings.** NDJSON and CSV files are UTF-8 unless `input_encoding`
-- says `"cp1252"` (Windows-1252) or `"latin1"` (ISO-8859-1): then they are
-- converted to UTF-8 with iconv (in C) as they are read. An XML file
-- follows its own declaration (expat reads UTF-8, UTF-16, ISO-8859-1 and
-- US-ASCII) unless `input_encoding` is given, which wins over the
-- declaration. A file that is not UTF-8 and has no `input_encoding` stops
-- at its first such line with one `"encoding"` record naming the line and
-- the option.
-- @module optimizely.offline.input
local opts_schema = require("optimizely.offline.opts")
local core = require("optimizely.offline.core")
local sys = require("optimizely.offline.sys")
local fail = require("optimizely.offline.input.records").error

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
-- @field input_encoding the files' character set: "utf-8" (the default for
--   NDJSON and CSV; XML: its declaration), "cp1252" (Windows-1252) or
--   "latin1" (ISO-8859-1), any case; converted to UTF-8 as read
local function known_encoding(name)
  if core.decoder(name) then return true end
  return nil, "must be utf-8, cp1252 (Windows-1252) or latin1 (ISO-8859-1) (got " .. opts_schema.show(name) .. ")"
end

local OPTIONS = opts_schema.schema("optimizely.offline.input", "opts", {
  format = { type = "any" }, -- an unknown format is a runtime error (nil, message)
  input_encoding = { type = "string", check = known_encoding },
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
  local reader = require(READERS[fmt]) -- optional-require: a reader loaded for its format (XML needs lxp)
  local text = M.decoded(fh, fmt, opts.input_encoding)
  local iter = reader.new(text or fh, name, opts, state)
  if text then iter = text:records(iter, name, opts.order_rows == "grouped") end
  return iter, state
end

-- --------------------------------------------------------------- encodings

local Decoded = {}
Decoded.__index = Decoded

-- A byte for a message: \xA3, and what it is in the usual till encodings.
local function byte_text(b)
  local s = ("\\x%02X"):format(b)
  if b >= 0xA0 then
    local char = ("%c%c"):format(0xC0 + math.floor(b / 64), 0x80 + b % 64) -- U+00A0..U+00FF in UTF-8
    s = s .. (", which is %q in Latin-1 and Windows-1252"):format(char)
  elseif b >= 0x80 then
    local cp = ({ [0x80] = "\226\130\172", [0x85] = "\226\128\166", [0x91] = "\226\128\152", [0x92] = "\226\128\153",
      [0x93] = "\226\128\156", [0x94] = "\226\128\157", [0x96] = "\226\128\147", [0x97] = "\226\128\148" })[b]
    if cp then s = s .. (", which is %q in Windows-1252"):format(cp) end
  end
  return s
end

-- The message of a decoder that stopped.
local function stop_message(self, byte, reason)
  if reason == "bom" then
    return ("the file starts with a UTF-8 byte order mark, so it is UTF-8, not %s: read it without "
      .. "input_encoding (--input-encoding); the file is not read"):format(self.encoding)
  end
  if reason == "utf16" then
    return "the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8; the file is not read"
  end
  if reason == "truncated" then
    return "not UTF-8: the file ends inside a character (cut short?)"
  end
  if self.encoding ~= "utf-8" then
    return ("not %s text: byte %s is not a character of it; the rest of the file is not read")
      :format(self.encoding, ("\\x%02X"):format(byte))
  end
  return ("not UTF-8 text (byte %s); if the file is a Windows-1252 or Latin-1 export, give its encoding: "
    .. "--input-encoding cp1252 or latin1 (input_encoding in the reader options); the rest of the file is "
    .. "not read"):format(byte_text(byte))
end

-- The encoding declared by an XML document's first line, made UTF-8: the
-- text the parser gets has been converted.
local function redeclare(text)
  return (text:gsub("^(%s*<%?xml[^>]-encoding%s*=%s*)([\"'])[^\"']*%2", "%1%2UTF-8%2", 1))
end

--- `fh` read through a decoder: the readers' handle when the text must be
-- converted or checked (NDJSON and CSV always; XML only with an
-- `input_encoding`, else expat follows the declaration). Its `read` hands
-- on whole lines of UTF-8; when the input turns out not to be text, it
-- ends there (nil, message) and `stop` says where.
-- @param fh the file handle
-- @param fmt "ndjson", "csv" or "xml"
-- @param encoding the `input_encoding` option, or nil
-- @return the handle, or nil when the file is read as it is
function M.decoded(fh, fmt, encoding)
  if fmt == "xml" and encoding == nil then return nil end
  local dec, err = core.decoder(encoding or "utf-8")
  if not dec then error(err.message, 2) end
  local name = (encoding or "utf-8"):lower()
  name = ({ utf8 = "utf-8", ["windows-1252"] = "cp1252", ["latin-1"] = "latin1", ["iso-8859-1"] = "latin1",
    ["iso8859-1"] = "latin1" })[name] or name
  return setmetatable({ fh = fh, dec = dec, encoding = name, xml = fmt == "xml" and encoding ~= nil,
    done = false }, Decoded)
end

--- Reads on: at least one whole line of UTF-8 text, or nil and why not
-- (the file's end, a read error, or the decoder's stop: then `self.stop`
-- is `{line =, message =}` and `self.stopped` is true).
-- @param n bytes to read from the file at a time
function Decoded:read(n)
  while not self.done do
    local chunk, err = self.fh:read(n)
    local text, line, byte, reason = self.dec:feed(chunk)
    if not chunk then self.done, self.read_err = true, err end
    if line then
      self.done = true
      self.stop = { line = line, message = stop_message(self, byte, reason) }
    end
    if self.xml and not self.redeclared and text ~= "" then text, self.redeclared = redeclare(text), true end
    if text ~= "" then return text end
  end
  if self.stop then
    self.stopped = true
    return nil, self.stop.message
  end
  return nil, self.read_err
end

--- The reader's records, with the decoder's stop made plain: the read
-- error it caused becomes an `"encoding"` record at the line at fault, and
-- an order read after it (CSV: the order still open at that line; grouped:
-- every order, none is known whole) an `"encoding"` error record too.
-- @param iter the reader's iterator
-- @param name the file's name
-- @param grouped CSV `order_rows = "grouped"`
-- @return iterator
function Decoded:records(iter, name, grouped)
  return function()
    local rec = iter()
    if rec == nil or not self.stop then return rec end
    if rec.code == "read_error" and self.stopped then
      local out = fail(name, self.stop.line, "encoding", self.stop.message)
      out.index = rec.index
      return out
    end
    if rec.payload and (self.stopped or grouped) then
      local ref = core.ref_string(rec.payload)
      local enc = self.encoding == "utf-8" and "UTF-8" or self.encoding
      local out = fail(name, rec.line, "encoding", ("order %s: not read whole: the file stops at line %d, "
        .. "which is not %s text, and the order's rows may go on there"):format(
          ref and ("%q"):format(ref) or "(no refCode)", self.stop.line, enc), { ref = ref })
      out.index = rec.index
      return out
    end
    return rec
  end
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
  return sys.file_size(path)
end

return M
