# sitecache — developer entry points. `make help` lists them.

CARGO ?= cargo
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Cargo's target directory (CARGO_TARGET_DIR or the configured one), where the binaries are built.
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps --offline | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

.PHONY: version dist test-dist help test test-assets fmt fmt-check lint chart-docs chart-docs-check unit integration fuzz soak crds crds-check build release dev dev-down bench bench-fleet bench-wakeup clean-assets

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

test: test-assets fmt-check lint unit integration test-dist ## Everything CI runs: formatting, clippy, unit and real-part tests, the release's files and install paths

test-assets: ## Build or install (first run) or find the real parts: control plane, node (kubelet, containerd, runc), MinIO, Helm, promtool, helm-docs, Deno, linters
	hack/test-assets.sh ensure

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check: ## Fail if the code is not formatted
	$(CARGO) fmt --all -- --check

lint: chart-docs-check ## clippy on every target (warnings are errors), hadolint on the Dockerfile, cargo-deny's licence and duplicate checks (offline, deny.toml), deno fmt/lint/check of the runner kit, the chart README's values table, actionlint on the workflows
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd clients/deno && deno="$$(../../hack/test-assets.sh path deno)" && "$$deno" fmt --check && "$$deno" lint && "$$deno" check *.ts
	"$$(hack/test-assets.sh path hadolint)" Dockerfile
	"$$(hack/test-assets.sh path actionlint)" .github/workflows/*.yml
	"$$(hack/test-assets.sh path cargo-deny)" --offline --locked --workspace check --hide-inclusion-graph licenses bans

# helm-docs as `make chart-docs` and `make lint` run it: the values table in values.yaml's order.
HELM_DOCS = "$$(hack/test-assets.sh path helm-docs)" --chart-search-root charts --chart-to-generate charts/sitecache --sort-values-order file
CHART_README_GENERATED = $${TMPDIR:-/tmp}/sitecache-chart-README.md

chart-docs: ## Regenerate charts/sitecache/README.md from README.md.gotmpl and values.yaml's comments (helm-docs)
	$(HELM_DOCS) --log-level warning

chart-docs-check: ## Fail if charts/sitecache/README.md is not what make chart-docs generates (part of lint)
	@$(HELM_DOCS) --dry-run --log-level error > $(CHART_README_GENERATED)
	@diff -u charts/sitecache/README.md $(CHART_README_GENERATED) \
	  || { echo "charts/sitecache/README.md differs from what helm-docs generates from README.md.gotmpl and values.yaml (above): run make chart-docs" >&2; exit 1; }

unit: ## Unit tests (no real parts)
	$(CARGO) test --workspace --locked --lib --bins

integration: test-assets ## Tests on a local control plane and a local S3 server, and `make dev`'s up and down
	$(CARGO) test --locked --test integration
	$(CARGO) build --locked --bin sitecache
	SITECACHE_BIN="$(TARGET_DIR)/debug/sitecache" $(CARGO) test --locked -p sitecache -p sitecache-devtools --test dev
	SOAK_MINUTES=1 SOAK_SITECACHES=12 $(CARGO) test --locked --test integration -- --ignored soak:: --nocapture

SOAK_MINUTES ?= 20
SOAK_SITECACHES ?= 100
SOAK_SEED ?= 1
soak: test-assets ## The fault soak: SOAK_SITECACHES SiteCaches for SOAK_MINUTES under storage faults and restarts (on demand)
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_SITECACHES=$(SOAK_SITECACHES) SOAK_SEED=$(SOAK_SEED) $(CARGO) test --locked --test integration -- --ignored soak:: --nocapture

FUZZ_CASES ?= 50000
fuzz: ## The property tests with a long budget: the tar reader, decompression, the unpacker, the install (on demand; FUZZ_CASES=50000)
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --locked --lib -- props:: corpus::

crds: ## Regenerate crds/ and the chart's copy from the Rust types
	$(CARGO) run --quiet --locked -- crd > crds/sitecache.yaml
	cp crds/sitecache.yaml charts/sitecache/files/crd.yaml

# The release's version: Cargo.toml's, which the binary reports and the chart, the image and every
# file name of dist/ carry.
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DIST ?= dist
# The binary a release ships: the release profile's (DIST_PROFILE=release), built from a copy of
# the checkout's tracked files at a fixed place ($(DIST_SRC); dated now, so that a copy from
# another clone is never taken for the one already built) into a target directory of its own,
# with that place's, Cargo's and the target directory's paths mapped to fixed ones: two clones of
# a commit build the same binary, and so the same image digest, and share the build of the
# dependencies (flags that named each clone's path would rebuild them all). DIST_PROFILE=dev
# packages the tests' debug build instead: what `make test` checks (test-dist), the packaging and
# the install paths, without a second build of the whole dependency graph.
DIST_PROFILE ?= release
DIST_SRC = $(TARGET_DIR)/dist-src
DIST_TARGET_DIR = $(TARGET_DIR)/dist-build
CARGO_HOME ?= $(HOME)/.cargo
DIST_RUSTFLAGS = --remap-path-prefix=$(DIST_SRC)=/sitecache --remap-path-prefix=$(CARGO_HOME)=/cargo --remap-path-prefix=$(DIST_TARGET_DIR)=/target
version: ## Print the version a release of this checkout has (Cargo.toml's)
	@echo "$(VERSION)"

dist: ## Build the release into dist/ (DIST=dir): binary, image (OCI archive), chart package and OCI layout, install.yaml, kustomize base, krew plugin, SBOM, notes, SHA256SUMS (docs/releasing.md)
	@set -x; if [ "$(DIST_PROFILE)" = release ]; then \
	  rm -rf "$(DIST_SRC)" && mkdir -p "$(DIST_SRC)" \
	  && git ls-files -z | tar --null -T - -cf - | tar -xmf - -C "$(DIST_SRC)" \
	  && cd "$(DIST_SRC)" \
	  && RUSTFLAGS="$(DIST_RUSTFLAGS)" CARGO_TARGET_DIR="$(DIST_TARGET_DIR)" $(CARGO) build --release --locked -p sitecache --bin sitecache; \
	else \
	  $(CARGO) build --locked -p sitecache --bin sitecache; \
	fi
	$(CARGO) build --locked --quiet -p sitecache-devtools --bin sitecache-dev
	"$(TARGET_DIR)/debug/sitecache-dev" --repo "$(CURDIR)" dist --sitecache-bin "$(if $(filter release,$(DIST_PROFILE)),$(DIST_TARGET_DIR)/release,$(TARGET_DIR)/debug)/sitecache" --out "$(DIST)" $(DIST_ARGS)

# make test checks a release of the tests' debug build (TEST_DIST_PROFILE=release for the real one).
TEST_DIST_PROFILE ?= dev
test-dist: DIST = $(TARGET_DIR)/tmp/dist-test
test-dist: DIST_PROFILE = $(TEST_DIST_PROFILE)
test-dist: test-assets dist ## Check a release (make dist) with the tools its users use, and install it from its files on the real node with Helm, install.yaml and kustomize
	SITECACHE_DIST="$(DIST)" $(CARGO) test --locked --test integration -- --ignored dist::

build: ## Debug build of the sitecache binary
	$(CARGO) build --locked

release: ## Release build of the sitecache binary
	$(CARGO) build --locked --release

dev: test-assets ## Run sitecache locally (control plane, S3 server, controller, job runner) with the example site
	$(CARGO) build --locked -p sitecache -p sitecache-devtools --bin sitecache --bin sitecache-dev
	"$(TARGET_DIR)/debug/sitecache-dev" up --repo "$(CURDIR)" --sitecache-bin "$(TARGET_DIR)/debug/sitecache"

dev-down: ## Stop everything `make dev` started and remove its state (.dev/)
	$(CARGO) build --locked --quiet -p sitecache -p sitecache-devtools --bin sitecache-dev
	"$(TARGET_DIR)/debug/sitecache-dev" down --repo "$(CURDIR)"

bench: test-assets ## Benchmark snapshot and restore against the older runner and the extraction limit (on demand; BENCH_ARGS=--runs 5)
	$(CARGO) build --release --locked --bin sitecache
	$(CARGO) run --release --locked -p sitecache-bench -- --sitecache "$(TARGET_DIR)/release/sitecache" $(BENCH_ARGS)

bench-fleet: test-assets ## Benchmark the controller with 10,000 SiteCaches: adoption, at rest, backlogs, memory (on demand; BENCH_ARGS=--n 2000)
	$(CARGO) build --release --locked --bin sitecache
	$(CARGO) run --release --locked -p sitecache-bench-fleet -- --sitecache "$(TARGET_DIR)/release/sitecache" $(BENCH_ARGS)

bench-wakeup: test-assets ## Benchmark a site's wake-up from an empty DENO_DIR to its first responses: the seed's flow, a deno cache warm, a warm that served the site (on demand; BENCH_ARGS=--runs 5)
	$(CARGO) build --release --locked --bin sitecache
	$(CARGO) run --release --locked -p sitecache-bench-wakeup -- --sitecache "$(TARGET_DIR)/release/sitecache" $(BENCH_ARGS)

clean-assets: ## Forget the cached test assets (the next run rebuilds them)
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/sitecache/assets"
