//go:build tools

// Package tools pins the commands that scripts/local-cluster.sh builds: the control plane and kwok (always;
// kwok in this module so that it compiles against the same client-go and shares its packages)
// and the real node's kubelet and kube-proxy (built only for `up --real-node` / `build --real-node`).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
