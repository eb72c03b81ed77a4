-- wrk script for the fixed-request runs (baseline, GET one id, list): the request itself is
-- the static one wrk builds from the URL and -H flags; this only reports the results in one
-- machine-readable line for bench/run.sh. Latencies are in microseconds.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
