"""Every drop reason, on real SmolLM2-135M outputs captured from this pipeline's generation runs."""

from __future__ import annotations

import pytest

from kalm.synth.dedup import deduplicate
from kalm.synth.validate import Brainstorm, ExampleAnswer, check_example, json_schema, language_detector, parse

# Raw answers SmolLM2-135M-Instruct wrote (copied from shard rejected-sample files).
TRUNCATED = ('{"query": "Searching for a new telescope, a project that has been going on for years, and I am '
             'excited to share my passion with you, a hobby astronomer who builds telescopes", "positive": "I am ex')
LOOPING = '{"tasks": ["1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.'
SAME = ('{"query": "The task: search_text_retrieval_task_1", "positive": "The task: search_text_retrieval_task_1", '
        '"hard_negative": "The task: search_text_retrieval_task_1"}')
POS_EQ_NEG = ('{"query": "The task is to find the most recent version of the article.", "positive": "The article is '
              'about a new product that has been released.", "hard_negative": "The article is about a new product '
              'that has been released."}')
COPIED = ('{"query": "create a task list with a list of tasks", "positive": "create a task list with a list of '
          'tasks", "hard_negative": "hard negative"}')
UNCONSTRAINED = "Sure! Here is an example:\nQuery: How do I bake bread?\nPositive: Mix flour"
MISSING = '{"query": "Where is the nearest pharmacy?", "positive": "The pharmacy on Main Street is open."}'
EMPTY = '{"query": "Where is the nearest pharmacy?", "positive": "  ", "hard_negative": "Pharmacies sell soap."}'
GOOD = ('{"query": "Which medicine helps with a dry cough at night?", "positive": "A honey-based syrup can soothe a '
        'dry cough before sleep.", "hard_negative": "Cough medicine should be kept away from children."}')


@pytest.mark.parametrize("raw,model,reason", [
    (TRUNCATED, ExampleAnswer, "truncated_json"),
    (LOOPING, Brainstorm, "truncated_json"),
    (UNCONSTRAINED, ExampleAnswer, "malformed_json"),
    (MISSING, ExampleAnswer, "missing_field"),
    (EMPTY, ExampleAnswer, "empty_field"),
])
def test_parse_failures_are_classified(raw, model, reason):
    answer, why = parse(raw, model)
    assert answer is None and why == reason


def test_content_rules():
    same, _ = parse(SAME, ExampleAnswer)
    assert check_example(same, "en") == "query_equals_positive"
    pos_neg, _ = parse(POS_EQ_NEG, ExampleAnswer)
    assert check_example(pos_neg, "en") == "positive_equals_negative"
    copied, _ = parse(COPIED, ExampleAnswer)
    assert check_example(copied, "en", prompt="Task: create a task list with a list of tasks") == "copied_prompt"
    good, _ = parse(GOOD, ExampleAnswer)
    detect = language_detector(["en", "zh"])
    assert check_example(good, "en", detect) is None
    assert check_example(good, "zh", detect) == "wrong_language"


def test_schema_is_closed_and_bounded():
    schema = json_schema(ExampleAnswer)
    assert schema["additionalProperties"] is False and schema["required"] == ["query", "positive", "hard_negative"]
    assert all(p["minLength"] >= 1 and p["maxLength"] <= 400 for p in schema["properties"].values())


def test_dedup_exact_and_near():
    rows = [{"query": "How do I reset my router password quickly?", "positive": "Hold the reset button for 10 s."},
            {"query": "How do I reset my router password quickly?", "positive": "Hold the reset button for 10 s."},
            {"query": "How do I reset my router password quickly ?", "positive": "Hold the reset button for 10 s!"},
            {"query": "Best soup for a cold evening", "positive": "A lentil soup with cumin warms you up."}]
    kept, counts = deduplicate(rows, threshold=0.8)
    assert [r["query"] for r in kept] == [rows[0]["query"], rows[3]["query"]]
    assert counts == {"exact_duplicate": 1, "near_duplicate": 1}
