--- The nginx queue's shared-dict store (`opts.shm`): one process delivers
-- for every worker. A push appends "attempts, created, ref, channel, json"
-- to a list in a lua_shared_dict (bounded by `max_queue` and the dict's
-- size, kind "full") and starts no timer; the deliverer (a worker, or the
-- privileged agent) feeds its scheduler from the list (`feed` hook) when a
-- poll timer sees items. Retries wait in the deliverer's scheduler.
--
-- The counts live in the dict too, so that `stats()` says the same in
-- every process: each process adds its refused pushes, the deliverer its
-- scheduler's counts and how many orders it holds.
--
-- At the deliverer's exit the orders it holds go back to the list (the
-- dict outlives a reload: the next deliverer sends them), except those in
-- flight when the grace ended: unknown, as in the memory store.
-- @module optimizely.offline.ngx.store_shm
local ngx = ngx
local core = require("optimizely.offline.core")
local errors = require("optimizely.offline.errors")

local log, ERR, floor, max = require("optimizely.offline.errors").logger(ngx.log), ngx.ERR, math.floor, math.max

local M = {}

local LIST, HELD, INFLIGHT = "q", "c:held", "c:in_flight"

-- List item: "<attempts> <created> <#ref> <ref><#ch> <ch><json>" (any byte in ref).
local function pack(attempts, created, ref, ch, json)
  ch = ch or ""
  return attempts .. " " .. floor(created) .. " " .. #ref .. " " .. ref .. #ch .. " " .. ch .. json
end

local function unpack_item(s)
  local attempts, created, rlen, p = s:match("^(%d+) (%d+) (%d+) ()")
  if not attempts then return nil end
  rlen = tonumber(rlen)
  local ref = s:sub(p, p + rlen - 1)
  local clen, q = s:match("^(%d+) ()", p + rlen)
  if not clen then return nil end
  clen = tonumber(clen)
  local ch = s:sub(q, q + clen - 1)
  return { attempts = tonumber(attempts), created = tonumber(created), ref = ref,
    channel = ch ~= "" and ch or nil, json = s:sub(q + clen) }
end

local Store = {}
Store.__index = Store

--- The store of queue `q` on `dict`.
-- @param q the queue
-- @param dict the ngx.shared dict
-- @param deliverer true in the process that delivers
-- @return the store
function M.new(q, dict, deliverer)
  return setmetatable({ q = q, dict = dict, deliverer = deliverer, name = "shm", ids = 0, last = {} }, Store)
end

--- Items in the dict's list (pushed, not yet taken by the deliverer).
-- @return count
function Store:pending() return self.dict:llen(LIST) or 0 end

--- Appends a pushed order to the dict's list.
-- @param job `{body, ref, created}`
-- @param channel_name the order's channel
-- @return true | nil, err (kind "full", `bound` and `option` "shm", when the dict has no room)
function Store:put(job, channel_name)
  local ok, err = self.dict:rpush(LIST, pack(0, job.created, job.ref, channel_name, job.body))
  if not ok then
    -- "no memory": the dict is the bound here
    return nil, errors.new({ kind = "full", bound = "shm", option = "shm", retryable = true,
      message = "queue full: the lua_shared_dict has no room (" .. tostring(err) .. ")" })
  end
  if self.deliverer then self.q.s:hint_feed() end
  return true
end

--- The deliverer's `feed` hook: up to `room` items from the list into the
-- scheduler (an item this version cannot read is dropped and logged).
-- @param room how many the scheduler can take
-- @return seconds until worth looking again
function Store:feed(room)
  local q, dict = self.q, self.dict
  local st = q.st
  for _ = 1, room do
    local s = dict:lpop(LIST)
    if not s then break end
    local it = unpack_item(s)
    if it then
      self.ids = self.ids + 1
      q.s:take({ id = self.ids, body = it.json, ref = it.ref, attempts = it.attempts, created = it.created,
        channel = st.channel_index[it.channel or st.default_channel] or 1, blob = s })
    else
      log(ERR, "optimizely.offline queue: unreadable item in the shared list dropped")
    end
  end
  return q.o.flush_interval
end

--- The hooks: `feed` in the deliverer, none in a process that only pushes.
-- @return the hooks table or nil
function Store:hooks()
  if not self.deliverer then return nil end
  return { feed = function(room) return self:feed(room) end }
end

--- A counter of `stats()` the dict keeps for every process.
-- @param key the counter
-- @param sub its sub-key, or nil
function Store:counted(key, sub)
  self.dict:incr("c:" .. key .. (sub and ("." .. sub) or ""), 1, 0)
end

--- The deliverer adds its scheduler's counts since the last time, and
-- how many orders it holds and has in flight, to the dict.
function Store:publish()
  local s = self.q.s
  if not s or not self.deliverer then return end
  local st, last, dict = s:stats(), self.last, self.dict
  for _, k in ipairs({ "sent", "retried", "failed", "dead" }) do
    local d = (st[k] or 0) - (last[k] or 0)
    if d ~= 0 then
      dict:incr("c:" .. k, d, 0)
      last[k] = st[k]
    end
  end
  dict:set(HELD, st.queued + st.in_flight)
  dict:set(INFLIGHT, st.in_flight)
end

--- Orders waiting: the list and what the deliverer holds (in the
-- deliverer only: the list is reported once).
-- @return depth
function Store:depth()
  if not self.deliverer then return 0 end
  return self:pending() + self.q.s:stats().queued
end

--- Orders not settled yet, in any process: the list and what the
-- deliverer holds.
-- @return count
function Store:left()
  return self:pending() + (self.dict:get(HELD) or 0)
end

--- Items in the list? Hints the deliverer's scheduler when so.
-- @return boolean
function Store:has_due()
  if not self.deliverer or self:pending() == 0 then return false end
  self.q.s:hint_feed()
  return true
end

--- The deliverer's last chance: every retry due now.
function Store:final()
  if self.deliverer then self.q.s:hurry() end
end

--- The grace ended: what is in flight is unknown; every other order the
-- deliverer holds goes back to the list (reported not delivered only when
-- the dict has no room for it).
-- @param flying the jobs in flight, by token
function Store:at_exit(flying)
  local q = self.q
  if not self.deliverer then return end
  local attempted, unsent = q.s:drop()
  local in_flight, list = {}, {}
  for _, job in pairs(flying) do
    in_flight[job.id] = true
    list[#list + 1] = job
  end
  for _, job in ipairs(list) do q.report:unknown(job) end
  for _, group in ipairs({ attempted, unsent }) do
    for _, info in ipairs(group) do
      if not in_flight[info.id] then self:requeue(info) end
    end
  end
  self:publish()
end

--- One order back to the list at exit (its attempts kept).
-- @param info the job info (with the packed item as `blob`)
function Store:requeue(info)
  local q = self.q
  local it = unpack_item(info.blob or "")
  if it and self.dict:rpush(LIST, pack(info.attempts, it.created, it.ref, it.channel, it.json)) then
    q.events:log("warn", "worker exiting, order " .. core.quote(info.ref)
      .. " put back in the shared dict (lost if nginx is stopping)", false)
    return
  end
  q.report:not_delivered(info, "the shared dict has no room to keep it")
end

--- Pushes go on at exit: the dict outlives the worker.
-- @return false
function Store.refuses_at_exit() return false end

--- For the startup line.
-- @return text
function Store:describe()
  return "shared dict " .. self.q.o.shm .. (self.deliverer and ", delivering" or ", pushing only")
end

--- `stats()` in shared mode: the dict's counts, the same in every process,
-- plus `shared` and `deliverer`.
-- @param paused_for seconds this process's scheduler is paused
-- @return the stats table
function Store:shared_stats(paused_for)
  local dict = self.dict
  local function c(k) return dict:get("c:" .. k) or 0 end
  local dropped = {}
  for _, k in ipairs(dict:get_keys(0)) do
    local sub = k:match("^c:dropped%.(.+)$")
    if sub then dropped[sub] = dict:get(k) end
  end
  local fl = c("in_flight")
  return { shared = true, deliverer = self.deliverer, queued = max(0, self:pending() + c("held") - fl),
    in_flight = fl, sent = c("sent"), retried = c("retried"), failed = c("failed"), dead = c("dead"),
    invalid = c("invalid"), pushed = c("pushed"), unknown = c("unknown"), dropped = dropped,
    paused_for = paused_for }
end

M.Store = Store
return M
