-- wrk script for the delete runs: every request uses a different conversation id.
--
-- wrk ... -s ids.lua URL -- METHOD IDS_FILE THREADS [QUERY]
--   IDS_FILE holds one id a line; thread t of THREADS takes lines t, t+THREADS, t+2*THREADS, ...
--   so no id is sent twice. QUERY (e.g. "?hard=true") is appended to each path.
-- Once a thread has used all its ids it sends an invalid id, which parley answers with 400:
-- done() reports how many such requests were sent (exhausted=N); bench/run.sh discards a
-- run with N > 0 and seeds more ids.

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   threads[#threads + 1] = thread
end

exhausted = 0

local method, query, ids, next_id

function init(args)
   method = args[1]
   local nthreads = tonumber(args[3])
   query = args[4] or ""
   ids, next_id = {}, 1
   local n = 0
   for line in io.lines(args[2]) do
      if line ~= "" then
         if n % nthreads == tid then
            ids[#ids + 1] = line
         end
         n = n + 1
      end
   end
end

function request()
   local id = ids[next_id]
   if id == nil then
      id = "exhausted"
      exhausted = exhausted + 1
   else
      next_id = next_id + 1
   end
   return wrk.format(method, "/v2/conversations/" .. id .. query)
end

function done(summary, latency, requests)
   local sent_exhausted = 0
   for _, thread in ipairs(threads) do
      sent_exhausted = sent_exhausted + thread:get("exhausted")
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH exhausted=%d requests=%d duration_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d\n",
      sent_exhausted, summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
