#!/usr/bin/env bash
# Cluster mode under load: a 3-server NATS JetStream cluster (deploy/nats,
# store dirs moved to /tmp/pushgate-loadtest-cluster) and two gateways
# (loadtest/cluster/g1.toml, g2.toml: user defaults). Runs, same devices and providers:
#   same node: devices and providers on g1 (throughput scenario);
#   forwarded: devices on g2, providers on g1 (every push crosses NATS);
#   offline: pushes through g1 to offline devices, stored in JetStream (R3),
#            then the devices connect to g2 and drain them (offline scenario).
# With expiry > 0 every push is also stored (R3) and deleted on its ACK.
# Prints rates, latency, and NATS messages per push (/varz in+out deltas).
#   loadtest/cluster.sh [devices] [seconds] [expiry]
# Needs nats-server (apt-get install -y nats-server).
set -u
cd "$(dirname "$0")/.."
devices=${1:-1000}
secs=${2:-10}
expiry=${3:-0}
. loadtest/cluster/common.sh
start_two_gateways
msgs() {
    local t=0
    for p in 8222 8223 8224; do
        t=$((t + $(curl -s "http://127.0.0.1:$p/varz" | tr -d ' ,' | awk -F: '/"in_msgs"|"out_msgs"/ {s += $2} END {print s + 0}')))
    done
    echo "$t"
}
run() {
    echo "== $1"
    local before after
    before=$(msgs)
    timeout 300 $LT run --scenario "$2" --devices "$devices" --providers 2 --rate 0 \
        --duration "$secs" --expiry "$expiry" --addr "$3" --provider-addr "$4" \
        --app load --secret loadtest-secret-0123456789 2>&1 | tee "$base/run.out" |
        grep -E "accepted rate|delivered|latency|results|CPU|offline drain|pushes sent"
    after=$(msgs)
    local pushes
    pushes=$(grep -E "pushes sent / accepted" "$base/run.out" | awk '{print $NF}')
    [ -n "$pushes" ] && [ "$pushes" -gt 0 ] && awk -v m=$((after - before)) -v p="$pushes" 'BEGIN {printf "  NATS messages per push                     %.3f\n", m / p}'
}
run "same node (devices and providers on g1)" throughput 127.0.0.1:17810 127.0.0.1:17811
run "forwarded (devices on g2, providers on g1)" throughput 127.0.0.1:17820 127.0.0.1:17811
[ "$expiry" -gt 0 ] && run "offline: stored via g1, drained on g2" offline 127.0.0.1:17820 127.0.0.1:17811
for g in 1 2; do
    echo "== g$g engine metrics"
    curl -s "http://127.0.0.1:178${g}2/metrics" | grep -E "^pushgate_engine_(ops|pushes)" | head -20
done
