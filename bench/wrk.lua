-- wrk script for scripts/bench: one request shape per run, configured from the environment, and
-- a machine-readable summary (one JSON line after "BENCH_JSON ") with the exact status counts.
--
--   BENCH_METHOD   GET (default) or POST
--   BENCH_BODY     path of a file whose bytes are the request body (POST)
--   BENCH_AUTH     value of the Authorization header, if any
--
-- Every response is counted by status class in its thread; done() sums them, so a run with any
-- non-2xx response is visible (wrk's own "Non-2xx or 3xx" line lets 3xx through).

local method = os.getenv("BENCH_METHOD") or "GET"
local body_path = os.getenv("BENCH_BODY")
local auth = os.getenv("BENCH_AUTH")

wrk.method = method
if body_path and body_path ~= "" then
  local f = assert(io.open(body_path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok2xx = 0
  non2xx = 0
  first_bad = 0
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok2xx = ok2xx + 1
  else
    non2xx = non2xx + 1
    if first_bad == 0 then first_bad = status end
  end
end

function done(summary, latency, requests)
  local ok, bad, first = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok2xx")
    bad = bad + t:get("non2xx")
    local f = t:get("first_bad")
    if first == 0 and f ~= 0 then first = f end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.1f,' ..
    '"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f,' ..
    '"ok_2xx":%d,"non_2xx":%d,"first_non_2xx_status":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    ok, bad, first, e.connect, e.read, e.write, e.status, e.timeout))
end
