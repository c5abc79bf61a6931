-- wrk script for bench.sh's switch-under-load run: tallies which release
-- answered each request (the x-release response header), every status code,
-- and wrk's error counters, then prints them as lines bench.sh parses:
--   TALLY release=<label or (none)> count=<n>
--   STATUS code=<status> count=<n>
--   ERRORS requests=<n> connect=<n> read=<n> write=<n> timeout=<n> status=<n>
-- wrk's "status" error counts answers with a status above 399.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  releases = {}
  statuses = {}
end

function response(status, headers, body)
  local release = "(none)"
  for name, value in pairs(headers) do
    if string.lower(name) == "x-release" then
      release = value
    end
  end
  releases[release] = (releases[release] or 0) + 1
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
end

-- adds the counts of table "from" into table "into"
local function merge(into, from)
  for key, count in pairs(from or {}) do
    into[key] = (into[key] or 0) + count
  end
end

function done(summary, latency, requests)
  local all_releases, all_statuses = {}, {}
  for _, thread in ipairs(threads) do
    merge(all_releases, thread:get("releases"))
    merge(all_statuses, thread:get("statuses"))
  end
  for release, count in pairs(all_releases) do
    io.write(string.format("TALLY release=%s count=%d\n", release, count))
  end
  for code, count in pairs(all_statuses) do
    io.write(string.format("STATUS code=%s count=%d\n", code, count))
  end
  local e = summary.errors
  io.write(string.format("ERRORS requests=%d connect=%d read=%d write=%d timeout=%d status=%d\n",
    summary.requests, e.connect, e.read, e.write, e.timeout, e.status))
end
