--- The one-line progress bar of the CLI, on stderr and only when stderr is
-- a terminal (never with --quiet): done/total once the total is known, else
-- the share of input bytes read, orders/s, failures and an ETA.
-- @module optimizely.offline.cli.progress
local input = require("optimizely.offline.input")

local M = {}

--- Is `fh` io.stderr on a terminal? (No luaposix here: the shell is asked
-- whether fd 2 is a terminal.)
function M.isatty(fh)
  if fh ~= io.stderr then return false end
  local ok, _, code = os.execute("test -t 2")
  return ok == true or ok == 0 or (code == 0 and ok ~= nil and ok ~= false)
end

local function duration(s)
  s = math.floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return ("%dm%02ds"):format(math.floor(s / 60), s % 60) end
  return ("%dh%02dm"):format(math.floor(s / 3600), math.floor(s % 3600 / 60))
end

local Progress = {}
Progress.__index = Progress

--- Notes a file opened by the reader (its bytes read give the fraction).
function Progress:file(state) self.files[#self.files + 1] = state end

--- The share done (0..1), or nil when it cannot be told.
function Progress:fraction()
  if self.total and self.total > 0 then return math.min(self.done / self.total, 1) end
  local b, s = 0, 0
  for _, st in ipairs(self.files) do b = b + (st.bytes or 0); s = s + (st.size or 0) end
  if self.size and self.size > 0 then s = self.size end
  return s > 0 and math.min(b / s, 1) or nil
end

-- The bar's text for `done` orders, `failed` of them failed.
function Progress:line(done, failed, now)
  local el = now - self.started
  local rate = el > 0 and done / el or 0
  local frac = self:fraction()
  local bar, eta = "", ""
  if frac then
    local w = 24
    local n = math.floor(frac * w + 0.5)
    bar = "[" .. ("#"):rep(n) .. ("."):rep(w - n) .. "] " .. ("%3d%% "):format(math.floor(frac * 100))
    if frac > 0.01 and frac < 1 then eta = ", ETA " .. duration(el / frac - el) end
  end
  local count = self.total and (done .. "/" .. self.total) or tostring(done)
  return ("\r%s%s done, %d failed, %.0f orders/s%s\27[K"):format(bar, count, failed, rate, eta)
end

--- Redraws the bar (at most 10 times a second unless `force`).
function Progress:update(done, failed, force)
  self.done, self.failed = done, failed
  if not self.enabled then return end
  local now = self.clock()
  if not force and now - self.last < 0.1 then return end
  self.last = now
  local line = self:line(done, failed, now)
  if line == self.shown then return end
  self.err:write(line)
  self.shown = line
end

--- Clears the bar so a message line can be printed; the next update redraws it.
function Progress:clear()
  if self.enabled and self.shown then self.err:write("\r\27[K"); self.shown = nil; self.last = 0 end
end

--- Draws the bar a last time and ends its line.
function Progress:finish()
  if self.enabled then self:update(self.done, self.failed, true); self.err:write("\n"); self.shown = nil end
end

--- A progress bar.
-- @param err writer (the bar shows only when it is io.stderr on a terminal)
-- @param quiet no bar at all
-- @param clock function returning seconds
-- @param paths optional list of input files (their sizes give the fraction)
function M.new(err, quiet, clock, paths)
  local self = setmetatable({ done = 0, failed = 0, started = clock(), files = {}, total = nil,
                              err = err, clock = clock, last = 0 }, Progress)
  self.enabled = not quiet and M.isatty(err)
  if self.enabled and paths then
    local size = 0
    for _, p in ipairs(paths) do
      local s = input.total_hint(p)
      if not s then size = nil; break end
      size = size + s
    end
    self.size = size
  end
  return self
end

return M
