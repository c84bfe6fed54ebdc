-- valid: every request carries a valid access token (the hot path).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
wrk.headers["Cookie"] = os.getenv("BENCH_COOKIE")
