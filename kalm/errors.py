"""Error types shared by every stage.

A :class:`DataError` is a fault in the inputs (a malformed file, a missing column, a deleted
stage output): running the same step again cannot fix it, so the orchestration layer never
retries it (``tasks.common.retry_unless_data_error``) and shows its message as it is.
"""

from __future__ import annotations

import shlex


class DataError(ValueError):
    """A fault in the inputs that a retry cannot fix; the message names the file, row, field and fix."""


class MissingInputError(DataError, FileNotFoundError):
    """A file a stage reads is gone (e.g. an earlier stage's output deleted from a run folder)."""


def not_utf8_message(path: object, line: int, column: int, offset: int, bad: bytes, reason: str) -> str:
    """The one message for a file that is not UTF-8 (ingest and evaluation readers alike).

    ``line``/``column`` are 1-based, ``offset`` is the byte offset in the file of the first bad byte,
    ``bad`` the undecodable bytes and ``reason`` :class:`UnicodeDecodeError`'s."""
    shown = " ".join(f"0x{b:02x}" for b in bad)
    src, tmp = shlex.quote(str(path)), shlex.quote(f"{path}.utf8")  # a command that pastes as is
    return (f"{path} line {line}, column {column} (byte offset {offset}): byte {shown} is not UTF-8 ({reason}). "
            "The file is in another encoding (often Latin-1 / Windows-1252 from a spreadsheet). Fix: re-save it "
            f"as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {src} > {tmp} && mv {tmp} {src}`")
