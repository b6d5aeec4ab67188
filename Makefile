# emudev — see README.md. Every target installs what it needs first (scripts/setup.sh).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test lint uapi bench clean

setup:
	@scripts/setup.sh

run: setup
	@scripts/run.sh

test: setup lint
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check emudev userspace tests benchmarks examples
	$(PY) -m emudev.uapi.lint
	$(PY) -m emudev.uapi.gen --check

uapi: setup
	$(PY) -m emudev.uapi.gen

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf .venv build benchmarks/build .pytest_cache .ruff_cache
