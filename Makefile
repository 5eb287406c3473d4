# `make demo` and `make test` set up everything they need on a fresh machine:
# a virtual environment in .venv with the package and its compiled core.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# BASE: the package and its compiled core, all the demo needs; FULL: plus the test and
# benchmark extras (faiss, imagehash, matplotlib, ...).
BASE := $(VENV)/.installed
FULL := $(VENV)/.installed-test
SOURCES := pyproject.toml setup.py $(wildcard ext/*.c ext/*.h ext/*.pyx ext/*.pxd)

.PHONY: demo test bench bench-report clean

$(BASE): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

# The extras' requirements alone, read from pyproject.toml: no second build of the core.
# (tomllib is Python 3.11+; pip carries tomli for 3.10.)
EXTRAS = "exec('try: import tomllib\\nexcept ImportError: from pip._vendor import tomli as tomllib'); \
x = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; \
print('\\n'.join(sorted(set(x['test'] + x['bench']))))"

$(FULL): $(BASE)
	$(PY) -c $(EXTRAS) > $(VENV)/extras.txt
	$(PY) -m pip install --quiet -r $(VENV)/extras.txt
	touch $(FULL)

demo: $(BASE)
	$(PY) -m hashsieve.demo

test: $(FULL)
	$(PY) -m pytest -q tests bench/test_ci_benchmark.py

bench: $(FULL)
	$(PY) -m pytest -q bench --benchmark-json=bench/results/latest.json

bench-report: $(FULL)
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/hashsieve/*.so ext/_core.c
