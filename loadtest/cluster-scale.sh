#!/usr/bin/env bash
# Cluster mode at scale: a 3-server NATS JetStream cluster (deploy/nats) and
# K gateway processes in cluster mode (generated from loadtest/cluster/g1.toml:
# user defaults, one shard each so K processes fit 2 cores), holding D devices
# spread over them, while providers push through the NEXT gateway in the list
# (so every push is forwarded between nodes) at a modest rate.
# Each process here may hold at most 20,000 open files: keep D/K under ~15,000.
# Prints the load test's report (connect, RSS per device, push latency) and
# the kernel's unreclaimable slab growth per socket.
#   loadtest/cluster-scale.sh [gateways] [devices] [push rate] [seconds]
set -u
cd "$(dirname "$0")/.."
K=${1:-8}
D=${2:-100000}
rate=${3:-2000}
secs=${4:-20}
. loadtest/cluster/common.sh
addrs=()
paddrs=()
gpids=()
for g in $(seq "$K"); do
    port=$((20000 + g * 10))
    sed -e "s|127.0.0.1:17810|127.0.0.1:$port|; s|127.0.0.1:17811|127.0.0.1:$((port + 1))|" \
        -e "s|127.0.0.1:17812|127.0.0.1:$((port + 2))|; s|127.0.0.1:17813|127.0.0.1:$((port + 3))|" \
        -e "s|/g1\"|/g$g\"|; s|node_id = \"lt-g1\"|node_id = \"scale-g$g\"|" \
        loadtest/cluster/g1.toml >"$base/g$g.toml"
    $BIN serve --config "$base/g$g.toml" --shards 1 >"$base/g$g.log" 2>&1 &
    gpids+=($!)
    pids+=($!)
    addrs+=("127.0.0.1:$port")
    paddrs+=("127.0.0.1:$((port + 1))")
done
for g in $(seq "$K"); do
    for _ in $(seq 150); do
        curl -sf "http://127.0.0.1:$((20000 + g * 10 + 2))/readyz" >/dev/null && break
        sleep 0.2
    done
done
# Providers push through the next gateway: gateway g's devices via g+1's provider port.
rotated=("${paddrs[@]:1}" "${paddrs[0]}")
join() { local IFS=,; echo "$*"; }
slab() { awk '/^SUnreclaim/ {print $2}' /proc/meminfo; }
before=$(slab)
timeout 1800 $LT run --scenario throughput --devices "$D" --providers "$K" --rate "$rate" \
    --duration "$secs" --addr "$(join "${addrs[@]}")" --provider-addr "$(join "${rotated[@]}")" \
    --server-pid "$(join "${gpids[@]}")" --app load --secret loadtest-secret-0123456789 \
    --keepalive 300 2>&1 | grep -vE "^\[ +[0-9.]+s"
after=$(slab)
echo "kernel SUnreclaim: +$(( (after - before) / 1024 )) MiB, $(( (after - before) * 1024 / (2 * D) )) B per socket (both ends on this box)"
for g in 1 "$K"; do
    echo "== gateway $g engine"
    curl -s "http://127.0.0.1:$((20000 + g * 10 + 2))/metrics" | grep -E "^pushgate_engine_(pushes|failovers)|^pushgate_devices_connected" | head
done
curl -s http://127.0.0.1:8222/jsz | grep -E '"(streams|consumers|messages|bytes)"' | head
