#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target for FUZZ_SECS seconds (default 60) each, starting from the
# committed corpus (fuzz/corpus/<target>, read only) and keeping what it finds in
# target/fuzz-corpus/<target>. Crashes land in fuzz/artifacts/<target>/ and fail the run.
#
# The machine has only the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the -Z flags
# libFuzzer's instrumentation needs. No sanitizer: the crate has no unsafe code, and the
# properties under test are logic (see src/fuzzing.rs); a plain build is twice as fast.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-60}"
targets=(cookie_header auth_answer decision config)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build -O --sanitizer none)
summary=()
status=0
for t in "${targets[@]}"; do
  work="target/fuzz-corpus/$t"
  mkdir -p "$work"
  log="target/fuzz-$t.log"
  echo "fuzz: $t for ${secs}s"
  if (cd fuzz && cargo fuzz run -O --sanitizer none "$t" "../$work" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) >"$log" 2>&1; then
    result="ok"
  else
    result="FAILED (see $log and fuzz/artifacts/$t/)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  summary+=("$(printf '%-14s %12s execs  cov %6s  corpus %5s  %s' "$t" "${runs:-?}" "${cov:-?}" "$(ls "$work" | wc -l)" "$result")")
done
printf '%s\n' "${summary[@]}" | tee target/fuzz-report.txt
exit $status
