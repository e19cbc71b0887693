"""Case 16 (../shared/cases/16-fenced-json-from-llm): a server that wraps its JSON answers in a
Markdown fence. Its answers are read like plain ones, and a generate stage that keeps nothing
fails with the reason and a rejected sample instead of ending "done". The case's own stand-in
server (standard library only) runs on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kalm.synth.config import GenerateConfig

CASE = Path(__file__).resolve().parent.parent.parent / "shared" / "cases" / "16-fenced-json-from-llm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(*args: str):
    if not (CASE / "fake_openai.py").exists():
        pytest.skip(f"{CASE} is absent (../shared/cases)")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(CASE / "fake_openai.py"), str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            break  # it answers (501 for GET): up
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(params=["plain", "fenced"])
def server(request):
    proc, url = _serve(*(["--fenced"] if request.param == "fenced" else []))
    yield url
    proc.terminate()
    proc.wait(10)


def _cfg(url: str, **kw) -> GenerateConfig:
    # The case's generate section: 4 personas, retrieval only, one shard.
    return GenerateConfig(backend="openai", model="fake-model", task_types=["retrieval"],
                          openai={"base_url": url, "max_retries": 0, "timeout_s": 30},
                          personas={"num_personas": 4, "seed": 0}, personas_per_shard=4, **kw)


def test_fenced_answers_are_read_like_plain_ones(server, tmp_path):
    from kalm.synth.backends import make_backend
    from kalm.synth.generate import generate_shard
    from kalm.synth.personas import load_personas

    cfg = _cfg(server)
    result = generate_shard(cfg, load_personas(cfg), 0, tmp_path, make_backend(cfg))
    stats = result.info["stats"]
    assert stats["accepted"] == stats["asked"] == 4, stats  # plain and fenced alike


def test_stage_that_keeps_nothing_fails_with_reason_and_sample(tmp_path):
    """Every answer rejected (here: English answers where Chinese was asked for) makes the stage fail,
    naming the count, the reason and a rejected answer; with on_low_yield: flag it goes on, flagged."""
    from flows.stage_runner import StageFailed, run_stage
    from kalm.store import RunStore
    from tasks.generate import generate_stage

    proc, url = _serve("--fenced")
    try:
        cfg = _cfg(url, languages=["zh"], seed=int(time.time()))
        # The seed (fresh cache keys) also draws each example's lengths, so which check rejects an English
        # answer first (wrong_language, or a length bound) varies: the message must name them and a sample.
        store = RunStore(tmp_path / "runs", "fail")
        with pytest.raises(StageFailed, match=r"LowYieldError: generation kept 0 of 4 examples.*drops: [a-z_]+ \d.*"
                                              r"first rejected") as e:
            run_stage(store, "generate", generate_stage, cfg=cfg, run_dir=str(store.root))
        # A judged outcome, not a crash: the message alone, no traceback in the manifest (so none in the report)
        assert e.value.__cause__ is None and not store.read_manifest()["stages"]["generate"].get("log_tail")
        flagged = generate_stage(cfg.model_copy(update={"on_low_yield": "flag"}), str(tmp_path / "flag"))
    finally:
        proc.terminate()
        proc.wait(10)
    assert flagged.counts["accepted"] == 0 and flagged.info["stats"]["low_yield"]
    assert flagged.info["flags"][0].startswith("generation kept 0 of 4")
