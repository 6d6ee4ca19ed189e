# Two entry points on a fresh machine with only python3: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint typecheck unit bench system clean

# `make test` installs everything (every extra and the tools); `make demo` only the core and
# what the demo uses (pyproject.toml, [project.optional-dependencies]).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

# SoftHSM2 is the real PKCS#11 token the HSM backend is tested against.
system:
	@bash scripts/install-system-deps.sh

demo: $(DEMO_STAMP) system
	$(BIN)/bastion demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src

# The suite in parallel, one worker per core of a 2-core CI machine (pytest-xdist). Tests that
# must not run beside each other are grouped in tests/conftest.py (SERIAL_GROUPS);
# docs/TESTING.md says which and why. PYTEST_WORKERS=0 runs everything in one process.
# --durations: the slowest tests end the log, so a CI run that grows shows where.
PYTEST_WORKERS ?= 2
unit: $(STAMP) system
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

test: lint typecheck unit

# Every benchmark with its defaults (about an hour; the clean room's Tumult column needs
# bench/setup_tumult.sh first). Each prints its figures; they are kept in bench/out/.
BENCHES := vault ledger gateway releases verify cleanroom policy_check cli writes dsar snapshot side_writes egress
bench: $(STAMP) system
	@mkdir -p bench/out
	@set -e; for b in $(BENCHES); do \
		echo "== bench/bench_$$b.py"; $(BIN)/python bench/bench_$$b.py > bench/out/$$b.out; cat bench/out/$$b.out; \
	done

clean:
	rm -rf $(VENV) .bastion .pytest_cache .mypy_cache .ruff_cache
