"""Every task type's template, run through the real SmolLM2-135M under its JSON schema: each writes
valid examples (within the lengths its knobs drew), on CPU, in one shard per language setting."""

from __future__ import annotations

import json

import pytest

from kalm.schema import read_examples
from kalm.synth.config import GenerateConfig, PersonaSource

pytestmark = pytest.mark.slow
ALL_TYPES = ["retrieval", "sts", "classification", "clustering", "pair_classification", "reranking"]
# Short lengths keep this cheap (~40 prompts); the templates and the schemas are the recipe's.
SMALL = {"knobs": {"num_words": [16]}, "lengths": {"query_words": 10, "text_words": 12}, "batch_size": 8}


@pytest.fixture(scope="module")
def backend():
    from kalm.synth.backends import make_backend

    return make_backend(GenerateConfig())


def _shard(cfg, backend, tmp_path):
    from kalm.synth.generate import generate_shard
    from kalm.synth.personas import load_personas

    result = generate_shard(cfg, load_personas(cfg), 0, tmp_path, backend)
    rows = read_examples(result.parquet_files()).to_pylist()
    return result.info["stats"], rows


def test_each_task_type_writes_valid_examples(backend, tmp_path):
    from kalm.synth.tasks import field_bounds

    # Three personas: SmolLM2-135M brainstorms a usable clustering task for one of them (greedy, seed 5);
    # the other two personas' clustering brainstorms are degenerate JSON and rejected as such.
    cfg = GenerateConfig(personas=PersonaSource(num_personas=3, seed=5), task_types=ALL_TYPES, seed=5, **SMALL)
    stats, rows = _shard(cfg, backend, tmp_path)
    by_template = {}
    for r in rows:
        by_template.setdefault(json.loads(r["metadata"])["template"], []).append(r)
    assert set(by_template) == set(ALL_TYPES), (stats, sorted(by_template))
    for template, examples in by_template.items():
        for r in examples:
            meta = json.loads(r["metadata"])
            lo_hi = field_bounds(cfg, template, meta.get("num_words", 16), ("en",) * 3)
            for text, (lo, hi) in zip((r["query"], r["positive"], r["negatives"][0]), lo_hi):
                assert lo <= len(text) <= hi, (template, text)
            assert r["task_type"] == template and r["instruction"] and r["persona"]
    # Per persona: 5 brainstorms and 1 single-stage STS prompt; then one example prompt per brainstormed task.
    assert stats["prompts"] == 3 * 5 + 3 * 1 + stats["tasks"]


def test_bitext_with_several_languages(backend, tmp_path):
    # Greedy SmolLM2-135M mostly answers in English when asked for French (rejected: wrong_language);
    # with German and seed 1 one of its bitext answers is in both languages.
    cfg = GenerateConfig(personas=PersonaSource(num_personas=3, seed=1), task_types=["sts"], languages=["en", "de"],
                         tasks_per_persona=2, seed=1, **SMALL)
    stats, rows = _shard(cfg, backend, tmp_path)
    bitext = [r for r in rows if json.loads(r["metadata"])["template"] == "bitext"]
    assert bitext, stats
    for r in bitext:
        assert r["task_type"] == "sts" and r["language"] in ("en-de", "de-en")
        assert r["instruction"] == "Retrieve parallel sentences."
