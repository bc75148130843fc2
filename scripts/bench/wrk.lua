-- wrk script for scripts/bench.sh. BENCH_MODE picks the request:
--   get    verification GET (the URL given to wrk)
--   post   a fixed signed POST: body from BENCH_BODY_FILE, X-Hub-Signature-256 from BENCH_SIGNATURE
--   text   an unsigned text-message POST with a fresh message id and sender per request
--          (a repeated id is deduplicated; one sender's messages are answered one at a
--          time), from the template BENCH_TEMPLATE_FILE with @@ID@@ and @@FROM@@ in it;
--          needs the server's signature check off (allow_unsigned, no app secret).
--          BENCH_RUN (a number) keeps senders apart between runs.
-- BENCH_LIMIT (per thread, optional) stops a thread after that many responses.
-- done() prints one machine-readable RESULT line.

local mode = os.getenv("BENCH_MODE") or "get"
local tag = os.getenv("BENCH_TAG") or "0"
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local run = tonumber(os.getenv("BENCH_RUN") or "0")

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local threads = {}
local next_thread = 1

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

local template
local counter = 0
local responses = 0

function init(args)
  if mode == "post" then
    wrk.method = "POST"
    wrk.body = slurp(os.getenv("BENCH_BODY_FILE"))
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIGNATURE")
  elseif mode == "text" then
    template = slurp(os.getenv("BENCH_TEMPLATE_FILE"))
  end
end

if mode == "text" then
  function request()
    counter = counter + 1
    -- Unique per run (tag), thread and request; senders are 13-digit US numbers.
    local id = string.format("wamid.BENCH.%s.%d.%d", tag, tid, counter)
    -- Senders unique across runs too: a request cut off when a run ends may leave its
    -- sender leased for a while, and a later message of that sender would wait on it.
    local from = string.format("1555%02d%d%07d", run % 100, tid % 10, counter % 10000000)
    local body = template:gsub("@@ID@@", id):gsub("@@FROM@@", from)
    return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
  end
end

if limit > 0 then
  function response(status, headers, body)
    responses = responses + 1
    if responses >= limit then
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
