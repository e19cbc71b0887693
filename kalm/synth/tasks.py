"""What each task type asks the LLM for: its stages, its three fields and their length bounds, the
JSON schema that holds an answer to them, and the tokens an answer may need.

Task types follow e5-mistral's synthetic-data taxonomy (Wang et al. 2023, "Improving Text
Embeddings with Large Language Models", section 3.1 and appendix): asymmetric tasks are two-stage
(brainstorm task definitions, then write an example per task); symmetric STS and bitext are
single-stage ("the task definition is straightforward"). Every answer has three fields, mapped to
the example schema's query, positive and hard negative; the template's JSON keys (e.g.
``user_query``) come from ``prompts/task_types.json``.

Lengths are bounded per field kind (``generate.lengths``): a *query* (retrieval, reranking), a
*document* (their positive and hard negative, ``num_words`` drawn per example from
``generate.knobs.num_words``) or a *text* (sentences and short texts of the other types).
"""

from __future__ import annotations

import math
from typing import Any

from kalm.synth.config import GenerateConfig

FIELDS = ("query", "positive", "hard_negative")
KINDS: dict[str, tuple[str, str, str]] = {
    "retrieval": ("query", "document", "document"),
    "reranking": ("query", "document", "document"),
    "classification": ("text", "text", "text"),
    "clustering": ("text", "text", "text"),
    "pair_classification": ("text", "text", "text"),
    "sts": ("text", "text", "text"),
    "bitext": ("text", "text", "text"),
}
SINGLE_STAGE = frozenset({"sts", "bitext"})
# The example schema's task type of each template (bitext pairs are symmetric, like STS and
# mteb's BitextMining, which encodes both sides without a prompt type).
SCHEMA_TASK_TYPE = {**{t: t for t in KINDS}, "bitext": "sts"}
# Characters per word (low, high) of a language's running text; the JSON schema bounds characters.
# Languages written without spaces count a "word" as about 1-3 characters.
CHARS_PER_WORD = {"zh": (1.0, 3.0), "ja": (1.0, 3.0), "ko": (2.0, 5.0), "th": (2.0, 8.0)}
DEFAULT_CHARS_PER_WORD = (4.0, 8.0)
MIN_WORDS = 2  # a query or text shorter than this is not an example
MIN_DOCUMENT_WORDS = 5  # nor a document shorter than this
JSON_TOKENS_PER_FIELD = 8  # key, quotes, separators
JSON_TOKENS = 8  # braces, end of sequence
BRAINSTORM_CHARS = (20, 120)  # a task: one sentence naming what is searched, compared or labelled
MIN_CHARS_PER_TOKEN = 2.5


def example_types(cfg: GenerateConfig) -> list[str]:
    """The configured task types, plus bitext when several languages are set and ``bitext`` is on."""
    return [*cfg.task_types, *(["bitext"] if cfg.bitext and len(set(cfg.languages)) > 1 else [])]


def word_bounds(cfg: GenerateConfig, kind: str, num_words: int) -> tuple[int, int]:
    """(min, max) words of a field of ``kind``."""
    L = cfg.lengths
    if kind == "query":
        return MIN_WORDS, L.query_words
    if kind == "text":
        return MIN_WORDS, L.text_words
    if kind == "document":
        return (max(MIN_DOCUMENT_WORDS, math.ceil(num_words * L.min_document_share)),
                max(MIN_DOCUMENT_WORDS, math.ceil(num_words * L.document_slack)))
    raise ValueError(f"unknown field kind {kind!r}")


def char_bounds(language: str, words: tuple[int, int]) -> tuple[int, int]:
    """(minLength, maxLength) in characters for ``words`` (min, max) in ``language``."""
    low, high = CHARS_PER_WORD.get(language.split("-")[0].lower(), DEFAULT_CHARS_PER_WORD)
    return max(1, math.floor(words[0] * low)), math.ceil(words[1] * high)


def field_bounds(cfg: GenerateConfig, task_type: str, num_words: int, languages: tuple[str, str, str]
                 ) -> list[tuple[int, int]]:
    """Character bounds of the three fields (query, positive, hard negative), each in its language."""
    return [char_bounds(lang, word_bounds(cfg, kind, num_words)) for kind, lang in zip(KINDS[task_type], languages)]


def answer_schema(keys: list[str], bounds: list[tuple[int, int]]) -> dict[str, Any]:
    """A closed JSON schema: each key a string within its bounds; keys in order (the model writes the
    query first, then the documents written for it)."""
    props = {k: {"type": "string", "minLength": lo, "maxLength": hi} for k, (lo, hi) in zip(keys, bounds)}
    return {"type": "object", "properties": props, "required": list(keys), "additionalProperties": False}


def answer_tokens(cfg: GenerateConfig, task_type: str, num_words: int) -> int:
    """Tokens an answer may need when every field is at its longest (``lengths.tokens_per_word``)."""
    words = sum(word_bounds(cfg, kind, num_words)[1] for kind in KINDS[task_type])
    return math.ceil(words * cfg.lengths.tokens_per_word) + JSON_TOKENS_PER_FIELD * 3 + JSON_TOKENS


def max_new_tokens(cfg: GenerateConfig, task_type: str, num_words: int) -> int:
    """The token budget of one answer: what it may need, capped by ``generate.max_new_tokens``."""
    need = answer_tokens(cfg, task_type, num_words)
    return need if cfg.max_new_tokens is None else min(need, cfg.max_new_tokens)


def brainstorm_tokens(cfg: GenerateConfig) -> int:
    """A brainstorm answer: ``tasks_per_persona`` one-sentence tasks of at most BRAINSTORM_CHARS
    characters each (at the fewest characters per token small tokenizers write English in)."""
    per_task = math.ceil(BRAINSTORM_CHARS[1] / MIN_CHARS_PER_TOKEN) + 4  # quotes, comma
    need = cfg.tasks_per_persona * per_task + 2 * JSON_TOKENS
    return need if cfg.max_new_tokens is None else min(need, cfg.max_new_tokens)



def brainstorm_schema(n: int) -> dict[str, Any]:
    lo, hi = BRAINSTORM_CHARS
    return {"type": "object", "additionalProperties": False, "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "minItems": 1, "maxItems": n,
                                     "items": {"type": "string", "minLength": lo, "maxLength": hi}}}}


def longest_answer(cfg: GenerateConfig) -> tuple[str, int, str]:
    """(task type, tokens, why) of the longest answer the config can ask for."""
    longest = max(cfg.knobs.num_words)
    best = ("", 0, "")
    for t in example_types(cfg):
        tokens = answer_tokens(cfg, t, longest)
        if tokens > best[1]:
            parts = [f"{field}{'' if kind == field else f' ({kind})'} of up to "
                     f"{word_bounds(cfg, kind, longest)[1]} words" for field, kind in zip(FIELDS, KINDS[t])]
            why = ", ".join(parts) + (f" (knobs.num_words {longest})" if "document" in KINDS[t] else "")
            best = (t, tokens, why)
    return best
