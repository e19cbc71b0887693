"""Local task folders (laid out like ../shared/data) as real mteb tasks.

A folder's kind follows from its files and fields (see ../shared/data/README.md):

==================== ================================================================
kind                 files (fields)
==================== ================================================================
sts                  test.jsonl (sentence1, sentence2, score[, lang])
classification       train.jsonl + test.jsonl (text, label)
pair_classification  test.jsonl (sentence1, sentence2, label 0|1)
reranking            test.jsonl (query, positive [...], negative [...])
clustering           test.jsonl (sentences [...], labels [...][, lang]), a row per problem
retrieval            corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
                     qrels/test.tsv (query-id, corpus-id, score)
==================== ================================================================

Where the folder holds a task mteb knows (``KNOWN_FOLDERS``: the data README's table, or any
registered name the config gives), the task is a subclass of mteb's own class whose ``load_data``
reads the folder: metadata, languages, evaluator and main score stay mteb's (Ocnli: max_accuracy;
MasakhaNEWSClusteringS2S: one problem per language, scored per language and averaged), so local
and hub results line up by name. The evaluated split is always ``test.jsonl`` (``qrels/test.tsv``)
in a folder, also where mteb names the split otherwise (Ocnli's ``validation``): a registered task
with one eval split reads ``test.jsonl`` as that split. Other folders become tasks of mteb's
abstract class for their kind. Either way mteb's evaluators compute every score.

Retrieval is read as mteb reads its own tasks: a qrels score <= 0 is "judged, not relevant", and
a query left with no relevant document is not scored (mteb drops queries without positives); the
task's ``kalm_notes`` say how many were left out and why. Qrels ids not in queries.jsonl or
corpus.jsonl are errors. Corpora stream into memory-mapped Arrow (``readers.corpus_dataset``).

Bad rows are :class:`TaskFolderError` naming file, 1-based line and fix (not UTF-8, not JSON,
missing or blank fields, mixed label types). The dataset revision recorded in mteb's results is
``local-<hash of the folder>``, so results say which data they were computed on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from kalm.evaluation.errors import TaskFolderError
from kalm.evaluation.readers import (LabelTypes, corpus_dataset, first_row, iter_jsonl, number_field, read_qrels,
                                     text_field)
from kalm.instructions import MTEB_TYPE
from kalm.store import hash_path

__all__ = ["KNOWN_FOLDERS", "KINDS", "MTEB_TYPE", "TaskFolderError", "folder_kind", "folder_fingerprint",
           "is_task_folder", "load_local_task", "mteb_task_name"]

# Folders of ../shared/data and the mteb tasks they hold (its README's table; a test checks they agree).
KNOWN_FOLDERS = {
    "stsb_en": "STSBenchmark",
    "stsb_multi_mt": "STSBenchmarkMultilingualSTS",
    "banking77": "Banking77Classification",
    "scifact": "SciFact",
    "lcqmc": "LCQMC",
    "ocnli": "Ocnli",
    "masakhanews_clustering": "MasakhaNEWSClusteringS2S",
}

KINDS = ("sts", "classification", "pair_classification", "reranking", "retrieval", "clustering")
# main scores for tasks mteb does not know (as in its registered English tasks of the kind)
MAIN_SCORE = {"sts": "cosine_spearman", "classification": "accuracy", "pair_classification": "max_ap",
              "clustering": "v_measure", "reranking": "map_at_1000", "retrieval": "ndcg_at_10"}
# ISO 639-1 codes found in `lang` fields -> mteb's language-script codes
_LANG_SCRIPT = {"en": "eng-Latn", "de": "deu-Latn", "es": "spa-Latn", "fr": "fra-Latn", "it": "ita-Latn",
                "nl": "nld-Latn", "pl": "pol-Latn", "pt": "por-Latn", "ru": "rus-Cyrl", "zh": "cmn-Hans",
                "ja": "jpn-Jpan", "ko": "kor-Hang", "ar": "ara-Arab", "tr": "tur-Latn"}
FOLDER_SPLIT = "test"  # the split file every folder holds, whatever mteb calls the split


def mteb_task_name(folder: Path) -> str:
    """The mteb task name of a folder: the known table, else the folder's own name."""
    return KNOWN_FOLDERS.get(Path(folder).name, Path(folder).name)


def is_task_folder(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and ((folder / "test.jsonl").exists() or (folder / "corpus.jsonl").exists())


def folder_kind(folder: Path) -> str:
    """The task kind a folder holds, from its files and the fields of its first test row (only that
    row is read)."""
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
    _, row = first_row(test)
    keys = set(row)
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


def arrow_cache_dir() -> Path:
    """Where retrieval corpora are kept as memory-mapped Arrow files (keyed by file content)."""
    from kalm.models import cache_root

    return cache_root() / "eval" / "arrow"


# ---------------------------------------------------------------- reading files
def _lang(path: Path, n: int, row: dict[str, Any]) -> str:
    return text_field(path, n, row, "lang") if "lang" in row else "default"


def read_sts(path: Path) -> dict[str, list[dict[str, Any]]]:
    """{lang or 'default': rows} of an STS file; scores must be numbers."""
    out: dict[str, list[dict[str, Any]]] = {}
    for n, r in iter_jsonl(path, ("sentence1", "sentence2", "score")):
        out.setdefault(_lang(path, n, r), []).append({
            "sentence1": text_field(path, n, r, "sentence1"), "sentence2": text_field(path, n, r, "sentence2"),
            "score": number_field(path, n, r, "score")})
    if not out:
        raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
    return out


def _sts_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("sentence1", "sentence2", "score")})


def read_classification(files: dict[str, Path], train_split: str = "train"):
    """A DatasetDict of the given split files; labels (one JSON type per file) mapped to ints by sorted name."""
    from datasets import Dataset, DatasetDict

    rows: dict[str, list[tuple[str, str]]] = {}
    for split, path in files.items():
        types = LabelTypes(path)
        rows[split] = [(text_field(path, n, r, "text"), str(types.check(n, r["label"])))
                       for n, r in iter_jsonl(path, ("text", "label"))]
        if not rows[split]:
            raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
    names = sorted({lab for _, lab in rows[train_split]})
    index = {n: i for i, n in enumerate(names)}
    for split, path in files.items():
        unknown = sorted({lab for _, lab in rows[split]} - set(index))
        if unknown:
            raise TaskFolderError(f"{path}: labels {unknown[:5]} never occur in {files[train_split].name}; the "
                                  "classifier can only predict labels it was trained on")
    return DatasetDict({s: Dataset.from_dict({"text": [t for t, _ in r], "label": [index[lab] for _, lab in r]})
                        for s, r in rows.items()})


def read_pair_classification(path: Path, cols: tuple[str, str, str]):
    from datasets import Dataset

    c1, c2, lab = cols
    out: dict[str, list[Any]] = {c1: [], c2: [], lab: []}
    for n, r in iter_jsonl(path, ("sentence1", "sentence2", "label")):
        label = r["label"]
        if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int):
            raise TaskFolderError(f"{path}:{n}: label is {label!r}; pair classification labels are the integers "
                                  "0 (not a pair) or 1 (a pair)")
        out[c1].append(text_field(path, n, r, "sentence1"))
        out[c2].append(text_field(path, n, r, "sentence2"))
        out[lab].append(int(label))
    if not out[lab]:
        raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
    return Dataset.from_dict(out)


def read_clustering(path: Path) -> dict[str, list[dict[str, list[str]]]]:
    """{lang or 'default': problems}, a problem ``{"sentences": [...], "labels": [...]}`` per row."""
    out: dict[str, list[dict[str, list[str]]]] = {}
    types = LabelTypes(path, "labels")
    for n, r in iter_jsonl(path, ("sentences", "labels")):
        sentences, labels = r["sentences"], r["labels"]
        if not isinstance(sentences, list) or not isinstance(labels, list):
            raise TaskFolderError(f"{path}:{n}: 'sentences' and 'labels' must be JSON lists (one problem per row)")
        if len(sentences) != len(labels):
            raise TaskFolderError(f"{path}:{n}: {len(sentences)} sentences but {len(labels)} labels; give one "
                                  "label per sentence")
        texts = [text_field(path, n, {"sentences": s}, "sentences") for s in sentences]
        out.setdefault(_lang(path, n, r), []).append(
            {"sentences": texts, "labels": [str(types.check(n, x)) for x in labels]})
    if not out:
        raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
    return out


def _clustering_dataset(problems: list[dict[str, list[str]]], flat: bool):
    """Legacy layout (a row per problem) or flattened (a text per row) for mteb's fast clustering."""
    from datasets import Dataset

    if flat:
        return Dataset.from_dict({"sentences": [s for p in problems for s in p["sentences"]],
                                  "labels": [x for p in problems for x in p["labels"]]})
    return Dataset.from_dict({"sentences": [p["sentences"] for p in problems],
                              "labels": [p["labels"] for p in problems]})


def read_retrieval(folder: Path, qrels_path: Path) -> tuple[dict[str, Any], list[str]]:
    """mteb's RetrievalSplitData from a BEIR-layout folder, and notes on the queries left out.

    Corpus and queries are memory-mapped Arrow (converted once per file content); qrels keep
    scores > 0 only (see ``readers.read_qrels``).
    """
    cache = arrow_cache_dir()
    corpus, doc_ids = corpus_dataset(folder / "corpus.jsonl", cache, with_title=True)
    queries, query_ids = corpus_dataset(folder / "queries.jsonl", cache, with_title=False)
    qrels, counts = read_qrels(qrels_path, query_ids, doc_ids, folder / "queries.jsonl", folder / "corpus.jsonl")
    del doc_ids
    notes = []
    left_out = counts["zero_only_queries"] + counts["unjudged_queries"]
    if left_out:
        why = []
        if counts["zero_only_queries"]:
            why.append(f"{counts['zero_only_queries']} judged only with score 0 (not relevant) in {qrels_path.name}")
        if counts["unjudged_queries"]:
            why.append(f"{counts['unjudged_queries']} without any row in {qrels_path.name}")
        notes.append(f"{left_out} of {len(query_ids)} queries left out of the score, as mteb leaves out queries with "
                     f"no relevant document: {'; '.join(why)}")
    if not qrels:
        raise TaskFolderError(f"{qrels_path}: no query has a relevant document (score >= 1); nothing can be scored")
    return {"corpus": corpus, "queries": queries, "relevant_docs": qrels, "top_ranked": None}, notes


def read_reranking(path: Path) -> dict[str, Any]:
    """Reranking rows as mteb 2 runs reranking: retrieval restricted to each query's candidates (top_ranked)."""
    from datasets import Dataset

    doc_id: dict[str, str] = {}  # the same candidate text shared by queries is one corpus document
    queries, qrels, top_ranked = [], {}, {}
    for n, r in iter_jsonl(path, ("query", "positive", "negative")):
        for key in ("positive", "negative"):
            if not isinstance(r[key], list):
                raise TaskFolderError(f"{path}:{n}: {key!r} must be a JSON list of texts")
        if not r["positive"]:
            raise TaskFolderError(f"{path}:{n}: 'positive' is empty; give at least one")
        qid = f"q{n}"
        queries.append((qid, text_field(path, n, r, "query")))
        top_ranked[qid], qrels[qid] = [], {}
        for label, key in ((1, "positive"), (0, "negative")):
            for text in r[key]:
                did = doc_id.setdefault(text_field(path, n, {key: text}, key), f"d{len(doc_id)}")
                if did not in top_ranked[qid]:
                    top_ranked[qid].append(did)
                if label:
                    qrels[qid][did] = 1
    if not queries:
        raise TaskFolderError(f"{path}: no rows; a task file needs at least one JSON line")
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


def _split_file(folder: Path, kind: str, split: str) -> Path:
    return folder / "qrels" / f"{split}.tsv" if kind == "retrieval" else folder / f"{split}.jsonl"


def split_files(folder: Path, kind: str, eval_splits: list[str]) -> dict[str, Path]:
    """{mteb split: file holding it}. ``<split>.jsonl`` where present; a task with one eval split reads
    the folder's ``test.jsonl`` as it (the README writes the evaluated split as test.jsonl, also
    where mteb calls it validation)."""
    out = {s: _split_file(folder, kind, s) for s in eval_splits if _split_file(folder, kind, s).exists()}
    test = _split_file(folder, kind, FOLDER_SPLIT)
    if not out and len(eval_splits) == 1 and test.exists():
        out = {eval_splits[0]: test}
    if not out:
        raise TaskFolderError(f"{folder}: none of the eval splits {eval_splits} is in the folder; write the evaluated "
                              f"split as {test.relative_to(folder)}")
    return out


def _load_into(task, folder: Path, kind: str, files: dict[str, Path]) -> None:
    """Fill ``task.dataset`` from ``files`` ({split: file}) in the layout ``task``'s mteb class expects."""
    from datasets import DatasetDict

    task.kalm_notes = []
    multilingual = task.metadata.is_multilingual
    if kind in ("sts", "clustering"):
        from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

        flat = not isinstance(task, AbsTaskClusteringLegacy)
        by_split = {sp: (read_sts(p) if kind == "sts" else read_clustering(p)) for sp, p in files.items()}

        def build(rows):
            return _sts_dataset(rows) if kind == "sts" else _clustering_dataset(rows, flat)

        if multilingual:
            task.dataset = {s: DatasetDict({sp: build(subsets.get(s, [])) for sp, subsets in by_split.items()})
                            for s in task.hf_subsets}
        else:
            task.dataset = DatasetDict({sp: build([r for rows in subsets.values() for r in rows])
                                        for sp, subsets in by_split.items()})
    elif kind == "classification":
        train_split = getattr(task, "train_split", "train")
        task.dataset = read_classification({train_split: folder / f"{train_split}.jsonl", **files}, train_split)
    elif kind == "pair_classification":
        cols = (task.input1_column_name, task.input2_column_name, task.label_column_name)
        if not all(isinstance(c, str) for c in cols):
            raise TaskFolderError(f"{folder}: {task.metadata.name} is a multimodal pair task; local folders hold text")
        task.dataset = DatasetDict({sp: read_pair_classification(p, cols) for sp, p in files.items()})
    elif kind == "retrieval":
        task.dataset = {"default": {}}
        for sp, p in files.items():
            task.dataset["default"][sp], notes = read_retrieval(folder, p)
            task.kalm_notes += notes
    elif kind == "reranking":
        task.dataset = {"default": {sp: read_reranking(p) for sp, p in files.items()}}
    else:  # pragma: no cover - folder_kind returns only KINDS
        raise TaskFolderError(f"{folder}: unsupported kind {kind}")
    task.data_loaded = True


def _local_metadata(base_metadata, name: str, kind: str, folder: Path, data_hash: str,
                    max_samples: Optional[int] = None):
    """Metadata of a local task (mteb's own when registered, with the local data's path and revision:
    ``local-<hash>``, ``-sample<N>`` added for a subsample) and the split files it reads."""
    from mteb.abstasks.task_metadata import TaskMetadata

    revision = f"local-{data_hash[:12]}" + (f"-sample{max_samples}" if max_samples else "")
    dataset = {"path": str(folder), "revision": revision}
    if base_metadata is not None:
        files = split_files(folder, kind, list(base_metadata.eval_splits))
        update: dict[str, Any] = {"dataset": dataset, "eval_splits": list(files)}
        if base_metadata.is_multilingual:
            langs = _folder_langs(kind, files)
            known = base_metadata.eval_langs
            missing = [lang for lang in langs if lang not in known]
            if missing:
                raise TaskFolderError(f"{folder}: 'lang' values {missing} are not subsets of {base_metadata.name} "
                                      f"({sorted(known)}); drop those rows or use another task name")
            # Only the languages present locally are evaluated (and averaged).
            update["eval_langs"] = {lang: known[lang] for lang in langs}
        return base_metadata.model_copy(update=update), files
    files = split_files(folder, kind, [FOLDER_SPLIT])
    langs = _folder_langs(kind, files)
    eval_langs: Any = ["eng-Latn"]
    if len(langs) > 1 or (langs and langs != ["default"]):
        eval_langs = {lang: [_LANG_SCRIPT.get(lang, "eng-Latn")] for lang in langs}
    return TaskMetadata(
        name=name, description=f"Local {MTEB_TYPE[kind]} task read from {folder}", type=MTEB_TYPE[kind],
        category="t2t", modalities=["text"], dataset=dataset, eval_splits=[FOLDER_SPLIT], eval_langs=eval_langs,
        main_score=MAIN_SCORE[kind], reference=None, date=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation="",
    ), files


def _folder_langs(kind: str, files: dict[str, Path]) -> list[str]:
    """The ``lang`` values of STS and clustering rows ('default' for rows without one)."""
    if kind not in ("sts", "clustering"):
        return []
    langs: set[str] = set()
    for path in files.values():
        langs |= {_lang(path, n, r) for n, r in iter_jsonl(path)}
    return sorted(langs)


def _registered_class(name: str):
    """mteb's registered task class named ``name``, or None when mteb has no such task."""
    import mteb

    try:
        return type(mteb.get_task(name))
    except KeyError:
        return None


class _LabelsAsArray:
    """Mixin for classification: mteb 2 passes ``eval_split[label]`` to sklearn's seven metrics per
    experiment; under datasets 5 that is a lazy ``datasets.Column`` which each metric re-reads row by row
    (10 experiments x 7 metrics x the test split: half of Banking77's evaluation time). Reading it once
    into an array gives the same scores."""

    def _calculate_scores(self, y_test, y_pred):
        import numpy as np

        return super()._calculate_scores(np.asarray(list(y_test)), y_pred)


def load_local_task(folder: Path, name: Optional[str] = None, max_samples: Optional[int] = None):
    """An mteb task object whose ``load_data`` reads ``folder`` (nothing is read from the hub).

    ``max_samples``: evaluate a seeded subsample of at most that many items per split (pairs, texts,
    sentences per clustering problem, corpus documents; see ``kalm.evaluation.subsample``). After
    ``load_data``, ``task.kalm_notes`` lists what was left out of the score and why.
    """
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
    metadata, files = _local_metadata(registered.metadata if registered else None, name, kind, folder,
                                      folder_fingerprint(folder), max_samples)

    def load_data(self, num_proc=None, **kwargs) -> None:  # noqa: ARG001 - mteb's load_data signature
        if self.data_loaded:
            return
        _load_into(self, folder, kind, files)
        if max_samples:
            from kalm.evaluation.subsample import subsample_task

            self.kalm_notes.append(subsample_task(self, kind, max_samples))

    attrs: dict[str, Any] = {"metadata": metadata, "load_data": load_data, "local_folder": folder, "local_kind": kind,
                             "local_files": files, "kalm_notes": [], "__module__": __name__}
    if kind == "clustering" and registered is None:
        attrs.update(input_column_name="sentences", label_column_name="labels")
    if kind == "pair_classification" and registered is None:
        attrs.update(input1_column_name="sentence1", input2_column_name="sentence2", label_column_name="labels")
    bases = (_LabelsAsArray, base) if kind == "classification" else (base,)
    cls = type(f"Local{base.__name__}", bases, attrs)
    return cls()
