-- Temp input files for the reader specs: write content, read it back as
-- records, remove everything after each test.
local input = require("optimizely.offline.input")

local M = {}
local temps = {}

--- Writes `content` to a new temp file ending in `ext`; returns its path.
function M.tmp(content, ext)
  local base = os.tmpname()
  local path = base .. ext
  temps[#temps + 1] = base
  temps[#temps + 1] = path
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

--- The path of the last temp file written.
function M.last() return temps[#temps] end

--- Removes every temp file written so far (call from after_each).
function M.cleanup()
  for _, p in ipairs(temps) do os.remove(p) end
  temps = {}
end

--- Every record an iterator yields.
function M.collect(iter)
  local out = {}
  for rec in iter do out[#out + 1] = rec end
  return out
end

--- A `read(content, opts, ext)` that writes content to a temp file (default
-- extension `default_ext`) and returns all its records and the reader state.
function M.reader(default_ext)
  return function(content, opts, ext)
    local it, st = input.open(M.tmp(content, ext or default_ext), opts)
    assert(it, st)
    return M.collect(it), st
  end
end

return M
