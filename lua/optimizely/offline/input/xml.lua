--- Legacy XML offline-orders reader (spec §6), streamed through lua-expat.
-- Mapping (attribute values stay strings, exactly as written):
--
-- * `<order refCode orderDate currency shipping subTotal total customerId>`
--   -> `order.*`
-- * `<user email id>` -> `user.email`, `user.id`
-- * `<product refCode qty price>` -> `order.items[]`
-- * `<attribute key="k">v</attribute>` in a product -> `items[].attributes.k`,
--   in an order -> `order.attributes.k`
--
-- An unknown element or attribute, stray text, a repeated `<user>`, a
-- repeated attribute key or an entity that cannot be expanded inside an
-- `<order>` makes that order an error record (`code = "order"`); the reader
-- goes on with the next order. Each order is returned as soon as the chunk
-- holding its `</order>` has been parsed, so memory stays flat. Malformed XML
-- (expat's verdict) gives one error record with line and column
-- (`code = "syntax"`) and ends the file: orders after the break are not read.
-- A root other than `<orders>`, and a DOCTYPE with an internal subset
-- (`<!DOCTYPE orders [ … ]>`, where entities are declared: they could
-- silently change or drop order text, or reach outside the file; attribute
-- defaults there would add values the file does not show) refuse the whole
-- document (`code = "document"`). A plain `<!DOCTYPE orders>` is fine; an
-- entity defined only in an outside DTD (never read) is an order problem.
--
-- **Hostile files.** expat re-scans an unfinished token on every chunk, so
-- one endless token (an attribute value, a comment, a name) would cost time
-- quadratic in its size: more than `MAX_TOKEN` bytes (1 MiB) fed without a
-- parser event is a syntax error naming the file and the line the token
-- starts on, and any file reads in linear time. Elements nested deeper than
-- `MAX_DEPTH` end the file the same way. Memory stays bounded: a value (an
-- XML attribute, the text of an `<attribute>`) longer than `MAX_VALUE`, an
-- order with more than `MAX_ITEMS` products or more than `MAX_ORDER_BYTES`
-- of values is not collected past the cap: the order is an error record
-- saying which cap it passed.
-- @module optimizely.offline.input.xml
local lxp = require("lxp")
local core = require("optimizely.offline.core")
local records = require("optimizely.offline.input.records")

local M = {}

M.CHUNK = 65536
M.MAX_PROBLEMS = 10
--- The most bytes fed to expat without a parser event (one token).
M.MAX_TOKEN = 1024 * 1024
--- The deepest element nesting followed.
M.MAX_DEPTH = 256
--- The longest value collected: an XML attribute, an `<attribute>`'s text
-- (the encoder's longest legal value is 4096 bytes).
M.MAX_VALUE = 65536
--- The most products an order may have (the encoder's cap).
M.MAX_ITEMS = core.limits.MAX_ITEMS
--- The most bytes of values (and names) an order may hold: twice the
-- largest request body, so no order the endpoint could take is cut.
M.MAX_ORDER_BYTES = 2 * core.limits.MAX_BODY
-- The most `<attribute>`s of one order or product (the encoder's cap).
local MAX_MAP = core.limits.MAX_MAP

local concat, find, sub = table.concat, string.find, string.sub
local quote, fail = core.quote, records.error

local ORDER_ATTRS = {
  refCode = true, orderDate = true, currency = true, shipping = true,
  subTotal = true, total = true, customerId = true,
}
local USER_ATTRS = { email = true, id = true }
local PRODUCT_ATTRS = { refCode = true, qty = true, price = true }

-- An element name for a message: XML names hold no control characters, but
-- their length is the file's to choose.
local function tag(name)
  if #name > 60 then name = sub(name, 1, 57) .. "..." end
  return "<" .. name .. ">"
end

-- One document's state is a plain table (`self`): the parser, the record
-- queue, the element stack (entries {kind=, ...}), `skip` (the depth inside
-- an unknown element whose content is ignored: it was reported once), the
-- order being read (`cur`). Its steps are local functions, not methods: the
-- element events run for every element of the file.

-- -------------------------------------------------------------- problems

-- Notes a problem of the order being read (the first MAX_PROBLEMS are kept).
local function problem(self, line, msg)
  local o = self.cur
  o.nproblems = o.nproblems + 1
  if #o.problems < M.MAX_PROBLEMS then
    o.problems[#o.problems + 1] = ("line %d: %s"):format(line, msg)
  end
end

-- A problem outside any order: a record of its own.
local function report(self, line, code, msg)
  self.queue:push(fail(self.name, line, code, msg))
end

-- A problem of the current order if there is one, else a record.
local function problem_here(self, line, msg)
  if self.cur then problem(self, line, msg) else report(self, line, "structure", msg) end
end

-- Refuses the whole document: one record, and the parser stops.
local function refuse(self, p, line, msg)
  report(self, line, "document", msg .. "; file not read")
  self.fatal = true
  p:stop()
end

-- Can the current order keep `n` more bytes? Past MAX_ORDER_BYTES it is an
-- error, and what it collected so far goes (memory stays bounded).
local function room(self, line, n)
  local o = self.cur
  if o.capped then return false end
  o.bytes = o.bytes + n
  if o.bytes <= M.MAX_ORDER_BYTES then return true end
  o.capped = true
  o.payload.order.items, o.payload.order.attributes, o.payload.user = {}, nil, nil
  problem(self, line, ("the order is larger than %d bytes (the rest of it is not read)"):format(M.MAX_ORDER_BYTES))
  return false
end

-- Reports attributes of `el` not in `allowed`; copies the allowed ones to `into`.
local function take_attrs(self, line, el, attrs, allowed, into)
  for i = 1, #attrs do
    local a = attrs[i]
    if not allowed[a] then
      problem(self, line, ("unknown attribute %s on %s"):format(quote(a), tag(el)))
    elseif #attrs[a] > M.MAX_VALUE then
      problem(self, line, ("%s on %s is longer than %d bytes"):format(a, tag(el), M.MAX_VALUE))
    elseif into and room(self, line, #a + #attrs[a] + 4) then
      into[a] = attrs[a]
    end
  end
end

-- -------------------------------------------------------------- orders

local function start_order(self, line, attrs)
  local order = { items = {} }
  self.cur = { line = line, payload = { order = order }, problems = {}, nproblems = 0, nitems = 0,
    bytes = 0 }
  take_attrs(self, line, "order", attrs, ORDER_ATTRS, order)
  return { kind = "order" }
end

--- The most text of one order kept for its rejects line (a bad order's
-- `raw`, to be fixed and sent again); a longer order keeps none.
M.MAX_RAW_ORDER = 64 * 1024

-- The order's text, from its `<order` to its `</order>`, out of the chunks
-- kept while it was open (nil when it outgrew MAX_RAW_ORDER).
local function order_text(self, p)
  local r = self.raw
  self.raw = nil
  if not r or r.cut then return nil end
  local _, _, pos = p:pos()
  local text = concat(r.parts)
  local e = find(text, ">", pos - r.at + 1, true)
  return e and sub(text, r.from - r.at + 1, e) or nil
end

local function finish_order(self, p)
  local o = self.cur
  self.cur = nil
  if o.nitems > M.MAX_ITEMS then
    o.nproblems = o.nproblems + 1
    table.insert(o.problems, 1, ("line %d: too many items (%d, max %d): the products past the cap are not read")
      :format((p:pos()), o.nitems, M.MAX_ITEMS))
  end
  if o.nproblems == 0 then
    self.raw = nil
    self.queue:push({ payload = o.payload, file = self.name, line = o.line })
    return
  end
  local raw = order_text(self, p)
  local msg = concat(o.problems, "; ")
  if o.nproblems > #o.problems then
    msg = msg .. ("; and %d more"):format(o.nproblems - #o.problems)
  end
  local ref = o.payload.order.refCode
  self.queue:push(fail(self.name, o.line, "order",
    ("order%s: %s"):format(ref and (" " .. quote(ref)) or "", msg),
    { ref = ref, raw = raw, raw_format = raw and "xml" or nil }))
end

-- An <attribute> element: its key now, its text when it ends.
local function start_attribute(self, line, attrs, owner)
  local key
  for i = 1, #attrs do
    local a = attrs[i]
    if a == "key" then key = attrs[a]
    else problem(self, line, ("unknown attribute %s on <attribute>"):format(quote(a))) end
  end
  if key == nil then problem(self, line, "<attribute> without a key") end
  return { kind = "attribute", owner = owner, line = line, parts = {}, len = 0, key = key }
end

local function end_attribute(self, entry)
  if entry.key == nil then return end
  if entry.len > M.MAX_VALUE then
    problem(self, entry.line, ("text of <attribute> %s is longer than %d bytes"):format(quote(entry.key, 60),
      M.MAX_VALUE))
    return
  end
  local owner = entry.owner == "order" and self.cur.payload.order or self.stack[self.top].item
  if not owner then return end -- a product past the item cap: not kept
  local attrs = owner.attributes
  if not attrs then attrs = {}; owner.attributes = attrs end
  if attrs[entry.key] ~= nil then
    problem(self, entry.line, ("attribute key %s given twice in <%s>"):format(quote(entry.key), entry.owner))
  elseif (owner.nattrs or 0) >= MAX_MAP then
    if owner.nattrs == MAX_MAP then
      problem(self, entry.line, ("more than %d <attribute>s in <%s>"):format(MAX_MAP, entry.owner))
    end
    owner.nattrs = owner.nattrs + 1
  elseif room(self, entry.line, #entry.key + entry.len + 6) then
    attrs[entry.key] = concat(entry.parts)
  end
end

-- The stack entry for element `el` inside `parent` (nil: skip it).
local function open_in_order(self, line, el, attrs)
  if el == "user" then
    if self.cur.payload.user then problem(self, line, "more than one <user>") end
    local user = {}
    take_attrs(self, line, el, attrs, USER_ATTRS, user)
    self.cur.payload.user = user
    return { kind = "user" }
  elseif el == "product" then
    local o = self.cur
    o.nitems = o.nitems + 1
    if o.nitems > M.MAX_ITEMS or o.capped then -- counted, not kept
      take_attrs(self, line, el, attrs, PRODUCT_ATTRS, nil)
      return { kind = "product" }
    end
    local item = {}
    take_attrs(self, line, el, attrs, PRODUCT_ATTRS, item)
    return { kind = "product", item = item }
  elseif el == "attribute" then
    return start_attribute(self, line, attrs, "order")
  end
  problem(self, line, ("unknown element %s in <order>"):format(tag(el)))
  return nil
end

local function open_element(self, p, line, el, attrs, parent)
  if parent == nil then
    if el ~= "orders" then
      refuse(self, p, line, ("root element is %s, expected <orders>"):format(tag(el)))
      return nil
    end
    if #attrs > 0 then
      report(self, line, "structure", ("unknown attribute %s on <orders>"):format(quote(attrs[1])))
    end
    return { kind = "orders" }
  elseif parent == "orders" then
    if el == "order" then return start_order(self, line, attrs) end
    report(self, line, "structure", ("unknown element %s in <orders> (skipped)"):format(tag(el)))
    return nil
  elseif parent == "order" then
    return open_in_order(self, line, el, attrs)
  elseif parent == "product" and el == "attribute" then
    return start_attribute(self, line, attrs, "product")
  end
  problem(self, line, ("unknown element %s in <%s>"):format(tag(el), parent))
  return nil
end

-- -------------------------------------------------------------- expat events

local function StartElement(self, p, el, attrs)
  if self.fatal then return end
  if self.top + self.skip >= M.MAX_DEPTH then
    local line, col = p:pos()
    self.fatal = true
    p:stop()
    self.queue:push({ error = ("%s:%d:%d: malformed XML: elements nested more than %d deep; the rest of the file "
      .. "is not read"):format(self.name, line, col, M.MAX_DEPTH), code = "syntax", file = self.name, line = line })
    return
  end
  if self.skip > 0 then self.skip = self.skip + 1; return end
  local parent = self.top > 0 and self.stack[self.top].kind or nil
  local entry = open_element(self, p, p:pos(), el, attrs, parent)
  if not entry then
    if not self.fatal then self.skip = 1 end -- an unknown element: its content is ignored
    return
  end
  self.top = self.top + 1
  self.stack[self.top] = entry
  if entry.kind == "order" then -- its text is kept while it is open (see order_text)
    local _, _, pos = p:pos()
    self.raw = { from = pos, at = self.chunk_at, parts = { self.chunk }, size = #self.chunk - (pos - self.chunk_at) }
  end
end

local function EndElement(self, p)
  if self.fatal then return end
  if self.skip > 0 then self.skip = self.skip - 1; return end
  local entry = self.stack[self.top]
  self.stack[self.top] = nil
  self.top = self.top - 1
  local kind = entry.kind
  if kind == "order" then
    finish_order(self, p)
  elseif kind == "product" then
    local o = self.cur
    if entry.item and not o.capped then
      local items = o.payload.order.items
      items[#items + 1] = entry.item
    end
  elseif kind == "attribute" then
    end_attribute(self, entry)
  end
end

local function CharacterData(self, p, s)
  if self.fatal or self.skip > 0 or self.top == 0 then return end
  local entry = self.stack[self.top]
  if entry.kind == "attribute" then
    entry.len = entry.len + #s
    if entry.len <= M.MAX_VALUE then entry.parts[#entry.parts + 1] = s else entry.parts = nil end
    return
  end
  local first = find(s, "%S")
  if not first or entry.text_reported then return end
  -- text between elements carries no meaning in this format
  entry.text_reported = true
  -- lxp hands over buffered text at the next event, so pos() is where
  -- the text ends: step back over the line breaks after its first word.
  local _, nls = s:sub(first):gsub("\n", "")
  local shown = s:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
  problem_here(self, p:pos() - nls, ("unexpected text %s in <%s>"):format(quote(shown, 40), entry.kind))
end

-- An entity reference expat could not expand (declared in a DTD outside
-- the file, which is never read): the text would silently lose it.
local function SkippedEntity(self, p, name)
  if self.fatal then return end
  problem_here(self, p:pos(), ("entity &%s; is not defined in the file (an outside DTD is not read)")
    :format(#name > 60 and sub(name, 1, 57) .. "..." or name))
end

-- Entity and attribute-list declarations live in the internal subset.
local function StartDoctypeDecl(self, p, has_internal_subset)
  if has_internal_subset then
    refuse(self, p, (p:pos()), "the DOCTYPE has an internal subset ([...]), whose entity and "
      .. "attribute declarations could change or drop order text; remove it")
  end
end

-- -------------------------------------------------------------- feeding

-- The parse failed: one record with line and column, unless it was our own stop.
local function broken(self, msg, line, col)
  if self.fatal then return end
  line = line or 1
  self.queue:push({
    error = ("%s:%d:%d: malformed XML: %s; the rest of the file is not read")
      :format(self.name, line, col or 0, tostring(msg)),
    code = "syntax", file = self.name, line = line,
  })
end

--- expat's message for a parse that failed on a byte that is not UTF-8
-- (a Windows-1252 or Latin-1 document that declares no encoding, or the
-- wrong one) or on an encoding it does not know (windows-1252), with what
-- to do about it; any other message as it is.
-- @param msg expat's message
-- @param parser the parser (its position is the failure's)
-- @param chunk the chunk being parsed
-- @param fed bytes fed so far, this chunk included
function M.not_text_hint(msg, parser, chunk, fed)
  if msg == "unknown encoding" then
    return msg .. " (expat reads UTF-8, UTF-16, ISO-8859-1 and US-ASCII; for a Windows-1252 document give "
      .. "--input-encoding cp1252, input_encoding in the reader options)"
  end
  if not tostring(msg):find("invalid token", 1, true) then return msg end
  local _, _, pos = parser:pos()
  if not pos then return msg end
  -- expat's index is at or just past the byte it refused
  local at, b = pos - (fed - #chunk) + 1, nil
  for i = math.max(1, at - 3), math.min(#chunk, at + 1) do
    if chunk:byte(i) >= 0x80 then b = chunk:byte(i); break end
  end
  if not b then return msg end
  return ("%s: byte \\x%02X is not UTF-8 (a Windows-1252 or Latin-1 export? give its encoding: "
    .. "--input-encoding cp1252 or latin1, input_encoding in the reader options, or an encoding "
    .. "declaration)"):format(tostring(msg), b)
end

-- Parses one piece of input; false when the file ends here (malformed, or
-- a token past MAX_TOKEN: expat stands at the start of the token it has
-- not finished, `pending` bytes back).
local function parse(self, piece)
  local parser = self.parser
  self.chunk, self.chunk_at = piece, self.fed + 1
  local r = self.raw -- the open order's text, for its rejects line (see order_text)
  if r and not r.cut then
    r.parts[#r.parts + 1], r.size = piece, r.size + #piece
    if r.size > M.MAX_RAW_ORDER + #piece then r.cut, r.parts = true, nil end
  end
  self.fed = self.fed + #piece
  local ok, msg, line, col = parser:parse(piece)
  if not ok then
    broken(self, M.not_text_hint(msg, parser, piece, self.fed), line, col)
    return false
  end
  local at_line, at_col, at_byte = parser:pos()
  self.pending = at_byte and self.fed - (at_byte - 1) or 0
  if self.pending > M.MAX_TOKEN and not self.fatal then
    broken(self, ("a token (a tag, an attribute value, a comment...) longer than %d bytes"):format(M.MAX_TOKEN),
      at_line, at_col)
    return false
  end
  return true
end

-- Parses a chunk, cut where an unfinished token would pass MAX_TOKEN (so
-- the cap is exact, and expat never re-scans more than it).
local function parse_chunk(self, chunk)
  local left = M.MAX_TOKEN + 1 - self.pending
  if #chunk <= left then return parse(self, chunk) end
  return parse(self, sub(chunk, 1, left)) and parse_chunk(self, sub(chunk, left + 1))
end

-- Parses the next chunk (or the end); queues what it finds.
local function feed(self)
  local parser = self.parser
  local chunk, rerr = self.fh:read(self.chunk_size)
  if not chunk and rerr then
    local line = parser:pos()
    self.queue:push(fail(self.name, line or 1, "read_error", "read error: " .. tostring(rerr)))
    self.done = true
  elseif chunk then
    if not parse_chunk(self, chunk) then self.done = true end
  else
    local ok, msg, line, col = parser:parse()
    if not ok then broken(self, msg, line, col) end
    self.done = true
  end
  if self.done then pcall(parser.close, parser) end
  self.state.bytes = self.fed
end

-- The next record, or nil at the end.
local function next_record(self)
  while true do
    local rec = self.queue:pop()
    if rec then return rec end
    if self.done then return nil end
    feed(self)
  end
end

-- expat's callbacks, bound to one document. Fixed arguments, not `...`:
-- the three element events run for every element of the file.
local function callbacks_for(self)
  return {
    StartElement = function(p, el, attrs) StartElement(self, p, el, attrs) end,
    EndElement = function(p) EndElement(self, p) end,
    CharacterData = function(p, s) CharacterData(self, p, s) end,
    SkippedEntity = function(p, name) SkippedEntity(self, p, name) end,
    StartDoctypeDecl = function(p, _, _, _, internal) StartDoctypeDecl(self, p, internal) end,
  }
end

--- Iterator over the records of one XML stream (see
-- `optimizely.offline.input` for the record shape and error codes).
-- @param fh readable handle
-- @param name file name for messages
-- @param opts `chunk_size`
-- @param state progress table (`bytes` is updated)
-- @return iterator
function M.new(fh, name, opts, state)
  local self = {
    fh = fh, name = name, state = state, chunk_size = opts.chunk_size or M.CHUNK,
    queue = records.queue(), stack = {}, top = 0, skip = 0, fed = 0, pending = 0, fatal = false, done = false,
  }
  self.parser = lxp.new(callbacks_for(self))
  return function() return next_record(self) end
end

return M
