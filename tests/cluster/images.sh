#!/usr/bin/env bash
# Builds the container images the real node runs, with podman and no registry, and imports
# them into the node's containerd. Images live in podman's store (outside the repository);
# each carries a label with the hash of its recipe, and a build whose recipe is unchanged is
# skipped.
#
#   tests/cluster/images.sh build [IMAGE...]   build what is missing or stale (default: all)
#   tests/cluster/images.sh import [IMAGE...]  copy them into containerd (namespace k8s.io)
#   tests/cluster/images.sh list               image names and references
#
# Images: debian (debootstrap'ed base), rust (builder base from this machine's toolchain),
# distroless-cc (runtime base look-alike), pause, busybox, mlserver, operator (the project's
# own Dockerfile); and, built only when named, curl (the throughput benchmark's reference) and
# jaeger (observability/jaeger.yaml's image, from the binary tests/cluster/build.sh builds).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
export CONTAINERS_CONF="$here/images/containers.conf"
label=io.mlmodel-operator.recipe

log() { echo "[images] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

operator_version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)"
toolchain="$(rustc --version 2>/dev/null | awk '{print $2}')"

# name -> reference the cluster uses (what a pod spec or the Dockerfile names)
declare -A ref=(
  [debian]=docker.io/library/debian:bookworm
  [rust]="docker.io/library/rust:${toolchain%.*}-bookworm"
  [distroless-cc]=gcr.io/distroless/cc-debian12:nonroot
  [pause]="registry.k8s.io/pause:$PAUSE_VERSION"
  [busybox]="docker.io/library/busybox:$BUSYBOX_TAG"
  [mlserver]="docker.io/seldonio/mlserver:$MLSERVER_VERSION"
  [operator]="docker.io/library/mlmodel-operator:$operator_version"
  [curl]=docker.io/library/curl:bookworm
  [jaeger]="docker.io/jaegertracing/jaeger:$JAEGER_IMAGE_TAG"
)
order=(debian rust distroless-cc pause busybox mlserver operator curl jaeger)
# What `build` with no names builds: curl is only for `make bench`, jaeger for the in-cluster
# install's tests.
default_images=(debian rust distroless-cc pause busybox mlserver operator)
# Images a node needs at run time (the others are build bases).
runtime_images=(pause busybox mlserver operator)

recipe_hash() { # name -> hash of everything its build reads
  local name="$1"
  {
    echo "$name ${ref[$name]}"
    declare -f "build_${name//-/_}"
    case "$name" in
      operator) (cd "$repo" && git ls-files -z Dockerfile Cargo.toml Cargo.lock src benches | xargs -0 cat) ;;
      rust) echo "$toolchain" && cat "$here/images/rust/Containerfile" ;;
      busybox) cat "$here/images/busybox/Containerfile" /bin/busybox ;;
      debian) echo bookworm ;;
      jaeger) cat "$here/images/jaeger/Containerfile" && sha256sum <"$(jaeger_binary)" ;;
      *) cat "$here/images/$name/Containerfile" ;;
    esac
    # A rebuilt base makes everything built on it stale.
    case "$name" in
      debian) ;;
      operator) current_hash rust && current_hash distroless-cc ;;
      jaeger) current_hash distroless-cc ;;
      busybox) ;;
      *) current_hash debian ;;
    esac
  } | sha256sum | cut -c1-16
}

current_hash() {
  podman image inspect --format "{{index .Labels \"$label\"}}" "${ref[$1]}" 2>/dev/null || echo none
}

podman_build() { # name context [extra podman build args...]
  local name="$1" context="$2"
  shift 2
  podman build --quiet --network=host --pull=never --label "$label=$(recipe_hash "$name")" \
    -t "${ref[$name]}" "$@" "$context" >/dev/null
}

build_debian() {
  command -v debootstrap >/dev/null || die "debootstrap is missing (tests/cluster/node-deps.sh installs it)"
  local root
  root="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 ||
    die "debootstrap bookworm failed: $(tail -n 1 "$root.log")"
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import --quiet \
    --change "LABEL $label=$(recipe_hash debian)" --change 'CMD ["bash"]' \
    - "${ref[debian]}" >/dev/null
}

build_rust() {
  local dir
  dir="$(rustc --print sysroot)"
  podman_build rust "$here/images/rust" --build-arg "TOOLCHAIN=$toolchain-x86_64-unknown-linux-gnu" \
    -v "$dir:/toolchain:ro"
}

build_distroless_cc() { podman_build distroless-cc "$here/images/distroless-cc"; }

build_pause() {
  local ctx src
  ctx="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  src="$(cd "$here/go/kubernetes" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  [[ -f "$src/build/pause/linux/pause.c" ]] || die "pause.c not found in the k8s.io/kubernetes module ($src)"
  cp "$src/build/pause/linux/pause.c" "$here/images/pause/Containerfile" "$ctx/"
  podman_build pause "$ctx" --build-arg "VERSION=$PAUSE_VERSION"
}

build_busybox() {
  local ctx
  ctx="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  [[ -x /bin/busybox ]] || die "/bin/busybox is missing (Debian's busybox-static; tests/cluster/node-deps.sh installs it)"
  cp /bin/busybox "$here/images/busybox/Containerfile" "$ctx/"
  podman_build busybox "$ctx"
}

# Package downloads from inside a build trust what this machine trusts.
host_ca=/etc/ssl/certs/ca-certificates.crt

build_curl() {
  podman_build curl "$here/images/curl"
}

# The Jaeger binary of the local cluster's components (built, or found in the cache).
jaeger_binary() {
  local bin
  bin="$("$here/build.sh" 2>/dev/null)" || die "building the local cluster's components failed (tests/cluster/build.sh)"
  [[ -x "$bin/jaeger" ]] || die "no jaeger in $bin"
  echo "$bin/jaeger"
}

build_jaeger() {
  local ctx
  ctx="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$ctx'" RETURN
  cp "$(jaeger_binary)" "$here/images/jaeger/Containerfile" "$ctx/"
  podman_build jaeger "$ctx"
}

build_mlserver() {
  podman_build mlserver "$here/images/mlserver" --build-arg "MLSERVER_VERSION=$MLSERVER_VERSION" \
    -v "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CA_BUNDLE=/run/host-ca.crt
}

build_operator() {
  # The crates the build downloads go to this machine's cargo registry cache, which the
  # host's own builds share.
  local registry="${CARGO_HOME:-$HOME/.cargo}/registry"
  mkdir -p "$registry"
  podman_build operator "$repo" -f "$repo/Dockerfile" \
    -v "$host_ca:/etc/ssl/certs/ca-certificates.crt:ro" -v "$registry:/usr/local/cargo/registry"
}

cmd_build() {
  command -v podman >/dev/null || die "podman is missing (tests/cluster/node-deps.sh installs it)"
  [[ "$(id -u)" == 0 ]] || die "building the node's images needs root (rootful podman)"
  local names=("$@") name t
  [[ ${#names[@]} -gt 0 ]] || names=("${default_images[@]}")
  for name in "${order[@]}"; do
    [[ " ${names[*]} " == *" $name "* ]] || continue
    [[ -n "${ref[$name]:-}" ]] || die "unknown image '$name' (known: ${order[*]})"
    if [[ "$(current_hash "$name")" == "$(recipe_hash "$name")" ]]; then
      continue
    fi
    log "building $name (${ref[$name]})"
    t=$SECONDS
    "build_${name//-/_}"
    log "built $name in $((SECONDS - t))s ($(podman image inspect --format '{{.Size}}' "${ref[$name]}" | awk '{printf "%.0f MiB", $1/1048576}'))"
  done
  for name in "${names[@]}"; do [[ -n "${ref[$name]:-}" ]] || die "unknown image '$name' (known: ${order[*]})"; done
  prune_stale
}

# Every rebuild leaves the previous build's untagged images (its stages and layers) in
# podman's store. Those whose recipe is no longer any tagged image's are removed, so the store
# does not grow by a build per source change; the current builds' layers stay as the cache.
prune_stale() {
  local current=() name h
  for name in "${order[@]}"; do
    h="$(current_hash "$name")"
    [[ "$h" == none ]] || current+=("$h")
  done
  while read -r h; do
    [[ -n "$h" && " ${current[*]} " != *" $h "* ]] || continue
    podman image prune --force --filter "label=$label=$h" >/dev/null 2>&1 || true
  done < <(podman images --all --filter "label=$label" --format "{{index .Labels \"$label\"}}" | sort -u)
}

# import: podman save -> containerd, only for images whose id containerd does not have yet.
cmd_import() {
  local names=("$@") name id have t
  [[ ${#names[@]} -gt 0 ]] || names=("${runtime_images[@]}")
  [[ -S /run/containerd/containerd.sock ]] || die "containerd is not running (/run/containerd/containerd.sock)"
  for name in "${names[@]}"; do
    [[ -n "${ref[$name]:-}" ]] || die "unknown image '$name' (known: ${order[*]})"
    id="$(podman image inspect --format '{{.Id}}' "${ref[$name]}" 2>/dev/null)" ||
      die "image ${ref[$name]} is not built (run: $0 build $name)"
    have="$(ctr -n k8s.io images ls "name==${ref[$name]}" 2>/dev/null | awk 'NR > 1 {print $0}')"
    # containerd lists the config digest as part of the image's labels; the import marks
    # which podman image id it came from.
    if [[ "$have" == *"$label.id=$id"* ]]; then
      continue
    fi
    t=$SECONDS
    podman save --quiet --format oci-archive "${ref[$name]}" |
      ctr -n k8s.io images import --no-unpack=false --base-name "${ref[$name]%:*}" --digests=false - >/dev/null ||
      die "importing ${ref[$name]} into containerd failed"
    ctr -n k8s.io images label "${ref[$name]}" "$label.id=$id" >/dev/null
    log "imported $name in $((SECONDS - t))s"
  done
}

cmd_list() {
  local name
  for name in "${order[@]}"; do printf '%-14s %s\n' "$name" "${ref[$name]}"; done
}

case "${1:-}" in
  build) shift && cmd_build "$@" ;;
  import) shift && cmd_import "$@" ;;
  list) cmd_list ;;
  *)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
