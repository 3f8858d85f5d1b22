# The two set-up commands: `make demo` and `make test`. Both install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   ?= ../shared/data
# uv itself lives in its own small environment, outside the one it keeps in sync.
UV_VERSION := 0.13.8
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
# never fetch a Python interpreter: use the machine's
export UV_PYTHON_DOWNLOADS := never

.PHONY: install lock-check lock demo serve test lint bench-rle clean browser

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# Exactly the versions in uv.lock, every package of them, and nothing else: `uv sync
# --frozen` neither resolves nor updates the lock (see "Upgrading a pin" in the README).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	touch $(STAMP)

install: $(STAMP)

# Fails when pyproject.toml asks for something uv.lock does not hold. From uv's cache
# when it can; online otherwise, which also says what changed.
lock-check: | $(UV)
	$(UV) lock --check --offline --quiet --python $(PYTHON) 2>/dev/null \
		|| $(UV) lock --check --python $(PYTHON)

# After changing a pin in pyproject.toml: resolve again, keeping every other version.
lock: | $(UV)
	$(UV) lock --python $(PYTHON)

demo: install
	$(BIN)/steelsight demo --data $(DATA)/severstal-sample

# The demo's server on this machine: the champions `make demo` trained, its warehouse,
# no API keys (announced at start). Production sets STEELSIGHT_API_KEYS instead.
serve: install
	$(BIN)/steelsight serve --allow-no-keys

# The quality page's tests drive Debian's chromium (Playwright never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the quality page's browser tests"; \
		apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "could not install chromium (not root?): run apt-get install chromium"; }

# One pytest-xdist worker per logical CPU (at most 4), each on its own share of them;
# tests that share a fixture wider than one test stay on one worker (tests/conftest.py).
# `logical`, not `auto`: xdist's `auto` counts physical cores, one on a 2-vCPU VM whose
# vCPUs are one core's two threads. `make test TEST_WORKERS=0` runs one process, in order.
TEST_WORKERS ?= logical
test: lock-check install browser
	STEELSIGHT_SHARED_DATA=$(DATA) $(BIN)/python -m pytest -n $(TEST_WORKERS) --maxprocesses 4 \
		--dist loadgroup

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

bench-rle: install
	$(BIN)/python bench/rle.py --data $(DATA)

clean:
	rm -rf $(VENV) $(TOOLS) .steelsight
