--- Benchmark: hostile input files (issue 19). Two checks, each against its
-- target:
--
-- * time is linear in the file. The XML reader (in this process, CPU time
--   by os.clock) over files of 5, 20 and 40 MB made of one endless token (an
--   attribute value; a comment), and of tokens each just under the 1 MiB cap
--   (the worst a file can do now), as ratios to the 5 MB file: targets 20/5
--   <= 6 and 40/5 <= 12 (linear is 4 and 8; quadratic, as expat re-scanning
--   an unfinished token was, 16 and 64). `--uncapped` adds the single-token
--   files read with the cap lifted: the quadratic time the cap removes;
-- * peak RSS of one hostile file stays under 64 MiB plus the largest legal
--   order's: `optimizely-offline validate` (/usr/bin/time) over a 200 MB
--   `<attribute>` text, an order of 10^6 products (XML) and of 10^6 rows
--   (CSV), the 40 MB token, and 8 MiB NDJSON lines (the longest read)
--   packed with values, against the peak RSS of a file holding the largest
--   legal order (1,000 items, a body near 1 MiB).
--
--   lua5.4 bench/hostile_files.lua [--lua lua5.4] [--quick] [--uncapped] [--keep]
--
-- --quick: 2/8/16 MB, 50 MB of text, 2*10^5 products. Files go to
-- build/bench/hostile/ and are removed unless --keep. Run from the checkout
-- after `make build` (the interpreter running it must be the --lua one).
local argv = { ... }
local opts = { lua = "lua5.4", sizes = { 5, 20, 40 }, text_mb = 200, items = 1000000 }
local i = 1
while i <= #argv do
  local a = argv[i]
  if a == "--lua" then i = i + 1; opts.lua = argv[i]
  elseif a == "--quick" then opts.sizes, opts.text_mb, opts.items = { 2, 8, 16 }, 50, 200000
  elseif a == "--uncapped" then opts.uncapped = true
  elseif a == "--keep" then opts.keep = true
  else io.stderr:write("unknown argument ", a, "\n"); os.exit(2) end
  i = i + 1
end

local variant = type(jit) == "table" and "jit" or _VERSION:match("%d+%.%d+")
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = "build/" .. variant .. "/?.so;" .. package.cpath
local input = require("optimizely.offline.input")
local xml = require("optimizely.offline.input.xml")

local DIR = "build/bench/hostile"
os.execute("mkdir -p " .. DIR)
local MB = 1024 * 1024
local made = {}

-- Writes a file from a list of pieces, each {text, times}.
local function write(name, pieces)
  local path = DIR .. "/" .. name
  local f = assert(io.open(path, "wb"))
  for _, p in ipairs(pieces) do
    for _ = 1, p[2] or 1 do f:write(p[1]) end
  end
  f:close()
  made[#made + 1] = path
  return path
end

local ORDER = '<order refCode="R%d" orderDate="2016-05-16T14:25:00 GMT" currency="GBP" total="1">'

-- `validate -q FILE` under /usr/bin/time: CPU seconds, peak RSS (KiB), exit code.
local function run(path)
  local cmd = ("/usr/bin/time -f 'TIME %%U %%S %%M' %s bin/optimizely-offline validate -q %s 2>&1 >/dev/null; "
    .. "echo rc=$?"):format(opts.lua, path)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  local u, s, rss = out:match("TIME ([%d%.]+) ([%d%.]+) (%d+)")
  assert(u, out)
  return tonumber(u) + tonumber(s), tonumber(rss), tonumber(out:match("rc=(%d+)")), out
end

local function best(path, rounds)
  local t, rss, rc, out
  for _ = 1, rounds or 3 do
    local t1, r1, c1, o1 = run(path)
    if not t or t1 < t then t, rss, rc, out = t1, r1, c1, o1 end
  end
  return t, rss, rc, out
end

local function verdict(ok) return ok and "ok" or "MISSED" end
local failed = false

-- -------------------------------------------------------------- time
-- CPU seconds to read every record of a file (the best of `rounds`).
local function read_time(path, rounds)
  local t
  for _ = 1, rounds or 3 do
    local c0 = os.clock()
    for _ in assert(input.open(path)) do end
    local c = os.clock() - c0
    if not t or c < t then t = c end
  end
  return t
end

local KB = ("A"):rep(1024)
local NEAR = ("c"):rep(xml.MAX_TOKEN - 64) -- a comment just under the cap
local CASES = {
  { "one attribute value", function(mb)
    return { { '<orders>\n<order refCode="' }, { KB, mb * 1024 }, { '"/>\n</orders>\n' } }
  end },
  { "one comment", function(mb) return { { "<orders>\n<!-- " }, { KB, mb * 1024 }, { " -->\n</orders>\n" } } end },
  { "1 MiB tokens", function(mb)
    return { { "<orders>\n" }, { "<!--" .. NEAR .. "-->\n", mb }, { "</orders>\n" } }
  end },
}

local function scaling(label, paths)
  local times = {}
  for k, mb in ipairs(opts.sizes) do
    times[k] = math.max(read_time(paths[k], mb > 10 and 1 or 3), 0.0005)
    print(("xml %-22s %3d MB: %.3f s CPU"):format(label, mb, times[k]))
  end
  local lo, mid, hi = opts.sizes[1], opts.sizes[2], opts.sizes[3]
  return times[2] / times[1], times[3] / times[1], mid / lo, hi / lo, lo, mid, hi
end

for _, case in ipairs(CASES) do
  local paths = {}
  for k, mb in ipairs(opts.sizes) do
    paths[k] = write(("time-%s-%d.xml"):format(case[1]:gsub("%W", ""), mb), case[2](mb))
  end
  local r1, r2, lin1, lin2, lo, mid, hi = scaling(case[1], paths)
  local ok = r1 <= lin1 * 1.5 and r2 <= lin2 * 1.5
  failed = failed or not ok
  print(("  ratio %d/%d MB: %.2f (target <= %.1f, linear %d)   %d/%d MB: %.2f (target <= %.1f, linear %d)   %s")
    :format(mid, lo, r1, lin1 * 1.5, lin1, hi, lo, r2, lin2 * 1.5, lin2, verdict(ok)))
  if opts.uncapped and case[1] ~= "1 MiB tokens" then
    local cap = xml.MAX_TOKEN
    xml.MAX_TOKEN = math.huge
    r1, r2 = scaling(case[1] .. " (no cap)", paths)
    xml.MAX_TOKEN = cap
    print(("  without the cap: ratio %d/%d MB: %.2f   %d/%d MB: %.2f (quadratic: %d and %d)")
      :format(mid, lo, r1, hi, lo, r2, lin1 * lin1, lin2 * lin2))
  end
end

-- -------------------------------------------------------------- memory
local function legal_xml()
  local parts = { { "<orders>\n" }, { ORDER:format(1) } }
  for k = 1, 1000 do
    parts[#parts + 1] = { ('<product refCode="sku-%06d" qty="1" price="1.00">'):format(k) }
    parts[#parts + 1] = { ('<attribute key="note">%s</attribute></product>'):format(("n"):rep(900)) }
  end
  parts[#parts + 1] = { "</order>\n</orders>\n" }
  return write("legal-largest.xml", parts)
end
local legal_path = legal_xml()
local _, legal_rss, legal_rc, legal_out = best(legal_path, 1)
assert(legal_rc == 0, "the largest legal order must be valid: " .. legal_out)
local target = 64 * 1024 + legal_rss
print(("peak RSS of the largest legal order (1,000 items, ~1 MB): %.1f MiB; target for a hostile file: "
  .. "< 64 MiB + that = %.1f MiB"):format(legal_rss / 1024, target / 1024))

local function items_xml(n)
  local parts = { { "<orders>\n" }, { ORDER:format(1) }, { '<product refCode="p" qty="1" price="1"/>', n },
    { "</order>\n</orders>\n" } }
  return write(("items-%d.xml"):format(n), parts)
end
local function items_csv(n)
  return write(("items-%d.csv"):format(n), { { "refCode,orderDate,currency,total,itemRefCode,qty,price\n" },
    { "R1,2016-05-16T14:25:00 GMT,GBP,1,p,1,1\n", n } })
end
local function text_xml(mb)
  return write(("text-%d.xml"):format(mb), { { "<orders>\n" }, { ORDER:format(1) },
    { '<product refCode="p" qty="1" price="1"/><attribute key="big">' }, { KB, mb * 1024 },
    { "</attribute></order>\n</orders>\n" } })
end

-- An 8 MiB NDJSON line (the longest read) of as many values as fit.
local function values_ndjson(what)
  local unit = what == "keys" and nil or "{},"
  local parts = { { '{"order":{"refCode":"R","items":[' } }
  if unit then
    parts[#parts + 1] = { unit, math.floor((8 * MB - 100) / #unit) }
    parts[#parts + 1] = { '{}]}}\n' }
  else
    parts = { { '{"order":{"refCode":"R","x":{' } }
    local keys = {}
    for k = 1, 700000 do keys[k] = ('"k%d":0,'):format(k) end
    parts[#parts + 1] = { table.concat(keys) }
    parts[#parts + 1] = { '"z":0}}}\n' }
  end
  return write(("values-%s.ndjson"):format(what), parts)
end

for _, case in ipairs({
  { "ndjson 8 MiB line of empty objects", values_ndjson("objects") },
  { "ndjson 8 MiB line of distinct keys", values_ndjson("keys") },
  { ("xml <attribute> text of %d MB"):format(opts.text_mb), text_xml(opts.text_mb) },
  { ("xml order of %d products"):format(opts.items), items_xml(opts.items) },
  { ("csv order of %d rows"):format(opts.items), items_csv(opts.items) },
  { ("xml one token of %d MB"):format(opts.sizes[3]), DIR .. ("/time-oneattributevalue-%d.xml"):format(opts.sizes[3]) },
}) do
  local t, rss, rc = best(case[2], 1)
  local ok = rc == 1 and rss < target
  failed = failed or not ok
  print(("%-34s peak RSS %6.1f MiB (target < %.1f), %.2f s CPU, exit %d   %s")
    :format(case[1], rss / 1024, target / 1024, t, rc, verdict(ok)))
end

if not opts.keep then for _, p in ipairs(made) do os.remove(p) end end
os.exit(failed and 1 or 0)
