# Set-up and entry points. Everything runs in a project-local virtualenv (.venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_DATA ?= $(if $(TDT_SHARED_DATA),$(TDT_SHARED_DATA),../shared/data)
OUT ?= out

.PHONY: install test demo bench lint format clean

install: $(STAMP)

# torch first, pinned: the local CPU build. constraints.txt then keeps torchvision
# at 0.28.0 so pip never swaps in a multi-GB CUDA torch (see DESIGN traps).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	@if [ -d "$(SHARED_DATA)/PETS09-S2L1-half1" ]; then \
		$(BIN)/python -m pipeline.distill --dataset pets09-s2l1-half1 --teacher osnet_x0_25 \
			--teacher-weights $(SHARED_DATA)/weights/osnet_x0_25_msmt17.pth --out $(OUT)/shards-pets && \
		$(BIN)/python -m pipeline.verify $(OUT)/shards-pets; \
	else \
		echo "make demo needs the real data folder (../shared/data or TDT_SHARED_DATA): not found at $(SHARED_DATA)."; \
		echo "See README.md 'Real data' for how to get PETS09-S2L1 and the OSNet weights."; \
		exit 2; \
	fi

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
