#!/usr/bin/env bash
# Load-tests POST /v1/push (the HTTP/2 JSON API) of a running gateway with h2load (Debian
# `nghttp2-client`) and prints pushes/s and latency percentiles.
#
#   loadtest/h2load.sh (--token HEX | --tokens-file FILE) [--url URL] [--app ID] [-n N] [-c C] [-m M]
#                      [--h1] [--payload TEXT]
#
# A device must hold TOKEN (e.g. `pushgate device` in another terminal), so the pushes are
# `delivered`. With --tokens-file (one token per line, up to 1000) every request is a multi push
# to all of them, and pushes/s counts tokens. The app secret comes from $PUSHGATE_APP_SECRET or --secret-file (as `pushgate token`).
# Defaults: --url http://127.0.0.1:7703/v1/push, --app demo, -n 100000 requests, -c 8 connections,
# -m 32 concurrent streams per connection. --h1 runs HTTP/1.1 keep-alive instead (one request at a
# time per connection). Environment: GW_BIN (default target/release/pushgate, built if missing).
# With the load-test gateway (its HTTP API on 127.0.0.1:17703, app `load`):
#   target/release/pushgate serve --config loadtest/gateway.toml &
#   target/release/pushgate device --addr 127.0.0.1:17700 --app load --json >/tmp/dev.jsonl &   # token: first line
#   PUSHGATE_APP_SECRET=loadtest-secret-0123456789 loadtest/h2load.sh --url http://127.0.0.1:17703/v1/push \
#       --app load --token <token>
set -euo pipefail
cd "$(dirname "$0")/.."
URL=http://127.0.0.1:7703/v1/push
APP=demo
N=100000
C=8
M=32
TOKEN=
TOKENS_FILE=
PAYLOAD=hello
SECRET_FILE=()
H1=()
while [ $# -gt 0 ]; do
    case $1 in
        --url) URL=$2; shift 2 ;;
        --app) APP=$2; shift 2 ;;
        --token) TOKEN=$2; shift 2 ;;
        --tokens-file) TOKENS_FILE=$2; shift 2 ;;
        --payload) PAYLOAD=$2; shift 2 ;;
        --secret-file) SECRET_FILE=(--secret-file "$2"); shift 2 ;;
        -n) N=$2; shift 2 ;;
        -c) C=$2; shift 2 ;;
        -m) M=$2; shift 2 ;;
        --h1) H1=(--h1); M=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "h2load.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$TOKEN" ] || [ -n "$TOKENS_FILE" ] || {
    echo "h2load.sh: give --token HEX (a connected device's token) or --tokens-file FILE" >&2
    exit 2
}
command -v h2load >/dev/null || { echo "h2load.sh: needs h2load (apt-get install nghttp2-client)" >&2; exit 2; }
GW_BIN=${GW_BIN:-target/release/pushgate}
[ -x "$GW_BIN" ] || cargo build --release -p pushgate
JWT=$("$GW_BIN" token --app "$APP" "${SECRET_FILE[@]}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PER=1
if [ -n "$TOKENS_FILE" ]; then
    LIST=$(grep -E '^[0-9a-fA-F]{48}$' "$TOKENS_FILE" | head -1000 | sed 's/.*/"&"/' | paste -sd, -)
    PER=$(echo "$LIST" | tr ',' '\n' | grep -c .)
    [ "$PER" -gt 0 ] || { echo "h2load.sh: no 48-hex-digit tokens in $TOKENS_FILE" >&2; exit 2; }
    printf '{"tokens":[%s],"payload":"%s"}' "$LIST" "$PAYLOAD" >"$WORK/body.json"
else
    printf '{"token":"%s","payload":"%s"}' "$TOKEN" "$PAYLOAD" >"$WORK/body.json"
fi
echo "h2load: $N requests ($PER token(s) each) to $URL, $C connections x $M streams${H1:+ (HTTP/1.1)}" >&2
h2load "${H1[@]}" -n "$N" -c "$C" -m "$M" \
    -H "authorization: Bearer $JWT" -H "content-type: application/json" \
    -d "$WORK/body.json" --log-file "$WORK/log.tsv" "$URL" >"$WORK/out.txt" 2>&1 || {
    cat "$WORK/out.txt" >&2
    exit 1
}
grep -E "^(finished in|requests:|status codes:)" "$WORK/out.txt"
# log.tsv: start µs, HTTP status, µs until the end of the response.
ok=$(awk -F'\t' '$2 == 200' "$WORK/log.tsv" | wc -l)
cut -f3 "$WORK/log.tsv" | sort -n >"$WORK/lat.txt"
awk -v ok="$ok" '
    { lat[++n] = $1 }
    END {
        if (n == 0) { print "no requests logged"; exit 1 }
        split("50 90 99 99.9", ps, " ")
        line = "latency (ms):"
        for (i = 1; i <= 4; i++) {
            k = int(n * ps[i] / 100); if (k < 1) k = 1; if (k > n) k = n
            line = line sprintf("  p%s %.3f", ps[i], lat[k] / 1000)
        }
        printf "%s  max %.3f\n", line, lat[n] / 1000
        printf "answered 200: %d of %d\n", ok, n
    }' "$WORK/lat.txt"
awk -v per="$PER" '/^finished in/ {
    for (i = 1; i <= NF; i++) if ($(i) == "req/s,") printf "requests/s: %s  pushes/s: %.0f\n", $(i-1), $(i-1) * per
}' "$WORK/out.txt"
