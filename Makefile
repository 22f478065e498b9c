# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned and installed first, so that nothing later pulls a newer torch (GBs of CUDA wheels).
TORCH  := torch==2.13.0

.PHONY: install demo test lint bench bench-quality clean

$(BIN)/mimic: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[demo,dev,bench]'
	$(BIN)/python -m mimic.trainer.native
	@touch $@

install: $(BIN)/mimic

demo: install
	$(BIN)/mimic demo

test: install
	bash tests/run.sh

lint: install
	$(BIN)/ruff check .

# The quick ones (a few minutes); bench-quality takes about 35 minutes.
bench: install
	$(BIN)/python bench/import_speed.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.hostile_zip

bench-quality: install
	$(BIN)/python -m bench.quality
	$(BIN)/python -m bench.drawing

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
