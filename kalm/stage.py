"""What every stage returns: the files it wrote and what it counted.

Each stage is one function of the same shape,
``stage(cfg, inputs: list[Path], out: Path, ...) -> StageResult``.
The orchestration layer (tasks/) persists this object as the Prefect result and records
it in the run manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

# The recipe's stages, in order (flows/retrain.py runs them; --only / --from name them).
STAGES = ("generate", "ingest", "filter", "train", "evaluate", "report")

# A progress callback: fraction done in [0, 1] and a short message.
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str = "") -> None:  # noqa: ARG001 - same shape as Progress
    """Progress sink used when the caller does not watch progress."""


class StageResult(BaseModel):
    """Outputs of one stage run.

    ``outputs`` are paths (files or folders) inside the stage's output folder;
    ``hashes`` maps each output's path (relative to the stage folder) to its content hash,
    so downstream cache keys depend on content, never on where or when it was written.
    """

    stage: str
    out_dir: Path
    outputs: list[Path] = Field(default_factory=list)
    hashes: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = Field(default_factory=dict)

    def content_hash(self) -> str:
        """One hash for all outputs (order-independent)."""
        from kalm.store import hash_strings

        return hash_strings(f"{k}={v}" for k, v in sorted(self.hashes.items()))

    def relocated(self, new_out_dir: Path) -> "StageResult":
        """The same result with its paths moved under ``new_out_dir`` (used after linking)."""
        outputs = [new_out_dir / p.relative_to(self.out_dir) for p in self.outputs]
        return self.model_copy(update={"out_dir": new_out_dir, "outputs": outputs})

    def output(self, name: str) -> Path:
        """The output whose file or folder name is ``name``."""
        for p in self.outputs:
            if p.name == name:
                return p
        raise KeyError(f"stage {self.stage!r} has no output named {name!r}; it has {[p.name for p in self.outputs]}")

    def missing_outputs(self) -> list[Path]:
        """Outputs that are not there: deleted files and folders, and shards deleted from a shard folder
        (``kalm.schema.missing_shards``). A cached result with any cannot be served; a stage reading them
        cannot run."""
        from kalm.schema import missing_shards

        gone = [p for p in self.outputs if not Path(p).exists()]
        return gone + [s for p in self.outputs if p not in gone for s in missing_shards(p)]

    def parquet_files(self) -> list[Path]:
        return [p for p in self.outputs if p.suffix == ".parquet"]

    def example_files(self) -> list[Path]:
        """The Parquet files (or shard folders) of examples a later stage reads: every Parquet output
        except rejected rows (a ``dropped.parquet`` file, or the shards of a ``dropped.parquet/`` folder)."""
        return [p for p in self.parquet_files() if "dropped.parquet" not in (p.name, p.parent.name)]
