//go:build tools

// Package tools pins the Gateway API release whose standard-channel CRDs the local cluster
// installs (config/crd/standard in the module). The module only carries that YAML: consts is
// imported because it is dependency-free, so `go mod tidy` keeps the require line without
// pulling Kubernetes libraries into go.sum.
package tools

import _ "sigs.k8s.io/gateway-api/pkg/consts"
