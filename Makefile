# The two commands of the contract: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint typecheck pytest up down clean

install: $(STAMP)

# Re-installs only when the dependency declaration or the lock changes.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || { \
		$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
			echo "hitl needs Python 3.11 or newer; $(PYTHON) is not. Run: make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; \
			exit 1; }; \
		$(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The inner loop: unit tests without the real encoder (~1.5 min); `make test` is the full suite CI runs.
test-fast: install
	$(BIN)/pytest tests/unit -m "not slow and not integration" -q $(PYTEST_ARGS)

up: install
	$(BIN)/hitl db upgrade
	$(BIN)/hitl up $(if $(CATALOG),--catalog $(CATALOG))

down:
	$(BIN)/hitl down

clean:
	rm -rf $(VENV) .hitl .pytest_cache .mypy_cache .ruff_cache
