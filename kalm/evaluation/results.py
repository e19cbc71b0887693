"""Results cache: one entry per (model content, task content, mteb version, settings, code).

Evaluating the same weights on the same task data twice costs nothing: the second call finds
the entry, copies mteb's own result file into the new output folder and returns its score.
The key never contains a path or run id, so a new run (or another output folder) of an
unchanged model reuses it. Entries are written atomically (temp folder + rename).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any, Optional

from kalm.store import atomic_path, hash_file, hash_strings

# The evaluation code whose changes can change a score.
_SCORE_CODE = ("tasks.py", "readers.py", "model.py")


def default_cache_dir() -> Path:
    from kalm.models import cache_root

    return cache_root() / "eval"


def mteb_version() -> str:
    return importlib.metadata.version("mteb")


def code_fingerprint() -> str:
    here = Path(__file__).resolve().parent
    return hash_strings([f"{name}:{hash_file(here / name)}" for name in _SCORE_CODE])


def result_key(model_fp: str, task_fp: str, matryoshka_dim: Optional[int]) -> str:
    """What one task's score depends on; batch size, corpus chunk size and output paths do not change
    scores. The model's prompts are part of its content (``model_fp``)."""
    return hash_strings([model_fp, task_fp, f"mteb={mteb_version()}", f"dim={matryoshka_dim}", code_fingerprint()])


def mteb_result_path(mteb_dir: Path, model_name: str, revision: str, task_name: str) -> Path:
    """Where ``mteb.ResultCache(mteb_dir)`` keeps a task's result (same rule as its get_task_result_path)."""
    return Path(mteb_dir) / "results" / model_name.replace("/", "__").replace(" ", "_") / revision / f"{task_name}.json"


class ResultsCache:
    """``<root>/<key[:2]>/<key>/`` holding ``entry.json`` (score, subsets, timing) and mteb's result file."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> Optional[dict[str, Any]]:
        d = self._dir(key)
        try:
            entry = json.loads((d / "entry.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        entry["mteb_result_file"] = str(d / "mteb_result.json")
        return entry if (d / "mteb_result.json").exists() else None

    def put(self, key: str, entry: dict[str, Any], mteb_result_file: Path) -> None:
        d = self._dir(key)
        with atomic_path(d) as tmp:
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "mteb_result.json").write_bytes(Path(mteb_result_file).read_bytes())
            meta = Path(mteb_result_file).with_name("model_meta.json")
            if meta.exists():
                (tmp / "model_meta.json").write_bytes(meta.read_bytes())
            (tmp / "entry.json").write_text(json.dumps(entry, indent=2, sort_keys=True))
