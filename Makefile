# slmnet — one entry point for setting up and testing.
#   make test    create .venv, install every pinned dependency, run the test suite
#   make demo    the same environment, then `slmnet up`: the whole subnet on this machine
#   make install only the environment (re-run: skips what is already installed)
#   make lint    ruff (lint and format check) and mypy (make test runs it first)
#   make soak    the long runs (tests marked soak): real SmolLM2 miners against the verifier
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.slmnet-installed
# The real models the tests and the demo serve, prepared once from the GGUFs their PyPI
# packages carry (SmolLM2 ~40 s, Gemma 3 270M ~95 s here); the tests read them from here.
MODELS_CACHE ?= $(HOME)/.cache/slmnet
# Where the CPU build of torch comes from when no local wheel is on this machine's pip
# find-links (PyPI's torch is a CUDA build of several GB).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install system-packages python-version lint models test soak demo clean-venv

# The engine and every pin; `make test` adds the system packages its tests start.
install: $(STAMP)

python-version:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || \
		{ echo "slmnet needs Python 3.11 (the engine and the lock are built for it); found: $$($(PYTHON) --version 2>&1). Run: make PYTHON=python3.11 $(MAKECMDGOALS)"; exit 1; }

# The tests' system services, from Debian: chromium for the dashboard test (driven by
# Playwright, no browser download) and redis-server for the gateway's shared limits.
system-packages:
	@command -v chromium >/dev/null && command -v redis-server >/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium redis-server)

# The order matters on CPU machines: the CPU build of torch first (a local wheel when
# pip's find-links hold one, else the PyTorch CPU index; PyPI's would pull gigabytes of
# CUDA packages), then the lock with --no-deps (it holds torch's own dependencies and
# leaves out torchvision/torchaudio/torchcodec, which break `import vllm`, and the 1 GB
# triton that the CPU engine never uses), then slmnet itself in editable mode.
$(STAMP): requirements/cpu.lock pyproject.toml | python-version
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-deps --no-index torch==2.13.0 2>/dev/null || \
		$(PIP) install --quiet --no-deps --index-url $(TORCH_CPU_INDEX) torch==2.13.0
	$(PIP) install --quiet --no-deps -r requirements/cpu.lock
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import vllm, bittensor, chain, redis, playwright.sync_api, openai"
	touch $(STAMP)

# Each is reused when its folder's manifest matches its weights (a hash, ~3 s for Gemma).
models: $(STAMP)
	SLMNET_CACHE=$(MODELS_CACHE) $(PY) -m neurons.cli models prepare smollm2-135m
	SLMNET_CACHE=$(MODELS_CACHE) $(PY) -m neurons.cli models prepare gemma3-270m

test: install system-packages lint models
	SLMNET_CACHE=$(MODELS_CACHE) $(PY) -m pytest -q tests -m "not soak" --durations=25

soak: install system-packages models
	SLMNET_CACHE=$(MODELS_CACHE) $(PY) -m pytest -q -s tests -m soak

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

demo: install models
	SLMNET_CACHE=$(MODELS_CACHE) $(PY) -m neurons.cli up --dir ./slmnet-up

clean-venv:
	rm -rf $(VENV)
