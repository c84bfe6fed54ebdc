-- faults (bench/soak.py): a mix of three kinds of request while the auth API and the app are
-- killed and restarted. One kind per wrk thread, so a thread's response() knows what it counts
-- (wrk does not tell which request a response answers):
--   /valid    a valid access token;
--   /expired  an expired access token and a valid refresh token, a new auth API session per
--             request (a real refresh every time, never a kept result);
--   /forged   an access token with a bad signature.
-- Statuses are counted per kind and per second of wall clock, so soak.py can line them up with
-- the moments it killed and restarted things; done() adds them as one more JSON line.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")

local kinds = { "valid", "expired", "forged" }
local cookies = {
  valid = os.getenv("SOAK_VALID_COOKIE"),
  expired = os.getenv("SOAK_EXPIRED_COOKIE"),
  forged = os.getenv("SOAK_FORGED_COOKIE"),
}
local run = os.getenv("BENCH_SESSION_PREFIX")

local threads = {}
function setup(thread)
  thread:set("kind", kinds[#threads % #kinds + 1])
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

local n = 0
function request()
  local cookie = cookies[kind]
  if kind == "expired" then
    n = n + 1
    cookie = cookie .. "; refreshToken=" .. run .. thread_id .. "-" .. n
  end
  return wrk.format(nil, "/" .. kind, { ["Cookie"] = cookie })
end

-- counts["<second>:<status>"]: flat, because wrk's thread:get crashes copying nested tables.
counts = {}
function response(status)
  local key = os.time() .. ":" .. status
  counts[key] = (counts[key] or 0) + 1
end

local report = done
function done(summary, latency, requests)
  report(summary, latency, requests)
  -- {"statuses": [{"kind": "valid", "counts": {"<second>:<status>": n, ...}}, ...]}
  local parts = {}
  for _, thread in ipairs(threads) do
    local counted = {}
    for key, count in pairs(thread:get("counts")) do
      table.insert(counted, string.format('"%s":%d', key, count))
    end
    table.insert(parts, string.format('{"kind":"%s","counts":{%s}}', thread:get("kind"), table.concat(counted, ",")))
  end
  io.write('{"statuses":[' .. table.concat(parts, ",") .. ']}\n')
end
