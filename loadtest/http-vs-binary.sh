#!/usr/bin/env bash
# The HTTP/2 JSON API next to the binary protocol, on one gateway with the
# defaults a user gets (durable store), both pushing stored notifications
# (expiry one hour / one day) to one connected device that ACKs:
#   binary: pushgate-loadtest, 1 provider connection, a window of 1000;
#   HTTP/2: h2load, 8 connections x 125 streams (1000 in flight), one token per request;
#   the device is the harness's in both (pushgate-loadtest; for HTTP its idle scenario holding it);
#   also (a separate line, not the comparison) multi pushes of 100 tokens, 8 connections x 2 streams.
#   then the ceiling for the same h2load load: `pushgate-loadtest h2-floor`, an HTTP/2 server on h2
#   (the gateway's HTTP/2 layer, its settings) answering at once with a fixed body, and nghttpd
#   (nghttp2's C server, a fixed file) if installed (apt-get install -y nghttp2-server).
# Prints accepted pushes/s and latency for each, and a summary line per run.
#   loadtest/http-vs-binary.sh [runs]
# Needs h2load (apt-get install -y nghttp2-client).
set -u
cd "$(dirname "$0")/.."
runs=${1:-2}
BIN=target/release/pushgate
LT=target/release/pushgate-loadtest
cargo build --release -q -p pushgate -p pushgate-loadtest
# h2rate PORT: the single-token h2load load on 127.0.0.1:PORT/v1/push; prints h2load.sh's lines and
# leaves the pushes/s in $rate.
h2rate() {
    local out
    out=$(loadtest/h2load.sh --url "http://127.0.0.1:$1/v1/push" --app load --token "$token" -n 300000 -c 8 -m 125)
    echo "$out"
    rate=$(echo "$out" | awk '/^requests\/s:/ { print $4 }')
}
# share A B: A as a percentage of B.
share() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f %%", 100 * a / b }'; }
export PUSHGATE_APP_SECRET=loadtest-secret-0123456789
summary=()
for r in $(seq "$runs"); do
    rm -rf /tmp/pushgate-loadtest-data
    $BIN serve --config loadtest/gateway-defaults.toml >/tmp/http-vs-binary.gw.log 2>&1 &
    gw=$!
    sleep 1
    echo "== run $r: binary protocol (pushgate-loadtest, 1 device, window 1000)"
    out=$(timeout 60 $LT run --scenario throughput --devices 1 --providers 1 --window 1000 --payload 64 \
        --duration 10 --rate 0 --expiry 3600 --addr 127.0.0.1:17700 --provider-addr 127.0.0.1:17701 \
        --app load --secret "$PUSHGATE_APP_SECRET" 2>&1 | grep -E "accepted rate|CPU while|results")
    echo "$out"
    binary=$(echo "$out" | awk '/accepted rate/ { print $3 }')
    # The same device engine as the binary run (the harness's, ACKing every notification), held
    # while h2load pushes to its token.
    rm -f /tmp/http-vs-binary.tokens-out
    $LT run --scenario idle --devices 1 --hold 300 --addr 127.0.0.1:17700 --provider-addr 127.0.0.1:17701 \
        --app load --secret "$PUSHGATE_APP_SECRET" --tokens-out /tmp/http-vs-binary.tokens-out \
        >/tmp/http-vs-binary.dev.log 2>&1 &
    dev=$!
    for _ in $(seq 100); do [ -s /tmp/http-vs-binary.tokens-out ] && break; sleep 0.1; done
    token=$(head -1 /tmp/http-vs-binary.tokens-out)
    echo "== run $r: HTTP/2 (h2load, 8 connections x 125 streams: 1000 in flight, as the binary window)"
    h2rate 17703
    http2=$rate
    echo "== run $r: HTTP/2 multi push (h2load, 8 connections x 2 streams, 100 tokens per request)"
    for _ in $(seq 100); do echo "$token"; done >/tmp/http-vs-binary.tokens
    loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push --app load --tokens-file /tmp/http-vs-binary.tokens \
        -n 20000 -c 8 -m 2
    echo "== run $r: HTTP/1.1 (h2load --h1, 8 connections)"
    loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push --app load --token "$token" -n 50000 -c 8 --h1
    kill $dev $gw 2>/dev/null
    wait $dev $gw 2>/dev/null
    # The ceiling: the same h2load load on two servers that do no work: h2-floor (the gateway's
    # HTTP/2 layer and settings, a fixed answer) and nghttpd (C, nghttp2) when it is installed.
    echo "== run $r: h2 floor (pushgate-loadtest h2-floor: h2, the gateway's settings, one thread, a fixed answer, no work)"
    # One thread: its best here (two threads served 106-110k/s against 118-129k/s for one).
    $LT h2-floor --threads 1 --listen 127.0.0.1:17799 2>/dev/null &
    floor_pid=$!
    sleep 0.5
    h2rate 17799
    kill $floor_pid 2>/dev/null
    wait $floor_pid 2>/dev/null
    line="run $r: binary $binary/s, HTTP/2 $http2/s ($(share "$http2" "$binary"))"
    line="$line, h2 floor $rate/s ($(share "$rate" "$binary"))"
    if command -v nghttpd >/dev/null; then
        echo "== run $r: nghttpd (C, nghttp2: the same request, a fixed file)"
        docroot=$(mktemp -d)
        mkdir -p "$docroot/v1"
        printf '{"token":"%s","status":"queued","msg_id":12345}\n' "$token" >"$docroot/v1/push"
        nghttpd --no-tls -d "$docroot" 17798 >/dev/null 2>&1 &
        ng=$!
        sleep 0.5
        h2rate 17798
        kill $ng 2>/dev/null
        wait $ng 2>/dev/null
        rm -rf "$docroot"
        line="$line, nghttpd $rate/s ($(share "$rate" "$binary"))"
    fi
    summary+=("$line")
done
echo "== summary (HTTP/2, the h2 floor and nghttpd as a share of the binary rate in the same run)"
printf '%s\n' "${summary[@]}"
