-- wrk script for bench.sh: at the end of a run, print one line that bench.sh
-- parses (wrk's own report mixes units: us, ms, s).
-- Latencies are in microseconds; errors are wrk's counters.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH rps=%.1f p50_us=%d p99_us=%d requests=%d connect=%d read=%d write=%d timeout=%d status=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.requests,
    e.connect, e.read, e.write, e.timeout, e.status))
end
