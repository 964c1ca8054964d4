rockspec_format = "3.0"
package = "optimizely-offline"
version = "scm-1"
source = {
   url = "git+file:///dev/null", -- a checkout: `luarocks make` builds it in place
}
description = {
   summary = "Send in-store (offline) orders to Optimizely Product Recommendations",
   detailed = [[
A C core validates, normalises and encodes orders and talks HTTPS through
libcurl; a Lua layer gives an idiomatic table-based API, a command line and
an OpenResty path.]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.1",
}
external_dependencies = {
   CURL = { library = "curl" }, -- by library: Debian keeps curl.h in a multiarch dir
   SQLITE = { library = "sqlite3" },
   OPENSSL = { library = "crypto" }, -- libcrypto of OpenSSL >= 3.0 (Debian: libssl-dev)
}
build = {
   -- CMakeLists.txt holds the one list of C sources and installs lua/.
   type = "cmake",
   variables = {
      LUA_VERSION = "$(LUA_VERSION)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      INSTALL_CMOD = "$(LIBDIR)",
      INSTALL_LMOD = "$(LUADIR)",
      CMAKE_BUILD_TYPE = "Release",
   },
   install = {
      bin = { ["optimizely-offline"] = "bin/optimizely-offline" },
   },
}
