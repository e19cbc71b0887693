"""Prompt templates (files in this folder); their content is part of the generate cache key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kalm.store import hash_strings
from kalm.synth.config import GenerateConfig

BUILTIN = Path(__file__).parent


def prompts_dir(cfg: GenerateConfig) -> Path:
    return Path(cfg.prompts_dir) if cfg.prompts_dir else BUILTIN


def render(cfg: GenerateConfig, name: str, **values: Any) -> str:
    path = prompts_dir(cfg) / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"prompt template {path} is missing; generate.prompts_dir must hold {name}.txt")
    return path.read_text(encoding="utf-8").format(**values).strip()


def task_types(cfg: GenerateConfig) -> dict[str, dict[str, str]]:
    return json.loads((prompts_dir(cfg) / "task_types.json").read_text(encoding="utf-8"))


def templates_hash(cfg: GenerateConfig) -> str:
    d = prompts_dir(cfg)
    return hash_strings(f"{p.name}:{p.read_text(encoding='utf-8')}" for p in sorted(d.glob("*.txt")) + [d / "task_types.json"])
