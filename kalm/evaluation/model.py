"""The encoder mteb evaluates: a SentenceTransformer loaded from a model reference.

- Any reference ``kalm.models.resolve_model`` accepts (``pkg:...``, an exported run model, a hub
  id; GGUF weights are dequantized once by ``kalm.models.transformers_path``) is loaded as a
  ``SentenceTransformer`` -- ``mteb.get_model(local_path)`` needs the hub, this does not.
- Matryoshka: ``truncate_dim`` cuts every embedding to the first ``matryoshka_dim`` values.
- Instructions (KaLM-style, queries and symmetric tasks only): a model exported by kalm's train
  stage with instructions (its ``kalm_training.json`` has a ``query_instruction_format``) gets,
  per task, the instruction from the config (by mteb task name, then task kind), else the
  task's own mteb prompt, else the instruction it was trained with for that kind, else mteb's
  generic prompt for the task type (what mteb's instruct models get). Documents of
  retrieval/reranking never get one. Other models are evaluated the way mteb evaluates a plain
  SentenceTransformer (their own saved prompts, if any).
- mteb's model metadata gets name ``kalm/<slug>`` and revision = the first 12 hex digits of the
  model's content hash, so mteb's result folders say which weights produced them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from kalm.evaluation.tasks import MTEB_TYPE

# mteb task type -> kalm task kind (the keys of an exported model's prompts)
KIND_OF_TYPE = {v: k for k, v in MTEB_TYPE.items()}
ASYMMETRIC = {"Retrieval", "Reranking"}


class EvalModelError(ValueError):
    """A model that cannot be evaluated as asked; the message names the setting and the fix."""


def model_slug(model_ref: str) -> str:
    """A short, path-safe name for a model reference (mteb wants 'org/name')."""
    if model_ref.startswith("pkg:"):
        raw = model_ref[4:].replace("/", "-")
    elif "/" in model_ref and not Path(model_ref).expanduser().exists() and not model_ref.startswith((".", "/", "~")):
        raw = model_ref.replace("/", "__")  # hub id
    else:
        parts = Path(model_ref).expanduser().resolve().parts
        raw = "-".join(parts[-3:])  # e.g. <run_id>-train-model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-")[:120] or "model"


def load_sentence_transformer(model_ref: str, matryoshka_dim: Optional[int] = None, device: Optional[str] = None):
    """``SentenceTransformer`` for any kalm model reference, truncated to ``matryoshka_dim`` if given."""
    from sentence_transformers import SentenceTransformer

    from kalm.models import resolve_model, transformers_path

    m = resolve_model(model_ref)
    path = transformers_path(model_ref) if m.gguf_file else m.path
    model = SentenceTransformer(path, device=device)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else \
        model.get_sentence_embedding_dimension()
    if matryoshka_dim is not None:
        if dim is not None and matryoshka_dim > dim:
            raise EvalModelError(f"evaluate.matryoshka_dim={matryoshka_dim} exceeds {model_ref}'s embedding size {dim}; "
                                 f"choose a value <= {dim} or leave it unset")
        model.truncate_dim = matryoshka_dim
    return model


def meta_name_revision(model_ref: str, fingerprint: str, matryoshka_dim: Optional[int] = None) -> tuple[str, str]:
    """mteb's model name and revision for a model: ``kalm/<slug>``, content hash (+ Matryoshka dim)."""
    return f"kalm/{model_slug(model_ref)}", fingerprint[:12] + (f"-d{matryoshka_dim}" if matryoshka_dim else "")


def training_info(model_path: str) -> dict[str, Any]:
    """``kalm_training.json`` of a model exported by kalm's train stage ({} for other models)."""
    p = Path(model_path) / "kalm_training.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _make_encoder_class():
    """Defined lazily: subclassing mteb's wrapper imports mteb (slow), which kalm does only when evaluating."""
    import numpy as np
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from mteb.types import PromptType

    class KalmEncoder(SentenceTransformerEncoderWrapper):
        """mteb's SentenceTransformer wrapper, with KaLM-style instructions for kalm-trained models."""

        def __init__(self, model, meta_name: str, meta_revision: str, instruction_format: Optional[str],
                     trained_prompts: dict[str, str], instructions: dict[str, str]):
            # A kalm-trained model's saved prompts are keyed by kalm task kinds, which mteb does not
            # read; they are resolved here instead (see prompt_for), so mteb's wrapper gets none.
            if instruction_format is not None:
                model.prompts = {}
            super().__init__(model)
            self.mteb_model_meta = self.mteb_model_meta.model_copy(
                update={"name": meta_name, "revision": meta_revision,
                        "use_instructions": instruction_format is not None})
            self.instruction_format = instruction_format
            self.trained_prompts = trained_prompts
            self.instructions = instructions

        def prompt_for(self, task_metadata, prompt_type) -> str:
            """The text put before each input: '' for documents and for models trained without instructions."""
            if self.instruction_format is None:
                return ""
            if task_metadata.type in ASYMMETRIC and prompt_type == PromptType.document:
                return ""
            kind = KIND_OF_TYPE.get(task_metadata.type, "")
            instruction = self.instructions.get(task_metadata.name) or self.instructions.get(kind)
            if instruction is None:
                own = task_metadata.prompt
                instruction = own.get("query") if isinstance(own, dict) else own
            if not instruction and self.trained_prompts.get(kind):
                return self.trained_prompts[kind]
            if not instruction:
                from mteb.abstasks.abstask import get_abstask_prompt

                instruction = get_abstask_prompt(task_metadata.name)  # mteb's generic one for the task type
            return self.instruction_format.format(instruction=instruction, query="") if instruction else ""

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            if self.instruction_format is None:
                return super().encode(inputs, task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset,
                                      prompt_type=prompt_type, **kwargs)
            texts = [t for batch in inputs for t in batch["text"]]
            emb = self.model.encode(texts, prompt=self.prompt_for(task_metadata, prompt_type),
                                    batch_size=kwargs.get("batch_size", 32),
                                    show_progress_bar=kwargs.get("show_progress_bar", False),
                                    convert_to_numpy=True)
            return np.asarray(emb, dtype=np.float32)

    return KalmEncoder


_encoder_class = None


def load_encoder(model_ref: str, matryoshka_dim: Optional[int] = None, instructions: Optional[dict[str, str]] = None,
                 fingerprint: Optional[str] = None):
    """The object handed to ``mteb.evaluate`` for ``model_ref`` (an mteb ``EncoderProtocol``)."""
    global _encoder_class
    from kalm.models import model_fingerprint, resolve_model

    if _encoder_class is None:
        _encoder_class = _make_encoder_class()
    st = load_sentence_transformer(model_ref, matryoshka_dim)
    m = resolve_model(model_ref)
    info = training_info(m.path) if m.is_local else {}
    trained_with_instructions = bool(info.get("query_instruction_format")) and bool(st.prompts)
    fmt = info.get("query_instruction_format") if trained_with_instructions else None
    trained_prompts = {k: v for k, v in (st.prompts or {}).items() if v}
    name, revision = meta_name_revision(model_ref, fingerprint or model_fingerprint(model_ref), matryoshka_dim)
    return _encoder_class(st, name, revision, fmt, trained_prompts, dict(instructions or {}))
