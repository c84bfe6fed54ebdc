#!/usr/bin/env python3
"""Unit tests of bench/run.py's own logic (no load, no server, nothing started but `sleep`):
`python3 bench/test_run.py` (or `python3 -m unittest discover -s bench`)."""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

H2_OK = """starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 2.00s, 19815.00 req/s, 2.57MB/s
requests: 39630 total, 39638 started, 39630 done, 39620 succeeded, 10 failed, 3 errored, 1 timeout
status codes: 39620 2xx, 0 3xx, 7 4xx, 0 5xx
traffic: 2.57MB (2695036) total, 1.81MB (1902240) headers (space savings 51.02%), 77.40KB (79260) data
                     min         max         mean         sd        +/- sd
time for request:       29us      5.68ms       137us       358us    98.87%
time for connect:    16.74ms     16.86ms     16.80ms        51us    50.00%
time to 1st byte:    17.34ms     17.43ms     17.39ms        39us    75.00%
req/s           :    9623.23    10065.46     9905.92      209.38    75.00%
"""

H2_REFUSED = """starting benchmark...
spawning thread #0: 2 total client(s). 2 total requests

finished in 4.53ms, 0.00 req/s, 0B/s
requests: 2 total, 0 started, 0 done, 0 succeeded, 2 failed, 2 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
"""


class H2loadParsing(unittest.TestCase):
    def test_summary_latencies_and_negotiation(self):
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "requests.tsv")
            with open(log, "w") as f:
                for i in range(1, 101):  # 100 requests of 1..100 µs
                    f.write(f"1796138665275648\t200\t{i}\n")
            r = run.parse_h2load(H2_OK, "", 0, log)
            self.assertFalse(os.path.exists(log), "the per-request log is removed once read")
        self.assertEqual(r["requests"], 39630)
        self.assertEqual(r["rps"], 39630 / 2.0)
        self.assertEqual(r["secs"], 2.0)
        self.assertEqual(r["non2xx"], 7)  # 3xx + 4xx + 5xx: the HTTP-level failures
        self.assertEqual(r["errors"], 3)  # h2load's `errored`: the network-level ones
        self.assertEqual(r["tls"], "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519 253 bits")
        self.assertEqual(r["connect_mean_us"], 16800.0)  # the mean, third column
        self.assertEqual((r["p50_us"], r["p99_us"], r["max_us"]), (51, 100, 100))

    def test_millisecond_duration(self):
        r = run.parse_h2load(H2_OK.replace("finished in 2.00s", "finished in 35.24ms"), "", 0)
        self.assertAlmostEqual(r["secs"], 0.03524)

    def assert_fails(self, stdout, returncode, words):
        with self.assertRaises(SystemExit) as e:
            run.parse_h2load(stdout, "some stderr", returncode, what="h2load on 127.0.0.1:1")
        message = str(e.exception.code)
        self.assertIn("h2load on 127.0.0.1:1", message)
        self.assertIn(words, message)
        self.assertIn("some stderr", message, "the failure shows h2load's own output")

    def test_connection_refused_fails_loudly(self):
        # h2load exits 0 when it could not connect at all.
        self.assert_fails(H2_REFUSED, 0, "negotiated no application protocol")

    def test_http1_fallback_fails(self):
        self.assert_fails(H2_OK.replace("Application protocol: h2", "Application protocol: http/1.1"), 0,
                          "negotiated http/1.1, not h2")

    def test_nonzero_exit_fails(self):
        self.assert_fails(H2_OK, 1, "exited with status 1")

    def test_missing_summary_fails(self):
        self.assert_fails(H2_OK.replace("requests: ", "reqs: "), 0, "printed no summary")

    def test_no_request_completed_fails(self):
        out = H2_OK.replace("39630 done, 39620 succeeded", "0 done, 0 succeeded")
        self.assert_fails(out, 0, "completed no request")

    def test_durations(self):
        self.assertEqual(run.as_us("51us"), 51)
        self.assertEqual(run.as_us("16.80ms"), 16800)
        self.assertEqual(run.as_us("1.5s"), 1.5e6)
        with self.assertRaises(ValueError):
            run.as_us("12 parsecs")


class Scenarios(unittest.TestCase):
    def test_only(self):
        self.assertEqual(run.scenarios("valid, tls,next"), {"valid", "tls", "next"})
        with self.assertRaises(argparse.ArgumentTypeError) as e:
            run.scenarios("valid,nope")
        self.assertIn("nope", str(e.exception))
        self.assertIn("handshake", str(e.exception), "the error lists the scenarios")
        with self.assertRaises(argparse.ArgumentTypeError):
            run.scenarios(" , ")

    def test_http2_directive_by_nginx_version(self):
        self.assertEqual(run.http2_directives((1, 22, 1)), {"LISTEN_HTTP2": "http2", "HTTP2_ON": ""})
        self.assertEqual(run.http2_directives((1, 25, 1)), {"LISTEN_HTTP2": "", "HTTP2_ON": "http2 on;"})
        with tempfile.TemporaryDirectory() as d:
            for version, wanted in [((1, 22, 1), "ssl http2 backlog"), ((1, 27, 0), "http2 on;")]:
                path = run.render("njs-tls.conf", d, "t.conf", {"WORKERS": 1, "DIR": d, "PORT": 1, "APP": 2, "CERT": "c",
                                                                 "KEY": "k", **run.http2_directives(version)})
                with open(path) as f:
                    text = f.read()
                self.assertIn(wanted, text)
                # A placeholder is `__NAME__`; the temporary directory's own name may hold `__`.
                self.assertIsNone(re.search(r"__[A-Z0-9_]+__", text), "every placeholder filled in")
                self.assertIn("keepalive_requests 1000000", text)


class Cpu(unittest.TestCase):
    def test_stat_fields_with_parentheses_in_the_name(self):
        stat = "4242 (next-server (v1)) S 17 4242 4242 0 -1 4194560 10 0 0 0 123 45 0 0 20 0 11 0 1 2 3"
        fields = run.stat_fields(stat)
        self.assertEqual(fields[0], "S")
        self.assertEqual(fields[1], "17")
        self.assertEqual((fields[11], fields[12]), ("123", "45"))

    def test_process_tree_finds_descendants(self):
        parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
        try:
            tree = []
            for _ in range(100):  # bounded wait for the shell to start its two children
                tree = run.process_tree(parent.pid)
                if len(tree) == 3:
                    break
                time.sleep(0.05)
            self.assertEqual(len(tree), 3, tree)
            self.assertEqual(tree[0], parent.pid)
            ticks = run.cpu_ticks(tree + [2 ** 22 + 1])  # a pid that is not there is left out
            self.assertEqual(set(ticks), set(tree))
        finally:
            for pid in run.process_tree(parent.pid)[1:]:
                os.kill(pid, 9)
            parent.kill()
            parent.wait()

    def test_measured_counts_requests_and_refreshes(self):
        me = mock.Mock(pid=os.getpid())
        ticks = iter([{os.getpid(): 100}, {os.getpid(): 150}])  # 50 ticks during the run
        calls = iter([1000, 1040])
        with mock.patch.object(run, "cpu_ticks", lambda pids: next(ticks)), \
                mock.patch.object(run, "auth_calls", lambda port: next(calls)), \
                mock.patch.object(run, "settled_calls", lambda port: next(calls)):
            r = run.measured([me], lambda: {"requests": 20}, auth_port=1)
        self.assertEqual(r["cpu_us"], 50 * run.TICK_US)
        self.assertEqual(r["cpu_us_req"], 50 * run.TICK_US / 20)
        self.assertEqual(r["calls"], 40)
        self.assertEqual(r["cpu_us_refresh"], 50 * run.TICK_US / 40)

    def test_measured_without_refresh(self):
        me = mock.Mock(pid=os.getpid())
        ticks = iter([{os.getpid(): 7}, {os.getpid(): 7}])
        with mock.patch.object(run, "cpu_ticks", lambda pids: next(ticks)):
            r = run.measured([me], lambda: {"requests": 0})
        self.assertEqual((r["cpu_us"], r["cpu_us_req"]), (0, 0))
        self.assertNotIn("calls", r)


class Tables(unittest.TestCase):
    def test_ratios_medians_and_cpu_columns(self):
        def r(rps, cpu, calls=None):
            return {"rps": rps, "p50_us": 100, "p99_us": 200, "cpu_us_req": cpu, "non2xx": 0, "connect": 0, "read": 0,
                    "write": 0, "timeout": 0, "calls": calls, "cpu_us_refresh": cpu if calls else None}
        rows = run.summarize({"floor": [r(100, 10), r(300, 30), r(200, 20)], "etls": [r(150, 40, 5), r(50, 20, 5), r(100, 30, 5)]})
        etls = run.by_name(rows)["etls"]
        self.assertEqual((etls["rps"], etls["rps_x"]), (100, 0.5))
        self.assertEqual((etls["cpu_us_req"], etls["cpu_us_req_x"]), (30, 1.5))
        self.assertEqual(etls["calls"], 15)
        text = run.table("t", rows, "floor", {"etls": "etls-proxy"}, refresh=True)
        self.assertIn("| CPU µs/req | × floor | CPU µs/refresh | auth API calls |", text)
        self.assertIn("| etls-proxy | 100 | 0.50 | 100 | 1.00 | 200 | 1.00 | 30.0 | 1.50 | 30.0 | 15 | 0 | 0 |", text)
        self.assertIn("| floor | 200 | 1.00 | 100 | 1.00 | 200 | 1.00 | 20.0 | 1.00 | – | 0 | 0 | 0 |", text)


class StormScenario(unittest.TestCase):
    def test_the_refresh_itself_is_paired_round_by_round(self):
        storm = [{"cpu_us_refresh": 80.0}, {"cpu_us_refresh": 150.0}, {"cpu_us_refresh": 90.0}, {"cpu_us_refresh": None}]
        valid = [{"cpu_us_req": 30.0}, {"cpu_us_req": 60.0}, {"cpu_us_req": 35.0}, {"cpu_us_req": 30.0}]
        # Pairs 50, 90 and 55, the round without a refresh left out: their median.
        self.assertEqual(run.refresh_beyond_request(storm, valid), 55.0)
        self.assertIsNone(run.refresh_beyond_request([{"cpu_us_refresh": None}], [{"cpu_us_req": 1.0}]))


class NextScenario(unittest.TestCase):
    def test_skipped_without_node_modules(self):
        with tempfile.TemporaryDirectory() as d, mock.patch.object(run, "E2E", d):
            self.assertEqual(run.next_unavailable(), "e2e/node_modules is missing (`make e2e` installs it)")

    def test_fresh_build_is_reused(self):
        with tempfile.TemporaryDirectory() as d, mock.patch.object(run, "E2E", d):
            os.makedirs(os.path.join(d, "app", ".next"))
            os.makedirs(os.path.join(d, "app", "app"))
            for path in ["package-lock.json", "app/middleware.js", "app/app/page.js"]:
                with open(os.path.join(d, path), "w") as f:
                    f.write("x")
                os.utime(os.path.join(d, path), (1000, 1000))
            with open(os.path.join(d, "app", ".next", "BUILD_ID"), "w") as f:
                f.write("b")
            os.utime(os.path.join(d, "app", ".next", "BUILD_ID"), (2000, 2000))

            def no_build(*a, **k):
                raise AssertionError("next build was run for a fresh build")
            with mock.patch.object(run.subprocess, "run", no_build):
                self.assertIsNone(run.next_build({"workdir": d}))
            # A source newer than the build: built again (here a failing build, said as such).
            os.utime(os.path.join(d, "app", "app", "page.js"), (3000, 3000))
            with mock.patch.object(run.subprocess, "run", lambda *a, **k: mock.Mock(returncode=1)):
                self.assertIn("next build failed", run.next_build({"workdir": d}))


class InstructionsTest(unittest.TestCase):
    """bench/instructions.py's own parsing (no valgrind started)."""

    def test_bins_and_their_environment(self):
        import instructions
        self.assertEqual(instructions.parse_bins(["a=/x", "b=/y:K=1,L=2"]),
                         [("a", "/x", {}), ("b", "/y", {"K": "1", "L": "2"})])
        with self.assertRaises(SystemExit):
            instructions.parse_bins(["/x"])

    def test_the_storm_warms_up_on_sessions_of_its_own(self):
        import instructions
        env = {"BENCH_COOKIE": "c", "BENCH_SESSION_PREFIX": "demo-rt-x-"}
        self.assertEqual(instructions.warm_up_env("storm.lua", env)["BENCH_SESSION_PREFIX"], "demo-rt-x-warm-")
        self.assertEqual(env["BENCH_SESSION_PREFIX"], "demo-rt-x-")
        self.assertIs(instructions.warm_up_env("grace.lua", env), env)

    def test_total_of_the_dump(self):
        import instructions
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cg.out")
            with open(out, "w") as f:
                f.write("part: 2\nsummary: 0\ntotals: 0\n")
            with open(out + ".1", "w") as f:
                f.write("part: 1\ndesc: Trigger: dump\nsummary: 0\ntotals: 197280820\n")
            self.assertEqual(instructions.callgrind_total(out), 197280820)


if __name__ == "__main__":
    unittest.main()
