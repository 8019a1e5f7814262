# slmnet — one entry point for setting up and testing.
#   make test    create .venv, install every pinned dependency, run the test suite
#   make demo    the same environment, then `slmnet up`: the whole subnet on this machine
#   make install only the environment (re-run: skips what is already installed)
#   make lint    ruff: lint and format check (make test runs it first)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.slmnet-installed

.PHONY: install browser lint test demo clean-venv

install: $(STAMP) browser

# The dashboard test drives Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# The order matters on CPU machines: the local CPU build of torch first (otherwise
# pip pulls gigabytes of CUDA packages), then the lock with --no-deps (it leaves out
# torchvision/torchaudio/torchcodec, which break `import vllm`, and the 1 GB triton
# that the CPU engine never uses), then slmnet itself in editable mode.
$(STAMP): requirements/cpu.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet --no-deps -r requirements/cpu.lock
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import vllm, bittensor, chain, limits, playwright.sync_api, openai"
	touch $(STAMP)

test: install lint
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: install
	$(PY) -m neurons.cli up --dir ./slmnet-up

clean-venv:
	rm -rf $(VENV)
