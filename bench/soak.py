#!/usr/bin/env python3
"""`make soak`: etls-proxy held under load, faults and a graceful shutdown, with pass/fail checks.

1. sustained load: wrk at full speed on the valid path, then on the refresh storm: no error,
   RSS flat, file descriptors back to their baseline once wrk stops;
2. faults under load: valid, expired and forged sessions while the auth API, then the app, are
   killed (SIGKILL) and restarted on the same port: the proxy stays up, answers 502/504 while
   they are down, recovers by itself, and never forwards an unchecked request;
3. graceful shutdown: SIGTERM with requests in flight: they complete, the proxy exits by itself.

Everything listens on 127.0.0.1; every wrk run has a duration and every wait a timeout. The
report goes to target/soak-report.md; the exit status is 1 when any check fails.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from run import (RELEASE, ROOT, SECRETS, demo_tokens, etls_config, free_port, harness, http,
                 platform_line, render, rss_kib, session_cookie, wait_port, wrk)

RSS_TOLERANCE = 0.10
FD_SLACK = 4
# Idle pooled connections are what is left open after a run: to the app (upstream.idle_timeout_secs,
# set to IDLE_SECS below) and to the auth API (4 s in src/auth_api.rs).
IDLE_SECS = 2
FD_SETTLE_TIMEOUT = 15
# Fault timeline: steady load before each fault and after each recovery; time allowed to recover.
STEADY_SECS = 3
RECOVERY_TIMEOUT = 5
# etls-proxy's defaults for Pingora (README, configuration reference); the shutdown check keeps them.
GRACE_PERIOD_SECS = 10
SHUTDOWN_TIMEOUT_SECS = 5
# Pingora 0.9.1 stops accepting at SIGTERM, sleeps the grace period, then shuts its runtimes down,
# which drops every task still running (the shutdown timeout only bounds that step): a request
# in flight has until the end of the grace period. So the slow app answers well within it.
SLOW_APP_SECS = 0.8
SIGTERM_AFTER = 0.2
# Reported, not checked: what a new client gets during the grace period, and what becomes of a
# request the app takes longer than the grace period to answer.
NEW_CONNECTION_AFTER = 0.3
LATE_SECS = 3

NORMAL = {"valid": {200}, "expired": {200}, "forged": {401}}
AUTH_DOWN = {"valid": {200}, "expired": {502, 504}, "forged": {401}}
APP_DOWN = {"valid": {502}, "expired": {502}, "forged": {401}}
# A second that straddles a kill or a recovery may see either side, but never a forwarded forgery.
TRANSITION = {"valid": {200, 502}, "expired": {200, 502, 504}, "forged": {401}}
KINDS = ("valid", "expired", "forged")


class Abort(Exception):
    """A failure after which the remaining phases would measure nothing (the proxy is gone)."""


class Checks:
    """Every assertion of the run: printed when made, tabulated in the report."""

    def __init__(self):
        self.results = []

    def __call__(self, name, ok, detail):
        self.results.append((name, bool(ok), detail))
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
        return ok

    def failed(self):
        return [name for name, ok, _ in self.results if not ok]


class Background:
    """A call in a thread (wrk, while the main thread samples memory or injects faults)."""

    def __init__(self, fn):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as e:  # noqa: B036 -- wrk() reports failure with sys.exit
            self.error = e

    def join(self, timeout):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Abort(f"wrk did not finish within {timeout} s")
        if self.error:
            raise Abort(f"wrk failed: {self.error}")
        return self.result


class SlowApp:
    """An HTTP/1.1 app answering every request after `delay` seconds (`?delay=S` overrides it),
    on its own event loop in a thread: the requests in flight of the shutdown check."""

    def __init__(self, delay):
        self.delay = delay
        self.received = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        if not self.ready.wait(5):
            raise Abort("the slow app did not start")
        return self

    def __exit__(self, *_):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += 1
                target = head.split(b" ", 2)[1].decode()
                delay = float(target.split("delay=", 1)[1]) if "delay=" in target else self.delay
                await asyncio.sleep(delay)
                body = b'{"ok":true,"app":"slow"}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass  # the client left, or the check is over
        finally:
            writer.close()


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle_fds(pid, limit, timeout):
    """Polls until the fd count is at most `limit`: (count, seconds it took or None)."""
    start = time.time()
    while True:
        count = open_fds(pid)
        if count <= limit:
            return count, time.time() - start
        if time.time() - start > timeout:
            return count, None
        time.sleep(0.25)


def status_of(port, path, cookie):
    """The status, or the name of the error when there is no HTTP answer at all."""
    try:
        return http(port, path, cookie=cookie)[0]
    except (urllib.error.URLError, OSError) as e:
        return type(getattr(e, "reason", e)).__name__


def new_connection(port, cookie, timeout):
    """What a client opening a new connection gets: refused, no answer, a reset or a status line."""
    start = time.time()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET /valid HTTP/1.1\r\nHost: soak\r\nCookie: {cookie}\r\n\r\n".encode())
            data = s.recv(4096)
    except ConnectionRefusedError:
        return "connection refused"
    except ConnectionResetError:
        return f"accepted, then reset after {time.time() - start:.1f} s without an answer"
    except socket.timeout:
        return f"accepted, no answer within {timeout} s"
    if not data:
        return f"accepted, then closed after {time.time() - start:.1f} s without an answer"
    status_line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return f"answered `{status_line}` after {time.time() - start:.1f} s"


def minted(token, secret):
    """Whether `token` is an HS256 JWT signed with `secret` whose `exp` has not passed."""
    try:
        head, payload, signature = token.split(".")
        mac = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return (hmac.compare_digest(signature, base64.urlsafe_b64encode(mac).rstrip(b"=").decode())
                and claims.get("exp", 0) > time.time())
    except ValueError:
        return False


def sleep_until(t):
    time.sleep(max(0.0, t - time.time()))


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def statuses_text(counter):
    return ", ".join(f"{status}×{n}" for status, n in sorted(counter.items())) or "none"


class Soak:
    """The three phases, against one etls-proxy (and a fresh one for the shutdown)."""

    def __init__(self, args, procs):
        self.args, self.procs = args, procs
        self.workdir = procs.workdir
        self.checks = Checks()
        self.report = []
        self.env = {**SECRETS, "RUST_LOG": "warn"}
        self.tokens = demo_tokens(args.bin_dir)
        self.cookies = {
            "valid": session_cookie(self.tokens, "valid"),
            "expired": session_cookie(self.tokens, "expired"),
            "forged": session_cookie(self.tokens, "tampered"),
        }
        self.sessions = f"demo-rt-soak-{os.getpid()}-{int(time.time())}-"
        self.probes = 0
        self.ports = {name: free_port() for name in ("app", "auth", "auth_unused", "proxy", "shutdown")}
        self.app_cmd = ["nginx", "-p", self.workdir, "-c", render("soak-app.conf", self.workdir, "soak-app.conf", {
            "DIR": self.workdir, "PORT": self.ports["app"]}), "-g", "daemon off;"]
        self.auth_cmd = [os.path.join(args.bin_dir, "etls-demo"), "serve", "--app", f"127.0.0.1:{self.ports['auth_unused']}",
                         "--auth", f"127.0.0.1:{self.ports['auth']}"]

    def proxy_cmd(self, name, port, app):
        """A short refresh grace, so the single-flight table is at its steady size well before the
        first RSS sample; a short app idle timeout, so pooled connections close soon after a run."""
        conf = etls_config(self.workdir, name, port, app, self.ports["auth"], self.args.workers,
                           refresh={"grace_secs": 2}, upstream={"idle_timeout_secs": IDLE_SECS})
        return [os.path.join(self.args.bin_dir, "etls-proxy"), "-c", conf]

    def start(self, name):
        """Starts (or restarts, on the same port) the app or the auth API."""
        cmd, port = {"app": (self.app_cmd, self.ports["app"]), "auth": (self.auth_cmd, self.ports["auth"])}[name]
        proc = self.procs.start(name, cmd)
        wait_port(port, proc, name)
        setattr(self, name, proc)

    def run(self):
        self.start("app")
        self.start("auth")
        self.proxy = self.procs.start("etls", self.proxy_cmd("etls", self.ports["proxy"], self.ports["app"]), self.env)
        wait_port(self.ports["proxy"], self.proxy, "etls-proxy")
        time.sleep(0.5)  # let the connection wait_port opened close
        self.fds_baseline = open_fds(self.proxy.pid)
        for kind in KINDS:
            expected = next(iter(NORMAL[kind]))
            status = self.probe(kind)
            if status != expected:
                raise Abort(f"sanity: /{kind} answered {status}, expected {expected}")
        self.report += [f"# etls-proxy soak, {time.strftime('%Y-%m-%d %H:%M')}",
                        f"\nMachine: {os.cpu_count()} cores, {platform_line()}. etls-proxy with {self.args.workers} "
                        f"thread(s); wrk -t{self.args.wrk_threads} -c{self.args.connections}; stand-ins: nginx app "
                        f"(one process), `etls-demo serve --auth`. Everything on 127.0.0.1."]
        self.sustained()
        self.faults()
        self.shutdown()

    def probe(self, kind):
        """One request of a kind, as wrk's faults.lua sends it (an expired one is a new session)."""
        cookie = self.cookies[kind]
        if kind == "expired":
            self.probes += 1
            cookie += f"; refreshToken={self.sessions}probe-{self.probes}"
        return status_of(self.ports["proxy"], f"/{kind}", cookie)

    def require_proxy(self, when):
        if self.proxy.poll() is not None:
            self.checks("proxy alive", False, f"etls-proxy exited ({self.proxy.returncode}) {when}; see {self.workdir}/etls.log")
            raise Abort(f"etls-proxy exited {when}")

    def fds_back(self, label):
        """Checks that the proxy's open fds fall back to their baseline once the load stops."""
        fds, settled = settle_fds(self.proxy.pid, self.fds_baseline + FD_SLACK, FD_SETTLE_TIMEOUT)
        self.checks(f"{label}: fds back to baseline", settled is not None,
                    f"{fds} open, baseline {self.fds_baseline} (+{FD_SLACK} allowed), "
                    + (f"{settled:.1f} s after wrk ended" if settled is not None else f"still after {FD_SETTLE_TIMEOUT} s"))
        return fds

    # 1. sustained load

    def sustained(self):
        d, pid = self.args.duration, self.proxy.pid
        marks = (d // 3, d - 1)
        rows = []
        for label, script, path, env in [
            ("valid", "valid.lua", "/valid", {"BENCH_COOKIE": self.cookies["valid"]}),
            ("refresh storm", "storm.lua", "/storm", {"BENCH_COOKIE": self.cookies["expired"],
                                                      "BENCH_SESSION_PREFIX": f"{self.sessions}storm-"}),
        ]:
            print(f"\n== {label}: wrk at full speed for {d} s", flush=True)
            load = Background(lambda script=script, path=path, env=env: wrk(
                self.ports["proxy"], script, self.args, d, self.args.connections, env, path=path, procs=self.procs))
            start, rss = time.time(), {}
            for mark in marks:
                sleep_until(start + mark)
                self.require_proxy(f"during the {label} run")
                rss[mark] = rss_kib(pid)["VmRSS"]
                print(f"  {mark:>4} s: RSS {mib(rss[mark])}", flush=True)
            r = load.join(d + 70)
            self.require_proxy(f"after the {label} run")
            errors = r["read"] + r["write"] + r["timeout"]
            print(f"  {r['requests']} requests, {r['rps']:.0f} req/s, non-2xx {r['non2xx']}, errors: connect "
                  f"{r['connect']} read {r['read']} write {r['write']} timeout {r['timeout']}", flush=True)
            self.checks(f"{label}: no non-2xx", r["non2xx"] == 0, f"{r['non2xx']} non-2xx of {r['requests']}")
            self.checks(f"{label}: no socket errors", errors == 0,
                        f"read {r['read']}, write {r['write']}, timeout {r['timeout']} (connect {r['connect']}, allowed)")
            first, last = rss[marks[0]], rss[marks[1]]
            self.checks(f"{label}: RSS flat", abs(last - first) <= RSS_TOLERANCE * first,
                        f"{mib(first)} at {marks[0]} s, {mib(last)} at {marks[1]} s ({(last / first - 1) * 100:+.1f} %, "
                        f"allowed ±{RSS_TOLERANCE * 100:.0f} %)")
            fds = self.fds_back(label)
            rows.append(f"| {label} | {d} s | {r['requests']} | {r['rps']:.0f} | {r['non2xx']} | {r['connect']} / {r['read']} / "
                        f"{r['write']} / {r['timeout']} | {r['p99_us'] / 1000:.1f} ms | {mib(first)} | {mib(last)} | "
                        f"{self.fds_baseline} | {fds} |")
        self.report += [f"\n## Sustained load ({self.args.connections} connections)\n",
                        f"| phase | duration | requests | req/s | non-2xx | socket errors (connect / read / write / timeout) "
                        f"| p99 | RSS at {marks[0]} s | RSS at {marks[1]} s | fds before | fds after |",
                        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows]

    # 2. faults under load

    def faults(self):
        conns = 3 * max(1, self.args.connections // 3)
        down = self.args.down
        duration = STEADY_SECS + 2 * (down + RECOVERY_TIMEOUT + STEADY_SECS) + 2
        print(f"\n== faults: valid, expired and forged sessions for {duration} s while the auth API, then the app, "
              f"are killed and restarted", flush=True)
        env = {"SOAK_VALID_COOKIE": self.cookies["valid"], "SOAK_EXPIRED_COOKIE": self.cookies["expired"],
               "SOAK_FORGED_COOKIE": self.cookies["forged"], "BENCH_SESSION_PREFIX": f"{self.sessions}faults-"}
        start = time.time()
        load = Background(lambda: wrk(self.ports["proxy"], "faults.lua", self.args, duration, conns, env,
                                      threads=3, procs=self.procs))
        events = {"start": start}
        survived = []
        for name, label in (("auth", "auth API"), ("app", "app")):
            time.sleep(STEADY_SECS)
            self.require_proxy(f"before the {label} was killed")
            getattr(self, name).kill()
            getattr(self, name).wait(5)
            events[f"{name} killed"] = time.time()
            print(f"  {events[f'{name} killed'] - start:5.1f} s: {label} killed (SIGKILL)", flush=True)
            time.sleep(down)
            self.require_proxy(f"while the {label} was down")
            self.start(name)
            events[f"{name} restarted"] = time.time()
            print(f"  {events[f'{name} restarted'] - start:5.1f} s: {label} restarted on the same port", flush=True)
            recovered = self.recover()
            events[f"{name} recovered"] = events[f"{name} restarted"] + (RECOVERY_TIMEOUT if recovered is None else recovered)
            self.checks(f"faults: recovery after the {label} restart", recovered is not None,
                        f"a probe of each kind answered as usual {recovered:.2f} s after the restart" if recovered is not None
                        else f"probes still failing {RECOVERY_TIMEOUT} s after the restart")
            if recovered is not None:
                survived.append(f"{label} SIGKILL + restart (recovered in {recovered:.2f} s)")
        r = load.join(duration + 70)
        events["end"] = start + duration
        self.require_proxy("after the fault run")
        self.checks("faults: proxy alive throughout", True, f"pid {self.proxy.pid} served the whole run, never restarted")
        self.fault_statuses(r, events, conns, duration)
        self.app_log()
        fds = self.fds_back("faults")
        self.report.append("\nFaults survived: " + "; ".join(survived) + f"; proxy pid {self.proxy.pid} throughout, "
                           f"{fds} fds open afterwards (baseline {self.fds_baseline}), RSS "
                           f"{mib(rss_kib(self.proxy.pid)['VmRSS'])}.")

    def recover(self):
        """Seconds until a probe of each kind answers as usual, or None after RECOVERY_TIMEOUT."""
        start = time.time()
        pending = set(KINDS)
        while pending and time.time() - start < RECOVERY_TIMEOUT:
            pending = {kind for kind in pending if self.probe(kind) not in NORMAL[kind]}
            if pending:
                time.sleep(0.1)
        return None if pending else time.time() - start

    def fault_statuses(self, r, events, conns, duration):
        """Lines faults.lua's per-second status counts up with the kills and restarts."""
        outages = {"auth API down": "auth", "app down": "app"}
        windows = [
            ("before the faults", events["start"], events["auth killed"], NORMAL),
            ("auth API down", events["auth killed"] + 1, events["auth restarted"], AUTH_DOWN),
            ("auth API back", events["auth recovered"], events["app killed"], NORMAL),
            ("app down", events["app killed"] + 1, events["app restarted"], APP_DOWN),
            ("app back", events["app recovered"], events["end"], NORMAL),
            ("kills and recoveries", 0, float("inf"), TRANSITION),
        ]
        counts = {(w[0], kind): Counter() for w in windows for kind in KINDS}
        seconds = {w[0]: set() for w in windows}
        unexpected = {w[0]: [] for w in windows}
        for thread in r["statuses"]:
            kind = thread["kind"]
            for key, n in thread["counts"].items():
                second, status = (int(x) for x in key.split(":"))
                label, _, _, expected = next(w for w in windows if w[1] <= second and second + 1 <= w[2])
                counts[label, kind][status] += n
                seconds[label].add(second)
                if status not in expected[kind]:
                    unexpected[label].append((second, f"/{kind} {status}×{n} at +{max(0, second - events['start']):.0f} s"))

        def found(labels):
            listed = [text for _, text in sorted(u for label in labels for u in unexpected[label])]
            if not listed:
                return ""
            return "; unexpected: " + ", ".join(listed[:6]) + (f" and {len(listed) - 6} more" if len(listed) > 6 else "")

        def statuses(label):
            return "; ".join(f"/{kind} {statuses_text(counts[label, kind])}" for kind in KINDS)

        for label in outages:
            answered = sum(counts[label, "expired"].values())
            self.checks(f"faults: statuses while the {label.removesuffix(' down')} was down",
                        answered and not unexpected[label],
                        statuses(label) + found([label]) + ("" if answered else "; no /expired answer in the window"))
        others = [w[0] for w in windows if w[0] not in outages]
        self.checks("faults: statuses outside the outages", not found(others),
                    "/valid 200, /expired 200, /forged 401 (around a kill or a recovery, 502/504 as well)" + found(others))
        totals = {kind: sum((counts[w[0], kind] for w in windows), Counter()) for kind in KINDS}
        self.checks("faults: /forged never answered other than 401", set(totals["forged"]) <= {401},
                    f"/forged {statuses_text(totals['forged'])}")
        print(f"  {r['requests']} requests, socket errors: connect {r['connect']} read {r['read']} write {r['write']} "
              f"timeout {r['timeout']}", flush=True)
        rows = [f"| {w[0]} | {len(seconds[w[0]])} | " + " | ".join(statuses_text(counts[w[0], k]) for k in KINDS) + " |"
                for w in windows]
        rows.append(f"| **whole run** | {duration} | " + " | ".join(statuses_text(totals[k]) for k in KINDS) + " |")
        self.report += [f"\n## Faults under load ({duration} s, {conns} connections, one wrk thread per kind; "
                        f"each outage {self.args.down} s)\n",
                        f"{r['requests']} requests, {r['rps']:.0f} req/s; socket errors (counted, not checked here): "
                        f"connect {r['connect']}, read {r['read']}, write {r['write']}, timeout {r['timeout']}. "
                        "Statuses by window, in whole seconds (a second straddling a kill or a recovery is counted "
                        "under *kills and recoveries*):\n",
                        "| window | seconds | /valid | /expired | /forged |", "|---|---:|---|---|---|", *rows]

    def app_log(self):
        """The app's own record: no /forged request, every /expired one with a freshly minted token."""
        paths, stale = Counter(), 0
        with open(os.path.join(self.workdir, "soak-app-access.log")) as f:
            for line in f:
                path, _, token = line.rstrip("\n").partition(" ")
                kind = path.lstrip("/")
                paths[kind if kind in KINDS else "other"] += 1
                if kind == "expired" and (token == self.tokens["expired"] or not minted(token, SECRETS["ETLS_ACCESS"])):
                    stale += 1
        self.checks("faults: the app never received a /forged request", paths["forged"] == 0,
                    f"{paths['forged']} /forged line(s) in the app's access log")
        self.checks("faults: every /expired request reached the app refreshed", stale == 0 and paths["expired"] > 0,
                    f"{paths['expired']} /expired line(s), {stale} without a fresh accessTokenEtls signed with ETLS_ACCESS")
        self.report.append(f"\nThe app's access log: {paths['expired']} /expired requests, every one with a freshly minted "
                           f"accessTokenEtls ({stale} not); {paths['forged']} /forged; {paths['other']} other.")

    # 3. graceful shutdown

    def shutdown(self):
        n = self.args.in_flight
        print(f"\n== graceful shutdown: SIGTERM with {n} requests in flight to a {SLOW_APP_SECS} s app", flush=True)
        with SlowApp(SLOW_APP_SECS) as app, ThreadPoolExecutor(max_workers=n + 2) as pool:
            port = self.ports["shutdown"]
            proxy = self.procs.start("etls-shutdown", self.proxy_cmd("etls-shutdown", port, app.port),
                                     {**self.env, "RUST_LOG": "info"})
            wait_port(port, proxy, "etls-proxy (shutdown)")

            def timed(path):
                return status_of(port, path, self.cookies["valid"]), time.time()

            def exit_time():
                try:
                    proxy.wait(GRACE_PERIOD_SECS + SHUTDOWN_TIMEOUT_SECS + 5)
                    return time.time()
                except subprocess.TimeoutExpired:
                    return None

            sent = time.time()
            inflight = [pool.submit(timed, "/slow") for _ in range(n)]
            late = pool.submit(timed, f"/slow?delay={LATE_SECS}")
            while app.received < n + 1 and time.time() < sent + 2:
                time.sleep(0.01)
            sleep_until(sent + SIGTERM_AFTER)
            received = app.received
            term = time.time()
            proxy.send_signal(signal.SIGTERM)
            exited = pool.submit(exit_time)
            sleep_until(term + NEW_CONNECTION_AFTER)
            fresh = new_connection(port, self.cookies["valid"], timeout=3)
            results = [f.result() for f in inflight]
            late_status, late_at = late.result()
            exit_at = exited.result()
        statuses = Counter(status for status, _ in results)
        last = max(at for _, at in results) - term
        self.checks("shutdown: every request in flight answered 200", statuses == Counter({200: n}) and received == n + 1,
                    f"{statuses_text(statuses)} ({received} of the {n + 1} requests were at the app at SIGTERM), the last "
                    f"{last:.2f} s after SIGTERM")
        limit = GRACE_PERIOD_SECS + SHUTDOWN_TIMEOUT_SECS
        exit_text = f"{exit_at - term:.2f} s" if exit_at else f"still running after {limit + 5} s"
        self.checks("shutdown: proxy exited by itself", exit_at and exit_at - term <= limit + 1,
                    f"{exit_text} after SIGTERM, exit status {proxy.returncode} (grace period {GRACE_PERIOD_SECS} s + "
                    f"shutdown timeout {SHUTDOWN_TIMEOUT_SECS} s allowed)")
        late_text = f"{late_status}, {late_at - term:.2f} s after SIGTERM"
        print(f"  a new connection {NEW_CONNECTION_AFTER} s after SIGTERM: {fresh}\n"
              f"  a request needing {LATE_SECS} s, sent with the others: {late_text}", flush=True)
        self.report += [f"\n## Graceful shutdown (SIGTERM {SIGTERM_AFTER} s after sending {n} requests to an app that "
                        f"answers in {SLOW_APP_SECS} s; Pingora grace_period_seconds {GRACE_PERIOD_SECS}, "
                        f"graceful_shutdown_timeout_seconds {SHUTDOWN_TIMEOUT_SECS})\n",
                        "| in flight | answered | last answer after SIGTERM | proxy exit after SIGTERM | exit status | "
                        f"a new connection {NEW_CONNECTION_AFTER} s after SIGTERM | a request needing {LATE_SECS} s |",
                        "|---:|---|---:|---:|---:|---|---|",
                        f"| {n} | {statuses_text(statuses)} | {last:.2f} s | {exit_text} | {proxy.returncode} | {fresh} | "
                        f"{late_text} |"]

    def write_report(self):
        lines = self.report + ["\n## Checks\n", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {name} | {'ok' if ok else '**FAIL**'} | {detail} |" for name, ok, detail in self.checks.results]
        text = "\n".join(lines) + "\n"
        os.makedirs(os.path.dirname(self.args.report), exist_ok=True)
        with open(self.args.report, "w") as f:
            f.write(text)
        print("\n" + text + f"\n(also written to {self.args.report}; logs in {self.workdir})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=60, help="seconds of each sustained wrk run (RSS sampled at 1/3 and at the end)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads of the sustained runs (the fault run uses 3)")
    p.add_argument("--workers", type=int, default=2, help="etls-proxy threads")
    p.add_argument("--down", type=int, default=4, help="seconds the auth API, then the app, stay down")
    p.add_argument("--in-flight", type=int, default=20, help="requests in flight at SIGTERM")
    target = os.environ.get("CARGO_TARGET_DIR")
    p.add_argument("--bin-dir", default=os.environ.get("SOAK_BIN_DIR") or (os.path.join(target, "release") if target else RELEASE),
                   help="where etls-proxy and etls-demo are (env SOAK_BIN_DIR; default $CARGO_TARGET_DIR/release, "
                        "else target/release)")
    p.add_argument("--report", default=os.path.join(ROOT, "target", "soak-report.md"))
    args = p.parse_args()
    if args.duration < 6:
        p.error("--duration must be at least 6 s")

    with harness("etls-soak-") as procs:
        soak = Soak(args, procs)
        try:
            soak.run()
        except Abort as e:
            soak.checks("run completed", False, str(e))
        soak.write_report()
    failed = soak.checks.failed()
    if failed:
        sys.exit("soak: FAILED: " + "; ".join(failed))
    print("soak: all checks passed")


if __name__ == "__main__":
    main()
