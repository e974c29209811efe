#!/usr/bin/env bash
# Fuzz each target for a bounded time (FUZZ_SECONDS, default 60), or for
# FUZZ_RUNS executions each when that is set (the long runs: 10000000), with
# cargo-fuzz (libFuzzer). The stable toolchain builds it with
# RUSTC_BOOTSTRAP=1, as no nightly can be fetched here. Seeds are in
# fuzz/corpus/TARGET; what the fuzzer finds goes to fuzz/target/corpus/
# (not committed); a crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/. Prints the executions per target.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-60}
budget=(-max_total_time="$secs")
[ -n "${FUZZ_RUNS:-}" ] && budget=(-runs="$FUZZ_RUNS")
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
status=0
for t in frame messages config api_json handshake upload; do
  mkdir -p "target/corpus/$t"
  log="target/fuzz-$t.log"
  if cargo fuzz run -O "$t" "target/corpus/$t" "corpus/$t" -- \
      "${budget[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzz $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1), no crash"
  else
    echo "fuzz $t: FAILED, see fuzz/$log and fuzz/artifacts/$t/"
    tail -30 "$log"
    status=1
  fi
done
exit $status
