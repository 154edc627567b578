#!/usr/bin/env bash
# Builds the parts of a real Kubernetes node for test/node/, pinned in scripts/versions.env and
# cached by version in .cache/bin/<name>-<version> (idempotent; progress on stderr):
#   - kubelet, kube-controller-manager, kube-scheduler, kube-proxy (scripts/build-k8s.sh node);
#   - containerd, ctr and containerd-shim-runc-v2 CONTAINERD_VERSION, CoreDNS COREDNS_VERSION,
#     crictl CRICTL_VERSION (Go module proxy);
#   - pause, compiled from the pause.c inside the k8s.io/kubernetes module (build/pause/linux);
#   - runc and the CNI plugins: Debian 12's packages, installed when missing.
# Every compile runs niced (nice 19: the machine's cores are shared with timing tests) with
# KEYCUTTER_BUILD_JOBS parallel jobs: 1 when run alone, the machine's cores from scripts/setup.sh,
# which runs nothing else meanwhile.
# The images the node runs are built by scripts/build-images.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/scripts/versions.env"
CACHE="$ROOT/.cache"
BIN="$CACHE/bin"
mkdir -p "$BIN"
export CGO_ENABLED=0
JOBS="${KEYCUTTER_BUILD_JOBS:-1}"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { printf 'KEYCUTTER_BUILD_JOBS=%s: want a positive integer\n' "$JOBS" >&2; exit 2; }
export GOMAXPROCS="$JOBS"

log() { printf '[build-node] %s\n' "$*" >&2; }
SECONDS=0

debian_packages() {
  local need=() pkg
  for pkg in runc containernetworking-plugins; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if ((${#need[@]} == 0)); then log "runc $(dpkg-query -W -f='${Version}' runc), CNI plugins present"; return; fi
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# go install of main packages at a version into .cache/bin/<name>-<version>
go_install_versioned() {
  local version="$1" tags="$2"; shift 2
  local pkg missing=()
  for pkg in "$@"; do [[ -x "$BIN/${pkg##*/}-$version" ]] || missing+=("$pkg"); done
  if ((${#missing[@]} == 0)); then log "${*##*/} $version cached"; return; fi
  local tmp="$CACHE/build/gobin-${missing[0]##*/}-$version"
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "${missing[*]##*/} $version: compiling (niced, -p $JOBS)"
  local started=$SECONDS
  for pkg in "${missing[@]}"; do
    GOBIN="$tmp" GOFLAGS="-buildvcs=false" nice -n 19 go install -p "$JOBS" -trimpath -tags "$tags" \
      -ldflags "-s -w" "$pkg@$version"
    mv "$tmp/${pkg##*/}" "$BIN/${pkg##*/}-$version"
  done
  rm -rf "$tmp"
  log "${missing[*]##*/} $version: built in $((SECONDS - started))s"
}

build_containerd() {
  # containerd's own release builds drop the storage drivers a test node does not use
  local mod=github.com/containerd/containerd/v2
  go_install_versioned "$CONTAINERD_VERSION" "no_btrfs no_devmapper no_zfs no_aufs" \
    "$mod/cmd/containerd" "$mod/cmd/ctr" "$mod/cmd/containerd-shim-runc-v2"
  local got
  got="$("$BIN/containerd-$CONTAINERD_VERSION" --version)"
  [[ "$got" == *"containerd"* ]] || { log "containerd --version printed: $got"; exit 1; }
}

build_coredns() {
  go_install_versioned "$COREDNS_VERSION" "" github.com/coredns/coredns
}

build_crictl() {
  go_install_versioned "$CRICTL_VERSION" "" sigs.k8s.io/cri-tools/cmd/crictl
}

# The pause container of every pod, from upstream's source in the Kubernetes module (a few KB of
# C; static, so its image needs no libc).
build_pause() {
  local out="$BIN/pause-$K8S_VERSION"
  if [[ -x "$out" ]]; then log "pause $K8S_VERSION cached"; return; fi
  local src
  src="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c"
  [[ -f "$src" ]] || { log "no pause.c at $src"; exit 1; }
  command -v gcc >/dev/null || { log "gcc is needed to compile pause.c"; exit 1; }
  nice -n 19 gcc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION" -o "$out.tmp" "$src"
  strip "$out.tmp"
  mv "$out.tmp" "$out"
  log "pause $K8S_VERSION: built $out"
}

# the lock build-k8s.sh takes too: one Go build at a time (opened per call, so it is released
# when the call ends)
locked() { ( exec 9>"$CACHE/build.lock"; flock 9; "$@" ); }
case "${1:-all}" in
  k8s) bash "$ROOT/scripts/build-k8s.sh" node ;;
  containerd) locked build_containerd ;;
  coredns) locked build_coredns ;;
  crictl) locked build_crictl ;;
  pause) locked build_pause ;;
  debian) debian_packages ;;
  all)
    debian_packages
    locked build_containerd
    locked build_coredns
    locked build_pause
    locked build_crictl
    bash "$ROOT/scripts/build-k8s.sh" node
    ;;
  *) log "usage: $0 [all|k8s|containerd|coredns|crictl|pause|debian]"; exit 2 ;;
esac
log "done in ${SECONDS}s"
