--- Files that hold orders (customer e-mails, ids): created private (0600
-- whatever the umask), compared by identity (device + inode), and written
-- through a temporary file renamed into place only when complete, so an
-- interrupted or failed write never leaves half a file, and an output can
-- never be the command's own input.
--
--     local files = require("optimizely.offline.files")
--     if files.same(input, output) then ... end            -- refuse
--     local w = assert(files.atomic(output))               -- w.fh is a Lua file
--     w.fh:write(...)
--     assert(w:commit())                                   -- rename into place
-- @module optimizely.offline.files
local core = require("optimizely.offline.core")

local M = {}

--- The identity of the file `path` names (symlinks followed): "dev:ino",
-- or nil when it does not exist (or cannot be examined).
function M.id(path)
  return (core.file_id(path))
end

--- Do `a` and `b` name the same existing file (whatever the spelling)?
function M.same(a, b)
  local ia, ib = core.file_id(a), core.file_id(b)
  return ia ~= nil and ia == ib
end

-- io.open with a 077 umask, so a file it creates is 0600.
local function open_umasked(path, mode)
  local old = core.umask(tonumber("077", 8))
  local fh, err = io.open(path, mode)
  core.umask(old)
  return fh, err
end

--- Open `path` for writing as a private file: created 0600, an existing
-- file truncated ("w") or appended to ("a") and made 0600; a symlink at
-- `path` is refused.
-- @param path the file
-- @param mode "w" (default) or "a"
-- @return file or nil, err
function M.open_private(path, mode)
  local append = mode == "a"
  local ok, err = core.create_private(path, append and "keep" or "truncate")
  if not ok then return nil, err.message end
  return open_umasked(path, append and "a" or "w")
end

--- Create `path` as a new private file: fails when anything (a file, a
-- dangling symlink) is already there (O_EXCL | O_NOFOLLOW semantics).
-- @return file or nil, err, errno
function M.create_new(path)
  local ok, err = core.create_private(path, "new")
  if not ok then return nil, err.message, err.errno end
  return open_umasked(path, "w")
end

local Atomic = {}
Atomic.__index = Atomic

--- Close the temporary file and rename it over the target (with the
-- mode `atomic` was given, set before the rename: the file never shows
-- another).
-- @return true or nil, err
function Atomic:commit()
  if self.done then return true end
  self.done = true
  local ok, err = self.fh:close()
  if not ok then os.remove(self.tmp); return nil, err end
  if self.mode then
    local cerr
    ok, cerr = core.chmod(self.tmp, self.mode)
    if not ok then os.remove(self.tmp); return nil, cerr.message end
  end
  ok, err = os.rename(self.tmp, self.path)
  if not ok then os.remove(self.tmp); return nil, err end
  return true
end

--- Throw the temporary file away; the target is left as it was.
function Atomic:abort()
  if self.done then return end
  self.done = true
  pcall(self.fh.close, self.fh)
  os.remove(self.tmp)
end

--- A private temporary file next to `path` (same directory, so the rename
-- is atomic) that `:commit()` renames over `path`.
-- @param path the file
-- @param mode optional permission bits the file gets when it is complete
--   (default: it stays 0600); only for files that hold no orders
-- @return writer `{fh, path, tmp, commit(), abort()}` or nil, err
function M.atomic(path, mode)
  local dir, base = path:match("^(.*/)([^/]*)$")
  dir, base = dir or "", base or path
  local err
  for _ = 1, 20 do
    local tmp = ("%s.%s.%d%06d.tmp"):format(dir, base, os.time() % 100000, math.random(0, 999999))
    local fh, e = M.create_new(tmp)
    if fh then return setmetatable({ fh = fh, path = path, tmp = tmp, mode = mode }, Atomic) end
    err = e
  end
  return nil, err
end

return M
