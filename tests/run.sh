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
for tool in openssl curl setsid ss timeout; do
  need "$tool" "install it from your distribution's packages"
done

start=$SECONDS
step "local control plane (built once, cached under \${XDG_CACHE_HOME:-~/.cache}/mlmodel-operator)"
t=$SECONDS
tests/cluster/build.sh >/dev/null
echo "control plane ready in $((SECONDS - t))s" >&2

step "building the operator and its tests"
t=$SECONDS
cargo build --locked --all-targets --features fault-injection
echo "built in $((SECONDS - t))s" >&2

step "running unit and integration tests"
t=$SECONDS
cargo test --locked --features fault-injection -- "$@"
echo "tests ran in $((SECONDS - t))s; total $((SECONDS - start))s" >&2
