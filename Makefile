# whatsapp-webhook: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PORT ?= 9443
# The documented test app secret that signs events/ (see scripts/make-events.py).
TEST_APP_SECRET := whatsapp-webhook-test-secret

.PHONY: run test check tools events

## Local server on the built-in defaults: memory state, echo engine, replies logged.
run:
	@cargo build --quiet
	@python3 scripts/print-curl.py $(PORT)
	WHATSAPP_APP_SECRET=$(TEST_APP_SECRET) ./target/debug/whatsapp-webhook serve

## Every test: formatting, lints, unit, property and integration tests (moto_server included).
test: tools
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo test --quiet

## Project-local tools the tests need (a Python virtualenv with moto[server]).
tools:
	@bash scripts/ensure-moto.sh

## Regenerate events/*.json (and their signatures) from events/bodies/.
events:
	python3 scripts/make-events.py
