"""The embedding store: content keys, batched lookups, float16, concurrent writers, compaction."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from kalm.filtering.store import EmbeddingStore, search_keys, text_keys, unique_keys


def _vectors(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_keys_are_content_hashes_and_lookups_are_batched(tmp_path):
    texts = [f"text {i}" for i in range(5000)]
    keys = text_keys(texts)
    assert keys.shape == (5000, 2) and keys.dtype == np.uint64
    assert np.array_equal(text_keys(["text 7"])[0], keys[7])
    uniq, first, inverse = unique_keys(np.concatenate([keys, keys[:10]]))
    assert len(uniq) == 5000 and np.array_equal(uniq[inverse], np.concatenate([keys, keys[:10]]))
    assert np.all(first < 5000)  # the first occurrence of each

    vecs = _vectors(5000)
    store = EmbeddingStore(tmp_path / "s", dtype="float16")
    store.append(keys[:3000], vecs[:3000])
    store.append(keys[2000:], vecs[2000:])  # overlapping writes are harmless
    assert store.segments == 2
    shuffled = np.random.default_rng(1).permutation(5000)
    loc = store.locate(keys[shuffled])
    assert (loc >= 0).all()
    got = store.gather(loc)
    np.testing.assert_array_equal(got, vecs[shuffled].astype(np.float16).astype(np.float32))
    assert np.abs(got - vecs[shuffled]).max() < 1e-3
    assert (store.locate(text_keys(["never stored"])) == -1).all()
    with pytest.raises(KeyError, match="not in the embedding store"):
        store.gather(np.array([-1]))
    with pytest.raises(ValueError, match="one store per model"):
        store.append(text_keys(["x"]), _vectors(1, dim=8))

    exact = EmbeddingStore(tmp_path / "f32", dtype="float32")
    exact.append(keys, vecs)
    np.testing.assert_array_equal(exact.gather(exact.locate(keys)), vecs)


def test_search_keys_handles_shared_high_halves():
    # Keys equal in their high 64 bits (as hash collisions would be) differ in the low half.
    keys = np.array([[5, 1], [5, 9], [5, 3], [2, 7], [9, 0]], np.uint64)
    sorted_keys = np.ascontiguousarray(keys[np.lexsort((keys[:, 1], keys[:, 0]))].T)
    needles = np.array([[5, 3], [5, 9], [5, 4], [9, 0], [1, 1]], np.uint64)
    pos = search_keys(sorted_keys, needles)
    assert pos[2] == -1 and pos[4] == -1
    for i in (0, 1, 3):
        assert np.array_equal(sorted_keys[:, pos[i]], needles[i])


def _writer(folder: str, seed: int, n: int, barrier) -> None:
    keys = text_keys([f"shared text {i}" if i % 3 == 0 else f"writer {seed} text {i}" for i in range(n)])
    vecs = _vectors(n, seed=seed)
    vecs[np.arange(n) % 3 == 0] = _vectors(n, seed=99)[np.arange(n) % 3 == 0]  # same text, same vector
    store = EmbeddingStore(folder, max_segments=4)
    barrier.wait()
    for a in range(0, n, 100):
        store.append(keys[a:a + 100], vecs[a:a + 100])
        if a == 500:
            store.compact()  # merging while the other process appends


def test_concurrent_writers_lose_nothing_and_compaction_merges(tmp_path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "s"), seed, 1000, barrier)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reader = EmbeddingStore(tmp_path / "s")
    before = reader.locate(text_keys(["writer 1 text 1", "writer 2 text 998", "shared text 999"]))
    assert (before >= 0).all()
    old = reader.gather(before)
    EmbeddingStore(tmp_path / "s").compact(force=True)  # another instance merges under this reader
    np.testing.assert_array_equal(reader.gather(before), old)  # its memory maps outlive the files

    merged = EmbeddingStore(tmp_path / "s")
    assert merged.segments == 1
    for seed in (1, 2):
        texts = [f"shared text {i}" if i % 3 == 0 else f"writer {seed} text {i}" for i in range(1000)]
        expect = _vectors(1000, seed=seed)
        expect[np.arange(1000) % 3 == 0] = _vectors(1000, seed=99)[np.arange(1000) % 3 == 0]
        got = merged.gather(merged.locate(text_keys(texts)))
        np.testing.assert_array_equal(got, expect.astype(np.float16).astype(np.float32))
    assert len(merged) == 2000 - 334  # the shared texts once
    assert not list((tmp_path / "s").glob(".*tmp"))
