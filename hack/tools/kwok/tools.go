//go:build tools

// Package tools pins kwok, which simulates the nodes of the local test cluster.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
	_ "sigs.k8s.io/kwok/cmd/kwokctl"
)
