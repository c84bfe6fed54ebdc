# The two commands: `make run` (the demo) and `make test` (the whole suite).
CARGO ?= cargo

.PHONY: run test deps build check lint clean bench bench-instructions bench-micro fuzz soak e2e

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --bins --features tools

## The proxy in front of the bundled demo app and auth API, with three curl lines to try.
run: build
	scripts/run-demo.sh

## Formatting, lints, unit and integration tests.
test: deps lint
	$(CARGO) test --all-targets
	python3 bench/test_run.py

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## Side by side with the floor (bare Pingora), nginx and nginx + njs: see bench/RESULTS.md.
## BENCH_ARGS="--duration 5 --rounds 2 --soak 0" for a quicker run.
bench:
	@scripts/deps.sh bench
	$(CARGO) build --release --bins --features tools
	ulimit -n 65536 2>/dev/null || true; python3 bench/run.py $(BENCH_ARGS)

## Instructions per request under callgrind, floor against this build (valid and grace paths):
## a measure that does not move with the machine. INSTR_ARGS="--paths valid,grace,storm".
bench-instructions:
	@scripts/deps.sh bench
	$(CARGO) build --release --bins --features tools
	python3 bench/instructions.py $(INSTR_ARGS)

## Load and soak, pass/fail: a minute each of valid and refresh-storm load (no errors, flat RSS, no
## fd left open), the auth API and the app killed and restarted under load, SIGTERM with requests
## in flight; see target/soak-report.md. SOAK_ARGS="--duration 10" for a quicker run.
soak:
	@scripts/deps.sh bench
	$(CARGO) build --release --bins --features tools
	ulimit -n 65536 2>/dev/null || true; python3 bench/soak.py $(SOAK_ARGS)

## Criterion micro-benchmarks of the pure hot-path pieces (ns per operation).
bench-micro: deps
	$(CARGO) bench --bench hot_path

## Every cargo-fuzz target for FUZZ_SECS seconds (default 60); see fuzz/ and src/fuzzing.rs.
fuzz: deps
	scripts/fuzz.sh

## A real Next.js app and headless Chromium behind the proxy, then the same app with a middleware
## instead (installs chromium and the pinned npm packages when missing); see e2e/ and the README.
e2e: build
	e2e/run.sh target/debug

## Check the shipped configuration against the environment (needs ETLS_ACCESS/ETLS_REFRESH).
check: build
	target/debug/etls-proxy -t -c conf/etls-proxy.yaml

clean:
	$(CARGO) clean
