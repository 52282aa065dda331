#!/usr/bin/env bash
# Starts or stops Mosquitto and nats-server on loopback, sized for the load test.
#   loadtest/peers.sh start [mosquitto|nats|all]   (default all)
#   loadtest/peers.sh stop  [mosquitto|nats|all]
#   loadtest/peers.sh pid   mosquitto|nats         prints the server's pid
# Install them first: apt-get install -y mosquitto nats-server
# Ports: Mosquitto 127.0.0.1:1883, NATS 127.0.0.1:4222. State lives in $PEERS_DIR (default /tmp/pushgate-peers).
set -eu
DIR=${PEERS_DIR:-/tmp/pushgate-peers}
mkdir -p "$DIR"
what=${2:-all}

start_mosquitto() {
    cat >"$DIR/mosquitto.conf" <<CONF
listener 1883 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
max_inflight_messages 1000
max_queued_messages 100000
max_keepalive 65535
log_dest file $DIR/mosquitto.log
log_type error
log_type warning
log_type notice
CONF
    # Run as the invoking user so the open-files limit below applies.
    if [ "$(id -u)" = 0 ]; then echo "user root" >>"$DIR/mosquitto.conf"; fi
    (ulimit -n "$(ulimit -Hn)"; exec mosquitto -c "$DIR/mosquitto.conf") >/dev/null 2>&1 &
    echo $! >"$DIR/mosquitto.pid"
}

start_nats() {
    cat >"$DIR/nats.conf" <<CONF
listen: 127.0.0.1:4222
max_connections: 1000000
max_payload: 65536
max_pending: 67108864
write_deadline: "10s"
ping_interval: "2m"
CONF
    (ulimit -n "$(ulimit -Hn)"; exec nats-server -c "$DIR/nats.conf" -l "$DIR/nats.log") >/dev/null 2>&1 &
    echo $! >"$DIR/nats.pid"
}

wait_port() {
    i=0
    while [ $i -lt 100 ]; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1; i=$((i + 1))
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

stop_one() {
    if [ -f "$DIR/$1.pid" ]; then
        pid=$(cat "$DIR/$1.pid")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        rm -f "$DIR/$1.pid"
    fi
}

case "${1:-}" in
start)
    case $what in
    mosquitto) start_mosquitto ;;
    nats) start_nats ;;
    all) start_mosquitto; start_nats ;;
    *) echo "unknown server $what" >&2; exit 2 ;;
    esac
    sleep 0.5
    case $what in mosquitto | all) wait_port 1883 ;; esac
    case $what in nats | all) wait_port 4222 ;; esac
    ;;
stop)
    case $what in
    mosquitto | nats) stop_one "$what" ;;
    all) stop_one mosquitto; stop_one nats ;;
    esac
    ;;
pid) cat "$DIR/$what.pid" ;;
*) sed -n '2,7p' "$0"; exit 2 ;;
esac
