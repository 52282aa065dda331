#!/usr/bin/env bash
# Runs the side-by-side matrix behind BENCHMARKS.md: pushgate, Mosquitto and
# NATS, each started fresh for every scenario, all on loopback.
#   loadtest/bench.sh [OUT_DIR]        (default /tmp/pushgate-bench)
# Environment: GW_BIN, LT_BIN (binaries; default: build target/release),
# IDLE_N (15000), TP_N (10000), TP_RATE (10000), STORM_N (15000), SECS (20).
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
        server=(--spawn "$GW_BIN serve --config loadtest/gateway.toml" "${AUTH[@]}")
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

for t in pushgate mosquitto nats; do
    run idle "$t" --scenario idle --devices "$IDLE_N" --hold 5
    run tp-rate "$t" --scenario throughput --devices "$TP_N" --rate "$TP_RATE" --duration "$SECS"
    run tp-max "$t" --scenario throughput --devices "$TP_N" --rate 0 --duration "$SECS"
    run storm "$t" --scenario storm --devices "$STORM_N" --hold 3
done
run offline pushgate --scenario offline --devices "$TP_N" --per-device 5
run durable pushgate --scenario durable --devices "$TP_N" --rate "$TP_RATE" --duration "$SECS"
# Correctness while connections break: stored pushes (expiry > 0) must all arrive.
run storm-push pushgate --scenario storm --devices 5000 --hold 3 --providers 2 --rate 5000 --expiry 3600
run churn pushgate --scenario throughput --devices "$TP_N" --rate "$TP_RATE" --duration "$SECS" --churn 0.02 --expiry 3600

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
print("| target | idle: devices | connect/s | RSS/device (B) | fixed rate: delivered/s | p50 us | p99 us | p99.9 us | max: delivered/s | p50 us | p99 us | storm: recovery ms | lost | dup |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for t in ["pushgate", "mosquitto", "nats"]:
    i, r, m, s = (f"idle-{t}", f"tp-rate-{t}", f"tp-max-{t}", f"storm-{t}")
    lost = sum(rows.get(k, {}).get("lost", 0) for k in (i, r, m, s))
    dup = sum(rows.get(k, {}).get("duplicated", 0) for k in (i, r, m, s))
    print(f"| {t} | {g(i,'devices')} | {g(i,'connect_per_sec')} | {g(i,'server_rss_bytes_per_device')} | "
          f"{g(r,'delivered_per_sec')} | {g(r,'p50_us')} | {g(r,'p99_us')} | {g(r,'p999_us')} | "
          f"{g(m,'delivered_per_sec')} | {g(m,'p50_us')} | {g(m,'p99_us')} | {g(s,'storm_recovery_ms')} | {lost} | {dup} |")
PY
