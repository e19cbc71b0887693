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


def instruction_prompts(cfg: TrainConfig, rows: Any) -> dict[str, str]:
    """The exported model's ``prompts``: ``cfg.instruction_policy().mteb_prompts`` of each task type's most
    common instruction (ties: the alphabetically first), under the names mteb reads (``Retrieval-query``,
    ``STS``, ``query``, ...), so ``mteb run -m <model>`` and ``kalm eval`` give every task the
    instruction the model was trained with, on the sides training gave it (kalm/instructions.py).

    Args:
        rows: the training examples: dicts with ``task_type`` and ``instruction``, or a pyarrow Table
            with those columns (counted without turning rows into Python objects).

    Returns:
        {} when ``train.use_instructions`` is off or no example has an instruction.
    """
    policy = cfg.instruction_policy()
    if not policy.enabled:
        return {}
    counts: Counter = Counter()
    if hasattr(rows, "group_by") and hasattr(rows, "column_names"):  # pyarrow Table
        grouped = rows.select(["task_type", "instruction"]).group_by(["task_type", "instruction"]).aggregate(
            [([], "count_all")])
        for t, i, c in zip(*(grouped.column(k).to_pylist() for k in ("task_type", "instruction", "count_all"))):
            counts[(t, i)] += c
    else:
        for r in rows:
            counts[(r["task_type"], r.get("instruction"))] += 1
    best: dict[str, tuple[int, str]] = {}
    for (task_type, instruction), c in counts.items():
        if instruction and (task_type not in best or (-c, instruction) < (-best[task_type][0], best[task_type][1])):
            best[task_type] = (c, instruction)
    return policy.mteb_prompts({t: i for t, (_, i) in best.items()})


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
