-- The release rockspec: the same as optimizely-offline-scm-1.rockspec but for
-- its version and source tag (scripts/rock_check.sh checks that).
rockspec_format = "3.0"
package = "optimizely-offline"
version = "0.2.0-1"
source = {
   url = "git+https://github.com/optimizely-offline/optimizely-offline.git",
   tag = "v0.2.0",
}
description = {
   summary = "Send in-store (offline) orders to Optimizely Product Recommendations",
   detailed = [[
A C core validates, normalises and encodes orders and talks HTTPS through
libcurl; a Lua layer gives an idiomatic table-based API, a command line and
an OpenResty path.]],
   homepage = "https://github.com/optimizely-offline/optimizely-offline",
   license = "MIT",
   labels = { "http", "json", "openresty", "ecommerce" },
}
dependencies = {
   "lua >= 5.1",
   "argparse >= 0.6.0", -- the command line (optimizely.offline.cli)
   "luaexpat >= 1.3.0", -- the legacy XML reader (optimizely.offline.input.xml, require "lxp")
}
external_dependencies = {
   CURL = { library = "curl" }, -- by library: Debian keeps curl.h in a multiarch dir
   SQLITE = { library = "sqlite3" },
   OPENSSL = { library = "crypto" }, -- libcrypto of OpenSSL >= 3.0 (Debian: libssl-dev)
}
build = {
   -- CMakeLists.txt holds the one list of C sources and installs lua/, the
   -- command (its first line naming this Lua) and the man page.
   type = "cmake",
   variables = {
      LUA = "$(LUA)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      INSTALL_CMOD = "$(LIBDIR)",
      INSTALL_LMOD = "$(LUADIR)",
      INSTALL_BIN = "$(BINDIR)",
      -- outside the rock's own directory: LuaRocks deploys only bin/, lua/
      -- and lib/, and man(1) looks in <tree>/share/man
      INSTALL_MAN = "$(SCRIPTS_DIR)/../share/man/man1",
      CMAKE_BUILD_TYPE = "Release",
   },
}
deploy = {
   -- The command is copied as it is: it finds its tree from where it lives.
   -- LuaRocks' wrapper would hard-code the trees it knew at install time
   -- (none with --deps-mode=none).
   wrap_bin_scripts = false,
}
