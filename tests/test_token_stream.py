import logging

import pytest
import torch
from torch.utils.data import DataLoader

from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.token_stream import TokenStream
from t2i_data.tokenize import TokenizeConfig, tokenize

from conftest import MD_TOKENS_N as N


@pytest.fixture(scope="module")
def tokens(md_tokens):
    return md_tokens


def collect(tokens, rank, world, workers, batch, epoch=0, skip=0, **kw):
    ds = TokenStream(tokens / "img", tokens / "text", batch_size=batch, seed=3, shuffle_buffer=8, rank=rank, world_size=world, **kw)
    ds.set_epoch(epoch, skip, workers)
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_every_sample_exactly_once_and_equal_batch_counts(tokens, world, workers):
    per_rank = [collect(tokens, r, world, workers, 5) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # the same number of steps on every rank
    keys = [k for r in per_rank for b in r for k, v in zip(b["keys"], b["valid"]) if v]
    assert len(keys) == len(set(keys)) == N  # nothing twice, nothing dropped
    for r in per_rank:
        for b in r:
            assert b["text"].shape == (5, 12) and b["image"].shape == (5, 1024) and b["text"].dtype == torch.int64
            assert (b["text"][~b["valid"]] == 20).all() and (b["image"][~b["valid"]] == 0).all()  # padding entries


def test_text_rows_are_the_captions_and_epochs_reorder(tokens):
    import json

    from t2i_data.tario import iter_samples

    truth = {s["__key__"]: json.loads(s["json"])["symbol_ids"] for p in sorted((tokens / "md" / "train").glob("*.tar")) for s in iter_samples(p)}
    e0, e1 = collect(tokens, 0, 1, 0, 8), collect(tokens, 0, 1, 0, 8, epoch=1)
    for b in e0:
        for k, t, v in zip(b["keys"], b["text"], b["valid"]):
            if v:
                assert t.tolist() == truth[k]
    assert [b["keys"] for b in e0] != [b["keys"] for b in e1]
    assert [b["keys"] for b in e0] == [b["keys"] for b in collect(tokens, 0, 1, 0, 8)]


@pytest.mark.parametrize("workers,skip", [(0, 3), (2, 4)])
def test_resume_gives_exactly_the_remaining_batches(tokens, workers, skip):
    full = collect(tokens, 0, 1, workers, 4, epoch=1)
    rest = collect(tokens, 0, 1, workers, 4, epoch=1, skip=skip)
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[skip:]]
    ds = TokenStream(tokens / "img", tokens / "text", batch_size=4, seed=3)
    with pytest.raises(T2IError, match="seed 9"):
        ds.load_state_dict({"epoch": 1, "batches_done": 2, "seed": 9})


def test_a_corrupt_shard_is_reported_counted_and_the_epoch_goes_on(tokens, tmp_path, caplog):
    import shutil

    img = tmp_path / "img"
    shutil.copytree(tokens / "img", img)
    victim = img / "mdmnist-train-000002.tar"
    victim.write_bytes(victim.read_bytes()[:3000])
    with caplog.at_level(logging.WARNING):
        ds = TokenStream(img, tokens / "text", batch_size=5, seed=3)
        batches = list(ds)
    assert "mdmnist-train-000002.tar: unreadable" in caplog.text
    assert sum(b["lost"] for b in batches) == 16
    assert sum(int(b["valid"].sum()) for b in batches) == N - 16
    assert len(batches) == len(collect(tokens, 0, 1, 0, 5))  # same number of steps as a clean epoch


def test_refuses_misaligned_sets_and_other_fingerprints(tokens, tmp_path):
    build(MDMNISTConfig(seed=1, train=20, test=0, shard_size=16), tmp_path / "md2", InProcessRunner())
    tokenize(tokens / "tk", tmp_path / "md2" / "train", tmp_path / "text2", TokenizeConfig(length=12), InProcessRunner())
    with pytest.raises(T2IError, match="derive both from the same image set"):
        TokenStream(tokens / "img", tmp_path / "text2", batch_size=4)
    with pytest.raises(T2IError, match="the checkpoint expects 000000"):
        TokenStream(tokens / "img", tokens / "text", batch_size=4, expect_tokenizer="0" * 64)
    with pytest.raises(T2IError, match="image tokens made by autoencoder"):
        TokenStream(tokens / "img", tokens / "text", batch_size=4, expect_autoencoder="f" * 64)
