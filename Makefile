# Two commands do everything (see README):  `make test`  and  `make stream`.
# Both create the virtual environment on first use (or when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Nothing is downloaded at run time (DESIGN.md): open_clip / huggingface would otherwise hang on the hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
# 2-core machines: one BLAS thread per core, no oversubscription between torch and numpy.
export OMP_NUM_THREADS ?= 2

.PHONY: env test stream lab clean-env

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

test: env
	$(BIN)/python -m pytest -q tests $(wildcard notebooks/*.ipynb) --nbval-lax --nbval-current-env

lab: env
	$(BIN)/jupyter lab notebooks

clean-env:
	rm -rf $(VENV)
