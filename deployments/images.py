"""What the Docker images install, checked the way pip would install it, without a Docker engine.

Each image installs fully pinned lock files (``requirements.lock`` for the CPU image,
``docker/requirements-gpu.lock`` for the GPU image). :func:`dry_run` runs pip's own resolver
(``pip install --dry-run --report``) on exactly the arguments of a Dockerfile's ``pip install``
lines, for the image's interpreter and platform (CPython 3.11, manylinux x86_64 up to the
image's glibc, wheels only), in a throwaway virtual environment, so a lock that cannot be
installed fails here with pip's ``ResolutionImpossible`` instead of in ``docker build``.

The GPU lock is generated, never edited by hand::

    .venv/bin/python -m deployments.images lock-gpu

It resolves the project's dependencies with the ``[gpu]`` and ``[cluster]`` extras (not
``faiss-cpu``: both faiss wheels install the same ``faiss`` module), holding every package that
``requirements.lock`` pins to its CPU version except :data:`GPU_REPLACED`, whose CPU pins a GPU
stack cannot use.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlparse

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
GPU_LOCK = ROOT / "docker" / "requirements-gpu.lock"
CPU_LOCK = ROOT / "requirements.lock"
# What the GPU image's own stack pins differently from requirements.lock, and why.
GPU_PINS = {"torch": "2.14.0", "vllm": "0.33.0", "faiss-gpu": "1.15.1"}
GPU_REPLACED = {
    "torch": "the CPU build 2.13.0+cpu; vllm 0.33.0 needs torch==2.14.0 (CUDA 13 wheels)",
    "faiss-cpu": "faiss-gpu installs the same `faiss` module; both installed, one shadows the other",
    "triton": "torch 2.14.0 needs triton~=3.8.0 (the CPU lock's 3.9.0 came with xgrammar, unconstrained)",
    "apache-tvm-ffi": "vllm 0.33.0 pins apache-tvm-ffi==0.1.11",
}
GPU_EXTRAS = ("gpu", "cluster")


@dataclass(frozen=True)
class Image:
    """A Docker image's interpreter and platform: what pip resolves for inside it."""

    dockerfile: Path
    python: str  # major.minor
    glibc: tuple[int, int]  # of the base image: manylinux_2_{minor} wheels up to it install

    def platforms(self) -> list[str]:
        major, minor = self.glibc
        return ([f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)]
                + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])


IMAGES = {
    # python:3.11.7-slim-bookworm: Debian 12, glibc 2.36
    "cpu": Image(ROOT / "docker" / "Dockerfile.cpu", "3.11", (2, 36)),
    # nvidia/cuda:12.9.1-cudnn-runtime-ubuntu22.04 with deadsnakes' python3.11: glibc 2.35
    "gpu": Image(ROOT / "docker" / "Dockerfile.gpu", "3.11", (2, 35)),
}


def pip_install_commands(dockerfile: Path) -> list[list[str]]:
    """The argument lists (after ``pip install``) of every ``pip install`` in the Dockerfile's RUN lines."""
    text = dockerfile.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if not line.strip().startswith("RUN"):
            continue
        for part in re.split(r"&&|;|\|\|", line.strip()[3:]):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    commands.append(words[i + 2:])
                    break
    return commands


def requirement_files(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-r", "--requirement")]


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a lock file (every line ``name==version``; comments allowed).

    Raises:
        ValueError: a line that is not an exact pin (the file, 1-based line and the fix).
    """
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"{path.name}, line {n}: {line!r} is not pinned with ==; a lock pins exact versions")
        out[canonicalize_name(req.name)] = specs[0].version
    return out


def _reachable(url: str) -> bool:
    host = urlparse(url).hostname
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def unreachable_indexes(args: list[str]) -> list[str]:
    """``--index-url``/``--extra-index-url`` values whose host does not resolve from here."""
    urls = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--index-url", "-i", "--extra-index-url")]
    return [u for u in urls if u.startswith("http") and not _reachable(u)]


def dry_run(args: list[str], image: Image, cwd: Path, report: Path, venv: Optional[Path] = None,
            drop_indexes: Iterable[str] = ()) -> subprocess.CompletedProcess:
    """``pip install --dry-run --report`` of ``args`` (one Dockerfile ``pip install``, same arguments) for
    ``image``'s interpreter and platform, wheels only, ignoring what any environment has installed.

    pip runs under the interpreter of ``venv`` (a throwaway virtual environment created here when
    not given) through ``pip --python``. ``drop_indexes`` are index URLs removed from ``args`` (one
    that cannot be reached from here: pip would retry it for every package).
    """
    args = list(args)
    for url in drop_indexes:
        i = args.index(url)
        del args[i - 1:i + 1]
    with tempfile.TemporaryDirectory(prefix="kalm-pip-") as tmp:
        if venv is None:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        platform = [a for p in image.platforms() for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--dry-run",
               "--ignore-installed", "--report", str(report), "--python-version", image.python, *platform,
               "--only-binary=:all:", "--use-feature=fast-deps", "--progress-bar=off", *args]
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def resolved(report: Path) -> dict[str, str]:
    """``name -> version`` of what a ``pip --report`` would install."""
    data = json.loads(report.read_text())
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def project_requirements(extras: Iterable[str] = ()) -> list[Requirement]:
    """The project's dependencies plus those of ``extras`` (self-references expanded), from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out, todo, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in optional[extra]:
            req = Requirement(r)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


def lock_gpu(out: Path = GPU_LOCK) -> dict[str, str]:
    """Resolve the GPU image's set (see the module docstring) and write it to ``out`` as a lock.

    Raises:
        RuntimeError: pip cannot resolve it (pip's message, with the conflict it names).
    """
    cpu = pins(CPU_LOCK)
    held = {n: v for n, v in cpu.items() if n not in GPU_REPLACED}
    with tempfile.TemporaryDirectory(prefix="kalm-lock-") as tmp:
        reqs = Path(tmp) / "requirements.in"
        reqs.write_text("\n".join([*(str(r) for r in project_requirements(GPU_EXTRAS)),
                                   *(f"{n}=={v}" for n, v in GPU_PINS.items())]) + "\n")
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(held.items())))
        report = Path(tmp) / "report.json"
        proc = dry_run(["-r", str(reqs), "-c", str(constraints)], IMAGES["gpu"], ROOT, report)
        if proc.returncode != 0:
            raise RuntimeError(f"the GPU set does not resolve:\n{proc.stderr[-4000:]}")
        got = resolved(report)
    got.pop(canonicalize_name("kalm-pipeline"), None)
    header = ["# The GPU image's packages (docker/Dockerfile.gpu): generated by", "#   .venv/bin/python -m "
              "deployments.images lock-gpu", "# from pyproject.toml's dependencies + [gpu] + [cluster], holding "
              "requirements.lock's", "# versions except: " + ", ".join(sorted(GPU_REPLACED)) + " (see "
              "deployments/images.py). Do not edit by hand."]
    out.write_text("\n".join(header + [f"{n}=={v}" for n, v in sorted(got.items())]) + "\n")
    return got


def main(argv: list[str]) -> int:
    if argv[:1] == ["lock-gpu"]:
        got = lock_gpu()
        print(f"wrote {GPU_LOCK.relative_to(ROOT)}: {len(got)} packages; " + ", ".join(
            f"{n} {got.get(n)}" for n in ("torch", "vllm", "faiss-gpu", "prefect", "transformers", "triton",
                                          "apache-tvm-ffi")))
        return 0
    print("usage: python -m deployments.images lock-gpu", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
