#!/usr/bin/env bash
# mlmodel-operator demo: builds the operator's image, starts a local cluster with a real node,
# runs the operator against it under its ServiceAccount, applies the samples (a real
# scikit-learn model served by MLServer, and models that fail for real reasons), sends an
# inference request to the model that became Ready, and shows what happened.
#
#   deploy/demo.sh [--existing-cluster] [--keep-running]      (or: make demo)
#
# Environment:
#   DEMO_EXISTING_CLUSTER=1  use the current kubeconfig context instead of a local cluster
#                            (same as --existing-cluster; see below)
#   DEMO_KEEP_RUNNING=1      keep the operator running after the samples settle, until
#                            Ctrl-C (same as --keep-running)
#   DEMO_TIMEOUT=300         seconds to wait for the samples to settle
#   DEMO_LOG_DIR=target/demo where the operator's log goes (operator.log)
#   UNSCHEDULABLE_GRACE_SECONDS=10
#                            how long a serving pod may stay unschedulable before its model is
#                            Failed (the operator's default is 30; shorter here to keep the
#                            demo quick)
#   OTEL_EXPORTER_OTLP_ENDPOINT
#                            where the operator (and the download Jobs it creates) export
#                            their traces; by default the local cluster's Jaeger, whose query
#                            API then shows each model's rollout trace at the end (see
#                            observability/README.md)
#
# Local cluster (default; needs root): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok (fake GPU nodes) and a real node (containerd, kubelet, kube-proxy,
# local-path-provisioner, a model store) from tests/cluster/, in a temporary state dir, torn
# down when this script exits. The first run builds the components from their Go modules and
# the images with podman (the operator's from the Dockerfile, MLServer from PyPI): 30+ minutes
# on a small machine; later runs start in under a minute. The operator runs on the host from
# the binary inside its image (one release build).
#
# --existing-cluster: nothing is started or installed besides the CRD, the RBAC, the `demo`
# namespace and the two samples. The operator still runs here, out of cluster, but with the
# identity of the current kubeconfig context (not the ServiceAccount): you need rights to
# install a CRD and cluster RBAC anyway. Do not use it where the operator is already deployed
# (two operators would act on the same models). On exit the two samples are deleted (while
# the operator still runs, so their finalizers are released) and the `demo` namespace too if
# this script created it; the CRD and RBAC stay installed.
#
# The script always stops the operator (and the local cluster) on exit, including Ctrl-C.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
namespace=demo
models=(iris-sklearn iris-wrong-sha iris-missing iris resnet-gpu)
declare -A expected=([iris-sklearn]=Ready [iris-wrong-sha]=Failed [iris-missing]=Failed [iris]=Failed [resnet-gpu]=Failed)

existing="${DEMO_EXISTING_CLUSTER:-0}"
keep_running="${DEMO_KEEP_RUNNING:-0}"
timeout="${DEMO_TIMEOUT:-300}"
log_dir="${DEMO_LOG_DIR:-$repo/target/demo}"
grace="${UNSCHEDULABLE_GRACE_SECONDS:-10}"

usage() {
  sed -n '2,34p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --existing-cluster) existing=1 ;;
    --keep-running) keep_running=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
  shift
done
[[ "$timeout" =~ ^[0-9]+$ ]] || {
  echo "DEMO_TIMEOUT must be a number of seconds, got '$timeout'" >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Output and timing

now_ms() {
  local t="${EPOCHREALTIME//[!0-9]/}"
  echo "$((10#${t:0:-3}))"
}
seconds_since() { # start-ms -> "1.234s"
  local ms=$(($(now_ms) - $1))
  printf '%d.%03ds' $((ms / 1000)) $((ms % 1000))
}

demo_start="$(now_ms)"
step_start=""
step_no=0
step_name=""

end_step() {
  [[ -n "$step_start" ]] || return 0
  printf '    done in %s\n' "$(seconds_since "$step_start")"
  step_start=""
}
step() {
  end_step
  step_no=$((step_no + 1))
  step_name="$*"
  step_start="$(now_ms)"
  printf '\n==> [%d] %s\n' "$step_no" "$step_name"
}
info() { printf '    %s\n' "$*"; }
heading() { printf '\n--- %s\n' "$*"; }
die() {
  printf '\nerror: %s\n' "$*" >&2
  exit 1
}
indent() { sed 's/^/    /'; }

# Aligns tab-separated lines into columns.
table() {
  awk -F'\t' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) }
      if (NF > nf) nf = NF; rows = NR }
    END { for (r = 1; r <= rows; r++) { line = ""
            for (i = 1; i <= nf; i++) line = line sprintf(i < nf ? "%-" w[i] "s  " : "%s", cell[r, i])
            print "    " line } }'
}

# ---------------------------------------------------------------------------------------------
# Cleanup: runs on every exit (success, error, Ctrl-C, SIGTERM).

state_dir=""
operator_pid=""
reaper_pid=""
created_namespace=0
kubectl=(kubectl)

stop_operator() {
  [[ -n "$operator_pid" ]] || return 0
  if kill -0 "$operator_pid" 2>/dev/null; then
    info "stopping the operator (PID $operator_pid)"
    kill -TERM "$operator_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$operator_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$operator_pid" 2>/dev/null; then
      info "the operator did not stop within 30s; killing it"
      kill -KILL "$operator_pid" 2>/dev/null || true
    fi
  fi
  wait "$operator_pid" 2>/dev/null || true
  operator_pid=""
  if [[ -n "$reaper_pid" ]]; then
    kill -TERM -- "-$reaper_pid" 2>/dev/null || true
    wait "$reaper_pid" 2>/dev/null || true
    reaper_pid=""
  fi
}

# In an existing cluster, delete what the demo created (the operator must still run to
# release the finalizers).
remove_samples() {
  [[ "$existing" == 1 && -n "$operator_pid" ]] || return 0
  info "deleting the samples from namespace $namespace"
  "${kubectl[@]}" delete mlmodels -n "$namespace" "${models[@]}" --ignore-not-found --timeout=60s >/dev/null 2>&1 ||
    info "warning: the samples were not deleted within 60s; check: kubectl get mlmodels -n $namespace"
  if [[ "$created_namespace" == 1 ]]; then
    "${kubectl[@]}" delete namespace "$namespace" --wait=false --ignore-not-found >/dev/null 2>&1 || true
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  end_step
  printf '\n==> cleaning up\n'
  local t
  t="$(now_ms)"
  remove_samples
  stop_operator
  if [[ -n "$state_dir" ]]; then
    if [[ $rc -ne 0 ]]; then
      mkdir -p "$log_dir"
      rm -rf "$log_dir/cluster-logs"
      cp -r "$state_dir/logs" "$log_dir/cluster-logs" 2>/dev/null &&
        info "cluster logs copied to $log_dir/cluster-logs"
    fi
    info "stopping the local cluster"
    "$repo/tests/cluster/cluster.sh" down "$state_dir" 2>&1 | indent
  fi
  printf '    done in %s\n' "$(seconds_since "$t")"
  [[ -z "${operator_log:-}" ]] || printf '\noperator log: %s\n' "$operator_log"
  if [[ $rc -eq 0 ]]; then
    printf 'demo finished in %s\n' "$(seconds_since "$demo_start")"
  else
    printf 'demo FAILED (exit %d) after %s\n' "$rc" "$(seconds_since "$demo_start")" >&2
  fi
  exit "$rc"
}
# While it keeps running on request (DEMO_KEEP_RUNNING), Ctrl-C is the normal way to stop.
stopping_is_normal=0
on_signal() {
  printf '\n    interrupted\n'
  [[ "$stopping_is_normal" == 1 ]] && exit 0
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# ---------------------------------------------------------------------------------------------
# 1. Build the operator

if [[ "$existing" == 1 ]]; then
  step "building the operator (cargo build --release --locked --bin mlmodel-operator)"
  info "a first build compiles every dependency: several minutes on a small machine"
  (cd "$repo" && cargo build --release --locked --bin mlmodel-operator)
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/mlmodel-operator"
else
  [[ "$(id -u)" == 0 ]] || die "the local cluster's real node needs root (containerd, the kubelet, iptables): run as root, or use --existing-cluster"
  step "building the images (the operator's from the Dockerfile, MLServer, pause, busybox)"
  info "a first build compiles the operator and every dependency inside the image and installs"
  info "MLServer from PyPI: many minutes on a small machine; later runs reuse podman's cache"
  "$repo/tests/cluster/node-deps.sh"
  "$repo/tests/cluster/images.sh" build 2>&1 | indent
  image="$("$repo/tests/cluster/images.sh" list | awk '$1 == "operator" {print $2}')"
  # The operator runs on the host from the binary the image carries: one release build.
  mkdir -p "$log_dir"
  binary="$log_dir/mlmodel-operator"
  cid="$(CONTAINERS_CONF="$repo/tests/cluster/images/containers.conf" podman create "$image")"
  podman cp "$cid:/usr/local/bin/mlmodel-operator" "$binary" >/dev/null
  podman rm "$cid" >/dev/null
fi
[[ -x "$binary" ]] || die "no operator binary at $binary after the build"
info "binary: $binary ($("$binary" --version))"

# ---------------------------------------------------------------------------------------------
# 2. A cluster

if [[ "$existing" == 1 ]]; then
  step "using the current kubeconfig context"
  command -v kubectl >/dev/null || die "--existing-cluster needs kubectl on PATH"
  context="$(kubectl config current-context 2>/dev/null)" || die "no current kubeconfig context"
  info "context: $context"
  "${kubectl[@]}" version 2>&1 | indent || die "cannot reach the cluster of context $context"
  ready="$("${kubectl[@]}" get deployment mlmodel-operator -n mlmodel-system \
    -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)"
  if [[ -n "$ready" && "$ready" != 0 ]]; then
    die "mlmodel-operator is already deployed in this cluster (mlmodel-system); a second operator would act on the same models"
  fi
  operator_kubeconfig=""
else
  step "starting a local cluster with a real node (kube-apiserver, etcd, kwok, containerd, kubelet, ...)"
  info "the first run builds Kubernetes, etcd, kwok and local-path-provisioner from their Go"
  info "modules (10+ min); later runs reuse ~/.cache/mlmodel-operator/controlplane"
  state_dir="$(mktemp -d "${TMPDIR:-/tmp}/mlmodel-demo.XXXXXX")"
  # --watch-pid: the cluster goes away with this script even if it is killed outright.
  "$repo/tests/cluster/cluster.sh" up "$state_dir" --real-node --watch-pid "$$" 2>&1 >/dev/null | indent
  admin_kubeconfig="$state_dir/kubeconfig"
  bin_dir="$(sed -n 's/^BIN_DIR=//p' "$state_dir/cluster.env")"
  kubectl=("$bin_dir/kubectl" --kubeconfig "$admin_kubeconfig")
  info "state dir: $state_dir"
  info "to look around while it runs: eval \"\$(tests/cluster/cluster.sh env $state_dir)\""
  "${kubectl[@]}" get nodes -o wide 2>&1 | indent
  store_dir="$(sed -n 's/^MODEL_STORE_DIR=//p' "$state_dir/cluster.env")"
  store_url="$(sed -n 's/^MODEL_STORE_URL=//p' "$state_dir/cluster.env")"

  step "making the model: an iris classifier trained with scikit-learn, packed for MLServer"
  mkdir -p "$store_dir/iris/v1"
  CONTAINERS_CONF="$repo/tests/cluster/images/containers.conf" podman run --rm --network=none --user 0 \
    -v "$repo/deploy/samples/models:/src:ro" -v "$store_dir/iris/v1:/out" \
    "$("$repo/tests/cluster/images.sh" list | awk '$1 == "mlserver" {print $2}')" \
    python3 /src/iris.py /out/model.tar.gz v1
  sha="$(sha256sum "$store_dir/iris/v1/model.tar.gz" | cut -d' ' -f1)"
  pinned="$(sed -n 's/^  sha256: "\(.*\)"$/\1/p' "$repo/deploy/samples/iris-sklearn.yaml")"
  info "artifact: $store_url/iris/v1/model.tar.gz ($(stat -c %s "$store_dir/iris/v1/model.tar.gz") bytes)"
  tar -tzvf "$store_dir/iris/v1/model.tar.gz" | indent
  info "sha256:   $sha"
  [[ "$sha" == "$pinned" ]] || die "the artifact's sha256 differs from the one pinned in deploy/samples/iris-sklearn.yaml ($pinned)"
  info "matches the sha256 pinned in deploy/samples/iris-sklearn.yaml"
fi

# ---------------------------------------------------------------------------------------------
# 3. CRD and RBAC

step "installing the CRD and RBAC (deploy/crd, deploy/rbac)"
for f in crd/mlmodels.yaml rbac/namespace.yaml rbac/rbac.yaml; do
  "${kubectl[@]}" apply --server-side -f "$repo/deploy/$f" | indent
done
# `kubectl wait` fails at once, rather than waiting, on a definition with no conditions yet.
for _ in $(seq 150); do
  established="$("${kubectl[@]}" get crd mlmodels.oda.tmforum.org \
    -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}')"
  [[ "$established" == True ]] && break
  sleep 0.2
done
"${kubectl[@]}" wait --for=condition=Established crd/mlmodels.oda.tmforum.org --timeout=30s | indent

if [[ "$existing" != 1 ]]; then
  info "kubeconfig for the ServiceAccount mlmodel-system/mlmodel-operator (what the Deployment runs as)"
  token="$("${kubectl[@]}" create token mlmodel-operator -n mlmodel-system --duration=24h)"
  operator_kubeconfig="$state_dir/operator.kubeconfig"
  (umask 077 && cp "$admin_kubeconfig" "$operator_kubeconfig")
  "$bin_dir/kubectl" --kubeconfig "$operator_kubeconfig" config set-credentials mlmodel-operator \
    --token="$token" >/dev/null
  "$bin_dir/kubectl" --kubeconfig "$operator_kubeconfig" config set-context --current \
    --user=mlmodel-operator >/dev/null
  unset token
fi

# ---------------------------------------------------------------------------------------------
# 4. The operator

step "starting the operator (out of cluster)"
mkdir -p "$log_dir"
operator_log="$log_dir/operator.log"
: >"$operator_log"
operator_env=(
  METRICS_ADDR=127.0.0.1:0
  POD_NAME="demo-$(hostname -s 2>/dev/null || echo local)-$$"
  POD_NAMESPACE=mlmodel-system
  UNSCHEDULABLE_GRACE_SECONDS="$grace"
)
if [[ -n "$operator_kubeconfig" ]]; then
  operator_env+=(KUBECONFIG="$operator_kubeconfig")
  info "identity: ServiceAccount mlmodel-system/mlmodel-operator (token in $operator_kubeconfig)"
else
  info "identity: your current kubeconfig context ($context)"
fi
jaeger_url=""
if [[ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" && -n "$state_dir" ]]; then
  # The local cluster's Jaeger: the operator and the download Jobs' pods export there.
  OTEL_EXPORTER_OTLP_ENDPOINT="$(sed -n 's/^JAEGER_OTLP_GRPC=//p' "$state_dir/cluster.env")"
  jaeger_url="$(sed -n 's/^JAEGER_QUERY_URL=//p' "$state_dir/cluster.env")"
fi
if [[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
  operator_env+=(OTEL_EXPORTER_OTLP_ENDPOINT="$OTEL_EXPORTER_OTLP_ENDPOINT")
  info "traces: exported over OTLP to $OTEL_EXPORTER_OTLP_ENDPOINT${jaeger_url:+ (the local Jaeger; query API $jaeger_url)}"
else
  info "traces: not exported (set OTEL_EXPORTER_OTLP_ENDPOINT to send them to Jaeger); trace ids are still recorded"
fi
info "UNSCHEDULABLE_GRACE_SECONDS=$grace (operator default: 30)"
# Its own session: Ctrl-C reaches only this script, which then stops the operator in order.
env "${operator_env[@]}" setsid "$binary" run </dev/null >"$operator_log" 2>&1 &
operator_pid=$!
# Kills the operator if this script dies without running its cleanup (e.g. SIGKILL).
# shellcheck disable=SC2016 # expanded by the reaper's shell
setsid bash -c 'tail --pid="$1" -f /dev/null; kill -TERM "$2" 2>/dev/null' reaper "$$" "$operator_pid" \
  </dev/null >/dev/null 2>&1 &
reaper_pid=$!
info "PID $operator_pid, log: $operator_log"

deadline=$((SECONDS + 60))
until grep -q "watches synced" "$operator_log"; do
  if ! kill -0 "$operator_pid" 2>/dev/null; then
    tail -n 30 "$operator_log" | indent >&2
    die "the operator exited during start-up (log above: $operator_log)"
  fi
  ((SECONDS < deadline)) || die "the operator did not sync its watches within 60s (log: $operator_log)"
  sleep 0.2
done
info "watches synced: the operator is ready"

# ---------------------------------------------------------------------------------------------
# 5. The samples

step "applying the samples to namespace $namespace (deploy/samples)"
if ! "${kubectl[@]}" get namespace "$namespace" >/dev/null 2>&1; then
  "${kubectl[@]}" create namespace "$namespace" | indent
  created_namespace=1
fi
if [[ "$existing" == 1 ]]; then
  models=(iris resnet-gpu)
  expected=([iris]=Ready [resnet-gpu]=Failed)
  "${kubectl[@]}" apply -n "$namespace" -f "$repo/deploy/samples/iris-poc.yaml" -f "$repo/deploy/samples/gpu-too-big.yaml" | indent
  info "iris: the proof of concept's TensorFlow manifest: expected to become Ready"
else
  "${kubectl[@]}" apply -n "$namespace" -f "$repo/deploy/samples/iris-sklearn.yaml" \
    -f "$repo/deploy/samples/failing-downloads.yaml" -f "$repo/deploy/samples/iris-poc.yaml" | indent
  # The GPU sample's own URL is on the internet; here it downloads the local artifact, so what
  # stops it is the scheduler.
  sed "s#^  modelURL: .*#  modelURL: $store_url/iris/v1/model.tar.gz#" "$repo/deploy/samples/gpu-too-big.yaml" |
    "${kubectl[@]}" apply -n "$namespace" -f - | indent
  info "iris-sklearn: the real model, downloaded, verified and served by MLServer: expected Ready"
  info "iris-wrong-sha, iris-missing: a checksum that does not match, a URL the store does not have: expected Failed"
  info "iris: the proof of concept's manifest, unchanged: its URL is on the internet, which this"
  info "      cluster cannot reach: expected Failed with the downloader's own error"
fi
info "resnet-gpu: asks for 8 nvidia.com/gpu (the fake nodes have 1 each): expected to fail as Unschedulable"

step "waiting for the samples to settle (at most ${timeout}s)"
declare -A last_phase=()
deadline=$((SECONDS + timeout))
wait_start="$(now_ms)"
while :; do
  settled=0
  for m in "${models[@]}"; do
    phase="$("${kubectl[@]}" get mlmodel "$m" -n "$namespace" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    phase="${phase:-<none>}"
    if [[ "$phase" != "${last_phase[$m]:-}" ]]; then
      printf '    %8s  %-11s %s\n' "+$(seconds_since "$wait_start")" "$m" "$phase"
      last_phase[$m]="$phase"
    fi
    if [[ "$phase" == "${expected[$m]}" ]]; then
      settled=$((settled + 1))
    elif [[ "$phase" == Ready || "$phase" == Failed ]]; then
      "${kubectl[@]}" get mlmodel "$m" -n "$namespace" -o yaml | indent >&2
      die "$m ended $phase instead of ${expected[$m]}"
    fi
  done
  ((settled == ${#models[@]})) && break
  if ((SECONDS >= deadline)); then
    "${kubectl[@]}" get mlmodels -n "$namespace" -o wide 2>&1 | indent >&2
    die "the samples did not settle within ${timeout}s (operator log: $operator_log)"
  fi
  sleep 0.5
done
end_step

# ---------------------------------------------------------------------------------------------
# 6. What happened

step "results"
heading "kubectl get mlmodels -n $namespace -o wide"
"${kubectl[@]}" get mlmodels -n "$namespace" -o wide | indent

for m in "${models[@]}"; do
  heading "$m"
  get() { "${kubectl[@]}" get mlmodel "$m" -n "$namespace" -o jsonpath="$1"; }
  printf '  conditions:\n'
  {
    printf 'TYPE\tSTATUS\tREASON\tMESSAGE\n'
    get '{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}'
  } | table
  failure="$(get '{.status.lastFailure.reason}{": "}{.status.lastFailure.message}')"
  [[ "$failure" == ": " ]] || printf '  last failure:     %s\n' "$failure"
  endpoint="$(get '{.status.serviceEndpoint}')"
  printf '  serving endpoint: %s\n' "${endpoint:-(none: set once the model is Ready, if spec.expose is true)}"
  trace_id="$(get '{.status.traceId}')"
  printf '  trace id:         %s\n' "$trace_id"
  if [[ -n "$jaeger_url" && -n "$trace_id" ]]; then
    printf '  in Jaeger:        %s/trace/%s\n' "$jaeger_url" "$trace_id"
    printf '  every trace of %s: %s/search?service=mlmodel-operator&tags=%s\n' "$m" "$jaeger_url" \
      "$(python3 -c 'import json,sys,urllib.parse; print(urllib.parse.quote(json.dumps({"mlmodel.name": sys.argv[1]})))' "$m")"
    # The last spans of a rollout reach Jaeger with the exporters' next batch.
    for _ in $(seq 1 20); do
      curl -fsS --max-time 2 "$jaeger_url/api/traces/$trace_id" 2>/dev/null |
        grep -qE '"operationName":"mlmodel\.(ready|failed)"' && break
      sleep 0.5
    done
    env ${admin_kubeconfig:+"KUBECONFIG=$admin_kubeconfig"} "$binary" trace "$m" -n "$namespace" \
      --jaeger "$jaeger_url" || info "(the trace could not be read from Jaeger)"
  fi
  printf '  events (kubectl get events.events.k8s.io --field-selector regarding.name=%s):\n' "$m"
  "${kubectl[@]}" get events.events.k8s.io -n "$namespace" \
    --field-selector "regarding.kind=MLModel,regarding.name=$m" --sort-by=.metadata.creationTimestamp 2>&1 | indent
done

if [[ "$existing" != 1 ]]; then
  heading "an inference request to iris-sklearn, through its Service"
  ip="$("${kubectl[@]}" get service iris-sklearn -n "$namespace" -o jsonpath='{.spec.clusterIP}')"
  port="$("${kubectl[@]}" get service iris-sklearn -n "$namespace" -o jsonpath='{.spec.ports[0].port}')"
  request='{"inputs": [{"name": "flowers", "shape": [3, 4], "datatype": "FP64", "data": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]}]}'
  printf '  POST http://%s:%s/v2/models/iris-sklearn/infer\n' "$ip" "$port"
  printf '  %s\n' "$request"
  # The Service routes once kube-proxy has programmed the pod's endpoint, a moment after the
  # model is Ready: until then the request is refused (or, on some networks, answered by
  # something that is not the model server). MLServer's answer carries "outputs".
  answer=""
  for _ in $(seq 1 30); do
    answer="$(curl -sS --max-time 10 -H 'Content-Type: application/json' -d "$request" \
      "http://$ip:$port/v2/models/iris-sklearn/infer" 2>&1)" && [[ "$answer" == *'"outputs"'* ]] && break
    sleep 1
  done
  [[ "$answer" == *'"outputs"'* ]] || die "the inference request failed: $answer"
  printf '  answer: %s\n' "$answer"
  classes="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["data"])' <<<"$answer")"
  printf '  predicted classes (0 setosa, 1 versicolor, 2 virginica): %s\n' "$classes"
fi

heading "what was real, what was simulated"
if [[ "$existing" == 1 ]]; then
  cat <<EOF
  This ran against your cluster ($context): the download Job and the serving pods were
  scheduled and run by that cluster's own nodes.
EOF
else
  cat <<'EOF'
  Real: the API server, scheduler, controllers, the operator, and the node real-node where
  the download Jobs ran the operator's image (fetch, sha256 check, unpack into the volume
  local-path-provisioner made) and MLServer loaded and served iris-sklearn; the answer above
  came from it. Simulated: the two GPU nodes (kwok), which exist so the scheduler has GPUs
  to refuse resnet-gpu; the real node has none.
EOF
fi
if [[ -n "$jaeger_url" ]]; then
  echo "  Traces went to the local Jaeger; its query API answers at $jaeger_url (the links above;"
  echo "  built from its Go module, its web UI is a placeholder: observability/README.md)."
elif [[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
  echo "  Traces were sent to $OTEL_EXPORTER_OTLP_ENDPOINT: look up the trace ids above (observability/README.md)."
else
  echo "  To see the rollouts as traces in Jaeger, see observability/README.md."
fi
end_step

if [[ "$keep_running" == 1 ]]; then
  printf '\nThe operator keeps running (PID %s, log %s). Press Ctrl-C to stop everything.\n' \
    "$operator_pid" "$operator_log"
  if [[ -n "$state_dir" ]]; then
    printf 'In another shell: eval "%s"; kubectl get mlmodels -A\n' \
      "\$($repo/tests/cluster/cluster.sh env $state_dir)"
  fi
  stopping_is_normal=1
  wait "$operator_pid" || true
  stopping_is_normal=0
  die "the operator exited on its own (log: $operator_log)"
fi
