-- wrk script for bench/verify.py: POST /v1/keys/verify with a random key from BENCH_KEYS (its policy's scope,
-- from an allowed address, with a user agent: what bench/verify.py's BENCH_* constants say).
-- BENCH_ENDPOINT tags the usage rows of this run; BENCH_DELAY_MS paces each connection (half-load runs).
--
-- BENCH_INTERVAL_US turns on a fixed rate (bench/mixed.py): each wrk thread sends one call every that many
-- microseconds on a schedule that does not wait for answers, and a call's latency is counted from the moment the
-- schedule meant it to leave, not from when a free connection sent it. A stalled server therefore shows as
-- latency of every call it held up, as a client sending at that rate sees it (no coordinated omission, as wrk2
-- measures). Calls are matched to their answers by X-Request-ID, which the portal echoes.
local path = os.getenv("BENCH_KEYS")
local endpoint = os.getenv("BENCH_ENDPOINT") or "/bench"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local interval_us = tonumber(os.getenv("BENCH_INTERVAL_US") or "0")
local bodies, reqs = {}, {}
for key in io.lines(path) do
  -- every call as a customer's API server sends it: the scope it needs, its client's address and user agent
  local body = '{"key":"' .. key .. '","endpoint":"' .. endpoint .. '","scope":"translate:write",' ..
    '"client_ip":"127.0.0.1","user_agent":"procode-bench/1.0"}'
  bodies[#bodies + 1] = body
  reqs[#reqs + 1] = wrk.format("POST", "/v1/keys/verify", {["Content-Type"] = "application/json"}, body)
end
math.randomseed(math.floor(os.clock() * 1000000) + os.time())

request = function()
  return reqs[math.random(#reqs)]
end

if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

local function json_line(summary, fields)
  local e = summary.errors
  local parts = {}
  for name, value in pairs(fields) do
    parts[#parts + 1] = string.format('"%s": %d', name, value)
  end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, %s}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ", ")))
end

done = function(summary, latency, requests)
  json_line(summary, {p50_us = latency:percentile(50), p99_us = latency:percentile(99)})
end

if interval_us > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_us()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC, the same clock in every thread
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
  end

  -- Per thread (globals, so that done() can read them with thread:get): the schedule's start, the slots that
  -- connections have claimed but not sent (a queue), when each sent slot counts from, and each answer's
  -- slot and latency.
  start_us, next_slot, head, tail = nil, 0, 1, 0
  claimed, counted_from, answered_slots, latencies, errors = {}, {}, {}, {}, 0

  -- A connection that is free claims the next slot and waits until it is due (wrk's timers are whole ms, so
  -- it may leave up to 1 ms early: then its latency counts from when it left).
  delay = function()
    local now = now_us()
    start_us = start_us or now
    tail = tail + 1
    claimed[tail] = next_slot
    next_slot = next_slot + 1
    local wait_ms = (start_us + claimed[tail] * interval_us - now) / 1000
    return wait_ms > 1 and math.floor(wait_ms) or 0
  end

  -- The earliest claimed slot leaves now: all connections are alike, so whichever is ready sends it.
  request = function()
    if start_us == nil then -- wrk checks the script by asking for one request before the run: no slot
      return wrk.format("POST", "/v1/keys/verify", {["Content-Type"] = "application/json"}, bodies[1])
    end
    local now = now_us()
    local slot
    if head <= tail then
      slot = claimed[head]
      claimed[head] = nil
      head = head + 1
    else -- a reconnected connection sends without a delay() first
      slot = next_slot
      next_slot = next_slot + 1
    end
    counted_from[slot] = math.min(start_us + slot * interval_us, now)
    local headers = {["Content-Type"] = "application/json", ["X-Request-ID"] = "s" .. slot}
    return wrk.format("POST", "/v1/keys/verify", headers, bodies[math.random(#bodies)])
  end

  response = function(status, headers, body)
    local slot = tonumber(string.sub(headers["X-Request-ID"] or "", 2))
    local from = slot and counted_from[slot]
    if from then
      counted_from[slot] = nil
      answered_slots[#answered_slots + 1] = slot
      latencies[#latencies + 1] = now_us() - from
      if status ~= 200 then
        errors = errors + 1
      end
    end
  end

  local threads = {}
  setup = function(thread)
    threads[#threads + 1] = thread
  end

  -- Over the slots due up to 1 s before the end (calls in flight when wrk stops are not lost calls): what
  -- was answered, and every slot never answered counted as slower than any answer.
  done = function(summary)
    local cutoff, answered, missing, window_us, all, status_errors = now_us() - 1e6, 0, 0, 0, {}, 0
    for _, thread in ipairs(threads) do
      local first, slots, lats = thread:get("start_us"), thread:get("answered_slots"), thread:get("latencies")
      if first then
        local due = math.floor((cutoff - first) / interval_us) + 1 -- slots 0 .. due-1
        local got = 0
        for i = 1, #slots do
          if slots[i] < due then
            got = got + 1
            all[#all + 1] = lats[i]
          end
        end
        answered, missing = answered + got, missing + (due - got)
        window_us = math.max(window_us, cutoff - first)
        status_errors = status_errors + thread:get("errors")
      end
    end
    table.sort(all)
    local file = os.getenv("BENCH_LATENCY_FILE") -- every latency (us), and -1 for each call never answered
    if file then
      local out = io.open(file, "w")
      out:write(table.concat(all, "\n"), "\n", string.rep("-1\n", missing))
      out:close()
    end
    local total = #all + missing
    local function pct(p)
      local rank = math.max(1, math.ceil(total * p / 100))
      return rank <= #all and all[rank] or -1 -- -1: beyond every answer (a call never answered)
    end
    json_line(summary, {
      answered = answered, missing = missing, window_us = window_us, non_200 = status_errors,
      p50_us = pct(50), p90_us = pct(90), p99_us = pct(99), p999_us = pct(99.9), max_us = all[#all] or -1,
    })
  end
end
