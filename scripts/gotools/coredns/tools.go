//go:build tools

// Package tools names the command scripts/tools.sh builds from this module
// (go build <package>); it is never compiled itself. go.mod and go.sum pin
// its version: scripts/tools.sh pin coredns rewrites them. CoreDNS has no
// replace directives; the wrapper is there so that go.sum pins every
// dependency, as the others do.
package tools

import (
	_ "github.com/coredns/coredns"
)
