-- herd: many connections, one expired session: one auth API call, everyone gets its result.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
wrk.headers["Cookie"] = os.getenv("BENCH_COOKIE")
