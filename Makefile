# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt

.PHONY: venv demo test bench-quick clean

# Create or update the virtual environment: the project, editable, with every plugin
# extra and the dev tools, under the pinned torch/torchvision builds.
venv:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" -c $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[all,dev]"
	touch $(VENV)/.installed

$(VENV)/.installed:
	$(MAKE) venv

demo: $(VENV)/.installed
	$(PY) recipes/quickstart_digits.py

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
