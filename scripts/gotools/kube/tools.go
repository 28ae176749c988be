//go:build tools

// Package tools names the commands scripts/tools.sh builds from this module
// (go build <package>); it is never compiled itself. go.mod and go.sum pin
// their versions: scripts/tools.sh pin kube rewrites them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
