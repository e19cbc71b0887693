"""The encoder mteb evaluates, loaded the way the leaderboard loads it.

Which loader (``choose_loader``, decided without loading or downloading anything):

- a model mteb's registry knows (a hub id such as ``intfloat/multilingual-e5-large-instruct``) is
  loaded with ``mteb.get_model(name, revision)``: the registered loader with its per-task
  instructions, dtype, ``add_eos_token`` and so on, at the registered revision -- what its
  leaderboard numbers were computed with;
- a local folder (a kalm export, any sentence-transformers folder), a ``pkg:`` model, or a hub id
  mteb does not know is loaded as a ``SentenceTransformer`` and wrapped in mteb's own
  ``SentenceTransformerEncoderWrapper`` -- exactly what ``mteb run -m <folder>`` builds. Its saved
  ``prompts`` (for kalm exports: written from the training's instruction policy,
  ``kalm.instructions.InstructionPolicy.mteb_prompts``) are the only instructions it gets, so
  ``kalm eval`` scores what anyone else scores for the published model. kalm adds no
  instruction logic of its own.

Matryoshka: ``matryoshka_dim`` truncates every embedding (``truncate_dim`` / mteb's ``embed_dim``).
Result files: sentence-transformers-loaded models are filed as ``kalm/<slug>`` at revision = the
first 12 hex digits of the model's content hash; mteb-loaded ones under their registered name and
revision (a ``-d<dim>`` suffix marks a Matryoshka cut).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from kalm.evaluation.errors import EvalModelError

__all__ = ["EvalModelError", "LoaderChoice", "choose_loader", "load_encoder", "load_sentence_transformer",
           "model_slug", "result_name_revision"]

MTEB_LOADER = "mteb"
ST_LOADER = "sentence-transformers"


@dataclass(frozen=True)
class LoaderChoice:
    """How a model reference is loaded for mteb.

    Attributes:
        loader: ``"mteb"`` (``mteb.get_model`` with the registered loader) or ``"sentence-transformers"``
            (``SentenceTransformer`` in mteb's ``SentenceTransformerEncoderWrapper``).
        name: the registered mteb name (mteb loader) or the model reference.
        revision: the registered revision (mteb loader), else None.
        detail: the loader's own name, e.g. ``InstructSentenceTransformerModel``.
        reason: why this loader, in words (shown in the report).
    """

    loader: Literal["mteb", "sentence-transformers"]
    name: str
    revision: Optional[str]
    detail: str
    reason: str

    def describe(self) -> str:
        if self.loader == MTEB_LOADER:
            return f"mteb.get_model({self.name!r}, revision={self.revision!r}) -> {self.detail}"
        return f"SentenceTransformer in mteb's {self.detail} ({self.reason})"


def registered_meta(name: str):
    """mteb's registered ``ModelMeta`` for ``name``, or None (registry lookup only: works offline)."""
    import mteb

    try:
        return mteb.get_model_meta(name)
    except (KeyError, ValueError):
        return None


def _loader_name(loader: Any) -> str:
    return getattr(loader, "__name__", None) or type(loader).__name__


def choose_loader(model_ref: str) -> LoaderChoice:
    """The leaderboard's loader for ``model_ref`` (nothing is loaded or downloaded)."""
    from kalm.models import resolve_model

    m = resolve_model(model_ref)
    wrapper = "SentenceTransformerEncoderWrapper"
    if m.is_local:
        what = "pkg: model" if model_ref.startswith("pkg:") else "local folder"
        return LoaderChoice(ST_LOADER, model_ref, None, wrapper, f"{what}; its saved prompts")
    meta = registered_meta(m.path)
    if meta is not None and meta.loader is not None:
        return LoaderChoice(MTEB_LOADER, meta.name, meta.revision, _loader_name(meta.loader),
                            "registered in mteb")
    return LoaderChoice(ST_LOADER, model_ref, None, wrapper, "hub model not in mteb's registry, as mteb loads it")


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


def result_name_revision(model_ref: str, fingerprint: str, matryoshka_dim: Optional[int] = None,
                         choice: Optional[LoaderChoice] = None) -> tuple[str, str]:
    """The model name and revision mteb files results under for this model and Matryoshka cut."""
    choice = choice or choose_loader(model_ref)
    cut = f"-d{matryoshka_dim}" if matryoshka_dim else ""
    if choice.loader == MTEB_LOADER:
        return choice.name, f"{choice.revision or 'none'}{cut}"
    return f"kalm/{model_slug(model_ref)}", fingerprint[:12] + cut


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
        _check_dim(model_ref, matryoshka_dim, dim)
        model.truncate_dim = matryoshka_dim
    return model


def _check_dim(model_ref: str, matryoshka_dim: int, dim: Optional[int]) -> None:
    if dim is not None and matryoshka_dim > dim:
        raise EvalModelError(f"evaluate.matryoshka_dim={matryoshka_dim} exceeds {model_ref}'s embedding size {dim}; "
                             f"choose a value <= {dim} or leave it unset")


def check_registered_dim(name: str, matryoshka_dim: Optional[int]) -> None:
    """A Matryoshka cut mteb's registered loader of ``name`` supports (its ``ModelMeta.embed_dim``)."""
    if matryoshka_dim is None:
        return
    dims = registered_meta(name).embed_dim
    if dims is None or dims == matryoshka_dim or (isinstance(dims, list) and matryoshka_dim in dims):
        return
    raise EvalModelError(f"evaluate.matryoshka_dim={matryoshka_dim}: mteb's registered loader of {name} supports only "
                         f"embedding size(s) {dims}, as the leaderboard scores it; leave matryoshka_dim unset for "
                         f"runs with this baseline, or drop {name} from evaluate.baselines")


def load_encoder(model_ref: str, matryoshka_dim: Optional[int] = None, fingerprint: Optional[str] = None,
                 choice: Optional[LoaderChoice] = None):
    """The object handed to ``mteb.evaluate`` for ``model_ref`` (an mteb ``EncoderProtocol``), loaded
    by ``choose_loader``'s choice; ``encoder.kalm_loader`` is that choice."""
    from kalm.models import model_fingerprint

    choice = choice or choose_loader(model_ref)
    name, revision = result_name_revision(model_ref, fingerprint or model_fingerprint(model_ref), matryoshka_dim,
                                          choice)
    if choice.loader == MTEB_LOADER:
        import mteb

        check_registered_dim(choice.name, matryoshka_dim)
        encoder = mteb.get_model(choice.name, choice.revision, embed_dim=matryoshka_dim)
        if matryoshka_dim is not None:
            encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"revision": revision})
    else:
        from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

        encoder = SentenceTransformerEncoderWrapper(load_sentence_transformer(model_ref, matryoshka_dim))
        # Only the name under which mteb files the results changes; scoring is mteb's wrapper as is.
        encoder.mteb_model_meta = encoder.mteb_model_meta.model_copy(update={"name": name, "revision": revision})
    encoder.kalm_loader = choice
    return encoder
