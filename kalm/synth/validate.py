"""Validate every LLM answer with pydantic; count each rejection by reason instead of crashing."""

from __future__ import annotations

import json
import re
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, Field, ValidationError

MAX_CHARS = 120  # personas and other one-line answers; examples are bounded per field (kalm/synth/tasks.py)

REASONS = ("empty_output", "request_rejected", "truncated_json", "malformed_json", "missing_field", "empty_field",
           "field_too_short", "field_too_long", "copied_prompt", "query_equals_positive", "positive_equals_negative",
           "wrong_language")


class RejectedAnswer(str):
    """No answer: the server refused this request (its message is the string). Counted as
    ``request_rejected``; the HTTP backend fails the shard when refusals are systematic."""


class Brainstorm(BaseModel):
    tasks: list[str] = Field(..., min_length=1)


class ExampleAnswer(BaseModel):
    query: str
    positive: str
    hard_negative: str


class PersonaAnswer(BaseModel):
    persona: str


# PersonaHub's form: "a nurse working night shifts ...". Decoding is held to it because, left to
# fill a free JSON string, SmolLM2-135M answered 0 of 40 texts with a persona ("<NAME> (2016)",
# "{{name}}", "<unknown>"); held to it, 38 of 40 read as one. Servers that ignore the pattern
# are checked after the fact (check_persona).
def persona_schema() -> dict[str, Any]:
    """The persona answer's schema. Its length bound lives inside the pattern (a bounded repetition),
    not in minLength/maxLength beside it: xgrammar cannot compile a pattern with length keywords
    (vLLM 0.33.0 refuses such a schema under its xgrammar backend), and every engine takes this."""
    schema = json_schema(PersonaAnswer)
    prop = schema["properties"]["persona"]
    low, high = prop.pop("minLength"), prop.pop("maxLength")
    # "(a|an) " is 2-3 characters, then one letter: the rest keeps the whole within [low, high].
    prop["pattern"] = f"^(a|an) [a-z][a-z ,'-]{{{max(0, low - 4)},{high - 5}}}$"
    return schema


def normalize_persona(persona: str) -> str:
    """One spelling per persona (whitespace collapsed): the form that is checked, counted and kept."""
    return " ".join(persona.split())


# Seen from SmolLM2-135M held to the pattern (50-persona run over SciFact claims): the prompt said back
# ("an example of a person who might write or read this text") and phrases cut before their noun
# ("a total of").
_TEXT_WORDS = r"(text|passage|document|article|question|claim|post|message|abstract|sentence|paragraph|excerpt|snippet)"
# An echo names the prompt's text: "... write or read ...", "... this passage", "the text above", "a person who
# reads the text". A persona whose work is on texts ("a translator who proofreads the text") is not one.
_PROMPT_ECHO = re.compile(r"\b(write|read)s? or (write|read)s?\b"
                          rf"|\b(this|that) {_TEXT_WORDS}$|\bthe {_TEXT_WORDS} (above|below)$"
                          rf"|\b(reads?|writes?|wrote|asked|(would|might|could) (read|write|ask)) (the|this|that) {_TEXT_WORDS}$")
_UNFINISHED = {"a", "an", "the", "of", "and", "or", "with", "in", "to", "for", "who", "whose", "that", "at", "on",
               "by", "from", "as", "is", "are", "their", "his", "her"}


# The after-the-fact check is wider than the decoding pattern: a server that ignores the pattern (or a
# larger model) writes PersonaHub's own spellings, "A Python developer ...", "an NHS nurse", "a
# 35–year–old teacher", "a café owner", "an R&D engineer (battery cells)."; markup and template slots
# ("<em>", "{{name}}", "user_name") still fail it, as their brackets and underscores are outside the
# allowed characters. It must end on a letter, digit or ")" (one final "." aside), so a phrase cut after
# a comma or an open parenthesis fails too.
_PERSONA_CHECK = re.compile(r"[Aa]n? [^\W_](?:[^\W_]|[ ,'’./&()+–—-])*(?:[^\W_]|\))")


def persona_form(persona: str) -> str:
    """The one spelling a derived persona is kept under: whitespace collapsed, one final "." dropped and
    the article in lower case ("A nurse." -> "a nurse"), so spellings of one persona count once."""
    text = normalize_persona(persona).removesuffix(".")
    head, _, rest = text.partition(" ")
    return f"{head.lower()} {rest}" if head in ("A", "An") else text


def check_persona(persona: str) -> Optional[str]:
    """``None`` for an answer that reads as PersonaHub's "a/an <who>" (at least three words; capitals,
    digits, accents and balanced parentheses allowed, as in "A Python developer"), else the reason it is
    dropped: "not_a_persona" (another form, markup or a template slot, or a phrase cut before it ends:
    "a total of", "a nurse who works in.") or "persona_copies_prompt" (it describes the prompt's text
    instead of a person: "A person who would write this text.")."""
    text = persona_form(persona)
    words = text.lower().replace("(", "").replace(")", "").split()
    if (not _PERSONA_CHECK.fullmatch(text) or text.count("(") != text.count(")") or len(words) < 3
            or words[-1] in _UNFINISHED):
        return "not_a_persona"
    return "persona_copies_prompt" if _PROMPT_ECHO.search(" ".join(words)) else None


def json_schema(model: type[BaseModel], max_items: Optional[int] = None) -> dict[str, Any]:
    """A closed JSON schema for constrained decoding (string lengths bounded so answers finish)."""
    props: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.annotation == list[str]:
            props[name] = {"type": "array", "items": {"type": "string", "minLength": 20, "maxLength": 120},
                           "minItems": 1, **({"maxItems": max_items} if max_items else {})}
        else:
            props[name] = {"type": "string", "minLength": 8, "maxLength": MAX_CHARS}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


T = TypeVar("T", bound=BaseModel)
_FENCE_OPEN = re.compile(r"^```[\w+-]*[ \t]*\n?")


def strip_fence(text: str) -> str:
    """The text inside one enclosing Markdown code fence (```json ... ```), as many servers and
    models wrap JSON when they ignore ``response_format``; other text unchanged. An opening fence
    without its closing one (the answer was cut) is removed too, so the cut reads as truncated."""
    text = text.strip()
    if not text.startswith("```"):
        return text
    inner = _FENCE_OPEN.sub("", text, count=1)
    if inner.rstrip().endswith("```"):
        inner = inner.rstrip()[:-3]
    return inner.strip()


def parse_json(raw: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(object, None) or (None, reason): the JSON object of an answer, fence removed."""
    if isinstance(raw, RejectedAnswer):
        return None, "request_rejected"
    text = strip_fence(raw)
    if not text:  # the backend gave nothing
        return None, "empty_output"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        opens = text.count("{") + text.count("[")
        closes = text.count("}") + text.count("]")
        return None, "truncated_json" if text.startswith(("{", "[")) and opens > closes else "malformed_json"
    if not isinstance(data, dict):
        return None, "malformed_json"
    return data, None


def parse(raw: str, model: type[T]) -> tuple[Optional[T], Optional[str]]:
    """(answer, None) or (None, reason)."""
    data, reason = parse_json(raw)
    if data is None:
        return None, reason
    try:
        answer = model.model_validate(data)
    except ValidationError:
        return None, "missing_field"
    for value in answer.model_dump().values():
        items = value if isinstance(value, list) else [value]
        if any(not str(v).strip() for v in items):
            return None, "empty_field"
    return answer, None


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def parse_example(raw: str, keys: list[str]) -> tuple[Optional[ExampleAnswer], Optional[str]]:
    """An answer to a task template whose JSON ``keys`` hold query, positive and hard negative, in
    that order (e.g. ``user_query``, ``positive_document``, ``hard_negative_document``)."""
    data, reason = parse_json(raw)
    if data is None:
        return None, reason
    if any(k not in data for k in keys):
        return None, "missing_field"
    values = [data[k] for k in keys]
    if any(not isinstance(v, str) for v in values):
        return None, "missing_field"
    if any(not v.strip() for v in values):
        return None, "empty_field"
    return ExampleAnswer(**dict(zip(("query", "positive", "hard_negative"), values))), None


# Text that is not language: a URL or domain, a path, a snake_case field name or a slug of words joined by
# hyphens ("hard_positive", "bella-london-a-breach-study"), a template placeholder or key ("{query}",
# "hard negative", "4.5, hard_negative:"),
# or mostly digits and symbols ("1000.00%", "2.1.3.3233.120"). Sampled SmolLM2-135M (temperature 0.7, 50
# personas): 17 of 84 accepted examples had such a text. Compounds ("state-of-the-art", "Port-au-Prince",
# "client/server"), hashtags, e-mail addresses, dates and any text with a space and enough letters are prose;
# so is CJK text (no spaces).
_IDENTIFIER = re.compile(r"://|^www\.|^[\w-]+(\.[a-z]{2,})+(/\S*)?$|/[^/\s]*/|\w(-\w+){4,}|\\")
_FIELD = r"(positive|negative|query|document|passage)"
_PLACEHOLDER = re.compile(rf"^[\[{{<(]\w+[\]}}>)]$|^hard[ _-]?{_FIELD}([ _-]?(text|example|document|passage))?$"
                          rf"|^{_FIELD}[ _-]?(text|example)$|^(sample|example)[ _-]?text$", re.IGNORECASE)


_KEY_LEAK = re.compile(r"\bhard_(positive|negative)|\b\w+_(query|document|passage)\b", re.IGNORECASE)


def is_prose(text: str) -> bool:
    """Whether ``text`` reads as language: at least a quarter of its non-space characters letters (any
    script), not a template placeholder, and not one identifier-like token."""
    t = text.strip()
    chars = [c for c in t if not c.isspace()]
    if not chars or 4 * sum(c.isalpha() for c in chars) < len(chars) or _PLACEHOLDER.search(t) or _KEY_LEAK.search(t):
        return False  # ... or a JSON key of the template written into the text ("4.5, hard_negative:")
    if re.search(r"\s", t) or t.startswith("#") or "@" in t:
        return True
    return not (_IDENTIFIER.search(t) or "_" in t)


def check_example(answer: ExampleAnswer, language: str | tuple[str, str], detect=None, prompt: str = "",
                  bounds: Optional[list[tuple[int, int]]] = None) -> Optional[str]:
    """The first content rule the example breaks, or None.

    ``language``: the language of query and positive, or (query's, positive's) for bitext.
    ``bounds``: (min, max) characters of query, positive and hard negative: the JSON schema's
    bounds, checked again for backends that do not enforce the schema.
    """
    texts = (answer.query, answer.positive, answer.hard_negative)
    for text, (lo, hi) in zip(texts, bounds or []):
        if len(text.strip()) < lo:
            return "field_too_short"
        if len(text.strip()) > hi:
            return "field_too_long"
    if prompt and any(_norm(v) in _norm(prompt) for v in (answer.query, answer.positive)):
        return "copied_prompt"  # small models echo the instructions instead of writing an example
    if not all(is_prose(t) for t in texts):
        return "not_prose"  # a URL, a field name, a placeholder or a number instead of text
    if _norm(answer.query) == _norm(answer.positive):
        return "query_equals_positive"
    if _norm(answer.positive) == _norm(answer.hard_negative):
        return "positive_equals_negative"
    if detect is not None:
        if isinstance(language, str):
            if detect(f"{answer.query} {answer.positive}") != language:
                return "wrong_language"
        elif detect(answer.query) != language[0] or detect(answer.positive) != language[1]:
            return "wrong_language"
    return None


def language_detector(languages: list[str]):
    """``text -> language``: script rules for short Chinese/Japanese/Korean texts, then langid over major
    languages plus the configured ones (short texts confuse the full set): :mod:`kalm.text`."""
    from kalm.text import language_detector as detector

    return detector(languages)
