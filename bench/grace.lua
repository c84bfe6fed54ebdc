-- grace: expired access tokens of K sessions refreshed once before the run, so every request
-- is answered from the kept result (refresh-token check, table lookup, Cookie rewrite, five
-- Set-Cookie headers).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
local base = os.getenv("BENCH_COOKIE")
local prefix = os.getenv("BENCH_SESSION_PREFIX")
local sessions = tonumber(os.getenv("BENCH_SESSIONS"))
local n = 0
function request()
  n = n + 1
  local cookie = base .. "; refreshToken=" .. prefix .. (n % sessions)
  return wrk.format(nil, nil, { ["Cookie"] = cookie })
end
