# convserve: the two commands that matter are `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STORE  ?= model_store
PORT   ?= 8000
HOST   ?= 127.0.0.1

TOOLS  := .venv-tools
TOOLS_BIN := $(TOOLS)/bin

.PHONY: serve test lint train bench bench-peers browser nginx tools lock clean help

help:
	@echo "make serve   - create .venv, install, serve the embedded model on http://$(HOST):$(PORT)"
	@echo "make test    - create .venv with dev extras, run the whole suite"
	@echo "make train   - train SimpleConvNet on MNIST and publish it to $(STORE) as 'mnist' (alias staging)"
	@echo "make bench   - run the benchmarks (installs the optional torch extra)"
	@echo "make bench-peers - convserve's HTTP front against KServe and FastAPI (.venv-peers)"
	@echo "make lint    - ruff"
	@echo "make lock    - regenerate requirements.lock (+ requirements-build.lock) from pyproject.toml, with hashes"
	@echo "make tools   - .venv-tools: checkov, kubernetes-validate, pip-tools (the deploy checks use them)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per extra set, rebuilt when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed-base

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed-base

serve: $(VENV)/.installed-base
	$(BIN)/convserve serve --store $(STORE) --host $(HOST) --port $(PORT)

# Browser tests need Debian's chromium; install it when we can (root + apt), else they skip.
browser:
	@bash scripts/ensure-browser.sh

# The scale-out tests run Debian's nginx as their own process; install it when we can.
nginx:
	@bash scripts/ensure-nginx.sh

# The deployment checkers live in their own venv (checkov's many pins stay out of .venv).
# Without PyPI it cannot be built: the tests that need it then skip, saying so.
$(TOOLS)/.installed: scripts/tools-requirements.txt
	@rm -rf $(TOOLS)
	@$(PYTHON) -m venv $(TOOLS) \
	&& $(TOOLS_BIN)/pip install --quiet --upgrade pip \
	&& $(TOOLS_BIN)/pip install --quiet -r scripts/tools-requirements.txt \
	&& touch $@ \
	|| { echo "could not build $(TOOLS): the checkov/kubernetes-validate tests will be skipped"; rm -rf $(TOOLS); }

tools: $(TOOLS)/.installed

# The image installs requirements.lock with --require-hashes (Dockerfile). Run after any change
# to [project] dependencies or [build-system] in pyproject.toml; tests/deploy/test_lock.py
# fails until then.
LOCK_OPTIONS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links
lock: $(TOOLS)/.installed
	$(TOOLS_BIN)/pip-compile $(LOCK_OPTIONS) --output-file=requirements.lock pyproject.toml
	$(TOOLS_BIN)/pip-compile $(LOCK_OPTIONS) --all-build-deps --only-build-deps --output-file=requirements-build.lock pyproject.toml

# pytest exits 5 when it collected nothing: say so loudly instead of failing obscurely.
test: $(VENV)/.installed-dev browser nginx tools
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check training service tests benchmarks

train: $(VENV)/.installed-base
	$(BIN)/convserve train --store $(STORE) --publish --name mnist --alias staging --out runs/mnist.npz

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/train_epoch.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/serve_breakdown.py

# Not part of `make test`: ~10 minutes of load on the machine. The peers (KServe, FastAPI +
# uvicorn) go into their own venv, .venv-peers, created by the script on first use.
bench-peers: $(VENV)/.installed-base
	$(BIN)/python benchmarks/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .venv-peers build dist *.egg-info .pytest_cache .ruff_cache
