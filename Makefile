# The two commands: `make run` (the demo) and `make test` (the whole suite).
CARGO ?= cargo

.PHONY: run test deps build check lint clean

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --bins

## The proxy in front of the bundled demo app and auth API, with three curl lines to try.
run: build
	scripts/run-demo.sh

## Formatting, lints, unit and integration tests.
test: deps lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## Check the shipped configuration against the environment (needs ETLS_ACCESS/ETLS_REFRESH).
check: build
	target/debug/etls-proxy -t -c conf/etls-proxy.yaml

clean:
	$(CARGO) clean
