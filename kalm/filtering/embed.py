"""Teacher embeddings with an on-disk cache keyed by model content and text hash.

The filter, the miner and every rerun embed each distinct text once: vectors live in a
SQLite table per model fingerprint (WAL mode, so concurrent readers and one writer are safe).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kalm.stage import Progress, no_progress


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    """``{text hash: float32 vector}`` for one model."""

    def __init__(self, cache_dir: Path, model_fingerprint: str):
        self.path = Path(cache_dir) / model_fingerprint[:24] / "embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        if getattr(self._local, "conn", None) is None:
            self._local.conn = sqlite3.connect(self.path, timeout=60)
        return self._local.conn

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        c = self._conn()
        for i in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = list(keys[i:i + 900])
            q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
            for k, v in c.execute(q, chunk):
                out[k] = np.frombuffer(v, dtype=np.float32)
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self._conn() as c:  # one transaction: all or nothing
            c.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                          [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])


class TeacherEncoder:
    """Encodes texts with a sentence-transformers teacher, through the cache. Counts hits and misses."""

    def __init__(self, model_ref: str, cache_dir: Path, batch_size: int = 64, max_seq_length: int = 256,
                 runtime: str = "auto"):
        from kalm.models import model_fingerprint

        self.model_ref = model_ref
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        fingerprint = model_fingerprint(model_ref)
        self.cache = EmbeddingCache(cache_dir, fingerprint)
        self.ir_dir = Path(cache_dir) / fingerprint[:24] / "openvino"
        self.runtime = _pick_runtime(runtime)
        self._model = None
        self._openvino = None
        self.hits = 0
        self.misses = 0

    def load(self):
        """Loads the teacher (and, for OpenVINO, converts it once per model): done on first encode."""
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            from kalm.models import resolve_model, transformers_path

            m = resolve_model(self.model_ref)
            kwargs = {}
            if self.runtime == "openvino":
                kwargs["device"] = "cpu"  # converted from the fp32 CPU model
            elif torch.cuda.is_available():
                kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
            self._model = SentenceTransformer(transformers_path(self.model_ref) if m.gguf_file else m.path, **kwargs)
            self._model.max_seq_length = self.max_seq_length
            if self.runtime == "openvino":
                from kalm.filtering.openvino_forward import OpenVINOForward

                self._openvino = OpenVINOForward(self._model, self.ir_dir)
        return self._model

    def _encode_chunk(self, model, texts: list[str]) -> np.ndarray:
        if self._openvino is not None:
            vecs = self._openvino.encode(texts, self.batch_size)
            return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        import torch

        multi = torch.cuda.device_count() > 1
        # ST sorts by length inside encode; several GPUs encode in parallel via device lists.
        return model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False,
                            device=[f"cuda:{d}" for d in range(torch.cuda.device_count())] if multi else None)

    def encode(self, texts: Sequence[str], progress: Optional[Progress] = None) -> np.ndarray:
        """Normalized float32 embeddings, one row per text (duplicates embedded once)."""
        progress = progress or no_progress
        keys = [text_key(t) for t in texts]
        unique = dict(zip(keys, texts))
        cached = self.cache.get(list(unique))
        missing = [k for k in unique if k not in cached]
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        if missing:
            model = self.load()
            step = max(self.batch_size * 32, 1)
            for i in range(0, len(missing), step):
                chunk = missing[i:i + step]
                vecs = self._encode_chunk(model, [unique[k] for k in chunk])
                new = dict(zip(chunk, vecs.astype(np.float32)))
                self.cache.put(new)
                cached.update(new)
                progress(min(1.0, (i + len(chunk)) / len(missing)), f"embedded {i + len(chunk)}/{len(missing)}")
        return np.stack([cached[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


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
