#!/usr/bin/env bash
# The project's test command (`make test`): builds what is missing (the local Kubernetes
# control plane, cached outside the repository; the Rust crate) and runs every test, unit and
# integration. Integration tests start their own local clusters and fail loudly if a cluster
# cannot start; nothing is skipped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { echo "==> $*" >&2; }
need() {
  command -v "$1" >/dev/null || { echo "error: '$1' is required: $2" >&2; exit 1; }
}
need cargo "install Rust (https://rustup.rs)"
need go "install Go 1.26 or newer; it builds the local control plane from Go modules"
for tool in openssl curl setsid ss timeout python3; do
  need "$tool" "install it from your distribution's packages"
done

start=$SECONDS
step "packages of the real node (containerd, runc, CNI plugins, podman; Debian, installed once)"
tests/cluster/node-deps.sh

# The Go builds are CPU-bound, the image builds mostly downloads: run them side by side.
step "local cluster components (built once, cached under \${XDG_CACHE_HOME:-~/.cache}/mlmodel-operator), and beside them"
step "images of the real node: the operator's from its Dockerfile, MLServer, pause, busybox (cached in podman's store)"
t=$SECONDS
tests/cluster/build.sh >/dev/null &
components_pid=$!
tests/cluster/images.sh build
echo "images ready in $((SECONDS - t))s" >&2
wait "$components_pid" || { echo "error: building the local cluster's components failed" >&2; exit 1; }
echo "cluster components ready in $((SECONDS - t))s" >&2

step "building the operator and its tests"
t=$SECONDS
cargo build --locked --all-targets --features fault-injection
echo "built in $((SECONDS - t))s" >&2

# One cluster with the real node for every test binary that needs it (one real node per
# machine); the others start their own kwok-only clusters.
step "starting the shared cluster with a real node"
node_cluster="$root/target/node-cluster"
tests/cluster/cluster.sh down "$node_cluster" >/dev/null 2>&1 || true
tests/cluster/cluster.sh up "$node_cluster" --real-node --watch-pid $$ >/dev/null
export MLMODEL_TEST_NODE_CLUSTER="$node_cluster"
step "running unit and integration tests"
t=$SECONDS
log="$(mktemp)"
trap 'rm -f "$log"; tests/cluster/cluster.sh down "$node_cluster" >/dev/null 2>&1 || true' EXIT
status=0
cargo test --locked --no-fail-fast --features fault-injection --lib --bins --tests -- "$@" 2>&1 | tee "$log" || status=$?
echo "tests ran in $((SECONDS - t))s; total $((SECONDS - start))s" >&2
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, g }' "$log"
exit "$status"
