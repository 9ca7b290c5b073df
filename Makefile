# homerank — two commands set everything up on a fresh machine:
#   make demo   create .venv, install pinned dependencies, generate the synthetic log, run the whole pipeline
#   make test   create/update .venv with the test extras and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= runs/demo

.PHONY: demo test install install-test install-bench bench-etl bench-graph bench-pipeline bench-accuracy bench-accuracy-minute lint clean check-gpu-env

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[test,text]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/homerank demo --out $(OUT)

test: install-test
	$(PY) -m pytest -q

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt -e '.[bench,dev]'
	touch $@

install-bench: $(VENV)/.installed-bench

bench-etl: install-bench
	$(PY) -m bench all $(BENCH_ARGS)

bench-graph: install-bench
	$(PY) -m bench graph $(BENCH_ARGS)

bench-pipeline: install-bench
	$(PY) -m bench pipeline-scaling $(BENCH_ARGS)

bench-accuracy: install-bench
	$(PY) bench/accuracy_bench.py --config preset:recipe

bench-accuracy-minute: install-bench
	$(PY) bench/accuracy_bench.py --config preset:minute --name gowalla-minute

lint: install-bench
	$(VENV)/bin/ruff check homerank engine gnn homepage jobs bench tests

# pip's resolver in dry-run mode for each GPU extra with its constraints (needs the package index, no GPU);
# fails when a set cannot be resolved
check-gpu-env: install
	@for cuda in cu12 cu13; do \
	  $(PIP) install --dry-run --ignore-installed --quiet -c constraints-gpu-$$cuda.txt -e ".[gpu-$$cuda]" \
	    || { echo "gpu-$$cuda: does not resolve"; exit 1; }; \
	  echo "gpu-$$cuda: resolves with constraints-gpu-$$cuda.txt"; \
	done

clean:
	rm -rf runs .pytest_cache
