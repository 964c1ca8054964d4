-- The Lua interpreter command that runs this spec, for child processes that
-- must load the same build of the C core: $OO_LUA when set (the ASan suite
-- runs under build/asan-lua, whose children must too), else by version.
local v = os.getenv("OO_LUA")
if v and v ~= "" then return v end
if type(jit) == "table" then return "luajit" end
return "lua" .. _VERSION:match("%d+%.%d+")
