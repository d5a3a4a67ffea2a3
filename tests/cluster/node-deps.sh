#!/usr/bin/env bash
# Installs, from Debian's packages, what the real node and the local image builds need:
# containerd + runc (the container runtime), the CNI plugins (pod networking), iptables and
# conntrack (kube-proxy), podman/buildah (image builds without a registry), debootstrap
# (base images), busybox-static (the volume provisioner's helper image). A no-op when
# everything is present; needs root otherwise.
#
#   tests/cluster/node-deps.sh
set -euo pipefail

log() { echo "[node-deps] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# command-or-path -> package
declare -A wanted=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables
  [conntrack]=conntrack
  [podman]=podman
  [buildah]=buildah
  [debootstrap]=debootstrap
  [/bin/busybox]=busybox-static
  [nft]=nftables
  [socat]=socat
  [ip]=iproute2
)

have() {
  if [[ "$1" == /* ]]; then [[ -x "$1" ]]; else command -v "$1" >/dev/null; fi
}

missing=()
for what in "${!wanted[@]}"; do
  have "$what" || missing+=("${wanted[$what]}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

[[ "$(id -u)" == 0 ]] || die "the real node needs these Debian packages, and installing them needs root: ${missing[*]}"
command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} with your distribution's package manager"

start=$SECONDS
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
logf="$(mktemp)"
trap 'rm -f "$logf"' EXIT
# The lists may be stale or absent on a fresh machine.
apt-get update -qq >"$logf" 2>&1 || die "apt-get update failed: $(tail -n 1 "$logf")"
# Only the packages named: no recommended extras (podman recommends a whole desktop stack of
# fonts and helpers).
apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$logf" 2>&1 ||
  die "apt-get install ${missing[*]} failed: $(grep -E '^E:' "$logf" | tail -n 1)"
# Debian starts containerd as a service when one can be started; the test bed runs its own
# with its own configuration.
if [[ -x /etc/init.d/containerd ]] && pgrep -x containerd >/dev/null; then
  /etc/init.d/containerd stop >/dev/null 2>&1 || true
fi
log "installed in $((SECONDS - start))s"
