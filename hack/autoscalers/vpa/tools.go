//go:build tools

// Package tools pins the upstream Vertical Pod Autoscaler (recommender, updater, admission controller) that
// `scripts/local-cluster.sh autoscalers` builds for the baselines of the Kubernetes experiment. Its own
// module: VPA v1.8.1 needs client-go v0.37, newer than the control plane's (hack/k8s pins v0.36.3).
package tools

import (
	_ "k8s.io/autoscaler/vertical-pod-autoscaler/pkg/admission-controller"
	_ "k8s.io/autoscaler/vertical-pod-autoscaler/pkg/recommender"
	_ "k8s.io/autoscaler/vertical-pod-autoscaler/pkg/updater"
)
