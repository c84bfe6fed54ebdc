-- refresh storm: every request a session the proxy has not seen, so every request is a real
-- auth API round trip. The tokens are pre-generated (one expired access token and one refresh
-- token for all sessions, from BENCH_COOKIE); sessions differ by their auth API refresh token,
-- numbered per thread, so memory stays flat however long the run.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
local base = os.getenv("BENCH_COOKIE")
local run = os.getenv("BENCH_SESSION_PREFIX")
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end
local n = 0
local prefix
function request()
  if not prefix then
    prefix = base .. "; refreshToken=" .. run .. thread_id .. "-"
  end
  n = n + 1
  return wrk.format(nil, nil, { ["Cookie"] = prefix .. n })
end
