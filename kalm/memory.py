"""Peak resident memory of this process, for memory tests and benchmarks.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is not this program's peak on Linux: the kernel keeps
it across ``execve``, folding in the high-water mark of the address space the process had before
the exec, and a child started by ``subprocess`` (fork or vfork, then exec) reports its parent's peak
(a test process that already holds 3 GB of models makes every child "use" 3 GB). ``VmHWM`` in
``/proc/self/status`` is the high-water mark of the current address space only, which exec makes
fresh.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident set size of the current program since its exec, in MiB (``VmHWM``; where
    ``/proc`` is absent, ``ru_maxrss``, which may include the parent's peak as described above)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_parts_mib() -> dict[str, float]:
    """The current resident set split as the kernel counts it, in MiB: ``anon`` (heap, arrays: what the
    process needs), ``file`` (pages of memory-mapped files, which the kernel can drop and read again)
    and ``shmem``; from ``RssAnon``/``RssFile``/``RssShmem`` in ``/proc/self/status`` (empty off Linux)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return {}
    names = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    return {names[p[0]]: int(p[1]) / 1024 for p in (line.split() for line in status.read_text().splitlines())
            if p and p[0] in names}
