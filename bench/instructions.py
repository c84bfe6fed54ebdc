#!/usr/bin/env python3
"""Instructions per request under valgrind's callgrind: the floor against etls-proxy builds.

Time on a shared VM moves by ±15 % between runs and ±40 % between rounds in a noisy hour;
instruction counts do not, so a change to the hot path is judged here first and `make bench`
then says what it is worth in req/s. Counted from the first request after a warm-up to the last
of a fixed-length wrk run at a low rate (callgrind runs the proxy about 50 times slower), over
every thread of the proxy; user space only, and SHA-256 runs without SHA-NI under valgrind, so
the HMAC on the grace and refresh paths counts for more than it costs on the machine.

usage: instructions.py [--paths valid,grace,storm] [--secs 5] [NAME=BIN_DIR[:ENV=VALUE,...] ...]
(default: etls=target/release; the floor is the first BIN_DIR's etls-floor). `STORE=redis` among
a build's values runs it with `refresh.store: redis` on a redis-server of its own."""
import argparse
import glob
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402


class WrkArgs:
    wrk_threads = 1


def parse_bins(specs):
    """`name=dir[:K=V,...]` into `(name, dir, env)`."""
    out = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        if not name or not rest:
            raise SystemExit(f"instructions.py: `{spec}` is not NAME=BIN_DIR[:ENV=VALUE,...]")
        bin_dir, _, env = rest.partition(":")
        out.append((name, bin_dir, dict(kv.split("=", 1) for kv in env.split(",") if kv)))
    return out


def callgrind_total(out):
    """The `totals:` of the dump callgrind_control -d wrote (the one part with a total)."""
    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            for line in f:
                if line.startswith("totals:"):
                    total = max(total, int(line.split()[1]))
    return total


def warm_up_env(script, wrk_env):
    """The unmeasured wrk run's environment. The storm numbers its sessions from 1 in every wrk
    run, so its warm-up gets sessions of its own: otherwise the measured run replays sessions
    already refreshed (answered from the kept result, no auth API call) and charges their
    requests to the refreshes it does make (the storm read 1.34 M instructions per refresh
    instead of 0.33 M). The grace path's warm-up is meant to refresh its sessions."""
    if script == "storm.lua":
        return {**wrk_env, "BENCH_SESSION_PREFIX": wrk_env["BENCH_SESSION_PREFIX"] + "warm-"}
    return wrk_env


def measure(procs, name, cmd, env, port, script, wrk_env, secs, connections, warm, count):
    out = os.path.join(procs.workdir, f"callgrind-{name}.out")
    proc = procs.start(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                              f"--callgrind-out-file={out}", *cmd], env)
    B.wait_port(port, proc, name, timeout=120)
    warm()
    B.wrk(port, script, WrkArgs, 2, connections, warm_up_env(script, wrk_env))
    before = count()
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True, check=True)
    w = B.wrk(port, script, WrkArgs, secs, connections, wrk_env)
    subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
    time.sleep(1)
    served = count() - before if count is not None else 0
    served = served or w["rps"] * secs
    total = callgrind_total(out)
    procs.stop(proc)
    return served, total / max(served, 1), w["non2xx"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bins", nargs="*", default=[f"etls={B.RELEASE}"])
    p.add_argument("--paths", default="valid,grace")
    p.add_argument("--secs", type=int, default=5)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()
    bins = parse_bins(args.bins)
    first = bins[0][1]
    with B.harness("etls-instructions-") as procs:
        wd = procs.workdir
        tokens = B.demo_tokens(first)
        valid = B.session_cookie(tokens, "valid")
        expired = B.session_cookie(tokens, "expired")
        ports = {k: B.free_port() for k in ["app", "auth", "unused", "floor"] + [n for n, _, _ in bins]}
        app = procs.start("app", ["nginx", "-p", wd, "-c", B.render("app.conf", wd, "app.conf",
                                  {"WORKERS": 1, "DIR": wd, "PORT": ports["app"]}), "-g", "daemon off;"])
        B.wait_port(ports["app"], app, "app")
        auth = procs.start("auth", [os.path.join(first, "etls-demo"), "serve", "--app",
                                    f"127.0.0.1:{ports['unused']}", "--auth", f"127.0.0.1:{ports['auth']}"])
        B.wait_port(ports["auth"], auth, "auth")
        run_id = f"demo-rt-instructions-{os.getpid()}-"
        redis = {}

        def redis_port():
            if not redis:
                redis["port"] = B.free_port()
                proc = procs.start("redis", ["redis-server", "--port", str(redis["port"]), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"])
                B.wait_port(redis["port"], proc, "redis-server")
            return redis["port"]

        print(f"| path | build | requests | instructions per request | × floor |\n|---|---|---|---|---|")
        for path in args.paths.split(","):
            floor = None
            if path != "storm":
                served, per, bad = measure(
                    procs, f"floor-{path}",
                    [os.path.join(first, "etls-floor"), "--listen", f"127.0.0.1:{ports['floor']}",
                     "--upstream", f"127.0.0.1:{ports['app']}", "--threads", "1"],
                    {}, ports["floor"], "valid.lua", {"BENCH_COOKIE": valid}, args.secs, args.connections,
                    lambda: None, lambda: 0)
                floor = per
                print(f"| {path} | floor | {served:.0f} | {per:.0f} | 1.000 |", flush=True)
            for name, bin_dir, env in bins:
                prefix = f"{run_id}{name}-{path}-"
                if path == "valid":
                    script, wrk_env, count = "valid.lua", {"BENCH_COOKIE": valid}, lambda: 0
                elif path == "grace":
                    script = "grace.lua"
                    wrk_env = {"BENCH_COOKIE": expired, "BENCH_SESSION_PREFIX": prefix, "BENCH_SESSIONS": "100"}
                    count = lambda: 0  # noqa: E731
                elif path == "storm":
                    script, wrk_env = "storm.lua", {"BENCH_COOKIE": expired, "BENCH_SESSION_PREFIX": prefix}
                    count = lambda: B.auth_calls(ports["auth"])  # noqa: E731  (per refresh)
                else:
                    raise SystemExit(f"instructions.py: no path `{path}` (valid, grace, storm)")

                def warm(port=ports[name], prefix=prefix):
                    if path == "grace":
                        for i in range(100):
                            status, _ = B.http(port, cookie=f"{expired}; refreshToken={prefix}{i}")
                            assert status == 200, f"grace warm-up: {status}"

                store = {}
                if env.get("STORE") == "redis":
                    store = {"refresh": {"store": "redis", "redis": {"url": f"redis://127.0.0.1:{redis_port()}/0"}}}
                config = B.etls_config(wd, f"{name}-{path}", ports[name], ports["app"], ports["auth"], 1, **store)
                served, per, bad = measure(
                    procs, f"{name}-{path}", [os.path.join(bin_dir, "etls-proxy"), "-c", config],
                    {**B.SECRETS, "RUST_LOG": "warn", **env}, ports[name], script, wrk_env, args.secs,
                    args.connections, warm, count)
                ratio = f"{per / floor:.3f}" if floor else "–"
                print(f"| {path} | {name} | {served:.0f}{' refreshes' if path == 'storm' else ''} | "
                      f"{per:.0f} | {ratio} |{' non-2xx: ' + str(bad) if bad else ''}", flush=True)


if __name__ == "__main__":
    main()
