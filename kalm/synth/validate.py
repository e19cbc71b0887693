"""Validate every LLM answer with pydantic; count each rejection by reason instead of crashing."""

from __future__ import annotations

import json
import re
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, Field, ValidationError

MAX_CHARS = 120

REASONS = ("empty_output", "truncated_json", "malformed_json", "missing_field", "empty_field", "copied_prompt",
           "query_equals_positive", "positive_equals_negative", "wrong_language")


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
PERSONA_PATTERN = r"(a|an) [a-z][a-z ,'-]*"


def persona_schema() -> dict[str, Any]:
    schema = json_schema(PersonaAnswer)
    schema["properties"]["persona"]["pattern"] = f"^{PERSONA_PATTERN}$"
    return schema


def normalize_persona(persona: str) -> str:
    """One spelling per persona (whitespace collapsed): the form that is checked, counted and kept."""
    return " ".join(persona.split())


def check_persona(persona: str) -> Optional[str]:
    """"not_a_persona" unless it reads as PersonaHub's "a/an <who>" with at least three words."""
    text = normalize_persona(persona)
    return None if re.fullmatch(PERSONA_PATTERN, text) and len(text.split()) >= 3 else "not_a_persona"


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


def parse(raw: str, model: type[T]) -> tuple[Optional[T], Optional[str]]:
    """(answer, None) or (None, reason)."""
    text = raw.strip()
    if not text:  # the backend gave nothing (e.g. the server refused the request)
        return None, "empty_output"
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        opens = text.count("{") + text.count("[")
        closes = text.count("}") + text.count("]")
        return None, "truncated_json" if text.startswith(("{", "[")) and opens > closes else "malformed_json"
    if not isinstance(data, dict):
        return None, "malformed_json"
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


def check_example(answer: ExampleAnswer, language: str, detect=None, prompt: str = "") -> Optional[str]:
    """The first content rule the example breaks, or None."""
    if prompt and any(_norm(v) in _norm(prompt) for v in (answer.query, answer.positive)):
        return "copied_prompt"  # small models echo the instructions instead of writing an example
    if _norm(answer.query) == _norm(answer.positive):
        return "query_equals_positive"
    if _norm(answer.positive) == _norm(answer.hard_negative):
        return "positive_equals_negative"
    if detect is not None and detect(f"{answer.query} {answer.positive}") != language:
        return "wrong_language"
    return None


def language_detector(languages: list[str]):
    """``text -> language``: script rules for short Chinese/Japanese/Korean texts, then langid over major
    languages plus the configured ones (short texts confuse the full set): :mod:`kalm.text`."""
    from kalm.text import language_detector as detector

    return detector(languages)
