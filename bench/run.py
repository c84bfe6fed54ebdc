#!/usr/bin/env python3
"""`make bench`: etls-proxy side by side with the floor (a bare Pingora pass-through), nginx
proxy_pass and nginx + njs, in one run, alternating A B A B, reported as ratios to the floor.

Everything listens on 127.0.0.1 and every load loop has a fixed duration.
"""

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
RELEASE = os.path.join(ROOT, "target", "release")
SECRETS = {
    "ETLS_ACCESS": "bench-access-secret-0123456789abcdef",
    "ETLS_REFRESH": "bench-refresh-secret-0123456789abcdef",
}


class Processes:
    """Every process the run starts, stopped however the run ends."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def start(self, name, cmd, env=None):
        """Starts `cmd` logging to `<name>.log` (appended to, so a restarted process keeps one log)."""
        log = open(os.path.join(self.workdir, f"{name}.log"), "a")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        return self.track(name, proc)

    def track(self, name, proc):
        """Adds a process started elsewhere, to be stopped with the others."""
        self.procs.append((name, proc))
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for _, proc in reversed(self.procs):
            self.stop(proc)


@contextlib.contextmanager
def harness(prefix):
    """A fresh work dir and its Processes, all stopped however the run ends (an exception,
    Ctrl-C or SIGTERM)."""
    procs = Processes(tempfile.mkdtemp(prefix=prefix))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        yield procs
    finally:
        procs.stop_all()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {name} exited at start (see its log)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: {name} did not open 127.0.0.1:{port}")


def http(port, path="/", cookie=None, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rss_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def wrk(port, script, args, duration, connections, env, path="/", threads=None, procs=None):
    """One wrk run: the JSON lines the script prints (bench/report.lua's, and any it adds) merged
    into one dict. With `procs`, wrk is tracked there, so an interrupted run stops it too."""
    cmd = ["wrk", "-t", str(threads or args.wrk_threads), "-c", str(connections), "-d", f"{duration}s",
           "--timeout", "10s", "-s", os.path.join(BENCH, script), f"http://127.0.0.1:{port}{path}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BENCH_DIR": BENCH, **env})
    if procs:
        procs.track("wrk", proc)
    try:
        stdout, stderr = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    result = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    if proc.returncode != 0 or not result:
        sys.exit(f"bench: wrk failed: {stdout}\n{stderr}")
    return result


def median(results, key):
    return statistics.median(r[key] for r in results)


def alternate(targets, rounds, run_one):
    """Runs every target once per round, in a rotated order, so drift hits all alike."""
    results = {name: [] for name, _ in targets}
    for i in range(rounds):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        for name, port in order:
            r = run_one(name, port)
            results[name].append(r)
            print(f"  round {i + 1} {name:<14} {r['rps']:>10.0f} req/s  p50 {r['p50_us']:>6} us  "
                  f"p99 {r['p99_us']:>7} us  non-2xx {r['non2xx']}  errors {r['connect'] + r['read'] + r['write'] + r['timeout']}",
                  flush=True)
    return results


def summarize(results, floor="floor"):
    base = results[floor]
    b_rps, b_p50, b_p99 = median(base, "rps"), median(base, "p50_us"), median(base, "p99_us")
    rows = []
    for name, rs in results.items():
        rps, p50, p99 = median(rs, "rps"), median(rs, "p50_us"), median(rs, "p99_us")
        rows.append((name, rps, rps / b_rps, p50, p50 / b_p50, p99, p99 / b_p99,
                     sum(r["non2xx"] for r in rs), sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in rs)))
    return rows


def table(title, rows, floor_name):
    out = [f"\n### {title}\n",
           f"| target | req/s (median) | × {floor_name} | p50 µs | × {floor_name} | p99 µs | × {floor_name} | non-2xx | socket errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rps, r_rps, p50, r_p50, p99, r_p99, bad, errs in rows:
        out.append(f"| {name} | {rps:.0f} | {r_rps:.2f} | {p50:.0f} | {r_p50:.2f} | {p99:.0f} | {r_p99:.2f} | {bad} | {errs} |")
    return "\n".join(out)


def render(template, workdir, name, values):
    with open(os.path.join(BENCH, "nginx", template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace(f"__{key}__", str(value))
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def etls_config(workdir, name, port, app, auth, threads, **sections):
    """The proxy's config file; each of `sections` (`refresh={...}`) is merged into that
    section of the config. Written as JSON, which is YAML."""
    conf = {
        "listen": [f"127.0.0.1:{port}"],
        "pingora": {"threads": threads, "pid_file": f"{workdir}/{name}.pid", "upgrade_sock": f"{workdir}/{name}.sock"},
        "upstream": {"address": f"127.0.0.1:{app}"},
        "auth_api": {"refresh_url": f"http://127.0.0.1:{auth}/refreshtoken", "timeout_ms": 10000},
        "refresh": {"grace_secs": 3600, "max_entries": 100000},
        # Like the nginx references (`access_log off`): the comparison is of the proxying.
        "log": {"access": False},
    }
    for section, values in sections.items():
        conf.setdefault(section, {}).update(values)
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        json.dump(conf, f, indent=2)
    return path


def demo_tokens(bin_dir=RELEASE):
    """Tokens signed with SECRETS by etls-demo: `valid`, `expired`, `refresh` (bound to its one
    `refresh_api`), `tampered`; plus `legacy`, a refresh token as the old Next.js routes mint it."""
    tokens = json.loads(subprocess.run([os.path.join(bin_dir, "etls-demo"), "tokens"], capture_output=True,
                                       text=True, check=True, env={**os.environ, **SECRETS}).stdout)
    tokens["legacy"] = legacy_refresh_token(SECRETS["ETLS_REFRESH"])
    return tokens


def legacy_refresh_token(secret):
    """An HS256 refresh token without `sid` (no session binding): one token serves the many
    auth API sessions a load test makes up, as during the migration from the old routes."""
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"username": "demo", "exp": int(time.time()) + 43200}).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def session_cookie(tokens, access):
    """`accessTokenEtls` (one of `tokens`' names) with a refresh token any made-up `refreshToken`
    may go with (`legacy`: unbound, refreshed under `tokens.unbound_refresh: allow`)."""
    return f"accessTokenEtls={tokens[access]}; refreshTokenEtls={tokens['legacy']}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="threads/worker processes of every proxy and of the app")
    p.add_argument("--herd-connections", type=int, default=1000)
    p.add_argument("--soak", type=int, default=120, help="seconds of refresh storm for the memory check (0: skip)")
    p.add_argument("--report", default=os.path.join(ROOT, "target", "bench-report.md"))
    args = p.parse_args()

    with harness("etls-bench-") as procs:
        run(args, procs.workdir, procs)


def run(args, workdir, procs):
    env = dict(SECRETS)
    tokens = demo_tokens()
    valid_cookie = session_cookie(tokens, "valid")
    expired_base = session_cookie(tokens, "expired")
    run_id = f"demo-rt-{os.getpid()}-{int(time.time())}-"

    ports = {k: free_port() for k in ["app", "auth", "auth_slow", "floor", "etls", "herd", "soak", "nginx", "njs", "unused1", "unused2",
                                      "redis", "etls_redis", "herd_a", "herd_b", "herd_c"]}
    w = args.workers
    app = procs.start("app", ["nginx", "-p", workdir, "-c", render("app.conf", workdir, "app.conf",
                                                                      {"WORKERS": w, "DIR": workdir, "PORT": ports["app"]}), "-g", "daemon off;"])
    wait_port(ports["app"], app, "app (nginx)")
    demo = os.path.join(RELEASE, "etls-demo")
    auth = procs.start("auth", [demo, "serve", "--app", f"127.0.0.1:{ports['unused1']}", "--auth", f"127.0.0.1:{ports['auth']}"])
    auth_slow = procs.start("auth-slow", [demo, "serve", "--app", f"127.0.0.1:{ports['unused2']}", "--auth",
                                          f"127.0.0.1:{ports['auth_slow']}", "--auth-delay-ms", "200"])
    wait_port(ports["auth"], auth, "auth API")
    wait_port(ports["auth_slow"], auth_slow, "slow auth API")

    floor = procs.start("floor", [os.path.join(RELEASE, "etls-floor"), "--listen", f"127.0.0.1:{ports['floor']}",
                                  "--upstream", f"127.0.0.1:{ports['app']}", "--threads", str(w)])
    proxy_bin = os.path.join(RELEASE, "etls-proxy")
    etls = procs.start("etls", [proxy_bin, "-c", etls_config(workdir, "etls", ports["etls"], ports["app"], ports["auth"], w)],
                       {**env, "RUST_LOG": "warn"})
    with open(os.path.join(workdir, "check.js"), "w") as f, open(os.path.join(BENCH, "nginx", "check.js")) as src:
        f.write(src.read().replace("__ETLS_ACCESS__", SECRETS["ETLS_ACCESS"]))
    nginx = procs.start("nginx", ["nginx", "-p", workdir, "-c", render("proxy.conf", workdir, "proxy.conf", {
        "WORKERS": w, "DIR": workdir, "PORT": ports["nginx"], "APP": ports["app"]}), "-g", "daemon off;"])
    njs = procs.start("njs", ["nginx", "-p", workdir, "-c", render("njs.conf", workdir, "njs.conf", {
        "WORKERS": w, "DIR": workdir, "PORT": ports["njs"], "APP": ports["app"]}), "-g", "daemon off;"])
    for name, proc in [("floor", floor), ("etls", etls), ("nginx", nginx), ("njs", njs)]:
        wait_port(ports[name], proc, name)
    # refresh.store: redis, against a redis-server of its own (no persistence).
    redis = procs.start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"])
    wait_port(ports["redis"], redis, "redis-server")
    shared = {"store": "redis", "redis": {"url": f"redis://127.0.0.1:{ports['redis']}/0"}}
    etls_redis = procs.start("etls-redis", [proxy_bin, "-c", etls_config(workdir, "etls-redis", ports["etls_redis"], ports["app"],
                                                                         ports["auth"], w, refresh=shared)],
                             {**env, "RUST_LOG": "warn"})
    wait_port(ports["etls_redis"], etls_redis, "etls-proxy (store: redis)")

    # Sanity: every target passes a valid token; the checking ones refuse a tampered one.
    for name in ["floor", "etls", "etls_redis", "nginx", "njs"]:
        status, _ = http(ports[name], cookie=valid_cookie)
        assert status == 200, f"{name} answered {status} to a valid token"
    tampered = f"accessTokenEtls={tokens['tampered']}"
    assert http(ports["etls"], cookie=tampered)[0] == 401
    assert http(ports["njs"], cookie=tampered)[0] == 401

    report = [f"# etls-proxy bench, {time.strftime('%Y-%m-%d %H:%M')}",
              f"\nMachine: {os.cpu_count()} cores, {platform_line()}. wrk -t{args.wrk_threads} -c{args.connections} "
              f"-d{args.duration}s, {args.rounds} rounds alternating, {w} worker(s) per proxy and app; floor and etls-proxy "
              f"with the same Pingora settings (threads {w}, work_stealing off)."]
    names = {"floor": "floor (bare Pingora)", "etls": "etls-proxy", "etls_redis": "etls-proxy, store: redis",
             "nginx": "nginx proxy_pass", "njs": "nginx + njs"}

    print("\n== valid: every request carries a valid access token", flush=True)
    valid = alternate([(n, ports[n]) for n in ["floor", "etls", "etls_redis", "nginx", "njs"]], args.rounds,
                      lambda n, port: wrk(port, "valid.lua", args, args.duration, args.connections, {"BENCH_COOKIE": valid_cookie}))
    valid_rows = summarize(valid)
    report.append(table("valid (the hot path)", [(names[r[0]],) + r[1:] for r in valid_rows], "floor"))

    print("\n== grace: expired sessions answered from the kept refresh result", flush=True)
    sessions = 100
    for i in range(sessions):
        status, _ = http(ports["etls"], cookie=f"{expired_base}; refreshToken={run_id}grace-{i}")
        assert status == 200, f"warm-up refresh answered {status}"
    grace_env = {"BENCH_COOKIE": expired_base, "BENCH_SESSION_PREFIX": f"{run_id}grace-", "BENCH_SESSIONS": str(sessions)}
    calls_before = auth_calls(ports["auth"])
    grace = alternate([(n, ports[n]) for n in ["floor", "etls"]], args.rounds,
                      lambda n, port: wrk(port, "grace.lua", args, args.duration, args.connections, grace_env))
    assert auth_calls(ports["auth"]) == calls_before, "grace requests must not call the auth API"
    report.append(table(f"grace ({sessions} refreshed sessions, no auth API call during the run)",
                        [(names[r[0]],) + r[1:] for r in summarize(grace)], "floor"))

    print("\n== refresh storm: every request a new session, a real auth API round trip", flush=True)
    storm_env = {"BENCH_COOKIE": expired_base}
    counter = iter(range(1_000_000))
    storm = alternate([("auth API direct", ports["auth"]), ("etls", ports["etls"]), ("etls_redis", ports["etls_redis"])],
                      args.rounds,
                      lambda n, port: wrk(port, "auth-direct.lua" if n == "auth API direct" else "storm.lua", args, args.duration,
                                          args.connections, {**storm_env, "BENCH_SESSION_PREFIX": f"{run_id}storm-{next(counter)}-"}))
    rows = summarize(storm, floor="auth API direct")
    report.append(table("refresh storm (ratios to the auth API called directly)",
                        [(names.get(r[0], r[0]),) + r[1:] for r in rows], "auth API"))
    redis_ratio = median(storm["etls_redis"], "rps") / median(storm["etls"], "rps")
    report.append(f"\nrefresh storm, `store: redis` / `store: memory`: {redis_ratio:.2f}× req/s (target ≥ 0.7×).")

    print("\n== herd: one expired session, many connections, a 200 ms auth API", flush=True)
    herd = procs.start("herd", [proxy_bin, "-c", etls_config(workdir, "herd", ports["herd"], ports["app"], ports["auth_slow"], w)],
                       {**env, "RUST_LOG": "warn"})
    wait_port(ports["herd"], herd, "etls-proxy (herd)")
    before = auth_calls(ports["auth_slow"])
    herd_result = wrk(ports["herd"], "herd.lua", args, args.duration, args.herd_connections,
                      {"BENCH_COOKIE": f"{expired_base}; refreshToken={run_id}herd"})
    herd_calls = auth_calls(ports["auth_slow"]) - before
    herd_rss = rss_kib(herd.pid)
    print(f"  {herd_result}\n  auth API calls: {herd_calls}, RSS {herd_rss}", flush=True)
    report.append(f"\n### herd ({args.herd_connections} connections, one expired session, auth API answering in 200 ms)\n\n"
                  f"| requests | req/s | non-2xx | socket errors | auth API calls | p50 µs | p99 µs | max µs | peak RSS |\n"
                  f"|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
                  f"| {herd_result['requests']} | {herd_result['rps']:.0f} | {herd_result['non2xx']} | "
                  f"{herd_result['connect'] + herd_result['read'] + herd_result['write'] + herd_result['timeout']} | {herd_calls} | "
                  f"{herd_result['p50_us']} | {herd_result['p99_us']} | {herd_result['max_us']} | {herd_rss['VmHWM'] / 1024:.1f} MiB |")

    print("\n== herd over three instances sharing one Redis: one expired session, a 200 ms auth API", flush=True)
    fleet = ["herd_a", "herd_b", "herd_c"]
    for name in fleet:
        proc = procs.start(name, [proxy_bin, "-c", etls_config(workdir, name, ports[name], ports["app"], ports["auth_slow"], w,
                                                               refresh=shared)], {**env, "RUST_LOG": "warn"})
        wait_port(ports[name], proc, f"etls-proxy ({name})")
    before = auth_calls(ports["auth_slow"])
    fleet_results = {}
    cookie = {"BENCH_COOKIE": f"{expired_base}; refreshToken={run_id}herd-fleet"}

    def herd_on(name):
        fleet_results[name] = wrk(ports[name], "herd.lua", args, args.duration, max(1, args.herd_connections // 3), cookie)

    threads = [threading.Thread(target=herd_on, args=(n,)) for n in fleet]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fleet_calls = auth_calls(ports["auth_slow"]) - before
    total = {k: sum(r[k] for r in fleet_results.values()) for k in ["requests", "rps", "non2xx", "connect", "read", "write", "timeout"]}
    print(f"  {total}\n  auth API calls: {fleet_calls}", flush=True)
    report.append(f"\n### herd over three instances sharing one Redis ({args.herd_connections} connections in all, one expired "
                  f"session, auth API answering in 200 ms)\n\n"
                  f"| requests | req/s (sum) | non-2xx | socket errors | auth API calls | p99 µs (worst instance) |\n"
                  f"|---:|---:|---:|---:|---:|---:|\n"
                  f"| {total['requests']} | {total['rps']:.0f} | {total['non2xx']} | "
                  f"{total['connect'] + total['read'] + total['write'] + total['timeout']} | {fleet_calls} | "
                  f"{max(r['p99_us'] for r in fleet_results.values())} |")

    peak = rss_kib(etls.pid)
    report.append(f"\netls-proxy after valid, grace and storm runs: RSS {peak['VmRSS'] / 1024:.1f} MiB, "
                  f"peak {peak['VmHWM'] / 1024:.1f} MiB.")

    if args.soak:
        print(f"\n== memory: {args.soak} s of refresh storm on a fresh instance", flush=True)
        soak = procs.start("soak", [proxy_bin, "-c", etls_config(workdir, "soak", ports["soak"], ports["app"], ports["auth"], w)],
                           {**env, "RUST_LOG": "warn"})
        wait_port(ports["soak"], soak, "etls-proxy (soak)")
        samples = {}
        result = {}

        def load():
            result.update(wrk(ports["soak"], "storm.lua", args, args.soak, args.connections,
                              {**storm_env, "BENCH_SESSION_PREFIX": f"{run_id}soak-"}))

        t = threading.Thread(target=load)
        t.start()
        start = time.time()
        for mark in sorted({30, args.soak // 2, args.soak - 2}):
            time.sleep(max(0, start + mark - time.time()))
            samples[mark] = rss_kib(soak.pid)["VmRSS"]
            print(f"  {mark:>4} s: RSS {samples[mark] / 1024:.1f} MiB", flush=True)
        t.join()
        first, last = samples[min(samples)], samples[max(samples)]
        report.append(f"\n### memory under a {args.soak} s refresh storm\n\n"
                      + " · ".join(f"{m} s: {v / 1024:.1f} MiB" for m, v in sorted(samples.items()))
                      + f"; last / first = {last / first:.2f}; {result.get('requests', 0)} requests, "
                        f"{result.get('non2xx', 0)} non-2xx, table bounded by refresh.max_entries = 100000.")

    text = "\n".join(report) + "\n"
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"(also written to {args.report})")


def auth_calls(port):
    return json.loads(http(port, "/calls")[1])["calls"]


def platform_line():
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return model


if __name__ == "__main__":
    main()
