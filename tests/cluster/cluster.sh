#!/usr/bin/env bash
# Local Kubernetes test bed: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# and kwok (fake nodes, simulated pod lifecycle), all on 127.0.0.1 with free ports; with
# --real-node also a real node (containerd, kubelet, kube-proxy, local-path-provisioner, a
# model store) whose pods really run, and then the API server listens on the node's bridge.
# A real node comes with Jaeger (OTLP in on the bridge); --jaeger starts it without one (OTLP
# in on 127.0.0.1). Its addresses are the JAEGER_* lines of <state-dir>/cluster.env.
#
#   tests/cluster/cluster.sh up <state-dir> [--watch-pid PID] [--real-node] [--jaeger]
#                                [--api-feature-gates GATES]
#   tests/cluster/cluster.sh down <state-dir>
#   tests/cluster/cluster.sh env <state-dir>
#
# `up` prints the kubeconfig path on stdout as its last line; progress goes to stderr.
# With --watch-pid, the cluster is torn down as soon as PID exits.
# --api-feature-gates passes GATES (`Name=false,...`) to the API server's --feature-gates.
# KEEP_CLUSTER_LOGS=1 keeps <state-dir>/logs on `down`.
# KUBE_API_QPS and KUBE_API_BURST raise the controller-manager's and the scheduler's client
# rate limits (defaults 20/30 and 50/100, which queue tens of thousands of pods; the benchmark
# raises them for its 10,000-model run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"
manifests="$here/manifests"
marker=".mlmodel-operator-cluster"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=node.sh
source "$here/node.sh"
# Components, in start order; `down` stops them in reverse.
control_plane=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
node_components=(containerd kubelet kube-proxy local-path-provisioner model-store jaeger)
components=("${control_plane[@]}")
real_node=0
jaeger=0
api_feature_gates=""

log() { echo "[cluster] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,18p' "$self" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

now_ms() {
  local t="${EPOCHREALTIME//[!0-9]/}"
  echo "${t:0:-3}"
}

# alive PID: the process exists and is not a zombie.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != "Z" ]]
}

# ours PID STATE: PID is a live process whose command line mentions the state dir
# (guards against killing an unrelated process that reused a recorded PID).
ours() {
  alive "$1" || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2/"
}

port_in_use() {
  if command -v ss >/dev/null; then
    [[ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

picked_ports=()
# pick_port VAR: sets VAR to a free port for a listener, outside this machine's ephemeral range
# (where every outgoing connection takes its local port) and distinct from this run's earlier
# picks. Another process can still take the port before it is bound; callers that can see that
# (etcd, the API server) pick again.
pick_port() {
  local lo hi p i
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { lo=32768 hi=60999; }
  for ((i = 0; i < 1000; i++)); do
    p=$((10000 + (RANDOM * 32768 + RANDOM) % 50000))
    ((p >= lo && p <= hi)) && continue
    # The NodePort range of a real node's kube-proxy.
    ((p >= 30000 && p <= 32767)) && continue
    [[ " ${picked_ports[*]} " == *" $p "* ]] && continue
    port_in_use "$p" && continue
    picked_ports+=("$p")
    printf -v "$1" '%s' "$p"
    return 0
  done
  die "no free port found outside the ephemeral range $lo-$hi"
}

# lost_port_race NAME: NAME has exited because its port was taken between pick and bind.
lost_port_race() {
  local pid
  pid="$(cat "$state/pids/$1.pid")"
  ! alive "$pid" && grep -q 'address already in use' "$state/logs/$1.log" 2>/dev/null
}

abs_path() {
  mkdir -p "$1"
  (cd "$1" && pwd)
}

# start NAME ARGS...: runs a component in its own session (so `down` can signal its whole
# process group) with output in logs/NAME.log, and records its PID.
start() {
  local name="$1"
  shift
  setsid "$@" </dev/null >>"$state/logs/$name.log" 2>&1 &
  echo "$!" >"$state/pids/$name.pid"
}

require_running() {
  local name="$1" pid
  pid="$(cat "$state/pids/$name.pid")"
  if ! alive "$pid"; then
    log "$name exited; last lines of $state/logs/$name.log:"
    tail -n 40 "$state/logs/$name.log" >&2 || true
    exit 1
  fi
}

fail_with_logs() {
  local name="$1"
  shift
  log "error: $*"
  log "last lines of $state/logs/$name.log:"
  tail -n 40 "$state/logs/$name.log" >&2 || true
  exit 1
}

cmd_up() {
  [[ $# -ge 1 ]] || usage
  local watch_pid=""
  local dir="$1"
  shift
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --watch-pid)
        [[ $# -ge 2 ]] || usage
        watch_pid="$2"
        shift 2
        ;;
      --watch-pid=*)
        watch_pid="${1#*=}"
        shift
        ;;
      --real-node)
        real_node=1
        shift
        ;;
      --jaeger)
        jaeger=1
        shift
        ;;
      --api-feature-gates)
        [[ $# -ge 2 ]] || usage
        api_feature_gates="$2"
        shift 2
        ;;
      *) usage ;;
    esac
  done
  if [[ -n "$watch_pid" ]]; then
    [[ "$watch_pid" =~ ^[0-9]+$ ]] || die "--watch-pid needs a PID, got '$watch_pid'"
    alive "$watch_pid" || die "--watch-pid $watch_pid: no such process"
  fi

  local t0
  t0="$(now_ms)"
  state="$(abs_path "$dir")"
  if [[ -d "$state/pids" ]]; then
    local f
    for f in "$state"/pids/*.pid; do
      [[ -e "$f" ]] || continue
      if ours "$(cat "$f")" "$state"; then
        die "a cluster is already running in $state (run: $self down $state)"
      fi
    done
  fi
  rm -rf "$state/pids" "$state/etcd" "$state/pki" "$state/kwok"
  mkdir -p "$state/logs" "$state/pids" "$state/pki" "$state/kwok"
  touch "$state/$marker"

  [[ $real_node == 0 ]] || node_preflight
  local bin
  bin="$("$here/build.sh")" || die "building the control plane failed"
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
    [[ -x "$bin/$b" ]] || die "missing $bin/$b"
  done
  if [[ $real_node == 1 ]]; then
    for b in kubelet kube-proxy local-path-provisioner jaeger s3s-fs; do
      [[ -x "$bin/$b" ]] || die "missing $bin/$b"
    done
    node_images
  fi

  trap 'on_up_exit' EXIT
  local host=127.0.0.1 api_extra=(--endpoint-reconciler-type=none)
  if [[ $real_node == 1 ]]; then
    components+=("${node_components[@]}")
    echo 1 >"$state/real-node"
    node_host_setup
    # Pods reach the API server through the `kubernetes` Service, whose endpoint is the
    # advertised address: the node's bridge address, in the serving certificate too.
    host="$node_ip"
    api_extra=()
  fi
  [[ -z "$api_feature_gates" ]] || api_extra+=(--feature-gates="$api_feature_gates")

  local etcd_port etcd_peer_port api_port attempt url deadline
  local pki="$state/pki" kubeconfig="$state/kubeconfig"

  local token
  token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf '%s,admin,admin,"system:masters"\n' "$token" >"$pki/tokens.csv"
  if [[ $real_node == 1 ]]; then
    node_pki "$pki"
    mapfile -t -O "${#api_extra[@]}" api_extra < <(node_apiserver_flags "$pki")
  fi
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki/tokens.csv" "$pki/sa.key"

  # A port taken by another process between pick and bind: pick again, up to three times.
  for attempt in 1 2 3; do
    pick_port etcd_port
    pick_port etcd_peer_port
    start etcd "$bin/etcd" \
      --name=default \
      --data-dir="$state/etcd" \
      --listen-client-urls="http://127.0.0.1:$etcd_port" \
      --advertise-client-urls="http://127.0.0.1:$etcd_port" \
      --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
      --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
      --initial-cluster="default=http://127.0.0.1:$etcd_peer_port" \
      --initial-cluster-state=new \
      --unsafe-no-fsync \
      --log-level=warn
    deadline=$((SECONDS + 30))
    until curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1; do
      if ((attempt < 3)) && lost_port_race etcd; then
        log "etcd's port was taken before it bound; picking again"
        rm -rf "$state/etcd"
        continue 2
      fi
      require_running etcd
      ((SECONDS < deadline)) || fail_with_logs etcd "etcd not healthy after 30s"
      sleep 0.2
    done
    break
  done

  for attempt in 1 2 3; do
    pick_port api_port
    url="https://$host:$api_port"
    start kube-apiserver "$bin/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$etcd_port" \
      --bind-address="$host" \
      --advertise-address="$host" \
      --secure-port="$api_port" \
      --cert-dir="$pki" \
      --authorization-mode=Node,RBAC \
      --token-auth-file="$pki/tokens.csv" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$pki/sa.pub" \
      --service-account-signing-key-file="$pki/sa.key" \
      --service-cluster-ip-range=10.96.0.0/16 \
      "${api_extra[@]}" \
      --allow-privileged=true \
      --enable-priority-and-fairness=false \
      --profiling=false \
      --v=1
    deadline=$((SECONDS + 60))
    until curl -ksf --max-time 2 -H "Authorization: Bearer $token" "$url/readyz" >/dev/null 2>&1; do
      if ((attempt < 3)) && lost_port_race kube-apiserver; then
        log "the API server's port was taken before it bound; picking again"
        continue 2
      fi
      require_running kube-apiserver
      ((SECONDS < deadline)) || fail_with_logs kube-apiserver "kube-apiserver not ready after 60s"
      sleep 0.2
    done
    break
  done

  # The self-signed serving cert file holds the serving cert followed by its CA.
  awk -v out="$pki/ca.crt" '
    /-----BEGIN CERTIFICATE-----/ { n++ }
    n == 2 { print > out }
  ' "$pki/apiserver.crt"
  local tls_line
  if [[ -s "$pki/ca.crt" ]] && curl -sf --max-time 5 --cacert "$pki/ca.crt" \
    -H "Authorization: Bearer $token" "$url/readyz" >/dev/null 2>&1; then
    tls_line="certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")"
  else
    log "warning: the apiserver's serving cert does not verify against its CA; using insecure-skip-tls-verify"
    cp "$pki/apiserver.crt" "$pki/ca.crt"
    tls_line="insecure-skip-tls-verify: true"
  fi
  (
    umask 077
    cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mlmodel-test
  cluster:
    server: $url
    $tls_line
users:
- name: admin
  user:
    token: $token
contexts:
- name: mlmodel-test
  context:
    cluster: mlmodel-test
    user: admin
    namespace: default
current-context: mlmodel-test
EOF
  )

  local client_limits=()
  if [[ -n "${KUBE_API_QPS:-}" ]]; then
    [[ "$KUBE_API_QPS" =~ ^[0-9]+$ ]] || die "KUBE_API_QPS must be a whole number, got '$KUBE_API_QPS'"
    client_limits+=("--kube-api-qps=$KUBE_API_QPS")
  fi
  if [[ -n "${KUBE_API_BURST:-}" ]]; then
    [[ "$KUBE_API_BURST" =~ ^[0-9]+$ ]] || die "KUBE_API_BURST must be a whole number, got '$KUBE_API_BURST'"
    client_limits+=("--kube-api-burst=$KUBE_API_BURST")
  fi

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$kubeconfig" \
    --secure-port=0 \
    --controllers='*' \
    --enable-hostpath-provisioner=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=false \
    --leader-elect=false \
    --concurrent-job-syncs=10 \
    "${client_limits[@]}" \
    --v=1

  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$kubeconfig" \
    --secure-port=0 \
    --leader-elect=false \
    "${client_limits[@]}" \
    --v=1

  local kwok_config=() f
  for f in "$manifests"/kwok/*.yaml; do kwok_config+=("--config=$f"); done
  start kwok env KWOK_WORKDIR="$state/kwok" "$bin/kwok" \
    --kubeconfig="$kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --cidr=10.244.0.0/16 \
    "${kwok_config[@]}"

  local kubectl=("$bin/kubectl" --kubeconfig="$kubeconfig")
  "${kubectl[@]}" apply -f "$manifests/cluster/" >>"$state/logs/setup.log" 2>&1 ||
    fail_with_logs setup "applying $manifests/cluster failed"

  deadline=$((SECONDS + 60))
  until "${kubectl[@]}" wait --for=condition=Ready node -l type=kwok --timeout=2s >>"$state/logs/setup.log" 2>&1; do
    local c
    for c in kube-controller-manager kube-scheduler kwok; do require_running "$c"; done
    ((SECONDS < deadline)) || fail_with_logs kwok "fake nodes not Ready after 60s"
  done
  {
    echo "APISERVER_URL=$url"
    echo "KUBECONFIG=$kubeconfig"
    echo "BIN_DIR=$bin"
    echo "ETCD_URL=http://127.0.0.1:$etcd_port"
  } >"$state/cluster.env"

  if [[ $real_node == 1 ]]; then
    local t=$SECONDS
    node_start_containerd
    node_start_kubelet "$bin" "$url"
    node_start_kube_proxy "$bin" "$url"
    node_start_storage "$bin"
    node_start_model_store
    node_start_s3_store "$bin"
    node_start_jaeger "$bin"
    node_wait_ready "$bin"
    {
      echo "REAL_NODE=$node_name"
      echo "NODE_IP=$node_ip"
      echo "MODEL_STORE_DIR=$state/store"
      echo "MODEL_STORE_URL=http://$node_ip:$model_store_port"
      echo "S3_STORE_DIR=$state/s3"
      echo "S3_STORE_URL=http://$node_ip:$s3_store_port"
      echo "S3_ACCESS_KEY=$s3_access_key"
      echo "S3_SECRET_KEY=$s3_secret_key"
      echo "JAEGER_OTLP_GRPC=http://$jaeger_otlp_grpc"
      echo "JAEGER_OTLP_HTTP=http://$jaeger_otlp_http"
      echo "JAEGER_QUERY_URL=http://$jaeger_query"
    } >>"$state/cluster.env"
    log "real node $node_name Ready in $((SECONDS - t))s"
  elif [[ $jaeger == 1 ]]; then
    components+=(jaeger)
    node_start_jaeger "$bin" 127.0.0.1
    {
      echo "JAEGER_OTLP_GRPC=http://$jaeger_otlp_grpc"
      echo "JAEGER_OTLP_HTTP=http://$jaeger_otlp_http"
      echo "JAEGER_QUERY_URL=http://$jaeger_query"
    } >>"$state/cluster.env"
  fi
  for c in "${components[@]}"; do require_running "$c"; done

  if [[ -n "$watch_pid" ]]; then
    # shellcheck disable=SC2016 # expanded by the reaper's shell
    setsid bash -c '
      tail --pid="$1" -f /dev/null
      MLMODEL_CLUSTER_REAPER=1 exec "$2" down "$3"
    ' reaper "$watch_pid" "$self" "$state/" </dev/null >>"$state/logs/reaper.log" 2>&1 &
    echo "$!" >"$state/pids/reaper.pid"
    disown
  fi

  trap - EXIT
  local ms=$(($(now_ms) - t0))
  log "cluster up in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
  log "apiserver:  $url"
  log "kubeconfig: $kubeconfig"
  log "kubectl:    $bin/kubectl --kubeconfig=$kubeconfig get nodes"
  [[ -z "$watch_pid" ]] || log "torn down when PID $watch_pid exits"
  echo "$kubeconfig"
}

on_up_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    log "cluster up failed; stopping what was started (logs kept in $state/logs)"
    stop_cluster "$state"
  fi
}

# stop_cluster STATE: stops every component; with a real node, first what creates pods,
# then the node's pods through the kubelet, then the node, then the control plane.
stop_cluster() {
  local st="$1"
  if [[ -f "$st/real-node" ]]; then
    stop_components "$st" jaeger s3-store model-store local-path-provisioner kwok kube-scheduler kube-controller-manager
    node_drain "$st"
    stop_components "$st" kube-proxy kubelet
    node_stop_containers
    stop_components "$st" containerd
    stop_components "$st" kube-apiserver etcd
    if [[ "$(cat "$node_lock/owner" 2>/dev/null)" == "$st" ]]; then node_cleanup_host; fi
  else
    stop_components "$st" jaeger kwok kube-scheduler kube-controller-manager kube-apiserver etcd
  fi
}

# stop_components STATE NAME...: SIGTERM each recorded process group, wait, then SIGKILL.
stop_components() {
  local st="$1" pids=() f pid name
  shift
  for name in "$@"; do
    f="$st/pids/$name.pid"
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    if ours "$pid" "$st"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + 15)) killed="" left
  while :; do
    left=()
    for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
    [[ ${#left[@]} -eq 0 ]] && break
    if ((SECONDS >= deadline)); then
      if [[ -n "$killed" ]]; then
        log "warning: PIDs still alive: ${left[*]}"
        break
      fi
      log "sending SIGKILL to PIDs ${left[*]}"
      for pid in "${left[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
      killed=1
      deadline=$((SECONDS + 5))
    fi
    sleep 0.1
  done
  for name in "$@"; do rm -f "$st/pids/$name.pid"; done
}

# remove_hostpath_volumes STATE: deletes the directories the host-path provisioner made for
# PVs still present in the cluster (they would outlive it under /tmp/hostpath_pv).
remove_hostpath_volumes() {
  local st="$1" bin path pid
  [[ -f "$st/cluster.env" && -f "$st/pids/kube-apiserver.pid" ]] || return 0
  pid="$(cat "$st/pids/kube-apiserver.pid")"
  ours "$pid" "$st" || return 0
  bin="$(sed -n 's/^BIN_DIR=//p' "$st/cluster.env")"
  "$bin/kubectl" --kubeconfig="$st/kubeconfig" --request-timeout=5s get pv \
    -o jsonpath='{range .items[*]}{.spec.hostPath.path}{"\n"}{end}' 2>/dev/null |
    while IFS= read -r path; do
      if [[ "$path" =~ ^/tmp/hostpath_pv/[0-9a-f-]+$ ]]; then rm -rf -- "$path"; fi
    done || true
}

cmd_down() {
  [[ $# -eq 1 ]] || usage
  [[ -d "$1" ]] || {
    log "nothing to stop: $1 does not exist"
    return 0
  }
  local st
  st="$(cd "$1" && pwd)"
  [[ -f "$st/$marker" ]] || die "$st is not a cluster state dir (no $marker)"

  if [[ -z "${MLMODEL_CLUSTER_REAPER:-}" && -f "$st/pids/reaper.pid" ]]; then
    local rp
    rp="$(cat "$st/pids/reaper.pid")"
    if ours "$rp" "$st"; then kill -TERM -- "-$rp" 2>/dev/null || kill -TERM "$rp" 2>/dev/null || true; fi
  fi
  remove_hostpath_volumes "$st"
  stop_cluster "$st"

  if [[ "${KEEP_CLUSTER_LOGS:-}" == 1 ]]; then
    find "$st" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
    log "cluster stopped; logs kept in $st/logs"
  else
    rm -rf "$st"
    log "cluster stopped; removed $st"
  fi
}

cmd_env() {
  [[ $# -eq 1 ]] || usage
  local st
  st="$(cd "$1" 2>/dev/null && pwd)" || die "$1 does not exist"
  [[ -f "$st/cluster.env" ]] || die "no cluster in $st"
  local bin
  bin="$(sed -n 's/^BIN_DIR=//p' "$st/cluster.env")"
  printf 'export KUBECONFIG=%q\n' "$st/kubeconfig"
  # shellcheck disable=SC2016 # $PATH is expanded where the output is eval'ed
  printf 'export PATH=%q:"$PATH"\n' "$bin"
}

state=""
case "${1:-}" in
  up)
    shift
    cmd_up "$@"
    ;;
  down)
    shift
    cmd_down "$@"
    ;;
  env)
    shift
    cmd_env "$@"
    ;;
  *) usage ;;
esac
