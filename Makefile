# emudev — see README.md. Every target installs what it needs first (scripts/setup.sh).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup run test lint uapi uapi-coverage bench clean

setup:
	@scripts/setup.sh

run: setup
	@scripts/run.sh

# The suite, with every daemon it starts recording the uapi its clients use, then the uapi
# coverage gate on what they recorded (reported even when a test failed).
COVERAGE_DIR := build/uapi-coverage

test: setup lint
	rm -rf $(COVERAGE_DIR)
	EMUDEV_COVERAGE=$(CURDIR)/$(COVERAGE_DIR) $(PY) -m pytest -q -p no:cacheprovider tests; \
	status=$$?; $(PY) -m emudev.uapi.coverage $(COVERAGE_DIR) && exit $$status

lint: setup
	$(PY) -m ruff check emudev userspace tests benchmarks examples
	$(PY) -m emudev.uapi.lint
	$(PY) -m emudev.uapi.gen --check

uapi: setup
	$(PY) -m emudev.uapi.gen

# The coverage gate alone, on what the last `make test` recorded.
uapi-coverage: setup
	$(PY) -m emudev.uapi.coverage $(COVERAGE_DIR)

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf .venv build benchmarks/build .pytest_cache .ruff_cache

# The uapi fuzzer (emudev/fuzz) for long, random: FUZZ_EXAMPLES examples or FUZZ_SECONDS
# seconds, whichever comes first; prints calls and errnos per ioctl and every finding.
# (`make test` runs a short, derandomized version: tests/mounted/test_fuzz_uapi.py.)
FUZZ_EXAMPLES ?= 20000
FUZZ_SECONDS ?= 300

.PHONY: fuzz
fuzz: setup
	$(PY) -m emudev.fuzz --examples $(FUZZ_EXAMPLES) --seconds $(FUZZ_SECONDS)
