#!/usr/bin/env bash
# Builds the local cluster's binaries from their Go modules (hack/tools/*/go.mod) into a cache
# outside the repository, keyed by version. A binary already in the cache is never rebuilt.
#   hack/build-binaries.sh          build what is missing, print the bin directory
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${CANARIST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarist}"
bin="$cache/bin"
mkdir -p "$bin"

if ! command -v go >/dev/null; then
  echo "build-binaries: the Go toolchain is needed to build the local cluster (install Go >= 1.26)" >&2
  exit 1
fi

# Build one command into "$bin/NAME-VERSION" and link "$bin/NAME" to it.
build() {
  local tooldir=$1 name=$2 version=$3 pkg=$4 ldflags=${5:-}
  local out="$bin/$name-$version"
  if [ ! -x "$out" ]; then
    echo "build-binaries: building $name $version (first time only)" >&2
    local start=$SECONDS
    (cd "$here/tools/$tooldir" && CGO_ENABLED=0 go build -mod=mod -trimpath \
        -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    echo "build-binaries: $name built in $((SECONDS - start))s" >&2
  fi
  ln -sfn "$name-$version" "$bin/$name"
}

# Build a command inside its own module's directory in the Go module cache, so that the module's
# replace directives apply (Traefik needs them; a build from another module would drop them).
build_in_module() {
  local name=$1 version=$2 module=$3 pkg=$4 ldflags=${5:-}
  local out="$bin/$name-$version"
  if [ ! -x "$out" ]; then
    echo "build-binaries: building $name $version (first time only; Traefik takes about 9 minutes on 2 cores)" >&2
    local start=$SECONDS dir
    dir=$(cd "$here/tools" && GOWORK=off GOFLAGS= go mod download -json "$module@$version" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
      echo "build-binaries: go mod download $module@$version failed" >&2
      exit 1
    fi
    (cd "$dir" && GOWORK=off GOFLAGS= CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    echo "build-binaries: $name built in $((SECONDS - start))s" >&2
  fi
  ln -sfn "$name-$version" "$bin/$name"
}

k8s_ldflags() {
  local v=$K8S_VERSION major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  local x
  for x in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean -X %s.buildDate=%s ' \
      "$x" "$v" "$x" "$major" "$x" "$minor" "$x" "$x" "1970-01-01T00:00:00Z"
  done
}

build kubernetes kube-apiserver "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-apiserver "$(k8s_ldflags)"
build kubernetes kube-controller-manager "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-controller-manager "$(k8s_ldflags)"
build kubernetes kube-scheduler "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-scheduler "$(k8s_ldflags)"
build kubernetes kubectl "$K8S_VERSION" k8s.io/kubernetes/cmd/kubectl "$(k8s_ldflags)"
build etcd etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 \
  "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
build kwok kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION"
build kwok kwokctl "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwokctl \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION"
build helm helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

# The local stack's gateway (Gateway API implementation): issue 10's data plane.
build_in_module traefik "$TRAEFIK_VERSION" github.com/traefik/traefik/v3 ./cmd/traefik \
  "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"

# Modules whose files the tests read: fetched here, outside the tests' network namespace.
grep -v '^#' "$here/tools/modules.txt" | while read -r module; do
  [ -n "$module" ] || continue
  if ! (cd "$here/tools" && GOWORK=off GOFLAGS= go mod download "$module"); then
    echo "build-binaries: go mod download $module failed" >&2
    exit 1
  fi
done

echo "$bin"
