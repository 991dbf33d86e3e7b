#!/bin/bash
# What an idle switch costs (#29: at most 1 % of a core in the default
# mode): brings up a 1-node lab with the release build, lets it settle,
# then reads every switch thread's CPU time and wake-ups from
# /proc/PID/task/*/schedstat over 10 s. Prints per thread and in total.
# Usage: benches/tools/idle.sh [seconds]   (root; builds nothing itself:
# run `cargo build --release --bin podswitch` first)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=./target/release/podswitch
SECS=${1:-10}
NAME="idle$$"
[ -x "$B" ] || { echo "no $B: cargo build --release --bin podswitch" >&2; exit 1; }
trap '$B lab down --name "$NAME" >/dev/null 2>&1 || true' EXIT
$B lab up --name "$NAME" --nodes 1 >/dev/null
SOCK="/run/podswitch/lab/$NAME/node-1.sock"
PID=$(pgrep -f "podswitch switch run .*$SOCK" | head -1 || true)
[ -n "$PID" ] || PID=$(pgrep -f -- "--control-socket $SOCK" | head -1 || true)
[ -n "$PID" ] || { echo "switch of lab $NAME not found" >&2; exit 1; }
sleep 3 # the workers park after the lab's own checks
snap() { for t in /proc/"$PID"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f1,3 "$t/schedstat")"; done; }
A=$(snap); sleep "$SECS"; Z=$(snap)
paste <(echo "$A") <(echo "$Z") | awk -v secs="$SECS" '
  { d = ($5 - $2) / 1e6; w = $6 - $3; tot += d; wk += w
    if (d > 0 || w > 0) printf "%-18s %8.2f ms %6d wake-ups\n", $1, d, w }
  END { printf "switch pid total: %.2f ms CPU, %d wake-ups in %d s = %.2f %% of a core\n", tot, wk, secs, tot / (secs * 10) }'
