# Set-up is part of every target: a fresh clone needs nothing but Python 3.10+ and pip.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml constraints-cpu.txt | cksum | cut -d' ' -f1)

.PHONY: setup test bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "areal setup: GPU found, installing the CUDA stack"; \
		$(BIN)/python -m pip install -q -e ".[test,bench]"; \
	else \
		echo "areal setup: no GPU, installing the CPU stack (torch==2.13.0 CPU build)"; \
		$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[test,bench]"; \
	fi
	@$(BIN)/python -c "import areal, torch; print('areal setup: torch', torch.__version__)"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/aggregation.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
