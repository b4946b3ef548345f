"""Shared test setup: nothing reaches the network; tests/ is importable for the fakes module."""

import os
import sys

# Must be set before open_clip / huggingface_hub are imported anywhere, or a missing-weights lookup
# retries the network for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# As `clipdebias.cli.main` does: spinning OpenMP threads slow torch down badly on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))
