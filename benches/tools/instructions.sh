#!/usr/bin/env bash
# Instructions per packet of the packet benches' key cases, counted by
# callgrind, checked against the committed baseline (issue 28). Counts are
# repeatable where wall clock is not: the same binary on the same inputs
# counts the same, whatever else the machine is doing.
#
#   benches/tools/instructions.sh                   check every case (./run test runs this)
#   benches/tools/instructions.sh --record          re-record benches/instructions/baseline.txt
#   benches/tools/instructions.sh --breakdown CASE  where one case's instructions go, per function
#   benches/tools/instructions.sh [--record] CASE…  only these cases (check, or re-record their lines)
#
# A case is BENCH/NAME: a criterion case of benches/BENCH.rs, run in its
# instruction-count mode by the switch crate's `instructions` bench
# (switch/benches/instructions.rs, which compiles the root benches' cases
# without building the podswitch binaries): set-up, a few warm-up
# batches, then a fixed number of batches (64 x 64 packets) each through
# one never-inlined function, the only place callgrind collects
# (--toggle-collect), with the clock frozen and the flow table's hash seed
# fixed (benches/instructions/mod.rs). The figure is the instructions
# collected divided by the packets of the measured batches.
#
# The check fails (exit 1) when a case counts more than
# INSTRUCTIONS_TOLERANCE_PCT (default 5) percent above its baseline, naming
# the case, the baseline, the count and the growth. When a change is meant
# to cost more (or a compiler update moves the counts), re-record with
# --record and commit benches/instructions/baseline.txt with the reason in
# the commit message.
#
# It is built with `cargo bench --no-run`: the release profile, what
# ships, except one codegen unit for the switch crate. With the profile's
# four, which functions share a unit, and so what gets inlined, moves
# with unrelated code in the crate: rebasing onto two commits that touched
# only the worker and the daemon moved gateway_arp by 9.5 %
# (vnet_hdr::Repr::emit no longer inlined into Packet::set_vnet); with one
# unit both builds counted the same in all eight cases.
# INSTRUCTIONS_BENCH, set to such an executable, skips the build:
# to count another build, e.g. one copied aside from
# target/release/deps/instructions-*. INSTRUCTIONS_JOBS (default 2) cases
# run at once.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The guarded cases, in the order they are reported.
CASES=(
    pipeline/route_udp64           # pod to pod: UDP 64 B forwarded to another pod of the node
    services/established_cached_4k # established service flow, 4k flows: conntrack, DNAT, VXLAN encap
    services/established_hot_100k  # the same among 100k flows
    services/new_flow              # service new flow: SYN, Maglev pick, flow insert, DNAT, encap
    services/vxlan_encap           # pod to a pod on another node (no service): route, VXLAN encap
    services/vxlan_decap           # from a pod on another node: VXLAN decap, route to the pod
    pipeline/gateway_arp           # ARP request for the gateway answered with a reply
    pipeline/gateway_icmp_echo     # ICMP echo request to the gateway answered with a reply
)
BASELINE=benches/instructions/baseline.txt
TOLERANCE=${INSTRUCTIONS_TOLERANCE_PCT:-5}
JOBS=${INSTRUCTIONS_JOBS:-2}

usage() {
    sed -n '7,10p' "$0" | sed 's/^# *//' >&2
    exit 2
}

mode=check breakdown=
selected=()
while (($#)); do
    case $1 in
    --record) mode=record ;;
    --breakdown)
        mode=breakdown
        breakdown=${2:?--breakdown needs a case}
        shift
        ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) selected+=("$1") ;;
    esac
    shift
done
[ "$mode" = breakdown ] && selected=("$breakdown")
((${#selected[@]})) || selected=("${CASES[@]}")
for c in "${selected[@]}"; do
    [[ " ${CASES[*]} " == *" $c "* ]] || {
        echo "instructions: unknown case $c; cases: ${CASES[*]}" >&2
        exit 2
    }
done

command -v valgrind >/dev/null || {
    echo "instructions: valgrind is missing (apt-get install valgrind; ./run test installs it)" >&2
    exit 1
}

started=$SECONDS
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The counting executable, built unless given.
bin=${INSTRUCTIONS_BENCH:-}
if [ -z "$bin" ]; then
    echo "instructions: building the cases (cargo bench --no-run -p podswitch-switch --bench instructions)" >&2
    cargo bench --locked --no-run -p podswitch-switch --bench instructions \
        --config 'profile.bench.package.podswitch-switch.codegen-units=1' \
        --message-format=json-render-diagnostics >"$out/build.json"
    # One JSON object per line; the bench target's carries its executable.
    bin=$(grep '"kind":\["bench"\]' "$out/build.json" |
        sed -nE 's/.*"name":"instructions".*"executable":"([^"]+)".*/\1/p' | tail -1)
fi
[ -x "$bin" ] || {
    echo "instructions: no instructions bench executable ('$bin')" >&2
    exit 1
}
built=$SECONDS

# Counts case $1 under callgrind; leaves $out/<bench>.<name>.{cg,log,err}.
count() {
    local f="$out/${1/\//.}"
    if ! valgrind --tool=callgrind --toggle-collect='*instructions::measured*' \
        --callgrind-out-file="$f.cg" "$bin" "$1" >"$f.log" 2>"$f.err"; then
        echo "instructions: $1 failed under callgrind:" >&2
        tail -20 "$f.err" >&2
        return 1
    fi
}

# Instructions per packet of a counted case, one decimal.
per_packet() {
    local f="$out/${1/\//.}" total packets
    total=$(awk '/^(totals|summary):/ {print $2; exit}' "$f.cg")
    packets=$(sed -nE "s/^instructions: ${1#*/} packets ([0-9]+)$/\1/p" "$f.log")
    if [ -z "$total" ] || [ -z "$packets" ] || [ "$packets" -eq 0 ]; then
        echo "instructions: $1: no count (callgrind total '$total', packets '$packets')" >&2
        return 1
    fi
    awk -v t="$total" -v p="$packets" 'BEGIN {printf "%.1f\n", t / p}'
}

# Count the cases, JOBS at a time.
running=0 failed=0
for c in "${selected[@]}"; do
    count "$c" &
    if ((++running >= JOBS)); then
        wait -n || failed=1
        ((running--))
    fi
done
while ((running)); do
    wait -n || failed=1
    ((running--))
done
((failed == 0)) || exit 1
measured=$((SECONDS - built))

if [ "$mode" = breakdown ]; then
    c=${selected[0]} f="$out/${selected[0]/\//.}"
    n=$(sed -nE 's/.* packets ([0-9]+)$/\1/p' "$f.log")
    echo "$c: $(per_packet "$c") instructions per packet ($n packets); per function (self, inlined code included), >= 2 per packet:"
    callgrind_annotate --auto=no --threshold=100 "$f.cg" 2>/dev/null | awk -v pk="$n" '
        /file:function/ {on = 1; next}
        on && /^ *[0-9,]+ / {
            v = $1; gsub(",", "", v); fn = $0
            sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", fn); sub(/ \[[^]]*\]$/, "", fn)
            sub(/^(.*\.(rs|S|c|h)|\?\?\?):/, "", fn); self[fn] += v}
        END {for (fn in self) if (self[fn] / pk >= 2) printf "%8.1f  %s\n", self[fn] / pk, substr(fn, 1, 150)}' |
        sort -rn
    exit 0
fi

declare -A figure
for c in "${selected[@]}"; do
    figure[$c]=$(per_packet "$c")
done

toolchain="$(rustc --version), $(valgrind --version), $(uname -m)"

if [ "$mode" = record ]; then
    declare -A keep=()
    if [ -f "$BASELINE" ]; then
        while read -r c v _; do
            [[ -z "$c" || "$c" == \#* ]] || keep[$c]=$v
        done <"$BASELINE"
    fi
    for c in "${selected[@]}"; do keep[$c]=${figure[$c]}; done
    {
        echo "# Instructions per packet of the packet benches' key cases: what callgrind"
        echo "# counts over a case's measured batches (BENCH --instructions NAME, 64 x 64"
        echo "# packets), divided by the packets. ./run test runs"
        echo "# benches/tools/instructions.sh, which fails when a case counts more than"
        echo "# 5 % above its line here. A change meant to cost more re-records with"
        echo "# \`benches/tools/instructions.sh --record\` and commits this file, saying why."
        echo "# recorded with: $toolchain"
        echo "# case                         instructions per packet"
        for c in "${CASES[@]}"; do
            [ -n "${keep[$c]:-}" ] && printf '%-32s %s\n' "$c" "${keep[$c]}"
        done
    } >"$BASELINE"
    for c in "${selected[@]}"; do
        printf '  %-32s %8s instructions per packet\n' "$c" "${figure[$c]}"
    done
    echo "instructions: recorded ${#selected[@]} case(s) in $BASELINE (build $((built - started)) s, counting $measured s); commit it with the reason"
    exit 0
fi

# Check against the baseline.
declare -A base=()
recorded_with=
if [ -f "$BASELINE" ]; then
    while read -r c v _; do
        [[ -z "$c" || "$c" == \#* ]] || base[$c]=$v
    done <"$BASELINE"
    recorded_with=$(sed -n 's/^# recorded with: //p' "$BASELINE")
fi
grew=() missing=()
printf '  %-32s %9s %9s %8s\n' case baseline measured growth
for c in "${selected[@]}"; do
    b=${base[$c]:-} m=${figure[$c]}
    if [ -z "$b" ]; then
        printf '  %-32s %9s %9s %8s  NO BASELINE\n' "$c" - "$m" -
        missing+=("$c")
        continue
    fi
    read -r pct verdict < <(awk -v b="$b" -v m="$m" -v t="$TOLERANCE" 'BEGIN {
        g = (m / b - 1) * 100
        if (g > -0.05 && g < 0.05) g = 0
        v = g > t ? "FAIL" : (g < -t ? "ok (below the baseline: re-record to keep the guard tight)" : "ok")
        printf "%+.1f %s\n", g, v}')
    printf '  %-32s %9s %9s %7s%%  %s\n' "$c" "$b" "$m" "$pct" "$verdict"
    [ "$verdict" = FAIL ] && grew+=("$c: baseline $b, measured $m instructions per packet ($pct %)")
done
[ -n "$recorded_with" ] && [ "$recorded_with" != "$toolchain" ] &&
    echo "  note: the baseline was recorded with $recorded_with; this is $toolchain (a compiler change moves counts)"
took="build $((built - started)) s, counting $measured s"
if ((${#grew[@]} || ${#missing[@]})); then
    for g in "${grew[@]}"; do echo "instructions: FAIL $g, more than $TOLERANCE % over the baseline" >&2; done
    for c in "${missing[@]}"; do echo "instructions: FAIL $c has no line in $BASELINE" >&2; done
    echo "instructions: if the change is meant to cost this, re-record (benches/tools/instructions.sh --record)" >&2
    echo "instructions: and commit $BASELINE with the reason in the message ($took)" >&2
    exit 1
fi
echo "instructions: all ${#selected[@]} cases within $TOLERANCE % of $BASELINE ($took)"
