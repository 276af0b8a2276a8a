"""Shared test fixtures: where ../shared is, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VARIFOCAL_SHARED", REPO.parent / "shared"))

#: torch threads of every test (a test or fixture that changes it is undone after each test)
SUITE_THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(SUITE_THREADS)
# The CLI's --precision auto means bf16 on CPUs with AMX: pin fp32 so that every test, and every
# CLI subprocess it starts, computes the same numbers on every CI host (tests/utils/test_precision.py
# unsets it to test the selection itself).
os.environ["VARIFOCAL_PRECISION"] = "fp32"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Every test starts with the suite's thread count: a test that changes it (a benchmark with
    --threads) must not change the summation order, and so the last digits, of later tests."""
    if torch.get_num_threads() != SUITE_THREADS:  # changed by a module or session fixture
        torch.set_num_threads(SUITE_THREADS)
    yield
    if torch.get_num_threads() != SUITE_THREADS:
        torch.set_num_threads(SUITE_THREADS)


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (tests that read ../shared skip without it)")
    return path
