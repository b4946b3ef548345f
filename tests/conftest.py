"""Shared test setup: nothing reaches the network; tests/ is importable for the fakes module."""

import os
import sys
from pathlib import Path

import pytest

# Must be set before open_clip / huggingface_hub are imported anywhere, or a missing-weights lookup
# retries the network for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One OpenMP thread per process, set before torch is imported (subprocesses inherit it): the tests
# run tiny models, and on a shared 2-core machine torch's default of one thread per core makes a
# small CNN step up to 60x slower (its threads spin while other processes hold the cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# As `clipdebias.cli.main` does: spinning OpenMP threads slow torch down badly on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))


TINY_CLIP = Path(__file__).parent / "assets" / "tiny-clip.json"


@pytest.fixture
def tiny_clip() -> str:
    """An open_clip JSON config of a tiny CLIP (embed 32, 2+2 layers, 32 px): load with --pretrained none."""
    return str(TINY_CLIP)


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """A fresh clipdebias cache for one test, also set as $CLIPDEBIAS_CACHE."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CLIPDEBIAS_CACHE", str(root))
    return root
