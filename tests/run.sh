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
# Incremental compilation state is several GiB and buys nothing in a run that builds once.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A cold run writes about 15 GiB (Go and cargo builds, the images); a warm one a few.
free_gib="$(df --output=avail -BG "$root" | tail -n 1 | tr -dc 0-9)"
echo "free disk space: ${free_gib} GiB" >&2
((free_gib >= 10)) || echo "warning: less than 10 GiB free; builds and the real node may run out of space" >&2
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
if [[ "$status" != 0 ]]; then
  # What a failure on the shared node needs first: is the node (and each of its processes)
  # still up, under pressure, tainted, short of disk or memory.
  step "the shared cluster after the failure (its logs: $node_cluster/logs)"
  kubectl=("$(sed -n 's/^BIN_DIR=//p' "$node_cluster/cluster.env" 2>/dev/null)/kubectl" --kubeconfig "$node_cluster/kubeconfig")
  {
    df -h / "$node_cluster" 2>/dev/null | uniq
    free -m | head -n 2
    "${kubectl[@]}" get nodes -l type=real -o \
      'custom-columns=NODE:.metadata.name,CONDITIONS:.status.conditions[*].type,STATUS:.status.conditions[*].status,TAINTS:.spec.taints[*].key' 2>&1
    "${kubectl[@]}" get pods -A --field-selector spec.nodeName=real-node --no-headers 2>/dev/null |
      awk '{ n[$4]++ } END { for (s in n) printf "pods on the real node: %d %s\n", n[s], s }'
    for name in containerd kubelet kube-proxy kube-apiserver; do
      pid="$(cat "$node_cluster/pids/$name.pid" 2>/dev/null)" || continue
      kill -0 "$pid" 2>/dev/null || {
        echo "$name (pid $pid) is not running; the end of its log:"
        tail -n 8 "$node_cluster/logs/$name.log" | cut -c1-400
      }
    done
    # The kubelet's errors, less the ones every run has (a container already gone, a pod's
    # cgroup already removed, a finished helper pod of the volume provisioner).
    grep -E '^E[0-9]{4} ' "$node_cluster/logs/kubelet.log" 2>/dev/null |
      grep -vE 'code = NotFound|cgroup|no relationship found' | tail -n 12 | cut -c1-400
    grep -E '^E[0-9]{4} ' "$node_cluster/logs/kube-proxy.log" 2>/dev/null | tail -n 5 | cut -c1-400
  } >&2 || true
fi
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, g }' "$log"
exit "$status"
