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
            assert b["text"].shape == (5, 12) and b["image"].shape == (5, 1024) and b["text"].dtype == b["image"].dtype == torch.int32
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


def _synthetic_sets(root, captions_of, views=2, L=6, grid=2, shard=5):
    """An aligned pair of token sets whose samples have differing caption counts (as COCO's 5–7)."""
    import io

    import numpy as np

    from t2i_data.manifest import write_manifest
    from t2i_data.tario import ShardWriter

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    truth, recs = {}, {"img": [], "txt": []}
    n = len(captions_of)
    for s in range(0, n, shard):
        ws = {k: ShardWriter(root / k / f"syn-train-{s // shard:06d}.tar") for k in recs}
        for i in range(s, min(s + shard, n)):
            key = f"syn-{i:04d}"
            t = (np.arange(captions_of[i] * L, dtype=np.uint16).reshape(-1, L) + 100 * i).astype(np.uint16)
            im = (np.arange(views * grid * grid, dtype=np.uint16).reshape(views, grid, grid) + 1000 * i).astype(np.uint16)
            truth[key] = (t, im)
            ws["img"].write({"__key__": key, "image_tokens.npy": npy(im)})
            ws["txt"].write({"__key__": key, "text_tokens.npy": npy(t)})
        for k, w in ws.items():
            recs[k].append(w.close())
    common = {"format_version": 1, "dataset": "syn", "split": "train", "aligned_to": "d" * 64, "rejected": []}
    for k, kind, extra in (("img", "image_tokens", {"autoencoder": {"grid": grid, "fingerprint": "a" * 64}}),
                           ("txt", "text_tokens", {"tokenizer": {"length": L, "pad_id": 0, "fingerprint": "t" * 64}})):
        tot = {"shards": len(recs[k]), "samples": n, "bytes": sum(r["bytes"] for r in recs[k]), "rejected": 0}
        write_manifest(root / k / "manifest.json", dict(common, kind=kind, shards=recs[k], totals=tot, **extra))
    return truth


def test_mixed_caption_counts_give_one_of_each_samples_rows_and_the_index_changes_nothing(tmp_path):
    for k in ("img", "txt"):
        (tmp_path / k).mkdir()
    counts = [5, 6, 5, 7, 0, 5, 6, 5, 5, 7, 6, 5, 5]  # one sample without captions
    truth = _synthetic_sets(tmp_path, counts)
    seen_caps = {k: set() for k in truth}
    runs = []
    for epoch in range(6):
        ds = TokenStream(tmp_path / "img", tmp_path / "txt", batch_size=4, seed=1, shuffle_buffer=3)
        ds.set_epoch(epoch)
        batches = list(ds)
        runs.append(batches)
        got = [(k, t, im) for b in batches for k, t, im, v in zip(b["keys"], b["text"], b["image"], b["valid"]) if v]
        assert sorted(k for k, _, _ in got) == sorted(truth)
        for k, t, im in got:
            caps, views = truth[k]
            rows = [c.tolist() for c in caps]
            if rows:
                assert t.tolist() in rows
                seen_caps[k].add(rows.index(t.tolist()))
            else:
                assert t.tolist() == [0] * 6  # no caption: a row of padding
            assert im.tolist() in [v.reshape(-1).tolist() for v in views]
    assert sum(len(s) > 1 for s in seen_caps.values()) >= 8  # captions change from epoch to epoch
    # the same batches without the offset index (headers parsed instead)
    for p in sorted(tmp_path.glob("*/.index/*.json")):
        p.unlink()
    ds = TokenStream(tmp_path / "img", tmp_path / "txt", batch_size=4, seed=1, shuffle_buffer=3)
    ds.set_epoch(5)
    again = list(ds)
    assert [b["keys"] for b in again] == [b["keys"] for b in runs[5]]
    assert all(torch.equal(a["text"], b["text"]) and torch.equal(a["image"], b["image"]) for a, b in zip(again, runs[5]))
