#!/usr/bin/env bash
# Builds etcd and kube-apiserver (and, with `node`, the node's kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy) from the Go module proxy into .cache/bin/<name>-<version>.
# Kubernetes maps its staging modules to ./staging at v0.0.0, so a throw-away module with a
# replace line per staging module (derived from k8s.io/kubernetes' own go.mod) is needed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/scripts/versions.env"
CACHE="$ROOT/.cache"
BIN="$CACHE/bin"
mkdir -p "$BIN"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

log() { printf '[build-k8s] %s\n' "$*" >&2; }

# one build at a time: parallel test runs or setup calls must not share a half-written module
exec 9>"$CACHE/build.lock"
flock 9

build_etcd() {
  local out="$BIN/etcd-$ETCD_VERSION"
  if [[ -x "$out" ]]; then log "etcd $ETCD_VERSION cached"; return; fi
  local dir="$CACHE/build/etcd-$ETCD_VERSION"
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  log "etcd $ETCD_VERSION: resolving modules"
  go mod init keycutter.local/build/etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  log "etcd $ETCD_VERSION: compiling"
  go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3
  mv "$out.tmp" "$out"
  log "etcd $ETCD_VERSION: built $out"
}

# Writes go.mod and tools.go for a throw-away module named $1 that builds the k8s.io/kubernetes
# main packages $2... at K8S_VERSION, into the current directory.
write_k8s_module() {
  local name="$1"; shift
  log "$name $K8S_VERSION: downloading k8s.io/kubernetes go.mod"
  local modfile
  modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [[ -f "$modfile" ]] || { log "could not find go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  local staging_ver="v0.${K8S_VERSION#v1.}"
  {
    echo "module keycutter.local/build/$name"
    grep -E '^go [0-9]' "$modfile"
    grep -E '^godebug' "$modfile" || true
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "replace ("
    # every staging module is required at v0.0.0 and replaced with ./staging/... upstream
    grep -E '=>\s*\./staging/' "$modfile" | awk -v v="$staging_ver" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > go.mod
  log "$name $K8S_VERSION: $(grep -c '=> k8s.io' go.mod) staging replaces; resolving modules"
  {
    printf '//go:build tools\n\npackage tools\n\n'
    local pkg
    for pkg in "$@"; do printf 'import _ "%s"\n' "$pkg"; done
  } > tools.go
  go mod tidy >/dev/null 2>&1 || go get "${@/%/@$K8S_VERSION}" >/dev/null
}

k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local vpkg=k8s.io/component-base/version
  echo "-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
}

build_apiserver() {
  local out="$BIN/kube-apiserver-$K8S_VERSION"
  if [[ -x "$out" ]]; then log "kube-apiserver $K8S_VERSION cached"; return; fi
  local dir="$CACHE/build/kube-apiserver-$K8S_VERSION"
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  write_k8s_module kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
  log "kube-apiserver $K8S_VERSION: compiling (several minutes on 2 cores)"
  go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$out.tmp" "$out"
  log "kube-apiserver $K8S_VERSION: built $out"
}

# The node's Kubernetes parts for test/node/: one `go build` of the four main packages, so they
# share one compile of client-go & co (and the apiserver's build cache). Niced, and one package at
# a time unless KEYCUTTER_BUILD_JOBS says more (scripts/setup.sh: the machine's cores).
NODE_COMPONENTS=(kubelet kube-controller-manager kube-scheduler kube-proxy)
build_node_components() {
  local name missing=()
  for name in "${NODE_COMPONENTS[@]}"; do
    [[ -x "$BIN/$name-$K8S_VERSION" ]] || missing+=("$name")
  done
  if ((${#missing[@]} == 0)); then log "${NODE_COMPONENTS[*]} $K8S_VERSION cached"; return; fi
  local dir="$CACHE/build/k8s-node-$K8S_VERSION"
  rm -rf "$dir"; mkdir -p "$dir/out"; cd "$dir"
  local pkgs=()
  for name in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
  write_k8s_module k8s-node "${pkgs[@]}"
  # KEYCUTTER_BUILD_JOBS as in scripts/build-node.sh: 1 alone, the machine's cores from setup.sh
  local jobs="${KEYCUTTER_BUILD_JOBS:-1}"
  [[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { log "KEYCUTTER_BUILD_JOBS=$jobs: want a positive integer"; exit 2; }
  log "${missing[*]} $K8S_VERSION: compiling (niced, -p $jobs: tens of minutes cold on 2 shared cores)"
  local started=$SECONDS
  GOMAXPROCS="$jobs" nice -n 19 go build -p "$jobs" -trimpath -ldflags "$(k8s_ldflags)" -o "$dir/out/" "${pkgs[@]}"
  for name in "${missing[@]}"; do mv "$dir/out/$name" "$BIN/$name-$K8S_VERSION"; done
  log "${missing[*]} $K8S_VERSION: built in $((SECONDS - started))s into $BIN"
}

case "${1:-all}" in
  etcd) build_etcd ;;
  apiserver) build_apiserver ;;
  node) build_node_components ;;
  all) build_etcd; build_apiserver ;;
esac
