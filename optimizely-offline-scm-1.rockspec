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
}
build = {
   type = "builtin",
   modules = {
      ["optimizely.offline.core"] = {
         sources = {
            "csrc/core.c", "csrc/buf.c", "csrc/utf8.c", "csrc/money.c", "csrc/date.c",
            "csrc/encode.c", "csrc/http.c", "csrc/multi.c", "csrc/spool.c", "csrc/worker.c",
            "csrc/json.c",
         },
         libraries = { "curl", "sqlite3", "pthread" },
         incdirs = { "$(CURL_INCDIR)", "$(SQLITE_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)", "$(SQLITE_LIBDIR)" },
         defines = {},
      },
      ["optimizely.offline"] = "lua/optimizely/offline.lua",
      ["optimizely.offline.errors"] = "lua/optimizely/offline/errors.lua",
      ["optimizely.offline.order"] = "lua/optimizely/offline/order.lua",
      ["optimizely.offline.input"] = "lua/optimizely/offline/input.lua",
      ["optimizely.offline.input.ndjson"] = "lua/optimizely/offline/input/ndjson.lua",
      ["optimizely.offline.input.csv"] = "lua/optimizely/offline/input/csv.lua",
      ["optimizely.offline.input.xml"] = "lua/optimizely/offline/input/xml.lua",
      ["optimizely.offline.client"] = "lua/optimizely/offline/client.lua",
      ["optimizely.offline.retry"] = "lua/optimizely/offline/retry.lua",
      ["optimizely.offline.batch"] = "lua/optimizely/offline/batch.lua",
      ["optimizely.offline.queue"] = "lua/optimizely/offline/queue.lua",
      ["optimizely.offline.ngx"] = "lua/optimizely/offline/ngx.lua",
      ["optimizely.offline.ngx.transport"] = "lua/optimizely/offline/ngx/transport.lua",
      ["optimizely.offline.ngx.queue"] = "lua/optimizely/offline/ngx/queue.lua",
      ["optimizely.offline.spool"] = "lua/optimizely/offline/spool.lua",
      ["optimizely.offline.sys"] = "lua/optimizely/offline/sys.lua",
      ["optimizely.offline.sandbox"] = "lua/optimizely/offline/sandbox.lua",
      ["optimizely.offline.sandbox.handler"] = "lua/optimizely/offline/sandbox/handler.lua",
      ["optimizely.offline.sandbox.conf"] = "lua/optimizely/offline/sandbox/conf.lua",
      ["optimizely.offline.cli"] = "lua/optimizely/offline/cli.lua",
      ["optimizely.offline.cli.common"] = "lua/optimizely/offline/cli/common.lua",
      ["optimizely.offline.cli.validate"] = "lua/optimizely/offline/cli/validate.lua",
      ["optimizely.offline.cli.convert"] = "lua/optimizely/offline/cli/convert.lua",
      ["optimizely.offline.cli.send"] = "lua/optimizely/offline/cli/send.lua",
      ["optimizely.offline.cli.cancel"] = "lua/optimizely/offline/cli/cancel.lua",
      ["optimizely.offline.cli.spool"] = "lua/optimizely/offline/cli/spool.lua",
      ["optimizely.offline.cli.sandbox"] = "lua/optimizely/offline/cli/sandbox.lua",
   },
   install = {
      bin = { ["optimizely-offline"] = "bin/optimizely-offline" },
   },
}
