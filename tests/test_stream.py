import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.plan import plan_epoch, worker_share
from t2i_data.runner import InProcessRunner
from t2i_data.stream import ShardStream, loader


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


@pytest.mark.parametrize("workers,skip", [(0, 5), (2, 4), (3, 6), (2, 5), (3, 4), (3, 8)])
def test_resume_mid_epoch_at_any_batch_gives_exactly_the_remaining_batches(shards, workers, skip):
    full = run_rank(shards, 0, 1, workers, 4, epoch=2)
    assert run_rank(shards, 0, 1, workers, 4, epoch=2, skip=skip) == full[skip:]


def test_worker_share_plays_the_plan_worker_whose_batch_comes_next():
    assert [worker_share(5, w, 3) for w in range(3)] == [(2, 1), (0, 2), (1, 2)]  # batches 0..4 came from plan workers 0,1,2,0,1
    assert [worker_share(0, w, 2) for w in range(2)] == [(0, 0), (1, 0)]
    assert worker_share(7, 0, 0) == (0, 7)


def test_batches_must_fit_and_a_changed_plan_is_refused_mid_epoch(shards):
    with pytest.raises(T2IError, match="cannot give every one of 8 workers a batch of 64"):
        plan_epoch([203], world=2, workers=4, batch=64, seed=0, epoch=0)
    ds = ShardStream(shards, keys_only, batch_size=4, seed=5, shuffle_buffer=16)
    ds.set_epoch(2)
    state = ds.state_dict(3, num_workers=2)
    assert ShardStream(shards, keys_only, batch_size=4, seed=5, shuffle_buffer=16).load_state_dict(state, 2) == (2, 3, 0)
    with pytest.raises(T2IError, match=r"shuffle_buffer 16 → 256.*start fresh with another out="):
        ShardStream(shards, keys_only, batch_size=4, seed=5).load_state_dict(state, 2, where="out/last.pt")


def _copy(shards, tmp_path):
    import shutil

    shutil.copytree(shards, tmp_path / "train")
    return tmp_path / "train"


@pytest.mark.parametrize("cut_at", ["member", "bytes"])
def test_a_truncated_shard_stops_the_epoch_naming_it(shards, tmp_path, cut_at):
    """Truncated on a member boundary (a well-formed tar without end blocks) it used to give one
    rank 69 batches where 75 were announced: a DDP hang. Now it is one error, from workers too."""
    from t2i_data.tario import member_table

    d = _copy(shards, tmp_path)
    victim = d / "mdmnist-train-000003.tar"
    data = victim.read_bytes()
    names, offs, sizes = member_table(victim, data)
    cut = int(offs[20] + sizes[20] + (-sizes[20] % 512)) if cut_at == "member" else len(data) - 700
    victim.write_bytes(data[:cut])
    ds = ShardStream(d, keys_only, batch_size=4, seed=5, shuffle_buffer=16)
    with pytest.raises(T2IError, match=f"mdmnist-train-000003.tar: {cut} bytes where the manifest says {len(data)}") as e:
        list(loader(ds, 2))
    assert "Traceback" not in str(e.value)


def test_a_same_size_replacement_is_refused_naming_both_hashes(shards, tmp_path):
    import hashlib
    import json

    d = _copy(shards, tmp_path)
    victim = d / "mdmnist-train-000000.tar"
    data = bytearray(victim.read_bytes())
    data[700] ^= 0x01
    victim.write_bytes(bytes(data))
    expected = json.loads((d / "manifest.json").read_text())["shards"][0]["sha256"]
    with pytest.raises(T2IError, match=f"sha256 {hashlib.sha256(bytes(data)).hexdigest()}, the manifest says {expected}"):
        list(ShardStream(d, keys_only, batch_size=4, seed=5, shuffle_buffer=16))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_gone_mid_run_is_counted_as_lost_and_every_batch_still_comes(shards, tmp_path, workers):
    """No raw ReadError from a worker: the shard is named, its samples counted, padding keeps the count."""
    d = _copy(shards, tmp_path)
    ds = ShardStream(d, keys_only, batch_size=4, seed=5, shuffle_buffer=16)
    clean = list(loader(ds, workers))
    (d / "mdmnist-train-000001.tar").unlink()
    batches = list(loader(ds, workers))
    assert len(batches) == len(clean) == ds.batches_per_epoch(workers)
    lost = sum(b["lost"] for b in batches)
    in_plan = sum(1 for b in clean for k in b["key"] if 29 <= int(k.rsplit("-", 1)[1]) < 58)  # shard 1's planned samples
    assert lost == in_plan > 0
    assert set().union(*(b["lost_shards"] for b in batches)) == {"mdmnist-train-000001.tar"}
    kept = [k for b in batches for k, v in zip(b["key"], b["valid"]) if v]
    assert sorted(kept) == sorted(k for b in clean for k in b["key"] if not 29 <= int(k.rsplit("-", 1)[1]) < 58)
    assert all(k == "" for b in batches for k, v in zip(b["key"], b["valid"]) if not v)  # padding entries


def test_decode_and_augment_applies_the_online_random_part(tmp_path):
    from t2i_data.preprocess import PreprocessConfig, preprocess
    from t2i_data.regimes import Regime
    from t2i_data.stream import decode_and_augment

    from fixtures_sources import make_coco

    preprocess(PreprocessConfig("coco", str(make_coco(tmp_path / "c")), regime="ae", size=16), tmp_path / "i", InProcessRunner())
    ds = ShardStream(tmp_path / "i" / "val2017", decode_and_augment(Regime("ae", 16), seed=0), batch_size=2, shuffle_buffer=1)
    by_epoch = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        by_epoch.append({k: img for b in ds for k, img in zip(b["key"], b["image"])})
    e0, e1 = by_epoch
    assert set(e0) == set(e1) and len(e0) == 4  # 4 samples, 2 batches of 2: all of them, once
    assert all(img.shape == (3, 16, 16) and img.dtype == torch.uint8 for img in e0.values())
    assert any(not torch.equal(e0[k], e1[k]) for k in e0)  # another epoch, other crops / angles / flips
    # the pixels are the augmented view's, exactly: the float32 [0, 1] images of before, times 255
    from t2i_data.augment import stored_image
    from t2i_data.tario import iter_samples

    regime = Regime("ae", 16)
    for shard in sorted((tmp_path / "i" / "val2017").glob("*.tar")):
        for sample in iter_samples(shard):
            im = stored_image(sample)
            view = np.array(regime.apply_view(im, regime.draw(0, sample["__key__"], 1, im.size, online=True)))
            old = torch.from_numpy(view).permute(2, 0, 1).float().div_(255)
            assert torch.equal(e1[sample["__key__"]], torch.from_numpy(view).permute(2, 0, 1))
            assert torch.equal(e1[sample["__key__"]].float().div_(255), old)


def test_md_mnist_batches_are_the_stored_pixels_as_uint8(shards):
    from t2i_data.pngio import decode_image
    from t2i_data.stream import decode_and_augment
    from t2i_data.tario import iter_samples

    stored = {s["__key__"]: decode_image(s["png"]) for p in sorted(shards.glob("*.tar")) for s in iter_samples(p)}
    ds = ShardStream(shards, decode_and_augment(None, 0), batch_size=8, seed=5, shuffle_buffer=16)
    batch = next(iter(loader(ds, 0)))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 3, 128, 128) and batch["image"].is_contiguous()
    for k, img in zip(batch["key"], batch["image"]):
        assert np.array_equal(img.permute(1, 2, 0).numpy(), stored[k])


def keys_and_pid(sample, epoch):
    import os

    return {"key": sample["__key__"], "pid": os.getpid()}


# (epoch, batches already consumed, batches this run takes before it stops: None = all)
EPOCHS = [(0, 0, None), (1, 0, 3), (1, 3, None), (2, 5, None), (3, 0, 2), (4, 0, None)]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_loader_keeps_its_workers_and_gives_the_batches_of_a_new_dataloader_per_epoch(shards, workers):
    """The trainers' pattern (set_epoch, then loader, every epoch; a break mid-epoch; a resume at
    a batch) on one stream with persistent workers gives, batch for batch, what a new stream and
    a new DataLoader per epoch (the workers forked again each time) gave."""
    from t2i_data.stream import decode_and_augment

    def reference(epoch, skip, decode):
        ds = ShardStream(shards, decode, batch_size=4, seed=5, shuffle_buffer=16)
        ds.set_epoch(epoch, skip, workers)
        return list(DataLoader(ds, batch_size=None, num_workers=workers))

    ds = ShardStream(shards, keys_and_pid, batch_size=4, seed=5, shuffle_buffer=16)
    pids = set()
    for epoch, skip, take in EPOCHS:
        ds.set_epoch(epoch, skip, workers)
        got = []
        for b in loader(ds, workers):
            got.append(b)
            if len(got) == take:
                break  # as a trainer does when its steps run out mid-epoch
        want = reference(epoch, skip, keys_only)[:take]
        assert [b["key"] for b in got] == [b["key"] for b in want] and len(got) == (take or ds.batches_per_epoch(workers) - skip)
        pids |= {p for b in got for p in b["pid"]}
    assert len(pids) == max(workers, 1)  # the same worker processes served every epoch (0 workers: this process)
    # the bytes too, on decoded images
    ds = ShardStream(shards, decode_and_augment(None, 0), batch_size=4, seed=5, shuffle_buffer=16)
    for epoch, skip in [(1, 12)]:  # a persistent worker's second epoch, resumed
        ds.set_epoch(0, 20, workers)
        assert len(list(loader(ds, workers))) == ds.batches_per_epoch(workers) - 20
        ds.set_epoch(epoch, skip, workers)
        got, want = list(loader(ds, workers)), reference(epoch, skip, decode_and_augment(None, 0))
        assert [b["key"] for b in got] == [b["key"] for b in want]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, want))


def test_a_worker_error_in_a_later_epoch_stops_with_its_message_and_the_next_call_starts_fresh_workers(shards, tmp_path):
    d = _copy(shards, tmp_path)
    ds = ShardStream(d, keys_and_pid, batch_size=4, seed=5, shuffle_buffer=16)
    first = {p for b in loader(ds, 2) for p in b["pid"]}
    victim = d / "mdmnist-train-000002.tar"
    good = victim.read_bytes()
    victim.write_bytes(good[:-700])
    ds.set_epoch(1, 0, 2)
    with pytest.raises(T2IError, match=f"mdmnist-train-000002.tar: {len(good) - 700} bytes where the manifest says {len(good)}"):
        list(loader(ds, 2))
    victim.write_bytes(good)
    ds.set_epoch(2, 0, 2)
    again = list(loader(ds, 2))
    assert len(again) == ds.batches_per_epoch(2)
    assert not first & {p for b in again for p in b["pid"]}  # the failed DataLoader's workers were let go


EXIT = """
import sys, time
from t2i_data.stream import ShardStream, loader
ds = ShardStream(sys.argv[1], lambda s, e: {"key": s["__key__"]}, batch_size=4, seed=5, shuffle_buffer=16)
for epoch in range(3):
    ds.set_epoch(epoch, 0, 2)
    n = sum(1 for _ in loader(ds, 2))
    if epoch == 1:
        for b in loader(ds, 2):
            break  # an abandoned iterator, its workers still busy
print(n, flush=True)
"""


def test_a_process_with_persistent_workers_exits_when_it_is_done(shards):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", EXIT, str(shards)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == [str(203 // 2 // 4 * 2)], proc.stderr
    assert "Traceback" not in proc.stderr and "leaked" not in proc.stderr


def test_close_loaders_ends_the_persistent_workers_and_a_later_call_starts_new_ones(shards):
    """Trainers call close_loaders at the end of a run: the worker processes exit then, not when
    the garbage collector reaches the stream (the DataLoader and the stream refer to each other)."""
    import os

    from t2i_data.stream import close_loaders

    ds = ShardStream(shards, keys_and_pid, batch_size=4, seed=5, shuffle_buffer=16)
    ds.set_epoch(0, 0, 2)
    first = {p for b in loader(ds, 2) for p in b["pid"]}
    assert len(first) == 2 and all(os.path.exists(f"/proc/{p}") for p in first)
    close_loaders(ds)
    assert "_loaders" not in ds.__dict__ and not any(os.path.exists(f"/proc/{p}") for p in first)
    ds.set_epoch(1, 0, 2)
    again = {p for b in loader(ds, 2) for p in b["pid"]}
    assert len(again) == 2 and not again & first
    close_loaders(ds)
    close_loaders(ds)  # nothing left: a no-op


def test_close_all_loaders_ends_every_streams_workers_and_an_error_ends_the_failed_loaders_at_once(shards, tmp_path):
    """``close_all_loaders`` (at interpreter exit, and after each test here) reaches streams the
    caller never closed; a failed epoch's workers are shut down when the error is raised."""
    import os

    from t2i_data import stream

    streams = [ShardStream(shards, keys_and_pid, batch_size=4, seed=s, shuffle_buffer=16) for s in (1, 2)]
    pids = set()
    for ds in streams:
        ds.set_epoch(0, 0, 2)
        pids |= {p for b in loader(ds, 2) for p in b["pid"]}
    assert len(pids) == 4 and all(os.path.exists(f"/proc/{p}") for p in pids) and set(streams) <= set(stream._WITH_LOADERS)
    stream.close_all_loaders()
    assert not any(os.path.exists(f"/proc/{p}") for p in pids) and not list(stream._WITH_LOADERS)
    d = _copy(shards, tmp_path)
    (d / "mdmnist-train-000001.tar").write_bytes((d / "mdmnist-train-000001.tar").read_bytes()[:-700])
    ds = ShardStream(d, keys_and_pid, batch_size=4, seed=5, shuffle_buffer=16)
    with pytest.raises(T2IError, match="mdmnist-train-000001.tar"):
        list(loader(ds, 2))
    assert ds.__dict__.get("_loaders") == {}  # dropped, and its workers were shut down on the way out
