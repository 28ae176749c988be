//go:build tools

// Package tools names the commands scripts/tools.sh builds from this module
// (go build <package>) at the older istio.io/istio snapshot; it is never
// compiled itself. go.mod and go.sum pin their versions: scripts/tools.sh pin
// istio-older rewrites them.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-agent"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
