//go:build tools

// Package tools names the commands scripts/tools.sh builds from this module
// (go build <package>); it is never compiled itself. go.mod and go.sum pin
// their versions: scripts/tools.sh pin etcd rewrites them.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
