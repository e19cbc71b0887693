"""What every stage task shares: where Prefect keeps its state, the cache key, artifacts.

Cache keys are built from the stage's config section, the *content* hashes of its inputs
(upstream stage outputs, and every local file or folder the config names: datasets, evaluation
folders, persona files, local model folders) and the source of the ``kalm`` code the stage runs;
never from the run id or a path alone. So a new run of an unchanged config reuses every stage, a
changed filter setting recomputes filter and what follows, and a data file edited in place
recomputes every stage that reads it. Hub datasets key on name, config, split and revision (the
config's own values).

A stage's data error (:class:`kalm.errors.DataError`: a malformed file, a deleted input) is
never retried: ``retry_condition_fn=retry_unless_data_error`` on every stage task.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from kalm.stage import StageResult
from kalm.store import hash_file, hash_strings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KALM_DIR = Path(os.environ.get("KALM_HOME", PROJECT_ROOT / ".kalm"))

# Which kalm sources each stage's output depends on (its "code version").
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "generate": ("kalm/synth", "kalm/schema.py", "kalm/models.py", "kalm/text.py"),
    "ingest": ("kalm/ingest", "kalm/schema.py", "kalm/text.py", "kalm/minhash.py"),
    "filter": ("kalm/filtering", "kalm/schema.py", "kalm/models.py"),
    "train": ("kalm/training", "kalm/schema.py", "kalm/models.py"),
    "evaluate": ("kalm/evaluation", "kalm/models.py"),
    "report": ("kalm/evaluation",),
}


def configure_prefect_home() -> None:
    """Keep Prefect's home (database, ephemeral server state) inside the project, not ~/.prefect.

    Must run before ``prefect`` is first imported; users who set PREFECT_HOME or
    PREFECT_API_URL themselves keep their choice.
    """
    os.environ.setdefault("PREFECT_HOME", str(KALM_DIR / "prefect"))
    # Prefect creates its home without parents: on a fresh clone .kalm/ does not exist yet.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    # The demo needs no server: an ephemeral one is started in-process when no API URL is set.
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # The temporary server needs ~8 s on an idle 2-core machine; allow for a loaded one.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", os.environ.get("KALM_LOG_LEVEL", "INFO"))
    # The temporary server's telemetry heartbeat writes to its SQLite database while the run does,
    # and logs a "database is locked" traceback at ERROR when they collide; it sends nothing useful here.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def results_dir() -> Path:
    """Where Prefect persists task results (the cache)."""
    d = Path(os.environ.get("KALM_RESULTS_DIR", KALM_DIR / "results"))
    d.mkdir(parents=True, exist_ok=True)
    return d


_code_cache: dict[str, str] = {}


def code_version(stage: str) -> str:
    """Hash of the kalm source files (and prompt templates) the stage depends on."""
    if stage in _code_cache:
        return _code_cache[stage]
    parts: list[str] = []
    for rel in STAGE_CODE.get(stage, ("kalm",)):
        p = PROJECT_ROOT / rel
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts)
        parts += [f"{f.relative_to(PROJECT_ROOT).as_posix()}:{hash_file(f)}" for f in files]
    _code_cache[stage] = hash_strings(parts)
    return _code_cache[stage]


def stage_key(stage: str, cfg: Any, inputs: Iterable[StageResult] = (), *extra: str) -> str:
    """The cache key of one stage run: config + content of the files it names + input contents + code, no run id."""
    cfg_json = cfg.model_dump_json() if hasattr(cfg, "model_dump_json") else repr(cfg)
    return hash_strings([stage, cfg_json, code_version(stage), config_files_fingerprint(cfg),
                         *(r.content_hash() for r in inputs), *extra])


def stage_cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn`` for stage tasks with parameters ``cfg``, ``inputs`` (StageResults)
    and optionally ``key_extra`` (strings); everything else (run_dir...) is left out."""
    stage = parameters.get("stage") or context.task.name
    inputs = parameters.get("inputs") or []
    if isinstance(inputs, StageResult):
        inputs = [inputs]
    extra = parameters.get("key_extra") or []
    return f"{stage}-{stage_key(stage, parameters['cfg'], inputs, *extra)}"


# ---------------------------------------------------------------- content of the files a config names
def config_paths(cfg: Any) -> list[Path]:
    """Local files and folders a config names: every ``Path`` value, and every string value that is an
    existing path (e.g. a local model folder); ``pkg:`` references and hub names are not paths."""
    found: set[Path] = set()

    def walk(v: Any) -> None:
        if isinstance(v, Path):
            found.add(v)
        elif isinstance(v, str):
            if v and not v.startswith("pkg:") and "\n" not in v and len(v) < 4096 and ("/" in v or "." in v):
                try:
                    if Path(v).exists():
                        found.add(Path(v))
                except OSError:
                    pass
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(cfg.model_dump() if hasattr(cfg, "model_dump") else cfg)
    return sorted(found, key=str)


def config_files_fingerprint(cfg: Any) -> str:
    """One hash of the content of every local file/folder ``cfg`` names (missing ones count as missing)."""
    return hash_strings(f"{p}={content_hash(p) if p.exists() else 'missing'}" for p in config_paths(cfg))


_memo_lock = threading.Lock()
RACY_NS = 2_000_000_000  # a file changed within 2 s of its hashing may change again in the same mtime tick


def _memo_db() -> sqlite3.Connection:
    d = KALM_DIR / "cache"
    d.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(d / "content-hashes.sqlite", timeout=30)
    db.execute("CREATE TABLE IF NOT EXISTS h (path TEXT PRIMARY KEY, stat TEXT, sha TEXT, hashed_ns INTEGER)")
    return db


def file_content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered by (path, device, inode, size, mtime, ctime).

    The memo only saves re-reading: it is used when every one of those is unchanged *and* the file
    was last modified more than 2 s before it was hashed (git's "racy" rule: an edit within the same
    timestamp tick could otherwise keep mtime and size). ctime cannot be set by users (``touch -d``
    changes it), so content changed in place is always hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    stat = json.dumps([st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    with _memo_lock:
        try:
            db = _memo_db()
            row = db.execute("SELECT stat, sha, hashed_ns FROM h WHERE path = ?", (str(path),)).fetchone()
        except sqlite3.Error:
            db, row = None, None
        if row and row[0] == stat and row[2] - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
            db.close()
            return row[1]
    hashed_ns = time.time_ns()
    sha = hash_file(path)
    with _memo_lock:
        try:
            if db is None:
                db = _memo_db()
            db.execute("INSERT OR REPLACE INTO h VALUES (?, ?, ?, ?)", (str(path), stat, sha, hashed_ns))
            db.commit()
            db.close()
        except sqlite3.Error:  # the memo is an optimisation; a locked or read-only cache only costs time
            pass
    return sha


def content_hash(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names and file contents, sorted; hidden and
    temporary files skipped, as ``kalm.store.hash_path``)."""
    path = Path(path)
    if path.is_file():
        return file_content_hash(path)
    parts = [f"{p.relative_to(path).as_posix()}:{file_content_hash(p)}" for p in sorted(path.rglob("*"))
             if p.is_file() and not p.name.startswith(".") and ".tmp-" not in p.name]
    return hash_strings(parts)


# ---------------------------------------------------------------- retries
NOT_RETRIED = (ValueError, TypeError)  # DataError, UnicodeDecodeError and pydantic's ValidationError among them


def retry_unless_data_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry what a retry can fix (a lost connection, a killed worker, a
    full disk freed meanwhile), never a data or config error -- :class:`kalm.errors.DataError`, and
    ``ValueError``/``TypeError`` in general (the same inputs give the same error, after the retry delay)."""
    exc = getattr(state, "data", None)
    if isinstance(exc, BaseException):
        return not isinstance(exc, NOT_RETRIED)
    try:
        state.result(raise_on_failure=True)
    except NOT_RETRIED:
        return False
    except BaseException:
        return True
    return True


# ---------------------------------------------------------------- artifacts
def artifact_key(*parts: str) -> str:
    """Artifact keys must be lowercase letters, digits and dashes."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class ProgressArtifact:
    """A Prefect progress artifact fed by a kalm ``Progress`` callback (throttled),
    mirrored to a tqdm bar on the terminal."""

    def __init__(self, key: str, description: str, min_interval_s: float = 2.0):
        from prefect.artifacts import create_progress_artifact
        from tqdm.auto import tqdm

        self.description = description
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._last_fraction = 0.0
        try:
            self.artifact_id = create_progress_artifact(progress=0.0, key=artifact_key(key), description=description)
        except Exception:  # outside a run context (plain function call): terminal only
            self.artifact_id = None
        self._bar = tqdm(total=100, desc=description[:40], leave=False, disable=None)

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self._bar.n = round(fraction * 100, 1)
        self._bar.set_postfix_str(message[:60], refresh=True)
        now = time.monotonic()
        if self.artifact_id is None or (now - self._last < self.min_interval_s and fraction < 1.0):
            return
        from prefect.artifacts import update_progress_artifact

        self._last, self._last_fraction = now, fraction
        text = f"{self.description}: {message}" if message else self.description
        try:
            update_progress_artifact(self.artifact_id, progress=fraction * 100, description=text)
        except Exception:  # progress is best effort; the stage's own work must not fail on it
            pass

    def close(self) -> None:
        self(1.0, "done")
        self._bar.close()


def publish_summary(result: StageResult, title: Optional[str] = None, extra_markdown: str = "") -> None:
    """A markdown summary artifact of a stage: counts, metrics, timing, outputs."""
    from prefect.artifacts import create_markdown_artifact

    lines = [f"## {title or result.stage}", "", f"took **{result.seconds:.1f} s**", ""]
    if result.counts:
        lines += ["| count | value |", "|---|---:|", *[f"| {k} | {v} |" for k, v in sorted(result.counts.items())], ""]
    if result.metrics:
        lines += ["| metric | value |", "|---|---:|", *[f"| {k} | {v:.4f} |" for k, v in sorted(result.metrics.items())], ""]
    if result.outputs:
        lines += ["outputs:", *[f"- `{p}`" for p in result.outputs], ""]
    if extra_markdown:
        lines += [extra_markdown]
    create_markdown_artifact(
        markdown="\n".join(lines), key=artifact_key(result.stage, "summary"), description=f"{result.stage} summary"
    )
