"""Run folders, atomic writes, content hashes and the run manifest.

Layout::

    runs/<run_id>/manifest.json
    runs/<run_id>/<stage>/...          one folder per stage

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so a killed process never leaves a half-written
output behind; readers see the old file or the new one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for files and folders: whatever the caller writes at the yielded path
    replaces ``path`` in one rename. On error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and tmp.is_dir():
            # os.replace cannot replace a non-empty folder: move the old one aside first.
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- hashing
def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_strings(items: Iterable[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names and file contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"cannot hash {path}: no such file or folder")
    parts = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and ".tmp-" not in p.name:
            parts.append(f"{p.relative_to(path).as_posix()}:{hash_file(p)}")
    return hash_strings(parts)


def hash_outputs(out_dir: Path, outputs: Iterable[Path]) -> dict[str, str]:
    """``{path relative to out_dir: content hash}`` for each output."""
    return {Path(p).relative_to(out_dir).as_posix(): hash_path(Path(p)) for p in outputs}


# ---------------------------------------------------------------- linking
def link_tree(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` using hard links (no data copied), atomically.

    Used when a stage is served from cache: its files, written by an earlier run, appear
    in the new run's folder too, and deleting the old run later loses nothing.
    Falls back to a real copy across file systems.
    """
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        if src.is_file():
            _link_or_copy(src, tmp)
        else:
            shutil.copytree(src, tmp, copy_function=_link_or_copy)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- run folders
def new_run_id(prefix: str = "run") -> str:
    now = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{now}-{os.getpid() % 10000:04d}"


class RunStore:
    """One run's folder: ``<runs_dir>/<run_id>``, its stage folders and its manifest."""

    def __init__(self, runs_dir: Path, run_id: str):
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise ValueError(f"run id {run_id!r} is not a valid folder name: use letters, digits, '-' and '_'")
        self.runs_dir = Path(runs_dir).resolve()
        self.run_id = run_id
        self.root = self.runs_dir / run_id
        self._lock = threading.Lock()

    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"run_id": self.run_id, "stages": {}}
        return json.loads(self.manifest_path.read_text())

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge top-level fields into the manifest and rewrite it atomically."""
        with self._lock:
            m = self.read_manifest()
            m.update(fields)
            m["updated_at"] = _dt.datetime.now().isoformat(timespec="seconds")
            atomic_write_json(self.manifest_path, m)
            return m

    def record_stage(self, stage: str, fresh: bool = False, **entry: Any) -> dict[str, Any]:
        """Merge ``entry`` into ``manifest["stages"][stage]`` and rewrite atomically; ``fresh`` starts
        the stage's entry anew (a new attempt: nothing of an earlier attempt's counts or result stays)."""
        with self._lock:
            m = self.read_manifest()
            stages = m.setdefault("stages", {})
            if fresh:
                stages[stage] = {}
            stages.setdefault(stage, {}).update(entry)
            m["updated_at"] = _dt.datetime.now().isoformat(timespec="seconds")
            atomic_write_json(self.manifest_path, m)
            return m
