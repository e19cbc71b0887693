"""The backend interface."""

from __future__ import annotations

from typing import Any, Protocol

Chat = list[dict[str, str]]


class Backend(Protocol):
    """Generates one raw answer per chat, constrained to the JSON schema where the backend can."""

    def generate(self, chats: list[Chat], schema: dict[str, Any], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]: ...
