#!/usr/bin/env bash
# Prints what a real node may change on the host, in a stable order, so that two snapshots
# (before `up --real-node`, after `down`) can be diffed: links, iptables and nftables rules,
# mounts, the sysctls the kubelet, kube-proxy and CNI touch, and long-running processes
# (their command names).
set -uo pipefail
echo "## links"
ip -o link | sed 's/^[0-9]*: //; s/ link\/.*//; s/ state [A-Z]*//; s/qlen [0-9]*//'
echo "## iptables"
iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
echo "## ip6tables"
ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
echo "## nft"
nft list ruleset 2>/dev/null | sed 's/counter packets [0-9]* bytes [0-9]*/counter/'
echo "## mounts"
# podman's own storage (image builds) is not the node's.
findmnt -rn -o TARGET,FSTYPE | grep -v '^/var/lib/containers/storage' | sort
echo "## sysctls"
sysctl vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
  net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables 2>/dev/null
echo "## processes"
ps -eo comm= | grep -E 'containerd|kubelet|kube-|etcd|kwok|runc|pause|local-path|http.server|mlserver|s3s-fs|jaeger' | sort | uniq -c
