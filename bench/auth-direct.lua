-- The auth API on its own, called as the proxy calls it: the ceiling of the refresh storm.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
local run = os.getenv("BENCH_SESSION_PREFIX")
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end
local n = 0
function request()
  n = n + 1
  return wrk.format("POST", "/refreshtoken",
    { ["Content-Type"] = "application/json", ["Cookie"] = "refreshToken=" .. run .. thread_id .. "-" .. n }, "{}")
end
