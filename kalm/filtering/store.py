"""Content-keyed embedding store: append-only vector segments, memory-mapped, with sorted key indexes.

One store per teacher (model fingerprint and sequence length): a folder of *segments*, each two
``.npy`` files written once and never changed::

    seg-<time>-<pid>-<rand>.vec.npy    [n, D] float16 (or float32) vectors, in key order
    seg-<time>-<pid>-<rand>.keys.npy   [2, n] uint64 text keys (xxh3-128 of the UTF-8 text as high and
                                       low halves), sorted by (high, low)

A segment appears when its keys file is renamed into place (its vectors are renamed first), so a
reader sees whole segments or none; each writer writes its own segments, so concurrent runs lose
no writes (a text embedded by two runs at once is stored twice, harmlessly, and merged away by
the next compaction). Lookups are batched: one ``searchsorted`` per segment for a whole array of
keys; vectors are read through memory maps, so memory holds only what a caller gathers.
:meth:`EmbeddingStore.compact` merges segments into one (under an exclusive ``flock``; readers
open segments under a shared one), bounding the segments a lookup visits.

Why not SQLite (the previous cache): one row per text made 5 M x 896-dim float32 vectors ~19 GiB
and every lookup a ``WHERE key IN (...)`` per 900 keys; float16 halves the bytes and a sorted
key array answers a million lookups in one vectorised call (``bench/scale.py --store``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

ROW_BITS = 40  # a location is segment << 40 | row: 2**40 rows per segment, 2**23 segments


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """[n, 2] uint64 content keys: xxh3-128 of each text's UTF-8 bytes, as (high, low) halves."""
    import xxhash

    if not len(texts):
        return np.zeros((0, 2), np.uint64)
    h = xxhash.xxh3_128_digest
    return np.frombuffer(b"".join([h(t.encode("utf-8")) for t in texts]), dtype=">u8").reshape(-1, 2).astype(np.uint64)


def sort_keys(keys: np.ndarray) -> np.ndarray:
    """Order of ``keys`` [n, 2] by (high, low)."""
    return np.lexsort((keys[:, 1], keys[:, 0]))


def unique_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unique [u, 2] sorted, first index of each in keys [u], inverse [n])`` (as ``np.unique``)."""
    order = np.lexsort((np.arange(len(keys)), keys[:, 1], keys[:, 0]))  # ties by position: first comes first
    k = keys[order]
    new = np.ones(len(k), bool)
    new[1:] = (k[1:] != k[:-1]).any(axis=1)
    group = np.cumsum(new) - 1
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = group
    return k[new], order[new], inverse


def search_keys(sorted_keys: np.ndarray, keys: np.ndarray, presorted: bool = False) -> np.ndarray:
    """[n] position of each of ``keys`` [n, 2] in ``sorted_keys`` ([2, m]: high row, low row), -1 if absent.

    Needles are searched in sorted order (``presorted``: they already are): ``searchsorted`` then
    reads memory in order, ~10x faster on 10 M keys than in random order."""
    out = np.full(len(keys), -1, np.int64)
    m = sorted_keys.shape[1]
    if not len(keys) or not m:
        return out
    order = np.arange(len(keys)) if presorted else sort_keys(keys)
    hi, lo = keys[order, 0], keys[order, 1]
    pos = np.searchsorted(sorted_keys[0], hi)
    # Several keys can share a high half (p ~ n^2 / 2^65): step through that run comparing low halves.
    todo = np.arange(len(keys))
    while len(todo):
        p = pos[todo]
        inside = p < m
        todo, p = todo[inside], p[inside]
        same_hi = sorted_keys[0][p] == hi[todo]
        todo, p = todo[same_hi], p[same_hi]
        hit = sorted_keys[1][p] == lo[todo]
        out[order[todo[hit]]] = p[hit]
        todo = todo[~hit]
        pos[todo] += 1
    return out


class _Segment:
    def __init__(self, keys_path: Path):
        self.name = keys_path.name[: -len(".keys.npy")]
        self.keys = np.load(keys_path, mmap_mode="r")
        self.vecs = np.load(keys_path.with_name(self.name + ".vec.npy"), mmap_mode="r")


class EmbeddingStore:
    """``{text key: vector}`` for one teacher, on disk.

    Args:
        folder: the store's folder (created if missing); one per model fingerprint and settings.
        dtype: how new vectors are stored, ``"float16"`` (default: half the disk; scores move by
            ~1e-3, tested not to change filter decisions beyond ties) or ``"float32"``.
        max_segments: :meth:`compact` merges when there are more segments than this.

    Example::

        store = EmbeddingStore(cache / "minilm", dtype="float16")
        keys = text_keys(texts)
        loc = store.locate(keys)                        # [n] int64, -1 where missing
        store.append(keys[loc < 0], encode(missing))    # one new segment
        vecs = store.gather(store.locate(keys))         # [n, D] float32
    """

    def __init__(self, folder: Path, dtype: str = "float16", max_segments: int = 16):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"embedding store dtype must be 'float16' or 'float32', got {dtype!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.max_segments = max_segments
        self._segments: list[_Segment] = []
        self.refresh()

    # ------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        with open(self.folder / "store.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def refresh(self) -> None:
        """Open segments written since the last refresh (by this or another process).

        Segments already open stay open at their positions (a memory map outlives its file), so
        locations from :meth:`locate` stay valid across refreshes; only this instance's
        :meth:`compact` invalidates them."""
        with self._lock(exclusive=False):
            have = {s.name for s in self._segments}
            for p in sorted(self.folder.glob("seg-*.keys.npy")):
                if p.name[: -len(".keys.npy")] not in have:
                    self._segments.append(_Segment(p))

    @property
    def segments(self) -> int:
        return len(self._segments)

    def __len__(self) -> int:
        """Stored vectors (a key stored in two segments counts twice until compaction)."""
        return sum(s.keys.shape[1] for s in self._segments)

    @property
    def dim(self) -> int | None:
        return int(self._segments[0].vecs.shape[1]) if self._segments else None

    def locate(self, keys: np.ndarray) -> np.ndarray:
        """[n] int64 locations of ``keys`` [n, 2], -1 where the store has no vector."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 2)
        order = sort_keys(keys)
        ordered = keys[order]
        loc = np.full(len(keys), -1, dtype=np.int64)  # in sorted order until the end
        for s, seg in enumerate(self._segments):
            todo = np.flatnonzero(loc < 0)
            if not len(todo):
                break
            pos = search_keys(seg.keys, ordered[todo], presorted=True)
            hit = pos >= 0
            loc[todo[hit]] = (np.int64(s) << ROW_BITS) | pos[hit]
        out = np.empty_like(loc)
        out[order] = loc
        return out

    def gather(self, loc: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """[n, D] float32 vectors at ``loc`` (all found: a -1 raises ``KeyError``)."""
        loc = np.asarray(loc, dtype=np.int64)
        if len(loc) and loc.min() < 0:
            raise KeyError(f"{int((loc < 0).sum())} keys are not in the embedding store {self.folder}")
        dim = self.dim or 0
        out = np.empty((len(loc), dim), dtype=np.float32) if out is None else out
        seg_of = loc >> ROW_BITS
        rows = loc & ((1 << ROW_BITS) - 1)
        for s in np.unique(seg_of):
            at = np.flatnonzero(seg_of == s)
            r = rows[at]
            order = np.argsort(r, kind="stable")  # ascending rows: sequential reads of the memory map
            out[at[order]] = self._segments[int(s)].vecs[r[order]]
        return out

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found [n] bool, vectors [found, D] float32)`` for ``keys``."""
        loc = self.locate(keys)
        found = loc >= 0
        return found, self.gather(loc[found])

    # ------------------------------------------------------------ writing
    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` [n, D] under ``keys`` [n, 2] as one new segment (atomic; duplicates kept once)."""
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 2)
        vectors = np.asarray(vectors)
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
        if not len(keys):
            return
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[1]} dimensions, the store at {self.folder} holds "
                             f"{self.dim}: one store per model")
        keys, first, _ = unique_keys(keys)
        self._write_segment(np.ascontiguousarray(keys.T), vectors[first].astype(self.dtype, copy=False))
        self.refresh()

    def _write_segment(self, keys: np.ndarray, vectors: np.ndarray | None, fill=None, shape=None) -> str:
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        vec_tmp = self.folder / f".{name}.vec.npy.tmp"
        keys_tmp = self.folder / f".{name}.keys.npy.tmp"
        try:
            if vectors is not None:
                with open(vec_tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(vectors))
                    f.flush()
                    os.fsync(f.fileno())
            else:  # written in pieces by ``fill`` (compaction), never whole in memory
                mm = np.lib.format.open_memmap(vec_tmp, mode="w+", dtype=self.dtype, shape=shape)
                fill(mm)
                mm.flush()
                del mm
            with open(keys_tmp, "wb") as f:
                np.save(f, keys)
                f.flush()
                os.fsync(f.fileno())
            os.replace(vec_tmp, self.folder / f"{name}.vec.npy")
            os.replace(keys_tmp, self.folder / f"{name}.keys.npy")  # the segment exists from here
        finally:
            vec_tmp.unlink(missing_ok=True)
            keys_tmp.unlink(missing_ok=True)
        return name

    def compact(self, force: bool = False, chunk: int = 262_144) -> bool:
        """Merge every segment into one (duplicates once) when there are more than ``max_segments``.

        Holds the exclusive lock: readers wait to open segments, writers keep appending (their new
        segments are not touched). Memory: the keys (16 bytes each) and one chunk of vectors.
        Returns whether it merged.
        """
        with self._lock(exclusive=True):
            names = sorted(p.name[: -len(".keys.npy")] for p in self.folder.glob("seg-*.keys.npy"))
            if len(names) <= (1 if force else self.max_segments):
                return False
            segs = [_Segment(self.folder / f"{n}.keys.npy") for n in names]
            keys = np.concatenate([np.asarray(s.keys).T for s in segs])
            src = np.concatenate([np.full(s.keys.shape[1], i, np.int32) for i, s in enumerate(segs)])
            row = np.concatenate([np.arange(s.keys.shape[1], dtype=np.int64) for s in segs])
            keys, first, _ = unique_keys(keys)
            keys = np.ascontiguousarray(keys.T)
            src, row = src[first], row[first]
            dim = segs[0].vecs.shape[1]

            def fill(mm: np.ndarray) -> None:
                for i in range(0, keys.shape[1], chunk):
                    s_, r_ = src[i:i + chunk], row[i:i + chunk]
                    block = np.empty((len(s_), dim), dtype=self.dtype)
                    for s in np.unique(s_):
                        at = np.flatnonzero(s_ == s)
                        block[at] = segs[int(s)].vecs[r_[at]]
                    mm[i:i + len(s_)] = block

            self._write_segment(keys, None, fill=fill, shape=(keys.shape[1], dim))
            for n in names:  # open memory maps stay valid after unlink (POSIX)
                (self.folder / f"{n}.keys.npy").unlink(missing_ok=True)
                (self.folder / f"{n}.vec.npy").unlink(missing_ok=True)
        self._segments = []
        self.refresh()
        return True

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("seg-*.npy"))
