# mlmodel-operator: common tasks. `make help` lists them.

CARGO       ?= cargo
CLUSTER_DIR ?= target/cluster
CRD         := deploy/crd/mlmodels.yaml
# The Helm chart ships the same file in its crds/ (never templated).
CHART_CRD   := deploy/helm/mlmodel-operator/crds/mlmodels.yaml

.PHONY: help demo test bench build images crd cluster-up cluster-down fmt lint

help:
	@echo "make demo          build, start a local cluster, run the operator on the samples (deploy/demo.sh)"
	@echo "make test          build what is missing and run every test, unit and integration (tests/run.sh)"
	@echo "make bench         reaction-time benchmark on the local control plane (benches/lifecycle.rs), and"
	@echo "                   download throughput on the real node against curl (benches/throughput.rs; root)"
	@echo "make build         cargo build --release --locked --bin mlmodel-operator"
	@echo "make images        build the real node's images with podman (tests/cluster/images.sh; root)"
	@echo "make crd           regenerate $(CRD) and the chart's copy from the code"
	@echo "make cluster-up    start a local control plane in $(CLUSTER_DIR) (CLUSTER_DIR=..., REAL_NODE=1 adds a real node)"
	@echo "make cluster-down  stop it"
	@echo "make fmt           cargo fmt"
	@echo "make lint          cargo fmt --check and clippy with warnings as errors"
	@echo "make fuzz          run each fuzz target in tests/fuzz for 10 minutes or 1M executions (not part of make test)"

demo:
	deploy/demo.sh

test:
	tests/run.sh

bench:
	$(CARGO) bench --locked --bench lifecycle
	$(CARGO) bench --locked --bench throughput

build:
	$(CARGO) build --release --locked --bin mlmodel-operator

images:
	tests/cluster/images.sh build

# Written to a temporary file first so a failed run leaves the committed CRD untouched.
crd:
	$(CARGO) run --quiet --locked -- crd > $(CRD).tmp || { rm -f $(CRD).tmp; exit 1; }
	cp $(CRD).tmp $(CHART_CRD)
	mv $(CRD).tmp $(CRD)

cluster-up:
	tests/cluster/cluster.sh up $(CLUSTER_DIR) $(if $(filter 1,$(REAL_NODE)),--real-node)
	@echo 'use it: eval "$$(tests/cluster/cluster.sh env $(CLUSTER_DIR))"'

cluster-down:
	tests/cluster/cluster.sh down $(CLUSTER_DIR)

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features fault-injection -- -D warnings

# Fuzz targets (tests/fuzz, a crate of its own; cargo-fuzz is installed when missing). cargo-fuzz
# builds with -Zsanitizer=address, which RUSTC_BOOTSTRAP=1 allows on a stable toolchain. Each
# target runs until FUZZ_SECONDS pass or FUZZ_RUNS inputs were tried; new inputs go to
# tests/fuzz/target/corpus/<target> (the committed seeds in tests/fuzz/corpus/<target> are
# only read), crashes to tests/fuzz/artifacts/<target>/.
.PHONY: fuzz
FUZZ_TARGETS ?= unpack url termination mlmodel
FUZZ_SECONDS ?= 600
FUZZ_RUNS    ?= 1000000
FUZZ_CARGO   := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz

fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	$(FUZZ_CARGO) build --fuzz-dir tests/fuzz --codegen-units 16
	set -e; for target in $(FUZZ_TARGETS); do \
		mkdir -p tests/fuzz/target/corpus/$$target; \
		$(FUZZ_CARGO) run --fuzz-dir tests/fuzz --codegen-units 16 $$target \
			tests/fuzz/target/corpus/$$target tests/fuzz/corpus/$$target \
			-- -max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -print_final_stats=1; \
	done
