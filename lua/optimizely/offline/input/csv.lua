--- CSV reader (RFC 4180): one row per order line, rows grouped into orders.
-- The header names the columns; by default they follow the payload:
--
-- * order level: `refCode` `orderDate` `customerId` `currency` `shipping`
--   `subTotal` `total` `lang` `user.id` `user.email` `user.segments`
--   (split on `|`) `user.info.<key>` `attr.<key>` (order attributes), and
--   `channel` (the record's `channel`, lower-cased: channel names are
--   case-insensitive; never put into the payload);
-- * item level: `itemRefCode` `qty` `price` `item.attr.<key>`.
--
-- `opts.map` renames source columns first (`{["Order No"] = "refCode"}`); a
-- column mapped to `false` is ignored (`{["Cashier"] = false}`). `refCode` and
-- `itemRefCode` are required. An unknown or duplicate column is reported once
-- against the header (with a "did you mean") and the file is not read at all,
-- so a mis-mapped file is never half-sent.
--
-- Values stay strings exactly as in the file; an empty cell means "absent".
-- Order-level cells may repeat on every row of an order: the first non-empty
-- value wins and a different non-empty value later in the same order makes
-- the whole order an error record. Rows whose cells are all empty (blank
-- lines, `,,,,` lines from spreadsheets) are skipped. A column with an empty
-- header is ignored while its cells are empty.
--
-- **Rows of one order** (`opts.order_rows`):
--
-- * `"contiguous"` (default): an order's rows must follow each other. A row
--   whose refCode started an order earlier in the file (a later fragment of a
--   split order) gives an error record with `code = "split_order"`, `ref` and
--   `first_line`; the earlier fragment has already been returned as an order,
--   so a caller that must not send partial orders checks the whole file first
--   (`code == "split_order"` on any record) or reads it grouped. Memory stays
--   bounded: the last 262,144 refCodes (`opts.seen_exact`) are kept exactly,
--   older ones in a temporary SQLite database, and a Bloom filter (made when
--   the first ones go there, ~24 bits a refCode of the whole file, at most
--   16 MiB: `opts.seen_filter_bytes`) answers "never seen" for almost every
--   new refCode; a hit is confirmed exactly.
-- * `"grouped"`: rows are grouped by refCode across the whole file. Every row
--   is first written to a temporary SQLite database (created 0600, unlinked at
--   once, gone when the reader ends), then orders come out complete, in the
--   order their refCode first appeared; inside an order, rows keep their file
--   order and messages their file lines. Nothing is returned before the whole
--   file is read; memory stays bounded, the disk holds about the file's size.
--
-- Parsing and grouping run in C (`core.csv_reader`). Quoted fields may hold
-- delimiters, `""` and line breaks (the record's `line` is its first physical
-- line). Text after a closing quote, a stray quote in an unquoted field, a NUL
-- byte and an unterminated quote are errors of the row's order. A row longer
-- than `opts.max_record_bytes` (default 4 MiB; usually an unterminated quote)
-- ends the file with an error record (`code = "too_long"`), so memory stays
-- bounded. So does an order: past `MAX_ITEMS` rows (the most items an order
-- may have) or `MAX_ORDER_BYTES` of values, its rows are counted, not kept,
-- and it is an error record (`code = "order"`: "too many items (N, max
-- 1000)", "the order is larger than ... bytes").
-- @module optimizely.offline.input.csv
local core = require("optimizely.offline.core")
local records = require("optimizely.offline.input.records")

local quote, suggest, concat = core.quote, core.suggest, table.concat
local fail = records.error

local M = {}

M.CHUNK = 65536
M.MAX_RECORD = 4 * 1024 * 1024
-- The encoder's caps (a core built without the encoder, as the fuzz
-- target's, leaves the C reader its own defaults: the same numbers).
local limits = core.limits or {}
--- The most items (rows) an order may have: the encoder's cap.
M.MAX_ITEMS = limits.MAX_ITEMS
--- The most bytes of values an order may hold: twice the largest request
-- body, so no order the endpoint could take is cut, and memory stays
-- bounded whatever the file.
M.MAX_ORDER_BYTES = limits.MAX_BODY and 2 * limits.MAX_BODY

-- -------------------------------------------------------------- the header

-- Columns with a fixed name: name -> { kind, key } (the C reader's plan).
local FIXED = {
  refCode = { "ref" },
  orderDate = { "order", "orderDate" }, customerId = { "order", "customerId" },
  currency = { "order", "currency" }, shipping = { "order", "shipping" },
  subTotal = { "order", "subTotal" }, total = { "order", "total" },
  lang = { "lang" }, channel = { "channel" },
  ["user.id"] = { "user", "id" }, ["user.email"] = { "user", "email" },
  ["user.segments"] = { "segments" },
  itemRefCode = { "item", "refCode" }, qty = { "item", "qty" }, price = { "item", "price" },
}
local FIXED_NAMES = {
  "refCode", "orderDate", "customerId", "currency", "shipping", "subTotal", "total",
  "lang", "channel", "user.id", "user.email", "user.segments", "itemRefCode", "qty", "price",
}
-- Prefixed columns: prefix, kind, and the dots in the prefix.
local PREFIXED = { { "user.info.", "info", 2 }, { "attr.", "attr", 1 }, { "item.attr.", "itemattr", 2 } }
local KNOWN = "refCode, orderDate, customerId, currency, shipping, subTotal, total, lang, channel, "
  .. "user.id, user.email, user.segments, user.info.<key>, attr.<key>, itemRefCode, qty, price, "
  .. "item.attr.<key>"

-- The kind and key of a column name (after the map), or nil when unknown.
local function classify(name)
  local f = FIXED[name]
  if f then return f[1], f[2] end
  if name == "" then return "unnamed" end
  for _, p in ipairs(PREFIXED) do
    local prefix = p[1]
    if #name > #prefix and name:sub(1, #prefix) == prefix then return p[2], name:sub(#prefix + 1) end
  end
  return nil
end

-- The known column closest to an unknown name. A prefixed form keeps the
-- key as written: "attrs.store" -> "attr.store".
local function closest(name)
  local names = {}
  for i, n in ipairs(FIXED_NAMES) do names[i] = n end
  for _, p in ipairs(PREFIXED) do
    local cut = 0
    for _ = 1, p[3] do cut = cut and name:find(".", cut + 1, true) end
    if cut and cut < #name then names[#names + 1] = p[1] .. name:sub(cut + 1) end
  end
  return suggest(name, names)
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function blank(fields)
  for i = 1, #fields do if fields[i] ~= "" then return false end end
  return true
end

-- The column plan of a header row, or nil and the problems found.
-- @param fields the header's cells
-- @param map source name -> column name or false
local function plan_columns(fields, map)
  local plan, unknown, seen, problems = {}, {}, {}, {}
  for i, cell in ipairs(fields) do
    local src = trim(cell)
    local target = map[cell]
    if target == nil then target = map[src] end
    if target == nil then target = src end
    if type(target) ~= "string" and target ~= false then
      error(("csv: map[%s] must be a column name or false"):format(quote(src)), 0)
    end
    local kind, key = "ignore", nil
    if target ~= false then kind, key = classify(target) end
    local label = target == src and quote(src) or ("%s (mapped to %s)"):format(quote(src), quote(tostring(target)))
    if not kind then
      local hint = closest(target)
      unknown[#unknown + 1] = quote(src) .. (hint and (" (did you mean %s?)"):format(quote(hint)) or "")
      kind = "ignore"
    elseif kind ~= "ignore" and kind ~= "unnamed" then
      if seen[target] then
        problems[#problems + 1] = ("column %s appears twice (columns %d and %d)"):format(quote(target), seen[target], i)
      end
      seen[target] = seen[target] or i
    end
    plan[i] = { kind = kind, key = key, label = label }
  end
  if #unknown > 0 then
    table.insert(problems, 1, (#unknown == 1 and "unknown column " or "unknown columns ")
      .. concat(unknown, ", ") .. " (known: " .. KNOWN .. "; rename source columns with a map)")
  end
  if not seen.refCode then problems[#problems + 1] = 'required column "refCode" is missing' end
  if not seen.itemRefCode then problems[#problems + 1] = 'required column "itemRefCode" is missing' end
  if #problems > 0 then return nil, problems end
  return plan
end

-- -------------------------------------------------------------- the reader

local Reader = {}
Reader.__index = Reader

-- Reads more input into the C reader: a chunk, or more when the row being
-- parsed already holds `buffered` bytes (reads double, so a long row costs
-- linear time).
function Reader:fill(buffered)
  local size = self.chunk_size
  if buffered > size then size = buffered end
  local chunk, err = self.fh:read(size)
  if chunk == nil or chunk == "" then
    self.read_error = err
    self.c:feed(nil)
  else
    self.c:feed(chunk)
  end
end

-- Calls a C reader method until it stops asking for input.
function Reader:pull(method)
  local c = self.c
  while true do
    local a, b, c3, d, e = method(c)
    if a ~= "need" then return a, b, c3, d, e end
    self:fill(b)
  end
end

-- Reads the header and gives the C reader its plan. False when the file
-- is not read (no header, or a header with problems: reported).
function Reader:read_header()
  local status, fields, line, err, raw
  repeat
    status, fields, line, err, raw = self:pull(self.c.row)
    if status == "end" then return false end
    if status == "fatal" then
      local at, message, code = fields, line, err -- "fatal", line, message, code
      self.queue:push(fail(self.name, at, code, message))
      return false
    end
  until err or not blank(fields)
  if err then
    self.queue:push(fail(self.name, line, "header", "header: " .. err, { raw = raw }))
    return false
  end
  self.header = raw or concat(fields, self.delimiter)
  local plan, problems = plan_columns(fields, self.map)
  if not plan then
    self.queue:push(fail(self.name, line, "header", "header: " .. concat(problems, "; ") .. "; file not read",
      { raw = raw or concat(fields, self.delimiter) }))
    return false
  end
  self.c:plan(plan)
  return true
end

-- What each C event becomes (next_record returns most orders without
-- them). Rows that belong to no order, found while an order is still open,
-- wait until that order is out, so records come in file order.
local ON = {}

function ON.order(self, payload, line, channel)
  self.queue:push({ payload = payload, file = self.name, line = line, channel = channel and channel:lower() })
  self:release()
end

-- The fields that let a rejects file keep rows it could not read, to be
-- fixed and sent again: the rows, and the header and delimiter that read them.
function Reader:raw_fields(rows, extra)
  extra = extra or {}
  if rows then
    extra.raw, extra.raw_format, extra.raw_header, extra.raw_delimiter = rows, "csv", self.header, self.delimiter
  end
  return extra
end

function ON.bad_order(self, ref, line, message, first_line, rows)
  self.queue:push(fail(self.name, line, first_line and "split_order" or "order",
    ("order %s: %s"):format(quote(ref), message), self:raw_fields(rows, { ref = ref, first_line = first_line })))
  self:release()
end

function ON.bad_row(self, line, message, raw, order_open)
  local rec = fail(self.name, line, "row", message, self:raw_fields(raw))
  if order_open then
    local d = self.deferred or {}
    d[#d + 1] = rec
    self.deferred = d
  else
    self.queue:push(rec)
  end
end

function ON.fatal(self, line, message, code)
  self.queue:push(fail(self.name, line, code, message))
end

-- Queues the rows held back while an order was open.
function Reader:release()
  local d = self.deferred
  if d then
    for i = 1, #d do self.queue:push(d[i]) end
    self.deferred = nil
  end
end

-- Ends the stream: a read error becomes the last record; the C reader's
-- memory and temporary database go.
function Reader:finish()
  self:release()
  local bytes, line = self.c:tell()
  if self.read_error then
    self.queue:push(fail(self.name, line, "read_error", "read error: " .. tostring(self.read_error)))
  end
  self.state.bytes = bytes
  self.c:close()
  self.done = true
end

-- The next record, or nil at the end. An order with no rows held back
-- before it (almost every one) skips the queue.
function Reader:next_record()
  local queue, c = self.queue, self.c
  while true do
    if queue.head <= queue.tail then
      if not self.done then self.state.bytes = c:tell() end
      return queue:pop()
    end
    if self.done then return nil end
    if not self.planned then
      self.planned = true
      if not self:read_header() then self:finish() end
    else
      local ev, a, b, d, e, f = c:next()
      if ev == "order" and not self.deferred then
        self.state.bytes = e
        local i = queue.index + 1
        queue.index = i
        return { payload = a, file = self.name, line = b, channel = d and d:lower(), index = i }
      elseif ev == "need" then
        self:fill(a)
      elseif ev == nil then
        self:finish()
      else
        ON[ev](self, a, b, d, e, f)
      end
    end
  end
end

--- Iterator over the records of one CSV stream (see the module doc and
-- `optimizely.offline.input` for the record shape and error codes).
-- @param fh readable handle
-- @param name file name for messages
-- @param opts `map`, `delimiter` (one character, default ","), `order_rows`
--   ("contiguous" or "grouped"), `seen_filter_bytes`, `seen_exact`, `chunk_size`,
--   `max_record_bytes` (checked by `optimizely.offline.input`)
-- @param state progress table (`bytes` is updated)
-- @return iterator
function M.new(fh, name, opts, state)
  local map = opts.map or {}
  if type(map) ~= "table" then error("csv: map must be a table of column renames", 3) end
  local delimiter = opts.delimiter or ","
  local ok, c = pcall(core.csv_reader, {
    delimiter = delimiter, order_rows = opts.order_rows,
    max_record = opts.max_record_bytes or M.MAX_RECORD, filter_bytes = opts.seen_filter_bytes,
    size = state.size and state.size < 2 ^ 53 and state.size or nil, -- (a directory's is not)
    exact = opts.seen_exact, max_items = M.MAX_ITEMS, max_order = M.MAX_ORDER_BYTES,
  })
  if not ok then error("csv: " .. tostring(c):gsub("^csv_reader: ", ""), 3) end
  local self = setmetatable({
    fh = fh, name = name, map = map, delimiter = delimiter, state = state, c = c,
    chunk_size = opts.chunk_size or M.CHUNK, queue = records.queue(),
  }, Reader)
  return function() return self:next_record() end
end

return M
