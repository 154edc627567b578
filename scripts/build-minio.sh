#!/usr/bin/env bash
# Builds MinIO (the S3 + STS server that honours session policies) and a tiny admin helper
# (scripts/minio-admin, madmin-go) from the Go module proxy into .cache/bin/, for the e2e suite
# test/e2e/minio-session-policy.test.ts. MinIO publishes no semver tags the proxy accepts
# (its releases are RELEASE.<date> tags), so MINIO_VERSION is a pseudo-version of a commit.
# Its go.mod has no replace directives, so a throw-away module requiring it is enough; MVS
# then resolves exactly the versions MinIO's own go.mod pins (madmin-go included).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/scripts/versions.env"
CACHE="$ROOT/.cache"
BIN="$CACHE/bin"
mkdir -p "$BIN"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

log() { printf '[build-minio] %s\n' "$*" >&2; }

# one build at a time (own lock: a long MinIO compile must not block build-k8s.sh callers)
exec 9>"$CACHE/build-minio.lock"
flock 9

out="$BIN/minio-$MINIO_VERSION"
admin_out="$BIN/minio-admin-$MINIO_VERSION"
admin_src="$ROOT/scripts/minio-admin/main.go"
admin_sha="$(sha256sum "$admin_src" | cut -d' ' -f1)"
if [[ -x "$out" && -x "$admin_out" && "$(cat "$admin_out.sha" 2>/dev/null)" == "$admin_sha" ]]; then
  log "minio $MINIO_VERSION cached"
  exit 0
fi

dir="$CACHE/build/minio-$MINIO_VERSION"
rm -rf "$dir"
mkdir -p "$dir/minio-admin"
cd "$dir"
log "minio $MINIO_VERSION: resolving modules"
go mod init keycutter.local/build/minio >/dev/null 2>&1
modfile="$(go mod download -json "github.com/minio/minio@$MINIO_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[[ -f "$modfile" ]] || { log "could not find go.mod of github.com/minio/minio@$MINIO_VERSION"; exit 1; }
if grep -qE '^replace|=>' "$modfile"; then
  # carry MinIO's own replace directives over (none at the pinned version)
  grep -E '=>' "$modfile" | sed -E 's/^replace[[:space:]]+//; s/^[[:space:]]*/replace /' | grep -v '^replace ($' >> go.mod
fi
go get "github.com/minio/minio@$MINIO_VERSION" >/dev/null
# no `go mod tidy`: nothing here imports MinIO (a main package), so tidy would drop it
cp "$admin_src" minio-admin/main.go

if [[ ! -x "$out" ]]; then
  # MinIO's own release ldflags (buildscripts/gen-ldflags.go): version = the commit's time
  stamp="$(echo "$MINIO_VERSION" | sed -nE 's/^v0\.0\.0-([0-9]{4})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})([0-9]{2})-([0-9a-f]+)$/\1-\2-\3T\4:\5:\6Z \7/p')"
  ldflags="-s -w"
  if [[ -n "$stamp" ]]; then
    read -r when commit <<<"$stamp"
    ldflags+=" -X github.com/minio/minio/cmd.Version=$when"
    ldflags+=" -X github.com/minio/minio/cmd.ReleaseTag=DEVELOPMENT.${when//:/-}"
    ldflags+=" -X github.com/minio/minio/cmd.CommitID=$commit -X github.com/minio/minio/cmd.ShortCommitID=$commit"
  fi
  log "minio $MINIO_VERSION: compiling (long: ~15-25 min on 2 cores the first time)"
  start=$SECONDS
  go build -trimpath -ldflags "$ldflags" -o "$out.tmp" github.com/minio/minio
  mv "$out.tmp" "$out"
  log "minio $MINIO_VERSION: built $out in $((SECONDS - start))s"
fi

log "minio-admin: compiling"
go build -trimpath -ldflags "-s -w" -o "$admin_out.tmp" ./minio-admin
mv "$admin_out.tmp" "$admin_out"
echo "$admin_sha" > "$admin_out.sha"
log "minio-admin: built $admin_out"
