"""The backend interface."""

from __future__ import annotations

from typing import Any, Protocol, Union

Chat = list[dict[str, str]]
Schemas = Union[dict[str, Any], list[dict[str, Any]]]
Budgets = Union[int, list[int]]


class Backend(Protocol):
    """Generates one raw answer per chat, constrained to its JSON schema where the backend can.

    ``schema`` and ``max_new_tokens`` are one value for every chat or a list with one per chat.
    """

    def generate(self, chats: list[Chat], schema: Schemas, max_new_tokens: Budgets, temperature: float,
                 seed: int) -> list[str]: ...


def per_chat(chats: list[Chat], schema: Schemas, max_new_tokens: Budgets) -> tuple[list[dict], list[int]]:
    """The schema and the token budget of each chat."""
    schemas = schema if isinstance(schema, list) else [schema] * len(chats)
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(chats)
    if len(schemas) != len(chats) or len(budgets) != len(chats):
        raise ValueError(f"{len(chats)} chats but {len(schemas)} schemas and {len(budgets)} token budgets")
    return schemas, budgets
