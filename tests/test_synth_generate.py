"""Generation with the real SmolLM2 under JSON-schema constraints: shards, kill-and-resume, determinism."""

from __future__ import annotations

import random

import pytest

from kalm.schema import read_examples
from kalm.store import hash_file
from kalm.synth.config import GenerateConfig, PersonaSource

pytestmark = pytest.mark.slow


def _cfg(seed: int, **kw) -> GenerateConfig:
    return GenerateConfig(personas=PersonaSource(num_personas=3, seed=seed), task_types=["sts"], personas_per_shard=1,
                          batch_size=2, max_new_tokens=64, seed=seed, **kw)


def test_budget_stop_then_resume_generates_only_missing_shards(tmp_path):
    from tasks.generate import generate_stage

    seed = random.randrange(1_000_000)  # fresh cache keys: this test must generate for real
    first = generate_stage(_cfg(seed, time_budget_s=1.0), str(tmp_path / "run1"))
    assert first.counts["shards"] == 1 and first.counts["skipped_shards"] == 2
    shard0 = tmp_path / "run1" / "generate" / "shards" / "shard-00000.parquet"
    before = hash_file(shard0)

    second = generate_stage(_cfg(seed), str(tmp_path / "run1"))  # the same run, resumed without a budget
    assert second.counts["shards"] == 3 and second.counts["skipped_shards"] == 0
    assert hash_file(shard0) == before  # finished shard not regenerated
    rows = read_examples(second.parquet_files()).to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)  # nothing duplicated
    stats = second.info["stats"]
    assert stats["generated"] == stats["accepted"] + stats["dropped"].get("exact_duplicate", 0) \
        + stats["dropped"].get("near_duplicate", 0)
    assert second.counts["generated"] + sum(v for k, v in second.counts.items()
                                            if k.startswith("dropped_") and "duplicate" not in k) > 0

    # A new run of the same config takes every shard from the cache.
    third = generate_stage(_cfg(seed), str(tmp_path / "run2"))
    assert third.info["all_cached"] and third.hashes == second.hashes


def test_greedy_shards_are_reproducible(tmp_path):
    from kalm.synth.backends import make_backend
    from kalm.synth.generate import generate_shard, plan_shards
    from kalm.synth.personas import load_personas

    cfg = _cfg(7)
    backend = make_backend(cfg)
    personas = plan_shards(cfg, load_personas(cfg))[0]
    a = generate_shard(cfg, personas, 0, tmp_path / "a", backend)
    b = generate_shard(cfg, personas, 0, tmp_path / "b", backend)
    assert a.hashes == b.hashes
    assert a.counts["prompts"] == 2
