"""Teacher embeddings through a content-keyed store (kalm.filtering.store).

The filter, the miner and every rerun embed each distinct text once: vectors are stored under
the teacher's model fingerprint, its settings and the text's xxh3-128 key.

Teachers:
- ``transformer`` (default): the sentence-transformers model; on CPUs through OpenVINO
  (``openvino_forward``, fp32), on GPUs in bf16 (:func:`teacher_dtype`): on one GPU in this
  process, on several through ONE sentence-transformers process pool that lives as long as the
  encoder (``start_multi_process_pool`` once, ``pool=`` for every chunk, stopped by
  :meth:`TeacherEncoder.close`): starting a pool per chunk cost ~300 pool start-ups per 5 M texts.
- ``static``: a model2vec static-embedding model distilled once, offline, from the teacher
  (Tulkens & van Dongen, "Model2Vec", 2024: the teacher's output for every vocabulary token, PCA,
  SIF weights; a text is the mean of its tokens' vectors). No transformer runs at encode time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from kalm.filtering.store import EmbeddingStore, text_keys, unique_keys
from kalm.stage import Progress, no_progress
from kalm.store import atomic_path

log = logging.getLogger(__name__)


def pool_devices(configured: Optional[list[str]], n_cuda: int) -> Optional[list[str]]:
    """Devices of the stage's one process pool: the configured list, else every GPU when there are
    two or more; None = encode in this process."""
    if configured:
        return list(configured)
    return [f"cuda:{d}" for d in range(n_cuda)] if n_cuda > 1 else None


def teacher_dtype(dtype: str, runtime: str, on_gpu: bool) -> str:
    """The transformer teacher's forward precision, ``"bfloat16"`` or ``"float32"``.

    ``dtype``: ``filter.dtype``; ``runtime``: the picked runtime (``"torch"``/``"openvino"``);
    ``on_gpu``: the model runs on CUDA devices (in this process or a process pool). ``auto`` is
    bf16 on GPUs (half the memory, tensor cores; the vectors' cosine to fp32 ones is > 0.99, tested
    on CPU) and fp32 elsewhere.

    Raises:
        ValueError: ``bfloat16`` with the OpenVINO runtime, which runs the fp32 model.
    """
    if dtype == "auto":
        return "bfloat16" if on_gpu and runtime == "torch" else "float32"
    if dtype == "bfloat16" and runtime == "openvino":
        raise ValueError("filter.dtype is 'bfloat16' but filter.runtime is 'openvino', which runs the float32 model: "
                         "set filter.runtime: torch (or auto) for a bf16 teacher, or filter.dtype: float32")
    return dtype


class TeacherEncoder:
    """Encodes texts with the filter's teacher, through the embedding store. Counts hits and misses.

    Use as a context manager (or call :meth:`close`): a process pool, when one is used, is stopped there.
    """

    def __init__(self, model_ref: str, cache_dir: Path, batch_size: int = 64, max_seq_length: int = 256,
                 runtime: str = "auto", kind: str = "transformer", static_dims: int = 256,
                 store_dtype: str = "float16", devices: Optional[list[str]] = None, dtype: str = "auto"):
        from kalm.models import model_fingerprint

        self.model_ref = model_ref
        self.kind = kind
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.static_dims = static_dims
        fingerprint = model_fingerprint(model_ref)
        root = Path(cache_dir) / fingerprint[:24]
        self.ir_dir = root / "openvino"
        if kind == "static":
            import model2vec

            self.static_dir = root / f"static-model2vec{model2vec.__version__}-d{static_dims}"
            name = f"{self.static_dir.name}-L{max_seq_length}"
            self.devices, self.runtime, self.dtype = None, "static", "float32"  # numpy only: no torch, no runtime
        elif kind == "transformer":
            import torch

            self.devices = pool_devices(devices, torch.cuda.device_count())
            # A process pool, and a bf16 forward pass, run in torch.
            torch_only = self.devices or (dtype == "bfloat16" and runtime == "auto")
            self.runtime = "torch" if torch_only else _pick_runtime(runtime)
            on_gpu = any(d.startswith("cuda") for d in self.devices) if self.devices else torch.cuda.is_available()
            self.dtype = teacher_dtype(dtype, self.runtime, on_gpu)
            # Vectors of a bf16 forward pass differ from fp32 ones in the 3rd digit: stored apart (fp32 keeps
            # the name stores had before, so their caches stay valid).
            name = f"L{max_seq_length}" + ("-bf16" if self.dtype == "bfloat16" else "")
        else:
            raise ValueError(f"filter.teacher_kind must be 'transformer' or 'static', got {kind!r}")
        self.store = EmbeddingStore(root / "store" / f"{name}-{store_dtype}", dtype=store_dtype)
        self._model = None
        self._openvino = None
        self._pool = None
        self.pools_started = 0
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------ model
    def load(self):
        """Loads the teacher (OpenVINO: converted once per model; static: distilled once per model): on first encode."""
        if self._model is not None:
            return self._model
        if self.kind == "static":
            from model2vec import StaticModel

            if not (self.static_dir / "config.json").exists():
                self._distill()
            self._model = StaticModel.from_pretrained(str(self.static_dir), max_length=self.max_seq_length)
            return self._model
        import torch
        from sentence_transformers import SentenceTransformer

        from kalm.models import resolve_model, transformers_path

        m = resolve_model(self.model_ref)
        kwargs = {}
        if self.runtime == "openvino" or self.devices:
            kwargs["device"] = "cpu"  # OpenVINO converts the fp32 CPU model; a pool moves copies to its devices
        if self.dtype == "bfloat16":
            kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
        self._model = SentenceTransformer(transformers_path(self.model_ref) if m.gguf_file else m.path, **kwargs)
        self._model.max_seq_length = self.max_seq_length
        if self.runtime == "openvino":
            from kalm.filtering.openvino_forward import OpenVINOForward

            self._openvino = OpenVINOForward(self._model, self.ir_dir)
        return self._model

    def _distill(self) -> None:
        from model2vec.distill import distill

        from kalm.models import resolve_model, transformers_path

        m = resolve_model(self.model_ref)
        log.info("distilling a static teacher from %s (once per model)", self.model_ref)
        static = distill(model_name=transformers_path(self.model_ref) if m.gguf_file else m.path,
                         pca_dims=self.static_dims)
        with atomic_path(self.static_dir) as tmp:  # a killed run leaves no half model
            static.save_pretrained(str(tmp))

    def _encode_chunk(self, texts: list[str]) -> np.ndarray:
        model = self.load()
        if self.kind == "static":
            from kalm.tokenization import parallel_tokenizers

            with parallel_tokenizers():  # tokenizing is most of a static teacher's time; nothing forks here
                vecs = model.encode(texts, batch_size=max(self.batch_size, 1024), use_multiprocessing=False)
        elif self._openvino is not None:
            vecs = self._openvino.encode(texts, self.batch_size)
        elif self.devices:
            if self._pool is None:  # one pool per encoder (per stage), reused for every chunk
                self._pool = model.start_multi_process_pool(self.devices)
                self.pools_started += 1
            vecs = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False, pool=self._pool)
        else:
            vecs = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        vecs = np.asarray(vecs, dtype=np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)

    def close(self) -> None:
        """Stops the process pool, if one was started."""
        if self._pool is not None:
            self._model.stop_multi_process_pool(self._pool)
            self._pool = None

    def __enter__(self) -> "TeacherEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def chunk(self) -> int:
        """Texts per encode call (and per store segment)."""
        return self.batch_size * 32 * max(1, len(self.devices or ())) if self.kind == "transformer" else 65_536

    # ------------------------------------------------------------ encoding through the store
    def embed_missing(self, keys: np.ndarray, texts_at: Callable[[np.ndarray], list[str]],
                      progress: Optional[Progress] = None) -> int:
        """Embeds and stores every key of ``keys`` [n, 2] (distinct) the store lacks.

        ``texts_at(indices)`` returns the texts of ``keys[indices]``. Returns how many were embedded.
        """
        progress = progress or no_progress
        missing = np.flatnonzero(self.store.locate(keys) < 0)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        for i in range(0, len(missing), self.chunk):
            at = missing[i:i + self.chunk]
            self.store.append(keys[at], self._encode_chunk(texts_at(at)))
            progress(min(1.0, (i + len(at)) / len(missing)), f"embedded {i + len(at)}/{len(missing)}")
        return len(missing)

    def encode(self, texts: Sequence[str], progress: Optional[Progress] = None) -> np.ndarray:
        """Normalized float32 embeddings [n, D], one row per text (duplicates embedded once).

        For small inputs; the filter stage streams through :meth:`embed_missing` and the store."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        keys = text_keys(texts)
        unique, first, inverse = unique_keys(keys)
        self.embed_missing(unique, lambda at: [texts[j] for j in first[at]], progress)
        return self.store.gather(self.store.locate(keys))


def _pick_runtime(runtime: str) -> str:
    """'auto': torch on a GPU (bf16 there), OpenVINO on a CPU when it is installed, else torch."""
    from kalm.filtering import openvino_forward

    if runtime == "openvino" and not openvino_forward.available():
        raise RuntimeError("filter.runtime is 'openvino' but the openvino package is not installed: "
                           "pip install openvino, or set filter.runtime to 'torch' or 'auto'")
    if runtime != "auto":
        return runtime
    import torch

    return "torch" if torch.cuda.is_available() or not openvino_forward.available() else "openvino"
