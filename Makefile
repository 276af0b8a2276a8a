# One-command set-up, demo and tests. Needs only Python ≥ 3.10 with venv on Linux.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

MODEL  ?= models/vfnet_lite0_bccd.pth

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: venv
	$(PY) -m pytest -q

# The bundled BCCD model on the held-out BCCD test split: COCO AP, per-class table, drawings.
demo: venv
	$(VENV)/bin/varifocal val configs/vfnet_lite0_bccd.yaml --checkpoint $(MODEL) --out-dir outputs/demo --draw 8 --score-thr 0.4

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
