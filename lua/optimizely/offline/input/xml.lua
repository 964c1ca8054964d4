--- Legacy XML offline-orders reader (spec §6), streamed through lua-expat.
-- Mapping (attribute values stay strings, exactly as written):
--   `<order refCode orderDate currency shipping subTotal total customerId>`
--       -> `order.*`
--   `<user email id>`                          -> `user.email`, `user.id`
--   `<product refCode qty price>`              -> `order.items[]`
--   `<attribute key="k">v</attribute>` in a product -> `items[].attributes.k`,
--       in an order -> `order.attributes.k`
-- An unknown element or attribute, stray text, a repeated `<user>` or a
-- repeated attribute key inside an `<order>` makes that order an error record;
-- the reader goes on with the next order. Each order is returned as soon as
-- the chunk holding its `</order>` has been parsed, so memory stays flat.
-- Malformed XML (expat's verdict) gives one error record with line and
-- column and ends the file: orders after the break are not read.
-- @module optimizely.offline.input.xml
local lxp = require("lxp")

local M = {}

M.CHUNK = 65536
M.MAX_PROBLEMS = 10

local concat, find = table.concat, string.find

local ORDER_ATTRS = {
  refCode = true, orderDate = true, currency = true, shipping = true,
  subTotal = true, total = true, customerId = true,
}
local USER_ATTRS = { email = true, id = true }
local PRODUCT_ATTRS = { refCode = true, qty = true, price = true }

--- Iterator over the records of one XML stream.
-- @param fh readable handle
-- @param name file name for messages
-- @param opts `chunk_size`
-- @param state progress table (`bytes` is updated)
function M.new(fh, name, opts, state)
  local chunk_size = opts.chunk_size or M.CHUNK
  local queue, qh, qt = {}, 1, 0
  local index = 0
  local done = false
  local fed = 0

  local function push(rec)
    qt = qt + 1; queue[qt] = rec
  end
  local function fail(line, msg)
    push({ error = ("%s:%d: %s"):format(name, line, msg), file = name, line = line })
  end

  -- Element stack: each entry {kind=, ...}; `skip` counts the depth inside
  -- an unknown element whose content is ignored (it was reported once).
  local stack, top = {}, 0
  local skip = 0
  local cur            -- order being read: {line=, payload=, problems=}
  local fatal = false

  local function problem(line, msg)
    local o = cur
    o.nproblems = o.nproblems + 1
    if #o.problems < M.MAX_PROBLEMS then
      o.problems[#o.problems + 1] = ("line %d: %s"):format(line, msg)
    end
  end

  -- Report attributes of `el` not in `allowed`; copy the allowed ones to `into`.
  local function take_attrs(line, el, attrs, allowed, into)
    for i = 1, #attrs do
      local a = attrs[i]
      if allowed[a] then
        if into then into[a] = attrs[a] end
      else
        problem(line, ("unknown attribute %q on <%s>"):format(a, el))
      end
    end
  end

  local function finish_order()
    local o = cur
    cur = nil
    if o.nproblems > 0 then
      local msg = concat(o.problems, "; ")
      if o.nproblems > #o.problems then
        msg = msg .. ("; and %d more"):format(o.nproblems - #o.problems)
      end
      local ref = o.payload.order.refCode
      push({
        error = ("%s:%d: order%s: %s"):format(name, o.line,
          ref and (" %q"):format(ref) or "", msg),
        file = name, line = o.line, refCode = ref,
      })
    else
      push({ payload = o.payload, file = name, line = o.line })
    end
  end

  local callbacks = {}

  function callbacks.StartElement(p, el, attrs)
    if fatal then return end
    if skip > 0 then skip = skip + 1; return end
    local line = p:pos()
    local parent = top > 0 and stack[top].kind or nil
    local entry
    if parent == nil then
      if el ~= "orders" then
        fail(line, ("root element is <%s>, expected <orders>; file not read"):format(el))
        fatal = true
        p:stop()
        return
      end
      if #attrs > 0 then
        fail(line, ("unknown attribute %q on <orders>"):format(attrs[1]))
      end
      entry = { kind = "orders" }
    elseif parent == "orders" then
      if el ~= "order" then
        fail(line, ("unknown element <%s> in <orders> (skipped)"):format(el))
        skip = 1
        return
      end
      local order = { items = {} }
      cur = { line = line, payload = { order = order }, problems = {}, nproblems = 0, nitems = 0 }
      take_attrs(line, el, attrs, ORDER_ATTRS, order)
      entry = { kind = "order" }
    elseif parent == "order" then
      if el == "user" then
        if cur.payload.user then problem(line, "more than one <user>") end
        local user = {}
        take_attrs(line, el, attrs, USER_ATTRS, user)
        cur.payload.user = user
        entry = { kind = "user" }
      elseif el == "product" then
        local item = {}
        take_attrs(line, el, attrs, PRODUCT_ATTRS, item)
        entry = { kind = "product", item = item }
      elseif el == "attribute" then
        entry = { kind = "attribute", owner = "order", line = line, parts = {} }
      else
        problem(line, ("unknown element <%s> in <order>"):format(el))
        skip = 1
        return
      end
    elseif parent == "product" and el == "attribute" then
      entry = { kind = "attribute", owner = "product", line = line, parts = {} }
    else
      problem(line, ("unknown element <%s> in <%s>"):format(el, parent))
      skip = 1
      return
    end
    if entry.kind == "attribute" then
      local key
      for i = 1, #attrs do
        local a = attrs[i]
        if a == "key" then key = attrs[a]
        else problem(line, ("unknown attribute %q on <attribute>"):format(a)) end
      end
      if key == nil then problem(line, "<attribute> without a key") end
      entry.key = key
    end
    top = top + 1
    stack[top] = entry
  end

  function callbacks.EndElement(p, el)
    if fatal then return end
    if skip > 0 then skip = skip - 1; return end
    local entry = stack[top]
    stack[top] = nil
    top = top - 1
    local kind = entry.kind
    if kind == "order" then
      finish_order()
    elseif kind == "product" then
      local k = cur.nitems + 1
      cur.nitems = k
      cur.payload.order.items[k] = entry.item
    elseif kind == "attribute" then
      if entry.key ~= nil then
        local owner
        if entry.owner == "order" then
          owner = cur.payload.order
        else
          owner = stack[top].item
        end
        local attrs = owner.attributes
        if not attrs then attrs = {}; owner.attributes = attrs end
        if attrs[entry.key] ~= nil then
          problem(entry.line, ("attribute key %q given twice in <%s>"):format(entry.key, entry.owner))
        else
          attrs[entry.key] = concat(entry.parts)
        end
      end
    end
  end

  function callbacks.CharacterData(p, s)
    if fatal or skip > 0 or top == 0 then return end
    local entry = stack[top]
    if entry.kind == "attribute" then
      entry.parts[#entry.parts + 1] = s
    elseif find(s, "%S") and not entry.text_reported then
      -- text between elements carries no meaning in this format
      entry.text_reported = true
      -- lxp hands over buffered text at the next event, so pos() is where
      -- the text ends: step back over the line breaks after its first word.
      local first = find(s, "%S")
      local line = p:pos()
      local _, nls = s:sub(first):gsub("\n", "")
      line = line - nls
      local shown = s:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
      if #shown > 40 then shown = shown:sub(1, 37) .. "..." end
      local msg = ("unexpected text %q in <%s>"):format(shown, entry.kind)
      if cur then problem(line, msg) else fail(line, msg) end
    end
  end

  local parser = lxp.new(callbacks)

  local function broken(msg, line, col)
    if fatal then return end -- the stop we asked for, already reported
    line = line or 1
    push({
      error = ("%s:%d:%d: malformed XML: %s; the rest of the file is not read")
        :format(name, line, col or 0, tostring(msg)),
      file = name, line = line,
    })
  end

  local function feed()
    local chunk, rerr = fh:read(chunk_size)
    if not chunk and rerr then
      local line = parser:pos()
      push({ error = ("%s:%d: read error: %s"):format(name, line or 1, tostring(rerr)),
             file = name, line = line or 1 })
      done = true
    elseif chunk then
      fed = fed + #chunk
      local ok, msg, line, col = parser:parse(chunk)
      if not ok then broken(msg, line, col); done = true end
    else
      local ok, msg, line, col = parser:parse()
      if not ok then broken(msg, line, col) end
      done = true
    end
    if done then pcall(parser.close, parser) end
    state.bytes = fed
  end

  return function()
    while true do
      if qh <= qt then
        local rec = queue[qh]
        queue[qh] = nil
        qh = qh + 1
        if qh > qt then qh, qt = 1, 0 end
        index = index + 1
        rec.index = index
        return rec
      end
      if done then return nil end
      feed()
    end
  end
end

return M
