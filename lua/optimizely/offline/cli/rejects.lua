--- A rejects file: the orders a run did not send, one NDJSON line each,
-- `{"payload":…, "error":…, "source":"file:line", "stage":…, "transformed":bool}`,
-- that `send` reads back as it is (the NDJSON reader unwraps the lines, and
-- a transformed payload is not transformed again). Lines without a payload
-- (input errors: a CSV row with the wrong field count, an order whose rows
-- conflict or are apart, a line that is not JSON) keep the text the reader
-- had — `raw` (a CSV order's rows), `raw_format` ("csv" or "ndjson") and,
-- for CSV, `raw_header` and `raw_delimiter` — so the line can be fixed in
-- the rejects file and sent again with it (the later rows of a split order
-- also keep `split_from`, the line of its first rows, and are not sent
-- until that key is removed); `origin` is the first source of a record
-- re-sent from a rejects file.
--
-- Under `--pseudonymise` (items marked `pseudonymise` by the records
-- iterator) the file never holds an e-mail address: every line says
-- `"pseudonymised":true`; a payload is kept only once pseudonymised (it
-- holds the id: sending the file again, with or without the flag, posts no
-- e-mail); a record rejected before that (input, transform, an address the
-- pseudonymiser refuses) is left out — no `payload`, no `raw` (to fix it
-- and send it again, go to its `source`), but `"withheld":"record"`; and any
-- address-like text in the error messages is replaced by `<e-mail>`.
--
-- The file holds personal data: it is private (0600), written to a
-- temporary file renamed into place when the run ends (`close`), and the
-- default one (`optimizely-offline-unsent-<time>-<random>.ndjson`) is
-- created only if nothing is at that name yet, never through a symlink.
-- @module optimizely.offline.cli.rejects
local core = require("optimizely.offline.core")
local files = require("optimizely.offline.files")
local common = require("optimizely.offline.cli.common")

local M = {}

local json_encode = core.json_encode

--- The fields of an error worth keeping in a rejects line (never a body:
-- the message says what it held).
function M.error_fields(err, stage, message)
  if type(err) == "table" then
    local list
    if type(err.errors) == "table" and #err.errors > 0 then
      list = {}
      for i, e in ipairs(err.errors) do list[i] = { code = e.code, message = e.message } end
    end
    return { kind = err.kind, message = err.message, status = err.status, code = err.code,
             problems = err.problems, errors = list, attempts = err.attempts,
             curl_code = err.curl_code, retryable = err.retryable }
  end
  return { kind = stage or "input", message = tostring(err or message) }
end

-- Random hex, for a file name nobody can predict.
local function random_hex(n)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(n)
  if f then f:close() end
  if not bytes or #bytes < n then
    math.randomseed(os.time() + math.floor((os.clock() * 1e6) % 1e6))
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    bytes = table.concat(t)
  end
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

--- Creates the default unsent file in the current directory: a new name
-- (time and a random suffix), created 0600 and only if nothing (not even a
-- dangling symlink) is there.
-- @return path
function M.default_path()
  local base = "optimizely-offline-unsent-" .. os.date("%Y%m%d-%H%M%S")
  local err
  for _ = 1, 10 do
    local path = ("%s-%s.ndjson"):format(base, random_hex(4))
    local fh, e = files.create_new(path)
    if fh then fh:close(); return path end
    err = e
  end
  common.config_error("cannot create a file for the orders not sent: " .. tostring(err))
end

local Writer = {}
Writer.__index = Writer

--- Creates the file (the default one gets its name now); idempotent.
function Writer:open()
  if self.sink then return end
  if self.default then self.path = M.default_path() end
  self.sink = common.open_output(self.path, "rejects file", self.keep)
end

local scrub = common.mask_emails

local function scrub_list(list, field)
  if type(list) ~= "table" then return list end
  local out = {}
  for i, x in ipairs(list) do
    local c = {}
    for k, v in pairs(x) do c[k] = v end
    c[field] = scrub(x[field])
    out[i] = c
  end
  return out
end

-- A line of a --pseudonymise run: no address in it (see the module doc).
local function private(t, item)
  t.pseudonymised = true
  if not item.pseudonymised or item.withhold then
    t.payload, t.raw, t.raw_format, t.raw_header, t.raw_delimiter, t.split_from = nil, nil, nil, nil, nil, nil
    t.withheld = "record"
  end
  local e = t.error
  e.message = scrub(e.message)
  e.problems = scrub_list(e.problems, "message")
  e.errors = scrub_list(e.errors, "message")
  return t
end

-- One line for an item; a payload no encoder can write (a function in it)
-- keeps the error and where it came from.
local function line_of(item, err)
  local payload = item.payload or (item.rec and item.rec.payload)
  local rec = item.rec
  local t = {
    payload = payload, error = M.error_fields(err, item.stage, item.message),
    source = rec and ("%s:%s"):format(tostring(rec.file), tostring(rec.line or "?")) or nil,
    origin = rec and rec.origin or nil,
    channel = rec and rec.channel or nil,
    stage = item.stage or (type(err) == "table" and err.kind) or nil,
    transformed = item.transformed or false,
    raw = (not payload and rec) and rec.raw or nil,
  }
  if t.raw then -- how to read it again (see optimizely.offline.input.ndjson)
    t.raw_format, t.raw_header, t.raw_delimiter = rec.raw_format, rec.raw_header, rec.raw_delimiter
    -- the later rows of a split order: not sent alone until someone says so
    if rec.code == "split_order" then t.split_from = rec.first_line end
  end
  if item.pseudonymise then private(t, item) end
  local s = json_encode(t)
  if s then return s end
  t.payload, t.unserialisable = nil, true
  return (json_encode(t))
end

--- Writes one line for `item` (a records item, with `stage`) and `err`.
-- Flushed line by line: a full disk shows at once.
function Writer:add(item, err)
  self:open()
  local fh = self.sink.fh
  local ok, werr = fh:write(line_of(item, err), "\n")
  if ok then ok, werr = fh:flush() end
  if not ok then error("cannot write rejects file " .. common.label(self.path) .. ": " .. tostring(werr), 0) end
  self.count = self.count + 1
end

--- Puts the file in place (renames the temporary file over the path).
function Writer:close()
  if self.sink then
    local sink = self.sink
    self.sink = nil
    local ok, e = pcall(sink.close, sink)
    if not ok then error("cannot write rejects file " .. common.label(self.path) .. ": " .. tostring(e), 0) end
  end
end

--- Throws the file away (the path is left as it was).
function Writer:abort()
  if self.sink then self.sink:abort(); self.sink = nil end
  if self.default and self.path then os.remove(self.path) end
end

--- A rejects writer.
-- @param path file to write (replaced when the run ends), or nil for none
-- @param opts optional: `lazy = true` creates the file at the first line;
--   `default = true` makes it the default unsent file (lazy, its path made
--   then); `keep = true` leaves it to the caller to close or abort it when
--   the command fails (else `common.guard` throws it away)
-- @return writer `{:add(item, err), :close(), :abort(), count, path, default}` or nil
function M.new(path, opts)
  opts = opts or {}
  if not path and not opts.default then return nil end
  local self = setmetatable({ count = 0, path = path, default = opts.default or nil, keep = opts.keep }, Writer)
  if not (opts.lazy or opts.default) then self:open() end
  return self
end

return M
