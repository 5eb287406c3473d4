# `make demo` and `make test` set up everything they need on a fresh machine:
# a virtual environment in .venv with the package and its compiled core.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard ext/*.c ext/*.h ext/*.pyx ext/*.pxd)

.PHONY: demo test bench bench-report clean

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hashsieve.demo

test: $(STAMP)
	$(PY) -m pytest -q tests bench/test_ci_benchmark.py

bench: $(STAMP)
	$(PY) -m pytest -q bench --benchmark-json=bench/results/latest.json

bench-report: $(STAMP)
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/hashsieve/*.so ext/_core.c
