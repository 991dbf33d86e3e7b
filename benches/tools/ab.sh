#!/usr/bin/env bash
# Compares two builds of a criterion bench on a noisy 2-core VM.
#
#   benches/tools/ab.sh ROUNDS FILTER BIN_A BIN_B
#
# BIN_A and BIN_B are bench executables (copy target/release/deps/services-*
# aside after each `cargo bench --bench services --no-run`). Each round runs
# A and B at the same time, pinned to the two cores (swapped every round),
# so that whatever else the host does slows both alike; it prints both
# throughput medians and B/A. Quote the median of the ratios. Sequential
# runs on this VM swing by up to 2x between runs of one binary; the ratio
# of concurrent runs stays within about 10 %. Absolute figures from this
# script are lower than a solo run's for the memory-bound cases (the two
# runs share the memory system): use it for ratios only.
set -euo pipefail
rounds=$1 filter=$2 a=$3 b=$4
median() {
    taskset -c "$1" "$2" --bench "$filter" --measurement-time 2 --warm-up-time 0.5 2>/dev/null |
        grep -A3 "$filter" | grep -m1 thrpt |
        sed -E 's/.*thrpt: *\[[^ ]+ [^ ]+ ([0-9.]+) (.?)elem.*/\1/'
}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$rounds"); do
    if (( r % 2 )); then ca=0 cb=1; else ca=1 cb=0; fi
    median "$ca" "$a" >"$out/a" &
    median "$cb" "$b" >"$out/b"
    wait
    python3 -c "a, b = float('$(cat "$out/a")'), float('$(cat "$out/b")'); print(f'round $r: A {a} B {b} B/A {b / a:.3f}')"
done
