//go:build tools

// Package tools pins metrics-server, which serves metrics.k8s.io (pod CPU) to the upstream HPA and VPA that
// `scripts/local-cluster.sh autoscalers` starts. Its own module: v0.8.0 needs k8s.io/apiserver v0.33, whose
// packages the VPA's v0.37 and the control plane's v0.36 no longer have.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"
