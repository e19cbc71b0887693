"""Personas: from a PersonaHub-style file, a hub dataset, text-to-persona over a corpus, or the seed list."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

from kalm.synth.config import GenerateConfig

SEED_PERSONAS = Path(__file__).parent / "personas" / "seed.jsonl"


def _read_jsonl_field(path: Path, field: str) -> list[str]:
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg}); persona files hold one JSON object per line") from e
        if field not in row:
            raise ValueError(f"{path}:{i}: no field {field!r}; set generate.personas.field to the persona column")
        out.append(str(row[field]))
    return out


def _corpus_texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return [json.loads(l).get("text", "") for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def load_personas(cfg: GenerateConfig, backend=None) -> list[str]:
    """Deduplicated personas, sampled reproducibly (``personas.seed``) down to ``num_personas``."""
    src = cfg.personas
    if src.path is not None:
        personas = _read_jsonl_field(src.path, src.field)
    elif src.dataset is not None:
        import datasets

        ds = datasets.load_dataset(src.dataset, src.dataset_config, split=src.split)
        personas = [str(x) for x in ds[src.field]]
    elif src.seed_corpus is not None:
        personas = personas_from_corpus(cfg, _corpus_texts(src.seed_corpus), backend)
    else:
        personas = _read_jsonl_field(SEED_PERSONAS, "persona")
    unique = list(dict.fromkeys(" ".join(p.split()) for p in personas if p.strip()))
    if len(unique) > src.num_personas:
        unique = random.Random(src.seed).sample(unique, src.num_personas)
    return unique


def personas_from_corpus(cfg: GenerateConfig, texts: list[str], backend) -> list[str]:
    """Text-to-persona (PersonaHub): the LLM names who would write or read each text."""
    from kalm.synth.prompts import render
    from kalm.synth.validate import PersonaAnswer, json_schema, parse

    if backend is None:
        raise ValueError("deriving personas from generate.personas.seed_corpus needs the LLM backend")
    texts = texts[: cfg.personas.num_personas * 2]
    chats = [[{"role": "user", "content": render(cfg, "persona", text=t[:1000])}] for t in texts]
    raws = backend.generate(chats, json_schema(PersonaAnswer), 64, 0.0, cfg.seed)
    return [a.persona for a, _ in (parse(r, PersonaAnswer) for r in raws) if a is not None]
