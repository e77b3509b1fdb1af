import os
from pathlib import Path

import pytest

from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner

ROOT = Path(__file__).resolve().parents[1]


def realdata_dir() -> Path:
    return Path(os.environ.get("T2I_REALDATA", ROOT.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    path = realdata_dir()
    if not path.is_dir():
        pytest.skip(f"real data samples not found at {path} (set T2I_REALDATA)")
    return path


@pytest.fixture(scope="session")
def mnist_idx(realdata) -> Path:
    path = realdata / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST IDX files not found in {path}")
    return path


@pytest.fixture(scope="session")
def built20k(tmp_path_factory):
    """20,000 train + 2,000 test MD-MNIST samples from the embedded source, built in-process."""
    out = tmp_path_factory.mktemp("md20k")
    cfg = MDMNISTConfig(seed=3, train=20_000, test=2_000, shard_size=2_500)
    manifests = build(cfg, out, InProcessRunner())
    return cfg, out, manifests


import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for fixtures_sources
