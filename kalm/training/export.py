"""Export the trained embedder in sentence-transformers format.

``SentenceTransformer(path)`` then reproduces the trainer's embeddings: same weights, same
tokenizer (with the EOS post-processor for last-token pooling), same pooling and
normalization; the query instructions are stored as prompts.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from kalm.store import atomic_path
from kalm.training.config import TrainConfig

_ST_POOLING = {"mean": "mean", "last_token": "lasttoken", "cls": "cls"}


def instruction_prompts(cfg: TrainConfig, rows: list[dict[str, Any]]) -> dict[str, str]:
    """One query prompt per task type (its most common instruction), plus ``query`` as the default."""
    if not cfg.use_instructions:
        return {}
    by_type: dict[str, Counter] = {}
    for r in rows:
        if r.get("instruction"):
            by_type.setdefault(r["task_type"], Counter())[r["instruction"]] += 1
    prompts = {}
    for task_type, counts in by_type.items():
        instruction = counts.most_common(1)[0][0]
        prompts[task_type] = cfg.query_instruction_format.format(instruction=instruction, query="")
    if prompts:
        prompts["query"] = prompts.get("retrieval", next(iter(prompts.values())))
    return prompts


def export_sentence_transformer(embedder, tokenizer, cfg: TrainConfig, instructions: dict[str, str], out: Path,
                                run_key: str = "") -> Path:
    """Write ``embedder`` (unwrapped, full weights) as a sentence-transformers folder at ``out``, atomically.

    ``instructions``: task type -> the instruction trained with for it (the most common one);
    the prompts saved with the model come from them through :func:`instruction_prompts`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    # One representative row per task type: instruction_prompts picks each type's most common instruction.
    rows = [{"task_type": t, "instruction": i} for t, i in sorted(instructions.items())]

    model = embedder.model
    if cfg.lora.enabled:
        model = model.merge_and_unload()
    with atomic_path(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Plain-text modality: without it sentence-transformers renders a decoder's input through its
        # chat template, which training never did.
        transformer = models.Transformer(
            str(tmp), max_seq_length=cfg.max_length, module_output_name="token_embeddings",
            modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}})
        modules = [transformer, models.Pooling(embedder.dim, pooling_mode=_ST_POOLING[cfg.pooling])]
        if cfg.normalize:
            modules.append(models.Normalize())
        st = SentenceTransformer(modules=modules, prompts=instruction_prompts(cfg, rows), device="cpu",
                                 similarity_fn_name="cosine")
        st.save(str(tmp))
        (tmp / "kalm_training.json").write_text(json.dumps({
            "base_model": cfg.student, "pooling": cfg.pooling, "matryoshka_dims": cfg.matryoshka_dims,
            # Evaluation prepends instructions only to models trained with them.
            "query_instruction_format": cfg.query_instruction_format if cfg.use_instructions else None,
            "use_instructions": cfg.use_instructions, "symmetric_instructions": cfg.symmetric_instructions,
            "instructions": instructions, "max_length": cfg.max_length, "run_key": run_key}, indent=2))
    return Path(out)
