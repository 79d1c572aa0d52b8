#!/usr/bin/env bash
# A local Kubernetes control plane for the kubernetes backend: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler (Kubernetes v1.36.3, built from the Go module proxy with
# hack/k8s/go.mod) and kwok v0.8.0 faking the nodes and the kubelets, all on 127.0.0.1; with
# --real-node also one real node (kubelet + kube-proxy v1.36.3, containerd + runc + CNI from Debian).
#
#   bash scripts/local-cluster.sh up [--nodes N] [--node-cpu C] [--node-memory M] [--ready-delay D]
#   bash scripts/local-cluster.sh up --real-node [--node-subnet CIDR] [--nodes N] [--project-image]  # root
#   bash scripts/local-cluster.sh status
#   bash scripts/local-cluster.sh down
#   bash scripts/local-cluster.sh build [--real-node]  # only build (or find) the binaries
#   bash scripts/local-cluster.sh build-image  # only build (or find) the project image's OCI archive (root)
#   bash scripts/local-cluster.sh gateway-api  # install the Gateway API CRDs (standard channel) into it
#   bash scripts/local-cluster.sh autoscalers [--speedup S]  # metrics-server, the upstream VPA and HPA (real node)
#   bash scripts/local-cluster.sh restart COMPONENT  # e.g. vpa-recommender (same command line, same port)
#
# `up` builds the binaries once into a per-version cache (reused when present), starts the processes
# with generated PKI on free ports, creates fake nodes (default 4 of 8 CPU and 32 GiB), prepares the
# namespace `infadapter` (the model-store claim bound to a local volume, the default ServiceAccount),
# installs the kwok stages that emulate readiness and in-place resize, waits until workloads can be
# created, and prints the admin kubeconfig path as the LAST line of stdout. A running cluster is
# reused; one whose component died gets that component restarted with its recorded command line (same
# port, same kubeconfig). `--real-node` adds the node `real-node` (this machine's CPUs; no kwok nodes
# unless --nodes is given, and those are tainted infadapter.io/fake-node:NoSchedule) on the bridge
# infadapter0 (--node-subnet, default 10.245.0.0/24); scripts/lib/real-node.sh lists what it changes
# on the host; `--project-image` also loads the project image (scripts/build-image.sh) onto the node.
# `down` stops what `up` started, by PID, undoes the node's host changes and removes the state folder.
#
# Environment (each also a flag of `up`):
#   INFADAPTER_CLUSTER_DIR  state folder [~/.cache/infadapter/cluster]
#   INFADAPTER_K8S_CACHE    binary cache [~/.cache/infadapter/k8s-v1.36.3]
#   INFADAPTER_CLUSTER_PORT apiserver port [a free one]
# Exit codes: 0 ok, 2 bad usage, 3 (status) something is not running, 4 a component failed to start
# (its log is named).
set -euo pipefail

K8S_VERSION=v1.36.3
KWOK_VERSION=v0.8.0
GATEWAY_API_VERSION=v1.6.3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
STATE=${INFADAPTER_CLUSTER_DIR:-$HOME/.cache/infadapter/cluster}
CACHE=${INFADAPTER_K8S_CACHE:-$HOME/.cache/infadapter/k8s-$K8S_VERSION}
NODES=
NODE_CPU=8
NODE_MEMORY=32Gi
READY_DELAY=1s
API_PORT=${INFADAPTER_CLUSTER_PORT:-}
NAMESPACE=infadapter
REAL_NODE=
NODE_SUBNET=10.245.0.0/24
PROJECT_IMAGE_WANTED=
SPEEDUP=1

say() { echo "local-cluster: $*" >&2; }
die() { echo "local-cluster: $1" >&2; exit "${2:-4}"; }

usage() {
  # The header comment, whatever its length: every line from the second up to the first that is not a comment.
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
  exit 2
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
ARG=
if [ "$cmd" = restart ] && [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then ARG=$1; shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --node-cpu) NODE_CPU=$2; shift 2 ;;
    --node-memory) NODE_MEMORY=$2; shift 2 ;;
    --ready-delay) READY_DELAY=$2; shift 2 ;;
    --state-dir) STATE=$2; shift 2 ;;
    --cache-dir) CACHE=$2; shift 2 ;;
    --port) API_PORT=$2; shift 2 ;;
    --real-node) REAL_NODE=1; shift ;;
    --project-image) PROJECT_IMAGE_WANTED=1; shift ;;
    --node-subnet) NODE_SUBNET=$2; shift 2 ;;
    --speedup) SPEEDUP=$2; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see: bash scripts/local-cluster.sh --help)" 2 ;;
  esac
done
# kwok nodes: 4 by default; with --real-node none unless asked (then tainted: the real node serves).
if [ -z "$NODES" ]; then
  if [ -n "$REAL_NODE" ]; then NODES=0; else NODES=4; fi
fi
[ -z "$PROJECT_IMAGE_WANTED" ] || [ -n "$REAL_NODE" ] \
  || die "--project-image: only with --real-node (kwok nodes run no containers)" 2
if [ -n "$REAL_NODE" ]; then
  [[ "$NODES" =~ ^[0-9]+$ ]] || die "--nodes: expected a whole number >= 0 with --real-node, got '$NODES'" 2
else
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes: expected a whole number >= 1, got '$NODES'" 2
fi
[[ "$NODE_CPU" =~ ^[1-9][0-9]*$ ]] || die "--node-cpu: expected whole cores >= 1, got '$NODE_CPU'" 2
[[ "$NODE_MEMORY" =~ ^[0-9]+(Ki|Mi|Gi|Ti)$ ]] || die "--node-memory: expected a quantity like 32Gi, got '$NODE_MEMORY'" 2
[[ "$READY_DELAY" =~ ^([0-9]+(ms|s|m)|load-time)$ ]] || die "--ready-delay: expected a duration like 500ms or 2s, or load-time, got '$READY_DELAY'" 2
[ -z "$API_PORT" ] || [[ "$API_PORT" =~ ^[0-9]+$ ]] || die "--port: expected a port number, got '$API_PORT'" 2

BIN=$CACHE/bin
PKI=$STATE/pki
LOGS=$STATE/logs
KUBECONFIG_OUT=$STATE/admin.kubeconfig
CONTROL_PLANE=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
COMPONENTS=("${CONTROL_PLANE[@]}")
# shellcheck source=scripts/lib/real-node.sh
. "$ROOT/scripts/lib/real-node.sh"
# shellcheck source=scripts/lib/autoscalers.sh
. "$ROOT/scripts/lib/autoscalers.sh"
# With a real node its components are part of the cluster (status, restart, down); so are the autoscalers.
[ -f "$STATE/node/ip" ] && COMPONENTS+=("${NODE_COMPONENTS[@]}")
[ -f "$STATE/autoscalers" ] && COMPONENTS+=("${AUTOSCALER_COMPONENTS[@]}")

# -- build --------------------------------------------------------------------------------------
k8s_ldflags() {  # without the version stamps the binaries report v0.0.0
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=36 -X $pkg.gitTreeState=clean"
  done
  echo "$ld"
}

binaries_ok() {
  local b
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    [ -x "$BIN/$b" ] || return 1
  done
  "$BIN/kube-apiserver" --version 2>/dev/null | grep -q "Kubernetes $K8S_VERSION" || return 1
  "$BIN/kwok" --version 2>/dev/null | grep -q "${KWOK_VERSION#v}" || return 1
}

# One build at a time per cache and part: scripts/test.sh builds in the background while the first tests run,
# and a cluster test that needs the binaries meanwhile waits here for that build instead of starting a second
# one. The control plane and the real node's binaries have a lock each, so that the kwok tests start as soon
# as the control plane is built while the kubelet and kube-proxy build beside them.
build_lock() {  # build_lock [node|autoscalers|image]
  local part=${1:-control-plane} fd=8 file=$CACHE.lock
  if [ "$part" = node ]; then fd=9; file=$CACHE.node.lock; fi
  if [ "$part" = autoscalers ]; then fd=7; file=$CACHE.autoscalers.lock; fi
  if [ "$part" = image ]; then fd=6; file=$CACHE.image.lock; fi
  [ -z "${BUILD_LOCKED_FDS:-}" ] || case " $BUILD_LOCKED_FDS " in *" $fd "*) return 0 ;; esac
  mkdir -p "$(dirname "$CACHE")"
  eval "exec $fd>\"\$file\""
  if ! flock -n "$fd"; then
    say "waiting for the build running beside this one (lock: $file)"
    flock "$fd"
  fi
  BUILD_LOCKED_FDS="${BUILD_LOCKED_FDS:-} $fd"
}

# Before starting daemons: they would inherit the locks' descriptors and hold them for as long as they run.
build_unlock() {
  local fd
  for fd in ${BUILD_LOCKED_FDS:-}; do eval "exec $fd>&-"; done
  BUILD_LOCKED_FDS=
}

build_dir() {  # the one check that Go is there; prints a fresh folder in the cache for one build's output
  [ -x "$GO" ] || die "go not found: install Go >= 1.26 (https://go.dev/dl/) or set GO=/path/to/go"
  mkdir -p "$BIN"
  mktemp -d "$CACHE/build.XXXXXX"
}

build() {
  build_lock
  if binaries_ok; then
    say "binaries: $BIN (cached)"
    return 0
  fi
  local tmp t0 ld
  tmp=$(build_dir)
  t0=$(date +%s)
  ld=$(k8s_ldflags)
  say "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler), etcd and kwok"
  say "$KWOK_VERSION from the Go module proxy into $BIN: about 10 minutes on 2 cores the first time, seconds with warm Go caches"
  # One build: kwok is required by hack/k8s/go.mod, so it compiles against the control plane's client-go and
  # shares those packages (built on its own, from its own go.mod, it recompiled ~600 of them: 4-5 minutes).
  # -x lists each command it runs: counted, so the first build shows progress on stderr.
  if ! (cd "$ROOT/hack/k8s" && GOFLAGS=-mod=readonly "$GO" build -trimpath -ldflags "$ld" -o "$tmp/" -x \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler go.etcd.io/etcd/server/v3 sigs.k8s.io/kwok/cmd/kwok 2>&1) \
      | progress "$tmp/build.log" "$t0"; then
    tail -5 "$tmp/build.log" >&2
    die "go build failed; see $tmp/build.log" 4
  fi
  # etcd's main package is go.etcd.io/etcd/server/v3, so go names the binary "v3" or "server".
  for cand in "$tmp/v3" "$tmp/server"; do [ -x "$cand" ] && mv "$cand" "$tmp/etcd"; done
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    [ -x "$tmp/$b" ] || die "build produced no $b; see $tmp/build.log" 4
    mv "$tmp/$b" "$BIN/$b"
  done
  rm -rf "$tmp"
  binaries_ok || die "the built binaries do not report $K8S_VERSION / kwok $KWOK_VERSION" 4
  say "built in $(( $(date +%s) - t0 )) s"
}

# Reads `go build -x` output; prints one progress line every 15 s (a count of compiled packages).
progress() {
  local log=$1 t0=$2 n=0 last line
  last=$(date +%s)
  : > "$log"
  while IFS= read -r line; do
    echo "$line" >> "$log"
    case "$line" in *"/compile "*|*"/compile -"*) n=$((n + 1)) ;; esac
    if [ $(( $(date +%s) - last )) -ge 15 ]; then
      last=$(date +%s)
      echo "local-cluster: ... $(( last - t0 )) s, $n packages compiled" >&2
    fi
  done
}

# -- helpers --------------------------------------------------------------------------------------
# Below the ephemeral range, so a restart on the same port cannot lose it to a client's source port.
free_port() { python3 -I "$ROOT/infadapter/ports.py"; }

pid_of() { [ -f "$STATE/pids/$1" ] && cat "$STATE/pids/$1" || true; }

# Running, not a zombie: a stopped component's parent (this script) is gone, and PID 1 on these VMs
# reaps orphans late, so `kill -0` alone would call a dead process alive for seconds.
pid_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# SIGKILL turns a Go server's thread-group leader into a zombie before its other threads have exited, and
# its files (the listening socket) close only with its last thread: a restart on the same port waits for
# every thread (CI saw "address already in use" from a kube-apiserver restarted within that window).
wait_exited() {
  local t stat busy i
  for ((i = 0; i < 100; i++)); do
    busy=0
    for t in /proc/"$1"/task/*/stat; do
      stat=$(cat "$t" 2>/dev/null) || continue
      stat=${stat##*) }
      case "${stat%% *}" in Z|X) ;; *) busy=1 ;; esac
    done
    [ "$busy" = 0 ] && return 0
    sleep 0.1
  done
}

alive() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && pid_running "$pid"
}

api() {  # api METHOD PATH [BODY-FILE|-] [CONTENT-TYPE]: admin call, prints the body, fails on >= 400
  local method=$1 path=$2 data=${3:-} ctype=${4:-application/json} port
  port=$(cat "$STATE/ports/apiserver")
  local args=(-sS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" -X "$method"
              --max-time 10 -H "Content-Type: $ctype" -H "Accept: application/json" -w '\n%{http_code}')
  [ -n "$data" ] && args+=(--data-binary "@$data")
  local out code
  out=$(curl "${args[@]}" "https://127.0.0.1:$port$path") || return 1
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  printf '%s\n' "$out"
  [ "$code" -lt 400 ]
}

apply_yaml() {  # server-side apply of one object given on stdin; $1 = its API path
  local f
  f=$(mktemp)
  cat > "$f"
  api PATCH "$1?fieldManager=local-cluster&force=true" "$f" application/apply-patch+yaml >/dev/null \
    || { rm -f "$f"; return 1; }
  rm -f "$f"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what not ready after ${secs}s; see $LOGS/" 4
}

start() {  # start NAME COMMAND...: in the background, own session; PID and command line recorded
  local name=$1 old
  shift
  # A leader that is a zombie is this name's last instance, dying (a reused PID would not be a zombie).
  old=$(pid_of "$name")
  if [ -n "$old" ] && [ -d "/proc/$old" ] && ! pid_running "$old"; then wait_exited "$old"; fi
  mkdir -p "$STATE/cmd"
  printf '%s\0' "$@" > "$STATE/cmd/$name"
  setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name"
}

# -- PKI -----------------------------------------------------------------------------------------
pki_cert() {  # pki_cert NAME SUBJECT EXT-FILE [CA]: a key and a certificate signed by CA (the cluster's), made once
  [ -f "$PKI/$1.crt" ] && return 0
  local ca=${4:-ca}
  (
    cd "$PKI"
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -out "$1.crt" -days 3650 \
      -extfile "$3" 2>/dev/null
    rm -f "$1.csr"
    chmod 600 "$1.key"
  )
}

pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    [ -f ca.crt ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=infadapter-local-ca" 2>/dev/null
    # The aggregation layer's (metrics.k8s.io for the upstream HPA and VPA): the API server proxies to an
    # extension API server as front-proxy-client, a certificate of this CA that only that server trusts.
    [ -f front-proxy-ca.crt ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key \
      -out front-proxy-ca.crt -days 3650 -subj "/CN=infadapter-front-proxy-ca" 2>/dev/null
    cat > serving.ext <<EOF
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, IP:10.96.0.1
extendedKeyUsage = serverAuth
EOF
    echo "extendedKeyUsage = clientAuth" > client.ext
    if [ ! -f sa.key ]; then
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    fi
    chmod 600 ./*.key
  )
  pki_cert apiserver "/CN=kube-apiserver" serving.ext
  pki_cert admin "/O=system:masters/CN=infadapter-admin" client.ext
  pki_cert controller-manager "/CN=system:kube-controller-manager" client.ext
  pki_cert scheduler "/CN=system:kube-scheduler" client.ext
  # The API server's identity towards kubelets (logs, exec, port-forward on a real node).
  pki_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client.ext
  pki_cert front-proxy-client "/CN=front-proxy-client" client.ext front-proxy-ca
}

kubeconfig() {  # kubeconfig USER FILE
  local port
  port=$(cat "$STATE/ports/apiserver")
  cat > "$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: infadapter-local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$1.crt
    client-key: $PKI/$1.key
contexts:
- name: infadapter-local
  context: {cluster: infadapter-local, user: $1, namespace: $NAMESPACE}
current-context: infadapter-local
EOF
  chmod 600 "$2"
}

# -- up -------------------------------------------------------------------------------------------
running() {
  local c
  [ -f "$STATE/ports/apiserver" ] || return 1
  for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
  readyz
}

readyz() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" "https://127.0.0.1:$(cat "$STATE/ports/apiserver")/readyz" >/dev/null
}

component_ready() {  # a restarted component serves again
  case "$1" in
    etcd) curl -sf --max-time 2 "http://127.0.0.1:$(cat "$STATE/ports/etcd")/health" >/dev/null ;;
    kube-apiserver) readyz ;;
    containerd) containerd_up ;;
    kubelet) node_ready >/dev/null 2>&1 ;;
    *) sleep 0.5; alive "$1" ;;
  esac
}

# Restarts every dead component with the command line it was started with: same ports, same PKI, so
# kubeconfigs that point at this cluster stay valid (etcd keeps its data folder).
revive() {
  local c i argv
  for c in "${COMPONENTS[@]}"; do
    alive "$c" && continue
    # A node that came up before the forwarder existed gets it now.
    if [ "$c" = apiserver-proxy ] && [ ! -f "$STATE/cmd/$c" ]; then node_api_proxy; continue; fi
    [ -f "$STATE/cmd/$c" ] || die "$c is not running and its command line was not recorded ($STATE/cmd/$c): run 'bash scripts/local-cluster.sh down', then up" 4
    say "$c is not running: restarting it (same command line, same port)"
    mapfile -d '' -t argv < "$STATE/cmd/$c"
    start "$c" "${argv[@]}"
    for ((i = 0; i < 300; i++)); do
      alive "$c" || die "$c exited again after a restart; see $LOGS/$c.log (is its port taken?), which ends:
$(tail -n 5 "$LOGS/$c.log" 2>/dev/null | cut -c1-300)" 4
      component_ready "$c" && break
      sleep 0.2
    done
    component_ready "$c" || die "$c restarted but not ready after 60 s; see $LOGS/$c.log" 4
  done
}

up() {
  if [ -n "$REAL_NODE" ]; then
    node_preflight
    node_packages
  fi
  if running && { [ -z "$REAL_NODE" ] || has_real_node; }; then
    project_image_present || node_import_project_image
    say "already running (state $STATE)"
    echo "$KUBECONFIG_OUT"
    return 0
  fi
  if [ -f "$STATE/ports/apiserver" ] && [ -d "$STATE/cmd" ]; then
    revive
    if [ -n "$REAL_NODE" ] && ! has_real_node; then
      # A real node added to a running cluster: its kwok nodes get the taint, the node joins.
      build_node
      build_unlock
      trap 'rc=$?; [ $rc -eq 0 ] || { say "up failed: stopping the node it started"; node_down; }' EXIT
      trap 'exit 130' INT TERM
      taint_kwok_nodes
      node_up
      COMPONENTS+=("${NODE_COMPONENTS[@]}")
      trap - EXIT INT TERM
    fi
    project_image_present || node_import_project_image
    say "running (state $STATE)"
    echo "$KUBECONFIG_OUT"
    return 0
  fi
  if [ -d "$STATE/pids" ]; then
    say "a previous cluster in $STATE is incomplete: stopping it first"
    down_quiet
  fi
  command -v openssl >/dev/null || die "openssl not found: apt-get install openssl" 4
  command -v curl >/dev/null || die "curl not found: apt-get install curl" 4
  build
  [ -z "$REAL_NODE" ] || build_node
  build_unlock
  mkdir -p "$STATE"/{pids,ports,logs,etcd,volumes/models}
  # A failure from here on stops whatever this `up` started (by PID) before exiting; so does Ctrl-C or a
  # kill (exit turns the signal into the EXIT trap).
  trap 'status=$?; [ $status -eq 0 ] || { say "up failed: stopping what it started"; down_quiet; }' EXIT
  trap 'exit 130' INT TERM
  pki
  local etcd_port etcd_peer kcm_port sched_port kwok_port t0
  t0=$(date +%s)
  API_PORT=${API_PORT:-$(free_port)}
  etcd_port=$(free_port); etcd_peer=$(free_port); kcm_port=$(free_port); sched_port=$(free_port); kwok_port=$(free_port)
  echo "$API_PORT" > "$STATE/ports/apiserver"
  echo "$etcd_port" > "$STATE/ports/etcd"
  kubeconfig admin "$KUBECONFIG_OUT"
  kubeconfig controller-manager "$STATE/controller-manager.kubeconfig"
  kubeconfig scheduler "$STATE/scheduler.kubeconfig"

  start etcd "$BIN/etcd" --name local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --quota-backend-bytes 1073741824
  wait_for 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --endpoint-reconciler-type none --service-cluster-ip-range 10.96.0.0/16 \
    --enable-priority-and-fairness=false --profiling=false \
    --kubelet-preferred-address-types InternalIP --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true
  wait_for 60 kube-apiserver readyz

  # --node-monitor-grace-period 2m (default 50 s): one kwok process heartbeats every fake node, and on a busy
  # 2-core machine (the test suite's workers) it fell more than 50 s behind after an API server restart, so the
  # controller marked every kwok node NotReady and their pods not ready: an artifact of the fake nodes, which
  # the adapter then rightly saw as servers that stopped serving.
  start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" --profiling=false \
    --pvclaimbinder-sync-period 1s --node-monitor-grace-period 2m
  # Bin packing (MostAllocated) as autoscaled clusters are usually run: pods fill nodes before new
  # ones are used, so a whole node stays free for a large pod (make-before-break needs that room).
  cat > "$STATE/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$STATE/scheduler.kubeconfig"}
leaderElection: {leaderElect: false}
profiles:
- schedulerName: default-scheduler
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources: [{name: cpu, weight: 1}, {name: memory, weight: 1}]
  # No default spreading of a ReplicaSet's pods over nodes: it would undo the packing.
  - name: PodTopologySpread
    args: {defaultingType: List, defaultConstraints: []}
EOF
  start kube-scheduler "$BIN/kube-scheduler" --config "$STATE/scheduler.yaml" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --profiling=false

  local expr ms=0
  case "$READY_DELAY" in
    load-time)
      # TF Serving's load time from the profile (the pod annotation infadapter.io/load-time-s).
      expr='.metadata.annotations["pod-ready.stage.kwok.x-k8s.io/delay"] // (.metadata.annotations["infadapter.io/load-time-s"] | if . then . + "s" else null end)' ;;
    *ms) ms=${READY_DELAY%ms}; expr='.metadata.annotations["pod-ready.stage.kwok.x-k8s.io/delay"]' ;;
    *s) ms=$(( ${READY_DELAY%s} * 1000 )); expr='.metadata.annotations["pod-ready.stage.kwok.x-k8s.io/delay"]' ;;
    *m) ms=$(( ${READY_DELAY%m} * 60000 )); expr='.metadata.annotations["pod-ready.stage.kwok.x-k8s.io/delay"]' ;;
  esac
  sed -e "s#@READY_DELAY_MS@#$ms#" -e "s#@READY_DELAY_EXPR@#$expr#" "$ROOT/hack/k8s/kwok-stages.yaml.in" \
    > "$STATE/kwok-stages.yaml"
  # HOME and KWOK_WORKDIR point into the state folder: kwok would otherwise also load ~/.kwok/kwok.yaml.
  start kwok env HOME="$STATE" KWOK_WORKDIR="$STATE/kwok" "$BIN/kwok" --kubeconfig "$KUBECONFIG_OUT" \
    --config "$STATE/kwok-stages.yaml" --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --server-address "127.0.0.1:$kwok_port" --node-lease-duration-seconds 40 --cidr 10.244.0.1/16 \
    --node-ip 127.0.0.1

  local i
  for ((i = 0; i < NODES; i++)); do
    apply_yaml "/api/v1/nodes/kwok-node-$i" <<EOF || die "cannot create node kwok-node-$i; see $LOGS/kube-apiserver.log"
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
spec:
  taints: $(kwok_taints)
status:
  allocatable: {cpu: "$NODE_CPU", memory: "$NODE_MEMORY", pods: "110"}
  capacity: {cpu: "$NODE_CPU", memory: "$NODE_MEMORY", pods: "110"}
EOF
  done
  prepare_namespace
  wait_for 60 "the default ServiceAccount of namespace $NAMESPACE" \
    api GET "/api/v1/namespaces/$NAMESPACE/serviceaccounts/default"
  wait_for 60 "the nodes (kwok)" nodes_ready
  wait_for 60 "the model-store claim" claim_bound
  if [ -n "$REAL_NODE" ]; then
    node_up
    COMPONENTS+=("${NODE_COMPONENTS[@]}")
  fi
  for c in "${COMPONENTS[@]}"; do alive "$c" || die "$c exited; see $LOGS/$c.log" 4; done
  say "up in $(( $(date +%s) - t0 )) s: API https://127.0.0.1:$API_PORT, $NODES kwok nodes of $NODE_CPU CPU / $NODE_MEMORY${REAL_NODE:+ (tainted), the real node $NODE_NAME}, namespace $NAMESPACE"
  trap - EXIT INT TERM
  echo "$KUBECONFIG_OUT"
}

# With a real node, the kwok nodes only take pods that tolerate infadapter.io/fake-node: the variant
# pods of the local profile land on the real node.
kwok_taints() {
  if [ -n "$REAL_NODE" ]; then
    echo '[{key: infadapter.io/fake-node, value: "true", effect: NoSchedule}]'
  else
    echo '[]'
  fi
}

taint_kwok_nodes() {
  local n
  for n in $(api GET "/api/v1/nodes?labelSelector=type%3Dkwok" | python3 -c '
import json, sys
print(" ".join(n["metadata"]["name"] for n in json.load(sys.stdin)["items"]))'); do
    apply_yaml "/api/v1/nodes/$n" <<EOF || die "cannot taint the kwok node $n"
apiVersion: v1
kind: Node
metadata: {name: $n}
spec:
  taints: $(kwok_taints)
EOF
  done
}

nodes_ready() {
  local n
  n=$(api GET "/api/v1/nodes?labelSelector=type%3Dkwok" | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
print(sum(1 for n in items for c in n.get("status", {}).get("conditions", []) if c["type"] == "Ready" and c["status"] == "True"))')
  [ "$n" -ge "$NODES" ]
}

claim_bound() {
  api GET "/api/v1/namespaces/$NAMESPACE/persistentvolumeclaims/infadapter-models" | grep -q '"phase": *"Bound"'
}

prepare_namespace() {
  apply_yaml "/api/v1/namespaces/$NAMESPACE" <<EOF || die "cannot create namespace $NAMESPACE"
apiVersion: v1
kind: Namespace
metadata: {name: $NAMESPACE}
EOF
  # The default render config mounts the claim infadapter-models (model_store.pvc): a local volume
  # pre-bound to it (no provisioner runs here).
  apply_yaml "/api/v1/persistentvolumes/infadapter-models-local" <<EOF || die "cannot create the model-store volume"
apiVersion: v1
kind: PersistentVolume
metadata: {name: infadapter-models-local, labels: {app.kubernetes.io/part-of: infadapter}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadOnlyMany, ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $STATE/volumes/models, type: DirectoryOrCreate}
  claimRef: {namespace: $NAMESPACE, name: infadapter-models}
EOF
  apply_yaml "/api/v1/namespaces/$NAMESPACE/persistentvolumeclaims/infadapter-models" <<EOF || die "cannot create the model-store claim"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: infadapter-models, namespace: $NAMESPACE}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: infadapter-models-local
  resources: {requests: {storage: 1Gi}}
EOF
}

# -- down / status -----------------------------------------------------------------------------
down_quiet() {
  local c pid i left pids=()
  for c in "${CONTROL_PLANE[@]}" "${NODE_COMPONENTS[@]}" "${AUTOSCALER_COMPONENTS[@]}"; do
    pid=$(pid_of "$c")
    [ -z "$pid" ] || pids+=("$pid")
  done
  autoscalers_stop
  # The node first (while the control plane's binaries and state are there), then the control plane.
  [ -d "$STATE/node" ] && node_down
  for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid=$(pid_of "$c")
    [ -n "$pid" ] || continue
    if pid_running "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do pid_running "$pid" || break; sleep 0.1; done
      if pid_running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$STATE/pids/$c"
  done
  # Their parent is gone, so PID 1 reaps them (within ~2 s on these VMs): wait, so that no entry of
  # theirs is left in the process table when down returns.
  for ((i = 0; i < 50; i++)); do
    left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  return 0
}

down() {
  if [ ! -d "$STATE" ]; then
    say "nothing to stop ($STATE does not exist)"
    return 0
  fi
  if [ -d "$STATE/node" ] && [ "$(id -u)" != 0 ]; then
    die "down: this cluster has a real node; stop it as root (its kubelet, containerd, mounts and iptables need root)" 2
  fi
  down_quiet
  # Never delete through a mount: whatever could not be unmounted stays, named.
  if awk -v s="$STATE/" 'index($5, s) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo; then
    die "down: still mounted under $STATE (see: grep $STATE /proc/self/mountinfo); unmount, then run down again" 4
  fi
  rm -rf "$STATE"
  say "stopped; removed $STATE"
}

status() {
  if [ ! -d "$STATE/pids" ]; then
    echo "not running (no state in $STATE)"
    return 3
  fi
  local c pid rc=0
  for c in "${CONTROL_PLANE[@]}"; do
    pid=$(pid_of "$c")
    if alive "$c"; then echo "$c: running (pid $pid)"; else echo "$c: stopped"; rc=3; fi
  done
  if [ -f "$STATE/ports/apiserver" ] && readyz; then
    echo "api: https://127.0.0.1:$(cat "$STATE/ports/apiserver") ready"
  else
    echo "api: not ready"; rc=3
  fi
  node_status || rc=3
  autoscalers_status || rc=3
  echo "kubeconfig: $KUBECONFIG_OUT"
  return $rc
}

GATEWAY_CRDS=(gatewayclasses gateways httproutes referencegrants)

fetch_gateway_crds() {  # the standard-channel CRDs as shipped in the sigs.k8s.io/gateway-api Go module
  local out=$CACHE/gateway-api-$GATEWAY_API_VERSION dir crd
  [ -f "$out/httproutes.yaml" ] && { echo "$out"; return 0; }
  dir=$(cd "$CACHE" && GOFLAGS=-mod=mod "$GO" mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
    || die "cannot download sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION from the Go module proxy" 4
  mkdir -p "$out"
  for crd in "${GATEWAY_CRDS[@]}"; do
    cp "$dir/config/crd/standard/gateway.networking.k8s.io_$crd.yaml" "$out/$crd.yaml"
  done
  echo "$out"
}

gateway_api() {
  running || die "no running cluster in $STATE: run 'bash scripts/local-cluster.sh up' first" 4
  local dir crd f
  dir=$(fetch_gateway_crds) || exit 4
  for crd in "${GATEWAY_CRDS[@]}"; do
    f="$dir/$crd.yaml"
    api PATCH "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$crd.gateway.networking.k8s.io?fieldManager=local-cluster&force=true" \
      "$f" application/apply-patch+yaml >/dev/null || die "cannot install the CRD $crd from $f" 4
  done
  for crd in "${GATEWAY_CRDS[@]}"; do
    wait_for 60 "CRD $crd" established "$crd.gateway.networking.k8s.io"
  done
  say "Gateway API $GATEWAY_API_VERSION CRDs installed (no gateway controller runs here: routes are accepted, not served)"
  echo "$KUBECONFIG_OUT"
}

established() {
  api GET "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$1" | python3 -c '
import json, sys
conds = json.load(sys.stdin).get("status", {}).get("conditions", [])
sys.exit(0 if any(c["type"] == "Established" and c["status"] == "True" for c in conds) else 1)'
}

case "$cmd" in
  up) up ;;
  gateway-api) gateway_api ;;
  autoscalers) autoscalers ;;
  down) down ;;
  status) status ;;
  build) build; build_unlock; [ -z "$REAL_NODE" ] || build_node; fetch_gateway_crds >/dev/null; echo "$BIN" ;;
  build-image) project_image_archive ;;
  build-autoscalers) build_autoscalers; echo "$BIN" ;;
  restart)  # restart one component with its recorded command line (e.g. vpa-recommender: it reads checkpoints at start)
    name=${ARG:-}
    [ -n "$name" ] && [ -f "$STATE/cmd/$name" ] || die "restart: name a component that was started: $(ls "$STATE/cmd" 2>/dev/null | tr '\n' ' ')" 2
    restart_component "$name"
    for ((i = 0; i < 50; i++)); do alive "$name" && break; sleep 0.1; done
    alive "$name" || die "$name exited after its restart; see $LOGS/$name.log" 4
    say "$name restarted (pid $(pid_of "$name"))"
    echo "$KUBECONFIG_OUT" ;;
  restart-apiserver)  # for tests: stop and start kube-apiserver only (same flags, same port)
    pid=$(pid_of kube-apiserver); [ -n "$pid" ] || die "not running" 4
    args=$(tr '\0' '\n' < "/proc/$pid/cmdline" | tail -n +2)
    # SIGTERM, then SIGKILL after 3 s: a graceful shutdown waits up to a minute for open watches.
    kill -TERM "$pid"
    for ((i = 0; i < 30; i++)); do pid_running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    while pid_running "$pid"; do sleep 0.1; done
    sleep "${INFADAPTER_RESTART_PAUSE:-0}"
    mapfile -t argv <<< "$args"
    start kube-apiserver "$BIN/kube-apiserver" "${argv[@]}"
    wait_for 60 kube-apiserver readyz
    echo "$KUBECONFIG_OUT" ;;
  *) usage ;;
esac
