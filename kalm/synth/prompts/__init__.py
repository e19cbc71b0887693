"""Prompt templates (files in this folder); their content is part of the generate cache key.

``task_types.json`` describes each template: for two-stage types what the brainstorm asks for
(``what``, ``examples``, ``guideline``); for single-stage types the ``instruction`` stored with
their examples; for all, the three JSON ``keys`` of an answer (query, positive, hard negative)
and template-specific ``options`` drawn per example like the knobs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from kalm.store import hash_strings
from kalm.synth.config import GenerateConfig

BUILTIN = Path(__file__).parent


def prompts_dir(cfg: GenerateConfig) -> Path:
    return Path(cfg.prompts_dir) if cfg.prompts_dir else BUILTIN


@functools.lru_cache(maxsize=64)
def _read(path: Path, mtime_ns: int) -> str:  # noqa: ARG001 - the mtime keys the cache on edits
    return path.read_text(encoding="utf-8")


def template_text(cfg: GenerateConfig, name: str) -> str:
    path = prompts_dir(cfg) / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"prompt template {path} is missing; generate.prompts_dir must hold {name}.txt")
    return _read(path, path.stat().st_mtime_ns)


def render(cfg: GenerateConfig, name: str, **values: Any) -> str:
    try:
        return template_text(cfg, name).format(**values).strip()
    except KeyError as e:
        raise ValueError(f"prompt template {prompts_dir(cfg) / (name + '.txt')} uses {{{e.args[0]}}}, which is not "
                         f"one of {sorted(values)}") from None


def task_specs(cfg: GenerateConfig) -> dict[str, dict[str, Any]]:
    """``task_types.json``, checked for the task types the config generates."""
    from kalm.synth.tasks import SINGLE_STAGE, example_types

    path = prompts_dir(cfg) / "task_types.json"
    specs = json.loads(_read(path, path.stat().st_mtime_ns))
    for t in example_types(cfg):
        spec = specs.get(t)
        need = ("keys", "instruction") if t in SINGLE_STAGE else ("keys", "what", "examples", "guideline")
        missing = [k for k in need if not (spec or {}).get(k)]
        if missing:
            raise ValueError(f"{path}: task type {t!r} needs {', '.join(missing)}")
        if len(spec["keys"]) != 3:
            raise ValueError(f"{path}: task type {t!r}: 'keys' names the three JSON keys of query, positive and "
                             f"hard negative, got {spec['keys']}")
        template_text(cfg, t)
    return specs


def templates_hash(cfg: GenerateConfig) -> str:
    d = prompts_dir(cfg)
    return hash_strings(f"{p.name}:{p.read_text(encoding='utf-8')}" for p in sorted(d.glob("*.txt")) + [d / "task_types.json"])
