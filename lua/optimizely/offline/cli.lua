--- The `optimizely-offline` command line.
-- Each command lives in its own module `optimizely.offline.cli.<name>` that exports:
--   `register(parser)`  add the command (and its options) to the argparse parser;
--   `run(args, out, err)` run it with the parsed `args`; `out`/`err` have `:write`;
--                       return an exit code (0 ok, 1 failure, 2 usage/config error).
-- Adding a command = dropping its module in `cli/` and its name in `M.COMMANDS`;
-- names without a module yet are skipped.
-- @module optimizely.offline.cli
local argparse = require("argparse")
local stop = require("optimizely.offline.cli.stop")
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local M = {}

--- Command names in help order.
M.COMMANDS = { "validate", "send", "convert", "cancel", "spool", "ledger", "sandbox", "mapping" }

--- Exit code 0: all done.
M.EXIT_OK = 0
--- Exit code 1: some orders failed (130, 143 and 129, interrupted by
-- SIGINT, SIGTERM and SIGHUP, are the commands' own: optimizely.offline.cli.stop).
M.EXIT_FAILURE = 1
--- Exit code 2: a usage or configuration error.
M.EXIT_USAGE = 2

local function load_command(name)
  local modname = "optimizely.offline.cli.cmd." .. name
  local ok, mod = pcall(require, modname)
  if ok then return mod end
  -- only "this command is not written yet" is skipped; real load errors surface
  if tostring(mod):find("module '" .. modname .. "' not found", 1, true) then return nil end
  error(mod, 0)
end

local UsageError = {}
local VersionRequest = {}

--- The version text: this program, libcurl (and its TLS library) and the
-- Lua running it, one per line (`-V`, `--version`).
-- @return the text, without a final newline
function M.version()
  local lua = (type(jit) == "table" and jit.version) or _VERSION
  local curl, tls = core.curl_version()
  return ("optimizely-offline %s\nlibcurl %s%s\n%s"):format(core.VERSION, tostring(curl),
    tls and (" (" .. tostring(tls) .. ")") or "", lua)
end

--- Builds the argparse parser with every command of `M.COMMANDS` that has
-- a module. A usage error raises a private value that `main` turns into
-- exit code 2 (argparse would print and exit 1).
-- @return parser, handlers (command name -> its module)
function M.parser()
  local parser = argparse("optimizely-offline",
    "Send in-store orders to Optimizely Product Recommendations (offline orders API).")
  parser:command_target("command")
  parser:require_command(true)
  -- argparse would print and os.exit(1); we want the usage text and exit code 2
  parser.error = function(p, msg)
    error(setmetatable({ usage = p:get_usage(), message = msg }, UsageError), 0)
  end
  parser:flag("-V --version", "Print the version (and libcurl's and Lua's) and exit.")
    :action(function() error(VersionRequest, 0) end)
  parser:epilog("Exit codes: 0 all done, 1 some orders failed, 2 usage or configuration error (or a ledger that "
    .. "cannot be used), "
    .. "130 interrupted (Ctrl-C), 143 SIGTERM, 129 SIGHUP. See `optimizely-offline <command> --help`.")
  local handlers = {}
  for _, name in ipairs(M.COMMANDS) do
    local mod = load_command(name)
    if mod then
      mod.register(parser)
      handlers[name] = mod
    end
  end
  return parser, handlers
end

-- Runs one parsed command with SIGINT, SIGTERM and SIGHUP raising at once
-- (they stop it as Ctrl-C does), a signal recorded since the start
-- included; a command that accounts for its own setup (`RECORDS_SETUP`:
-- send) switches to raising itself. An interrupt no command path caught
-- (one landing between two of them) still ends in a line and the signal's
-- exit code.
local function run_command(handler, parsed, out, err)
  local ok, code = pcall(function()
    if not handler.RECORDS_SETUP then stop.raise() end
    return handler.run(parsed, out, err)
  end)
  if not ok then
    if not errors.is_interrupt(code) then error(code, 0) end
    err:write("interrupted (", stop.what(), ")\n")
    code = 130
  end
  return stop.exit_code(code)
end

-- The command line's steps: the parser, the arguments, the command.
local function main(argv, out, err)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local parser, handlers = M.parser()
  local ok, parsed = pcall(parser.parse, parser, args)
  if not ok then
    if parsed == VersionRequest then
      out:write(M.version(), "\n")
      return M.EXIT_OK
    end
    if getmetatable(parsed) == UsageError then
      err:write(parsed.usage, "\n\nerror: ", parsed.message, "\n")
      return M.EXIT_USAGE
    end
    error(parsed, 0)
  end
  -- what an option's action found (an old option name: `_warnings`; a
  -- value it cannot take: `_usage_error`)
  if parsed._usage_error then
    err:write(parser:get_usage(), "\n\nerror: ", parsed._usage_error, "\n")
    return M.EXIT_USAGE
  end
  for _, w in ipairs(parsed._warnings or {}) do err:write(w, "\n") end
  return run_command(handlers[parsed.command], parsed, out, err)
end

--- Runs the command line. From its first step a signal is recorded (the
-- trap is in place before the commands' modules load and the arguments are
-- read); each command then says when it raises (`run_command`).
-- @param argv the script's `arg` table (only the positive indices are used)
-- @param out writer for results (anything with `:write`; default io.stdout)
-- @param err writer for messages (default io.stderr)
-- @return exit code: 0 all done, 1 some orders failed, 2 usage or
--   configuration error, 130 interrupted by Ctrl-C (SIGINT), 143 by
--   SIGTERM, 129 by SIGHUP (`M.EXIT_*`)
function M.main(argv, out, err)
  stop.trap(false)
  local ok, code = pcall(main, argv, out or io.stdout, err or io.stderr)
  stop.release()
  if not ok then error(code, 0) end
  return code
end

return M
