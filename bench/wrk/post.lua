-- wrk script for the Enclave benchmark: POST one fixed JSON body, print a JSON summary.
--
--   WRK_BODY_FILE=body.json WRK_HEADERS_FILE=headers.txt wrk -s post.lua ... <url>
--
-- headers.txt holds one "Name: value" per line. done() prints one line starting with
-- "WRK_JSON " that bench/run.py parses: request count, errors by kind, latency in
-- microseconds (min/max/mean/stdev and the percentiles listed below).

local function read_file(path)
  local file = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local text = file:read("*a")
  file:close()
  return text
end

wrk.method = "POST"
wrk.body = read_file(os.getenv("WRK_BODY_FILE"))
for line in read_file(os.getenv("WRK_HEADERS_FILE")):gmatch("[^\r\n]+") do
  local name, value = line:match("^([^:]+):%s*(.-)%s*$")
  if name then
    wrk.headers[name] = value
  end
end

local percentiles = {
  1, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 97, 98, 99, 99.5, 99.9, 99.99,
}

function done(summary, latency, requests)
  local points = {}
  for _, q in ipairs(percentiles) do
    points[#points + 1] = string.format("[%g,%d]", q, latency:percentile(q))
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"max":%d,"mean":%.3f,"stdev":%.3f,"percentiles":[%s]}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(points, ",")))
end
