"""The filter at scale: a fixed search depth whatever the label sizes, and flat memory on 200k examples.

The teacher is a static model distilled from a tiny random-weight BERT (the CPU twin of
``teacher_kind: static``): these tests are about the search and memory, not the teacher's quality."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kalm.filtering.config import FilterConfig, IndexOptions
from kalm.filtering.embed import TeacherEncoder
from kalm.filtering.scan import norm_text
from kalm.filtering.stage import run_filter
from kalm.schema import SCHEMA, ShardWriter, read_examples


def _real_texts(shared_data: Path) -> tuple[list[str], list[str]]:
    bank = [json.loads(x)["text"] for x in (shared_data / "banking77" / "train.jsonl").read_text().splitlines()]
    sts = [t for x in (shared_data / "stsb_en" / "train.jsonl").read_text().splitlines()
           for t in (json.loads(x)["sentence1"], json.loads(x)["sentence2"])]
    return list(dict.fromkeys(bank)), list(dict.fromkeys(sts))


def _table(query, positive, negatives, source, task_type, metadata) -> pa.Table:
    n = len(query)
    return pa.table({"id": [f"{source}-{i}" for i in range(n)], "task_type": [task_type] * n, "instruction": [""] * n,
                     "query": query, "positive": positive, "negatives": negatives, "language": ["en"] * n,
                     "source": [source] * n, "persona": [None] * n, "metadata": metadata}, schema=SCHEMA)


@pytest.fixture(scope="module")
def static_cfg(tiny_bert_teacher) -> FilterConfig:
    return FilterConfig(teacher=tiny_bert_teacher, teacher_kind="static", static_dims=16, max_seq_length=64,
                        use_instructions=False, top_k=20, num_negatives=3, negative_rank_start=10,
                        negative_rank_end=50, drop_task_types=["classification"])


@pytest.mark.slow
def test_two_labels_of_10k_texts_are_searched_at_a_fixed_depth(shared_data, tmp_path, static_cfg):
    """20k rows, two labels of 10k texts: before, each query searched 10k+ deep (all of its label's
    texts are right answers); now the labels are excluded inside the search and the depth is
    max(top_k, negative_rank_end) + slack. Ranks equal brute force on the vectors the filter read."""
    bank, sts = _real_texts(shared_data)
    rng = np.random.default_rng(0)
    q, p, negs, meta = [], [], [], []
    for label, own, other in (("bank", bank[:10_000], sts), ("sts", sts[:10_000], bank)):
        for i, text in enumerate(own):
            q.append(text)
            p.append(own[(i + 1 + int(rng.integers(len(own) - 1))) % len(own)])
            negs.append([other[int(rng.integers(len(other)))]])
            meta.append(json.dumps({"label": label}))
    with ShardWriter(tmp_path / "in.parquet", rows_per_shard=7000) as w:
        w.write(_table(q, p, negs, "twolabels", "classification", meta))

    results = {}
    for kind in ("flat", "ivf"):
        cfg = static_cfg.model_copy(update={"index": IndexOptions(kind=kind)})
        r = run_filter(cfg, [tmp_path / "in.parquet"], tmp_path / kind, tmp_path / "cache")
        pool = r.info["stats"]["pools"]["classification/twolabels"]
        assert pool["depth"] == cfg.search_depth <= cfg.negative_rank_end + cfg.search_slack
        assert pool["blocks_excluded_in_search"] == 2 and pool["searched_deeper"] == 0
        rows = read_examples([tmp_path / kind / "kept.parquet", tmp_path / kind / "dropped.parquet"]).to_pylist()
        results[kind] = {x["id"]: json.loads(x["metadata"])["positive_rank"] for x in rows}
        if kind == "ivf":
            assert pool["kind"] == "ivf" and pool["recall"]["recall"] >= 0.99

    # Brute force over the store's vectors (what the filter read), labels excluded.
    enc = TeacherEncoder(static_cfg.teacher, tmp_path / "cache", kind="static", static_dims=16, max_seq_length=64)
    cands = list(dict.fromkeys(t for pos, ng in zip(p, negs) for t in [pos, *ng]))
    C = enc.encode(cands)
    Q = enc.encode(q)
    assert enc.misses == 0
    cid = {t: i for i, t in enumerate(cands)}
    label_of = np.array([0 if i < 10_000 else 1 for i in range(len(q))])
    cand_label = np.full(len(cands), -1)
    for i, t in enumerate(p):
        cand_label[cid[t]] = label_of[i]
    for i, t in enumerate(q):
        if t in cid:
            cand_label[cid[t]] = label_of[i]
    cnorm = np.array([hash(norm_text(t)) for t in cands])
    needed = max(static_cfg.top_k, static_cfg.negative_rank_end)
    agree = {"flat": 0, "ivf": 0}
    for a in range(0, len(q), 2000):
        S = Q[a:a + 2000] @ C.T
        for i in range(a, min(a + 2000, len(q))):
            pi = cid[p[i]]
            mask = (cand_label != label_of[i]) & (cnorm != hash(norm_text(q[i]))) & (cnorm != cnorm[pi])
            s, sp = S[i - a][mask], S[i - a, pi]
            lo, hi = int((s > sp + 1e-5).sum()), int((s > sp - 1e-5).sum())
            for kind in agree:
                got = results[kind][f"twolabels-{i}"]
                ok = lo <= got <= hi if lo < needed else got >= needed
                agree[kind] += ok
                if kind == "flat":
                    assert ok, (i, got, lo, hi)
    assert agree["ivf"] >= 0.98 * len(q)  # approximate search, recall >= 0.99 at the depth read


@pytest.mark.slow
def test_filter_memory_stays_flat_on_200k_examples(shared_data, tmp_path, static_cfg):
    """200k generated examples (real texts recombined): the filter stage in its own process stays
    under 1.5 GiB peak RSS (VmHWM, kalm.memory.peak_rss_mib); the input alone is ~60 MB of Parquet
    and would be ~1.9 GB as Python dicts (9.4 KiB per example, issue 16)."""
    bank, sts = _real_texts(shared_data)
    base = bank + sts
    n, rng = 200_000, np.random.default_rng(1)
    with ShardWriter(tmp_path / "in.parquet", rows_per_shard=50_000) as w:
        for a in range(0, n, 50_000):
            idx = np.arange(a, a + 50_000)
            q = [f"{base[i % len(base)]} {' '.join(base[(7 * i) % len(base)].split()[:4])} #{i}" for i in idx]
            p = [f"{' '.join(base[i % len(base)].split()[::-1])} {base[(11 * i + 5) % len(base)]} #{i}" for i in idx]
            negs = [[base[int(rng.integers(len(base)))]] for _ in idx]
            w.write(_table(q, p, negs, "gen", "retrieval", ["{}"] * len(idx)))
    TeacherEncoder(static_cfg.teacher, tmp_path / "cache", kind="static", static_dims=16).load()  # distil once
    # nprobe fixed (not tuned to recall 0.99): this test is about memory; the recall is the IVF test's.
    cfg = static_cfg.model_copy(update={"read_batch_size": 16_384, "index": IndexOptions(kind="ivf", ivf_nprobe=8)})
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from kalm.memory import peak_rss_mib
        from kalm.filtering.config import FilterConfig
        from kalm.filtering.stage import run_filter
        cfg = FilterConfig.model_validate_json({cfg.model_dump_json()!r})
        r = run_filter(cfg, [Path({str(tmp_path / 'in.parquet')!r})], Path({str(tmp_path / 'out')!r}),
                       Path({str(tmp_path / 'cache')!r}))
        print(json.dumps({{"peak_kib": peak_rss_mib() * 1024, "counts": r.counts,
                          "pools": r.info["stats"]["pools"]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["counts"]["input"] == n and got["counts"]["kept"] + got["counts"]["dropped"] == n
    assert got["pools"]["retrieval/gen"]["kind"] == "ivf"
    assert got["peak_kib"] < 1.5 * 2**20, got
