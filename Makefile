# finmerge — `make run` runs the whole pipeline on the embedded demo; `make test` runs the tests.
# Both create .venv and install what they need on first use; later calls reuse it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
ARGS   ?=
# test processes: most of the slow tests wait on servers and child processes, so two workers on two cores
# take the suite from ~14.5 to ~10 minutes (pytest-xdist; TEST_WORKERS=0 runs it in one process)
TEST_WORKERS ?= 2

.PHONY: help install run test test-fast lint format bench stack stack-down screenshots clean distclean

help:  ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned: the CPU wheel; an unpinned torch drags in GBs of CUDA packages.
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	@# An editable install leaves our own modules uncompiled (PYTHONDONTWRITEBYTECODE may be set too), and every
	@# command would compile them again: ~0.25 s of CPU. Checked-hash .pyc files are used only while unchanged.
	$(PY) -m compileall -q --invalidation-mode checked-hash finmerge tasks flows
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install finmerge with its test tools

run: $(STAMP)  ## run the whole pipeline on the embedded demo (ARGS="--set k=v" to override)
	$(VENV)/bin/finmerge run --config configs/demo.yaml $(ARGS)

test: $(STAMP)  ## run all tests, the slow end-to-end ones included (TEST_WORKERS=2 processes)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(ARGS)

test-fast: $(STAMP)  ## unit tests only (skips the end-to-end tests marked slow)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" $(ARGS)

lint: $(STAMP)  ## ruff check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

stack: $(STAMP)  ## start the local dev stack (moto S3, mlflow server, prefect server); `finmerge stack env` prints its variables
	$(VENV)/bin/finmerge stack up

stack-down: $(STAMP)  ## stop the local dev stack, leaving nothing running
	$(VENV)/bin/finmerge stack down

bench: $(STAMP)  ## run the benchmarks in bench/ (one JSON line each; ~20 min, ~12 GB of temp disk for merge)
	@for f in bench/*.py; do echo "# $$f"; $(PY) $$f || exit 1; done

screenshots: $(STAMP)  ## photograph the Prefect and MLflow UIs into docs/img/ (installs Debian chromium if missing)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) -m pip install -q -c constraints.txt -e ".[docs]"
	$(PY) docs/screenshots.py

clean:  ## remove the demo outputs (.finmerge/)
	rm -rf .finmerge

distclean: clean  ## also remove .venv
	rm -rf $(VENV)
