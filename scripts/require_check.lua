-- The module graph check of `make lint` (scripts/lint.sh runs it):
--
--   lua5.4 scripts/require_check.lua [--allow FILE] [--graph] FILE...
--
-- 1. No `require` inside a function body. A module's dependencies are
--    stated at its top, where a reader (and a graph tool) sees them; a
--    require hidden in a function is how a circle between modules stays
--    unnoticed. The exceptions are optional dependencies (a module that
--    may be missing — lxp, ffi, the C core on a cjson-only install — or a
--    part loaded on first use), marked explicitly, one of:
--      - the tag `optional-require` in a comment on the require's line
--        (say why after it: `-- optional-require: LuaJIT only`);
--      - `pcall(require, ...)`, which is optional by construction;
--      - a line `FILE MODULE` in the allow file (`--allow`; MODULE as the
--        require names it, `*` for any require of FILE), for code that
--        cannot carry a tag.
-- 2. No circle between the modules of the files given: every require
--    with a literal name counts, optional ones too, so a part loaded on
--    first use must not require its loader back.
--
-- Prints one line per finding (`FILE:LINE: ...`) and exits 1 when there
-- is any. `--graph` prints the edges (`module -> module`) instead.
local args = { ... }
local allow_file, graph_only = nil, false
local files = {}
local i = 1
while i <= #args do
  local a = args[i]
  if a == "--allow" then
    allow_file, i = args[i + 1], i + 1
  elseif a == "--graph" then
    graph_only = true
  else
    files[#files + 1] = a
  end
  i = i + 1
end

local TAG = "optional%-require"

-- The allow list: { [file] = { [module or "*"] = true } }.
local function read_allow(path)
  local allow = {}
  if not path then return allow end
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    line = line:gsub("#.*$", "")
    local file, mod = line:match("^%s*(%S+)%s+(%S+)%s*$")
    if file then
      allow[file] = allow[file] or {}
      allow[file][mod] = true
    end
  end
  f:close()
  return allow
end

-- The tokens of a Lua source that matter here: names, the strings right
-- after `require`, and the punctuation `.`, `:`, `(`, `,`. Comments and
-- strings are skipped (a require inside a string is text, not code); the
-- lines whose comments carry the tag are noted.
local function lex(src)
  local toks, tagged = {}, {}
  local pos, line, n = 1, 1, #src
  local function add(kind, value) toks[#toks + 1] = { kind = kind, value = value, line = line } end
  local function long_bracket(at)
    local eqs = src:match("^%[(=*)%[", at)
    if not eqs then return nil end
    local close = "]" .. eqs .. "]"
    local s, e = src:find(close, at + #eqs + 2, true)
    e = e or n
    local body = src:sub(at + #eqs + 2, (s or n + 1) - 1)
    return body, e + 1
  end
  local function count_lines(s) local _, c = s:gsub("\n", "") return c end
  while pos <= n do
    local c = src:sub(pos, pos)
    if c == "\n" then
      line, pos = line + 1, pos + 1
    elseif c:match("%s") then
      pos = pos + 1
    elseif src:sub(pos, pos + 1) == "--" then
      local body, after = long_bracket(pos + 2)
      if not body then
        local e = src:find("\n", pos, true) or n + 1
        body, after = src:sub(pos, e - 1), e
      end
      if body:find(TAG) then tagged[line] = true end
      line, pos = line + count_lines(body), after
    elseif c == '"' or c == "'" then
      local j = pos + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "\\" then
          if src:sub(j + 1, j + 1) == "\n" then line = line + 1 end
          j = j + 2
        elseif d == c or d == "\n" then
          break
        else
          j = j + 1
        end
      end
      add("string", src:sub(pos + 1, j - 1))
      pos = j + 1
    elseif c == "[" and src:match("^%[=*%[", pos) then
      local body, after = long_bracket(pos)
      add("string", body)
      line, pos = line + count_lines(body), after
    elseif c:match("[%a_]") then
      local name = src:match("^[%w_]+", pos)
      add("name", name)
      pos = pos + #name
    elseif c:match("%d") then
      pos = pos + #src:match("^[%w%.]+", pos)
    else
      add("punct", c)
      pos = pos + 1
    end
  end
  return toks, tagged
end

local OPENS = { ["function"] = "function", ["do"] = "do", ["if"] = "if", ["repeat"] = "repeat" }

-- The requires of one file: { {line =, module = name or nil, in_function =,
-- optional = } }.
local function requires_of(src)
  local toks, tagged = lex(src)
  local found, stack, depth = {}, {}, 0
  for k, t in ipairs(toks) do
    if t.kind == "name" then
      local prev = toks[k - 1]
      local after_dot = prev and prev.kind == "punct" and (prev.value == "." or prev.value == ":")
      local opens = not after_dot and OPENS[t.value]
      if opens then
        stack[#stack + 1] = opens
        if opens == "function" then depth = depth + 1 end
      elseif not after_dot and (t.value == "end" or t.value == "until") then
        local top = table.remove(stack)
        if top == "function" then depth = depth - 1 end
      elseif t.value == "require" and not after_dot then
        local nxt, nxt2 = toks[k + 1], toks[k + 2]
        local module
        if nxt and nxt.kind == "string" then
          module = nxt.value
        elseif nxt and nxt.value == "(" and nxt2 and nxt2.kind == "string" and toks[k + 3]
          and toks[k + 3].value == ")" then
          module = nxt2.value
        end
        local pcalled = prev and prev.value == "(" and toks[k - 2] and toks[k - 2].kind == "name"
          and (toks[k - 2].value == "pcall" or toks[k - 2].value == "xpcall")
        if pcalled and nxt and nxt.value == "," and toks[k + 2] and toks[k + 2].kind == "string" then
          module = toks[k + 2].value
        end
        found[#found + 1] = { line = t.line, module = module, in_function = depth > 0,
          optional = tagged[t.line] or pcalled or false }
      end
    end
  end
  return found
end

-- lua/optimizely/offline/cli/cmd/send.lua -> optimizely.offline.cli.cmd.send
local function module_of(path)
  local rel = path:match("^lua/(.+)%.lua$")
  if not rel then return nil end
  return (rel:gsub("/init$", ""):gsub("/", "."))
end

local allow = read_allow(allow_file)
local problems = {}
local edges, modules = {}, {}
for _, path in ipairs(files) do
  local f = assert(io.open(path, "rb"))
  local src = f:read("a")
  f:close()
  local from = module_of(path) or path
  modules[from] = path
  edges[from] = edges[from] or {}
  for _, r in ipairs(requires_of(src)) do
    local listed = allow[path] and (allow[path]["*"] or (r.module and allow[path][r.module]))
    if r.in_function and not r.optional and not listed then
      problems[#problems + 1] = ("%s:%d: require(%s) inside a function: move it to the top of the file,"
        .. " or mark an optional dependency with a comment tag `optional-require: why`")
        :format(path, r.line, r.module and ("%q"):format(r.module) or "...")
    end
    if r.module then edges[from][r.module] = edges[from][r.module] or r.line end
  end
end

if graph_only then
  local names = {}
  for m in pairs(edges) do names[#names + 1] = m end
  table.sort(names)
  for _, m in ipairs(names) do
    local to = {}
    for d in pairs(edges[m]) do if modules[d] then to[#to + 1] = d end end
    table.sort(to)
    for _, d in ipairs(to) do print(m .. " -> " .. d) end
  end
  os.exit(0)
end

-- Circles: the strongly connected components (Tarjan) of more than one
-- module, or a module requiring itself.
local index, low, on, st, count = {}, {}, {}, {}, 0
local circles = {}
local function connect(v)
  count = count + 1
  index[v], low[v] = count, count
  st[#st + 1], on[v] = v, true
  local ds = {}
  for d in pairs(edges[v] or {}) do if modules[d] then ds[#ds + 1] = d end end
  table.sort(ds)
  for _, d in ipairs(ds) do
    if not index[d] then
      connect(d)
      low[v] = math.min(low[v], low[d])
    elseif on[d] then
      low[v] = math.min(low[v], index[d])
    end
  end
  if low[v] == index[v] then
    local comp = {}
    repeat
      local w = table.remove(st)
      on[w] = nil
      comp[#comp + 1] = w
    until w == v
    if #comp > 1 or (edges[v] and edges[v][v]) then
      table.sort(comp)
      circles[#circles + 1] = comp
    end
  end
end
local names = {}
for m in pairs(modules) do names[#names + 1] = m end
table.sort(names)
for _, m in ipairs(names) do if not index[m] then connect(m) end end
for _, comp in ipairs(circles) do
  local inside, ties = {}, {}
  for _, m in ipairs(comp) do inside[m] = true end
  for _, m in ipairs(comp) do
    for d, line in pairs(edges[m]) do
      if inside[d] then ties[#ties + 1] = ("%s:%d (%s -> %s)"):format(modules[m], line, m, d) end
    end
  end
  table.sort(ties)
  problems[#problems + 1] = "modules in a circle: " .. table.concat(comp, ", ") .. "; tied by "
    .. table.concat(ties, ", ")
end

for _, p in ipairs(problems) do print(p) end
os.exit(#problems == 0 and 0 or 1)
