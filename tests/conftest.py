import os
from pathlib import Path

import pytest

from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def close_persistent_loader_workers():
    """After each test, shut down the loader workers a test's streams kept (``stream.loader``'s
    persistent workers), as trainers do at their end: left to the garbage collector, each stream
    would stall a later test for 5 s per worker (``stream.close_all_loaders``)."""
    yield
    from t2i_data.stream import close_all_loaders

    close_all_loaders()


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


MD_TOKENS_N = 103


@pytest.fixture(scope="session")
def md_tokens(tmp_path_factory):
    """A real chain: MD-MNIST (103 train samples in 7 uneven shards) → text tokens (L = 12) and
    image tokens (one view: MD-MNIST has no regime) from a tiny random dVAE (V = 16, 32×32 grid)."""
    import torch

    from t2i_data.text import load_pretrained
    from t2i_data.tokenize import TokenizeConfig, tokenize
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode

    root = tmp_path_factory.mktemp("tok")
    build(MDMNISTConfig(seed=0, train=MD_TOKENS_N, test=0, shard_size=16), root / "md", InProcessRunner())
    load_pretrained("mdmnist", None).save(root / "tk")
    tokenize(root / "tk", root / "md" / "train", root / "text", TokenizeConfig(length=12), InProcessRunner())
    torch.manual_seed(0)
    save_autoencoder(root / "ae.pt", build_autoencoder("dvae_tiny", image_size=128, hidden=8, vocab_size=16))
    encode(root / "ae.pt", root / "md" / "train", root / "img", EncodeConfig(), InProcessRunner())
    return root


if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n auto: one torch thread per worker, so the workers do not oversubscribe the cores
    import torch

    torch.set_num_threads(1)
