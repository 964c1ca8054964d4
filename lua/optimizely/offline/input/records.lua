--- What the three readers share: the error record, and the queue that
-- numbers records in the order they are handed out.
-- @module optimizely.offline.input.records
local M = {}

--- An error record: `{error = "<file>:<line>: <message>", code =, file =, line =}`
-- plus the fields of `extra` (e.g. `raw`, `ref`).
-- @param file name used in messages
-- @param line line number the problem is reported at
-- @param code one of the error kinds documented in `optimizely.offline.input`
-- @param message what is wrong (values in it already quoted with `core.quote`)
-- @param extra optional table of more fields
function M.error(file, line, code, message, extra)
  local rec = extra or {}
  rec.error = ("%s:%d: %s"):format(file, line, message)
  rec.code, rec.file, rec.line = code, file, line
  return rec
end

local Queue = {}
Queue.__index = Queue

--- A first-in first-out queue of records. `pop` numbers them: `index`
-- counts records (payloads and errors) from 1 in the order they leave.
function M.queue()
  return setmetatable({ head = 1, tail = 0, index = 0 }, Queue)
end

function Queue:push(rec)
  local t = self.tail + 1
  self.tail = t
  self[t] = rec
end

-- The oldest record, numbered, or nil when the queue is empty.
function Queue:pop()
  local h = self.head
  if h > self.tail then return nil end
  local rec = self[h]
  self[h] = nil
  if h == self.tail then self.head, self.tail = 1, 0 else self.head = h + 1 end
  local i = self.index + 1
  self.index = i
  rec.index = i
  return rec
end

return M
