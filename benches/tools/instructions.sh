#!/usr/bin/env bash
# Instructions per packet of the timed part of a services bench case,
# counted by callgrind (repeatable on a machine without a PMU, whatever
# else the machine is doing):
#
#   benches/tools/instructions.sh BIN [CASE]     # CASE: established_cached_4k (default)
#
# Only the pipeline's stages and the bench's encapsulation are counted
# (callgrind --toggle-collect), not the untimed set-up that writes the
# frames; the packet count is the number of inner flow hashes the bench's
# encapsulation computes (one per packet: every measured packet is
# encapsulated).
# Prints the total and the biggest contributors per packet.
set -euo pipefail
bin=$1 case=${2:-established_cached_4k}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
toggles=()
for f in FastPathStage ParseStage ConntrackStage GatewayStage RouteStage OutputStage; do
    toggles+=("--toggle-collect=*${f}::process*")
done
toggles+=("--toggle-collect=*Encapsulator::run*")
valgrind --tool=callgrind "${toggles[@]}" --callgrind-out-file="$out/cg" \
    "$bin" --bench "$case" --measurement-time 2 --warm-up-time 0.2 --sample-size 10 >/dev/null 2>&1
callgrind_annotate "$out/cg" >"$out/self" 2>/dev/null
callgrind_annotate --inclusive=yes "$out/cg" >"$out/incl" 2>/dev/null
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$out/self")
packets=$(grep -m1 -o 'vxlan::inner_flow_hash ([0-9,]*x)' "$out/incl" | tr -dc '0-9')
echo "$case: $((total / packets)) instructions per packet ($packets packets)"
awk -v pk="$packets" '/file:function/ {on = 1; next}
    on && /^ *[0-9,]+ / {n = $1; gsub(",", "", n); if (n / pk >= 10) {
        sub(/^ *[0-9,]+ \( *[0-9.]+%\) */, ""); printf "%6.0f  %s\n", n / pk, substr($0, 1, 140)}}' "$out/self"
