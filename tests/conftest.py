import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import my_utils as mu  # noqa: E402


@pytest.fixture(scope="session")
def arrays():
    """The real Fashion-MNIST (fetched by `make data` before the tests run)."""
    return mu.load_arrays()


@pytest.fixture(scope="session")
def raw_dir():
    return mu.fetch_fashion_mnist()
