-- scripts/require_check.lua, the lint check that keeps requires at the top
-- of a module and the modules out of circles (scripts/lint.sh runs it).
local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d .. "/lua/m'"))
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- Runs the check in `dir` over `files`; returns its exit status and output.
local function check(dir, files, allow)
  local script = os.getenv("PWD") .. "/scripts/require_check.lua"
  local cmd = "cd '" .. dir .. "' && lua5.4 '" .. script .. "'"
    .. (allow and (" --allow '" .. allow .. "'") or "") .. " " .. table.concat(files, " ") .. " 2>&1; echo \"exit $?\""
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  local body, code = out:match("^(.-)exit (%d+)%s*$") -- Lua 5.1's close() has no exit status
  return code == "0", body
end

describe("require_check", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("refuses a require inside a function, naming the file, line and module", function()
    write(dir .. "/lua/m/a.lua", 'local M = {}\nfunction M.f()\n  return require("m.b").x\nend\nreturn M\n')
    write(dir .. "/lua/m/b.lua", 'return { x = 1 }\n')
    local ok, out = check(dir, { "lua/m/a.lua", "lua/m/b.lua" })
    assert.is_false(ok)
    assert.matches('lua/m/a.lua:3: require%("m.b"%) inside a function', out)
  end)

  it("accepts requires at the top, in strings and comments, and marked optional ones", function()
    write(dir .. "/lua/m/a.lua", table.concat({
      'local b = require("m.b")',
      'local conf = [[ content_by_lua_block { require("m.c").run() } ]]',
      '-- function() require("m.c") end',
      'local M = {}',
      'function M.f()',
      '  if b.x then',
      '    local ok, ffi = pcall(require, "ffi")',
      '    local lxp = require("lxp") -- optional-require: XML only',
      '    return ok and ffi, lxp, "require(\'m.c\')", conf',
      '  end',
      '  for _ = 1, 2 do repeat local _ = 1 until true end',
      'end',
      'return M', "" }, "\n"))
    write(dir .. "/lua/m/b.lua", 'return { x = 1 }\n')
    local ok, out = check(dir, { "lua/m/a.lua", "lua/m/b.lua" })
    assert.is_true(ok, out)
    assert.equal("", out)
  end)

  it("accepts what the allow list names, and only that", function()
    write(dir .. "/lua/m/a.lua", 'return function() return require("m.b"), require("m.c") end\n')
    write(dir .. "/lua/m/b.lua", 'return 1\n')
    write(dir .. "/lua/m/c.lua", 'return 2\n')
    write(dir .. "/allow", "# why\nlua/m/a.lua m.b\n")
    local ok, out = check(dir, { "lua/m/a.lua", "lua/m/b.lua", "lua/m/c.lua" }, "allow")
    assert.is_false(ok)
    assert.not_matches('"m.b"', out)
    assert.matches('require%("m.c"%) inside a function', out)
    write(dir .. "/allow", "lua/m/a.lua *\n")
    ok, out = check(dir, { "lua/m/a.lua", "lua/m/b.lua", "lua/m/c.lua" }, "allow")
    assert.is_true(ok, out)
  end)

  it("finds a circle, an optional require in it too, and names what ties it", function()
    write(dir .. "/lua/m/a.lua", 'local b = require("m.b")\nreturn { b = b }\n')
    write(dir .. "/lua/m/b.lua", 'return { f = function() return require("m.a") end } -- optional-require: lazy\n')
    local ok, out = check(dir, { "lua/m/a.lua", "lua/m/b.lua" })
    assert.is_false(ok)
    assert.matches("modules in a circle: m.a, m.b", out)
    assert.matches("lua/m/a.lua:1 %(m.a %-> m.b%)", out)
    assert.matches("lua/m/b.lua:1 %(m.b %-> m.a%)", out)
  end)

  it("passes over this repository's modules", function()
    local files = {}
    local p = assert(io.popen("find lua -name '*.lua' | sort"))
    for f in p:lines() do files[#files + 1] = f end
    p:close()
    local ok, out = check(os.getenv("PWD"), files, os.getenv("PWD") .. "/scripts/optional_requires.txt")
    assert.is_true(ok, out)
  end)
end)
