-- wrk script: POST to /invocations a JSON body (BENCH_BODY), or the bytes of BENCH_BODY_FILE with
-- Content-Type BENCH_CONTENT_TYPE (raw image bodies); print one machine-readable summary line.
wrk.method = "POST"
local file = os.getenv("BENCH_BODY_FILE")
if file and file ~= "" then
  local f = assert(io.open(file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/octet-stream"
else
  local body = os.getenv("BENCH_BODY")
  wrk.body = (body and body ~= "") and body or '{"inputs": "I love this!"}'
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
