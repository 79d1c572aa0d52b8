# shellcheck shell=bash
# The real node of scripts/local-cluster.sh (`up --real-node`): containerd + runc + CNI + kubelet +
# kube-proxy on this machine, sourced by local-cluster.sh (it uses its STATE, CACHE, BIN, PKI, LOGS,
# say, die, start, alive, pid_of, api, wait_for). Not run on its own.
#
# Everything the node changes on the host is recorded under $STATE/node and undone by node_down:
#   processes    containerd, its shims, kubelet, kube-proxy, the API server's forwarder for pods, the
#                pods' processes (all by PID)
#   mounts       under $STATE (rootfs overlays, shm, secrets tmpfs, the kubelet's rshared bind) and
#                the pods' network namespaces in /run/netns (only those that pods of this node hold)
#   network      the bridge $NODE_BRIDGE with the node address (the pods' gateway), the pods' veths,
#                the INFADAPTER-NODE forward chain (pods reach nothing off this machine), KUBE-* and
#                CNI-* chains in filter, nat and mangle, IPv4 and IPv6
#   sysctls      net.ipv4.ip_forward (pods -> Service -> pod) and the kernel tunables the kubelet sets
#                (vm.overcommit_memory, kernel.panic, ...): saved before, restored after
#   cgroups      /kubepods in every cgroup hierarchy
#   host paths   /var/lib/kubelet/device-plugins (hard-coded in the kubelet), /var/log/containers,
#                /var/lib/cni (libcni's cache), /run/containerd/s (shim sockets), /run/netns: removed
#                when this node created them
# One real node per machine: kube-proxy's and the kubelet's iptables chains are machine-wide, so a
# lock file (/run/infadapter-real-node) names the state folder that owns them.

NODE_NAME=real-node
NODE_BRIDGE=infadapter0
NODE_LOCK=/run/infadapter-real-node
# shellcheck disable=SC2034  # used by local-cluster.sh
NODE_COMPONENTS=(containerd kubelet kube-proxy apiserver-proxy)
CNI_BIN=/usr/lib/cni
# The host paths the kubelet, containerd and libcni write outside their configurable folders.
NODE_HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /run/netns)
NODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)
PAUSE_IMAGE=localhost/infadapter/pause:busybox
TEST_IMAGE=localhost/infadapter/busybox:local
# Bump when the recipe of the node images changes: part of their cache key.
NODE_IMAGES_RECIPE=1

node_dir() { echo "$STATE/node"; }
node_sock() { echo "$STATE/node/containerd/containerd.sock"; }
# ctr waits forever for a socket nobody serves: every call gets a connect timeout.
ctr_() { ctr --address "$(node_sock)" --connect-timeout 5s -n k8s.io "$@"; }
containerd_up() { ctr --address "$(node_sock)" --connect-timeout 2s --timeout 5s version >/dev/null 2>&1; }
node_ip() { cat "$STATE/node/ip"; }
has_real_node() { [ -f "$STATE/node/ip" ]; }

# -- build ----------------------------------------------------------------------------------------
node_binaries_ok() {
  [ -x "$BIN/kubelet" ] && [ -x "$BIN/kube-proxy" ] || return 1
  "$BIN/kubelet" --version 2>/dev/null | grep -q "Kubernetes $K8S_VERSION" || return 1
  "$BIN/kube-proxy" --version 2>/dev/null | grep -q "Kubernetes $K8S_VERSION"
}

build_node() {  # kubelet and kube-proxy from the same module (and Go caches) as the control plane
  build_lock node
  if node_binaries_ok; then
    say "node binaries: $BIN/kubelet, $BIN/kube-proxy (cached)"
    return 0
  fi
  local tmp t0
  tmp=$(build_dir)
  t0=$(date +%s)
  say "building kubelet and kube-proxy $K8S_VERSION into $BIN: about 2 minutes on 2 cores after the control"
  say "plane's build (most packages are shared), seconds with warm Go caches"
  if ! (cd "$ROOT/hack/k8s" && GOFLAGS=-mod=readonly "$GO" build -trimpath -ldflags "$(k8s_ldflags)" -o "$tmp/" -x \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy 2>&1) | progress "$tmp/build.log" "$t0"; then
    tail -5 "$tmp/build.log" >&2
    die "go build of kubelet/kube-proxy failed; see $tmp/build.log" 4
  fi
  mv "$tmp/kubelet" "$tmp/kube-proxy" "$BIN/"
  rm -rf "$tmp"
  node_binaries_ok || die "the built kubelet/kube-proxy do not report $K8S_VERSION" 4
  say "node binaries built in $(( $(date +%s) - t0 )) s"
}

# -- preflight ------------------------------------------------------------------------------------
# Installs the Debian packages of the runtime when one is missing, as setup.sh does (bookworm: containerd
# 1.6.20, runc 1.1.5, containernetworking-plugins 1.1.1, iptables, busybox-static for the images).
node_packages() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x "$CNI_BIN/bridge" ] && [ -x "$CNI_BIN/host-local" ] && [ -x "$CNI_BIN/portmap" ] \
    && [ -x "$CNI_BIN/loopback" ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v socat >/dev/null || need+=(socat)
  [ -x /bin/busybox ] && file_is_static /bin/busybox || need+=(busybox-static)
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "--real-node: missing ${need[*]} and no apt-get: install them by hand" 4
  say "installing Debian packages: ${need[*]}"
  apt-get update -qq >/dev/null || die "--real-node: apt-get update failed (is the Debian mirror reachable?)" 4
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "--real-node: apt-get install ${need[*]} failed" 4
  # Debian starts containerd's own service where an init system runs: this node runs its own.
  (service containerd stop >/dev/null 2>&1 || true)
}

file_is_static() {  # an ELF64 file without a PT_INTERP program header (no dynamic loader)
  python3 - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    h = f.read(64)
    if h[:4] != b"\x7fELF" or h[4] != 2:
        sys.exit(1)
    phoff, = struct.unpack_from("<Q", h, 32)
    phentsize, phnum = struct.unpack_from("<HH", h, 54)
    f.seek(phoff)
    ph = f.read(phentsize * phnum)
sys.exit(1 if any(struct.unpack_from("<I", ph, i * phentsize)[0] == 3 for i in range(phnum)) else 0)
EOF
}

node_preflight() {
  [ "$(id -u)" = 0 ] || die "--real-node: needs root (the kubelet and containerd manage cgroups, mounts and iptables); run it as root" 2
  python3 - "$NODE_SUBNET" <<'EOF' || die "--node-subnet: expected an IPv4 network like 10.245.0.0/24 (prefix 16-28), got '$NODE_SUBNET'" 2
import ipaddress, sys
try:
    n = ipaddress.ip_network(sys.argv[1], strict=True)
except ValueError:
    sys.exit(1)
sys.exit(0 if n.version == 4 and 16 <= n.prefixlen <= 28 else 1)
EOF
  # This cluster's node already exists (up again, or a restart): the bridge and its route are its own.
  has_real_node && return 0
  if [ -f "$NODE_LOCK" ]; then
    local other
    other=$(cat "$NODE_LOCK")
    if [ "$other" != "$STATE" ] && [ -f "$other/pids/kubelet" ] && pid_running "$(cat "$other/pids/kubelet")"; then
      die "--real-node: a real node already runs from $other (one per machine: its iptables chains are machine-wide); stop it with INFADAPTER_CLUSTER_DIR=$other bash scripts/local-cluster.sh down" 4
    fi
  fi
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && [ ! -f "$STATE/node/bridge-created" ]; then
    die "--real-node: the interface $NODE_BRIDGE exists and this cluster did not make it; remove it (ip link del $NODE_BRIDGE) or stop the cluster that owns it" 4
  fi
  # The node's network must not overlap any address or route of this machine.
  python3 - "$NODE_SUBNET" <<'EOF' || die "--node-subnet: $NODE_SUBNET overlaps a network of this machine (see ip route); pick another, e.g. --node-subnet 10.246.0.0/24" 2
import ipaddress, subprocess, sys
want = ipaddress.ip_network(sys.argv[1])
for line in subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True).stdout.splitlines():
    dst = line.split()[0]
    if dst in ("default", "broadcast", "local", "unreachable", "multicast"):
        dst = line.split()[1] if dst != "default" else "0.0.0.0/0"
    if dst == "0.0.0.0/0":
        continue
    try:
        net = ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False)
    except ValueError:
        continue
    if net.overlaps(want) and not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
        sys.exit(1)
EOF
}

# -- images ---------------------------------------------------------------------------------------
# The pause image and a test image (busybox httpd on 8080 serving /www) as one OCI archive of one
# layer, made from Debian's busybox-static: no registry is needed. Cached by content (busybox and
# the recipe), so a new busybox or recipe makes a new archive.
node_images_archive() {
  local key out
  key=$( { sha256sum /bin/busybox | cut -d' ' -f1; echo "recipe $NODE_IMAGES_RECIPE $PAUSE_IMAGE $TEST_IMAGE"; } \
         | sha256sum | cut -c1-16)
  out=$CACHE/images/node-images-$key.tar
  if [ ! -f "$out" ]; then
    mkdir -p "$CACHE/images"
    python3 - "$out.tmp" "$PAUSE_IMAGE" "$TEST_IMAGE" <<'EOF' || die "cannot build the node images archive" 4
import hashlib, io, json, sys, tarfile, time

out, pause, test = sys.argv[1:4]

def add(tar, name, data=None, mode=0o644, link=None, kind=None):
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
    if kind == "dir":
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(ti)
    elif link:
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, link, 0o777
        tar.addfile(ti)
    else:
        ti.size, ti.mode = len(data), mode
        tar.addfile(ti, io.BytesIO(data))

layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    for d in ("bin", "tmp", "www", "etc"):
        add(t, d, kind="dir")
    add(t, "bin/busybox", open("/bin/busybox", "rb").read(), 0o755)
    for applet in ("sh", "sleep", "httpd", "cat", "ls", "echo", "wget", "nproc", "true"):
        add(t, f"bin/{applet}", link="busybox")
    add(t, "www/index.html", b"infadapter real node\n")
    add(t, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    add(t, "etc/group", b"root:x:0:\nnobody:x:65534:\n")
layer = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
blobs = {diff_id: layer}

def blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[d] = data
    return d, len(data)

# The pause container only has to hold the pod's namespaces; a shell with a TERM trap does that.
images = [
    (pause, {"Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]}),
    (test, {"Cmd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"], "ExposedPorts": {"8080/tcp": {}}}),
]
manifests = []
for name, cfg in images:
    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "WorkingDir": "/", **cfg},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    cd, cs = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": diff_id, "size": len(layer)}],
    }
    md, ms = blob(json.dumps(manifest, sort_keys=True).encode())
    manifests.append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
    })
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    add(t, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    add(t, "index.json", json.dumps(index, sort_keys=True).encode())
    add(t, "blobs", kind="dir")
    add(t, "blobs/sha256", kind="dir")
    for d, data in sorted(blobs.items()):
        add(t, "blobs/sha256/" + d.split(":")[1], data)
EOF
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

node_import_images() {
  local archive
  archive=$(node_images_archive)
  ctr_ images import --platform linux/amd64 "$archive" >/dev/null \
    || die "cannot import $archive into containerd; see $LOGS/containerd.log" 4
  # The sandbox image is never garbage-collected by the kubelet.
  ctr_ images label "$PAUSE_IMAGE" io.cri-containerd.pinned=pinned >/dev/null 2>&1 || true
  [ -z "${PROJECT_IMAGE_WANTED:-}" ] || node_import_project_image
}

# -- host state: record before, restore after ---------------------------------------------------------
node_record_host() {  # once per node (a restart of one component must not record the node's own changes)
  local d=$STATE/node s p
  [ -f "$d/sysctl.saved" ] && return 0
  : > "$d/sysctl.saved.tmp"
  for s in "${NODE_SYSCTLS[@]}"; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(cat "/proc/sys/${s//.//}")" >> "$d/sysctl.saved.tmp"
  done
  : > "$d/host-paths-created"
  for p in "${NODE_HOST_PATHS[@]}"; do
    [ -e "$p" ] || echo "$p" >> "$d/host-paths-created"
  done
  mv "$d/sysctl.saved.tmp" "$d/sysctl.saved"
}

node_restore_sysctls() {
  local f=$STATE/node/sysctl.saved line key val
  [ -f "$f" ] || return 0
  while IFS= read -r line; do
    key=${line%%=*}; val=${line#*=}
    if [ "$(cat "/proc/sys/${key//.//}" 2>/dev/null)" != "$val" ]; then
      printf '%s' "$val" > "/proc/sys/${key//.//}" 2>/dev/null || say "cannot restore $key to '$val'"
    fi
  done < "$f"
}

# -- network --------------------------------------------------------------------------------------
node_network() {
  local d=$STATE/node gw prefix
  read -r gw prefix < <(python3 -c 'import ipaddress, sys; n = ipaddress.ip_network(sys.argv[1]); print(n[1], n.prefixlen)' "$NODE_SUBNET")
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge || die "cannot create the bridge $NODE_BRIDGE" 4
    touch "$d/bridge-created"
  fi
  ip addr replace "$gw/$prefix" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  echo "$gw" > "$d/ip"
  echo "$NODE_SUBNET" > "$d/subnet"
  # Pods -> Service -> pod is forwarded by this host (kube-proxy DNATs in PREROUTING).
  echo 1 > /proc/sys/net/ipv4/ip_forward
  # Pods reach this machine and each other, nothing beyond it: drop what they send to any other interface.
  iptables -w -N INFADAPTER-NODE 2>/dev/null || iptables -w -F INFADAPTER-NODE
  iptables -w -A INFADAPTER-NODE -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  iptables -w -C FORWARD -j INFADAPTER-NODE 2>/dev/null || iptables -w -I FORWARD 1 -j INFADAPTER-NODE
  mkdir -p "$d/cni/net.d" "$d/cni/ipam"
  # bridge + host-local on the node's subnet (the bridge address is the pods' gateway), portmap for
  # hostPort, loopback for lo. No ipMasq: nothing is routed off this machine.
  cat > "$d/cni/net.d/10-infadapter.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "infadapter",
  "plugins": [
    {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam", "ranges": [[{"subnet": "$NODE_SUBNET", "gateway": "$gw"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat > "$d/cni/net.d/99-loopback.conf" <<EOF
{"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}
EOF
}

# -- containerd -----------------------------------------------------------------------------------
node_containerd() {
  local d=$STATE/node/containerd
  mkdir -p "$d/root" "$d/state" "$d/runc"
  cat > "$d/config.toml" <<EOF
# containerd 1.6 for the local cluster's real node: its own root, state and socket under the state folder.
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # These VMs withhold CAP_SYS_RESOURCE even from root: runc cannot set the negative oom_score_adj the
  # kubelet asks for (every sandbox fails with "can't get final child's PID from pipe: EOF"). Clamp it.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$d/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$STATE/node/cni/net.d"
    max_conf_num = 1
EOF
  start containerd containerd --config "$d/config.toml"
  local i
  for ((i = 0; i < 150; i++)); do
    alive containerd || die "containerd exited; see $LOGS/containerd.log" 4
    containerd_up && return 0
    sleep 0.2
  done
  die "containerd not ready after 30 s; see $LOGS/containerd.log" 4
}

# -- kubelet and kube-proxy ------------------------------------------------------------------------
node_kubeconfig() {  # node_kubeconfig CERT-NAME FILE
  kubeconfig "$1" "$2"
}

node_kubelet() {
  local d=$STATE/node ip kport hport v1=""
  ip=$(node_ip)
  kport=$(free_port); hport=$(free_port)
  echo "$kport" > "$STATE/ports/kubelet"
  mkdir -p "$d/kubelet" "$d/pod-logs"
  pki_cert "kubelet-client" "/O=system:nodes/CN=system:node:$NODE_NAME" client.ext
  printf 'subjectAltName = IP:%s, DNS:%s\nextendedKeyUsage = serverAuth\n' "$ip" "$NODE_NAME" > "$PKI/kubelet.ext"
  pki_cert "kubelet" "/CN=$NODE_NAME" kubelet.ext
  node_kubeconfig kubelet-client "$d/kubelet.kubeconfig"
  # cgroup v1 (these VMs): the kubelet refuses it since 1.35 unless told; on cgroup v2 leave the default.
  [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || v1="failCgroupV1: false"
  cat > "$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# containerd 1.6 lacks the CRI RuntimeConfig call: the kubelet falls back to its own driver, cgroupfs.
cgroupDriver: cgroupfs
$v1
containerRuntimeEndpoint: unix://$d/containerd/containerd.sock
imageServiceEndpoint: unix://$d/containerd/containerd.sock
address: $ip
port: $kport
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $hport
tlsCertFile: $PKI/kubelet.crt
tlsPrivateKeyFile: $PKI/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
podLogsDirectory: $d/pod-logs
failSwapOn: false
# No eviction or image GC for a shared development disk: this node runs a few pods, briefly.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
shutdownGracePeriod: 0s
maxPods: 110
# A lease renewed every 5 s (a quarter of it; upstream 40 s, every 10 s): the adapter calls a kubelet silent
# after one lease duration without a renewal (infadapter/backends/kubernetes/kubelets.py), 20 s here.
nodeLeaseDurationSeconds: 20
EOF
  start kubelet "$BIN/kubelet" --config "$d/kubelet.yaml" --kubeconfig "$d/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$ip" --root-dir "$d/kubelet" \
    --node-labels "infadapter.io/node=real" --v 1
}

node_kube_proxy() {
  local d=$STATE/node
  pki_cert "kube-proxy" "/CN=system:kube-proxy" client.ext
  node_kubeconfig kube-proxy "$d/kube-proxy.kubeconfig"
  cat > "$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$d/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
clusterCIDR: $NODE_SUBNET
detectLocalMode: ClusterCIDR
# NodePorts only on the node's bridge address, never on this machine's other interfaces.
nodePortAddresses: ["$(node_ip)/32"]
metricsBindAddress: 127.0.0.1:$(free_port)
healthzBindAddress: 127.0.0.1:$(free_port)
# Leave the host's conntrack and route_localnet sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
  start kube-proxy "$BIN/kube-proxy" --config "$d/kube-proxy.yaml" --v 1
}

# Pods reach the API server as in any cluster, through the `kubernetes` Service (10.96.0.1:443, which
# in-cluster clients such as the rendered adapter Deployment use): kube-proxy sends it to the node address,
# where this forwarder hands it to the API server. The API server itself listens on 127.0.0.1 only, so
# nothing off this machine reaches it; its certificate already names 10.96.0.1.
node_api_proxy() {
  local port
  port=$(cat "$STATE/ports/apiserver")
  start apiserver-proxy socat "TCP-LISTEN:$port,bind=$(node_ip),fork,reuseaddr" "TCP:127.0.0.1:$port"
  # --endpoint-reconciler-type none: the Service exists, its endpoints are ours to write.
  wait_for 30 "the kubernetes Service" api GET /api/v1/namespaces/default/services/kubernetes
  node_endpoints default kubernetes "$port"
}

node_endpoints() {  # node_endpoints NAMESPACE SERVICE PORT: the Service's one endpoint is the node address, PORT
  apply_yaml "/apis/discovery.k8s.io/v1/namespaces/$1/endpointslices/$2" <<EOF \
    || die "cannot write the endpoints of the Service $1/$2" 4
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $2
  namespace: $1
  labels: {kubernetes.io/service-name: $2, endpointslice.kubernetes.io/managed-by: local-cluster.infadapter.io}
addressType: IPv4
endpoints: [{addresses: ["$(node_ip)"], conditions: {ready: true}}]
ports: [{name: https, port: $3, protocol: TCP}]
EOF
}

node_ready() {
  api GET "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
n = json.load(sys.stdin)
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", [])) else 1)'
}

# Starts the node on a running control plane. Writes $STATE/node/ip last-but-one: has_real_node.
node_up() {
  local t0
  t0=$(date +%s)
  mkdir -p "$STATE/node"
  echo "$STATE" > "$NODE_LOCK"
  node_record_host
  node_network
  node_containerd
  node_import_images
  node_kubelet
  node_kube_proxy
  node_api_proxy
  local i
  for ((i = 0; i < 300; i++)); do
    alive kubelet || die "the kubelet exited; see $LOGS/kubelet.log" 4
    alive kube-proxy || die "kube-proxy exited; see $LOGS/kube-proxy.log" 4
    node_ready >/dev/null 2>&1 && break
    sleep 0.2
  done
  node_ready >/dev/null 2>&1 || die "the node $NODE_NAME is not Ready after 60 s; see $LOGS/kubelet.log" 4
  say "real node $NODE_NAME Ready in $(( $(date +%s) - t0 )) s: $(node_ip) on $NODE_BRIDGE, pods in $NODE_SUBNET"
}

# -- down -----------------------------------------------------------------------------------------
stop_pid() {  # stop_pid PID [SECONDS]: TERM, then KILL
  local pid=$1 secs=${2:-5} i
  pid_running "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do pid_running "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do pid_running "$pid" || return 0; sleep 0.1; done
}

kubepods_cgroups() {  # every /kubepods cgroup folder, deepest first
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$h" ] && find "$h" -depth -type d
  done
  return 0
}

kubepods_pids() {
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$h" ] && find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

our_shims() {  # the runc shims serving this node's containerd (their command line names its socket)
  local sock p
  sock=$(node_sock)
  for p in /proc/[0-9]*; do
    # (a process may exit between the glob and the read: its error is not ours to report)
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -q -- "containerd-shim.* -address $sock " && echo "${p#/proc/}"
  done
  return 0
}

our_netns() {  # /run/netns entries held by this node's pods (same inode as a pod process's netns)
  local pid ino f
  declare -A inos=()
  for pid in $(kubepods_pids); do
    ino=$(stat -Lc %i "/proc/$pid/ns/net" 2>/dev/null) && inos[$ino]=1
  done
  [ -d /run/netns ] || return 0
  for f in /run/netns/cni-*; do
    [ -e "$f" ] || continue
    ino=$(stat -Lc %i "$f" 2>/dev/null) || continue
    [ -n "${inos[$ino]:-}" ] && echo "$f"
  done
  return 0
}

node_down() {
  local pid p netns=() m i other mounts=()
  # The machine-wide parts (pods' cgroups, chains, sysctls) belong to whichever node holds the lock:
  # if another state folder's node runs now, only this folder's own processes and mounts are ours.
  other=$(cat "$NODE_LOCK" 2>/dev/null || true)
  if [ -n "$other" ] && [ "$other" != "$STATE" ] && [ -f "$other/pids/kubelet" ] \
      && pid_running "$(cat "$other/pids/kubelet")"; then
    say "the real node of $other runs now: leaving the machine-wide state (iptables, cgroups, sysctls) to it"
    for p in kubelet kube-proxy apiserver-proxy containerd; do
      pid=$(pid_of "$p"); [ -n "$pid" ] && stop_pid "$pid" 5
      rm -f "$STATE/pids/$p"
    done
    for pid in $(our_shims); do stop_pid "$pid" 2; done
    mapfile -t mounts < <(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    return 0
  fi
  # 1. No one restarts anything: kubelet and kube-proxy first (and the pods' way to the API server).
  for p in kubelet kube-proxy apiserver-proxy; do
    pid=$(pid_of "$p"); [ -n "$pid" ] && stop_pid "$pid" 5
    rm -f "$STATE/pids/$p"
  done
  # 2. The pods' network namespaces (found through their processes, before those go), then the pods.
  mapfile -t netns < <(our_netns)
  for ((i = 0; i < 3; i++)); do
    for pid in $(kubepods_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2
    [ -z "$(kubepods_pids)" ] && break
  done
  # 3. containerd, then the shims it leaves behind (they outlive it by design).
  pid=$(pid_of containerd); [ -n "$pid" ] && stop_pid "$pid" 5
  rm -f "$STATE/pids/containerd"
  for pid in $(our_shims); do stop_pid "$pid" 2; done
  # 4. Mounts: everything under the state folder (deepest first) and the pods' network namespaces.
  for m in "${netns[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; rm -f "$m"; done
  for ((i = 0; i < 3; i++)); do
    mapfile -t mounts < <(awk -v s="$STATE/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    [ ${#mounts[@]} -eq 0 ] && break
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
  # 5. Network: veths left on the bridge, the bridge, then the chains (kube-proxy's own cleanup first).
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    for p in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$p" 2>/dev/null || true
    done
    [ -f "$STATE/node/bridge-created" ] && ip link del "$NODE_BRIDGE" 2>/dev/null
  fi
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  node_sweep_chains
  # 6. cgroups, sysctls, host paths this node created.
  for m in $(kubepods_cgroups); do rmdir "$m" 2>/dev/null || true; done
  node_restore_sysctls
  if [ -f "$STATE/node/host-paths-created" ]; then
    while IFS= read -r p; do
      [ -e "$p" ] || continue
      # Never delete through a mount that is still there.
      if awk -v s="$p/" 'index($5, s) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo; then
        say "left $p: something is still mounted under it"
      else
        rm -rf "$p"
      fi
    done < "$STATE/node/host-paths-created"
  fi
  # /var/log/containers existed before: remove only the links into this node's log folder.
  if [ -d /var/log/containers ]; then
    for p in /var/log/containers/*.log; do
      [ -L "$p" ] && case "$(readlink "$p")" in "$STATE/"*) rm -f "$p" ;; esac
    done
  fi
  [ "$(cat "$NODE_LOCK" 2>/dev/null)" = "$STATE" ] && rm -f "$NODE_LOCK"
  return 0
}

# Removes every KUBE-* and CNI-* chain (and the rules that jump to them) plus INFADAPTER-NODE, in the
# filter, nat and mangle tables, IPv4 and IPv6: the kubelet's KUBE-FIREWALL drops non-loopback packets to
# 127.0.0.0/8 and must not outlive the node.
node_sweep_chains() {
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt" -w -t "$table" -S >/dev/null 2>&1 || continue
      # Rules of other chains that jump to ours.
      while IFS= read -r rule; do
        eval "$ipt -w -t $table -D ${rule#-A }" 2>/dev/null || true
      done < <("$ipt" -w -t "$table" -S | grep -E '^-A ' | grep -Ev '^-A (KUBE-|CNI-|INFADAPTER-NODE)' \
               | grep -E -- '-j (KUBE-|CNI-|INFADAPTER-NODE)')
      mapfile -t chains < <("$ipt" -w -t "$table" -S | awk '$1 == "-N" && ($2 ~ /^(KUBE-|CNI-)/ || $2 == "INFADAPTER-NODE") {print $2}')
      for chain in "${chains[@]}"; do "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in "${chains[@]}"; do "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

node_status() {
  local pid ver rc=0 ready
  if ! has_real_node; then return 0; fi
  pid=$(pid_of containerd)
  if alive containerd; then
    ver=$(ctr --address "$(node_sock)" --connect-timeout 2s --timeout 5s version 2>/dev/null | awk '/Server:/ {s = 1} s && /Version:/ {print $2; exit}')
    echo "containerd: running (pid $pid), version ${ver:-?}, socket $(node_sock)"
  else
    echo "containerd: stopped"; rc=3
  fi
  pid=$(pid_of kubelet)
  if alive kubelet; then
    ready=$(node_ready 2>/dev/null && echo Ready || echo NotReady)
    echo "kubelet: running (pid $pid), $("$BIN/kubelet" --version 2>/dev/null), node $NODE_NAME $ready at $(node_ip):$(cat "$STATE/ports/kubelet")"
    [ "$ready" = Ready ] || rc=3
  else
    echo "kubelet: stopped"; rc=3
  fi
  pid=$(pid_of kube-proxy)
  if alive kube-proxy; then echo "kube-proxy: running (pid $pid), iptables mode"; else echo "kube-proxy: stopped"; rc=3; fi
  pid=$(pid_of apiserver-proxy)
  if alive apiserver-proxy; then
    echo "apiserver-proxy: running (pid $pid), pods reach the API server at $(node_ip):$(cat "$STATE/ports/apiserver") (Service kubernetes)"
  else
    echo "apiserver-proxy: stopped"; rc=3
  fi
  return $rc
}

# The project image (Containerfile, scripts/build-image.sh) on the node, for pods that run our
# `serve-model`, `dispatch` or `adapt`: built with buildah when its sources changed, exported as an OCI
# archive cached under a hash of those sources, imported into the node's containerd (about 30 s for
# ~460 MB, 155 MB as an archive). Only with `up --real-node --project-image`: it needs buildah and debootstrap (installed
# when missing), and the first build takes ~2 minutes.
PROJECT_IMAGE=localhost/infadapter:0.1.0
# The same image under the name the default render config gives it (`image: infadapter`, `tag: 0.1.0`, which
# containerd reads as docker.io/library/infadapter:0.1.0), so rendered manifests run on the node unchanged.
PROJECT_IMAGE_ALIAS=docker.io/library/infadapter:0.1.0

project_image_key() {  # a hash of every file the image is built from
  (cd "$ROOT" && { echo "$PROJECT_IMAGE"; find Containerfile requirements.txt cli.py pyproject.toml \
      scripts/build-image.sh infadapter templates profiles -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
      -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
}

project_image_archive() {  # the cached OCI archive of the project image, built first when its sources changed
  local key out log
  # One build at a time: test.sh builds it ahead in the background while a test's `up` may ask for it.
  build_lock image
  key=$(project_image_key)
  out=$CACHE/images/infadapter-$key.oci.tar
  log=$CACHE/images/build-image.log
  if [ ! -f "$out" ]; then
    local need=()
    command -v buildah >/dev/null || need+=(buildah)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    if [ ${#need[@]} -gt 0 ]; then
      say "installing Debian packages: ${need[*]}"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "--project-image: apt-get install ${need[*]} failed" 4
    fi
    say "building the project image $PROJECT_IMAGE (sources changed or first time; ~2 minutes)"
    mkdir -p "$CACHE/images"
    bash "$ROOT/scripts/build-image.sh" "$PROJECT_IMAGE" > "$log" 2>&1 \
      || die "--project-image: scripts/build-image.sh failed; see $log" 4
    rm -f "$out.tmp"
    buildah push -q "$PROJECT_IMAGE" "oci-archive:$out.tmp:$PROJECT_IMAGE" >> "$log" 2>&1 \
      || die "--project-image: buildah push to an OCI archive failed; see $log" 4
    mv "$out.tmp" "$out"
    # Older archives of the image are of no further use.
    find "$CACHE/images" -name 'infadapter-*.oci.tar' ! -name "infadapter-$key.oci.tar" -delete
  fi
  echo "$out"
}

project_image_present() {  # true when not asked for, or already in the node's containerd
  [ -z "$PROJECT_IMAGE_WANTED" ] && return 0
  has_real_node || return 0
  local names
  names=$(ctr_ images ls -q 2>/dev/null)
  grep -qx "$PROJECT_IMAGE" <<<"$names" && grep -qx "$PROJECT_IMAGE_ALIAS" <<<"$names"
}

node_import_project_image() {
  local archive t0
  t0=$(date +%s)
  archive=$(project_image_archive)
  # buildah names the manifest with org.opencontainers.image.ref.name only; --base-name lets ctr keep
  # that full reference as the image's name.
  ctr_ images import --platform linux/amd64 --base-name "${PROJECT_IMAGE%:*}" "$archive" >/dev/null \
    || die "cannot import $archive into containerd; see $LOGS/containerd.log" 4
  # Read whole before grep -q: with pipefail, grep quitting at its match fails ctr with SIGPIPE.
  local names
  names=$(ctr_ images ls -q)
  grep -qx "$PROJECT_IMAGE" <<<"$names" \
    || die "imported $archive but containerd has no image named $PROJECT_IMAGE (it has: $(tr '\n' ' ' <<<"$names"))" 4
  ctr_ images tag --force "$PROJECT_IMAGE" "$PROJECT_IMAGE_ALIAS" >/dev/null \
    || die "cannot tag $PROJECT_IMAGE as $PROJECT_IMAGE_ALIAS in containerd; see $LOGS/containerd.log" 4
  say "project image $PROJECT_IMAGE on the node in $(( $(date +%s) - t0 )) s"
}
