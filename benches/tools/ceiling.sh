#!/usr/bin/env bash
# What a userspace tap hop can reach on this machine, next to the kernel
# bridge and podswitch, measured in one run (issue 29's account of the
# round-trip and copy-bound targets).
#
#   benches/tools/ceiling.sh [--idle-states-on] [--secs N] [--rounds N] [--one-worker]
#
# Paths, each between two network namespaces on one machine:
#   bridge         veth pairs on a kernel bridge (podswitch bench's kernel-bridge)
#   relay-busy     two vnet_hdr taps joined by ceiling/relay.c spinning on
#                  non-blocking reads: one read() and one write() per frame
#                  and nothing else, the floor of a userspace hop's latency
#   relay-block    the same relay sleeping in poll() when idle
#   podswitch      two pods of a one-node podswitch lab, default settings
#                  (adaptive polling, io_uring, one worker per core)
#   podswitch-1w   the same with one worker (--one-worker)
# Measured: sockperf UDP ping-pong (64 B, round-trip p50 and p99),
# iperf3 TCP with 1 and 4 streams (Gbit/s) and the whole machine's CPU
# seconds per GB moved during the 4-stream run (/proc/stat), plus, where
# `perf` exists, the share of that CPU spent copying data between user and
# kernel space. All paths are set up first and measured in turn, round
# after round (default 3; a relay is stopped with SIGSTOP outside its own
# turn, so a spinning one costs the others nothing): on a shared VM the
# latency drifts by a third within minutes, so only figures from the same
# rounds compare. Each round prints one line per path; the summary gives
# the median over the rounds and the median of the per-round ratios to the
# bridge.
# CPU idle states are held off (/dev/cpu_dma_latency 0), as podswitch bench
# does, unless --idle-states-on. Needs root, gcc, sockperf, iperf3 and a
# release build (BIN, default target/release/podswitch).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/podswitch}
SECS=3 IDLE=off ROUNDS=3 ONE_WORKER=0
while (($#)); do
    case $1 in
    --idle-states-on) IDLE=on ;;
    --secs) SECS=${2:?}; shift ;;
    --rounds) ROUNDS=${2:?}; shift ;;
    --one-worker) ONE_WORKER=1 ;;
    *) sed -n '6,7p' "$0" | sed 's/^# *//' >&2; exit 2 ;;
    esac
    shift
done
for t in gcc sockperf iperf3 python3; do
    command -v $t >/dev/null || { echo "ceiling: $t is missing (./run installs it)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "ceiling: no $BIN (cargo build --release)" >&2; exit 1; }

P=psc$$ # namespace, link and lab prefix of this run
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P" || true); do ip netns del "$ns"; done
    "$BIN" lab down --name "$P" >/dev/null 2>&1 || true
    "$BIN" lab down --name "${P}w" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O2 -o "$work/relay" benches/tools/ceiling/relay.c

if [ $IDLE = off ]; then
    python3 -c 'import os,struct,time; fd=os.open("/dev/cpu_dma_latency",os.O_WRONLY); os.write(fd,struct.pack("i",0)); time.sleep(86400)' &
    pids+=($!)
fi

# Path NAME: client namespace, server namespace, server address, and the
# relay process to wake for its turn (if any).
declare -A CLIENT SERVER ADDR RELAY
paths=()

# pair NAME LINK_A LINK_B: namespaces NAME-a and NAME-b, 10.250.0.1 and .2.
pair() {
    local n=$1
    ip netns add "$P$n-a"
    ip netns add "$P$n-b"
    ip link set "$2" netns "$P$n-a"
    ip link set "$3" netns "$P$n-b"
    ip -n "$P$n-a" addr add 10.250.0.1/24 dev "$2"
    ip -n "$P$n-b" addr add 10.250.0.2/24 dev "$3"
    ip -n "$P$n-a" link set "$2" up
    ip -n "$P$n-b" link set "$3" up
    ip -n "$P$n-a" link set lo up
    ip -n "$P$n-b" link set lo up
    CLIENT[$n]=$P$n-a SERVER[$n]=$P$n-b ADDR[$n]=10.250.0.2
    paths+=("$n")
}

# The kernel bridge.
ip netns add "${P}br"
ip -n "${P}br" link add br0 type bridge
ip -n "${P}br" link set br0 up
for x in a b; do
    ip link add "${P}v$x" type veth peer name "${P}p$x"
    ip link set "${P}p$x" netns "${P}br"
    ip -n "${P}br" link set "${P}p$x" master br0 up
done
pair bridge "${P}va" "${P}vb"

# The relay, spinning and blocking, each stopped outside its turn.
for mode in busy block; do
    "$work/relay" "${P}${mode:0:2}a" "${P}${mode:0:2}b" $mode >"$work/relay-$mode.out" &
    pids+=($!)
    deadline=$((SECONDS + 10))
    until grep -q ready "$work/relay-$mode.out"; do
        ((SECONDS < deadline)) || { echo "ceiling: the relay did not start" >&2; exit 1; }
        sleep 0.05
    done
    pair relay-$mode "${P}${mode:0:2}a" "${P}${mode:0:2}b"
    RELAY[relay-$mode]=${pids[-1]}
    kill -STOP "${pids[-1]}"
done

# podswitch: a one-node lab with default settings (and one with one worker).
lab() {
    local name=$1 lab=$2 pods
    shift 2
    "$BIN" lab up --name "$lab" --nodes 1 "$@" >/dev/null
    mapfile -t pods < <("$BIN" lab --name "$lab" get pods -o wide | awk 'NR>1 && $6=="node-1" {print $7, $5}' | head -2)
    CLIENT[$name]=$(basename "${pods[0]% *}") SERVER[$name]=$(basename "${pods[1]% *}") ADDR[$name]=${pods[1]#* }
    paths+=("$name")
}
lab podswitch "$P"
if ((ONE_WORKER)); then
    sed 's/workersPerSwitch: .*/workersPerSwitch: 1/' configs/labs/default.yaml >"$work/one-worker.yaml"
    lab podswitch-1w "${P}w" -f "$work/one-worker.yaml"
fi

# Servers on every path, for the whole run.
for n in "${paths[@]}"; do
    ip netns exec "${SERVER[$n]}" sockperf sr -i "${ADDR[$n]}" -p 11111 >/dev/null 2>&1 &
    pids+=($!)
    ip netns exec "${SERVER[$n]}" iperf3 -s -p 5201 >/dev/null 2>&1 &
    pids+=($!)
done

cpu_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }

# measure NAME ROUND: one line of results, also appended to $work/results.
measure() {
    local n=$1 a=${CLIENT[$1]} ip=${ADDR[$1]} rr tput1 tputn cpugb c0 c1 out copies=- perfpid=
    [ -n "${RELAY[$n]:-}" ] && kill -CONT "${RELAY[$n]}"
    local deadline=$((SECONDS + 10))
    until ip netns exec "$a" ping -c1 -W1 "$ip" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "ceiling: $n: no answer from $ip" >&2; exit 1; }
    done
    rr=$(ip netns exec "$a" sockperf pp -i "$ip" -p 11111 -t "$SECS" -m 64 --full-rtt 2>&1 |
        awk '/percentile 50.000/{p50=$6} /percentile 99.000/{p99=$6} END{print p50, p99}')
    tput1=$(ip netns exec "$a" iperf3 -c "$ip" -p 5201 -P 1 -t "$SECS" -O 1 -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
    if command -v perf >/dev/null; then
        (sleep 1.2 && exec perf record -a -F 999 -o "$work/$n.perf" -- sleep $((SECS - 1)) >/dev/null 2>&1) &
        perfpid=$!
    fi
    c0=$(cpu_busy)
    out=$(ip netns exec "$a" iperf3 -c "$ip" -p 5201 -P 4 -t "$SECS" -O 1 -J)
    c1=$(cpu_busy)
    read -r tputn cpugb < <(echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin)['end']['sum_received']
moved=d['bytes']*($SECS+1)/$SECS  # the omitted first second moved data too
print('%.2f %.2f' % (d['bits_per_second']/1e9, ($c1-$c0)/$(getconf CLK_TCK)/(moved/1e9)))")
    if [ -n "$perfpid" ]; then
        wait "$perfpid" || true
        copies=$(perf report -i "$work/$n.perf" --no-children --sort sym 2>/dev/null |
            awk '/\[k\] (_copy_to_iter|_copy_from_iter|rep_movs_alternative|copy_user_generic)$/ {s+=$1} END{printf "%.0f", s}')
    fi
    [ -n "${RELAY[$n]:-}" ] && kill -STOP "${RELAY[$n]}"
    set -- $rr
    echo "$n $1 $2 $tput1 $tputn $cpugb $copies" >>"$work/results"
    printf '  %-13s udp-rr-64 p50/p99 %6.1f / %6.1f us   tcp-stream-1 %6s Gbit/s   tcp-stream-4 %6s Gbit/s   cpu-s per GB %s   copies %s %% of the CPU\n' \
        "$n" "$1" "$2" "$tput1" "$tputn" "$cpugb" "$copies"
}

echo "ceiling: $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, CPU idle states $IDLE, $(date -u +%FT%TZ), $SECS s per measurement, $ROUNDS rounds"
for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r (load average $(cut -d' ' -f1 /proc/loadavg))"
    # Rotate the order every round, so no path always follows another.
    for ((i = 0; i < ${#paths[@]}; i++)); do
        measure "${paths[$(((i + r - 1) % ${#paths[@]}))]}"
    done
    echo "round" >>"$work/results"
done

python3 - "$work/results" "${paths[@]}" <<'PY'
import statistics, sys
rows, rounds, cur = sys.argv[2:], [], {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "round":
        rounds.append(cur); cur = {}
    else:
        cur[f[0]] = [float(x) if x != "-" else None for x in f[1:]]
names = ["udp-rr-64 p50 us", "udp-rr-64 p99 us", "tcp-stream-1 Gbit/s", "tcp-stream-4 Gbit/s", "cpu-s per GB", "copies % of CPU"]
print("medians over %d rounds; (x) = median of the per-round ratios to the bridge" % len(rounds))
print("  %-13s" % "path" + "".join("%22s" % n for n in names))
for p in rows:
    cells = []
    for k in range(len(names)):
        vals = [r[p][k] for r in rounds if p in r and r[p][k] is not None]
        if not vals:
            cells.append("%22s" % "-"); continue
        ratios = [r[p][k] / r["bridge"][k] for r in rounds if r.get(p) and r.get("bridge") and r[p][k] and r["bridge"][k]]
        cell = "%.2f" % statistics.median(vals)
        if p != "bridge" and ratios and k < 5:
            cell += " (%.2fx)" % statistics.median(ratios)
        cells.append("%22s" % cell)
    print("  %-13s" % p + "".join(cells))
PY
