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
# The tests run servers and their clients side by side on 2 cores: OpenMP threads that busy-wait would starve them
# (tests/conftest.py sets it too). Not for the demo: a training step waits on its OpenMP threads thousands of
# times, and PASSIVE made the demo's step 1.6-2× slower on 2 cores (bf16 1,062 vs 2,185 img/s; AVX2 fp32 805 vs
# 1,438); its server starts after training, alone.
TEST_ENV := OMP_WAIT_POLICY=PASSIVE

.PHONY: demo test install dataset browser lint clean bento

# The demo needs train + cpu; the tests add dev (pytest, ruff, playwright, ...): the demo does not wait for those.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: anything that depends on torch would otherwise pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,cpu]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[train,cpu,dev]'
	touch $@

install: $(VENV)/.installed-dev

dataset:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (or pass --data-root)"; fi

# The /ui test drives Debian's chromium through Playwright (no browser download); it skips when none is found.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium missing: 'sudo apt-get install chromium' (the browser test skips without it)"; fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test: install dataset browser lint
	$(TEST_ENV) $(VENV)/bin/pytest -q -p no:cacheprovider

demo: $(VENV)/.installed dataset
	$(BYOL) demo --port $(PORT)

# The Bento: the HTTP service with the served encoder packed in (the index is mounted at run time: bentofile.yaml).
# Needs an encoder in the model store (make demo, or byol export). GPU variant: make bento BENTOFILE=bentofile-gpu.yaml
BENTOFILE ?= bentofile.yaml
bento: $(VENV)/.installed
	@ls $(BENTOML_HOME)/models/byol-encoder/*/manifest.json >/dev/null 2>&1 || \
	  { echo "no encoder in the model store $(BENTOML_HOME): run 'make demo' or 'byol export' first"; exit 1; }
	BENTOML_DO_NOT_TRACK=true $(VENV)/bin/bentoml build -f $(BENTOFILE)

clean:
	rm -rf $(VENV) runs .byol
