"""Local task folders (laid out like ../shared/data) as real mteb tasks.

A folder's kind follows from its files and fields (see ../shared/data/README.md):

==================== ================================================================
kind                 files (fields)
==================== ================================================================
sts                  test.jsonl (sentence1, sentence2, score[, lang])
classification       train.jsonl + test.jsonl (text, label)
pair_classification  test.jsonl (sentence1, sentence2, label 0|1)
reranking            test.jsonl (query, positive [...], negative [...])
clustering           test.jsonl (sentences [...], labels [...]), a row per problem
retrieval            corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
                     qrels/test.tsv (query-id, corpus-id, score)
==================== ================================================================

Where the folder holds a task mteb knows (STSBenchmark, Banking77Classification,
STSBenchmarkMultilingualSTS, or any registered name the config gives), the task is a subclass
of mteb's own class whose ``load_data`` reads the folder: metadata, prompt, evaluator and main
score stay mteb's, so local and hub results line up by name. Other folders become tasks of
mteb's abstract class for their kind. Either way mteb's evaluators compute every score.

The dataset revision recorded in mteb's results is ``local-<hash of the folder>``, so results
say which data they were computed on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from kalm.store import hash_path

# Folders of ../shared/data and the mteb tasks they hold (see its README).
KNOWN_FOLDERS = {
    "stsb_en": "STSBenchmark",
    "stsb_multi_mt": "STSBenchmarkMultilingualSTS",
    "banking77": "Banking77Classification",
}

KINDS = ("sts", "classification", "pair_classification", "reranking", "retrieval", "clustering")
# kalm task kind -> mteb TaskMetadata.type
MTEB_TYPE = {"sts": "STS", "classification": "Classification", "pair_classification": "PairClassification",
             "clustering": "Clustering", "reranking": "Reranking", "retrieval": "Retrieval"}
# main scores mteb uses for these types (as in its registered English tasks)
MAIN_SCORE = {"sts": "cosine_spearman", "classification": "accuracy", "pair_classification": "max_ap",
              "clustering": "v_measure", "reranking": "map_at_1000", "retrieval": "ndcg_at_10"}
# ISO 639-1 codes found in `lang` fields -> mteb's language-script codes
_LANG_SCRIPT = {"en": "eng-Latn", "de": "deu-Latn", "es": "spa-Latn", "fr": "fra-Latn", "it": "ita-Latn",
                "nl": "nld-Latn", "pl": "pol-Latn", "pt": "por-Latn", "ru": "rus-Cyrl", "zh": "cmn-Hans",
                "ja": "jpn-Jpan", "ko": "kor-Hang", "ar": "ara-Arab", "tr": "tur-Latn"}


class TaskFolderError(ValueError):
    """A task folder whose kind or format cannot be read; the message names the file and the fix."""


def mteb_task_name(folder: Path) -> str:
    """The mteb task name of a folder: the known table, else the folder's own name."""
    return KNOWN_FOLDERS.get(Path(folder).name, Path(folder).name)


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line or a missing field names the file, line and field."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFolderError(f"{path}:{i}: not valid JSON ({e.msg}); fix or remove the line") from e
            missing = [k for k in required if k not in row]
            if missing:
                raise TaskFolderError(f"{path}:{i}: missing field(s) {missing}; every row needs {list(required)}")
            rows.append(row)
    if not rows:
        raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
    return rows


def is_task_folder(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and ((folder / "test.jsonl").exists() or (folder / "corpus.jsonl").exists())


def folder_kind(folder: Path) -> str:
    """The task kind a folder holds, from its files and the fields of its first test row."""
    folder = Path(folder)
    if (folder / "corpus.jsonl").exists():
        for need in ("queries.jsonl", "qrels/test.tsv"):
            if not (folder / need).exists():
                raise TaskFolderError(f"{folder}: has corpus.jsonl but no {need}; a retrieval folder (BEIR layout) "
                                      "needs corpus.jsonl, queries.jsonl and qrels/test.tsv")
        return "retrieval"
    test = folder / "test.jsonl"
    if not test.exists():
        raise TaskFolderError(f"{folder}: no test.jsonl (or corpus.jsonl + queries.jsonl + qrels/test.tsv for "
                              "retrieval); see ../shared/data/README.md for the layouts")
    with open(test, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        keys = set(json.loads(first))
    except json.JSONDecodeError as e:
        raise TaskFolderError(f"{test}:1: not valid JSON ({e.msg})") from e
    if {"sentence1", "sentence2", "score"} <= keys:
        return "sts"
    if {"sentence1", "sentence2", "label"} <= keys:
        return "pair_classification"
    if {"text", "label"} <= keys:
        if not (folder / "train.jsonl").exists():
            raise TaskFolderError(f"{folder}: classification needs train.jsonl beside test.jsonl (mteb fits a "
                                  "logistic regression on train-split embeddings)")
        return "classification"
    if {"query", "positive", "negative"} <= keys:
        return "reranking"
    if {"sentences", "labels"} <= keys:
        return "clustering"
    raise TaskFolderError(f"{test}: fields {sorted(keys)} match no task kind; expected e.g. sentence1/sentence2/score "
                          "(STS) or text/label (classification); see ../shared/data/README.md")


def folder_fingerprint(folder: Path) -> str:
    """Content hash of the task folder (what its scores depend on besides model and code)."""
    return hash_path(Path(folder))


# ---------------------------------------------------------------- reading folders
def _sts_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_dict({"sentence1": [str(r["sentence1"]) for r in rows],
                              "sentence2": [str(r["sentence2"]) for r in rows],
                              "score": [float(r["score"]) for r in rows]})


def read_sts(folder: Path, splits: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{lang or 'default': {split: rows}} of an STS folder."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split in splits:
        for r in read_jsonl(folder / f"{split}.jsonl", ("sentence1", "sentence2", "score")):
            out.setdefault(str(r.get("lang", "default")), {}).setdefault(split, []).append(r)
    return out


def read_classification(folder: Path, splits: list[str], train_split: str = "train"):
    """A DatasetDict with ``train_split`` and the eval splits; labels mapped to ints (sorted names)."""
    from datasets import Dataset, DatasetDict

    files = {s: read_jsonl(folder / f"{s}.jsonl", ("text", "label")) for s in [train_split, *splits]}
    names = sorted({str(r["label"]) for r in files[train_split]})
    index = {n: i for i, n in enumerate(names)}
    for s in splits:
        unknown = sorted({str(r["label"]) for r in files[s]} - set(index))
        if unknown:
            raise TaskFolderError(f"{folder / f'{s}.jsonl'}: labels {unknown[:5]} never occur in "
                                  f"{train_split}.jsonl; the classifier can only predict labels it was trained on")
    return DatasetDict({s: Dataset.from_dict({"text": [str(r["text"]) for r in rows],
                                              "label": [index[str(r["label"])] for r in rows]})
                        for s, rows in files.items()})


def read_pair_classification(folder: Path, split: str, cols: tuple[str, str, str]):
    from datasets import Dataset

    rows = read_jsonl(folder / f"{split}.jsonl", ("sentence1", "sentence2", "label"))
    bad = sorted({r["label"] for r in rows if r["label"] not in (0, 1, True, False)}, key=str)
    if bad:
        raise TaskFolderError(f"{folder / f'{split}.jsonl'}: label must be 0 or 1, found {bad[:5]}")
    c1, c2, lab = cols
    return Dataset.from_dict({c1: [str(r["sentence1"]) for r in rows], c2: [str(r["sentence2"]) for r in rows],
                              lab: [int(r["label"]) for r in rows]})


def read_clustering(folder: Path, split: str, flat: bool):
    """Clustering rows: one problem per row (mteb's legacy layout) or flattened (one text per row)."""
    from datasets import Dataset

    rows = read_jsonl(folder / f"{split}.jsonl", ("sentences", "labels"))
    for i, r in enumerate(rows, 1):
        if len(r["sentences"]) != len(r["labels"]):
            raise TaskFolderError(f"{folder / f'{split}.jsonl'}:{i}: {len(r['sentences'])} sentences but "
                                  f"{len(r['labels'])} labels; give one label per sentence")
    if flat:
        return Dataset.from_dict({"sentences": [str(s) for r in rows for s in r["sentences"]],
                                  "labels": [str(x) for r in rows for x in r["labels"]]})
    return Dataset.from_dict({"sentences": [[str(s) for s in r["sentences"]] for r in rows],
                              "labels": [[str(x) for x in r["labels"]] for r in rows]})


def read_retrieval(folder: Path, split: str) -> dict[str, Any]:
    """mteb's RetrievalSplitData from a BEIR-layout folder."""
    from datasets import Dataset

    corpus = read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
    queries = read_jsonl(folder / "queries.jsonl", ("_id", "text"))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    lines = qrels_path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[:3] != ["query-id", "corpus-id", "score"]:
        raise TaskFolderError(f"{qrels_path}: first line must be the header 'query-id<TAB>corpus-id<TAB>score'")
    doc_ids = {str(d["_id"]) for d in corpus}
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise TaskFolderError(f"{qrels_path}:{n}: expected 3 tab-separated fields, got {len(parts)}")
        q, d, s = parts[:3]
        if d not in doc_ids:
            raise TaskFolderError(f"{qrels_path}:{n}: corpus-id {d!r} is not an _id in corpus.jsonl")
        qrels.setdefault(q, {})[d] = int(float(s))
    return {
        "corpus": Dataset.from_dict({"id": [str(d["_id"]) for d in corpus],
                                     "title": [str(d.get("title") or "") for d in corpus],
                                     "text": [str(d["text"]) for d in corpus]}),
        "queries": Dataset.from_dict({"id": [str(q["_id"]) for q in queries], "text": [str(q["text"]) for q in queries]}),
        "relevant_docs": qrels,
        "top_ranked": None,
    }


def read_reranking(folder: Path, split: str) -> dict[str, Any]:
    """Reranking rows as mteb 2 runs reranking: retrieval restricted to each query's candidates (top_ranked)."""
    from datasets import Dataset

    rows = read_jsonl(folder / f"{split}.jsonl", ("query", "positive", "negative"))
    doc_id: dict[str, str] = {}  # the same candidate text shared by queries is one corpus document
    queries, qrels, top_ranked = [], {}, {}
    for i, r in enumerate(rows):
        if not r["positive"]:
            raise TaskFolderError(f"{folder / f'{split}.jsonl'}:{i + 1}: 'positive' is empty; give at least one")
        qid = f"q{i}"
        queries.append((qid, str(r["query"])))
        top_ranked[qid], qrels[qid] = [], {}
        for label, texts in ((1, r["positive"]), (0, r["negative"])):
            for text in texts:
                did = doc_id.setdefault(str(text), f"d{len(doc_id)}")
                if did not in top_ranked[qid]:
                    top_ranked[qid].append(did)
                qrels[qid][did] = max(label, qrels[qid].get(did, 0))
    return {
        "corpus": Dataset.from_dict({"id": list(doc_id.values()), "title": [""] * len(doc_id),
                                     "text": list(doc_id)}),
        "queries": Dataset.from_dict({"id": [q for q, _ in queries], "text": [t for _, t in queries]}),
        "relevant_docs": qrels,
        "top_ranked": top_ranked,
    }


# ---------------------------------------------------------------- task classes
def _base_class(kind: str):
    """mteb's abstract task class for a kind."""
    if kind == "sts":
        from mteb.abstasks.sts import AbsTaskSTS

        return AbsTaskSTS
    if kind == "classification":
        from mteb.abstasks.classification import AbsTaskClassification

        return AbsTaskClassification
    if kind == "pair_classification":
        from mteb.abstasks.pair_classification import AbsTaskPairClassification

        return AbsTaskPairClassification
    if kind == "clustering":
        # A row per clustering problem is the legacy layout; mteb scores it per problem (mean v-measure).
        from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

        return AbsTaskClusteringLegacy
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return AbsTaskRetrieval  # retrieval and reranking (mteb 2 reranks via top_ranked)


def _load_into(task, folder: Path, kind: str) -> None:
    """Fill ``task.dataset`` from ``folder`` in the layout ``task``'s mteb class expects."""
    from datasets import DatasetDict

    splits = list(task.eval_splits)
    if kind == "sts":
        by_subset = read_sts(folder, splits)
        if task.metadata.is_multilingual:
            task.dataset = {s: DatasetDict({sp: _sts_dataset(rows) for sp, rows in by_subset[s].items()})
                            for s in task.hf_subsets}
        else:
            rows = {sp: [r for sub in by_subset.values() for r in sub.get(sp, [])] for sp in splits}
            task.dataset = DatasetDict({sp: _sts_dataset(r) for sp, r in rows.items()})
    elif kind == "classification":
        task.dataset = read_classification(folder, splits, getattr(task, "train_split", "train"))
    elif kind == "pair_classification":
        cols = (task.input1_column_name, task.input2_column_name, task.label_column_name)
        if not all(isinstance(c, str) for c in cols):
            raise TaskFolderError(f"{folder}: {task.metadata.name} is a multimodal pair task; local folders hold text")
        data = DatasetDict({sp: read_pair_classification(folder, sp, cols) for sp in splits})
        task.dataset = data
    elif kind == "clustering":
        from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

        flat = not isinstance(task, AbsTaskClusteringLegacy)
        task.dataset = DatasetDict({sp: read_clustering(folder, sp, flat) for sp in splits})
    elif kind == "retrieval":
        task.dataset = {"default": {sp: read_retrieval(folder, sp) for sp in splits}}
    elif kind == "reranking":
        task.dataset = {"default": {sp: read_reranking(folder, sp) for sp in splits}}
    else:  # pragma: no cover - folder_kind returns only KINDS
        raise TaskFolderError(f"{folder}: unsupported kind {kind}")
    task.data_loaded = True


def _local_metadata(base_metadata, name: str, kind: str, folder: Path, data_hash: str):
    """Metadata of a local task: mteb's own (when registered) with the local data's path and revision."""
    from mteb.abstasks.task_metadata import TaskMetadata

    dataset = {"path": str(folder), "revision": f"local-{data_hash[:12]}"}
    if base_metadata is not None:
        update: dict[str, Any] = {"dataset": dataset}
        splits = [s for s in base_metadata.eval_splits if _split_present(folder, kind, s)]
        if not splits:
            raise TaskFolderError(f"{folder}: none of {base_metadata.name}'s eval splits {base_metadata.eval_splits} "
                                  "is in the folder; name the files <split>.jsonl (or qrels/<split>.tsv)")
        update["eval_splits"] = splits
        if base_metadata.is_multilingual:
            langs = _folder_langs(folder, splits)
            known = base_metadata.eval_langs
            missing = [lang for lang in langs if lang not in known]
            if missing:
                raise TaskFolderError(f"{folder}: 'lang' values {missing} are not subsets of {base_metadata.name} "
                                      f"({sorted(known)}); drop those rows or use another task name")
            # Only the languages present locally are evaluated (and averaged).
            update["eval_langs"] = {lang: known[lang] for lang in langs}
        return base_metadata.model_copy(update=update)
    langs = _folder_langs(folder, ["test"]) if kind == "sts" else []
    eval_langs: Any = ["eng-Latn"]
    if len(langs) > 1 or (langs and langs != ["default"]):
        eval_langs = {lang: [_LANG_SCRIPT.get(lang, "eng-Latn")] for lang in langs}
    return TaskMetadata(
        name=name, description=f"Local {MTEB_TYPE[kind]} task read from {folder}", type=MTEB_TYPE[kind],
        category="t2t", modalities=["text"], dataset=dataset, eval_splits=["test"], eval_langs=eval_langs,
        main_score=MAIN_SCORE[kind], reference=None, date=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="",
    )


def _split_present(folder: Path, kind: str, split: str) -> bool:
    if kind == "retrieval":
        return (folder / "qrels" / f"{split}.tsv").exists()
    return (folder / f"{split}.jsonl").exists()


def _folder_langs(folder: Path, splits: list[str]) -> list[str]:
    langs: set[str] = set()
    for s in splits:
        if (folder / f"{s}.jsonl").exists():
            langs |= {str(r.get("lang", "default")) for r in read_jsonl(folder / f"{s}.jsonl")}
    return sorted(langs)


def _registered_class(name: str):
    """mteb's registered task class named ``name``, or None when mteb has no such task."""
    import mteb

    try:
        return type(mteb.get_task(name))
    except KeyError:
        return None


def load_local_task(folder: Path, name: Optional[str] = None):
    """An mteb task object whose ``load_data`` reads ``folder`` (nothing is read from the hub)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise TaskFolderError(f"task folder {folder} does not exist; check data_dir and the task's 'local' field")
    name = name or mteb_task_name(folder)
    kind = folder_kind(folder)
    registered = _registered_class(name)
    if registered is not None and registered.metadata.type != MTEB_TYPE[kind]:
        raise TaskFolderError(f"{folder} holds a {kind} task but mteb's {name} is {registered.metadata.type}; "
                              "fix the task name in the config (or the folder)")
    base = registered or _base_class(kind)
    metadata = _local_metadata(registered.metadata if registered else None, name, kind, folder,
                               folder_fingerprint(folder))

    def load_data(self, num_proc=None, **kwargs) -> None:  # noqa: ARG001 - mteb's load_data signature
        if self.data_loaded:
            return
        _load_into(self, folder, kind)

    attrs: dict[str, Any] = {"metadata": metadata, "load_data": load_data, "local_folder": folder, "local_kind": kind,
                             "__module__": __name__}
    if kind == "clustering" and registered is None:
        attrs.update(input_column_name="sentences", label_column_name="labels")
    if kind == "pair_classification" and registered is None:
        attrs.update(input1_column_name="sentence1", input2_column_name="sentence2", label_column_name="labels")
    cls = type(f"Local{base.__name__}", (base,), attrs)
    return cls()
