#!/usr/bin/env bash
# The broadcast scenario on pushgate and on Mosquitto, same harness, same
# devices: N device connections in one topic (pushgate: SUBSCRIBE to a topic,
# or ~all; Mosquitto: a QoS 1 subscription in a persistent session, no
# retain), M topic pushes one at a time (pushgate PUSH_TOPIC expiry 3600;
# MQTT PUBLISH QoS 1), then every device offline, K pushes, all reconnect at
# once. Each server is started fresh for every run; prints the median of RUNS.
#   loadtest/broadcast-vs-mosquitto.sh [OUT_DIR]      (default /tmp/pushgate-broadcast)
# Environment: GW_BIN, LT_BIN (default: build target/release), N (10000),
# M (50), K (50), RUNS (3), TOPIC (bcast), GW_CONFIG (loadtest/gateway-defaults.toml),
# GW_ADDR (its device port, 127.0.0.1:17700; the provider port is the next one),
# DATA (its data_dir, /tmp/pushgate-loadtest-data: removed before every run).
# Needs mosquitto on PATH (Debian: apt-get install -y mosquitto).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/pushgate-broadcast}
mkdir -p "$OUT"
if [ -z "${GW_BIN:-}" ] || [ -z "${LT_BIN:-}" ]; then
    cargo build --release -p pushgate -p pushgate-loadtest
fi
GW_BIN=${GW_BIN:-target/release/pushgate}
LT_BIN=${LT_BIN:-target/release/pushgate-loadtest}
N=${N:-10000}
M=${M:-50}
K=${K:-50}
RUNS=${RUNS:-3}
TOPIC=${TOPIC:-bcast}
GW_CONFIG=${GW_CONFIG:-loadtest/gateway-defaults.toml}
GW_ADDR=${GW_ADDR:-127.0.0.1:17700}
DATA=${DATA:-/tmp/pushgate-loadtest-data} # data_dir of both loadtest gateway configs
command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 2; }

common=(--scenario broadcast --devices "$N" --messages "$M" --catchup "$K" --topic "$TOPIC" --json)

for r in $(seq 1 "$RUNS"); do
    echo "== pushgate run $r: $N devices, $M pushes, $K offline" >&2
    rm -rf "$DATA"
    "$LT_BIN" run --target pushgate "${common[@]}" \
        --spawn "$GW_BIN serve --config $GW_CONFIG" --addr "$GW_ADDR" \
        --app load --secret loadtest-secret-0123456789 --data-dir "$DATA" \
        >"$OUT/pushgate-$r.json" 2>"$OUT/pushgate-$r.log" || echo "pushgate run $r: exit $?" >&2

    echo "== mosquitto run $r" >&2
    loadtest/peers.sh start mosquitto
    "$LT_BIN" run --target mosquitto "${common[@]}" --server-pid "$(loadtest/peers.sh pid mosquitto)" \
        >"$OUT/mosquitto-$r.json" 2>"$OUT/mosquitto-$r.log" || echo "mosquitto run $r: exit $?" >&2
    loadtest/peers.sh stop mosquitto
done

# Medians over the runs, one line per field and target.
python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
fields = [
    ("subscribe_secs", "subscribe all (s)"),
    ("server_rss_bytes_per_subscription", "RSS per subscription (B)"),
    ("bcast_to_last_p50_ms", "push to last device p50 (ms)"),
    ("bcast_to_last_p99_ms", "push to last device p99 (ms)"),
    ("bcast_to_last_max_ms", "push to last device max (ms)"),
    ("bcast_fanout_per_sec", "fan-out (devices/s)"),
    ("stored_bytes_per_message", "data dir growth per push, connected (B)"),
    ("stored_offline_bytes_per_message", "data dir growth per push, offline (B)"),
    ("catchup_secs", "catch-up all (s)"),
    ("catchup_per_sec", "catch-up rate (msgs/s)"),
    ("catchup_registered_secs", "all re-registered (s)"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("bcast_incomplete", "incomplete pushes"),
]
rows = {}
for target in ("pushgate", "mosquitto"):
    docs = []
    for r in range(1, runs + 1):
        try:
            docs.append(json.load(open(f"{out}/{target}-{r}.json")))
        except (OSError, ValueError):
            pass
    rows[target] = docs
print(f"{'':38} {'pushgate':>14} {'mosquitto':>14}   (median of {runs} runs)")
for key, label in fields:
    cells = []
    for target in ("pushgate", "mosquitto"):
        vals = [d[key] for d in rows[target] if d.get(key) is not None]
        cells.append(f"{statistics.median(vals):14.1f}" if vals else f"{'-':>14}")
    print(f"{label:38} {cells[0]} {cells[1]}")
PY
