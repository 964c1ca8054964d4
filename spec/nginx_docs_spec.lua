-- nginx from the docs (issue 20): every configuration doc/topics/openresty.md
-- shows runs on a real nginx as written, and an order goes through it to
-- the sandbox; an error that stops the queue shows its message in the error
-- log however it is raised or asserted (nginx prints a raised table as
-- "unknown error"); the example's launcher declares the variable its
-- --token-env names and keeps the spool out of /tmp.
--
-- What the spec changes in a block, as a reader changes it for their
-- machine: the paths (/opt/optimizely-offline: a copy of this checkout's lua/ and build/jit/;
-- /var/lib/optimizely-offline: a temporary directory; /usr/local: a
-- LuaRocks-like tree copied from this checkout; the CA bundle: the sandbox's CA),
-- the endpoint (`site = "mysite"` and `env = "uk"`: the sandbox) and the
-- port. It adds what a distribution's nginx.conf holds around it: the
-- load_module lines, pid, error_log and temporary paths.
local nginx = require("support.nginx")
local sb = require("support.sandbox")
local launch = dofile("examples/openresty/launch.lua")

local ROOT = launch.root()
local DOC = "doc/topics/openresty.md"
local q = nginx.q

local function is_root() return nginx.capture("id -u"):match("^%s*0%s*$") ~= nil end

--- The fenced code blocks of a markdown file: `{lang =, text =, line =}`.
local function blocks(path)
  local out, cur = {}, nil
  local n = 0
  for line in (assert(nginx.read_file(path)) .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if cur then
      if line:match("^```%s*$") then out[#out + 1] = cur; cur = nil
      else cur.text = cur.text .. line .. "\n" end
    else
      local lang = line:match("^```(%S*)")
      if lang then cur = { lang = lang, text = "", line = n + 1 } end
    end
  end
  return out
end

-- The doc's complete configuration (the nginx block with an http block).
local function complete_block()
  for _, b in ipairs(blocks(DOC)) do
    if b.lang == "nginx" and b.text:find("\nhttp {\n", 1, true) then return b end
  end
  error(DOC .. " has no complete nginx configuration")
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- Copies, not links: the doc's `user www-data;` runs the workers as another
-- user, who may not be able to reach this checkout (a clone under a 0700
-- directory), as it could not reach a home directory after a real install.
local function copy_readable(from, to)
  assert(nginx.run(("mkdir -p %s && cp -R %s %s && chmod -R a+rX %s")
    :format(q(to:match("^(.*)/[^/]*$")), q(from), q(to), q(to))))
end

-- The checkout as /opt/optimizely-offline holds it: lua/ and the LuaJIT build.
local function opt_tree(dir)
  local t = dir .. "/opt"
  copy_readable(ROOT .. "/lua", t .. "/lua")
  copy_readable(ROOT .. "/build/jit/optimizely", t .. "/build/jit/optimizely")
  return t
end

-- A LuaRocks-like tree (share/lua/5.1, lib/lua/5.1) of this checkout.
local function rock_tree(dir)
  local t = dir .. "/rock"
  copy_readable(ROOT .. "/lua/optimizely", t .. "/share/lua/5.1/optimizely")
  copy_readable(ROOT .. "/build/jit/optimizely", t .. "/lib/lua/5.1/optimizely")
  return t
end

-- A block as this machine runs it (see the file's header).
local function substitute(text, env)
  local info = env.info
  local subs = {
    { "/opt/optimizely-offline", env.opt },
    { "/var/lib/optimizely-offline", env.dir .. "/lib" },
    { "/usr/local", env.rock },
    { "/etc/ssl/certs/ca-certificates.crt", env.ca },
    { 'site = "mysite"', ('site = %q, base_url = %q'):format(info.site, info.base_url) },
    { ', env = "uk"', "" },
    { "listen 8080;", ("listen 127.0.0.1:%d;"):format(env.port or 8080) },
  }
  for _, s in ipairs(subs) do text = text:gsub(plain(s[1]), (s[2]:gsub("%%", "%%%%"))) end
  if not is_root() then text = text:gsub("\nuser [^\n]*\n", "\n"):gsub("^user [^\n]*\n", "") end
  return text
end

-- The complete configuration of the doc, as nginx runs it here.
local function runnable(conf, env)
  local main = table.concat({
    launch.defaults().load_modules, ("pid %q;"):format(env.dir .. "/nginx.pid"),
    ("lock_file %q;"):format(env.dir .. "/nginx.lock"),
    ("error_log %q info;"):format(env.dir .. "/logs/error.log"), "" }, "\n")
  local harness = write(env.dir .. "/harness.conf", table.concat({
    "access_log off;",
    ("client_body_temp_path %q;"):format(env.dir .. "/tmp/body"),
    ("proxy_temp_path %q;"):format(env.dir .. "/tmp/proxy"),
    ("fastcgi_temp_path %q;"):format(env.dir .. "/tmp/fastcgi"),
    ("uwsgi_temp_path %q;"):format(env.dir .. "/tmp/uwsgi"),
    ("scgi_temp_path %q;"):format(env.dir .. "/tmp/scgi"), "" }, "\n"))
  local body, n = conf:gsub("\nhttp {\n", ("\nhttp {\n  include %q;\n"):format(harness), 1)
  assert(n == 1, "no http block")
  return main .. body
end

-- A fresh directory nginx's workers can reach, with the sandbox's CA in it.
local function fresh_env(info, tag)
  local dir = nginx.mktemp(tag)
  assert(nginx.run(("chmod 755 %s && mkdir -p %s/logs %s/tmp && cp %s %s/ca.crt && chmod 644 %s/ca.crt")
    :format(q(dir), q(dir), q(dir), q(info.ca_file), q(dir), q(dir))))
  return { dir = dir, info = info, ca = dir .. "/ca.crt", rock = rock_tree(dir), opt = opt_tree(dir) }
end

-- Starts nginx on `conf_of(env)` with the token in its environment.
local function start(env, conf_of)
  return nginx.start({ dir = env.dir, health = "/nginx-health", env = env.nginx_env or
    { OPTIMIZELY_SITE_TOKEN = env.info.token },
    write = function(port)
      env.port = port
      local text = runnable(conf_of(env), env)
      -- a location nginx answers itself, so the start is seen even when the queue is down
      text = text:gsub("\n    listen ", "\n    location = /nginx-health { return 200; }\n    listen ", 1)
      return write(env.dir .. "/nginx.conf", text)
    end })
end

local uid = 0
local function order_json(ref)
  return ('{"user":{"id":"doc-1"},"order":{"refCode":"%s","orderDate":"2016-05-16T14:25:00 GMT",'
    .. '"currency":"GBP","total":"21.00","items":[{"refCode":"sku-1","qty":2,"price":"10.50"}]}}'):format(ref)
end

-- POSTs an order to /pos/orders and waits until the sandbox has it.
local function send_through(inst, tag)
  uid = uid + 1
  local ref = ("DOC-%s-%d-%d"):format(tag, os.time(), uid)
  local res = inst:request("/pos/orders", { method = "POST", body = order_json(ref) })
  assert.equal(202, res.status, res.body .. "\n" .. inst:error_log())
  local got = nginx.wait_until(function() return #sb.orders({ refCode = ref }) > 0 end, 20)
  assert.truthy(got, "the order did not reach the sandbox:\n" .. inst:error_log())
  return ref
end

describe("openresty.md's configurations", function()
  local info, docs, complete
  setup(function()
    info = sb.ensure()
    docs = blocks(DOC)
    complete = complete_block()
  end)

  -- the doc's own commands around the configuration (the spool's directory)
  local function prepare(env)
    for _, b in ipairs(docs) do
      if b.lang == "sh" and b.text:match("^install %-d") then
        local cmd = substitute(b.text, env)
        if not is_root() then cmd = cmd:gsub("%-o %S+ %-g %S+ ", "") end
        assert(nginx.run(cmd), DOC .. ":" .. b.line .. ": " .. cmd)
      end
    end
  end

  it("the complete configuration starts, and an order goes through it to the sandbox", function()
    local env = fresh_env(info, "doc-complete")
    prepare(env)
    local inst = start(env, function(e) return substitute(complete.text, e) end)
    local ok, err = pcall(send_through, inst, "complete")
    inst:destroy()
    assert(ok, err)
  end)

  it("every other nginx block (the install paths) and Lua block (the queue) runs in it", function()
    local tried = 0
    for _, b in ipairs(docs) do
      local variant
      if b.lang == "nginx" and b.line ~= complete.line then
        -- path directives: they replace the complete configuration's own
        variant = function(e)
          local conf = substitute(complete.text, e)
          for directive in b.text:gmatch("\n?%s*(lua_package_c?path)%s") do
            conf = conf:gsub("\n%s*" .. directive .. "%s[^\n]*", "", 1)
          end
          local lines = substitute(b.text, e):gsub("%s*#[^\n]*", "")
          return (conf:gsub("\nhttp {\n", function() return "\nhttp {\n" .. lines .. "\n" end, 1))
        end
      elseif b.lang == "lua" and b.text:find(".queue(", 1, true) then
        -- a queue: it replaces the complete configuration's init_worker
        variant = function(e)
          local conf = substitute(complete.text, e)
          return (conf:gsub("init_worker_by_lua_block {\n.-\n  }\n", function()
            return "init_worker_by_lua_block {\n" .. substitute(b.text, e) .. "\n  }\n"
          end, 1))
        end
      end
      if variant then
        tried = tried + 1
        local env = fresh_env(info, "doc-block")
        prepare(env)
        local ok, inst = pcall(start, env, variant)
        assert(ok, DOC .. ":" .. b.line .. ": " .. tostring(inst))
        local sent, err = pcall(send_through, inst, "block" .. b.line)
        inst:destroy()
        assert(sent, DOC .. ":" .. b.line .. ": " .. tostring(err))
      end
    end
    assert.is_true(tried >= 3, "the install paths and the pipelined queue")
  end)
end)

describe("an error that stops the queue in nginx", function()
  local info
  setup(function() info = sb.ensure() end)

  -- the complete configuration's init_worker replaced by `body`, the spool
  -- in a place no one can create it (under a file)
  local function broken(body)
    local env = fresh_env(info, "doc-broken")
    write(env.dir .. "/notadir", "")
    local inst = start(env, function(e)
      return (substitute(complete_block().text, e):gsub("init_worker_by_lua_block {\n.-\n  }\n", function()
        return "init_worker_by_lua_block {\n" .. body:gsub("SPOOL", e.dir .. "/notadir/orders.db") .. "\n  }\n"
      end, 1))
    end)
    local res = inst:request("/pos/orders", { method = "POST", body = order_json("never") })
    local log = inst:error_log()
    inst:destroy()
    return res, log
  end

  local QUEUE = 'require("optimizely.offline.ngx").queue({ site = "s", token = "tok-12345678", channel = "store" }, '
    .. '{ spool = "SPOOL" })'

  it("shows its message however it is raised or asserted", function()
    for _, body in ipairs({
      "ORDERS = assert(" .. QUEUE .. ")",                                      -- the table asserted
      "local q, err = " .. QUEUE .. "\nif not q then error(err) end",          -- the table raised
      "local q, err = " .. QUEUE .. "\nif not q then error(tostring(err), 0) end\nORDERS = q", -- as the doc says
    }) do
      local res, log = broken(body)
      assert.equal(503, res.status, body)
      assert.matches("optimizely.offline.ngx.queue: [^\n]*notadir/orders.db", log, nil, false)
      assert.matches("init_worker_by_lua error", log, 1, true)
      assert.is_nil(log:find(info.token, 1, true))
    end
  end)

  it("a missing env directive: the worker says which, and requests are refused, not 200", function()
    local env = fresh_env(info, "doc-noenv")
    local inst = start(env, function(e)
      return (substitute(complete_block().text, e):gsub("\nenv OPTIMIZELY_SITE_TOKEN;[^\n]*", ""))
    end)
    local res = inst:request("/pos/orders", { method = "POST", body = order_json("noenv") })
    local log = inst:error_log()
    inst:destroy()
    assert.equal(503, res.status)
    assert.matches("client_config.token is missing", log, 1, true)
    assert.matches("declare the variable in the main context of nginx.conf with `env NAME;`", log, 1, true)
    assert.is_nil(log:find("attempt to index global 'ORDERS'", 1, true))
  end)
end)

describe("the example's launcher", function()
  local info
  setup(function() info = sb.ensure() end)

  it("declares the variable --token-env names, and makes the spool's directory, not in /tmp", function()
    local dir = nginx.mktemp("doc-launch")
    local app = { site = info.site, base_url = info.base_url, channel = info.channel, token_env = "MY_TILL_TOKEN",
      queue = { spool = dir .. "/spool/orders.db" } }
    local inst = nginx.start({ dir = dir, health = "/queue/stats", env = { MY_TILL_TOKEN = info.token },
      write = function(port)
        return launch.write({ dir = dir, port = port, app = app, ca_file = info.ca_file })
      end })
    local conf = nginx.read_file(dir .. "/conf/nginx.conf")
    local ok, err = pcall(function()
      assert.matches("\nenv MY_TILL_TOKEN;\n", conf, 1, true)
      assert.is_nil(conf:find("OO_SITE_TOKEN", 1, true))
      assert.matches("^7", nginx.capture("stat -c %a " .. q(dir .. "/spool")))
      send_through(inst, "launch")
    end)
    inst:destroy()
    assert(ok, err)
  end)

  it("no documented or example spool lives in /tmp", function()
    local files = nginx.capture("cd " .. q(ROOT) .. " && git ls-files README.md doc examples")
    for f in files:gmatch("[^\n]+") do
      local text = nginx.read_file(ROOT .. "/" .. f) or ""
      for line in text:gmatch("[^\n]+") do
        assert.is_nil(line:find("spool[^\n]*[\"' =]/tmp/") or line:find("%-%-spool /tmp/"), f .. ": " .. line)
      end
    end
  end)
end)
