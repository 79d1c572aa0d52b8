# shellcheck shell=bash
# The upstream autoscalers of scripts/local-cluster.sh (`autoscalers`): metrics-server v0.8.0 and the
# Vertical Pod Autoscaler v1.8.1 (recommender, updater, admission controller), each built from its Go module
# (hack/autoscalers/*) and run as a process on this machine, like the control plane; the HPA is the one in
# kube-controller-manager, restarted with its intervals. Sourced by local-cluster.sh (it uses its STATE,
# CACHE, BIN, PKI, LOGS, say, die, start, alive, pid_of, api, apply_yaml, wait_for). Not run on its own.
#
# Time compression (--speedup S, as the replay's): every interval and window of the three controllers
# that upstream counts in wall time is divided by S (HPA sync 15 s, its downscale stabilization 5 min, its
# CPU initialization 5 min and readiness delay 30 s; VPA's recommender loop 1 min, its CPU histogram's
# half-life and confidence interval 24 h, its updater loop 1 min and in-bounds eviction lifetime 12 h).
# Two floors stay: metrics-server's resolution cannot go under 10 s (it refuses), and the kubelet's
# container statistics are as fresh as its cAdvisor housekeeping (about 10 s). Both are said in the notes
# of the experiment that uses them.

AUTOSCALER_COMPONENTS=(metrics-server vpa-recommender vpa-updater vpa-admission-controller)
VPA_VERSION=v1.8.1
METRICS_SERVER_VERSION=v0.8.0
AUTOSCALERS_STAMP="vpa $VPA_VERSION, metrics-server $METRICS_SERVER_VERSION"

autoscalers_binaries_ok() {
  local b
  for b in metrics-server vpa-recommender vpa-updater vpa-admission-controller; do
    [ -x "$BIN/$b" ] || return 1
  done
  [ "$(cat "$BIN/autoscalers.version" 2>/dev/null)" = "$AUTOSCALERS_STAMP" ]
}

build_autoscalers() {  # two modules: VPA needs client-go v0.37, metrics-server k8s.io/apiserver v0.33
  build_lock autoscalers
  if autoscalers_binaries_ok; then
    say "autoscalers: $BIN (cached: $AUTOSCALERS_STAMP)"
    return 0
  fi
  local tmp t0 b
  tmp=$(build_dir)
  t0=$(date +%s)
  say "building the upstream VPA $VPA_VERSION and metrics-server $METRICS_SERVER_VERSION into $BIN: about 3 minutes on 2 cores the first time"
  if ! (cd "$ROOT/hack/autoscalers/vpa" && GOFLAGS=-mod=readonly "$GO" build -trimpath -ldflags "-s -w" -o "$tmp/" -x \
      k8s.io/autoscaler/vertical-pod-autoscaler/pkg/recommender k8s.io/autoscaler/vertical-pod-autoscaler/pkg/updater \
      k8s.io/autoscaler/vertical-pod-autoscaler/pkg/admission-controller 2>&1) | progress "$tmp/build.log" "$t0"; then
    tail -5 "$tmp/build.log" >&2
    die "go build of the VPA failed; see $tmp/build.log" 4
  fi
  if ! (cd "$ROOT/hack/autoscalers/metrics-server" && GOFLAGS=-mod=readonly "$GO" build -trimpath -ldflags \
      "-s -w -X sigs.k8s.io/metrics-server/pkg/version.gitVersion=$METRICS_SERVER_VERSION" -o "$tmp/" -x \
      sigs.k8s.io/metrics-server/cmd/metrics-server 2>&1) | progress "$tmp/build-ms.log" "$t0"; then
    tail -5 "$tmp/build-ms.log" >&2
    die "go build of metrics-server failed; see $tmp/build-ms.log" 4
  fi
  for b in recommender updater admission-controller; do
    [ -x "$tmp/$b" ] || die "build produced no $b; see $tmp/build.log" 4
    mv "$tmp/$b" "$BIN/vpa-$b"
  done
  [ -x "$tmp/metrics-server" ] || die "build produced no metrics-server; see $tmp/build-ms.log" 4
  mv "$tmp/metrics-server" "$BIN/metrics-server"
  echo "$AUTOSCALERS_STAMP" > "$BIN/autoscalers.version"
  rm -rf "$tmp"
  say "autoscalers built in $(( $(date +%s) - t0 )) s"
}

# The VPA's CRDs as shipped in its Go module (the same version as the binaries).
vpa_crds_file() {
  local dir
  dir=$(cd "$ROOT/hack/autoscalers/vpa" && GOFLAGS=-mod=readonly "$GO" list -m -f '{{.Dir}}' \
        k8s.io/autoscaler/vertical-pod-autoscaler) || die "cannot find the VPA module's source (go list -m)" 4
  [ -f "$dir/deploy/vpa-v1-crd-gen.yaml" ] || die "the VPA module has no deploy/vpa-v1-crd-gen.yaml ($dir)" 4
  echo "$dir/deploy/vpa-v1-crd-gen.yaml"
}

scaled() {  # scaled SECONDS MIN_SECONDS: SECONDS / SPEEDUP, at least MIN_SECONDS, as a Go duration
  awk -v s="$1" -v k="$SPEEDUP" -v m="$2" 'BEGIN { v = s / k; if (v < m) v = m; printf "%.3fs\n", v }'
}

# The API server's aggregation layer (metrics.k8s.io) is on from `up` (--requestheader-*, --proxy-client-*);
# a cluster started before it had no front-proxy CA.
aggregation_on() {
  tr '\0' '\n' < "$STATE/cmd/kube-apiserver" | grep -q -- '--proxy-client-cert-file'
}

restart_component() {  # restart_component NAME ARG...: stop NAME, start it with its recorded command line + ARGs
  local name=$1 pid i argv=() kept=() a skip=
  shift
  mapfile -d '' -t argv < "$STATE/cmd/$name"
  # Drop the options this function added before (each is --flag value), so that a second call replaces them.
  for a in "${argv[@]}"; do
    if [ -n "$skip" ]; then skip=; continue; fi
    case "$a" in --horizontal-pod-autoscaler-*) skip=1; continue ;; esac
    kept+=("$a")
  done
  pid=$(pid_of "$name")
  if [ -n "$pid" ] && pid_running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  start "$name" "${kept[@]}" "$@"
}

autoscalers_pki() {
  printf 'subjectAltName = IP:%s, DNS:metrics-server.kube-system.svc, DNS:metrics-server\nextendedKeyUsage = serverAuth\n' \
    "$(node_ip)" > "$PKI/metrics-server.ext"
  pki_cert metrics-server "/CN=metrics-server" metrics-server.ext
  printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n' > "$PKI/vpa-webhook.ext"
  pki_cert vpa-webhook "/CN=vpa-webhook" vpa-webhook.ext
  # One identity for the four processes; system:masters, as the rest of this throwaway cluster's components
  # that are not the kubelet (a production install uses their RBAC: the VPA's deploy/vpa-rbac.yaml).
  pki_cert autoscalers "/O=system:masters/CN=infadapter-autoscalers" client.ext
  kubeconfig autoscalers "$STATE/autoscalers.kubeconfig"
}

metrics_server_up() {
  local port ca
  port=$(free_port)
  echo "$port" > "$STATE/ports/metrics-server"
  start metrics-server "$BIN/metrics-server" --kubeconfig "$STATE/autoscalers.kubeconfig" \
    --authentication-kubeconfig "$STATE/autoscalers.kubeconfig" --authorization-kubeconfig "$STATE/autoscalers.kubeconfig" \
    --bind-address "$(node_ip)" --secure-port "$port" \
    --tls-cert-file "$PKI/metrics-server.crt" --tls-private-key-file "$PKI/metrics-server.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-use-node-status-port \
    --kubelet-preferred-address-types InternalIP --kubelet-request-timeout 5s \
    --metric-resolution "$(scaled 15 10)" --profiling=false
  ca=$(base64 -w0 < "$PKI/ca.crt")
  # A Service without a selector whose endpoint is the node address (the API server routes to endpoints:
  # --enable-aggregator-routing), and the APIService that puts metrics.k8s.io behind it.
  apply_yaml /api/v1/namespaces/kube-system/services/metrics-server <<EOF || die "cannot create the metrics-server Service" 4
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system, labels: {app.kubernetes.io/managed-by: local-cluster.infadapter.io}}
spec: {ports: [{name: https, port: 443, targetPort: $port, protocol: TCP}]}
EOF
  node_endpoints kube-system metrics-server "$port"
  apply_yaml /apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io <<EOF || die "cannot register metrics.k8s.io" 4
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io, labels: {app.kubernetes.io/managed-by: local-cluster.infadapter.io}}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: $ca
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
}

metrics_available() {  # the APIService is Available and the node has a CPU reading
  api GET /apis/metrics.k8s.io/v1beta1/nodes | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin).get("items") else 1)'
}

vpa_up() {
  local f crds port name names=()
  crds=$(vpa_crds_file) || exit 4
  # The CRD file holds two documents: each is applied by its name.
  rm -rf "$STATE/vpa-crds"
  mkdir -p "$STATE/vpa-crds"
  awk -v d="$STATE/vpa-crds" '/^---/ { n++; next } { print > (d "/crd-" n+0 ".yaml") }' "$crds"
  for f in "$STATE"/vpa-crds/crd-*.yaml; do
    name=$(awk '/^metadata:/ { m = 1; next } m && /^  name:/ { print $2; exit }' "$f")
    [ -n "$name" ] || { rm -f "$f"; continue; }
    api PATCH "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$name?fieldManager=local-cluster&force=true" \
      "$f" application/apply-patch+yaml >/dev/null || die "cannot install the CRD $name from $crds" 4
    names+=("$name")
  done
  [ "${#names[@]}" -ge 2 ] || die "found ${#names[@]} CRDs in $crds, expected the VPA's and its checkpoints'" 4
  for name in "${names[@]}"; do wait_for 60 "CRD $name" established "$name"; done
  local day; day=$(scaled 86400 1)
  start vpa-recommender "$BIN/vpa-recommender" --kubeconfig "$STATE/autoscalers.kubeconfig" \
    --address "127.0.0.1:$(free_port)" --recommender-interval "$(scaled 60 1)" --checkpoints-gc-interval "$(scaled 600 1)" \
    --cpu-histogram-decay-half-life "$day" --confidence-interval-cpu "$day" --confidence-interval-memory "$day" \
    --memory-aggregation-interval "$day" --memory-histogram-decay-half-life "$day" --memory-saver \
    --leader-elect=false --v 2
  port=$(free_port)
  echo "$port" > "$STATE/ports/vpa-admission-controller"
  start vpa-admission-controller "$BIN/vpa-admission-controller" --kubeconfig "$STATE/autoscalers.kubeconfig" \
    --address "127.0.0.1:$(free_port)" --port "$port" --client-ca-file "$PKI/ca.crt" \
    --tls-cert-file "$PKI/vpa-webhook.crt" --tls-private-key "$PKI/vpa-webhook.key" \
    --register-by-url --webhook-address https://127.0.0.1 --webhook-port "$port" --webhook-timeout-seconds 5 --v 2
  # --min-replicas 1: our variants may run one pod (upstream's default 2 never touches such a workload).
  start vpa-updater "$BIN/vpa-updater" --kubeconfig "$STATE/autoscalers.kubeconfig" \
    --address "127.0.0.1:$(free_port)" --updater-interval "$(scaled 60 1)" --min-replicas 1 \
    --in-recommendation-bounds-eviction-lifetime-threshold "$(scaled 43200 1)" \
    --evict-after-oom-threshold "$(scaled 600 1)" --leader-elect=false --v 2
}

hpa_up() {  # kube-controller-manager's HPA, its intervals compressed
  restart_component kube-controller-manager \
    --horizontal-pod-autoscaler-sync-period "$(scaled 15 1)" \
    --horizontal-pod-autoscaler-downscale-stabilization "$(scaled 300 1)" \
    --horizontal-pod-autoscaler-cpu-initialization-period "$(scaled 300 1)" \
    --horizontal-pod-autoscaler-initial-readiness-delay "$(scaled 30 1)"
}

# `autoscalers [--speedup S]` on a running cluster with a real node: starts (or restarts with the new S)
# metrics-server, the VPA and the HPA's intervals. Prints the kubeconfig path last.
autoscalers() {
  # The cluster without the autoscalers (a second call replaces them, dead or alive).
  local c keep=()
  for c in "${COMPONENTS[@]}"; do
    case " ${AUTOSCALER_COMPONENTS[*]} " in *" $c "*) ;; *) keep+=("$c") ;; esac
  done
  COMPONENTS=("${keep[@]}")
  running || die "no running cluster in $STATE: run 'bash scripts/local-cluster.sh up --real-node' first" 4
  has_real_node || die "autoscalers: the cluster has no real node (kwok nodes report no CPU usage): run 'bash scripts/local-cluster.sh down', then 'up --real-node'" 4
  aggregation_on || die "autoscalers: this cluster's API server predates the aggregation layer: run 'bash scripts/local-cluster.sh down', then 'up --real-node'" 4
  [[ "$SPEEDUP" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v k="$SPEEDUP" 'BEGIN { exit !(k >= 1) }' \
    || die "--speedup: expected a number >= 1 (the replay's), got '$SPEEDUP'" 2
  build_autoscalers
  build_unlock
  local t0
  t0=$(date +%s)
  autoscalers_stop
  autoscalers_pki
  echo "$SPEEDUP" > "$STATE/autoscalers"
  metrics_server_up
  vpa_up
  hpa_up
  for c in "${AUTOSCALER_COMPONENTS[@]}" kube-controller-manager; do
    sleep 0.2
    alive "$c" || die "$c exited; see $LOGS/$c.log" 4
  done
  wait_for 90 "metrics.k8s.io (metrics-server's first scrape of the node)" metrics_available
  say "autoscalers up in $(( $(date +%s) - t0 )) s (speedup $SPEEDUP): metrics-server $METRICS_SERVER_VERSION, VPA $VPA_VERSION, HPA sync $(scaled 15 1)"
  echo "$KUBECONFIG_OUT"
}

autoscalers_stop() {
  local c
  for c in "${AUTOSCALER_COMPONENTS[@]}"; do
    [ -n "$(pid_of "$c")" ] && stop_pid "$(pid_of "$c")" 5
    rm -f "$STATE/pids/$c"
  done
  return 0
}

autoscalers_status() {
  [ -f "$STATE/autoscalers" ] || return 0
  local c rc=0
  for c in "${AUTOSCALER_COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: stopped"; rc=3; fi
  done
  echo "autoscalers: speedup $(cat "$STATE/autoscalers")"
  return $rc
}
