"""Personas: from a PersonaHub-style file, a hub dataset, text-to-persona over a corpus, or the seed list."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from kalm.synth.config import SEED_PERSONAS, GenerateConfig
from kalm.synth.validate import normalize_persona

log = logging.getLogger(__name__)
REJECT_SAMPLE_PER_REASON = 5  # dropped persona answers kept per reason in the report, for inspection
ROUND_SLACK = 1.25  # a later text-to-persona round reads 25 % more texts than the yield so far says it needs


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


def load_personas(cfg: GenerateConfig, backend=None, report: Optional[dict] = None) -> list[str]:
    """Deduplicated personas, sampled reproducibly (``personas.seed``) down to ``num_personas``.

    ``report``, when given, receives what text-to-persona did (``personas_from_corpus``)."""
    src = cfg.personas
    if src.path is not None:
        personas = _read_jsonl_field(src.path, src.field)
    elif src.dataset is not None:
        import datasets

        ds = datasets.load_dataset(src.dataset, src.dataset_config, split=src.split)
        personas = [str(x) for x in ds[src.field]]
    elif src.seed_corpus is not None:
        personas = personas_from_corpus(cfg, _corpus_texts(src.seed_corpus), backend, report)
    else:
        personas = _read_jsonl_field(SEED_PERSONAS, "persona")
    unique = list(dict.fromkeys(normalize_persona(p) for p in personas if p.strip()))
    if len(unique) > src.num_personas:
        unique = random.Random(src.seed).sample(unique, src.num_personas)
    return unique


def persona_shortfall(cfg: GenerateConfig, personas: list[str]) -> Optional[str]:
    """A flag when the source gave fewer distinct personas than ``num_personas`` asked for, else None
    (the stage goes on with what it has; the manifest, report and log say so)."""
    asked = cfg.personas.num_personas
    if len(personas) >= asked:
        return None
    return (f"personas: {len(personas)} distinct of the {asked} asked for (generate.personas.num_personas); the "
            "source has no more after deduplication: give a larger persona file or dataset, or ask for fewer")


def personas_from_corpus(cfg: GenerateConfig, texts: list[str], backend, report: Optional[dict] = None) -> list[str]:
    """Text-to-persona (PersonaHub): the LLM names who would write or read each text.

    The corpus is read in order, in rounds, until ``num_personas`` distinct personas are found or
    it runs out: answers that are not a persona are dropped (``check_persona``) and many texts
    share a persona, so one pass over ``2 * num_personas`` texts can fall short. The first
    round is always those ``2 * num_personas`` texts, later rounds are sized by the yield so far;
    the result keeps the first ``num_personas`` in corpus order, so growing ``num_personas``
    extends the list instead of reshuffling it (finished shards stay cached). ``report``, when given,
    receives ``texts_read``, ``kept``, ``rejected`` (answers dropped, by reason), ``rejected_sample``
    (the first few dropped answers of each reason, as written, to see what the model does) and ``seconds``.
    """
    from kalm.synth.prompts import render
    from kalm.synth.validate import PersonaAnswer, check_persona, parse, persona_form, persona_schema

    if backend is None:
        raise ValueError("deriving personas from generate.personas.seed_corpus needs the LLM backend")
    start = time.perf_counter()
    want, found, used, rejected = cfg.personas.num_personas, {}, 0, Counter()
    sample: dict[str, list[str]] = {}
    while len(found) < want and used < len(texts):
        need = want - len(found)
        texts_per_persona = used / max(len(found), 1)  # the yield so far
        take = 2 * want if used == 0 else math.ceil(need * texts_per_persona * ROUND_SLACK) + 1
        batch = texts[used:used + take]
        used += len(batch)
        chats = [[{"role": "user", "content": render(cfg, "persona", text=t[:1000])}] for t in batch]
        for raw in backend.generate(chats, persona_schema(), 64, 0.0, cfg.seed):
            answer, reason = parse(raw, PersonaAnswer)
            reason = reason or check_persona(answer.persona)
            if reason is None:
                found.setdefault(persona_form(answer.persona), None)
            else:
                rejected[reason] += 1
                if len(sample.setdefault(reason, [])) < REJECT_SAMPLE_PER_REASON:
                    sample[reason].append(str(raw)[:300])
    log.info("text-to-persona: %d texts read, %d distinct personas kept, rejected: %s",
             used, min(len(found), want), dict(rejected) or "none")
    if report is not None:
        report.update(texts_read=used, kept=min(len(found), want), rejected=dict(rejected), rejected_sample=sample,
                      seconds=round(time.perf_counter() - start, 2))
    return list(found)[:want]
