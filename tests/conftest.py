"""Shared fixtures. Tests that read ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Test tensors are tiny: one thread avoids oversubscription when tests start subprocesses
# (DDP, concurrent writers), which on a 2-core machine cost up to 20x.
os.environ.setdefault("FPT_THREADS", "1")
torch.set_num_threads(1)


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test when that folder is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def fake(monkeypatch):
    """The small FakeExtractor of test_embed in place of the real one, for in-process CLI calls."""
    import fpt.cli.attribution as cli_attr
    from test_embed import FakeExtractor

    ex = FakeExtractor()
    monkeypatch.setattr(cli_attr, "load_extractor", lambda path, device: ex)
    return ex
