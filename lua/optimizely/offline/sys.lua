--- Small process and file helpers for the tools around the library: the
-- sandbox launcher, the OpenResty example launcher, the specs and the
-- benches. Plain Lua (5.1/LuaJIT and 5.4); never on a delivery path.
-- @module optimizely.offline.sys
local M = {}

--- Quote one shell word (POSIX sh).
function M.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Run a shell command: ok, exit code. os.execute differs: 5.1/LuaJIT
-- return a wait status, 5.2+ return ok, how, code.
function M.run(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0, a >= 256 and math.floor(a / 256) or a end
  return a == true, c
end

--- A command's standard output ("" when it cannot be started).
function M.capture(cmd)
  local p = io.popen(cmd)
  if not p then return "" end
  local out = p:read("*a") or ""
  p:close()
  return out
end

-- What `fn` makes of an open file (closed after), or nil when it cannot be
-- opened.
local function with_file(path, fn)
  local f = io.open(path, "rb")
  if not f then return nil end
  local v = fn(f)
  f:close()
  return v
end

local function read_all(f) return f:read("*a") end
local function seek_end(f) return f:seek("end") end

--- A whole file, or nil when it cannot be opened.
function M.read_file(path) return with_file(path, read_all) end

--- A file's size in bytes, or nil when it cannot be opened.
function M.file_size(path) return with_file(path, seek_end) end

--- Whether `path` can be opened for reading (a file that exists but cannot
-- be read counts as absent).
-- @return true or false
function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

return M
