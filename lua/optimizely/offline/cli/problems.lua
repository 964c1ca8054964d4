--- Problems grouped for a summary: 1,001 orders with the same wrong date
-- are one line with a count and the first places they were found, not
-- 1,001 lines. A group is a field path (indexes dropped: `order.items[].qty`)
-- and a message pattern (the value after "got", quoted text and numbers
-- masked); it is shown with the message as found when every member said
-- the same, else with the varying parts as "…" and "N".
-- @module optimizely.offline.cli.problems
local common = require("optimizely.offline.cli.common")

local M = {}

--- Groups kept apart; more distinct problems than this share one group.
M.MAX_GROUPS = 100
--- Places listed per group: the first ones in input order.
M.MAX_WHERE = 3
--- Groups printed (the rest are counted in one line).
M.MAX_SHOWN = 20

-- Quoted text ("…" with backslash escapes) as "…".
local function mask_quoted(s)
  local out, i = {}, 1
  while true do
    local a = s:find('"', i, true)
    if not a then break end
    local b = a + 1
    while b <= #s do
      local c = s:sub(b, b)
      if c == "\\" then b = b + 2 elseif c == '"' then break else b = b + 1 end
    end
    out[#out + 1] = s:sub(i, a - 1) .. '"…"'
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

-- The message with the value it shows masked (", got …"), then quoted text.
local function mask_value(msg)
  return mask_quoted((msg:gsub(", got .*$", ", got …")))
end

local Tally = {}
Tally.__index = Tally

--- Counts one problem of one item in its group: the path with its indexes
-- dropped and the message with its varying parts masked; past
-- `M.MAX_GROUPS` groups, in the catch-all "other problems". An item counts
-- once per group however many of its problems fall in it (the step behind
-- `failure` and `warnings`).
-- @param item a records item (its `rec` gives the place)
-- @param path the field path, or "" (or nil) for the whole order
-- @param msg the message
-- @local
function Tally:add(item, path, msg)
  path = (path or ""):gsub("%[%d+%]", "[]")
  msg = tostring(msg)
  local shown = mask_value(msg)
  local masked = shown:gsub("%d+", "N")
  local key = path .. "\1" .. masked
  local g = self.groups[key]
  if not g then
    if #self.order >= M.MAX_GROUPS then
      key = "\1other"
      g = self.groups[key]
    end
    if not g then
      g = { path = path, raw = msg, shown = shown, count = 0, where = {}, places = {}, first = #self.order + 1 }
      if key == "\1other" then g.path, g.fixed = "", "other problems" end
      self.groups[key] = g
      self.order[#self.order + 1] = g
    end
  end
  if not g.fixed then -- (the catch-all group keeps its name)
    if g.raw ~= msg then g.raw = nil end
    if g.shown and g.shown ~= shown then g.shown = nil; g.masked = masked end
  end
  local rec = item.rec
  if g.last ~= rec then
    g.last = rec
    g.count = g.count + 1
    if rec then self:place(g, item) end
  end
end

-- An item's place in the input: its file's position in the run, then its
-- record number (the line when it has none).
local function position(item)
  local rec = item.rec
  return item.fi or 0, rec.index or rec.line or 0, rec.line or 0
end

-- Is place a before place b in the input?
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end

--- Keeps the group's first `M.MAX_WHERE` places in input order, whatever
-- order the items come in (a send settles orders as their answers arrive).
-- @local
function Tally:place(g, item)
  local p = { position(item) }
  local places, n = g.places, #g.places
  if n >= M.MAX_WHERE and not before(p, places[n]) then return end
  local at = n + 1
  while at > 1 and before(p, places[at - 1]) do at = at - 1 end
  table.insert(places, at, p)
  table.insert(g.where, at, common.where(item.rec))
  if #places > M.MAX_WHERE then
    places[#places], g.where[#g.where] = nil, nil
  end
end

--- Counts a failed item: one entry per validation problem, else one for
-- the error (its location prefix dropped).
-- @param item a records item
-- @param e the error object or message (default `item.message`)
function Tally:failure(item, e)
  e = e or item.error or item.message
  self.items = self.items + 1
  if type(e) == "table" and e.problems then
    for _, p in ipairs(e.problems) do self:add(item, p.path, p.message) end
    return
  end
  local msg = tostring(e)
  if item.rec then
    local prefix = common.where(item.rec) .. ": "
    if msg:sub(1, #prefix) == prefix then msg = msg:sub(#prefix + 1) end
    local raw = ("%s:%s: "):format(tostring(item.rec.file), tostring(item.rec.line or "?"))
    if msg:sub(1, #raw) == raw then msg = msg:sub(#raw + 1) end
  end
  self:add(item, "", (item.stage and item.stage ~= "input" and item.stage ~= "transform")
    and (item.stage .. ": " .. msg) or msg)
end

--- Counts the warnings of an item (a list of `{path=, code=, message=}`).
function Tally:warnings(item, list)
  if not list or #list == 0 then return end
  self.items = self.items + 1
  for _, w in ipairs(list) do self:add(item, w.path or (w.code and tostring(w.code)) or "", w.message) end
end

--- The groups, largest first (ties: first seen first).
function Tally:sorted()
  local list = {}
  for i, g in ipairs(self.order) do list[i] = g end
  table.sort(list, function(a, b)
    if a.count ~= b.count then return a.count > b.count end
    return a.first < b.first
  end)
  return list
end

local function text_of(g)
  local msg = g.fixed or g.raw or g.shown or g.masked
  return (g.path ~= "" and (g.path .. ": ") or "") .. msg
end

--- Summary lines: `title`, then per group its count, problem and places.
-- @return list of lines (empty when nothing was counted)
function Tally:lines(title)
  local lines = {}
  if #self.order == 0 then return lines end
  lines[1] = title
  local list = self:sorted()
  for i, g in ipairs(list) do
    if i > M.MAX_SHOWN then
      lines[#lines + 1] = ("  (%d more kinds not shown)"):format(#list - M.MAX_SHOWN)
      break
    end
    lines[#lines + 1] = ("  %5d  %s"):format(g.count, text_of(g))
    lines[#lines + 1] = "         at " .. table.concat(g.where, ", ") .. (g.count > #g.where and ", ..." or "")
  end
  return lines
end

--- The groups for a JSON report: `{{count=, problem=, where={...}}, ...}`.
function Tally:list()
  local out = {}
  for i, g in ipairs(self:sorted()) do
    out[i] = { count = g.count, problem = text_of(g), where = g.where }
  end
  return out
end

--- An empty tally (`items`: how many items were counted).
function M.new()
  return setmetatable({ groups = {}, order = {}, items = 0 }, Tally)
end

return M
