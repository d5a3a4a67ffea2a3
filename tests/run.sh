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
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --features fault-injection --lib --bins --tests -- "$@" 2>&1 | tee "$log" || status=$?
echo "tests ran in $((SECONDS - t))s; total $((SECONDS - start))s" >&2
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, g }' "$log"
exit "$status"
