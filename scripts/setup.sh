#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh: a venv with requirements.lock (requirements.txt
# compiled by scripts/lock.sh: every package pinned and hash-checked, so two machines a month apart
# install the same files), and (as root) the Debian packages the product and its tests use. Safe to run
# again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Keyed on the lock: a refreshed lock re-installs, an edit to requirements.txt alone does not (run
# scripts/lock.sh). The venv's own pip installs it (no unpinned `--upgrade pip`).
stamp=.venv/.requirements-lock.sha256
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
  echo "$want" > "$stamp"
fi
# Debian packages: Prometheus (monitoring), sshd (Ansible converge tests), nginx (dispatcher benchmark),
# HAProxy (adapt --router haproxy, router benchmark), iproute2 (network namespaces for test hosts),
# nfs-kernel-server config files.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v prometheus >/dev/null || need+=(prometheus)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v nginx >/dev/null || need+=(nginx-light)
  [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  command -v ip >/dev/null || need+=(iproute2)
  command -v wrk >/dev/null || need+=(wrk)
  # NFS server/client packages: the Ansible converge tests' package tasks find them installed.
  [ -x /usr/sbin/exportfs ] || need+=(nfs-kernel-server)
  [ -x /sbin/mount.nfs ] || need+=(nfs-common)
  # The local Kubernetes control plane (scripts/local-cluster.sh): PKI and API calls.
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  # Its real node (local-cluster.sh up --real-node, tests/test_k8s_real_node.py): container runtime, CNI
  # plugins, iptables, and the static busybox its pause and test images are made of.
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  [ -x /bin/busybox ] || need+=(busybox-static)
  # The project image for the real node's pods (scripts/build-image.sh: no registry, so a debootstrap base).
  command -v buildah >/dev/null || need+=(buildah)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts services on install; the project starts its own and stops them afterwards.
    for svc in prometheus nginx haproxy ssh prometheus-node-exporter rpcbind nfs-kernel-server containerd; do
      (service "$svc" stop >/dev/null 2>&1 || true)
    done
  fi
fi
# The local Kubernetes control plane for tests/test_k8s_real.py: Kubernetes v1.36.3 + etcd + kwok built
# from the Go module proxy into ~/.cache/infadapter/k8s-v1.36.3/bin (about 5-10 minutes on 2 cores the
# first time, with progress; seconds afterwards). Needs Go >= 1.26. A failure here is reported, and the
# Kubernetes tests then try the build again and fail with its error.
# With --real-node it also builds kubelet and kube-proxy for tests/test_k8s_real_node.py (58 s more from
# cold, sharing most packages with the control plane; `up --real-node` also installs its packages when missing).
if [ -z "${INFADAPTER_SKIP_K8S_BUILD:-}" ]; then
  PATH="$PATH:/usr/local/go/bin" bash scripts/local-cluster.sh build --real-node >/dev/null \
    || echo "setup: the local Kubernetes control plane did not build (see above)" >&2
fi
