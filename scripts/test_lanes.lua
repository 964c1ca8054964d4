-- The suite runner behind scripts/test.sh (make test, make check, make asan,
-- make valgrind): every suite is cut into jobs -- one spec file under one
-- interpreter, the fault run, one fuzz target, the build of one variant --
-- and the jobs run in a pool of lanes, longest first (times measured:
-- scripts/test_durations.txt). A suite's jobs start as soon as its build is
-- done; the builds run one after another, LuaJIT and Lua 5.4 first, while
-- the suites already built are tested. Each lane is a process slot with its own range
-- of ports (OO_TEST_PORTS, read by spec/support/nginx.lua); each job has its
-- own TMPDIR and, when its specs ask for one, its own sandbox
-- (spec/support/sandbox.lua starts one per busted process). Most of a
-- spec's time is waiting on nginx, curl and timers, so on 2 cores 12 lanes
-- (6 per core; --lanes or TEST_LANES to change) finish in a fraction of the
-- serial time: measured on the shared 2-core VM, 465 s with 12 lanes where
-- 8 took 545 s, one after the other.
--
--   lua5.4 scripts/test_lanes.lua [--lanes N] [--work DIR] [SUITE...] [spec/FILE_spec.lua...]
--
-- SUITE: lua5.4 luajit lua5.1 lua5.3 asan valgrind fault fuzz (default: all).
-- Spec files given restrict the busted suites to them. Prints each suite's
-- busted summary (its files summed) as it completes, every failure in full,
-- the per-suite timings, the slowest jobs, then the closing line
-- "test: N passed, N failed". Logs stay in build/test-logs/<suite>/, and the
-- durations table updated with this run's times in build/test-logs/durations.txt.
-- scripts/test.sh runs it (and stops its jobs when interrupted).
local ROOT = assert(os.getenv("PWD"), "run from the checkout (PWD unset)")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function now() return tonumber(capture("date +%s.%N")) end

-- ---------------------------------------------------------------------------
-- The suites

local LPATH = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. ROOT .. "/spec/?.lua;;"
local function cpath(variant) return ROOT .. "/build/" .. variant .. "/?.so;;" end

-- The same C source under PUC Lua 5.1 and 5.3: the C-heavy specs.
local C_HEAVY = { "spec/encode_spec.lua", "spec/encode_edge_spec.lua", "spec/property_spec.lua",
  "spec/json_spec.lua", "spec/spool_spec.lua", "spec/ledger_spec.lua", "spec/retry_spec.lua", "spec/cli_json_spec.lua",
  "spec/cli_dates_spec.lua", "spec/input_csv_spec.lua", "spec/money_spec.lua", "spec/input_encoding_spec.lua" }

local function paths_env(variant, ...)
  local env = {}
  for _, v in ipairs({ ... }) do
    env["LUA_PATH" .. v] = LPATH
    env["LUA_CPATH" .. v] = cpath(variant)
  end
  return env
end

-- fuzz/Makefile's run targets ("run-json: fuzz_json"), each with the
-- binary it runs: a new target there is a new job here.
local FUZZ_TARGETS, FUZZ_BINARY = {}, {}
for target, binary in (read_file("fuzz/Makefile") or ""):gmatch("\n(run[%w-]*):[ \t]*(%S+)") do
  FUZZ_TARGETS[#FUZZ_TARGETS + 1] = target
  FUZZ_BINARY[target] = binary
end

-- `variant`: the build its jobs wait for (and `also`: other builds they
-- use: every spec file may start nginx, whose OpenResty loads build/jit). busted --lua re-executes through a
-- shell without quoting, so paths go in the environment, never on its
-- command line. Command names (the durations table's keys) have no spaces.
local SUITES = {
  { name = "lua5.4", variant = "5.4", also = { "jit" }, run = "busted --lua=lua5.4 -o utfTerminal", files = "all",
    env = paths_env("5.4", "", "_5_4") },
  { name = "luajit", variant = "jit", run = "busted --lua=luajit -o utfTerminal", files = "all",
    env = paths_env("jit", "", "_5_4") },
  { name = "lua5.1", variant = "5.1", also = { "jit" }, run = "busted --lua=lua5.1 -o utfTerminal", files = C_HEAVY,
    env = paths_env("5.1", "", "_5_3") },
  { name = "lua5.3", variant = "5.3", also = { "jit" }, run = "busted --lua=lua5.3 -o utfTerminal", files = C_HEAVY,
    env = paths_env("5.3", "", "_5_3") },
  -- AddressSanitizer + UBSan build of the C core, run by a small lua5.4
  -- interpreter linked with the sanitizers (scripts/asan-lua.c) -- not by
  -- LD_PRELOAD, which would leak into every curl/nginx a spec starts. Leak
  -- checking is off (busted exits without closing the state); any memory
  -- error or UB aborts the run (halt_on_error, no UB recovery).
  { name = "asan", variant = "asan", also = { "jit" }, run = ROOT .. "/build/asan-lua /usr/bin/busted -o utfTerminal",
    files = "all", env = (function()
      local e = paths_env("asan", "_5_4")
      e.ASAN_OPTIONS = "detect_leaks=0:halt_on_error=1:abort_on_error=1"
      e.UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1"
      e.OO_PROPERTY_SCALE = "0.2"
      e.OO_LUA = ROOT .. "/build/asan-lua"
      e.OO_BUILD = "asan"
      return e
    end)() },
  -- valgrind over the encoder specs (the network specs are covered by ASan),
  -- in one process (`together`): each valgrind start costs seconds of CPU.
  { name = "valgrind", variant = "5.4", files = { "spec/encode_spec.lua", "spec/encode_edge_spec.lua" },
    together = true, env = paths_env("5.4", "_5_4"),
    run = "valgrind -q --error-exitcode=99 --leak-check=no --track-origins=no lua5.4 /usr/bin/busted -o utfTerminal" },
  -- The fault run, bounded: 1,000 orders through a spool while the sandbox
  -- answers 503, closes connections and is stopped; the pusher is kill -9ed
  -- and restarted. Every order must end in the sandbox or the dead letters.
  { name = "fault", variant = "5.4", env = paths_env("5.4", "_5_4"), commands = {
    { name = "bench/fault_run.lua", cmd = "lua5.4 bench/fault_run.lua --orders 1000 --quick",
      ok_tail = 1, fail_tail = 30, fail_note = "fault run lost orders" } } },
  -- A bounded libFuzzer run over the C parsers (dates, money, UTF-8, escaping,
  -- CSV, the input decoder, the ledger's body reader), the JSON decoder, the
  -- classifier and the pseudonymiser (normalisation + HMAC). Each target runs for a fixed time
  -- and does as much as the CPU it gets allows: they start once every
  -- other job has started (`tail`), as lanes fall idle, and no more at once
  -- than there are cores (group "fuzz"), each built beforehand (variant).
  { name = "fuzz", variant = "fuzz", env = {}, needs = "clang", tail = true, group = "fuzz",
    commands = (function()
      local secs = os.getenv("FUZZ_SECONDS") or "15"
      local out = {}
      for _, t in ipairs(FUZZ_TARGETS) do
        out[#out + 1] = { name = t, cmd = "make -s -C fuzz " .. t .. " FUZZ_SECONDS=" .. secs,
          ok_tail = 1, fail_tail = 40, fail_note = "fuzzer found a failure" }
      end
      return out
    end)() },
}

-- The builds the suites wait for, in this order, one at a time.
local BUILD_ORDER = { "jit", "5.4", "asan", "5.1", "5.3", "fuzz" }
local function build_command(v)
  if v == "fuzz" then
    local bins = {}
    for i, t in ipairs(FUZZ_TARGETS) do bins[i] = FUZZ_BINARY[t] end
    return "make -s -C fuzz " .. table.concat(bins, " ") .. " && echo built the fuzz targets"
  end
  return "make -s build VARIANTS=" .. v .. (v == "asan" and " build/asan-lua" or "")
end
local BUILD = { name = "build", env = {}, commands = {} }

-- Specs that must not share the machine (load tests, timing-sensitive
-- ones): in every suite that runs `file`, the tests whose names match
-- `filter` (busted --filter, a Lua pattern without spaces: busted --lua
-- re-executes through a shell) are split off into a job of the serial lane:
-- one at a time, alone, once the pool has drained. Keep it short.
local SERIAL = {
  -- the adaptive limiter reacts to the round trips it measures: on a loaded
  -- machine those are the load's (seen: "the limit never reached 16")
  { file = "spec/batch_spec.lua", filter = "adaptive%sconcurrency" },
  -- the WAL stays bounded only while the checkpoint thread keeps up with
  -- the puts: starved of CPU it runs late (seen: "the WAL grew to 20554272")
  { file = "spec/spool_spec.lua", filter = "^spool%sWAL%s" },
}

-- ---------------------------------------------------------------------------
-- Arguments

local lanes, work
local want_suites, want_files = {}, {}
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--lanes" then
      lanes = assert(tonumber(arg[i + 1]), "--lanes needs a number")
      i = i + 1
    elseif a == "--work" then
      work = arg[i + 1]
      i = i + 1
    elseif a:match("_spec%.lua$") then
      want_files[#want_files + 1] = a
    else
      want_suites[a] = true
    end
    i = i + 1
  end
end
if not next(want_suites) then
  for _, s in ipairs(SUITES) do
    if not (s.commands and next(want_files)) then want_suites[s.name] = true end
  end
end
for name in pairs(want_suites) do
  local known = false
  for _, s in ipairs(SUITES) do known = known or s.name == name end
  if not known then
    io.stderr:write("test_lanes: unknown suite " .. name
      .. " (lua5.4 luajit lua5.1 lua5.3 asan valgrind fault fuzz)\n")
    os.exit(2)
  end
end
local function nproc() return tonumber(capture("nproc 2>/dev/null"):match("%d+")) or 2 end
lanes = lanes or tonumber(os.getenv("TEST_LANES") or "") or math.max(4, 6 * nproc())
work = work or capture("mktemp -d"):gsub("%s+$", "")

-- ---------------------------------------------------------------------------
-- Jobs

local function all_specs()
  local out = {}
  for f in capture("ls spec/*_spec.lua 2>/dev/null"):gmatch("[^\n]+") do out[#out + 1] = f end
  return out
end

local DURATIONS = "scripts/test_durations.txt"
local DURATIONS_HEAD = [[
# Seconds each job of `make test` took (suite, spec file or command, wall
# seconds in its lane), measured on the 2-core VM while the machine was
# shared: scripts/test_lanes.lua starts the longest first, so no slow file
# starts last. A job missing here counts as 30 s. Every run writes this
# table updated with its own times to build/test-logs/durations.txt: copy
# that over this file to refresh it.
]]

-- Measured seconds per "suite key" (scripts/test_durations.txt).
local function load_durations()
  local t = {}
  for line in (read_file(DURATIONS) or ""):gmatch("[^\n]+") do
    local suite, key, secs = line:match("^([^#%s]%S*)%s+(%S+)%s+([%d%.]+)%s*$")
    if suite then t[suite .. " " .. key] = tonumber(secs) end
  end
  return t
end

local function selected(list)
  if not next(want_files) then return list end
  local keep, out = {}, {}
  for _, f in ipairs(want_files) do keep[f] = true end
  for _, f in ipairs(list) do if keep[f] then out[#out + 1] = f end end
  return out
end

local function log_name(s) return (s:gsub("^spec/", ""):gsub("[^%w_.-]", "_")) end

-- A suite's units of work: its commands, or one per spec file (all in one
-- when `together`), and for a file with tests in SERIAL, those tests apart
-- ("file@filter").
local function units_of(s, specs)
  local units = {}
  if s.commands then
    for _, c in ipairs(s.commands) do units[#units + 1] = { key = c.name, cmd = c.cmd, command = c } end
    return units
  end
  local files = selected(s.files == "all" and specs or s.files)
  if s.together then
    if #files == 0 then return units end
    return { { key = table.concat(files, ","), cmd = s.run .. " " .. table.concat(files, " ") } }
  end
  for _, f in ipairs(files) do
    local out = {}
    for _, x in ipairs(SERIAL) do
      if x.file == f then
        out[#out + 1] = "--filter-out=" .. x.filter
        units[#units + 1] = { key = f .. "@" .. x.filter, cmd = s.run .. " --filter=" .. x.filter .. " " .. f,
          serial = true }
      end
    end
    out[#out + 1] = f
    units[#units + 1] = { key = f, cmd = s.run .. " " .. table.concat(out, " ") }
  end
  return units
end

local jobs = {}

local function add_job(s, u, est)
  local job = { id = #jobs + 1, suite = s, key = u.key, cmd = u.cmd, command = u.command, est = est,
    serial = u.serial or false, tail = s.tail or false, after = u.after, group = u.group or s.group,
    log = ("%s/build/test-logs/%s/%s.log"):format(ROOT, s.name, log_name(u.key)) }
  jobs[#jobs + 1] = job
  s.jobs[#s.jobs + 1] = job
  return job
end

-- The build job of each variant the suites need (`make build`, and for
-- asan the sanitizer interpreter), in BUILD_ORDER.
local function build_jobs(need)
  local built = {}
  BUILD.jobs, BUILD.done = {}, 0
  for i, v in ipairs(BUILD_ORDER) do
    if need[v] then
      local c = { name = v, ok_tail = 1, fail_tail = 40, fail_note = "build failed" }
      built[v] = add_job(BUILD, { key = v, cmd = build_command(v), command = c, group = "build" }, 1e9 - i)
    end
  end
  return built
end

-- Every job of the suites asked for; an unmeasured one gets a long
-- estimate, so a new slow file starts early rather than last.
local function make_jobs()
  local durations, specs, chosen, need = load_durations(), all_specs(), {}, {}
  for _, s in ipairs(SUITES) do
    if want_suites[s.name] and not (s.needs and capture("command -v " .. s.needs) == "") then
      s.units, s.jobs, s.done = units_of(s, specs), {}, 0
      if #s.units > 0 then
        chosen[#chosen + 1] = s
        if s.variant then need[s.variant] = true end
        for _, v in ipairs(s.also or {}) do need[v] = true end
      end
    end
  end
  local built = build_jobs(need)
  for _, s in ipairs(chosen) do
    for _, u in ipairs(s.units) do
      u.after = {}
      for _, v in ipairs(s.also or {}) do u.after[#u.after + 1] = built[v] end
      u.after[#u.after + 1] = built[s.variant]
      add_job(s, u, durations[s.name .. " " .. u.key] or 30)
    end
  end
  local order = {}
  for _, j in ipairs(jobs) do order[#order + 1] = j end
  table.sort(order, function(a, b)
    if a.est ~= b.est then return a.est > b.est end
    return a.id < b.id
  end)
  local suites = { #BUILD.jobs > 0 and BUILD or nil }
  for _, s in ipairs(chosen) do suites[#suites + 1] = s end
  return order, suites
end

-- ---------------------------------------------------------------------------
-- The pool

-- Ports 2000-9999: below the kernel's ephemeral range (no clash with
-- client source ports, no TCP self-connect) and the sandbox's 10000+.
local PORT_BASE, PORT_SPAN = 2000, 400

local fifo = work .. "/done.fifo"

local function launch(job, slot)
  local tmp = ("%s/tmp/%d"):format(work, job.id)
  local lo = PORT_BASE + (slot - 1) % 20 * PORT_SPAN
  local env = { "OO_TEST_PORTS=" .. lo .. "-" .. (lo + PORT_SPAN - 1), "TMPDIR=" .. tmp, "PWD=" .. ROOT }
  for k, v in pairs(job.suite.env) do env[#env + 1] = k .. "=" .. v end
  table.sort(env)
  for i, e in ipairs(env) do env[i] = q(e) end
  -- A job tells the runner on the fifo: "start ID PID" (its `timeout`, the
  -- leader of the job's own process group: scripts/test.sh sends it SIGTERM
  -- on Ctrl-C, and timeout passes it to the whole group) and "done ID RC T0
  -- T1". `timeout` also bounds a hung job. Written with <> (read-write), a
  -- FIFO never blocks the writer, even once the runner is gone. Started by
  -- popen: a job's shell is the runner's child, reaped when it reports done.
  local script = table.concat({
    "mkdir -p " .. q(tmp) .. " " .. q(job.log:match("^(.*)/")),
    "cd " .. q(ROOT),
    "t0=$(date +%s.%N)",
    "env -u OO_SANDBOX_INFO " .. table.concat(env, " ") .. " timeout -k 10 900 " .. job.cmd
      .. " >" .. q(job.log) .. " 2>&1 </dev/null &",
    "echo \"start " .. job.id .. " $!\" 1<>" .. q(fifo),
    "wait $!",
    "rc=$?",
    "times >" .. q(work .. "/" .. job.id .. ".times"),
    "echo \"done " .. job.id .. " $rc $t0 $(date +%s.%N)\" 1<>" .. q(fifo),
  }, "\n")
  job.proc = assert(io.popen(script, "r"))
  job.slot = slot
end

local function strip_colours(s) return (s:gsub("\27%[[%d;]*m", "")) end

-- busted's "N successes / N failures / N errors / N pending : T seconds"
local function summary_of(text)
  local last
  for line in strip_colours(text):gmatch("[^\n]+") do
    local s, f, e = line:match("(%d+) successe?s? / (%d+) failures? / (%d+) errors?")
    if s then last = { tonumber(s), tonumber(f), tonumber(e), tonumber(line:match("(%d+) pending")) or 0 } end
  end
  return last
end

local function tail(text, n)
  local lines = {}
  for line in text:gmatch("[^\n]*") do lines[#lines + 1] = line end
  while #lines > 0 and lines[#lines] == "" do lines[#lines] = nil end
  return table.concat(lines, "\n", math.max(1, #lines - n + 1))
end

-- ---------------------------------------------------------------------------
-- Reports

local totals = { passed = 0, failed = 0 }

local function settle(job, rc, t0, t1)
  job.rc, job.start, job.finish = rc, t0, t1
  job.took = t1 - t0
  -- `times`: the second line is the CPU (user, system) of the job's processes
  local u1, u2, s1, s2 = (read_file(work .. "/" .. job.id .. ".times") or "")
    :match("\n(%d+)m([%d.]+)s (%d+)m([%d.]+)s")
  job.cpu = u1 and (u1 * 60 + u2 + s1 * 60 + s2) or 0
  local text = read_file(job.log) or ""
  job.text = text
  if job.command then
    job.ok = rc == 0
    if not job.ok then totals.failed = totals.failed + 1 end
    return
  end
  job.summary = summary_of(text)
  if not job.summary then
    job.ok = false
    totals.failed = totals.failed + 1
    return
  end
  local s, f, e = table.unpack(job.summary)
  totals.passed = totals.passed + s
  totals.failed = totals.failed + f + e
  job.ok = rc == 0 and f + e == 0
end

-- A job whose build failed: not run (the build's failure is counted).
local function skip(job)
  local t = now()
  job.rc, job.start, job.finish, job.took, job.cpu, job.ok, job.skipped = -1, t, t, 0, 0, false, true
  local failed = {}
  for _, b in ipairs(job.after) do if b.rc and not b.ok then failed[#failed + 1] = b.key end end
  job.text = "not run: the " .. table.concat(failed, ", ") .. " build failed"
end

local status = 0

local function print_commands(s)
  print("== " .. s.name)
  for _, j in ipairs(s.jobs) do
    if j.ok then
      print(j.key .. ": " .. tail(j.text, j.command.ok_tail))
    else
      print(tail(j.text, j.command.fail_tail))
      print(("!! %s %s: %s (exit %d)"):format(s.name, j.key, j.command.fail_note, j.rc))
      status = 1
    end
  end
end

local function print_suite(s)
  local first, last, counts = math.huge, 0, { 0, 0, 0, 0 }
  s.busy, s.cpu = 0, 0
  for _, j in ipairs(s.jobs) do
    first, last = math.min(first, j.start), math.max(last, j.finish)
    for i = 1, 4 do counts[i] = counts[i] + (j.summary and j.summary[i] or 0) end
    s.busy, s.cpu = s.busy + j.took, s.cpu + j.cpu
  end
  s.wall, s.counts = last - first, counts
  if s.commands then return print_commands(s) end
  print(("== %s: %d successes / %d failures / %d errors / %d pending : %.1f seconds (jobs: %d)")
    :format(s.name, counts[1], counts[2], counts[3], counts[4], s.wall, #s.jobs))
  for _, j in ipairs(s.jobs) do
    if j.skipped then
      status = 1
      print(("!! %s %s: %s"):format(s.name, j.key, j.text))
    elseif not j.ok then
      status = 1
      print(("-- %s %s (exit %d%s), in full:"):format(s.name, j.key, j.rc,
        j.summary and "" or ", no busted summary"))
      print(strip_colours(j.text))
      print(("!! %s failed: %s"):format(s.name, j.key))
    end
  end
end

-- The failures again, briefly, after the timings: a CI page that shows only
-- the tail of the output still names what failed and where.
local function failure_lines(text)
  local out, keep = {}, 0
  for line in strip_colours(text):gmatch("[^\n]*") do
    if line:match("^Failure") or line:match("^Error") then keep = 8 end
    if keep > 0 and #out < 40 then
      out[#out + 1] = "   " .. line:sub(1, 300)
      keep = keep - 1
    end
  end
  return out
end

local function print_failures(suites)
  local any = false
  for _, s in ipairs(suites) do
    for _, j in ipairs(s.jobs) do
      if not j.ok then
        if not any then print("== failed, in short (in full above)") end
        any = true
        print(("!! %s %s (exit %s)"):format(s.name, j.key, tostring(j.rc)))
        local lines = failure_lines(j.text or "")
        if #lines == 0 then lines = { tail(strip_colours(j.text or ""), 12) } end
        print(table.concat(lines, "\n"))
      end
    end
  end
end

local function print_timings(suites, wall)
  print(("== timings (wall seconds; lanes: %d; \"in lanes\" = its jobs' seconds summed)"):format(lanes))
  print(("  %-9s %6s %7s %9s %7s %5s"):format("suite", "specs", "wall", "in lanes", "cpu", "jobs"))
  for _, s in ipairs(suites) do
    if #s.jobs > 0 then
      print(("  %-9s %6s %7.1f %9.1f %7.1f %5d"):format(s.name, s.commands and "-" or tostring(s.counts[1]),
        s.wall, s.busy, s.cpu, #s.jobs))
    end
  end
  print(("  %-9s %6s %7.1f"):format("all", "", wall))
  local sorted = {}
  for _, j in ipairs(jobs) do sorted[#sorted + 1] = j end
  table.sort(sorted, function(a, b) return a.took > b.took end)
  print("== slowest jobs")
  for i = 1, math.min(8, #sorted) do
    print(("  %6.1f s (cpu %5.1f)  %-9s %s"):format(sorted[i].took, sorted[i].cpu, sorted[i].suite.name,
      sorted[i].key))
  end
end

-- The table, updated with this run's times, to build/test-logs/durations.txt.
-- A suite run whole replaces its rows (a split or renamed file leaves none).
local function save_durations(suites)
  local t = load_durations()
  if not next(want_files) then
    for _, s in ipairs(suites) do
      for key in pairs(t) do
        if key:sub(1, #s.name + 1) == s.name .. " " then t[key] = nil end
      end
    end
  end
  for _, j in ipairs(jobs) do
    if j.suite ~= BUILD and not j.skipped then t[j.suite.name .. " " .. j.key] = j.took end
  end
  local lines = {}
  for key, secs in pairs(t) do
    local file = key:match("^%S+ (spec/[^@,]+)")
    if not file or read_file(file) then lines[#lines + 1] = ("%s %.1f"):format(key, secs) end -- gone: dropped
  end
  table.sort(lines)
  local f = io.open(ROOT .. "/build/test-logs/durations.txt", "w")
  if f then
    f:write(DURATIONS_HEAD, table.concat(lines, "\n"), "\n")
    f:close()
  end
end

-- ---------------------------------------------------------------------------
-- Main

local t_start
local last_note = 0

-- Every 30 s at most, when a job ends: how far the pool is, and what runs.
local function progress(done)
  local t = now()
  if t - last_note < 30 then return end
  last_note = t
  local names = {}
  for _, j in ipairs(jobs) do
    if j.slot and not j.rc then names[#names + 1] = j.suite.name .. " " .. j.key end
  end
  print(("-- %d/%d jobs done after %.0f s; running: %s"):format(done, #jobs, t - t_start,
    table.concat(names, ", ")))
end

local function finished(job, done)
  os.execute("rm -rf " .. q(("%s/tmp/%d"):format(work, job.id)))
  if not job.ok and not job.skipped then
    print(("!! %s %s failed (exit %d); in full below when %s is done"):format(job.suite.name, job.key, job.rc,
      job.suite.name))
  end
  local s = job.suite
  s.done = s.done + 1
  if s.done == #s.jobs then print_suite(s) else progress(done) end
  io.stdout:flush()
end

-- The pids of the running jobs' `timeout`s (work/pids), which
-- scripts/test.sh stops when it is interrupted.
local function write_pids()
  local pids = {}
  for _, j in ipairs(jobs) do if j.pid and not j.rc then pids[#pids + 1] = j.pid end end
  local f = assert(io.open(work .. "/pids", "w"))
  f:write(table.concat(pids, " "), "\n")
  f:close()
end

-- How many jobs of a group may run at once: builds one (in BUILD_ORDER),
-- fuzz targets one per core.
local GROUP_SIZE = { build = 1, fuzz = nproc() }

-- Whether `job` may start now. A build waits for the build before it; a
-- job for its build; a tail job until every other job (but the serial
-- ones) has started; a serial job until nothing else runs.
local function ready(job, state)
  for _, b in ipairs(job.after or {}) do if not b.rc then return false end end
  if job.group and (state.groups[job.group] or 0) >= (GROUP_SIZE[job.group] or 1) then return false end
  if job.tail and state.waiting > 0 then return false end
  if job.serial then return state.running == 0 and state.waiting == 0 and state.tails == 0 end
  return true
end

local function count_pending(pending, state)
  state.waiting, state.tails = 0, 0
  for _, j in ipairs(pending) do
    if j.tail then state.tails = state.tails + 1 elseif not j.serial then state.waiting = state.waiting + 1 end
  end
end

local function build_failed(job)
  for _, b in ipairs(job.after or {}) do if b.rc and not b.ok then return true end end
  return false
end

-- One pass over the pending jobs, in order: starts what may start, skips
-- the jobs of a failed build. Returns whether it changed anything.
local function start_pass(pending, state, free)
  local i, changed = 1, false
  while i <= #pending do
    count_pending(pending, state)
    local j = pending[i]
    if build_failed(j) then
      table.remove(pending, i)
      skip(j)
      state.skipped[#state.skipped + 1] = j
      changed = true
    elseif #free > 0 and not state.alone and ready(j, state) then
      table.remove(pending, i)
      launch(j, table.remove(free))
      state.running = state.running + 1
      if j.group then state.groups[j.group] = (state.groups[j.group] or 0) + 1 end
      state.alone = j.serial
      changed = true
    else
      i = i + 1
    end
  end
  return changed
end

-- Until nothing more may start (a skip can make a tail or serial job ready).
local function start_more(pending, state, free)
  repeat until not start_pass(pending, state, free)
end

-- Runs the jobs in `lanes` slots, in their order (see `ready`).
local function run_pool(order)
  os.execute("rm -rf " .. q(ROOT .. "/build/test-logs") .. " && mkdir -p " .. q(work .. "/tmp"))
  assert(os.execute("mkfifo " .. q(fifo)), "mkfifo failed")
  local events = assert(io.open(fifo, "r+")) -- read-write: no EOF while no job is writing
  local pending, free, done = {}, {}, 0
  local state = { running = 0, groups = {}, skipped = {}, alone = false }
  for i, j in ipairs(order) do pending[i] = j end
  for slot = lanes, 1, -1 do free[#free + 1] = slot end
  local function ended(job)
    done = done + 1
    finished(job, done)
  end
  start_more(pending, state, free)
  while state.running > 0 do
    local line = assert(events:read("l"), "test_lanes: the fifo closed")
    local kind, id, rest = line:match("^(%a+) (%d+) (.*)$")
    local job = assert(jobs[tonumber(id)], "test_lanes: bad event: " .. line)
    if kind == "start" then
      job.pid = tonumber(rest)
    else
      local rc, t0, t1 = rest:match("^(%d+) ([%d.]+) ([%d.]+)$")
      job.proc:close() -- it has ended: reaps the shell
      state.running, state.alone = state.running - 1, false
      if job.group then state.groups[job.group] = state.groups[job.group] - 1 end
      free[#free + 1] = job.slot
      settle(job, tonumber(rc), tonumber(t0), tonumber(t1))
      start_more(pending, state, free)
      ended(job)
      while #state.skipped > 0 do ended(table.remove(state.skipped, 1)) end
    end
    write_pids()
  end
  events:close()
  for _, j in ipairs(pending) do error("test_lanes: never started: " .. j.suite.name .. " " .. j.key, 0) end
end

local order, suites = make_jobs()
if #order == 0 then
  print("test: 0 passed, 0 failed (no jobs)")
  os.exit(1)
end
local counts = {}
for _, s in ipairs(suites) do counts[#counts + 1] = s.name .. " " .. #s.jobs end
print(("== %d jobs in %d lanes: %s"):format(#order, lanes, table.concat(counts, ", ")))
io.stdout:flush()
t_start = now()
last_note = t_start
local ran, err = pcall(run_pool, order)
if not ran then
  if tostring(err):find("interrupted", 1, true) then os.exit(130) end -- Ctrl-C: test.sh stops the jobs
  error(err, 0)
end
save_durations(suites)
print_timings(suites, now() - t_start)
print_failures(suites)
if totals.failed > 0 then status = 1 end
print(("test: %d passed, %d failed"):format(totals.passed, totals.failed))
os.exit(status)
