#!/usr/bin/env bash
# Builds the images test/node/ runs, with no registry pull and no daemon, into docker-archive
# tarballs for `ctr images import` (.cache/images/<name>-<hash>.tar), cached by input hash:
#   - the base image: Debian BASE_SUITE (mmdebstrap, minbase, from Debian's mirror) with the Node
#     binary the project pins (npm package `node`) and npm NPM_VERSION, laid out like the public
#     node:24-bookworm-slim (/usr/local/bin/node, /usr/local/lib/node_modules/npm);
#   - keycutter: deploy/Dockerfile built by buildah with NODE_IMAGE pointed at that base (its
#     `npm ci` and `apt-get install` reach npm's registry and Debian's mirror, as in any build);
#   - pause (upstream pause.c) and CoreDNS, each one static binary FROM scratch;
#   - aws-clients: the AWS CLI and boto3 (pinned in test/harness/requirements.txt) on the base;
#   - js-sdk: the AWS SDK for JavaScript v3 (the S3 and STS clients, at the versions
#     package-lock.json resolves) on the base.
# Needs scripts/build-node.sh first (pause and coredns binaries). Writes .cache/images/images.env
# (NAME_IMAGE=ref, NAME_ARCHIVE=path) for test/harness/images.ts. buildah keeps its own storage
# (vfs driver: unlike overlay it leaves no mount behind) in .cache/images/storage.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/scripts/versions.env"
CACHE="$ROOT/.cache"
OUT="$CACHE/images"
mkdir -p "$OUT"
log() { printf '[build-images] %s\n' "$*" >&2; }
SECONDS=0

exec 7>"$CACHE/images.lock"
flock 7

command -v buildah >/dev/null || {
  log "installing buildah and mmdebstrap (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends buildah mmdebstrap >/dev/null
}
BUILDAH=(buildah --root "$OUT/storage" --runroot "$OUT/run" --storage-driver vfs)
# buildah's network backend keeps a lock (and would keep networks) in /etc/cni/net.d unless told
# otherwise; the builds use the host network, so give it a directory of the cache's own
mkdir -p "$OUT/cni"
printf '[network]\nnetwork_config_dir = "%s"\n' "$OUT/cni" >"$OUT/containers.conf"
export CONTAINERS_CONF="$OUT/containers.conf"

NODE_BIN="$ROOT/node_modules/node/bin/node"
[[ -x "$NODE_BIN" ]] || { log "$NODE_BIN missing: run npm ci"; exit 1; }
# Bump an image's recipe number when its procedure below changes, so the cache key changes.
BASE_RECIPE=1
KEYCUTTER_RECIPE=2
STATIC_RECIPE=1
WORKLOAD_RECIPE=1
short() { printf '%s' "$*" | sha256sum | cut -c1-12; }
# a file's content hash without its path, so checkouts at other paths sharing .cache get the
# same key (and do not rebuild, then drop, each other's images)
content_sha() { sha256sum <"$1" | cut -c1-64; }
have_image() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# Exports $2 to $OUT/$1-<tag>.tar and drops the older archives of $1.
export_archive() {
  local name="$1" ref="$2" archive="$OUT/$1-${2##*:}.tar"
  if [[ ! -f "$archive" ]]; then
    "${BUILDAH[@]}" push --quiet "$ref" "docker-archive:$archive.tmp:$ref" >/dev/null
    mv "$archive.tmp" "$archive"
  fi
  find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -path "$archive" -delete
  drop_older_tags "${ref%:*}" "$ref"
  local key="${name^^}"
  key="${key//-/_}"
  printf '%s_IMAGE=%s\n%s_ARCHIVE=%s\n' "$key" "$ref" "$key" "$archive" >>"$OUT/images.env.tmp"
}

# Keeps the storage bounded: removes the other tags of repository $1 (older inputs) but $2.
drop_older_tags() {
  local repo="$1" keep="$2" other
  while read -r other; do
    [[ "$other" == "$repo:"* && "$other" != "$keep" ]] && "${BUILDAH[@]}" rmi "$other" >/dev/null 2>&1 || true
  done < <("${BUILDAH[@]}" images --noheading --format '{{.Name}}:{{.Tag}}')
}

build_base() {
  local node_sha
  node_sha="$(sha256sum "$NODE_BIN" | cut -c1-64)"
  local ref="localhost/keycutter-base/node:$(short "$BASE_SUITE $NPM_VERSION $node_sha $BASE_RECIPE")"
  if have_image "$ref"; then log "base $ref cached"; BASE_REF="$ref"; return; fi
  local work="$CACHE/build/base-image"
  rm -rf "$work"; mkdir -p "$work/rootfs"
  log "base: Debian $BASE_SUITE minbase (mmdebstrap)"
  nice -n 19 mmdebstrap --quiet --variant=minbase --mode=root "$BASE_SUITE" "$work/rootfs" \
    "deb http://deb.debian.org/debian $BASE_SUITE main" \
    "deb http://deb.debian.org/debian $BASE_SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $BASE_SUITE-security main"
  log "base: Node $("$NODE_BIN" --version) and npm $NPM_VERSION"
  install -D -m 0755 "$NODE_BIN" "$work/rootfs/usr/local/bin/node"
  (cd "$work" && npm pack --silent "npm@$NPM_VERSION" >/dev/null)
  mkdir -p "$work/rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$work/npm-$NPM_VERSION.tgz" --strip-components=1 -C "$work/rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$work/rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$work/rootfs/usr/local/bin/npx"
  rm -rf "$work/rootfs/usr/share/doc" "$work/rootfs/usr/share/man" "$work/rootfs/usr/share/locale"
  tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
  local ctr
  ctr="$("${BUILDAH[@]}" from --quiet scratch)"
  "${BUILDAH[@]}" add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
  "${BUILDAH[@]}" config --env "NODE_VERSION=${NODE_VERSION_STR#v}" --cmd '["node"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
  rm -rf "$work"
  log "base: built $ref"
  BASE_REF="$ref"
  drop_older_tags "${ref%:*}" "$ref"
}

# what deploy/Dockerfile's build context holds (.dockerignore), plus the Dockerfile and the base
keycutter_inputs_hash() {
  (
    cd "$ROOT"
    find package.json package-lock.json tsconfig.json tsconfig.build.json src bin deploy/Dockerfile \
      .dockerignore -type f -print0 | sort -z | xargs -0 sha256sum
    echo "$BASE_REF $KEYCUTTER_RECIPE"
  ) | sha256sum | cut -c1-12
}

build_keycutter() {
  local ref="localhost/keycutter:$(keycutter_inputs_hash)"
  if have_image "$ref"; then log "keycutter $ref cached"; else
    log "keycutter: buildah bud deploy/Dockerfile (NODE_IMAGE=$BASE_REF)"
    local started=$SECONDS
    # --network host: the RUN steps' npm ci and apt-get need the registries, and a build network
    # would add bridge and firewall rules to the host
    nice -n 19 "${BUILDAH[@]}" bud --quiet --pull-never --network host --layers=false \
      "${BUILD_CA_VOLUMES[@]}" --build-arg "NODE_IMAGE=$BASE_REF" -f "$ROOT/deploy/Dockerfile" \
      -t "$ref" "$ROOT" >&2
    log "keycutter: built $ref in $((SECONDS - started))s"
  fi
  export_archive keycutter "$ref"
}

# A workload image on the base image, from test/node/images/$1.Dockerfile: $2 the client
# versions it pins (part of its tag), then its build arguments as NAME=VALUE.
build_workload() {
  local name="$1" pins="$2" arg build_args=()
  shift 2
  for arg in "$@"; do build_args+=(--build-arg "$arg"); done
  local dockerfile="$ROOT/test/node/images/$name.Dockerfile"
  local ref="localhost/$name:$(short "$(content_sha "$dockerfile") $pins $BASE_REF $WORKLOAD_RECIPE")"
  if have_image "$ref"; then log "$name $ref cached"; else
    log "$name: $*"
    local started=$SECONDS
    nice -n 19 "${BUILDAH[@]}" bud --quiet --pull-never --network host --layers=false \
      "${BUILD_CA_VOLUMES[@]}" --build-arg "BASE_IMAGE=$BASE_REF" "${build_args[@]}" \
      -f "$dockerfile" -t "$ref" "$ROOT/test/node/images" >&2
    log "$name: built $ref in $((SECONDS - started))s"
  fi
  export_archive "$name" "$ref"
}

# The unmodified AWS CLI and boto3 at the versions test/harness/requirements.txt pins.
build_aws_clients() {
  local req="$ROOT/test/harness/requirements.txt" awscli boto3
  awscli="$(sed -n 's/^awscli==\(.*\)$/\1/p' "$req")"
  boto3="$(sed -n 's/^boto3==\(.*\)$/\1/p' "$req")"
  [[ -n "$awscli" && -n "$boto3" ]] || { log "no awscli/boto3 pin in $req"; exit 1; }
  build_workload aws-clients "$awscli $boto3" "AWSCLI_VERSION=$awscli" "BOTO3_VERSION=$boto3"
}

# The unmodified JS SDK v3 at the versions package-lock.json resolves package.json's ranges to.
build_js_sdk() {
  local s3 sts
  read -r s3 sts < <("$NODE_BIN" -e '
    const lock = require(process.argv[1]);
    const pin = (name) => lock.packages["node_modules/" + name]?.version ?? "";
    console.log(pin("@aws-sdk/client-s3"), pin("@aws-sdk/client-sts"));' "$ROOT/package-lock.json")
  [[ -n "$s3" && -n "$sts" ]] || { log "no @aws-sdk/client-s3 / client-sts in package-lock.json"; exit 1; }
  build_workload js-sdk "$s3 $sts" "CLIENT_S3_VERSION=$s3" "CLIENT_STS_VERSION=$sts"
}

# An image of one static binary: $1 name, $2 binary, $3 tag, $4 user
build_static() {
  local name="$1" bin="$2" tag="$3" user="$4"
  [[ -x "$bin" ]] || { log "$bin missing: run scripts/build-node.sh"; exit 1; }
  local ref="localhost/$name:$tag-$(short "$(content_sha "$bin") $user $STATIC_RECIPE")"
  if have_image "$ref"; then log "$name $ref cached"; else
    local ctr
    ctr="$("${BUILDAH[@]}" from --quiet scratch)"
    "${BUILDAH[@]}" copy --quiet --chmod 0755 "$ctr" "$bin" "/$name" >/dev/null
    "${BUILDAH[@]}" config --entrypoint "[\"/$name\"]" --cmd '[]' --user "$user" "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
    log "$name: built $ref"
  fi
  export_archive "$name" "$ref"
}

# Where this machine reaches the npm registry through a TLS-inspecting proxy, the host's npm trusts
# the proxy's CA (NODE_EXTRA_CA_CERTS or npm's cafile); the build's `npm ci` gets the same trust
# from a build-only home directory bind-mounted over /root in the RUN steps (with an .npmrc naming
# the CA, and a pip.conf). /root exists in the base, so no mount point is left in any layer: nothing of it is in
# the image.
BUILD_CA_VOLUMES=()
host_ca="${NODE_EXTRA_CA_CERTS:-$(npm config get cafile 2>/dev/null || true)}"
if [[ -n "$host_ca" && "$host_ca" != null && "$host_ca" != undefined && -f "$host_ca" ]]; then
  build_home="$OUT/build-home"
  mkdir -p "$build_home"
  cp "$host_ca" "$build_home/.keycutter-build-ca.crt"
  printf 'cafile=/root/.keycutter-build-ca.crt\n' >"$build_home/.npmrc"
  mkdir -p "$build_home/.config/pip"
  printf '[global]\ncert = /root/.keycutter-build-ca.crt\n' >"$build_home/.config/pip/pip.conf"
  BUILD_CA_VOLUMES=(--volume "$build_home:/root")
  log "npm ci in the build trusts this machine's CA bundle $host_ca (build steps only)"
fi

NODE_VERSION_STR="$("$NODE_BIN" --version)"
rm -f "$OUT/images.env.tmp"
build_base
build_keycutter
build_static pause "$CACHE/bin/pause-$K8S_VERSION" "$K8S_VERSION" 65535:65535
build_static coredns "$CACHE/bin/coredns-$COREDNS_VERSION" "$COREDNS_VERSION" 65532:65532
build_aws_clients
build_js_sdk
mv "$OUT/images.env.tmp" "$OUT/images.env"
"${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
log "done in ${SECONDS}s: $OUT/images.env"
