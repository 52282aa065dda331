#!/usr/bin/env bash
# Broadcast across cluster nodes: two `pushgate serve` nodes (loadtest/cluster/g1.toml,
# g2.toml) on the 3 NATS servers of deploy/nats, the `broadcast` scenario with the
# devices on one node and the publisher on the same node or the other one; every
# topic message goes through the JetStream topic stream and each node's feed.
#   loadtest/cluster-broadcast.sh [devices] [messages] [offline messages]
set -u
cd "$(dirname "$0")/.."
devices=${1:-5000}
messages=${2:-30}
offline=${3:-30}
. loadtest/cluster/common.sh
start_two_gateways
run() {
    echo "== $1"
    timeout 300 $LT run --scenario broadcast --devices "$devices" --messages "$messages" --catchup "$offline" \
        --topic "bcast-$2" --addr "$3" --provider-addr "$4" \
        --app load --secret loadtest-secret-0123456789 2>&1 | tee "$base/run-$2.out" |
        grep -Ei "push to last|fan-out|catch-up|lost|duplicat|subscri"
}
run "devices and publisher on g1" same 127.0.0.1:17810 127.0.0.1:17811
run "devices on g2, publisher on g1" cross 127.0.0.1:17820 127.0.0.1:17811
