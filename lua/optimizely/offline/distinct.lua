--- Distinct strings in bounded memory: an external merge sort.
--
-- Strings (no line breaks) are added in any order and read back sorted by
-- their bytes, each once, with at most `run_size` of them in memory: the
-- rest wait in sorted runs in private temporary files (0600, created with
-- `O_EXCL|O_NOFOLLOW`, removed by `cleanup`), merged `fan_in` at a time.
-- The command line's `mapping` gathers e-mail addresses with it; anything
-- that must list many distinct keys without holding them all can.
--
--     local distinct = require("optimizely.offline.distinct")
--     local d = assert(distinct.new("/var/tmp", { run_size = 50000 }))
--     for _, s in ipairs(list) do assert(d:add(s)) end
--     local n = assert(d:each(print))
--     d:cleanup()
--
-- A temporary file that cannot be written or read back is a runtime
-- failure: `nil, err` (kind `"storage"`). An error raised by the caller's
-- `emit` passes through as it was raised.
-- @module optimizely.offline.distinct
local files = require("optimizely.offline.files")
local errors = require("optimizely.offline.errors")
local opts = require("optimizely.offline.opts")

local M = {}

--- Distinct strings held in memory before a run is sorted to disk (default).
M.RUN_SIZE = 50000
--- Run files merged at once (more runs merge in several passes) (default).
M.FAN_IN = 16

local OPTIONS = opts.schema("distinct.new", "options", {
  run_size = { type = "integer", min = 1, default = M.RUN_SIZE },
  fan_in = { type = "integer", min = 2, default = M.FAN_IN },
})

-- A failure of our own files, raised inside a method and returned by it
-- as nil, err (an error of the caller's emit is not one of these).
local Failure = {}
local function fail(message)
  error(setmetatable({ err = errors.new({ kind = "storage", retryable = false, message = message }) },
    Failure), 0)
end

-- Runs fn(...) and turns our own failure into nil, err; anything else raised
-- goes on up.
local function guarded(fn, ...)
  local ok, v = pcall(fn, ...)
  if ok then return v end
  if getmetatable(v) == Failure then return nil, v.err end
  error(v, 0)
end

local function must(what, ok, e)
  if not ok then fail(what .. ": " .. tostring(e)) end
  return ok
end

--- A new private temporary file (0600, `O_EXCL|O_NOFOLLOW`) with an
-- unguessable name in `dir`.
-- @param dir the directory
-- @param prefix the name's start (default ".optimizely-sort-")
-- @return fh, path | nil, err (kind "storage")
function M.temp_file(dir, prefix)
  local last
  for _ = 1, 20 do
    local path = ("%s/%s%d%06d%06d.tmp"):format(dir, prefix or ".optimizely-sort-", os.time() % 100000,
      math.random(0, 999999), math.random(0, 999999))
    local fh, e = files.create_new(path)
    if fh then return fh, path end
    last = e
  end
  return nil, errors.new({ kind = "storage", retryable = false,
    message = "cannot create a temporary file in " .. dir .. ": " .. tostring(last) })
end

local function temp_or_fail(dir)
  local fh, path = M.temp_file(dir)
  if not fh then fail(path.message) end
  return fh, path
end

local Distinct = {}
Distinct.__index = Distinct

--- A new sorter.
-- @param dir the directory for the run files
-- @param options `{run_size = M.RUN_SIZE, fan_in = M.FAN_IN}` (optional)
-- @return the sorter
function M.new(dir, options)
  if type(dir) ~= "string" or dir == "" then error("distinct.new: dir must be a non-empty string", 2) end
  local o = OPTIONS:check(options, 2)
  return setmetatable({ dir = dir, run_size = o.run_size, fan_in = o.fan_in, set = {}, n = 0, runs = {} },
    Distinct)
end

local function sorted_keys(set)
  local list, n = {}, 0
  for k in next, set do
    n = n + 1
    list[n] = k
  end
  table.sort(list)
  return list, n
end

--- Writes the current run, sorted, to a new temporary file and starts an
-- empty one (a step of `add` and `each`; raises our Failure).
-- @local
function Distinct:spill()
  if self.n == 0 then return end
  local list, n = sorted_keys(self.set)
  self.set, self.n = {}, 0
  local fh, path = temp_or_fail(self.dir)
  self.runs[#self.runs + 1] = path
  local what = "cannot write " .. path
  for i = 1, n do must(what, fh:write(list[i], "\n")) end
  must(what, fh:close())
end

--- Adds a string (again: ignored while it is in the current run; a string
-- already on disk is dropped when the runs are merged). Writes the run
-- out when it reaches `run_size`.
-- @param s the string (no line break)
-- @return true | nil, err (a run could not be written)
function Distinct:add(s)
  if self.set[s] then return true end
  self.set[s] = true
  self.n = self.n + 1
  if self.n >= self.run_size then return guarded(function() self:spill(); return true end) end
  return true
end

-- A min-heap of open run files keyed by their current line.
local Heap = {}
Heap.__index = Heap

local function open_heap(paths)
  local h = setmetatable({ fhs = {}, heads = {}, heap = {} }, Heap)
  for i, p in ipairs(paths) do
    h.fhs[i] = must("cannot read back " .. p, io.open(p, "rb"))
    h.heads[i] = h.fhs[i]:read("*l")
    if h.heads[i] then h.heap[#h.heap + 1] = i end
  end
  for i = math.floor(#h.heap / 2), 1, -1 do h:down(i) end
  return h
end

function Heap:less(a, b) return self.heads[self.heap[a]] < self.heads[self.heap[b]] end

function Heap:down(i)
  local heap, n = self.heap, #self.heap
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and self:less(l, m) then m = l end
    if r <= n and self:less(r, m) then m = r end
    if m == i then return end
    heap[i], heap[m] = heap[m], heap[i]
    i = m
  end
end

-- The smallest line, and the next line of its file in its place.
function Heap:pop()
  local heap, heads = self.heap, self.heads
  local f = heap[1]
  local line = heads[f]
  heads[f] = self.fhs[f]:read("*l")
  if not heads[f] then
    heap[1] = heap[#heap]
    heap[#heap] = nil
  end
  if #heap > 0 then self:down(1) end
  return line
end

function Heap:close()
  for _, fh in ipairs(self.fhs) do fh:close() end
end

-- Merges the sorted files `paths` (each line once overall) into emit(line).
local function merge(paths, emit)
  local h = open_heap(paths)
  local last
  while #h.heap > 0 do
    local line = h:pop()
    if line ~= last then
      emit(line)
      last = line
    end
  end
  h:close()
end

--- Merges runs `fan_in` at a time until one pass can take them all (a step
-- of `each`; raises our Failure).
-- @local
function Distinct:merge_down()
  local runs = self.runs
  while #runs > self.fan_in do
    local group = {}
    for i = 1, self.fan_in do group[i] = table.remove(runs, 1) end
    local fh, path = temp_or_fail(self.dir)
    runs[#runs + 1] = path
    local what = "cannot write " .. path
    merge(group, function(s) must(what, fh:write(s, "\n")) end)
    must(what, fh:close())
    for _, p in ipairs(group) do os.remove(p) end
  end
end

--- Calls emit(s) for each distinct string in byte order.
-- @param emit function(s); an error it raises passes through
-- @return the count of strings emitted | nil, err (a run could not be
--   written or read back)
function Distinct:each(emit)
  local count = 0
  local function counted(s)
    count = count + 1
    emit(s)
  end
  return guarded(function()
    if #self.runs == 0 then
      local list, n = sorted_keys(self.set)
      self.set, self.n = {}, 0
      for i = 1, n do counted(list[i]) end
      return count
    end
    self:spill()
    self:merge_down()
    merge(self.runs, counted)
    return count
  end)
end

--- Removes every temporary file left (call it also after a failure).
function Distinct:cleanup()
  for _, p in ipairs(self.runs) do os.remove(p) end
  self.runs, self.set, self.n = {}, {}, 0
end

return M
