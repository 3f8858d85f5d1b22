# The two set-up commands: `make demo` and `make test`. Both install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   ?= ../shared/data
UV_VERSION := 0.13.8

.PHONY: install demo serve test lint bench-rle clean

# uv resolves and links the ~8 GB stack in about a minute, pip takes several;
# --compile-bytecode matters because PYTHONDONTWRITEBYTECODE may be set.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -C editable_mode=compat -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/steelsight demo --data $(DATA)/severstal-sample

# The demo's server on this machine: the champions `make demo` trained, its warehouse,
# no API keys (announced at start). Production sets STEELSIGHT_API_KEYS instead.
serve: install
	$(BIN)/steelsight serve --allow-no-keys

test: install
	STEELSIGHT_SHARED_DATA=$(DATA) $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

bench-rle: install
	$(BIN)/python bench/rle.py --data $(DATA)

clean:
	rm -rf $(VENV) .steelsight
