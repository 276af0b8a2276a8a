# One-command set-up, demo and tests. Needs only Python ≥ 3.10 with venv on Linux.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

MODEL  ?= models/vfnet_lite0_bccd.pth

.PHONY: venv lint test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# Lint and format checks (ruff, configured in pyproject.toml), then the test suite.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

# The bundled BCCD model on the held-out BCCD test split: COCO AP, per-class table, drawings.
demo: venv
	$(VENV)/bin/varifocal val configs/vfnet_lite0_bccd.yaml --checkpoint $(MODEL) --out-dir outputs/demo --draw 8 --score-thr 0.4

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
