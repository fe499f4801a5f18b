-- wrk script: POST one write to bench/apps/write_app.py per request. Thread i sends to the i-th of the
-- comma-separated host:port pairs in WRK_TARGETS (round robin), so one wrk process loads
-- several nodes and reports one latency distribution. Prints a JSON summary at the end.
local threads = 0

function setup(thread)
  local targets = {}
  for target in string.gmatch(os.getenv("WRK_TARGETS"), "[^,]+") do
    table.insert(targets, target)
  end
  local host, port = string.match(targets[threads % #targets + 1], "([^:]+):(%d+)")
  thread.addr = wrk.lookup(host, port)[1]
  threads = threads + 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
wrk.body = "a write under load"

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(99)))
end
