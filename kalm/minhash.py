"""MinHash signatures in batches and a compact LSH index for millions of texts.

Signatures are datasketch's own (``datasketch.MinHash(num_perm, seed, hashfunc=zlib.crc32)``,
scheme ``affine32``: 32-bit shingle hashes, MurmurHash3 finalizer, ``a*h + b mod 2^32``
permutations with datasketch's parameters), computed for a whole batch in numpy instead of
one Python object per text; ``tests/test_text.py`` checks them equal to ``MinHash.update_batch``.
CRC-32 instead of datasketch's default SHA-1 shingle hash: 7x faster, and the finalizer
mixes its bits before the permutations (datasketch documents any 32-bit hash as valid).

The band layout (``b`` bands of ``r`` rows) is the one ``datasketch.MinHashLSH(threshold,
num_perm)`` chooses. datasketch keeps its index as Python dicts (~100+ bytes per key and
band); :class:`HashSet64` keeps the band keys as sorted uint64 arrays instead, so an index
over ``N`` texts holds ``8 * b * N`` bytes: 40 MB per million texts at ``num_perm=64``,
threshold 0.8 (``b=5, r=11``). Like ``MinHashLSH.query``, a shared band is a match (no
Jaccard check), which finds pairs above the threshold with high probability
(Leskovec, Rajaraman, Ullman, *Mining of Massive Datasets*, ch. 3.4).
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Iterable, Sequence

import numpy as np

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MAX32 = np.uint32(0xFFFFFFFF)


def hash64(texts: Iterable[str]) -> np.ndarray:
    """64-bit BLAKE2b hashes of ``texts`` (exact-match keys), shape ``[n]`` uint64."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
                        for t in texts), dtype=np.uint64)


class MinHasher:
    """Batch MinHash: ``signatures(shingle_sets)`` -> ``[n, num_perm]`` uint32, equal to datasketch's."""

    def __init__(self, num_perm: int = 64, seed: int = 1):
        from datasketch import MinHash
        from datasketch.minhash import _fmix

        m = MinHash(num_perm=num_perm, seed=seed)
        if m.scheme != "affine32":  # pragma: no cover - guards a datasketch default change
            raise RuntimeError(f"datasketch's default MinHash scheme is {m.scheme!r}, kalm expects 'affine32'")
        self.num_perm = num_perm
        self.seed = seed
        self._a, self._b = (np.asarray(x, dtype=np.uint32) for x in m.permutations)
        self._hash = zlib.crc32
        self._fmix = _fmix

    def signatures(self, shingle_sets: Sequence[Iterable[str]], chunk: int = 65_536) -> np.ndarray:
        """One signature per set of shingle strings (CRC-32 of each); an empty set gives all-ones
        (datasketch's empty MinHash)."""
        rows, hashes = [], []
        for i, s in enumerate(shingle_sets):
            for x in s:
                rows.append(i)
                hashes.append(self._hash(x.encode("utf-8")))
        return self.signatures_from_hashes(np.asarray(rows, dtype=np.int64), np.asarray(hashes, dtype=np.uint32),
                                           len(shingle_sets), chunk)

    def text_signatures(self, texts, chunk: int = 65_536) -> np.ndarray:
        """Signatures of the shingles (:func:`kalm.text.shingles`) of an Arrow array of texts, vectorised."""
        rows, hashes = shingle_hashes(texts)
        return self.signatures_from_hashes(rows, hashes, len(texts), chunk)

    def signatures_from_hashes(self, rows: np.ndarray, hashes: np.ndarray, n: int, chunk: int = 65_536) -> np.ndarray:
        """``[n, num_perm]`` signatures of 32-bit shingle hashes owned by ``rows`` (any order, repeats allowed):
        datasketch's ``MinHash(num_perm, seed, hashfunc=<identity>).update_batch(hashes of row)``."""
        out = np.full((n, self.num_perm), _MAX32, dtype=np.uint32)
        if not len(hashes):
            return out
        order = np.argsort(rows, kind="stable")
        rows, hv = rows[order], self._fmix(np.asarray(hashes, dtype=np.uint32)[order], 32)
        for lo in range(0, len(hv), chunk):  # memory: chunk x num_perm x 4 bytes at a time
            hi = min(lo + chunk, len(hv))
            r = rows[lo:hi]
            starts = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]]))
            phv = hv[lo:hi, None] * self._a[None, :] + self._b[None, :]  # uint32: wraps = mod 2^32
            red = np.minimum.reduceat(phv, starts, axis=0)
            owners = r[starts]
            out[owners] = np.minimum(out[owners], red)  # a row split across chunks keeps its minimum
        return out


_P32 = np.uint32(0x01000193)  # FNV prime


def _mix(*parts: np.ndarray, seed: int) -> np.ndarray:
    h = np.full(parts[0].shape, np.uint32(seed), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for p in parts:
            h = (h ^ p) * _P32
    return h


def shingle_hashes(texts) -> tuple[np.ndarray, np.ndarray]:
    """(row, 32-bit hash) of every shingle of every text of an Arrow array: the shingles of
    :func:`kalm.text.shingles` (word 3-grams, unspaced-character bigrams, lone unspaced characters,
    the words of a text with fewer than 3, or the folded text when it has no token), each hashed
    from CRC-32s of its tokens. Python work is one CRC-32 per distinct token of the batch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from kalm.text import MARK, fold_array, tokens_array

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    n = len(texts)
    tokens = tokens_array(texts)
    rows = np.asarray(pc.list_parent_indices(tokens), dtype=np.int64)
    flat = pc.list_flatten(tokens)
    out_rows, out_hashes = [], []
    if len(flat):
        enc = flat.dictionary_encode()
        words = enc.dictionary.to_pylist()
        dict_hash = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint32, count=len(words))
        dict_mark = np.fromiter((w.startswith(MARK) for w in words), dtype=bool, count=len(words))
        idx = np.asarray(enc.indices)
        th, mark = dict_hash[idx], dict_mark[idx]
        # words: 3-grams within a text; texts with 1-2 words: all their words as one shingle
        wr, wh = rows[~mark], th[~mark]
        if len(wr) >= 3:
            ok = wr[:-2] == wr[2:]
            out_rows.append(wr[:-2][ok])
            out_hashes.append(_mix(wh[:-2][ok], wh[1:-1][ok], wh[2:][ok], seed=3))
        nw = np.bincount(wr, minlength=n) if len(wr) else np.zeros(n, dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(nw)[:-1]])
        for k in (1, 2):
            sel = np.flatnonzero(nw == k)
            if len(sel):
                parts = [wh[first[sel] + j] for j in range(k)]
                out_rows.append(sel)
                out_hashes.append(_mix(*parts, seed=k))
        # unspaced characters: bigrams of neighbours in the token sequence; a lone one is itself
        same = np.zeros(len(rows), dtype=bool)
        if len(rows) > 1:
            same[:-1] = mark[:-1] & mark[1:] & (rows[:-1] == rows[1:])
        if same.any():
            j = np.flatnonzero(same)
            out_rows.append(rows[j])
            out_hashes.append(_mix(th[j], th[j + 1], seed=102))
        left = np.concatenate([[False], same[:-1]])
        lone = mark & ~same & ~left
        if lone.any():
            out_rows.append(rows[lone])
            out_hashes.append(_mix(th[lone], seed=101))
    have = np.zeros(n, dtype=bool)
    for r in out_rows:
        have[r] = True
    empty = np.flatnonzero(~have & np.asarray(pc.fill_null(pc.greater(pc.utf8_length(texts), 0), False)))
    if len(empty):
        folded = fold_array(texts.take(pa.array(empty))).to_pylist()
        keep = [i for i, f in enumerate(folded) if f]
        out_rows.append(empty[keep])
        out_hashes.append(np.fromiter((zlib.crc32(folded[i].encode("utf-8")) for i in keep), dtype=np.uint32))
    if not out_rows:
        return np.array([], np.int64), np.array([], np.uint32)
    return np.concatenate(out_rows).astype(np.int64), np.concatenate(out_hashes).astype(np.uint32)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(b, r)``: the bands and rows per band datasketch's MinHashLSH picks for ``threshold``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[n, bands]`` uint64 keys: FNV-1a over each band's ``rows`` values, salted by the band number."""
    n = signatures.shape[0]
    s = signatures[:, :bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.broadcast_to(_FNV_OFFSET ^ np.arange(bands, dtype=np.uint64), (n, bands)).copy()
    with np.errstate(over="ignore"):
        for j in range(rows):
            h ^= s[:, :, j]
            h *= _FNV_PRIME
    return h


class HashSet64:
    """A growing set of uint64 keys as sorted runs merged like an LSM tree (8 bytes per key).

    ``add`` appends a sorted run and merges runs of similar size, so membership tests search
    O(log N) runs and the total merge work is O(N log N).
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._runs)

    def add(self, keys: np.ndarray) -> None:
        keys = np.unique(np.asarray(keys, dtype=np.uint64).ravel())
        if not len(keys):
            return
        self._runs.append(keys)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            b = self._runs.pop()
            a = self._runs.pop()
            self._runs.append(np.unique(np.concatenate([a, b])))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean array of ``keys``' shape: which keys are in the set."""
        keys = np.asarray(keys, dtype=np.uint64)
        flat = keys.ravel()
        found = np.zeros(flat.shape, dtype=bool)
        for run in self._runs:
            pos = np.searchsorted(run, flat)
            pos[pos == len(run)] = 0
            found |= run[pos] == flat
        return found.reshape(keys.shape)


def sketch8(signatures: np.ndarray) -> np.ndarray:
    """The low 8 bits of each MinHash value (b-bit MinHash, Li & König 2010): 1 byte per permutation."""
    return (signatures & np.uint32(0xFF)).astype(np.uint8)


def jaccard8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard estimates from 8-bit sketches (rows of ``a`` vs rows of ``b``): matches corrected for the
    1/256 chance that two different hash values share their low byte."""
    eq = (a == b).mean(axis=-1)
    return np.clip((eq - 1 / 256) / (1 - 1 / 256), 0.0, 1.0)


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``[lo[i], hi[i])``: (i repeated per position, the positions)."""
    counts = hi - lo
    owner = np.repeat(np.arange(len(lo)), counts)
    pos = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return owner, pos


class BandIndex:
    """LSH band keys -> item ids as sorted runs (LSM-merged), with an 8-bit sketch per item to verify
    candidates. Memory per item: ``12 * bands`` bytes of keys and ids plus the sketch width."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._sketches: list[np.ndarray] = []
        self.size = 0

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + i.nbytes for k, i in self._runs) + sum(s.nbytes for s in self._sketches)

    def add(self, keys: np.ndarray, sketches: np.ndarray) -> None:
        """Add items with band keys ``[m, b]`` and sketches ``[m, w]``; their ids continue from ``size``."""
        m = len(keys)
        if m == 0:
            return
        ids = np.repeat(np.arange(self.size, self.size + m, dtype=np.uint32), keys.shape[1])
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")
        self._runs.append((flat[order], ids[order]))
        self._sketches.append(sketches)
        if len(self._sketches) > 16:
            self._sketches = [np.concatenate(self._sketches)]
        self.size += m
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (k2, i2), (k1, i1) = self._runs.pop(), self._runs.pop()
            k, i = np.concatenate([k1, k2]), np.concatenate([i1, i2])
            order = np.argsort(k, kind="stable")
            self._runs.append((k[order], i[order]))

    def candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unique (query row, item id) pairs sharing at least one band key."""
        b = keys.shape[1]
        flat = keys.ravel()
        rows, items = [], []
        for k, ids in self._runs:
            lo, hi = np.searchsorted(k, flat, "left"), np.searchsorted(k, flat, "right")
            if not (hi > lo).any():
                continue
            owner, pos = expand_ranges(lo, hi)
            rows.append(owner // b)
            items.append(ids[pos])
        if not rows:
            return np.array([], np.int64), np.array([], np.int64)
        pairs = np.unique(np.stack([np.concatenate(rows).astype(np.int64),
                                    np.concatenate(items).astype(np.int64)], axis=1), axis=0)
        return pairs[:, 0], pairs[:, 1]

    def sketches(self, ids: np.ndarray) -> np.ndarray:
        if len(self._sketches) > 1:
            self._sketches = [np.concatenate(self._sketches)]
        return self._sketches[0][ids]
