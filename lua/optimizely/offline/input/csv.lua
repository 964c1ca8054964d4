--- CSV reader (RFC 4180): one row per order line, rows grouped into orders.
-- The header names the columns; by default they follow the payload:
--   order level: `refCode` `orderDate` `customerId` `currency` `shipping`
--     `subTotal` `total` `lang` `user.id` `user.email` `user.segments`
--     (split on `|`) `user.info.<key>` `attr.<key>` (order attributes)
--   item level:  `itemRefCode` `qty` `price` `item.attr.<key>`
-- `opts.map` renames source columns first (`{["Order No"] = "refCode"}`);
-- a column mapped to `false` is ignored (e.g. `{["Cashier"] = false}`).
-- `refCode` and `itemRefCode` are required. An unknown or duplicate column
-- is reported once against the header and the file is not read at all, so a
-- mis-mapped file is never half-sent.
--
-- Values stay strings exactly as in the file; an empty cell means "absent".
-- Rows of one order must be consecutive. Order-level cells may repeat on
-- every row: the first non-empty value wins and a different non-empty value
-- later in the same order makes the whole order an error record. Rows whose
-- cells are all empty (blank lines, `,,,,` lines from spreadsheets) are
-- skipped. A column with an empty header is ignored while its cells are
-- empty.
--
-- Parsing works on 64 KiB chunks with `string.find`; a row without quotes
-- takes a fast path. Quoted fields may hold delimiters, `""` and newlines
-- (the record's `line` is its first physical line). A row longer than
-- `opts.max_record_bytes` (default 4 MiB; usually an unterminated quote) ends
-- the file with an error, so memory stays bounded.
-- @module optimizely.offline.input.csv
local M = {}

local find, sub, byte, gsub = string.find, string.sub, string.byte, string.gsub
local concat = table.concat

M.CHUNK = 65536
M.MAX_RECORD = 4 * 1024 * 1024
M.MAX_PROBLEMS = 10

local QUOTE, LF, CR = 34, 10, 13

-- Order-level and item-level columns with a fixed name.
local ORDER_FIELDS = {
  refCode = true, orderDate = true, customerId = true, currency = true,
  shipping = true, subTotal = true, total = true,
}
local ITEM_FIELDS = { itemRefCode = "refCode", qty = "qty", price = "price" }
local FIXED = {
  "refCode", "orderDate", "customerId", "currency", "shipping", "subTotal", "total",
  "lang", "user.id", "user.email", "user.segments", "itemRefCode", "qty", "price",
}
local PREFIXED = { "user.info.", "attr.", "item.attr." }

-- Column kinds.
local K_ORDER, K_LANG, K_USER, K_SEGMENTS, K_INFO, K_ATTR = 1, 2, 3, 4, 5, 6
local K_ITEM, K_ITEMATTR, K_UNNAMED, K_REF = 7, 8, 9, 10

local function classify(name)
  if name == "refCode" then return K_REF, "refCode" end
  if ORDER_FIELDS[name] then return K_ORDER, name end
  if ITEM_FIELDS[name] then return K_ITEM, ITEM_FIELDS[name] end
  if name == "lang" then return K_LANG, "lang" end
  if name == "user.id" then return K_USER, "id" end
  if name == "user.email" then return K_USER, "email" end
  if name == "user.segments" then return K_SEGMENTS, "segments" end
  if name == "" then return K_UNNAMED end
  local key = name:match("^user%.info%.(.+)$")
  if key then return K_INFO, key end
  key = name:match("^item%.attr%.(.+)$")
  if key then return K_ITEMATTR, key end
  key = name:match("^attr%.(.+)$")
  if key then return K_ATTR, key end
  return nil
end

-- Levenshtein distance, for "did you mean" hints on short header names.
local function distance(a, b)
  local la, lb = #a, #b
  if la == 0 then return lb end
  if lb == 0 then return la end
  local prev = {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur = { [0] = i }
    local ca = byte(a, i)
    for j = 1, lb do
      local cost = (ca == byte(b, j)) and 0 or 1
      local v = prev[j - 1] + cost
      if prev[j] + 1 < v then v = prev[j] + 1 end
      if cur[j - 1] + 1 < v then v = cur[j - 1] + 1 end
      cur[j] = v
    end
    prev = cur
  end
  return prev[lb]
end

local function suggest(name)
  local lname = name:lower()
  local best, bestd
  local function consider(shown, d)
    if not bestd or d < bestd then best, bestd = shown, d end
  end
  for _, f in ipairs(FIXED) do consider(f, distance(lname, f:lower())) end
  -- "attrs.store" -> "attr.store", "Item.Atr.size" -> "item.attr.size":
  -- compare the part up to the prefix's last dot, keep the key as written.
  for _, p in ipairs(PREFIXED) do
    local _, ndots = p:gsub("%.", "")
    local cut = 0
    for _ = 1, ndots do
      cut = find(name, ".", cut + 1, true)
      if not cut then break end
    end
    if cut and cut < #name then
      consider(p .. sub(name, cut + 1), distance(lname:sub(1, cut), p))
    end
  end
  if bestd and bestd <= math.max(2, math.floor(#name / 3)) then return best end
  return nil
end

-- A value quoted for a one-line message (%q would break lines on "\n").
local function show(v)
  if #v > 60 then v = sub(v, 1, 57) .. "..." end
  return (("%q"):format(v):gsub("\\\n", "\\n"))
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function split_bar(s)
  local out, i = {}, 1
  while true do
    local j = find(s, "|", i, true)
    if not j then out[#out + 1] = sub(s, i); return out end
    out[#out + 1] = sub(s, i, j - 1)
    i = j + 1
  end
end

--- Iterator over the records of one CSV stream.
-- @param fh readable handle
-- @param name file name for messages
-- @param opts `map`, `delimiter` (one character, default ","), `chunk_size`,
--   `max_record_bytes`
-- @param state progress table (`bytes` is updated)
function M.new(fh, name, opts, state)
  local delim = opts.delimiter or ","
  if type(delim) ~= "string" or #delim ~= 1 or delim == '"' or delim == "\n" or delim == "\r" then
    error("csv: delimiter must be one character other than a quote or a line break", 3)
  end
  local map = opts.map or {}
  if type(map) ~= "table" then error("csv: map must be a table of column renames", 3) end
  local chunk_size = opts.chunk_size or M.CHUNK
  local max_len = opts.max_record_bytes or M.MAX_RECORD
  local D = byte(delim)
  local stop_pat = "[" .. (delim:match("%p") and "%" or "") .. delim .. "\n]"

  ---------------------------------------------------------------- rows
  local buf, pos = "", 1     -- unread text is buf[pos..]
  local consumed = 0         -- bytes before buf[1]
  local eof = false
  local first = true
  local read_error
  local nextq = 0            -- next quote at or after pos; false: none; < pos: stale
  local lineno = 1           -- line the next row starts on

  -- Append at least `want` more bytes to the unread text; false at EOF.
  local function more(want)
    -- the first read takes at least 3 bytes, so a BOM is seen whole
    local chunk, rerr = fh:read(first and want < 3 and 3 or want)
    if not chunk then eof = true; read_error = rerr; return false end
    if first then
      first = false
      if sub(chunk, 1, 3) == "\239\187\191" then
        chunk = sub(chunk, 4); consumed = consumed + 3
      end
    end
    consumed = consumed + pos - 1
    buf = sub(buf, pos) .. chunk
    pos = 1
    nextq = 0
    return true
  end

  -- Grow the buffer for a row that does not fit; nil, err past the limit.
  local function grow()
    local have = #buf - pos + 1
    if have >= max_len then return nil, "too long" end
    more(have > chunk_size and have or chunk_size)
    return true
  end

  -- A row with quotes, parsed from pos. Returns "need" when the buffer ends
  -- before the row does (and the stream has more), else
  -- fields, n, endpos (first byte after the row), err, unterminated_at.
  local function quoted_row()
    local i, len = pos, #buf
    local fields, n = {}, 0
    local err
    while true do
      local c = byte(buf, i)
      if c == QUOTE then
        local j, parts, np = i + 1, {}, 0
        while true do
          local q = find(buf, '"', j, true)
          if not q then
            if not eof then return "need" end
            return fields, n, len + 1, nil, i
          end
          local nx = byte(buf, q + 1)
          if nx == QUOTE then
            np = np + 1; parts[np] = sub(buf, j, q)
            j = q + 2
          elseif nx == nil and not eof then
            return "need"
          else
            np = np + 1; parts[np] = sub(buf, j, q - 1)
            i = q + 1
            break
          end
        end
        n = n + 1; fields[n] = np == 1 and parts[1] or concat(parts)
        c = byte(buf, i)
        if c == D then
          i = i + 1
        elseif c == LF then
          return fields, n, i + 1, err
        elseif c == CR and byte(buf, i + 1) == LF then
          return fields, n, i + 2, err
        elseif c == nil or (c == CR and i == len) then
          if not eof then return "need" end
          return fields, n, len + 1, err
        else
          err = err or ("text after the closing quote of field %d"):format(n)
          local k = find(buf, stop_pat, i)
          if not k then
            if not eof then return "need" end
            return fields, n, len + 1, err
          end
          if byte(buf, k) == LF then return fields, n, k + 1, err end
          i = k + 1
        end
      else
        local k = find(buf, stop_pat, i)
        if not k then
          if not eof then return "need" end
          k = len + 1
        end
        local e = k - 1
        local c2 = byte(buf, k)
        if c2 ~= D and e >= i and byte(buf, e) == CR then e = e - 1 end
        local v = sub(buf, i, e)
        n = n + 1; fields[n] = v
        if find(v, '"', 1, true) then
          err = err or ("stray quote in unquoted field %d (quote the whole field and double inner quotes)"):format(n)
        end
        if c2 == D then
          i = k + 1
        else
          return fields, n, k + 1, err
        end
      end
    end
  end

  -- Next row: fields, n, first_line, err, raw; nil at the end;
  -- false, msg for a fatal problem.
  local function read_row()
    while true do
      if pos > #buf then
        if eof or not more(chunk_size) then return nil end
      end
      local nl = find(buf, "\n", pos, true)
      if not nl and not eof then
        local ok = grow()
        if not ok then
          return false, ("row starting on line %d is longer than %d bytes"):format(lineno, max_len)
        end
      else
        if nextq ~= false and nextq < pos then nextq = find(buf, '"', pos, true) or false end
        local lend = nl or #buf + 1
        if nextq == false or nextq > lend then
          -- fast path: one physical line, no quotes
          local e = lend - 1
          if e >= pos and byte(buf, e) == CR then e = e - 1 end
          local fields, n, i = {}, 0, pos
          while true do
            local d = find(buf, delim, i, true)
            if not d or d > e then
              n = n + 1; fields[n] = sub(buf, i, e)
              break
            end
            n = n + 1; fields[n] = sub(buf, i, d - 1)
            i = d + 1
          end
          local line = lineno
          pos = lend + 1
          lineno = lineno + 1
          return fields, n, line, nil
        end
        local fields, n, endpos, err, open_at = quoted_row()
        if fields == "need" then
          local ok = grow()
          if not ok then
            return false, ("row starting on line %d is longer than %d bytes (unterminated quote?)")
              :format(lineno, max_len)
          end
        else
          local raw = sub(buf, pos, endpos - 1)
          local line = lineno
          if open_at then
            local _, k = gsub(sub(buf, pos, open_at), "\n", "")
            err = ("unterminated quoted field (the quote opened on line %d is never closed)")
              :format(line + k)
          end
          local _, nls = gsub(raw, "\n", "")
          lineno = lineno + nls
          pos = endpos
          return fields, n, line, err, raw
        end
      end
    end
  end

  ---------------------------------------------------------------- records
  local queue, qh, qt = {}, 1, 0
  local index = 0
  local finished = false

  local function push(rec)
    qt = qt + 1; queue[qt] = rec
  end
  local function fail(line, msg, raw)
    if raw and #raw > 4096 then raw = nil end
    push({ error = ("%s:%d: %s"):format(name, line, msg), file = name, line = line, raw = raw })
  end
  -- Errors of rows that belong to no order, found while an order is still
  -- open: held until that order is out, so records come in file order.
  local deferred

  -- Column plan, built from the header.
  local ncols, ref_col
  local ocols, ocount = {}, 0   -- order-level: {idx, kind, key, label}
  local icols, icount = {}, 0   -- item-level
  local unnamed = {}            -- indexes of columns with an empty header
  local labels = {}

  local function label(idx)
    return labels[idx]
  end

  local function read_header()
    local fields, n, line, err, raw
    repeat
      fields, n, line, err, raw = read_row()
      if fields == nil then return false end
      if fields == false then fail(lineno, n); return false end
      local blank = not err
      if blank then
        for i = 1, n do if fields[i] ~= "" then blank = false; break end end
      end
    until not blank
    if err then fail(line, "header: " .. err, raw); return false end
    ncols = n
    local unknown, seen, problems = {}, {}, {}
    for i = 1, n do
      local src = trim(fields[i])
      local target = map[fields[i]]
      if target == nil then target = map[src] end
      if target == nil then target = src end
      if type(target) ~= "string" and target ~= false then
        error(("csv: map[%q] must be a column name or false"):format(src), 0)
      end
      labels[i] = target == src and ("%q"):format(src) or ("%q (mapped to %q)"):format(src, tostring(target))
      local kind, key
      if target ~= false then kind, key = classify(target) end
      if target == false then
        -- mapped to false: the column is deliberately ignored
      elseif not kind then
        local hint = suggest(target)
        unknown[#unknown + 1] = ("%q%s"):format(src,
          hint and (" (did you mean %q?)"):format(hint) or "")
      elseif kind == K_UNNAMED then
        unnamed[#unnamed + 1] = i
      else
        if seen[target] then
          problems[#problems + 1] = ("column %q appears twice (columns %d and %d)")
            :format(target, seen[target], i)
        end
        seen[target] = seen[target] or i
        if kind == K_REF then
          ref_col = i
        elseif kind == K_ITEM or kind == K_ITEMATTR then
          icount = icount + 1; icols[icount] = { i, kind, key }
        else
          ocount = ocount + 1; ocols[ocount] = { i, kind, key }
        end
      end
    end
    if #unknown > 0 then
      table.insert(problems, 1, (#unknown == 1 and "unknown column " or "unknown columns ")
        .. concat(unknown, ", ")
        .. " (known: refCode, orderDate, customerId, currency, shipping, subTotal, total, lang, "
        .. "user.id, user.email, user.segments, user.info.<key>, attr.<key>, itemRefCode, qty, "
        .. "price, item.attr.<key>; rename source columns with a map)")
    end
    if not seen.refCode then problems[#problems + 1] = "required column \"refCode\" is missing" end
    if not seen.itemRefCode then
      problems[#problems + 1] = "required column \"itemRefCode\" is missing"
    end
    if #problems > 0 then
      fail(line, "header: " .. concat(problems, "; ") .. "; file not read", raw or concat(fields, delim))
      return false
    end
    return true
  end

  local seen_refs = {}  -- refCode -> first line, to catch non-contiguous orders
  local cur             -- order being built

  local function problem(o, msg)
    local p = o.problems
    if not p then p = {}; o.problems = p; o.items = nil end
    o.nproblems = (o.nproblems or 0) + 1
    if #p < M.MAX_PROBLEMS then p[#p + 1] = msg end
  end

  local finish_order
  local function finish(o)
    finish_order(o)
    if deferred then
      for i = 1, #deferred do push(deferred[i]) end
      deferred = nil
    end
  end

  function finish_order(o)
    if o.problems then
      local msg = concat(o.problems, "; ")
      if o.nproblems > #o.problems then
        msg = msg .. ("; and %d more"):format(o.nproblems - #o.problems)
      end
      push({
        error = ("%s:%d: order %s: %s"):format(name, o.line, show(o.ref), msg),
        file = name, line = o.line, refCode = o.ref,
      })
      return
    end
    local order = { refCode = o.ref, items = o.items }
    local payload = { order = order }
    local vals = o.vals
    local user, info, attrs
    for c = 1, ocount do
      local col = ocols[c]
      local v = vals[col[1]]
      if v then
        local kind, key = col[2], col[3]
        if kind == K_ORDER then
          order[key] = v
        elseif kind == K_ATTR then
          attrs = attrs or {}; attrs[key] = v
        elseif kind == K_LANG then
          payload.lang = v
        else
          user = user or {}
          if kind == K_USER then
            user[key] = v
          elseif kind == K_SEGMENTS then
            user.segments = split_bar(v)
          else -- K_INFO
            info = info or {}; info[key] = v
          end
        end
      end
    end
    if attrs then order.attributes = attrs end
    if info then user.info = info end
    if user then payload.user = user end
    push({ payload = payload, file = name, line = o.line })
  end

  local function row(fields, n, line, err, raw)
    -- Skip all-empty rows (blank lines, ",,,," from spreadsheets).
    if not err then
      local blank = true
      for i = 1, n do if fields[i] ~= "" then blank = false; break end end
      if blank then return end
    end
    local ref = fields[ref_col]
    if ref == nil or ref == "" then
      local why = err or (n ~= ncols and ("has %d fields, the header has %d"):format(n, ncols))
        or "refCode is empty, so the row belongs to no order"
      raw = raw or concat(fields, delim, 1, n)
      if cur then
        if #raw > 4096 then raw = nil end
        deferred = deferred or {}
        deferred[#deferred + 1] = { error = ("%s:%d: %s"):format(name, line, why),
          file = name, line = line, raw = raw }
      else
        fail(line, why, raw)
      end
      return
    end
    if not cur or cur.ref ~= ref then
      if cur then finish(cur) end
      cur = { ref = ref, line = line, vals = {}, vline = {}, items = {}, nitems = 0 }
      local first_line = seen_refs[ref]
      if first_line then
        problem(cur, ("rows for order %s are not contiguous (first seen at line %d)")
          :format(show(ref), first_line))
      else
        seen_refs[ref] = line
      end
    end
    local o = cur
    if err then problem(o, ("line %d: %s"):format(line, err)); return end
    if n ~= ncols then
      problem(o, ("line %d: has %d fields, the header has %d"):format(line, n, ncols))
      return
    end
    for u = 1, #unnamed do
      local i = unnamed[u]
      if fields[i] ~= "" then
        problem(o, ("line %d: column %d has no header but holds %s"):format(line, i, show(fields[i])))
      end
    end
    if o.problems then return end
    local vals, vline = o.vals, o.vline
    for c = 1, ocount do
      local i = ocols[c][1]
      local v = fields[i]
      if v ~= "" then
        local had = vals[i]
        if had == nil then
          vals[i] = v; vline[i] = line
        elseif had ~= v then
          problem(o, ("line %d: column %s is %s but was %s on line %d")
            :format(line, label(i), show(v), show(had), vline[i]))
        end
      end
    end
    if o.problems then return end
    local item, iattrs = {}, nil
    for c = 1, icount do
      local col = icols[c]
      local v = fields[col[1]]
      if v ~= "" then
        if col[2] == K_ITEM then
          item[col[3]] = v
        else
          iattrs = iattrs or {}; iattrs[col[3]] = v
        end
      end
    end
    if iattrs then item.attributes = iattrs end
    local k = o.nitems + 1
    o.nitems = k
    o.items[k] = item
  end

  local started = false

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
      if finished then return nil end
      if not started then
        started = true
        if not read_header() then
          if read_error then fail(lineno, "read error: " .. tostring(read_error)) end
          finished = true
        end
      else
        local fields, n, line, err, raw = read_row()
        if fields == nil then
          if cur then finish(cur); cur = nil end
          if read_error then fail(lineno, "read error: " .. tostring(read_error)) end
          finished = true
        elseif fields == false then
          if cur then finish(cur); cur = nil end
          fail(lineno, n)
          finished = true
        else
          row(fields, n, line, err, raw)
        end
      end
      state.bytes = consumed + pos - 1
    end
  end
end

return M
