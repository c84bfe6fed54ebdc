#!/usr/bin/env python3
"""`make bench`: etls-proxy side by side with the floor (a bare Pingora pass-through), nginx
proxy_pass and nginx + njs, in one run, alternating A B A B, reported as ratios; beside req/s,
the CPU each target's processes used per request (utime + stime from /proc, all threads).

Scenarios (`--only a,b,...`, default all): valid, grace, storm, redis (the storm with
`store: redis` against `memory`, and the herd over three instances), herd, tls (HTTPS + HTTP/2
through h2load, against nginx + njs), handshake (new TLS connections), next (`next start` of the
e2e app alone, with its jose middleware, and behind etls-proxy), soak (RSS under a long storm).

Everything listens on 127.0.0.1 and every load loop is bounded in time and count.
"""

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
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

    def start(self, name, cmd, env=None, cwd=None, group=False, clean_env=()):
        """Starts `cmd` logging to `<name>.log` (appended to, so a restarted process keeps one log).
        With `group`, in a process group of its own, stopped whole (node and whatever it forks).
        `clean_env`: variables of this environment not passed on."""
        log = open(os.path.join(self.workdir, f"{name}.log"), "a")
        base = {k: v for k, v in os.environ.items() if k not in clean_env}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**base, **(env or {})}, cwd=cwd,
                                start_new_session=group)
        proc.group = group
        return self.track(name, proc)

    def track(self, name, proc):
        """Adds a process started elsewhere, to be stopped with the others."""
        self.procs.append((name, proc))
        return proc

    def stop(self, proc):
        group = getattr(proc, "group", False)
        if proc.poll() is None:
            signal_to(proc, signal.SIGINT, group)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                signal_to(proc, signal.SIGKILL, group)
                proc.wait()
        if group and group_members(proc.pid):
            # Whatever the leader left behind in its group (node's forks).
            signal_to(proc, signal.SIGKILL, True)

    def stop_all(self):
        for _, proc in reversed(self.procs):
            self.stop(proc)


def group_members(pgid):
    """Processes still in the process group `pgid` (so a group gone is never signalled)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(stat_fields(f.read())[2]) == pgid:
                        members.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return members


def signal_to(proc, sig, group):
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


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


def answer_lines(port, cookie, names=("set-cookie", "cache-control")):
    """The `names` header lines of the answer to a GET of / with `cookie`, as (name, value)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/")
    req.add_header("Cookie", cookie)
    with urllib.request.urlopen(req, timeout=10) as r:
        return [(k, v) for k, v in r.headers.items() if k.lower() in names]


def http_full(port, path="/", cookie=None):
    """(status, body, Set-Cookie lines)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get_all("Set-Cookie") or []


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


def socket_errors(r):
    """wrk's connect/read/write/timeout errors, or h2load's `errored` requests."""
    if "errors" in r:
        return r["errors"]
    return r["connect"] + r["read"] + r["write"] + r["timeout"]


# ---------------------------------------------------------------- CPU per request

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def stat_fields(stat):
    """/proc/<pid>/stat's fields after the command name (which may hold spaces and parentheses):
    [0] is the state (field 3 of proc(5)), [1] the parent, [11] utime, [12] stime."""
    return stat[stat.rindex(")") + 2:].split()


def process_tree(pid):
    """`pid` and all its descendants (nginx's workers, whatever node forks), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat_fields(stat)[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo and len(found) < 10_000:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_ticks(pids):
    """utime + stime of each of `pids` (all its threads), in clock ticks; a process gone is left out."""
    ticks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat_fields(stat)
        ticks[pid] = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks


def measured(procs, run, auth_port=None, proxy=None, beside=None):
    """`run()`'s result with the CPU the processes `procs` (and their descendants) used meanwhile:
    `cpu_us`, `cpu_us_req` (per request); with `auth_port`, `calls` (auth API calls made
    meanwhile) and `cpu_us_refresh` (per call); with `proxy` (one of `procs`), its own share
    per request as `cpu_us_req_proxy`; with `beside` (processes not counted in `cpu_us`, such as
    redis-server), their CPU as `cpu_us_beside`."""
    calls = auth_calls(auth_port) if auth_port else None
    pids = [p for proc in procs for p in process_tree(proc.pid)]
    side = [p for proc in beside or [] for p in process_tree(proc.pid)]
    before = cpu_ticks(pids + side)
    result = run()
    # The refreshes still in flight when the load stopped finish on their own (a flight is not
    # cancelled with its request): counted, with their CPU, before the next run starts.
    calls = settled_calls(auth_port) - calls if auth_port else None
    after = cpu_ticks(pids + side)
    cpu = sum(after[p] - before[p] for p in pids if p in after and p in before) * TICK_US
    if beside:
        result["cpu_us_beside"] = sum(after[p] - before[p] for p in side if p in after and p in before) * TICK_US
    result["cpu_us"] = cpu
    result["cpu_us_req"] = cpu / max(1, result["requests"])
    if proxy is not None:
        own = [p for p in process_tree(proxy.pid) if p in after and p in before]
        result["cpu_us_req_proxy"] = sum(after[p] - before[p] for p in own) * TICK_US / max(1, result["requests"])
    if auth_port:
        result["calls"] = calls
        result["cpu_us_refresh"] = cpu / calls if calls else None
    return result


def settled_calls(port, limit=5.0):
    """The auth API's call count once it has stopped moving for 200 ms (at most `limit` s)."""
    deadline = time.time() + limit
    last = auth_calls(port)
    while time.time() < deadline:
        time.sleep(0.2)
        now = auth_calls(port)
        if now == last:
            break
        last = now
    return last


def describe(r):
    line = (f"{r['rps']:>10.0f} req/s  p50 {r['p50_us']:>6} us  p99 {r['p99_us']:>7} us  "
            f"non-2xx {r['non2xx']}  errors {socket_errors(r)}")
    if "cpu_us_req" in r:
        line += f"  CPU {r['cpu_us_req']:.1f} us/req"
    if r.get("cpu_us_refresh") is not None:
        line += f"  {r['calls']} auth API calls, {r['cpu_us_refresh']:.1f} us/refresh"
    return line


def alternate(targets, rounds, run_one=None, line=describe):
    """Runs every target once per round, in a rotated order, so drift hits all alike. `targets`:
    (name, port) pairs run by `run_one(name, port)`, or (name, fn) pairs run by `fn()`."""
    results = {name: [] for name, _ in targets}
    for i in range(rounds):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        for name, what in order:
            r = what() if run_one is None else run_one(name, what)
            results[name].append(r)
            print(f"  round {i + 1} {name:<16} {line(r)}", flush=True)
    return results


def med(rs, key):
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def summarize(results, floor="floor"):
    """One row per target: medians over rounds, and their ratios to the `floor` target's."""
    base = results[floor]
    rows = []
    for name, rs in results.items():
        row = {"name": name, "non2xx": sum(r["non2xx"] for r in rs), "errors": sum(socket_errors(r) for r in rs),
               "calls": sum(r.get("calls") or 0 for r in rs), "tls": rs[0].get("tls")}
        for key in ["rps", "p50_us", "p99_us", "cpu_us_req", "cpu_us_refresh", "cpu_us_req_proxy"]:
            row[key] = med(rs, key)
            row[key + "_x"] = ratio(row[key], med(base, key))
        rows.append(row)
    return rows


def fmt(value, digits=0):
    return "–" if value is None else f"{value:.{digits}f}"


def table(title, rows, floor_name, names=None, refresh=False, tls=False, proxy=False):
    """Markdown: req/s, p50, p99 and CPU µs per request, each beside its ratio to `floor_name`;
    with `proxy`, etls-proxy's own share of the CPU; with `refresh`, CPU µs per auth API call
    and the calls made; with `tls`, what was negotiated."""
    names = names or {}
    head = (f"| target | req/s (median) | × {floor_name} | p50 µs | × {floor_name} | p99 µs | × {floor_name} "
            f"| CPU µs/req | × {floor_name} |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if proxy:
        head += " of which etls-proxy µs/req |"
        rule += "---:|"
    if refresh:
        head += " CPU µs/refresh | auth API calls |"
        rule += "---:|---:|"
    head += " non-2xx | socket errors |"
    rule += "---:|---:|"
    if tls:
        head += " negotiated |"
        rule += "---|"
    out = [f"\n### {title}\n", head, rule]
    for r in rows:
        line = (f"| {names.get(r['name'], r['name'])} | {fmt(r['rps'])} | {fmt(r['rps_x'], 2)} | {fmt(r['p50_us'])} | "
                f"{fmt(r['p50_us_x'], 2)} | {fmt(r['p99_us'])} | {fmt(r['p99_us_x'], 2)} | {fmt(r['cpu_us_req'], 1)} | "
                f"{fmt(r['cpu_us_req_x'], 2)} |")
        if proxy:
            line += f" {fmt(r['cpu_us_req_proxy'], 1)} |"
        if refresh:
            line += f" {fmt(r['cpu_us_refresh'], 1)} | {r['calls']} |"
        line += f" {r['non2xx']} | {r['errors']} |"
        if tls:
            line += f" {r['tls'] or '–'} |"
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------- h2load (HTTPS, HTTP/2)

H2_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.M)
H2_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored, (\d+) timeout", re.M)
H2_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
H2_CONNECT = re.compile(r"^time for connect:\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
H2_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.M)
UNIT_US = {"us": 1, "ms": 1e3, "s": 1e6}


def as_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * UNIT_US[m.group(2)]


def parse_h2load(stdout, stderr, returncode, log_file=None, what="h2load"):
    """h2load's summary as the dict wrk's runs give (requests, rps, p50_us, p99_us, max_us,
    non2xx, errors) plus `secs`, `connect_mean_us` and `tls`. Exits naming what went wrong when
    h2load failed, printed no summary, negotiated anything but h2 or completed no request: h2load
    itself exits 0 when it could not even connect."""
    def fail(why):
        sys.exit(f"bench: {what} {why}:\n{stdout}\n{stderr}")

    if returncode != 0:
        fail(f"exited with status {returncode}")
    finished, requests, status = H2_FINISHED.search(stdout), H2_REQUESTS.search(stdout), H2_STATUS.search(stdout)
    if not (finished and requests and status):
        fail("printed no summary (finished / requests / status codes lines)")
    total, started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    ok2xx, s3xx, s4xx, s5xx = map(int, status.groups())
    protocol = H2_PROTOCOL.search(stdout)
    if not protocol:
        fail("negotiated no application protocol (connection or TLS handshake failed)")
    if protocol.group(1) != "h2":
        fail(f"negotiated {protocol.group(1)}, not h2")
    if succeeded == 0 or done == 0:
        fail(f"completed no request ({failed} failed, {errored} errored)")
    secs = float(finished.group(1)) * UNIT_US[finished.group(2)] / 1e6
    tls = " ".join(m.group(1) for m in (re.search(rf"^{k}: (.+)$", stdout, re.M)
                                        for k in ["TLS Protocol", "Cipher", "Server Temp Key"]) if m)
    result = {"requests": done, "rps": done / secs if secs else 0.0, "secs": secs, "non2xx": s3xx + s4xx + s5xx,
              "errors": errored, "tls": tls, "p50_us": 0, "p99_us": 0, "max_us": 0}
    connect = H2_CONNECT.search(stdout)
    result["connect_mean_us"] = as_us(connect.group(3)) if connect else None
    if log_file and os.path.exists(log_file):
        with open(log_file) as f:
            latencies = sorted(int(parts[2]) for parts in (line.split("\t") for line in f) if len(parts) == 3)
        os.remove(log_file)
        if latencies:
            result["p50_us"] = latencies[len(latencies) // 2]
            result["p99_us"] = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]
            result["max_us"] = latencies[-1]
    return result


def h2load(port, cookie, workdir, clients, streams, duration=None, requests=None, procs=None, path="/"):
    """One h2load run over HTTPS (HTTP/2 by ALPN), for `duration` seconds or `requests` requests."""
    log_file = os.path.join(workdir, "h2load-requests.tsv")
    cmd = ["h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-H", f"cookie: {cookie}",
           f"--log-file={log_file}"]
    cmd += ["-D", str(duration)] if duration else ["-n", str(requests)]
    cmd.append(f"https://127.0.0.1:{port}{path}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if procs:
        procs.track("h2load", proc)
    try:
        stdout, stderr = proc.communicate(timeout=(duration or 0) + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        sys.exit(f"bench: h2load did not finish within {(duration or 0) + 60} s:\n{stdout}\n{stderr}")
    return parse_h2load(stdout, stderr, proc.returncode, log_file, f"h2load on 127.0.0.1:{port}")


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


SCENARIOS = ["valid", "grace", "storm", "redis", "herd", "tls", "handshake", "next", "soak"]
E2E = os.path.join(ROOT, "e2e")
NAMES = {"floor": "floor (bare Pingora)", "floor_cookies": "floor, the app adding the grace answer's lines", "etls": "etls-proxy", "etls_redis": "etls-proxy, store: redis",
         "nginx": "nginx proxy_pass", "njs": "nginx + njs", "auth API direct": "auth API called directly",
         "floor_tls": "floor (bare Pingora), TLS", "etls_tls": "etls-proxy, TLS", "njs_tls": "nginx + njs, TLS"}


def scenarios(text):
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose among {', '.join(SCENARIOS)}")
    return set(chosen)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", type=scenarios, default=set(SCENARIOS),
                   help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk / h2load run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="threads/worker processes of every proxy and of the app")
    p.add_argument("--herd-connections", type=int, default=1000)
    p.add_argument("--h2-clients", type=int, default=16, help="h2load connections in the tls scenario")
    p.add_argument("--h2-streams", type=int, default=4, help="concurrent streams per h2load connection")
    p.add_argument("--handshake-batch", type=int, default=100,
                   help="new connections per h2load run in the handshake scenario (one request each)")
    p.add_argument("--warmup", type=int, default=2,
                   help="seconds of valid-path load, not measured, on each new proxy before its first measured run (0: none)")
    p.add_argument("--next-warmup", type=int, default=5, help="seconds of load per path before the next scenario measures")
    p.add_argument("--soak", type=int, default=120, help="seconds of refresh storm for the memory check (0: skip)")
    p.add_argument("--report", default=os.path.join(ROOT, "target", "bench-report.md"))
    args = p.parse_args()
    for key in ["duration", "rounds", "connections", "h2_clients", "h2_streams", "handshake_batch"]:
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")

    with harness("etls-bench-") as procs:
        run(args, procs.workdir, procs)


class Lab:
    """The processes of the run, each started on first use (so `--only` starts only what its
    scenarios need), with the ports they listen on."""

    def __init__(self, args, procs):
        self.args, self.procs, self.workdir = args, procs, procs.workdir
        self.ports, self.running = {}, {}
        self.w = args.workers
        self.proxy_bin = os.path.join(RELEASE, "etls-proxy")
        self.demo_bin = os.path.join(RELEASE, "etls-demo")
        self.floor_bin = os.path.join(RELEASE, "etls-floor")

    def port(self, name):
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def need(self, name):
        """The process `name` (and what it depends on), started once and reused."""
        if name not in self.running:
            starter = getattr(self, "start_" + name, None)
            if starter is None:
                starter = (lambda: self.start_fleet_member(name)) if name.startswith("herd_") else None
            self.running[name] = starter()
        return self.running[name]

    def nginx(self, name, template, values, port_name=None):
        port = self.port(port_name or name)
        conf = render(template, self.workdir, f"{name}.conf", {"WORKERS": self.w, "DIR": self.workdir, "PORT": port,
                                                               **values})
        proc = self.procs.start(name, ["nginx", "-p", self.workdir, "-c", conf, "-g", "daemon off;"])
        wait_port(port, proc, f"{name} (nginx)")
        return proc

    def etls(self, name, upstream, auth, listen=None, **sections):
        conf = etls_config(self.workdir, name, self.port(name), upstream, auth, self.w, **sections)
        if listen:
            with open(conf) as f:
                c = json.load(f)
            c["listen"] += listen
            with open(conf, "w") as f:
                json.dump(c, f, indent=2)
        proc = self.procs.start(name, [self.proxy_bin, "-c", conf], {**SECRETS, "RUST_LOG": "warn"})
        wait_port(self.port(name), proc, f"etls-proxy ({name})")
        return proc

    def start_app(self):
        return self.nginx("app", "app.conf", {})

    def demo(self, name, extra=()):
        proc = self.procs.start(name, [self.demo_bin, "serve", "--app", f"127.0.0.1:{self.port(name + '_unused')}",
                                       "--auth", f"127.0.0.1:{self.port(name)}", *extra])
        wait_port(self.port(name), proc, name)
        return proc

    def start_auth(self):
        return self.demo("auth")

    def start_auth_slow(self):
        return self.demo("auth_slow", ["--auth-delay-ms", "200"])

    def floor(self, name, app):
        self.need(app)
        proc = self.procs.start(name, [self.floor_bin, "--listen", f"127.0.0.1:{self.port(name)}",
                                       "--upstream", f"127.0.0.1:{self.port(app)}", "--threads", str(self.w)])
        wait_port(self.port(name), proc, name)
        return proc

    def start_floor(self):
        return self.floor("floor", "app")

    def start_app_cookies(self):
        """The app adding `self.grace_lines` (a grace answer's Set-Cookie and Cache-Control lines)
        to its answer: behind the floor, what the grace answer's bytes cost by themselves."""
        conf = render("app.conf", self.workdir, "app_cookies.conf",
                      {"WORKERS": self.w, "DIR": self.workdir, "PORT": self.port("app_cookies")})
        with open(conf) as f:
            text = f.read().replace("app.pid", "app_cookies.pid").replace("app-error.log", "app_cookies-error.log")
        adds = "".join(f"            add_header {name} '{value}' always;\n" for name, value in self.grace_lines)
        with open(conf, "w") as f:
            f.write(text.replace("            # answer headers of the grace reference go here\n", adds))
        proc = self.procs.start("app_cookies", ["nginx", "-p", self.workdir, "-c", conf, "-g", "daemon off;"])
        wait_port(self.port("app_cookies"), proc, "app_cookies (nginx)")
        return proc

    def start_floor_cookies(self):
        return self.floor("floor_cookies", "app_cookies")

    def start_etls(self):
        self.need("app"), self.need("auth")
        return self.etls("etls", self.port("app"), self.port("auth"))

    def check_js(self):
        path = os.path.join(self.workdir, "check.js")
        if not os.path.exists(path):
            with open(path, "w") as f, open(os.path.join(BENCH, "nginx", "check.js")) as src:
                f.write(src.read().replace("__ETLS_ACCESS__", SECRETS["ETLS_ACCESS"]))

    def start_nginx(self):
        self.need("app")
        return self.nginx("nginx", "proxy.conf", {"APP": self.port("app")})

    def start_njs(self):
        self.need("app")
        self.check_js()
        return self.nginx("njs", "njs.conf", {"APP": self.port("app")})

    def start_redis(self):
        port = self.port("redis")
        proc = self.procs.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no"])
        wait_port(port, proc, "redis-server")
        return proc

    def shared(self):
        self.need("redis")
        return {"store": "redis", "redis": {"url": f"redis://127.0.0.1:{self.port('redis')}/0"}}

    def start_etls_redis(self):
        self.need("app"), self.need("auth")
        return self.etls("etls_redis", self.port("app"), self.port("auth"), refresh=self.shared())

    def start_herd(self):
        self.need("app"), self.need("auth_slow")
        return self.etls("herd", self.port("app"), self.port("auth_slow"))

    def start_fleet_member(self, name):
        self.need("app"), self.need("auth_slow")
        return self.etls(name, self.port("app"), self.port("auth_slow"), refresh=self.shared())

    def start_soak(self):
        self.need("app"), self.need("auth")
        return self.etls("soak", self.port("app"), self.port("auth"))

    # -- TLS

    def start_cert(self):
        """A self-signed ECDSA P-256 certificate for 127.0.0.1 (what `tls` and `handshake` serve)."""
        cert, key = os.path.join(self.workdir, "cert.pem"), os.path.join(self.workdir, "key.pem")
        done = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                               "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                               "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            sys.exit(f"bench: openssl could not make the test certificate:\n{done.stderr}")
        return {"cert": cert, "key": key}

    def start_etls_tls(self):
        self.need("app"), self.need("auth")
        tls = self.need("cert")
        # A plain listener too, for the warm-up requests; the load goes to the TLS one.
        return self.etls("etls_tls", self.port("app"), self.port("auth"),
                         listen=[{"address": f"127.0.0.1:{self.port('etls_tls_https')}", "tls": tls}])

    def start_njs_tls(self):
        self.need("app")
        self.check_js()
        tls = self.need("cert")
        return self.nginx("njs_tls", "njs-tls.conf", {"APP": self.port("app"), "CERT": tls["cert"], "KEY": tls["key"],
                                                      **http2_directives(nginx_version())},
                          port_name="njs_tls_https")

    def floor_takes_tls(self):
        help_text = subprocess.run([self.floor_bin, "--help"], capture_output=True, text=True, timeout=30).stdout
        return "--tls-cert" in help_text

    def start_floor_tls(self):
        self.need("app")
        tls = self.need("cert")
        proc = self.procs.start("floor_tls", [self.floor_bin, "--listen", f"127.0.0.1:{self.port('floor_tls')}",
                                              "--upstream", f"127.0.0.1:{self.port('app')}", "--threads", str(self.w),
                                              "--tls-listen", f"127.0.0.1:{self.port('floor_tls_https')}",
                                              "--tls-cert", tls["cert"], "--tls-key", tls["key"]])
        wait_port(self.port("floor_tls_https"), proc, "floor (TLS)")
        return proc


def http2_directives(version):
    """`http2 on;` exists from nginx 1.25.1 (and `listen ... http2` is deprecated there); before
    it, `listen ... ssl http2`."""
    new = version >= (1, 25, 1)
    return {"LISTEN_HTTP2": "" if new else "http2", "HTTP2_ON": "http2 on;" if new else ""}


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=30).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(map(int, m.groups())) if m else (0, 0, 0)


def curl_h2(port, cookie):
    """(status, HTTP version) of one HTTPS request, as a browser would make it (HTTP/2 by ALPN)."""
    done = subprocess.run(["curl", "-sk", "--http2", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                           "-H", f"Cookie: {cookie}", f"https://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=30)
    status, _, version = done.stdout.partition(" ")
    return int(status or 0), version


def run(args, workdir, procs):
    only = args.only
    lab = Lab(args, procs)
    tokens = demo_tokens()
    cookies = {"valid": session_cookie(tokens, "valid"), "expired": session_cookie(tokens, "expired"),
               "tampered": f"accessTokenEtls={tokens['tampered']}"}
    run_id = f"demo-rt-{os.getpid()}-{int(time.time())}-"
    report = [f"# etls-proxy bench, {time.strftime('%Y-%m-%d %H:%M')}",
              f"\nMachine: {os.cpu_count()} cores, {platform_line()}. Scenarios: {', '.join(s for s in SCENARIOS if s in only)}. "
              f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s, {args.rounds} rounds alternating, "
              f"{args.workers} worker(s) per proxy and app, each proxy warmed up {args.warmup} s first (not measured); floor and "
              f"etls-proxy with the same Pingora settings "
              f"(threads {args.workers}, work_stealing off). CPU µs/req: utime + stime of the target's processes (all "
              f"threads; nginx: master and workers) during the run, over the requests it completed (median over rounds)."]
    ctx = {"args": args, "lab": lab, "cookies": cookies, "run_id": run_id, "report": report, "targets": [],
           "workdir": workdir, "procs": procs, "only": only}
    for name, scenario in [("valid", valid_scenario), ("grace", grace_scenario), ("storm", storm_scenario),
                           ("herd", herd_scenario), ("redis", fleet_scenario), ("tls", tls_scenario),
                           ("handshake", handshake_scenario), ("next", next_scenario), ("soak", soak_scenario)]:
        if name in only or (name == "storm" and "redis" in only):
            scenario(ctx)

    if "etls" in lab.running:
        peak = rss_kib(lab.running["etls"].pid)
        report.append(f"\netls-proxy (the `memory` instance) at the end: RSS {peak['VmRSS'] / 1024:.1f} MiB, "
                      f"peak {peak['VmHWM'] / 1024:.1f} MiB.")
    if ctx["targets"]:
        report.append("\n### Targets\n\n| target | measured | |\n|---|---|---|")
        for what, measured_text, met in ctx["targets"]:
            report.append(f"| {what} | {measured_text} | {'met' if met else '**missed**'} |")

    text = "\n".join(report) + "\n"
    os.makedirs(os.path.dirname(args.report), exist_ok=True)
    with open(args.report, "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"(also written to {args.report})")


def target(ctx, what, value_text, met):
    ctx["targets"].append((what, value_text, met))
    print(f"  target: {what}: {value_text}: {'met' if met else 'MISSED'}", flush=True)


def by_name(rows):
    return {r["name"]: r for r in rows}


def wrk_on(ctx, port, script, env, connections=None, path="/"):
    args = ctx["args"]
    return lambda: wrk(port, script, args, args.duration, connections or args.connections, env, path=path,
                       procs=ctx["procs"])


def warm_up(ctx, names, https=None):
    """`--warmup` seconds of valid-path load, not measured, on each of `names` not warmed yet
    (over TLS on `https[name]` when given): a process's first second (its allocator growing,
    its first upstream connections) is not a round's."""
    args, lab, warmed = ctx["args"], ctx["lab"], ctx.setdefault("warmed", set())
    for name in names:
        if not args.warmup or name in warmed:
            continue
        warmed.add(name)
        if https:
            h2load(https[name], ctx["cookies"]["valid"], ctx["workdir"], args.h2_clients, args.h2_streams,
                   duration=args.warmup, procs=ctx["procs"])
        else:
            wrk(lab.port(name), "valid.lua", args, args.warmup, args.connections, {"BENCH_COOKIE": ctx["cookies"]["valid"]},
                procs=ctx["procs"])


def valid_scenario(ctx):
    lab, args, cookies = ctx["lab"], ctx["args"], ctx["cookies"]
    names = ["floor", "etls"] + (["etls_redis"] if "redis" in ctx["only"] else []) + ["nginx", "njs"]
    for name in names:
        lab.need(name)
        status, _ = http(lab.port(name), cookie=cookies["valid"])
        assert status == 200, f"{name} answered {status} to a valid token"
    for name in ["etls", "njs"]:
        status, _ = http(lab.port(name), cookie=cookies["tampered"])
        assert status == 401, f"{name} answered {status} to a tampered token"

    print("\n== valid: every request carries a valid access token", flush=True)
    warm_up(ctx, names)
    env = {"BENCH_COOKIE": cookies["valid"]}
    results = alternate([(n, lambda n=n: measured([lab.running[n]], wrk_on(ctx, lab.port(n), "valid.lua", env)))
                         for n in names], args.rounds)
    rows = by_name(summarize(results))
    ctx["report"].append(table("valid (the hot path)", rows.values(), "floor", NAMES))
    etls = rows["etls"]
    target(ctx, "valid ≥ 0.95 × floor req/s", f"{etls['rps_x']:.2f} ×", etls["rps_x"] >= 0.95)
    target(ctx, "valid p99 ≤ 1.1 × floor", f"{etls['p99_us_x']:.2f} ×", etls["p99_us_x"] <= 1.1)
    over_njs = etls["rps"] / rows["njs"]["rps"]
    target(ctx, "valid ≥ 1.15 × nginx + njs req/s", f"{over_njs:.2f} ×", over_njs >= 1.15)


def warm_grace(ctx, port, prefix, sessions):
    """Refreshes `sessions` sessions once, so the load that follows finds their results kept."""
    for i in range(sessions):
        status, _ = http(port, cookie=f"{ctx['cookies']['expired']}; refreshToken={prefix}{i}")
        assert status == 200, f"warm-up refresh answered {status}"


def grace_scenario(ctx):
    lab, args = ctx["lab"], ctx["args"]
    for name in ["floor", "etls"]:
        lab.need(name)
    print("\n== grace: expired sessions answered from the kept refresh result", flush=True)
    warm_up(ctx, ["floor", "etls"])
    sessions, prefix = 100, f"{ctx['run_id']}grace-"
    warm_grace(ctx, lab.port("etls"), prefix, sessions)
    # The reference of the same bytes: the floor in front of an app that adds this very grace
    # answer's Set-Cookie and Cache-Control lines itself.
    lab.grace_lines = answer_lines(lab.port("etls"), f"{ctx['cookies']['expired']}; refreshToken={prefix}0")
    lab.need("floor_cookies")
    names = ["floor", "floor_cookies", "etls"]
    warm_up(ctx, ["floor_cookies"])
    env = {"BENCH_COOKIE": ctx["cookies"]["expired"], "BENCH_SESSION_PREFIX": prefix, "BENCH_SESSIONS": str(sessions)}
    calls_before = auth_calls(lab.port("auth"))
    results = alternate([(n, lambda n=n: measured([lab.running[n]], wrk_on(ctx, lab.port(n), "grace.lua", env)))
                         for n in names], args.rounds)
    assert auth_calls(lab.port("auth")) == calls_before, "grace requests must not call the auth API"
    rows = by_name(summarize(results))
    ctx["report"].append(table(f"grace ({sessions} refreshed sessions, no auth API call during the run; "
                               f"{len(lab.grace_lines)} answer lines of {sum(len(k) + len(v) + 4 for k, v in lab.grace_lines)} bytes)",
                               rows.values(), "floor", NAMES))
    etls, same_bytes = rows["etls"], rows["floor_cookies"]
    ctx["report"].append(f"\ngrace against the floor carrying the same answer lines (the app adds them): "
                         f"{etls['rps'] / same_bytes['rps']:.2f}× req/s; those lines alone take the floor to "
                         f"{same_bytes['rps_x']:.2f}× its speed.")
    target(ctx, "grace ≥ 0.95 × floor req/s", f"{etls['rps_x']:.2f} ×", etls["rps_x"] >= 0.95)
    target(ctx, "grace p99 ≤ 1.1 × floor", f"{etls['p99_us_x']:.2f} ×", etls["p99_us_x"] <= 1.1)


def storm_scenario(ctx):
    """The refresh storm; with `redis` chosen, the `store: redis` instance alternates with the
    `memory` one (without `storm`, only those two, as a ratio to `memory`)."""
    lab, args, only = ctx["lab"], ctx["args"], ctx["only"]
    names = (["auth API direct"] if "storm" in only else []) + ["etls"] + (["etls_redis"] if "redis" in only else [])
    lab.need("auth")
    for name in names:
        if name != "auth API direct":
            lab.need(name)
    print("\n== refresh storm: every request a new session, a real auth API round trip", flush=True)
    warm_up(ctx, [n for n in names if n != "auth API direct"])
    counter = iter(range(1_000_000))

    def one(name):
        if name == VALID_BESIDE_STORM:
            return measured([lab.running["etls"]], wrk_on(ctx, lab.port("etls"), "valid.lua", {"BENCH_COOKIE": ctx["cookies"]["valid"]}))
        port, script = (lab.port("auth"), "auth-direct.lua") if name == "auth API direct" else (lab.port(name), "storm.lua")
        env = {"BENCH_COOKIE": ctx["cookies"]["expired"], "BENCH_SESSION_PREFIX": f"{ctx['run_id']}storm-{next(counter)}-"}
        proc = lab.running["auth" if name == "auth API direct" else name]
        return measured([proc], wrk_on(ctx, port, script, env), auth_port=lab.port("auth"),
                        beside=[lab.running["redis"]] if name == "etls_redis" else None)

    # The same instance on the valid path, in the same rounds: what a refresh costs beyond the
    # proxied request it rides on.
    runs = names + ([VALID_BESIDE_STORM] if "storm" in only else [])
    results = alternate([(n, lambda n=n: one(n)) for n in runs], args.rounds)
    base = names[0]
    rows = by_name(summarize(results, floor=base))
    ctx["report"].append(table(f"refresh storm (every request a session the proxy has not seen; ratios to {NAMES[base]}; "
                               "CPU of the target, for the auth API row the auth API's own)",
                               [rows[n] for n in names], "auth API" if base == "auth API direct" else "memory", NAMES,
                               refresh=True))
    per_refresh = rows["etls"]["cpu_us_refresh"]
    if "storm" in only and per_refresh is not None:
        valid = rows[VALID_BESIDE_STORM]["cpu_us_req"]
        own = refresh_beyond_request(results["etls"], results[VALID_BESIDE_STORM])
        ctx["report"].append(f"\nrefresh storm, the refresh itself: {fmt(own, 1)} µs of proxy CPU beyond the request it rides on "
                             f"(median over rounds of a storm request's CPU less a valid request's on the same instance, the "
                             f"two alternating in the same rounds; {fmt(per_refresh, 1)} against {fmt(valid, 1)} µs).")
        target(ctx, "refresh storm: proxy CPU ≤ 50 µs per refresh", f"{per_refresh:.1f} µs (the refresh itself "
               f"{fmt(own, 1)} µs beyond a valid request's {fmt(valid, 1)})", per_refresh <= 50)
    if "redis" in only:
        ratio_redis = rows["etls_redis"]["rps"] / rows["etls"]["rps"]
        redis_side = med([{"v": r["cpu_us_beside"] / r["calls"] if r.get("calls") else None} for r in results["etls_redis"]], "v")
        ctx["report"].append(f"\nrefresh storm, `store: redis` / `store: memory`: {ratio_redis:.2f}× req/s; proxy CPU per refresh "
                             f"{fmt(rows['etls_redis']['cpu_us_refresh'], 1)} against {fmt(per_refresh, 1)} µs, and redis-server's "
                             f"own {fmt(redis_side, 1)} µs per refresh beside it.")
        target(ctx, "refresh storm, store: redis ≥ 0.7 × memory req/s", f"{ratio_redis:.2f} ×", ratio_redis >= 0.7)


VALID_BESIDE_STORM = "etls, valid path"


def refresh_beyond_request(storm, valid):
    """Median over rounds of (storm CPU per refresh − valid CPU per request), round by round:
    the pairs ran seconds apart, so the machine's drift between rounds cancels."""
    pairs = [s["cpu_us_refresh"] - v["cpu_us_req"] for s, v in zip(storm, valid)
             if s.get("cpu_us_refresh") is not None and v.get("cpu_us_req") is not None]
    return statistics.median(pairs) if pairs else None


def herd_scenario(ctx):
    lab, args = ctx["lab"], ctx["args"]
    herd = lab.need("herd")
    print("\n== herd: one expired session, many connections, a 200 ms auth API", flush=True)
    before = auth_calls(lab.port("auth_slow"))
    r = wrk(lab.port("herd"), "herd.lua", args, args.duration, args.herd_connections,
            {"BENCH_COOKIE": f"{ctx['cookies']['expired']}; refreshToken={ctx['run_id']}herd"}, procs=ctx["procs"])
    calls = auth_calls(lab.port("auth_slow")) - before
    rss = rss_kib(herd.pid)
    print(f"  {r}\n  auth API calls: {calls}, RSS {rss}", flush=True)
    ctx["report"].append(f"\n### herd ({args.herd_connections} connections, one expired session, auth API answering in 200 ms)\n\n"
                         f"| requests | req/s | non-2xx | socket errors | auth API calls | p50 µs | p99 µs | max µs | peak RSS |\n"
                         f"|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
                         f"| {r['requests']} | {r['rps']:.0f} | {r['non2xx']} | {socket_errors(r)} | {calls} | "
                         f"{r['p50_us']} | {r['p99_us']} | {r['max_us']} | {rss['VmHWM'] / 1024:.1f} MiB |")
    target(ctx, "herd: exactly one auth API call, every answer 2xx", f"{calls} call(s), {r['non2xx']} non-2xx",
           calls == 1 and r["non2xx"] == 0)
    target(ctx, f"herd: peak RSS < 64 MiB at {args.herd_connections} connections", f"{rss['VmHWM'] / 1024:.1f} MiB",
           rss["VmHWM"] < 64 * 1024)


def fleet_scenario(ctx):
    lab, args = ctx["lab"], ctx["args"]
    fleet = ["herd_a", "herd_b", "herd_c"]
    for name in fleet:
        lab.need(name)
    print("\n== herd over three instances sharing one Redis: one expired session, a 200 ms auth API", flush=True)
    before = auth_calls(lab.port("auth_slow"))
    results = {}
    cookie = {"BENCH_COOKIE": f"{ctx['cookies']['expired']}; refreshToken={ctx['run_id']}herd-fleet"}

    def herd_on(name):
        try:
            results[name] = wrk(lab.port(name), "herd.lua", args, args.duration, max(1, args.herd_connections // 3), cookie)
        except SystemExit as e:  # wrk() reports failure with sys.exit; say it from the main thread
            results[name] = e

    threads = [threading.Thread(target=herd_on, args=(n,)) for n in fleet]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, r in results.items():
        if isinstance(r, SystemExit):
            sys.exit(f"bench: herd over three instances, {name}: {r}")
    calls = auth_calls(lab.port("auth_slow")) - before
    total = {k: sum(r[k] for r in results.values()) for k in ["requests", "rps", "non2xx"]}
    errors = sum(socket_errors(r) for r in results.values())
    print(f"  {total}, errors {errors}\n  auth API calls: {calls}", flush=True)
    ctx["report"].append(f"\n### herd over three instances sharing one Redis ({args.herd_connections} connections in all, one "
                         f"expired session, auth API answering in 200 ms)\n\n"
                         f"| requests | req/s (sum) | non-2xx | socket errors | auth API calls | p99 µs (worst instance) |\n"
                         f"|---:|---:|---:|---:|---:|---:|\n"
                         f"| {total['requests']} | {total['rps']:.0f} | {total['non2xx']} | {errors} | {calls} | "
                         f"{max(r['p99_us'] for r in results.values())} |")
    target(ctx, "herd over three instances (store: redis): exactly one auth API call, every answer 2xx",
           f"{calls} call(s), {total['non2xx']} non-2xx", calls == 1 and total["non2xx"] == 0)


def tls_targets(ctx):
    """The HTTPS targets: etls-proxy, nginx + njs, and the floor when its binary takes TLS.
    Returns (names, https port of each)."""
    lab = ctx["lab"]
    names = ["etls_tls", "njs_tls"]
    if lab.floor_takes_tls():
        names.insert(0, "floor_tls")
    elif not ctx.get("floor_tls_said"):
        ctx["floor_tls_said"] = True
        note = ("floor left out of the TLS scenarios: this etls-floor has no --tls-listen/--tls-cert/--tls-key "
                "(a bare Pingora pass-through with TLS needs those few lines in tools/etls-floor.rs).")
        print(f"  {note}", flush=True)
        ctx["report"].append(f"\n{note}")
    ports = {}
    for name in names:
        lab.need(name)
        ports[name] = lab.port(name + "_https")
    return names, ports


def h2load_missing(ctx, scenario):
    if shutil.which("h2load"):
        return False
    note = f"{scenario}: skipped: h2load is not installed (Debian's nghttp2-client; `scripts/deps.sh bench` installs it)."
    print(f"\n== {note}", flush=True)
    ctx["report"].append(f"\n{note}")
    return True


def tls_scenario(ctx):
    if h2load_missing(ctx, "tls"):
        return
    lab, args, cookies = ctx["lab"], ctx["args"], ctx["cookies"]
    names, https = tls_targets(ctx)
    grace_cookie = f"{cookies['expired']}; refreshToken={ctx['run_id']}tls-grace"
    status, _ = http(lab.port("etls_tls"), cookie=grace_cookie)
    assert status == 200, f"the TLS grace warm-up refresh answered {status}"
    for name in names:
        for what, cookie, want in [("valid", cookies["valid"], 200), ("tampered", cookies["tampered"], 401 if name != "floor_tls" else 200)]:
            status, version = curl_h2(https[name], cookie)
            assert (status, version) == (want, "2"), f"{name} answered {status} over HTTP/{version} to a {what} token over TLS"
    status, version = curl_h2(https["etls_tls"], grace_cookie)
    assert (status, version) == (200, "2"), f"etls-proxy (TLS) answered {status} over HTTP/{version} to the grace session"

    def h2(name, cookie):
        return lambda: measured([lab.running[name]], lambda: h2load(https[name], cookie, ctx["workdir"], args.h2_clients,
                                                                   args.h2_streams, duration=args.duration,
                                                                   procs=ctx["procs"]))

    shape = f"h2load -c{args.h2_clients} -m{args.h2_streams} -D{args.duration}"
    print(f"\n== tls: HTTPS + HTTP/2 ({shape}), valid path", flush=True)
    warm_up(ctx, names, https)
    valid = alternate([(n, h2(n, cookies["valid"])) for n in names], args.rounds)
    rows = by_name(summarize(valid, floor="njs_tls"))
    ctx["report"].append(table(f"TLS + HTTP/2, valid ({shape}, ratios to nginx + njs over TLS)", rows.values(),
                               "nginx + njs", NAMES, tls=True))
    ctx["tls_valid"] = rows
    x = rows["etls_tls"]["rps_x"]
    target(ctx, "TLS + HTTP/2 valid ≥ 1.15 × nginx + njs req/s", f"{x:.2f} ×", x >= 1.15)

    print(f"\n== tls: HTTPS + HTTP/2 ({shape}), grace path (nginx + njs cannot refresh: its row runs the valid path)",
          flush=True)
    calls = auth_calls(lab.port("auth"))
    grace = alternate([(n, h2(n, cookies["valid"] if n == "njs_tls" else grace_cookie)) for n in names], args.rounds)
    assert auth_calls(lab.port("auth")) == calls, "TLS grace requests must not call the auth API"
    rows = by_name(summarize(grace, floor="njs_tls"))
    ctx["report"].append(table(f"TLS + HTTP/2, grace: one refreshed session, its old cookies on every request "
                               f"({shape}; nginx + njs, which cannot refresh, on the valid path; ratios to it)",
                               rows.values(), "nginx + njs", NAMES, tls=True))


def handshake_scenario(ctx):
    if h2load_missing(ctx, "handshake"):
        return
    lab, args, cookies = ctx["lab"], ctx["args"], ctx["cookies"]
    names, https = tls_targets(ctx)
    batch = args.handshake_batch
    max_runs = 200

    def connections(name):
        """h2load runs of `batch` new connections with one request each, until `duration` has
        passed (at most `max_runs` runs): every connection a full TLS handshake."""
        def load():
            deadline = time.time() + args.duration
            runs, secs, connect, done = 0, 0.0, [], {"requests": 0, "non2xx": 0, "errors": 0, "tls": None}
            while runs < max_runs and (runs == 0 or time.time() < deadline):
                r = h2load(https[name], cookies["valid"], ctx["workdir"], batch, 1, requests=batch, procs=ctx["procs"])
                runs, secs = runs + 1, secs + r["secs"]
                for k in ["requests", "non2xx", "errors"]:
                    done[k] += r[k]
                done["tls"] = r["tls"]
                if r["connect_mean_us"] is not None:
                    connect.append(r["connect_mean_us"])
            # Connections per second of h2load's own time (its start-up left out); p50/p99: of
            # the runs' mean connect times (TCP + TLS handshake), the only figure h2load gives.
            connect.sort()
            return {**done, "runs": runs, "rps": done["requests"] / secs if secs else 0.0,
                    "p50_us": round(connect[len(connect) // 2]) if connect else 0,
                    "p99_us": round(connect[min(len(connect) - 1, len(connect) * 99 // 100)]) if connect else 0}
        return lambda: measured([lab.running[name]], load)

    print(f"\n== handshake: new TLS connections, {batch} per h2load run, one request each", flush=True)
    warm_up(ctx, names, https)
    results = alternate([(n, connections(n)) for n in names], args.rounds,
                        line=lambda r: (f"{r['rps']:>8.0f} conn/s  connect mean {r['p50_us']:>6} us  "
                                        f"CPU {r['cpu_us_req']:.1f} us/conn  {r['requests']} conns in {r['runs']} runs  "
                                        f"non-2xx {r['non2xx']}  errors {r['errors']}"))
    keepalive = ctx.get("tls_valid", {})
    rows = [("target", "new connections (sum)", "conn/s (median)", "× nginx + njs", "connect mean µs", "CPU µs/connection",
             "× nginx + njs", "CPU µs/handshake", "non-2xx", "errors", "negotiated")]
    summary = by_name(summarize(results, floor="njs_tls"))
    for name, rs in results.items():
        s = summary[name]
        # A connection's CPU less that of one request on a kept-alive connection (the tls run's).
        per_request = keepalive.get(name, {}).get("cpu_us_req")
        handshake = s["cpu_us_req"] - per_request if per_request is not None and s["cpu_us_req"] is not None else None
        rows.append((NAMES[name], str(sum(r["requests"] for r in rs)), fmt(s["rps"]), fmt(s["rps_x"], 2), fmt(s["p50_us"]),
                     fmt(s["cpu_us_req"], 1), fmt(s["cpu_us_req_x"], 2), fmt(handshake, 1), str(s["non2xx"]),
                     str(s["errors"]), rs[0]["tls"] or "–"))
    out = [f"\n### new TLS connections ({batch} clients per h2load run, one request each, runs repeated for "
           f"{args.duration} s; CPU µs/handshake: per connection less one kept-alive request of the tls scenario)\n",
           "| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 2) + "---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    ctx["report"].append("\n".join(out))


# ---------------------------------------------------------------- next start

NEXT_ENV = ["E2E_MIDDLEWARE", "ETLS_ACCESS", "ETLS_REFRESH", "ETLS_ACCESS_EXPIRE_TIME", "ETLS_REFRESH_EXPIRE_TIME",
            "REMOTE_API", "NODE_OPTIONS"]


def next_unavailable():
    """Why the next scenario cannot run here (None when it can)."""
    if not os.path.isfile(os.path.join(E2E, "node_modules", "next", "dist", "bin", "next")):
        return "e2e/node_modules is missing (`make e2e` installs it)"
    if not shutil.which("node"):
        return "node is not installed"
    done = subprocess.run(["node", "-e", "const [a, b] = process.versions.node.split('.').map(Number); "
                                         "process.exit(a > 20 || (a === 20 && b >= 9) ? 0 : 1)"], capture_output=True, timeout=30)
    if done.returncode != 0:
        return "Next.js 16 needs Node.js 20.9 or later"
    return None


def next_build(ctx):
    """`next build app` in e2e/ unless the build there is newer than its sources (as e2e/run.sh
    decides); None when built, else why not."""
    app = os.path.join(E2E, "app")
    build_id = os.path.join(app, ".next", "BUILD_ID")
    fresh = os.path.exists(build_id)
    if fresh:
        built = os.path.getmtime(build_id)
        sources = [os.path.join(E2E, "package-lock.json")]
        for top, dirs, files in os.walk(app):
            dirs[:] = [d for d in dirs if not (top == app and d == ".next")]
            sources += [os.path.join(top, f) for f in files]
        fresh = all(os.path.getmtime(s) <= built for s in sources)
    if fresh:
        print("  next: reusing the production build in e2e/app/.next", flush=True)
        return None
    print("  next: next build app (once; make e2e reuses it)", flush=True)
    log = os.path.join(ctx["workdir"], "next-build.log")
    with open(log, "w") as f:
        try:
            done = subprocess.run(["node", os.path.join(E2E, "node_modules", "next", "dist", "bin", "next"), "build", "app"],
                                  cwd=E2E, stdout=f, stderr=subprocess.STDOUT, timeout=900,
                                  env={**{k: v for k, v in os.environ.items() if k not in NEXT_ENV},
                                       "NEXT_TELEMETRY_DISABLED": "1"})
        except subprocess.TimeoutExpired:
            return f"next build took over 900 s (see {log})"
    return None if done.returncode == 0 else f"next build failed (see {log})"


def start_next(ctx, name, extra):
    lab = ctx["lab"]
    port = lab.port(name)
    proc = ctx["procs"].start(name, ["node", os.path.join(E2E, "node_modules", "next", "dist", "bin", "next"), "start", "app",
                                     "-H", "127.0.0.1", "-p", str(port)],
                              {"NODE_ENV": "production", "NEXT_TELEMETRY_DISABLED": "1", **extra}, cwd=E2E, group=True,
                              clean_env=NEXT_ENV)
    wait_port(port, proc, f"next start ({name})", timeout=90)
    lab.running[name] = proc
    return port


def next_scenario(ctx):
    lab, args, cookies = ctx["lab"], ctx["args"], ctx["cookies"]
    why = next_unavailable() or next_build(ctx)
    if why:
        note = f"next: skipped: {why}."
        print(f"\n== {note}", flush=True)
        ctx["report"].append(f"\n{note}")
        return
    lab.need("auth")
    path = "/api/whoami"
    # (a) and (c): the build with its middleware off (E2E_MIDDLEWARE unset: it returns at once).
    app = start_next(ctx, "next_app", {})
    # (b): the same build, the middleware doing the seeds' check and refresh (jose).
    mw = start_next(ctx, "next_mw", {**SECRETS, "E2E_MIDDLEWARE": "response", "REMOTE_API": f"http://127.0.0.1:{lab.port('auth')}",
                                     "ETLS_ACCESS_EXPIRE_TIME": "900", "ETLS_REFRESH_EXPIRE_TIME": "43200"})
    lab.running["etls_next"] = lab.etls("etls_next", app, lab.port("auth"))
    front = lab.port("etls_next")

    for name, port in [("next_app", app), ("next_mw", mw), ("etls_next", front)]:
        status, body, _ = http_full(port, path, cookies["valid"])
        assert status == 200, f"{name} answered {status} to a valid session: {body[:200]!r}"
    for name, port in [("next_mw", mw), ("etls_next", front)]:
        status, _, _ = http_full(port, path, cookies["tampered"])
        assert status == 401, f"{name} answered {status} to a tampered token"
        status, body, set_cookies = http_full(port, path, f"{cookies['expired']}; refreshToken={ctx['run_id']}next-check-{name}")
        assert status == 200 and len(set_cookies) >= 5, \
            f"{name} answered {status} with {len(set_cookies)} Set-Cookie lines to an expired session: {body[:200]!r}"

    labels = {"next_app": "the app alone (next start)", "next_mw": "the app + jose middleware",
              "etls_next": "etls-proxy → the app", "mw_storm": "the app + jose middleware: a refresh per request",
              "etls_storm": "etls-proxy → the app: a refresh per request (storm)",
              "etls_grace": "etls-proxy → the app: kept result (grace path, 100 sessions)"}
    procs_of = {"next_app": [lab.running["next_app"]], "next_mw": [lab.running["next_mw"]],
                "etls_next": [lab.running["etls_next"], lab.running["next_app"]]}

    def on(name, port, script, env, auth=False):
        return lambda: measured(procs_of[name], wrk_on(ctx, port, script, env, path=path),
                                auth_port=lab.port("auth") if auth else None,
                                proxy=lab.running["etls_next"] if name == "etls_next" else None)

    # Not measured: node compiles the routes and the middleware's refresh on first use.
    print(f"\n== next: warming up ({args.next_warmup} s per path, not measured)", flush=True)
    for port, script, env in [(app, "valid.lua", {"BENCH_COOKIE": cookies["valid"]}),
                              (mw, "valid.lua", {"BENCH_COOKIE": cookies["valid"]}),
                              (front, "valid.lua", {"BENCH_COOKIE": cookies["valid"]}),
                              (mw, "storm.lua", {"BENCH_COOKIE": cookies["expired"],
                                                 "BENCH_SESSION_PREFIX": f"{ctx['run_id']}next-warm-"})]:
        if args.next_warmup:
            wrk(port, script, args, args.next_warmup, args.connections, env, path=path, procs=ctx["procs"])
    settled_calls(lab.port("auth"))

    print(f"\n== next: GET {path} of the e2e app under next start, valid session", flush=True)
    valid_env = {"BENCH_COOKIE": cookies["valid"]}
    results = alternate([(n, on(n, p, "valid.lua", valid_env)) for n, p in [("next_app", app), ("next_mw", mw), ("etls_next", front)]],
                        args.rounds)
    ctx["report"].append(table(f"next start, valid session (GET {path}; CPU: every process of the set-up, etls-proxy and "
                               "node for the proxied row; ratios to the app alone)",
                               summarize(results, floor="next_app"), "app alone", labels, proxy=True))

    print("\n== next: expired session (middleware: a refresh on every request, it keeps no result; etls-proxy: "
          "a refresh per request, and the grace path)", flush=True)
    counter = iter(range(1_000_000))
    prefix = f"{ctx['run_id']}next-grace-"
    warm_grace(ctx, front, prefix, 100)

    def storm_env():
        return {"BENCH_COOKIE": cookies["expired"], "BENCH_SESSION_PREFIX": f"{ctx['run_id']}next-storm-{next(counter)}-"}

    grace_env = {"BENCH_COOKIE": cookies["expired"], "BENCH_SESSION_PREFIX": prefix, "BENCH_SESSIONS": "100"}
    expired = alternate([
        ("mw_storm", lambda: on("next_mw", mw, "storm.lua", storm_env(), auth=True)()),
        ("etls_storm", lambda: on("etls_next", front, "storm.lua", storm_env(), auth=True)()),
        ("etls_grace", lambda: on("etls_next", front, "grace.lua", grace_env, auth=True)()),
    ], args.rounds)
    ctx["report"].append(table(f"next start, expired session (GET {path}; ratios to the middleware; CPU µs/refresh: "
                               "the set-up's CPU over the auth API calls it made)",
                               summarize(expired, floor="mw_storm"), "middleware", labels, refresh=True, proxy=True))
    ctx["report"].append(
        "\nWhat each row runs: *the app alone* is `next start` of e2e/app, whose middleware.js is off "
        "(`E2E_MIDDLEWARE` unset: it returns `NextResponse.next()` at once); *the app + jose middleware* is the same "
        "build with `E2E_MIDDLEWARE=response`, the seeds' check and refresh: `jwtVerify` of `accessTokenEtls`, and "
        "for an expired one of `refreshTokenEtls`, a `fetch` to the auth API, three `SignJWT`, five cookies on the "
        "response; it keeps nothing, so an expired session is a refresh on every request until the browser stores the "
        "new cookies; *etls-proxy → the app* is the first build behind etls-proxy (1 thread). Refresh per request: "
        "every request a session never seen (a real auth API round trip, the middleware's work like for like); grace: "
        "100 sessions refreshed once, their old cookies on every request, answered from the kept result (what the "
        "middleware cannot do). CPU: node, plus etls-proxy where it is in front; the auth API's own CPU is not counted.")


def soak_scenario(ctx):
    lab, args = ctx["lab"], ctx["args"]
    if not args.soak:
        print("\n== soak: skipped (--soak 0)", flush=True)
        return
    soak = lab.need("soak")
    print(f"\n== memory: {args.soak} s of refresh storm on a fresh instance", flush=True)
    samples, result = {}, {}
    storm_env = {"BENCH_COOKIE": ctx["cookies"]["expired"], "BENCH_SESSION_PREFIX": f"{ctx['run_id']}soak-"}

    def load():
        result.update(wrk(lab.port("soak"), "storm.lua", args, args.soak, args.connections, storm_env))

    t = threading.Thread(target=load)
    t.start()
    start = time.time()
    for mark in sorted({min(30, args.soak), args.soak // 2, max(1, args.soak - 2)}):
        time.sleep(max(0, start + mark - time.time()))
        samples[mark] = rss_kib(soak.pid)["VmRSS"]
        print(f"  {mark:>4} s: RSS {samples[mark] / 1024:.1f} MiB", flush=True)
    t.join()
    first, last = samples[min(samples)], samples[max(samples)]
    ctx["report"].append(f"\n### memory under a {args.soak} s refresh storm\n\n"
                         + " · ".join(f"{m} s: {v / 1024:.1f} MiB" for m, v in sorted(samples.items()))
                         + f"; last / first = {last / first:.2f}; {result.get('requests', 0)} requests, "
                           f"{result.get('non2xx', 0)} non-2xx, table bounded by refresh.max_entries = 100000.")
    if args.soak >= 60:  # before that, the table is still filling
        target(ctx, f"RSS at {max(samples)} s of storm within 10 % of the {min(samples)} s sample", f"{last / first:.2f}",
               last / first <= 1.1)


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
