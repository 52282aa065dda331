#!/usr/bin/env bash
# Runs the side-by-side matrix behind BENCHMARKS.md: pushgate, Mosquitto and
# NATS, each started fresh for every scenario, all on loopback.
#   loadtest/bench.sh [OUT_DIR]        (default /tmp/pushgate-bench)
# Environment: GW_BIN, LT_BIN (binaries; default: build target/release),
# IDLE_N (15000), TP_N (10000), TP_RATE (10000), STORM_N (15000), SECS (20), MULTI_PER (15000).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/pushgate-bench}
mkdir -p "$OUT"
if [ -z "${GW_BIN:-}" ] || [ -z "${LT_BIN:-}" ]; then
    cargo build --release -p pushgate -p pushgate-loadtest
fi
GW_BIN=${GW_BIN:-target/release/pushgate}
LT_BIN=${LT_BIN:-target/release/pushgate-loadtest}
IDLE_N=${IDLE_N:-15000}
TP_N=${TP_N:-10000}
TP_RATE=${TP_RATE:-10000}
STORM_N=${STORM_N:-15000}
SECS=${SECS:-20}
MULTI_PER=${MULTI_PER:-15000} # devices per gateway in the multi-gateway runs
AUTH=(--app load --secret loadtest-secret-0123456789)
DATA=/tmp/pushgate-loadtest-data

# run NAME TARGET ARGS...: one scenario against a freshly started server.
run() {
    local name=$1 target=$2
    shift 2
    echo "== $name ($target): $*" >&2
    local server=()
    if [ "$target" = pushgate ]; then
        rm -rf "$DATA"
        server=(--spawn "$GW_BIN serve --config loadtest/gateway.toml" --addr 127.0.0.1:17700 "${AUTH[@]}")
    else
        loadtest/peers.sh start "$target"
        server=(--server-pid "$(loadtest/peers.sh pid "$target")")
    fi
    local rc=0
    "$LT_BIN" run --target "$target" "${server[@]}" --json --svg "$OUT/$name-$target.svg" "$@" \
        >"$OUT/$name-$target.json" 2>"$OUT/$name-$target.log" || rc=$?
    [ "$target" = pushgate ] || loadtest/peers.sh stop "$target"
    echo "   exit $rc" >&2
    sleep 2 # let TIME_WAIT sockets and the server's memory settle
}

# Scenario by scenario, the three targets back to back, so they see the same machine.
for t in pushgate mosquitto nats; do run idle "$t" --scenario idle --devices "$IDLE_N" --hold 5; done
for t in pushgate mosquitto nats; do
    run tp-rate "$t" --scenario throughput --devices "$TP_N" --rate "$TP_RATE" --duration "$SECS"
done
for t in pushgate mosquitto nats; do
    run tp-max "$t" --scenario throughput --devices "$TP_N" --rate 0 --duration "$SECS"
done
for t in pushgate mosquitto nats; do run storm "$t" --scenario storm --devices "$STORM_N" --hold 3; done

# pushgate only: stored notifications, and correctness while connections break.
run offline pushgate --scenario offline --devices "$TP_N" --per-device 20
# Durable acceptance (target: at least 100,000/s): every push stored and fsynced before its RESULT.
run accept pushgate --scenario offline --devices "$TP_N" --per-device 50 --payload 200 --window 4096
run durable pushgate --scenario durable --devices "$TP_N" --rate "$TP_RATE" --duration "$SECS"
run storm-push pushgate --scenario storm --devices 5000 --hold 3 --providers 2 --rate 5000 --expiry 3600
run churn pushgate --scenario throughput --devices "$TP_N" --rate "$TP_RATE" --duration "$SECS" --churn 0.02 --expiry 3600

# Several gateway processes (127.0.0.1, 127.0.0.2, ...), 15k devices each: past one process's 20k open files.
# multi NAME GATEWAYS ARGS...
multi() {
    local name=$1 n=$2
    shift 2
    echo "== $name ($n x pushgate): $*" >&2
    local pids=() addrs=() paddrs=()
    for i in $(seq 1 "$n"); do
        sed "s/127.0.0.1:1770/127.0.0.$i:1770/g; s#$DATA#$DATA-g$i#" loadtest/gateway.toml >"$OUT/gw$i.toml"
        rm -rf "$DATA-g$i"
        "$GW_BIN" serve --config "$OUT/gw$i.toml" >"$OUT/$name-gw$i.log" 2>&1 &
        pids+=($!)
        addrs+=("127.0.0.$i:17700")
        paddrs+=("127.0.0.$i:17701")
    done
    sleep 1
    local rc=0
    "$LT_BIN" run --addr "$(IFS=,; echo "${addrs[*]}")" --provider-addr "$(IFS=,; echo "${paddrs[*]}")" \
        --server-pid "$(IFS=,; echo "${pids[*]}")" --providers "$n" "${AUTH[@]}" \
        --json --svg "$OUT/$name-pushgate.svg" "$@" >"$OUT/$name-pushgate.json" 2>"$OUT/$name-pushgate.log" || rc=$?
    kill "${pids[@]}"
    wait "${pids[@]}" || true
    echo "   exit $rc" >&2
    sleep 2
}
multi multi-idle 2 --scenario idle --devices $((2 * MULTI_PER)) --hold 5
multi multi-tp 2 --scenario throughput --devices $((2 * MULTI_PER)) --rate "$TP_RATE" --duration "$SECS"
multi multi4-tp 4 --scenario throughput --devices $((4 * MULTI_PER)) --rate "$TP_RATE" --duration "$SECS"
multi multi8-tp 8 --scenario throughput --devices $((8 * MULTI_PER)) --rate "$TP_RATE" --duration "$SECS"

python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("*.json")):
    try:
        rows[f.stem] = json.loads(f.read_text().strip().splitlines()[-1])
    except Exception as e:
        print(f"{f.name}: {e}", file=sys.stderr)
def g(k, key, fmt="{:.0f}"):
    v = rows.get(k, {}).get(key)
    return "-" if v is None else fmt.format(v)
def mib(k, key):
    v = rows.get(k, {}).get(key)
    return "-" if v is None else f"{v / 1048576:.1f}"
T = ["pushgate", "mosquitto", "nats"]
print("Idle: devices connected and held\n")
print("| target | devices | connect/s | failures | RSS before MiB | RSS connected MiB | RSS/device B | load avg |")
print("|---|---|---|---|---|---|---|---|")
for t in T:
    k = f"idle-{t}"
    print(f"| {t} | {g(k,'devices')} | {g(k,'connect_per_sec')} | {g(k,'connect_failures')} | "
          f"{mib(k,'server_rss_before')} | {mib(k,'server_rss_after')} | {g(k,'server_rss_bytes_per_device')} | {g(k,'loadavg_start','{:.1f}')} |")
for name, title in (("tp-rate", "Throughput at a fixed rate"), ("tp-max", "Throughput as fast as accepted")):
    print(f"\n{title}\n")
    print("| target | devices | accepted/s | delivered/s | p50 us | p99 us | p99.9 us | max us | server CPU % | harness CPU % | lost | dup | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in T:
        k = f"{name}-{t}"
        print(f"| {t} | {g(k,'devices')} | {g(k,'accepted_per_sec')} | {g(k,'delivered_per_sec')} | {g(k,'p50_us')} | {g(k,'p99_us')} | "
              f"{g(k,'p999_us')} | {g(k,'max_us')} | {g(k,'server_cpu_pct')} | {g(k,'harness_cpu_pct')} | {g(k,'lost')} | {g(k,'duplicated')} | {g(k,'loadavg_start','{:.1f}')} |")
print("\nStorm: every device drops and reconnects at once\n")
print("| target | devices | recovery ms | connect failures | timeouts | load avg |")
print("|---|---|---|---|---|---|")
for t in T:
    k = f"storm-{t}"
    print(f"| {t} | {g(k,'devices')} | {g(k,'storm_recovery_ms')} | {g(k,'connect_failures')} | {g(k,'handshake_timeouts')} | {g(k,'loadavg_start','{:.1f}')} |")
print("\npushgate only\n")
print("| run | devices | connect/s | accepted | accepted/s | delivered | delivered/s | drain/s | p50 us | p99 us | lost | dup | redelivered | RSS/device B |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for k in ("offline", "accept", "durable", "storm-push", "churn", "multi-idle", "multi-tp", "multi4-tp", "multi8-tp"):
    k2 = f"{k}-pushgate"
    print(f"| {k} | {g(k2,'devices')} | {g(k2,'connect_per_sec')} | {g(k2,'accepted')} | {g(k2,'accepted_per_sec')} | {g(k2,'delivered')} | {g(k2,'delivered_per_sec')} | {g(k2,'drain_per_sec')} | "
          f"{g(k2,'p50_us')} | {g(k2,'p99_us')} | {g(k2,'lost')} | {g(k2,'duplicated')} | {g(k2,'redelivered')} | {g(k2,'server_rss_bytes_per_device')} |")
PY
