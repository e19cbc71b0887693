"""Error types shared by every stage.

A :class:`DataError` is a fault in the inputs (a malformed file, a missing column, a deleted
stage output): running the same step again cannot fix it, so the orchestration layer never
retries it (``tasks.common.retry_unless_data_error``) and shows its message as it is.
"""

from __future__ import annotations

import os
import shlex


class DataError(ValueError):
    """A fault in the inputs that a retry cannot fix; the message names the file, row, field and fix."""


class MissingInputError(DataError, FileNotFoundError):
    """A file a stage reads is gone (e.g. an earlier stage's output deleted from a run folder)."""


def not_utf8_message(path: object, line: int, column: int, offset: int, bad: bytes, reason: str) -> str:
    """The one message for a file that is not UTF-8 (ingest and evaluation readers alike).

    ``line``/``column`` are 1-based, ``offset`` is the byte offset in the file of the first bad byte,
    ``bad`` the undecodable bytes and ``reason`` :class:`UnicodeDecodeError`'s. The fix offered is a
    whole-file ``iconv`` unless the bytes before ``offset`` already hold UTF-8 beyond ASCII: such a file
    mixes encodings, and converting all of it would garble the lines that were right."""
    shown = " ".join(f"0x{b:02x}" for b in bad)
    head = (f"{path} line {line}, column {column} (byte offset {offset}): byte {shown} is not UTF-8 ({reason}). ")
    if _utf8_beyond_ascii_before(path, offset):
        return head + ("Earlier lines hold UTF-8 text beyond ASCII, so the file mixes encodings (e.g. rows appended "
                       "from another export): converting the whole file would garble those lines. Fix: re-export it "
                       f"as UTF-8 from its source, or correct line {line} (and any later such line) by hand")
    # An absolute, quoted path: the command pastes as is from any folder (paths in configs are often relative
    # to where the run started, not to where the user reads the error).
    full = os.path.abspath(str(path))
    src, tmp = shlex.quote(full), shlex.quote(f"{full}.utf8")
    return head + ("The file is in another encoding (often Latin-1 / Windows-1252 from a spreadsheet). Fix: re-save "
                   f"it as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {src} > {tmp} && mv {tmp} {src}`")


def _utf8_beyond_ascii_before(path: object, offset: int, block: int = 1 << 20) -> bool:
    """Whether the file's first ``offset`` bytes (valid UTF-8: the first bad byte is at ``offset``) hold
    any non-ASCII byte. Read in blocks, only on this error path; False when the file cannot be read."""
    try:
        with open(str(path), "rb") as f:
            left = offset
            while left > 0:
                data = f.read(min(block, left))
                if not data:
                    return False
                if not data.isascii():
                    return True
                left -= len(data)
    except OSError:
        return False
    return False
