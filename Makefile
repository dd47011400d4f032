# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt

.PHONY: venv demo test bench-quick clean

# Create or update the virtual environment: the project, editable, with every plugin
# extra and the dev tools, under the pinned torch/torchvision builds.
venv:
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or make PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" -c $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[all,dev]"
	touch $(VENV)/.installed

$(VENV)/.installed:
	$(MAKE) venv

demo: $(VENV)/.installed
	$(PY) recipes/vision_channel_pruning.py

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

# Every benchmark in its reduced form (each under 2 minutes).
bench-quick: $(VENV)/.installed
	for b in bench/[a-z]*.py; do $(PY) $$b --quick || exit 1; done
