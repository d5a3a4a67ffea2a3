# The real node of the local cluster: containerd + runc, CNI bridge networking, the kubelet,
# kube-proxy, Rancher's local-path-provisioner and a model store, beside the control plane.
# Sourced by cluster.sh (`up --real-node`); not run on its own.
#
# Only one real node can run per machine: containerd's socket, the kubelet's root and device
# plugin directories and /var/log/containers are host-global paths. A lock directory under
# /run records which cluster owns the node and what `down` must restore (sysctls, iptables).
# shellcheck shell=bash

node_name=real-node
node_bridge=mlmodel0
node_subnet=10.90.0.0/24
node_ip=10.90.0.1
node_store_port=18090
node_s3_port=18091
node_lock=/run/mlmodel-operator-node
kubelet_root=/var/lib/kubelet
# Containerd's own content and snapshots (the images) survive `down`, so a warm `up` imports
# nothing; everything else of a run lives in the state dir.
containerd_root="${MLMODEL_CONTAINERD_ROOT:-/var/lib/mlmodel-operator/containerd}"
containerd_sock=/run/containerd/containerd.sock
# Sysctls the kubelet, kube-proxy and CNI may change; restored on `down`.
node_sysctls=(
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.netfilter.nf_conntrack_max
)
# Host paths the node creates; removed on `down` when they did not exist before.
node_host_dirs=(/var/log/pods /var/log/containers "$kubelet_root" /var/lib/cni /etc/cni /opt/cni)
# iptables chains of the kubelet, kube-proxy, the CNI plugins and the egress guard.
node_chain_re='^(KUBE-|CNI-|MLMODEL-)'

# node_preflight: fails at once, with one line, when a real node cannot start here.
node_preflight() {
  [[ "$(id -u)" == 0 ]] || die "a real node needs root (containerd, the kubelet and iptables do)"
  if [[ -f "$node_lock/owner" ]]; then
    local owner
    owner="$(cat "$node_lock/owner")"
    if [[ -f "$owner/pids/containerd.pid" ]] && alive "$(cat "$owner/pids/containerd.pid")"; then
      die "a real node already runs on this machine (cluster $owner); one per machine: stop it first ($self down $owner)"
    fi
    log "cleaning up after an interrupted real node of $owner"
    node_cleanup_host
  fi
  if [[ -S "$containerd_sock" ]] && pgrep -x containerd >/dev/null; then
    die "a containerd not started by this test bed is running ($containerd_sock); stop it first"
  fi
  "$here/node-deps.sh" || die "installing the real node's packages failed"
  local c
  for c in containerd runc ctr iptables iptables-save iptables-restore nft podman python3; do
    command -v "$c" >/dev/null || die "'$c' is missing (tests/cluster/node-deps.sh installs it)"
  done
  for c in bridge host-local loopback portmap; do
    [[ -x "/usr/lib/cni/$c" ]] || die "CNI plugin /usr/lib/cni/$c is missing (Debian's containernetworking-plugins)"
  done
}

# node_images: builds (cached) the images the node runs; before anything is started, since a
# cold build takes minutes.
node_images() {
  local t=$SECONDS
  "$here/images.sh" build || die "building the real node's images failed"
  ((SECONDS - t < 2)) || log "images built in $((SECONDS - t))s"
}

# node_host_setup: takes the lock, records what `down` restores, creates the bridge whose
# address the API server, the model store and the kubelet listen on.
node_host_setup() {
  mkdir -p "$node_lock"
  echo "$state" >"$node_lock/owner"
  local s d
  : >"$node_lock/sysctls"
  for s in "${node_sysctls[@]}"; do
    if v="$(sysctl -n "$s" 2>/dev/null)"; then echo "$s=$v" >>"$node_lock/sysctls"; fi
  done
  : >"$node_lock/created-dirs"
  for d in "${node_host_dirs[@]}"; do [[ -e "$d" ]] || echo "$d" >>"$node_lock/created-dirs"; done
  nft list tables 2>/dev/null | sort >"$node_lock/nft-tables"
  ip link add "$node_bridge" type bridge 2>/dev/null || die "cannot create bridge $node_bridge (is another real node running?)"
  ip addr add "$node_ip/${node_subnet#*/}" dev "$node_bridge"
  ip link set "$node_bridge" up
  # Pods reach the host (INPUT) and each other; anything routed off the bridge is refused at
  # once, so a model URL on the internet fails fast and nothing leaves the machine.
  iptables -w -N MLMODEL-EGRESS
  iptables -w -A MLMODEL-EGRESS -i "$node_bridge" -o "$node_bridge" -j RETURN
  iptables -w -A MLMODEL-EGRESS -i "$node_bridge" -p tcp -j REJECT --reject-with tcp-reset
  iptables -w -A MLMODEL-EGRESS -i "$node_bridge" -j REJECT --reject-with icmp-net-prohibited
  iptables -w -I FORWARD 1 -j MLMODEL-EGRESS
}

# node_pki TOKEN-FILE: identities of the kubelet and kube-proxy, and the client certificate the
# API server presents to the kubelet (logs, exec, port-forward).
node_pki() {
  local pki="$1"
  node_token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  proxy_token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf '%s,system:node:%s,node,"system:nodes"\n' "$node_token" "$node_name" >>"$pki/tokens.csv"
  printf '%s,system:kube-proxy,kube-proxy\n' "$proxy_token" >>"$pki/tokens.csv"
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=kubelet-client-ca" \
    -keyout "$pki/kubelet-client-ca.key" -out "$pki/kubelet-client-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/apiserver-kubelet-client.key" -out "$pki/apiserver-kubelet-client.csr" 2>/dev/null
  openssl x509 -req -days 7 -in "$pki/apiserver-kubelet-client.csr" -CA "$pki/kubelet-client-ca.crt" \
    -CAkey "$pki/kubelet-client-ca.key" -CAcreateserial -out "$pki/apiserver-kubelet-client.crt" 2>/dev/null
  chmod 600 "$pki"/*.key
}

# node_apiserver_flags: what the API server needs beside a real node.
node_apiserver_flags() {
  local pki="$1"
  echo "--kubelet-client-certificate=$pki/apiserver-kubelet-client.crt"
  echo "--kubelet-client-key=$pki/apiserver-kubelet-client.key"
  echo "--kubelet-preferred-address-types=InternalIP"
}

# node_kubeconfig FILE URL TOKEN: a kubeconfig for a node component.
node_kubeconfig() {
  (
    umask 077
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $2
    certificate-authority: $state/pki/ca.crt
users:
- name: node
  user:
    token: $3
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
EOF
  )
}

node_start_containerd() {
  local dir="$state/node"
  mkdir -p "$dir/cni" "$dir/registry/_default" "$dir/ipam" "$containerd_root"
  # No registry is reachable: every image is imported, and a pull goes nowhere.
  printf 'server = "http://127.0.0.1:9"\n\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' \
    >"$dir/registry/_default/hosts.toml"
  cat >"$dir/cni/10-mlmodel.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mlmodel",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/ipam",
        "ranges": [[{"subnet": "$node_subnet", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$containerd_root"
state = "/run/containerd"
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:$PAUSE_VERSION"
  # This machine lacks CAP_SYS_RESOURCE: lowering oom_score_adj would fail every pod.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/registry"
EOF
  start containerd containerd --config "$dir/containerd.toml"
  local deadline=$((SECONDS + 30))
  until ctr --address "$containerd_sock" version >/dev/null 2>&1; do
    require_running containerd
    ((SECONDS < deadline)) || fail_with_logs containerd "containerd not answering after 30s"
    sleep 0.2
  done
  local t=$SECONDS
  "$here/images.sh" import || fail_with_logs containerd "importing images into containerd failed"
  ((SECONDS - t < 2)) || log "images imported in $((SECONDS - t))s"
}

node_start_kubelet() {
  local bin="$1" url="$2" dir="$state/node"
  mkdir -p "$dir/kubelet-pki"
  node_kubeconfig "$dir/kubelet.kubeconfig" "$url" "$node_token"
  # No cluster DNS: pods resolve through a name server that answers nothing, fast.
  printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$node_ip" >"$dir/resolv.conf"
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/kubelet-client-ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$containerd_sock
cgroupDriver: cgroupfs
# The machine is on cgroup v1 (hybrid).
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
resolvConf: $dir/resolv.conf
maxPods: 60
serializeImagePulls: false
# No eviction or image garbage collection on disk usage: the node's images are imported, not
# pulled, so an image the kubelet removed could never come back, and a disk-pressure taint
# would stop every later pod of a run on a machine whose disk is merely full of other things.
evictionHard: {memory.available: 100Mi, nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
fileCheckFrequency: 5s
syncFrequency: 10s
nodeStatusReportFrequency: 10s
containerLogMaxSize: 10Mi
EOF
  start kubelet "$bin/kubelet" \
    --config="$dir/kubelet.yaml" \
    --kubeconfig="$dir/kubelet.kubeconfig" \
    --cert-dir="$dir/kubelet-pki" \
    --root-dir="$kubelet_root" \
    --hostname-override="$node_name" \
    --node-ip="$node_ip" \
    --node-labels="type=real,mlmodel.test/node=real" \
    --v=1
}

node_start_kube_proxy() {
  local bin="$1" url="$2" dir="$state/node"
  node_kubeconfig "$dir/kube-proxy.kubeconfig" "$url" "$proxy_token"
  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $node_name
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: $node_subnet
nodePortAddresses: ["$node_ip/32"]
# Leave the host's conntrack sysctls and route_localnet alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, syncPeriod: 30s, minSyncPeriod: 0s}
EOF
  start kube-proxy "$bin/kube-proxy" --config="$dir/kube-proxy.yaml" --v=1
}

# node_start_storage: local-path-provisioner (the kind/k3s default) as the default StorageClass:
# volumes are directories made world-writable by a helper pod on the node, so a non-root pod
# can write its claim.
node_start_storage() {
  local bin="$1" dir="$state/node" kubectl=("$bin/kubectl" --kubeconfig="$state/kubeconfig")
  mkdir -p "$dir/volumes"
  local busybox
  busybox="$("$here/images.sh" list | awk '$1 == "busybox" {print $2}')"
  cat >"$dir/local-path-config.json" <<EOF
{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$dir/volumes"]}]}
EOF
  "${kubectl[@]}" apply -f - >>"$state/logs/setup.log" 2>&1 <<EOF || fail_with_logs setup "applying the storage manifests failed"
apiVersion: v1
kind: Namespace
metadata: {name: local-path-storage}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: local-path-provisioner-service-account, namespace: local-path-storage}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: local-path-config, namespace: local-path-storage}
data:
  config.json: '{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["$dir/volumes"]}]}'
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "\$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "\$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      containers:
      - name: helper-pod
        image: $busybox
        imagePullPolicy: Never
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-path
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: rancher.io/local-path
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
  "${kubectl[@]}" annotate storageclass standard --overwrite \
    storageclass.kubernetes.io/is-default-class=false >>"$state/logs/setup.log" 2>&1
  start local-path-provisioner "$bin/local-path-provisioner" --debug start \
    --kubeconfig="$state/kubeconfig" \
    --config="$dir/local-path-config.json" \
    --namespace=local-path-storage \
    --provisioner-name=rancher.io/local-path \
    --helper-image="$busybox" \
    --service-account-name=local-path-provisioner-service-account
}

# node_start_model_store: an HTTP server for model artifacts at the bridge address, serving
# <state-dir>/store (MODEL_STORE_DIR and MODEL_STORE_URL in cluster.env). Its address is fixed,
# like the node's, so sample manifests can name it.
node_start_model_store() {
  mkdir -p "$state/store"
  model_store_port="$node_store_port"
  [[ -z "$(ss -Htln "sport = :$model_store_port" 2>/dev/null)" ]] || die "port $model_store_port (the model store's) is in use"
  start model-store python3 -m http.server --bind "$node_ip" --directory "$state/store" "$model_store_port"
  local deadline=$((SECONDS + 20))
  until curl -fsS --max-time 2 -o /dev/null "http://$node_ip:$model_store_port/" 2>/dev/null; do
    require_running model-store
    ((SECONDS < deadline)) || fail_with_logs model-store "model store not answering after 20s"
    sleep 0.2
  done
}

# node_start_s3_store: an S3-compatible model store (s3s-fs) at the bridge address, serving
# <state-dir>/s3, one directory per bucket (a `models` bucket is created). It checks AWS
# signatures against one key pair made for this cluster (S3_* in cluster.env), so a download
# with a wrong or missing secret is refused the way a real bucket refuses it.
node_start_s3_store() {
  local bin="$1"
  mkdir -p "$state/s3/models"
  s3_store_port="$node_s3_port"
  [[ -z "$(ss -Htln "sport = :$s3_store_port" 2>/dev/null)" ]] || die "port $s3_store_port (the S3 store's) is in use"
  s3_access_key="MLMODELTEST$(openssl rand -hex 4 | tr a-f A-F)"
  s3_secret_key="$(openssl rand -hex 20)"
  start s3-store "$bin/s3s-fs" --host "$node_ip" --port "$s3_store_port" \
    --access-key "$s3_access_key" --secret-key "$s3_secret_key" "$state/s3"
  local deadline=$((SECONDS + 20))
  # Unsigned requests are answered (403) once it listens.
  until curl -sS --max-time 2 -o /dev/null "http://$node_ip:$s3_store_port/" 2>/dev/null; do
    require_running s3-store
    ((SECONDS < deadline)) || fail_with_logs s3-store "S3 store not answering after 20s"
    sleep 0.2
  done
}

# node_start_jaeger BIN [OTLP_HOST]: Jaeger v2 (tests/cluster/jaeger.yaml) with in-memory
# storage: OTLP in on OTLP_HOST (by default the bridge address, where the operator and the
# node's pods both reach it); query API on loopback (JAEGER_* in cluster.env).
node_start_jaeger() {
  local bin="$1" otlp_host="${2:-$node_ip}"
  local grpc_port http_port query_port query_grpc_port
  pick_port grpc_port
  pick_port http_port
  pick_port query_port
  pick_port query_grpc_port
  jaeger_otlp_grpc="$otlp_host:$grpc_port"
  jaeger_otlp_http="$otlp_host:$http_port"
  jaeger_query="127.0.0.1:$query_port"
  # The config is copied into the state dir, so `down` recognises the process as this cluster's.
  mkdir -p "$state/node"
  cp "$here/jaeger.yaml" "$state/node/jaeger.yaml"
  start jaeger env JAEGER_OTLP_GRPC="$jaeger_otlp_grpc" JAEGER_OTLP_HTTP="$jaeger_otlp_http" \
    JAEGER_QUERY_HTTP="$jaeger_query" JAEGER_QUERY_GRPC="127.0.0.1:$query_grpc_port" \
    "$bin/jaeger" --config="$state/node/jaeger.yaml"
  local deadline=$((SECONDS + 30))
  until curl -fsS --max-time 2 -o /dev/null "http://$jaeger_query/api/services" 2>/dev/null; do
    require_running jaeger
    ((SECONDS < deadline)) || fail_with_logs jaeger "Jaeger not answering after 30s"
    sleep 0.2
  done
}

# node_wait_ready: the node Ready, kwok nodes tainted so pods meant to really run never land
# on them (a test that wants a fake node tolerates the taint).
node_wait_ready() {
  local bin="$1" kubectl=("$bin/kubectl" --kubeconfig="$state/kubeconfig")
  local deadline=$((SECONDS + 90))
  until "${kubectl[@]}" wait --for=condition=Ready "node/$node_name" --timeout=2s >>"$state/logs/setup.log" 2>&1; do
    local c
    for c in containerd kubelet kube-proxy; do require_running "$c"; done
    ((SECONDS < deadline)) || fail_with_logs kubelet "node $node_name not Ready after 90s"
    sleep 0.5
  done
  "${kubectl[@]}" taint nodes -l type=kwok --overwrite kwok.x-k8s.io/node=fake:NoSchedule \
    >>"$state/logs/setup.log" 2>&1 || fail_with_logs setup "tainting the fake nodes failed"
}

# node_drain BIN: removes every pod of the node through the API while the kubelet still runs,
# so it stops their containers and tears down their sandboxes (network, mounts) itself.
node_drain() {
  local st="$1" bin kubectl
  bin="$(sed -n 's/^BIN_DIR=//p' "$st/cluster.env" 2>/dev/null)"
  [[ -n "$bin" && -f "$st/pids/kubelet.pid" ]] || return 0
  ours "$(cat "$st/pids/kubelet.pid")" "$st" || return 0
  kubectl=("$bin/kubectl" --kubeconfig="$st/kubeconfig" --request-timeout=5s)
  "${kubectl[@]}" delete pods -A --field-selector "spec.nodeName=$node_name" \
    --force --grace-period=0 --wait=false >/dev/null 2>&1 || true
  # A pod already terminating keeps its grace period (30 s unless set): past a bound, its
  # containers are killed through containerd instead.
  local deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    [[ -z "$(ctr --address "$containerd_sock" -n k8s.io tasks ls -q 2>/dev/null)" ]] &&
      [[ -z "$(ls /run/netns 2>/dev/null)" ]] && return 0
    sleep 0.3
  done
  log "pods still terminating on $node_name after 10s; killing their containers"
}

# node_stop_containers: whatever the drain left, stopped through containerd.
node_stop_containers() {
  local t ns=(ctr --address "$containerd_sock" -n k8s.io)
  "${ns[@]}" version >/dev/null 2>&1 || return 0
  for t in $("${ns[@]}" tasks ls -q 2>/dev/null); do
    "${ns[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  sleep 0.3
  for t in $("${ns[@]}" tasks ls -q 2>/dev/null); do "${ns[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
  for t in $("${ns[@]}" containers ls -q 2>/dev/null); do "${ns[@]}" containers rm "$t" >/dev/null 2>&1 || true; done
}

# node_cleanup_host: undoes what the node did to the host; safe to run twice.
node_cleanup_host() {
  local p m
  # Shims outlive containerd (they are daemons of their own) and so do their containers.
  pkill -KILL -f "containerd-shim-runc-v2 -namespace k8s.io -id .* -address $containerd_sock" 2>/dev/null || true
  for p in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
    [[ -d "$p" ]] || continue
    find "$p" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  sleep 0.2
  # Mounts: deepest first.
  findmnt -rn -o TARGET | grep -E "^($kubelet_root|/run/containerd|/run/netns|/var/run/netns|$containerd_root)(/|$)" |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for m in /run/netns/cni-*; do [[ -e "$m" ]] && rm -f "$m"; done
  for p in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
    [[ -d "$p" ]] && find "$p" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ip link del "$node_bridge" 2>/dev/null || true
  node_cleanup_iptables
  if [[ -f "$node_lock/sysctls" ]]; then
    while IFS='=' read -r k v; do sysctl -qw "$k=$v" >/dev/null 2>&1 || true; done <"$node_lock/sysctls"
  fi
  rm -rf "$kubelet_root/pods" "$kubelet_root/plugins" 2>/dev/null || true
  if [[ -f "$node_lock/created-dirs" ]]; then
    while read -r p; do [[ -n "$p" ]] && rm -rf -- "$p"; done <"$node_lock/created-dirs"
  fi
  rm -rf /run/containerd "$node_lock"
}

# node_cleanup_iptables: removes the node's chains and the rules that jump to them, table by
# table, atomically, leaving everyone else's rules; then the tables iptables created for it.
node_cleanup_iptables() {
  local cmd t
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    for t in filter nat mangle raw; do
      local rules
      rules="$("$cmd-save" -t "$t" 2>/dev/null)" || continue
      [[ -n "$rules" ]] || continue
      grep -qE "(:|-A |-j |-g )(KUBE-|CNI-|MLMODEL-)" <<<"$rules" || continue
      awk -v re="$node_chain_re" '
        /^:/ { name = substr($1, 2); if (name ~ re) next }
        /^-A / { if ($2 ~ re) next; for (i = 3; i < NF; i++) if (($i == "-j" || $i == "-g") && $(i+1) ~ re) next }
        { print }' <<<"$rules" | "$cmd-restore" -w -T "$t" 2>/dev/null || true
    done
  done
  # Tables iptables-nft created during the run and now empty.
  if command -v nft >/dev/null && [[ -f "$node_lock/nft-tables" ]]; then
    local fam name
    nft list tables 2>/dev/null | sort | comm -13 "$node_lock/nft-tables" - | while read -r _ fam name; do
      if ! nft list table "$fam" "$name" 2>/dev/null | grep -qE '^\s+(ip|meta|counter|jump|goto|ct|mark|tcp|udp|iifname|oifname|fib|socket|reject|drop|accept|return)'; then
        nft delete table "$fam" "$name" 2>/dev/null || true
      fi
    done
  fi
}
