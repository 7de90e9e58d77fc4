# lifeseq: `make demo` runs the pipeline on synthetic data, `make test` runs the test suite.
# Both set up .venv first; set-up is skipped when the requirement files have not changed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.lifeseq-setup
REQS := requirements/torch-cpu.txt requirements/torchrec.txt requirements/base.txt setup.cfg pyproject.toml
DEMO_DIR ?= out/demo
PYTEST_ARGS ?=

.PHONY: setup test demo lint bench-pipeline clean

setup: $(STAMP)

# torchrec goes in after base.txt and with --no-deps, so pip's resolver never sees its CUDA
# fbgemm-gpu and torchmetrics pins (no "ERROR: pip's dependency resolver" on a fresh machine);
# requirements/pip_check.py then fails on any broken requirement beyond those two.
$(STAMP): $(REQS) requirements/pip_check.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) pipeline/java_check.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/torch-cpu.txt
	$(PIP) install -q -r requirements/base.txt
	$(PIP) install -q --no-deps -r requirements/torchrec.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) requirements/pip_check.py
	$(PY) -c "import torch, fbgemm_gpu, torchrec, lightning, pyspark, webdataset; print('setup OK: torch', torch.__version__, '| torchrec', torchrec.__version__, '| pyspark', pyspark.__version__)"
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/lifeseq demo --workdir $(DEMO_DIR)

lint: setup
	$(VENV)/bin/ruff check .

bench-pipeline: setup
	$(PY) -m lifeseq.jobs.bench_pipeline --out bench_out/pipeline.json

clean:
	rm -rf $(VENV) out bench_out .pytest_cache
