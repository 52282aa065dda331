# Shared by loadtest/cluster.sh and loadtest/cluster-scale.sh (sourced from
# the repository root): builds the release binaries, makes a fresh $base with
# a shared token key, starts the 3 NATS servers of deploy/nats (store dirs
# moved under $base), and kills everything in $pids on exit; start_two_gateways
# starts loadtest/cluster/g1.toml and g2.toml and waits until both are ready.
BIN=target/release/pushgate
LT=target/release/pushgate-loadtest
cargo build --release -q -p pushgate -p pushgate-loadtest
base=/tmp/pushgate-loadtest-cluster
rm -rf "$base" && mkdir -p "$base"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$base/token.key"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT
for n in 1 2 3; do
    sed "s|/tmp/pushgate-nats/n$n|$base/nats-n$n|" deploy/nats/n$n.conf >"$base/n$n.conf"
    nats-server -c "$base/n$n.conf" >"$base/nats-n$n.log" 2>&1 &
    pids+=($!)
done
sleep 2

start_two_gateways() {
    for g in 1 2; do
        $BIN serve --config loadtest/cluster/g$g.toml >"$base/g$g.log" 2>&1 &
        pids+=($!)
    done
    for g in 1 2; do
        for _ in $(seq 100); do
            curl -sf "http://127.0.0.1:178${g}2/readyz" >/dev/null && break
            sleep 0.2
        done
    done
}
