"""Ingest of a 200k-example generated file in a fresh process: peak RSS stays under a generous bound
(streaming: one batch, the dedup index and the shard writer, never the dataset)."""

import json
import subprocess
import sys
import textwrap

import pytest

PEAK_RSS_BOUND_MIB = 1536  # measured ~400 MiB (imports ~180 MiB, dedup index ~50 MiB at 200k): 3.8x headroom

CHILD = textwrap.dedent("""
    import json, random, sys, time
    from pathlib import Path
    from kalm.memory import peak_rss_mib
    from kalm.ingest.config import DatasetSource, IngestConfig
    from kalm.ingest.stage import run_ingest

    n, tmp = int(sys.argv[1]), Path(sys.argv[2])
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    words = lambda k: " ".join(rng.choice(vocab) for _ in range(k))
    with open(tmp / "gen.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"query": words(rng.randint(5, 12)), "positive": words(rng.randint(15, 30)),
                                "negatives": [words(rng.randint(15, 30))]}) + "\\n")
    size = (tmp / "gen.jsonl").stat().st_size
    start = time.perf_counter()
    cfg = IngestConfig(datasets=[DatasetSource(name="gen", path=tmp / "gen.jsonl", format="pairs")],
                       rows_per_shard=50_000)
    r = run_ingest(cfg, tmp / "out")
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes": size, "counts": r.counts,
                      "shards": len(r.parquet_files()), "dedup_index_bytes": r.info["dedup"]["index_bytes"],
                      "peak_rss_mib": peak_rss_mib()}))
""")


@pytest.mark.slow
def test_200k_examples_ingest_with_bounded_peak_rss(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, "200000", str(tmp_path)], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    assert out["counts"]["rows_read"] == 200_000 and out["counts"]["examples"] == 200_000
    assert out["shards"] == 4
    assert out["peak_rss_mib"] < PEAK_RSS_BOUND_MIB, out
