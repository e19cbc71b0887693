"""Shared text utilities: normalisation, shingles for every script, language id, batch MinHash."""

import json
import zlib

import numpy as np
import pyarrow as pa
from datasketch import MinHash

from kalm.minhash import BandIndex, HashSet64, MinHasher, band_keys, jaccard8, lsh_bands, sketch8
from kalm.synth.dedup import deduplicate
from kalm.text import detect_language, fold, fold_array, normalize, normalize_array, shingles


def _jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def test_normalisation_scalar_equals_arrow():
    texts = ["  A man, is PLAYING\ta guitar!! ", "Ｆｕｌｌ　width", "Straße", None]
    assert normalize_array(pa.array(texts)).to_pylist() == [normalize(t) if t else None for t in texts]
    assert fold_array(pa.array(texts)).to_pylist() == [fold(t) if t else None for t in texts]
    assert normalize("A man is playing a guitar.") == normalize("a man is playing a guitar") == "a man is playing a guitar"
    assert fold("Full\u3000 Width ") == "full width" and fold("A, b") == "a, b"  # fold keeps punctuation


def test_chinese_sentences_differing_by_one_character_share_most_shingles():
    a, b = "我想知道怎么开通花呗支付功能", "我想知道怎样开通花呗支付功能"
    # \w+ made each sentence one word, so these had Jaccard 0; character bigrams see them as near-duplicates.
    assert _jaccard(a, b) > 0.7
    assert "开通" in shingles(a) and shingles("iPhone 13的电池") >= {"的电", "电池", "iphone 13"}
    assert _jaccard("これはペンです", "これはペンですか") > 0.7
    assert _jaccard("The cat sat on the mat today", "A dog ran in the park yesterday") == 0


def test_language_of_short_chinese_and_japanese_text():
    assert detect_language("怎么开通花呗") == "zh"
    assert detect_language("花呗") == "zh"
    assert detect_language("これはペンです") == "ja"
    assert detect_language("東京に行きます") == "ja"  # kanji with kana is Japanese
    assert detect_language("안녕하세요 반갑습니다") == "ko"
    assert detect_language("How do I reset my card PIN?", ["en", "zh"]) == "en"


def test_batch_minhash_equals_datasketch():
    texts = ["A man is playing a guitar.", "我想知道怎么开通花呗啊", "x", "",
             "The quick brown fox jumps over the lazy dog again and again"]
    sets = [shingles(t) for t in texts]
    sig = MinHasher(64, seed=1).signatures(sets, chunk=7)  # a tiny chunk: several slices per batch
    for s, row in zip(sets, sig):
        m = MinHash(num_perm=64, seed=1, hashfunc=zlib.crc32)
        m.update_batch([x.encode("utf-8") for x in s])
        assert np.array_equal(m.hashvalues, row)


def test_lsh_index_and_sketches():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, size=(50, 64), dtype=np.uint64).astype(np.uint32)
    b, r = lsh_bands(0.8, 64)
    keys = band_keys(sig, b, r)
    s = HashSet64()
    s.add(keys[:25])
    assert s.contains(keys[:25]).all() and not s.contains(keys[25:]).any()
    idx = BandIndex()
    for start in range(0, 25, 5):  # several runs, merged
        idx.add(keys[start:start + 5], sketch8(sig[start:start + 5]))
    rows, items = idx.candidates(keys)
    assert set(zip(rows.tolist(), items.tolist())) == {(i, i) for i in range(25)}
    assert np.allclose(jaccard8(sketch8(sig[:3]), idx.sketches(np.arange(3))), 1.0)


def test_synth_dedup_removes_chinese_near_duplicate(shared_data):
    """Real LCQMC questions: the same pair with one character changed is now a near-duplicate."""
    rows = [json.loads(line) for line in (shared_data / "lcqmc" / "test.jsonl").read_text().splitlines()[:40]]
    pairs = [{"query": r["sentence1"], "positive": r["sentence2"]} for r in rows]
    src = pairs[3]
    q = src["query"]
    changed = q[:-1] + ("吗" if q[-1] != "吗" else "呢")
    planted = pairs + [{"query": changed, "positive": src["positive"]}]
    kept, counts = deduplicate(planted, threshold=0.7)
    assert counts["near_duplicate"] >= 1
    assert {"query": changed, "positive": src["positive"]} not in kept
