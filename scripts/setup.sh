#!/usr/bin/env bash
# Installs everything the tests and the demo need, from the project's own files. Idempotent:
# each step is skipped when its result is already present and current.
#   scripts/setup.sh        everything the test suite needs, the real node of test/node/ included
#   scripts/setup.sh demo   only what the demo needs
#   scripts/setup.sh node   the same as the default (kept for the commands that name it)
# The node's Go builds run niced with KEYCUTTER_BUILD_JOBS jobs, by default every core: setup runs
# nothing else meanwhile (the build scripts run alone default to one job).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/versions.env
CACHE="$ROOT/.cache"
mkdir -p "$CACHE"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
fail() { printf '\033[31msetup: %s\033[0m\n' "$*" >&2; exit 1; }
SECONDS=0
export KEYCUTTER_BUILD_JOBS="${KEYCUTTER_BUILD_JOBS:-$(nproc)}"

step "checking the machine"
[[ "$(id -u)" == 0 ]] || fail "must run as root: the tests create network namespaces and iptables rules"
command -v go >/dev/null || fail "go is not installed (needed to build etcd and kube-apiserver)"
command -v python3 >/dev/null || fail "python3 is not installed (needed for moto and the AWS CLI)"

step "Debian packages (iptables, iproute2, conntrack, redis-server, faketime)"
need=()
for pkg in iptables iproute2 conntrack redis-server procps faketime; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || fail "apt-get install ${need[*]} failed"
  # the package starts a system redis on 6379; the tests start their own on free ports
  (systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null || pkill -x redis-server) >/dev/null 2>&1 || true
else
  echo "all present" >&2
fi

step "network namespace support"
probe="kcsetup$$"
ip netns add "$probe" 2>/dev/null || fail "cannot create a network namespace (ip netns add): the tests need CAP_SYS_ADMIN and netns support"
ip netns exec "$probe" iptables -t nat -L >/dev/null 2>&1 || { ip netns del "$probe"; fail "iptables nat table unavailable inside a network namespace"; }
ip netns del "$probe"
echo "ok" >&2

step "Python virtualenv with moto and the AWS clients ($CACHE/venv)"
req="$ROOT/test/harness/requirements.txt"
stamp="$CACHE/venv/.requirements.sha"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$CACHE/venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  python3 -m venv "$CACHE/venv" || fail "python3 -m venv failed"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check -r "$req" || fail "pip install failed"
  echo "$want" > "$stamp"
else
  echo "up to date" >&2
fi

step "etcd $ETCD_VERSION and kube-apiserver $K8S_VERSION (built from the Go module proxy, cached)"
bash "$ROOT/scripts/build-k8s.sh" all

step "helm $HELM_VERSION (renders the chart whose command lines the system runs), hadolint $HADOLINT_VERSION and, for the tests, promtool $PROMTOOL_VERSION (cached)"
bash "$ROOT/scripts/setup-deploy-tools.sh" "${1:-test}"

# The demo needs only the parts above; the tests need MinIO too.
if [[ "${1:-test}" != "demo" ]]; then
  step "MinIO $MINIO_VERSION for the session-policy e2e suite (built from the Go module proxy, cached)"
  bash "$ROOT/scripts/build-minio.sh"
fi

# The real node's parts and images (docs/TESTING.md, "Cost"); the demo does not need them.
if [[ "${1:-test}" != "demo" ]]; then
  step "a real node: kubelet, controllers, kube-proxy, containerd, CoreDNS, crictl, pause (built, cached; $KEYCUTTER_BUILD_JOBS jobs)"
  bash "$ROOT/scripts/build-node.sh"
  step "the node's images: keycutter from deploy/Dockerfile, pause, CoreDNS, the AWS CLI/boto3 and JS SDK workloads (buildah, cached by input hash)"
  bash "$ROOT/scripts/build-images.sh"
fi

step "setup done in ${SECONDS}s"
