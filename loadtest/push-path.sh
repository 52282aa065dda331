#!/usr/bin/env bash
# The push path with the defaults a user gets, next to Mosquitto on the same
# harness: 10,000 devices that ACK every NOTIFY, one provider connection,
# 64-byte payloads, a window of 1,000 pushes, latency counted until the device
# has the NOTIFY, a fresh server per run.
#   loadtest/push-path.sh [runs]        (needs mosquitto: apt-get install -y mosquitto)
# Rows: idle memory (15,000 devices), peak delivered/s, p99 paced at 30k/s and 10k/s,
# for the durable default (stored pushes, expiry 60 s), the memory store (expiry 0)
# and Mosquitto (QoS 1 both ways).
set -u
cd "$(dirname "$0")/.."
runs=${1:-2}
LT=target/release/pushgate-loadtest
cargo build --release -q -p pushgate -p pushgate-loadtest
common="--devices 10000 --providers 1 --window 1000 --payload 64 --duration 15"
gw() { echo "--spawn 'target/release/pushgate serve --config loadtest/gateway-defaults.toml $1' --addr 127.0.0.1:17700 --app load --secret loadtest-secret-0123456789"; }
show() { grep -E "RSS per device|delivered rate|latency p50|lost /|CPU while|load average"; }
run() {
    local name=$1; shift
    rm -rf /tmp/pushgate-loadtest-data
    echo "== $name"
    eval timeout 180 "$LT" run "$@" 2>&1 | show
}
for r in $(seq "$runs"); do
    run "idle, durable (default) r$r" --scenario idle --devices 15000 --hold 3 $(gw "")
    run "idle, memory r$r" --scenario idle --devices 15000 --hold 3 $(gw "--store memory")
    run "durable, expiry 60, peak r$r" --scenario throughput $common --rate 0 --expiry 60 $(gw "")
    run "durable, expiry 60, 30k/s r$r" --scenario throughput $common --rate 30000 --expiry 60 $(gw "")
    run "durable, expiry 60, 10k/s r$r" --scenario throughput $common --rate 10000 --expiry 60 $(gw "")
    run "memory, expiry 0, peak r$r" --scenario throughput $common --rate 0 $(gw "--store memory")
    run "memory, expiry 0, 30k/s r$r" --scenario throughput $common --rate 30000 $(gw "--store memory")
    loadtest/peers.sh start mosquitto >/dev/null 2>&1
    sleep 1
    run "mosquitto idle r$r" --target mosquitto --scenario idle --devices 15000 --hold 3 --server-pid "$(loadtest/peers.sh pid mosquitto)"
    run "mosquitto peak r$r" --target mosquitto --scenario throughput $common --rate 0
    run "mosquitto 30k/s r$r" --target mosquitto --scenario throughput $common --rate 30000
    run "mosquitto 10k/s r$r" --target mosquitto --scenario throughput $common --rate 10000
    loadtest/peers.sh stop mosquitto >/dev/null 2>&1
done
