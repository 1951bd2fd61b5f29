# The two entry points: `make run` (relay + local sink, sandbox config) and `make test`.
# Both install what they need first, idempotently.

SHELL := /bin/bash
# Keep build output outside the clone so fresh clones (and CI) reuse the RocksDB build.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/relay-target
APT_PACKAGES := libclang-dev clang swaks strace openssl
SINK_ADDR ?= 127.0.0.1:2600
# The plugins that ship, built as Wasm components for wasm32-wasip2.
PLUGINS := rate-limit ip-pools suppression content-policy bad-plugin hello-plugin
SHIPPED := rate-limit ip-pools suppression content-policy
WASM_DIR := $(CARGO_TARGET_DIR)/wasm32-wasip2/release

.PHONY: run test setup build sink check fmt clippy fuzz plugins

setup:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@# dkimpy (with PyNaCl for Ed25519): the independent DKIM verifier of the e2e tests.
	@python3 -c 'import dkim, nacl' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check dkimpy pynacl

# Every plugin crate as a Wasm component in $(WASM_DIR).
plugins: setup
	cargo build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))

build: setup plugins
	cargo build --release -p relay
	@mkdir -p data/plugins
	@# A plugin's name is its file stem; write then rename so the relay never reads half a file.
	@for p in $(SHIPPED); do cp $(WASM_DIR)/$$(echo $$p | tr - _).wasm data/plugins/.$$p.tmp && mv data/plugins/.$$p.tmp data/plugins/$$p.wasm; done

# The relay with the embedded sandbox config (examples/relay.toml): it listens on
# 127.0.0.1:2525 and routes every domain to a local sink on $(SINK_ADDR) that stores
# messages in ./data/sink. Ctrl-C stops both.
run: build
	@mkdir -p data
	@$(CARGO_TARGET_DIR)/release/relay sink --listen $(SINK_ADDR) --dir ./data/sink & \
	  sink=$$!; trap "kill $$sink 2>/dev/null" EXIT INT TERM; \
	  $(CARGO_TARGET_DIR)/release/relay serve

sink: build
	$(CARGO_TARGET_DIR)/release/relay sink --listen $(SINK_ADDR) --dir ./data/sink

# Unit tests, then the end-to-end tests against the real binary, then Postfix using the relay
# as its smarthost (tests/postfix-smarthost.sh installs Postfix if it is missing).
test: setup plugins
	cargo build -p relay --bins
	cargo test --workspace --no-fail-fast
	tests/postfix-smarthost.sh

check: fmt clippy

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

# Each fuzz target for FUZZ_SECONDS (see fuzz/README.md); installs cargo-fuzz if missing.
FUZZ_SECONDS ?= 60
fuzz: setup
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && cargo fuzz build -s none && for t in command_parser data_decoder session; do \
	  mkdir -p corpus/$$t && \
	  cargo fuzz run -s none $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done
