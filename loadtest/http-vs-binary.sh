#!/usr/bin/env bash
# The HTTP/2 JSON API next to the binary protocol, on one gateway with the
# defaults a user gets (durable store), both pushing stored notifications
# (expiry one hour / one day) to one connected device that ACKs:
#   binary: pushgate-loadtest, 1 provider connection, a window of 1000;
#   HTTP/2: h2load, 8 connections x 125 streams (1000 in flight), one token per request;
#   also (a separate line, not the comparison) multi pushes of 100 tokens, 8 connections x 2 streams.
# Prints accepted pushes/s and latency for each.  loadtest/http-vs-binary.sh [runs]
# Needs h2load (apt-get install -y nghttp2-client).
set -u
cd "$(dirname "$0")/.."
runs=${1:-2}
BIN=target/release/pushgate
LT=target/release/pushgate-loadtest
cargo build --release -q -p pushgate -p pushgate-loadtest
export PUSHGATE_APP_SECRET=loadtest-secret-0123456789
for r in $(seq "$runs"); do
    rm -rf /tmp/pushgate-loadtest-data
    $BIN serve --config loadtest/gateway-defaults.toml >/tmp/http-vs-binary.gw.log 2>&1 &
    gw=$!
    sleep 1
    echo "== run $r: binary protocol (pushgate-loadtest, 1 device, window 1000)"
    timeout 60 $LT run --scenario throughput --devices 1 --providers 1 --window 1000 --payload 64 \
        --duration 10 --rate 0 --expiry 3600 --addr 127.0.0.1:17700 --provider-addr 127.0.0.1:17701 \
        --app load --secret "$PUSHGATE_APP_SECRET" 2>&1 | grep -E "accepted rate|CPU while|results"
    $BIN device --addr 127.0.0.1:17700 --app load --secret-file /tmp/http-vs-binary.secret --json \
        >/tmp/http-vs-binary.dev.jsonl 2>/dev/null &
    dev=$!
    sleep 1
    token=$(head -1 /tmp/http-vs-binary.dev.jsonl | sed -E 's/.*"token":"([0-9a-f]{48})".*/\1/')
    echo "== run $r: HTTP/2 (h2load, 8 connections x 125 streams: 1000 in flight, as the binary window)"
    loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push --app load --token "$token" -n 300000 -c 8 -m 125
    echo "== run $r: HTTP/2 multi push (h2load, 8 connections x 2 streams, 100 tokens per request)"
    for _ in $(seq 100); do echo "$token"; done >/tmp/http-vs-binary.tokens
    loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push --app load --tokens-file /tmp/http-vs-binary.tokens \
        -n 20000 -c 8 -m 2
    echo "== run $r: HTTP/1.1 (h2load --h1, 8 connections)"
    loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push --app load --token "$token" -n 50000 -c 8 --h1
    kill $dev $gw 2>/dev/null
    wait $gw 2>/dev/null
done
