-- wrk script for bench/verify.py: POST /v1/keys/verify with a random key from BENCH_KEYS (its policy's scope,
-- from an allowed address, with a user agent: what bench/verify.py's BENCH_* constants say).
-- BENCH_ENDPOINT tags the usage rows of this run; BENCH_DELAY_MS paces each connection (half-load runs).
local path = os.getenv("BENCH_KEYS")
local endpoint = os.getenv("BENCH_ENDPOINT") or "/bench"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local reqs = {}
for key in io.lines(path) do
  -- every call as a customer's API server sends it: the scope it needs, its client's address and user agent
  local body = '{"key":"' .. key .. '","endpoint":"' .. endpoint .. '","scope":"translate:write",' ..
    '"client_ip":"127.0.0.1","user_agent":"procode-bench/1.0"}'
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
