--- Real parsers for the Prometheus text the library writes: promtool
-- (`promtool check metrics`) and Python's prometheus_client.
local sys = require("optimizely.offline.sys")
local assert = require("luassert")

local M = {}

local PARSE = [[
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s %s{%s} %g" % (fam.type, s.name, labels, s.value))
]]

--- Asserts that promtool and prometheus_client accept `text`; returns the
-- Python parser's view, one "type sample{labels} value" line per sample
-- (labels sorted).
function M.parse(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  local out = sys.capture("promtool check metrics < " .. sys.q(path) .. " 2>&1; echo rc=$?")
  assert.matches("rc=0", out, out)
  assert.is_nil(out:find("error", 1, true), out)
  local py = sys.capture("/usr/bin/python3 -c " .. sys.q(PARSE) .. " " .. sys.q(path) .. " 2>&1")
  os.remove(path)
  assert.matches("^%a+ [%w_:]+{", py, py)
  return py
end

return M
