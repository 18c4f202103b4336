# Two commands do everything (see README):  `make test`  and  `make stream`.
# Both create the virtual environment on first use (or when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Nothing is downloaded at run time (docs/design.md): open_clip / huggingface would otherwise hang on the hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
# 2-core machines: one BLAS thread per core, no oversubscription between torch and numpy.
export OMP_NUM_THREADS ?= 2

.PHONY: env test stream notebook lab clean-env

# `make stream` runs the full-stream notebook on the synthetic 20-task stream at the bench preset
# (FineTune, JointTrain, C2GR; 52 minutes on a 2-core AMD EPYC Zen 3 in fp32, where the previous budget took
# 26 on an EPYC with AVX-512 and bf16; 204 generator and 24 segmentor steps per round instead of the preset's 1200 and 96:
# BENCHMARKS.md section 2) through papermill into runs/<date>_05_full_stream_<TAG>/. At that budget it keeps
# per-pixel class weights (diffusion.mask_balance_by=pixel; the preset's "timestep" weights win at its own
# budget and lost at 102 steps, where faint structures are learnt more slowly: C2GR 44.04 Overall per pixel
# against 36.48 with the preset's weights, seed 0, BENCHMARKS.md section 2).
# Override e.g. `make stream PARAMS='-p n_tasks 6 -p methods "[finetune, c2gr]"'`.
TAG ?= $(shell date +%H%M%S)
STREAM_PARAMS ?= -p stream synthetic-paper-20 -p preset_name bench -p config_overrides '{"train.gen_epochs": 68, "train.epochs": 8, "diffusion.mask_balance_by": "pixel"}' -p ablation "[]" -p progress true
PARAMS ?=
NB ?= notebooks/05_full_stream.ipynb

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

# --durations: the slowest items in every CI log, to keep the suite within its 15 minutes on 2 cores.
# Two workers of one thread each (TEST_WORKERS): most of the suite is single-threaded (imports, kernels,
# subprocesses), so one process left a core idle; two workers of two threads each oversubscribed the cores
# and OpenMP stalled. --dist loadfile keeps a notebook's cells, and a test file's fixtures, in one worker.
# Fresh-clone .ci/run on a 2-core AMD EPYC Zen 3, 2026-12-07: 1039 s in one process, 611 and 653 s in two workers
# (871 s, in the workbench, while a benchmark smoke test's thread setting still leaked into later tests:
# conftest.py). TEST_WORKERS=0 runs everything in one process, with two threads.
TEST_WORKERS ?= 2
test: env
	OMP_NUM_THREADS=$(if $(filter 0,$(TEST_WORKERS)),2,1) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(wildcard notebooks/*.ipynb) \
		--nbval-lax --nbval-current-env --durations=15

stream: env
	$(BIN)/python -m c2gr_core.interface.batch notebooks/05_full_stream.ipynb --tag stream-$(TAG) $(STREAM_PARAMS) $(PARAMS)

notebook: env
	$(BIN)/python -m c2gr_core.interface.batch $(NB) --tag $(TAG) $(PARAMS)

# JupyterLab over the whole repository (README and docs/ reachable), opening notebooks/. Containers
# run as root, where Jupyter refuses to start without --allow-root.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: env
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks $(LAB_ROOT) $(LAB_ARGS)

clean-env:
	rm -rf $(VENV)
