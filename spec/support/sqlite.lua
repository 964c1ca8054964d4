-- Helpers the SQLite-file specs (spool_spec, ledger_spec) share: the sqlite3
-- shell (optional: the cases that need it are pending without it), child
-- scripts that load this process's build, and a scratch directory.
local sys = require("optimizely.offline.sys")

local M = {}

--- Is the sqlite3 shell installed?
function M.has_cli()
  local r = os.execute("command -v sqlite3 >/dev/null 2>&1")
  return r == true or r == 0 -- 5.2+ / 5.1
end

--- Runs `sql` on the file with the sqlite3 shell; its output, trailing space cut.
function M.cli(path, sql)
  local p = assert(io.popen("sqlite3 " .. sys.q(path) .. " " .. sys.q(sql) .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

--- Writes dir/name.lua: `src` after this process's package paths, so the
-- child loads the same build. Returns its path.
function M.child_script(dir, name, src)
  local path = ("%s/%s.lua"):format(dir, name)
  local f = assert(io.open(path, "wb"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath))
  f:write(src)
  f:close()
  return path
end

--- A fresh scratch directory named after `tag` (remove it with `sys.run("rm -rf ...")`).
function M.tmpdir(tag)
  local base = os.tmpname()
  os.remove(base)
  local dir = base .. "." .. tag
  assert(sys.run("mkdir -p " .. sys.q(dir)))
  return dir
end

return M
