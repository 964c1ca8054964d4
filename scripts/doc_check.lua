--- The API reference and its checker (`make docs`; CI). Run with lua5.1
-- (Debian's luacheck, whose parser it uses, is installed for 5.1):
--
--     lua5.1 scripts/doc_check.lua [--strict] [--no-html] [--list] [--self-test]
--
-- 1. Builds the reference with LDoc (config.ld) into build/docs and keeps
--    LDoc's warnings.
-- 2. Lists the public functions of every module under lua/ by parsing the
--    sources (luacheck's parser, so strings and comments never confuse it):
--    the functions reachable from the table a module returns (`M.f`,
--    `M.sub.f`, the fields of `return {...}` and of `local M = {...}`, and
--    `M.f = some_local_function`), and the methods of the objects it hands
--    out: every `function C:m` / `C.m = function` of a table `C` used as a
--    metatable (`C.__index = C`, `setmetatable(x, C)`, `{__index = C}`) when
--    the module exports `C` or documents it (an `@type C`, or any of its
--    methods); a class with neither is internal (`--list` names them).
--    Names starting with `_` (metamethods included) are not public.
-- 3. A module is documented when LDoc made a module of its file (a `---`
--    comment at the top, `@module name`). A public function is documented
--    when LDoc itself documented it: LDoc has an item at its definition
--    line (or, for `M.f = f`, at f's). So a `---` comment LDoc cannot parse
--    counts as missing, as it is missing from the reference.
-- Prints `file:line: name undocumented` for each, and LDoc's warnings, also
-- into build/docs/undocumented.txt. Exits 1 with `--strict` (or
-- DOCS_STRICT=1) if there is any; otherwise 0 (only a broken build fails).
--
-- Loaded by LDoc as `--filter doc_check.items` (step 3), this file is a
-- module instead.
local M = {}

--- LDoc filter: prints a `MODULE<TAB>file<TAB>name` line per module and an
-- `ITEM<TAB>file<TAB>line<TAB>name<TAB>type` line per documented item, for
-- the checker to read.
-- @param modules LDoc's module list
function M.items(modules)
  for mod in modules:iter() do
    io.write("MODULE\t", tostring(mod.file), "\t", tostring(mod.name), "\n")
    for item in mod.items:iter() do
      io.write("ITEM\t", tostring(mod.file), "\t", tostring(item.lineno), "\t", tostring(item.name), "\t",
        tostring(item.type), "\n")
    end
  end
end

if ... == "doc_check" then return M end

----------------------------------------------------------------------------
-- the script

local STRICT = os.getenv("DOCS_STRICT") == "1"
local HTML, LIST, SELF_TEST = true, false, false
for _, a in ipairs(arg) do
  if a == "--strict" then STRICT = true
  elseif a == "--no-html" then HTML = false
  elseif a == "--list" then LIST = true -- every public function found, documented or not
  elseif a == "--self-test" then SELF_TEST = true
  else
    io.stderr:write("usage: lua5.1 scripts/doc_check.lua [--strict] [--no-html] [--list] [--self-test]\n")
    os.exit(2)
  end
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Output and success of a shell command. Lua 5.1's popen close tells
-- nothing about the exit status, so the shell reports it on a last line.
local function capture(cmd)
  local p = assert(io.popen("(" .. cmd .. "); echo \"__EXIT__ $?\"", "r"))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__EXIT__ (%d+)%s*$")) or 1
  out = out:gsub("__EXIT__ %d+%s*$", "")
  return out, code == 0, code
end

local root = capture("pwd"):gsub("%s+$", "")
local function rel(path) return (path:gsub("^" .. root:gsub("%p", "%%%0") .. "/", "")) end

-- 1. the HTML, and LDoc's warnings ---------------------------------------
local warnings = {}
local function ldoc_warnings(out)
  for line in out:gmatch("[^\n]+") do
    if line:match("^%S+:%d+: ") or line:match("[Ww]arning") then warnings[#warnings + 1] = rel(line) end
  end
end
if HTML and not SELF_TEST then
  local out, ok = capture("ldoc --testing . 2>&1")
  if not ok then io.stderr:write(out, "doc_check: ldoc failed\n"); os.exit(1) end
  ldoc_warnings(out)
end

-- 2. what LDoc documented --------------------------------------------------
local documented = {} -- "file:line" -> true
local modules = {} -- file -> module name, for the files LDoc made a module of
local types = {} -- "file:Name" -> true for each LDoc @type
if not SELF_TEST then
  local out, ok = capture("LUA_PATH=" .. q(root .. "/scripts/?.lua;;") .. " ldoc --filter doc_check.items . 2>&1")
  if not ok then io.stderr:write(out, "doc_check: ldoc --filter failed\n"); os.exit(1) end
  for file, line, name, kind in out:gmatch("ITEM\t([^\t]+)\t(%d+)\t([^\t]*)\t([^\n]*)") do
    documented[rel(file) .. ":" .. line] = true
    if kind == "type" then types[rel(file) .. ":" .. name] = true end
  end
  for file, name in out:gmatch("MODULE\t([^\t]+)\t([^\n]*)") do modules[rel(file)] = name end
  if not HTML then ldoc_warnings((out:gsub("ITEM\t[^\n]*\n", ""):gsub("MODULE\t[^\n]*\n", ""))) end
end

-- 3. the public functions, from the sources --------------------------------
local okp, parser = pcall(require, "luacheck.parser")
local okd, decoder = pcall(require, "luacheck.decoder")
if not (okp and okd) then
  io.stderr:write("doc_check: needs luacheck's parser (Debian lua-check) under lua5.1\n")
  os.exit(1)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- `a.b.c` of an Index chain rooted at an Id: root name, { "b", "c" }; or nil
local function chain(node)
  local keys = {}
  while node.tag == "Index" do
    if node[2].tag ~= "String" then return nil end
    table.insert(keys, 1, node[2][1])
    node = node[1]
  end
  if node.tag ~= "Id" then return nil end
  return node[1], keys
end

local function is_method(fn)
  local params = fn[1]
  return params and params[1] and params[1].tag == "Id" and params[1].implicit and params[1][1] == "self"
end

-- Every statement of the file's main chunk, `do ... end` blocks flattened.
local function top_statements(ast)
  local out = {}
  local function walk(block)
    for _, st in ipairs(block) do
      if st.tag == "Do" then walk(st) else out[#out + 1] = st end
    end
  end
  walk(ast)
  return out
end

-- Tables used as metatables anywhere in the file: `C.__index = C`,
-- `setmetatable(x, C)`, `{ __index = C }`.
local function find_classes(ast)
  local classes = {}
  local function visit(node)
    if type(node) ~= "table" then return end
    if node.tag == "Set" then
      for i, lhs in ipairs(node[1]) do
        local name, keys = chain(lhs)
        local rhs = node[2][i]
        if name and #keys == 1 and keys[1] == "__index" and rhs and rhs.tag == "Id" and rhs[1] == name then
          classes[name] = true
        end
      end
    elseif node.tag == "Call" and node[1].tag == "Id" and node[1][1] == "setmetatable" then
      local mt = node[3]
      if mt and mt.tag == "Id" then classes[mt[1]] = true end
    elseif node.tag == "Pair" and node[1].tag == "String" and node[1][1] == "__index" and node[2].tag == "Id" then
      classes[node[2][1]] = true
    end
    for _, child in ipairs(node) do visit(child) end
  end
  visit(ast)
  return classes
end

local function public_name(name) return name:sub(1, 1) ~= "_" end

-- The public functions of one file: a list of { line, name, alt, class }
-- (alt: the line of the local function `M.f = f` names; class: the metatable
-- a method belongs to), and the set of classes the module exports
-- (`M.Client = Client`, `return { Client = Client }`).
local function public_functions(src)
  local ast = parser.parse(decoder.decode(src))
  local stats = top_statements(ast)
  local last = stats[#stats]
  local module_name, module_table
  if last and last.tag == "Return" and #last == 1 then
    if last[1].tag == "Id" then module_name = last[1][1]
    elseif last[1].tag == "Table" then module_table = last[1] end
  end
  local classes = find_classes(ast)
  local local_fns = {} -- name -> line of `local function name` / `local name = function`
  local found, exported = {}, {}
  local function add(line, name, alt, class)
    found[#found + 1] = { line = line, name = name, alt = alt, class = class }
  end
  local function table_fields(tbl, prefix)
    for _, pair in ipairs(tbl) do
      if pair.tag == "Pair" and pair[1].tag == "String" and public_name(pair[1][1]) then
        local v, key = pair[2], prefix .. pair[1][1]
        if v.tag == "Function" then add(pair.line or v.line, key)
        elseif v.tag == "Id" and local_fns[v[1]] then add(pair.line or v.line, key, local_fns[v[1]])
        elseif v.tag == "Id" and classes[v[1]] then exported[v[1]] = true
        elseif v.tag == "Table" then table_fields(v, key .. ".") end
      end
    end
  end
  for _, st in ipairs(stats) do
    if st.tag == "Localrec" then
      local_fns[st[1][1][1]] = st.line
    elseif st.tag == "Local" then
      for i, id in ipairs(st[1]) do
        local v = st[2] and st[2][i]
        if v and v.tag == "Function" then local_fns[id[1]] = st.line end
        if v and v.tag == "Table" and id[1] == module_name then table_fields(v, "") end
      end
    elseif st.tag == "Set" then
      for i, lhs in ipairs(st[1]) do
        local name, keys = chain(lhs)
        local v = st[2][i]
        if name and #keys >= 1 and v and public_name(keys[#keys]) then
          local dotted = table.concat(keys, ".")
          if name == module_name then
            if v.tag == "Function" then add(st.line, dotted)
            elseif v.tag == "Id" and local_fns[v[1]] then add(st.line, dotted, local_fns[v[1]])
            elseif v.tag == "Id" and classes[v[1]] then exported[v[1]] = true
            elseif v.tag == "Table" then table_fields(v, dotted .. ".") end
          elseif classes[name] and #keys == 1 and v.tag == "Function" then
            add(st.line, name .. (is_method(v) and ":" or ".") .. keys[1], nil, name)
          end
        end
      end
    end
  end
  if module_table then table_fields(module_table, "") end
  return found, exported
end

-- `--self-test`: the source walk against known answers.
if SELF_TEST then
  local cases = {
    { [[
local M = { a = function() end, _hidden = function() end }
local C = {}
C.__index = C
local Helper = {}
local function f() end
local function g() end
function M.b() end
M.c = f
M.sub = { d = function() end, e = g }
function M.sub.x() end
function C:m() end
function C.n() end
function C:_private() end
function C:__tostring() end
function Helper:not_a_class() end
function M.make() local o = {} function o.inner() end return setmetatable(o, C) end
do function M.in_do() end end
M.Class = C
return M
]], "a@1 b@7 c@8 sub.d@9 sub.e@9 sub.x@10 C:m@11 C.n@12 make@16 in_do@17 exported:C" },
    { [[
local function new() end
local Obj = {}
function Obj:go() end
return { new = new, go = function() end, meta = setmetatable({}, { __index = Obj }) }
]], "Obj:go@3 new@4 go@4 exported:" },
  }
  local bad = 0
  for i, case in ipairs(cases) do
    local got = {}
    local found, exported = public_functions(case[1])
    for _, fn in ipairs(found) do got[#got + 1] = fn.name .. "@" .. fn.line end
    local names = {}
    for name in pairs(exported) do names[#names + 1] = name end
    table.sort(names)
    got[#got + 1] = "exported:" .. table.concat(names, ",")
    local g = table.concat(got, " ")
    if g ~= case[2] then
      bad = bad + 1
      io.stderr:write(("doc_check self-test %d:\n  want %s\n  got  %s\n"):format(i, case[2], g))
    end
  end
  print(("doc_check: self-test %s"):format(bad == 0 and "ok" or "FAILED"))
  os.exit(bad == 0 and 0 or 1)
end

local files = {}
for path in capture("find lua -name '*.lua' | sort"):gmatch("[^\n]+") do files[#files + 1] = path end

local missing, total, bad_modules, internal = {}, 0, 0, {}
for _, path in ipairs(files) do
  local src = read(path)
  local ok, found, exported = pcall(public_functions, src)
  if not ok then
    io.stderr:write(path, ": cannot parse: ", tostring(found), "\n")
    os.exit(1)
  end
  if not modules[path] then
    bad_modules = bad_modules + 1
    missing[#missing + 1] = ("%s:1: module %s undocumented (no --- comment with @module at the top)")
      :format(path, path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", "."))
  end
  local source_lines = {}
  for line in (src .. "\n"):gmatch("([^\n]*)\n") do source_lines[#source_lines + 1] = line end
  -- A metatable's methods are public when the module hands its objects out:
  -- it exports the table, or documents the class (a @type, or any method).
  -- Otherwise it is the module's own machinery (batch.lua's Batch).
  local public_class = {}
  for _, f in ipairs(found) do
    if f.class and (exported[f.class] or types[path .. ":" .. f.class] or documented[path .. ":" .. f.line]) then
      public_class[f.class] = true
    end
  end
  for _, f in ipairs(found) do
    if f.class and not public_class[f.class] then
      if not internal[path .. ":" .. f.class] then
        internal[path .. ":" .. f.class] = true
        internal[#internal + 1] = path .. ": " .. f.class
        if LIST then print(("%s: %s: internal (not exported, nothing of it documented)"):format(path, f.class)) end
      end
    else
      total = total + 1
      local ok_doc = documented[path .. ":" .. f.line] or (f.alt and documented[path .. ":" .. f.alt])
      if LIST then print(("%s:%d: %s %s"):format(path, f.line, f.name, ok_doc and "documented" or "UNDOCUMENTED")) end
      if not ok_doc then
        -- a `---` comment right above that LDoc did not take: say so
        local above = source_lines[f.line - 1] or ""
        local hint = above:match("^%s*%-%-%-") and " (LDoc does not read the --- comment above it)" or ""
        missing[#missing + 1] = ("%s:%d: %s undocumented%s"):format(path, f.line, f.name, hint)
      end
    end
  end
end

-- 4. the report -------------------------------------------------------------
local lines = {}
for _, w in ipairs(warnings) do lines[#lines + 1] = w end
for _, m in ipairs(missing) do lines[#lines + 1] = m end
local summary = ("doc_check: %d modules, %d public functions: %d module(s) and %d function(s) undocumented;"
  .. " %d LDoc warning(s); %d internal class(es) not checked"):format(#files, total, bad_modules,
  #missing - bad_modules, #warnings, #internal)
if #lines > 0 then print(table.concat(lines, "\n")) end
print(summary .. (HTML and "; reference in build/docs/index.html" or ""))
os.execute("mkdir -p build/docs")
local f = io.open("build/docs/undocumented.txt", "w")
if f then
  f:write(table.concat(lines, "\n"), #lines > 0 and "\n" or "", summary, "\n")
  f:close()
end
if #lines > 0 then
  if STRICT then os.exit(1) end
  print("(not failing: DOCS_STRICT=1 or --strict makes this fail)")
end
