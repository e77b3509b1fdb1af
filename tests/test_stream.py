import pytest
import torch
from torch.utils.data import DataLoader

from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.stream import ShardStream, plan_epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("md")
    build(MDMNISTConfig(seed=4, train=203, test=0, shard_size=29), out, InProcessRunner())  # 7 shards, uneven
    return out / "train"


def keys_only(sample, epoch):
    return {"key": sample["__key__"]}


def run_rank(shards, rank, world, workers, batch, epoch=0, skip=0, seed=5):
    ds = ShardStream(shards, keys_only, batch_size=batch, seed=seed, shuffle_buffer=16, rank=rank, world_size=world)
    ds.set_epoch(epoch, skip, workers)
    return [b["key"] for b in DataLoader(ds, batch_size=None, num_workers=workers)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_exactly_once_and_equal_batch_counts(shards, world, workers):
    batch = 4
    per_rank = [run_rank(shards, r, world, workers, batch) for r in range(world)]
    g = world * max(workers, 1)
    expected_batches = (203 // g // batch) * max(workers, 1)
    assert [len(b) for b in per_rank] == [expected_batches] * world  # no DDP hang
    seen = [k for r in per_rank for b in r for k in b]
    assert len(seen) == len(set(seen)) == g * (203 // g // batch) * batch  # never twice; fewer than g·batch left over
    assert all(len(b) == batch for r in per_rank for b in r)


def test_epochs_differ_and_seeds_reproduce(shards):
    a = run_rank(shards, 0, 1, 2, 8, epoch=0)
    assert a == run_rank(shards, 0, 1, 2, 8, epoch=0)
    assert a != run_rank(shards, 0, 1, 2, 8, epoch=1)
    assert a != run_rank(shards, 0, 1, 2, 8, epoch=0, seed=6)


@pytest.mark.parametrize("workers,skip", [(0, 5), (2, 4), (3, 6)])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(shards, workers, skip):
    full = run_rank(shards, 0, 1, workers, 4, epoch=2)
    assert run_rank(shards, 0, 1, workers, 4, epoch=2, skip=skip) == full[skip:]


def test_resume_must_be_on_a_worker_boundary_and_batches_must_fit(shards):
    ds = ShardStream(shards, keys_only, batch_size=4)
    with pytest.raises(T2IError, match="not a multiple of the 3 dataloader workers"):
        ds.set_epoch(0, 4, num_workers=3)
    with pytest.raises(T2IError, match="cannot give every one of 8 workers a batch of 64"):
        plan_epoch([203], world=2, workers=4, batch=64, seed=0, epoch=0)


def test_image_decoder_applies_the_online_random_part(tmp_path):
    from t2i_data.preprocess import PreprocessConfig, preprocess
    from t2i_data.regimes import Regime
    from t2i_data.stream import image_decoder

    from fixtures_sources import make_coco

    preprocess(PreprocessConfig("coco", str(make_coco(tmp_path / "c")), regime="ae", size=16), tmp_path / "i", InProcessRunner())
    ds = ShardStream(tmp_path / "i" / "val2017", image_decoder(Regime("ae", 16), seed=0), batch_size=2, shuffle_buffer=1)
    by_epoch = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        by_epoch.append({k: img for b in ds for k, img in zip(b["key"], b["image"])})
    e0, e1 = by_epoch
    assert set(e0) == set(e1) and len(e0) == 4  # 4 samples, 2 batches of 2: all of them, once
    assert all(img.shape == (3, 16, 16) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1 for img in e0.values())
    assert any(not torch.equal(e0[k], e1[k]) for k in e0)  # another epoch, other crops / angles / flips
