"""Shared fixtures: small databases whose block shape makes even tiny tensors span blocks."""

from pathlib import Path

import numpy as np
import pytest

import weightdb
from weightdb.storage.settings import Settings

SMALL = Settings(block_rows=16, block_cols=8, page_size=8192)


@pytest.fixture
def db(tmp_path: Path):
    with weightdb.connect(tmp_path / "db", settings=SMALL) as database:
        yield database


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
