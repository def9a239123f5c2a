# The two commands a newcomer needs: `make demo` and `make test`. Both start from nothing but python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BYOL   := $(VENV)/bin/byol
FMNIST := /usr/share/datasets/fashion-mnist
# Everything the demo writes lives here; the BentoML model store too.
export BYOL_HOME    ?= $(CURDIR)/.byol
export BENTOML_HOME ?= $(BYOL_HOME)/bentoml
PORT ?= 3000
# OpenMP threads that busy-wait starve the other processes of a small box (server workers, test clients).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install dataset lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: anything that depends on torch would otherwise pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,cpu,dev]'
	touch $@

install: $(VENV)/.installed

dataset:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass --data-root)"; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: install dataset lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

demo: install dataset
	$(BYOL) demo --port $(PORT)

clean:
	rm -rf $(VENV) runs .byol
