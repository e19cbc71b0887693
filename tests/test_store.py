"""Run store: atomic writes, content hashes, manifest, hard-link adoption of cached outputs."""

import json
import os

import pytest

from kalm.store import RunStore, atomic_path, atomic_write_json, hash_path, link_tree


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp left behind


def test_atomic_folder_replacement(tmp_path):
    target = tmp_path / "model"
    for version in (1, 2):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w.bin").write_text(str(version))
    assert (target / "w.bin").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_folder_hash_depends_on_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "x.txt").write_text("same")
    assert hash_path(a) == hash_path(b)
    (b / "sub" / "x.txt").write_text("different")
    assert hash_path(a) != hash_path(b)


def test_link_tree_shares_inodes(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.parquet").write_bytes(b"data")
    link_tree(src, tmp_path / "dst")
    assert os.stat(src / "d" / "f.parquet").st_ino == os.stat(tmp_path / "dst" / "d" / "f.parquet").st_ino


def test_manifest_records_stages(tmp_path):
    store = RunStore(tmp_path, "r1")
    store.record_stage("ingest", status="running")
    store.record_stage("ingest", status="done", counts={"examples": 3})
    m = json.loads(store.manifest_path.read_text())
    assert m["stages"]["ingest"] == {"status": "done", "counts": {"examples": 3}}


def test_bad_run_id_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a valid folder name"):
        RunStore(tmp_path, "../escape")
