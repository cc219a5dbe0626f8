-- wrk script for bench/verify.py: POST /v1/keys/verify with a random key from BENCH_KEYS.
-- BENCH_ENDPOINT tags the usage rows of this run; BENCH_DELAY_MS paces each connection (half-load runs).
local path = os.getenv("BENCH_KEYS")
local endpoint = os.getenv("BENCH_ENDPOINT") or "/bench"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local reqs = {}
for key in io.lines(path) do
  local body = '{"key":"' .. key .. '","endpoint":"' .. endpoint .. '"}'
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

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
