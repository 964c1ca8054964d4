-- luacheck (Debian lua-check) settings: `make lint`.
-- One source runs on Lua 5.1, LuaJIT, 5.3 and 5.4: allow the union of their
-- standard globals (jit, bit, unpack, table.unpack, ...).
std = "max"
max_line_length = 120
-- `self` unused in a method is the method's shape, not a mistake.
self = false

-- OpenResty: the nginx paths, the sandbox's handler, the nginx example.
local ngx_files = {
   "lua/optimizely/offline/ngx.lua",
   "lua/optimizely/offline/ngx/",
   "lua/optimizely/offline/sandbox/",
   "examples/openresty/",
   "spec/support/nginx.lua",
   "bench/nginx_hook.lua",
}
for _, f in ipairs(ngx_files) do
   files[f] = { std = "max+ngx_lua" } -- luacheck's own model of the ngx API
end

files["spec/"] = { std = "+busted" }
files["spec/support/nginx.lua"] = { std = "max+busted+ngx_lua" }
files[".busted"] = { std = "+busted" }
-- a transform with a syntax error, on purpose (the CLI reports it)
exclude_files = { "spec/fixtures/cli/transform-syntax.lua" }
-- wrk's scripting API: the wrk table and the hooks it calls.
files["bench/wrk_post.lua"] = {
   globals = { "wrk", "init", "setup", "request", "response", "done", "delay" },
}
