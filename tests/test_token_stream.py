import logging

import pytest
import torch
from torch.utils.data import DataLoader

from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.stream import loader
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


@pytest.mark.parametrize("workers,skip", [(0, 3), (2, 4), (2, 3), (3, 7), (3, 1)])
def test_resume_at_any_batch_gives_exactly_the_remaining_batches(tokens, workers, skip):
    full = collect(tokens, 0, 1, workers, 4, epoch=1)
    rest = collect(tokens, 0, 1, workers, 4, epoch=1, skip=skip)
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[skip:]]


def test_stream_state_records_the_plan_and_refuses_another_mid_epoch(tokens, caplog):
    ds = TokenStream(tokens / "img", tokens / "text", batch_size=4, seed=3)
    ds.set_epoch(1)
    state = ds.state_dict(5, num_workers=2, lost=0)
    assert state["plan"] == {"batch_size": 4, "world_size": 1, "num_workers": 2, "seed": 3, "shuffle_buffer": 1024,
                             "sets": [ds.img_m["digest"], ds.txt_m["digest"]]}
    assert ds.load_state_dict(state, num_workers=2) == (1, 5, 0)
    with pytest.raises(T2IError, match="seed 9 → 3"):  # a state saved before plans were recorded
        ds.load_state_dict({"epoch": 1, "batches_done": 2, "seed": 9})
    bigger = TokenStream(tokens / "img", tokens / "text", batch_size=8, seed=3)
    with pytest.raises(T2IError, match=r"stopped at batch 5 of epoch 1; this run changes the stream plan: batch_size 4 → 8\. .*start fresh"):
        bigger.load_state_dict(state, num_workers=2, where="run/last.pt")
    two = TokenStream(tokens / "img", tokens / "text", batch_size=4, seed=3, rank=1, world_size=2)
    with pytest.raises(T2IError, match=r"world size \(ranks\) 1 → 2"):
        two.load_state_dict(state, num_workers=2)
    with pytest.raises(T2IError, match=r"num_workers \(dataloader workers\) 2 → 3"):
        ds.load_state_dict(state, num_workers=3)
    ds.load_state_dict(dict(state, plan=dict(state["plan"], num_workers=1)), num_workers=0)  # 0 and 1 workers: the same plan
    with caplog.at_level(logging.WARNING):  # at an epoch boundary the next epoch simply follows the new plan
        assert bigger.load_state_dict(dict(state, batches_done=0), num_workers=2) == (1, 0, 0)
    assert "the stream plan changes at the start of epoch 1: batch_size 4 → 8" in caplog.text


def _copy(tokens, tmp_path, which):
    import shutil

    for k in ("img", "text"):
        if k == which:
            shutil.copytree(tokens / k, tmp_path / k)
    return (tmp_path / "img" if which == "img" else tokens / "img"), (tmp_path / "text" if which == "text" else tokens / "text")


def test_a_same_size_shard_from_another_set_is_refused_naming_both_hashes(tokens, tmp_path):
    """Shard 000000 replaced by one of the same size with other tokens, manifest and .index/
    untouched: the offset index vouched for it (its sha256 equals the manifest's); the hash does not."""
    import hashlib
    import json

    img, txt = _copy(tokens, tmp_path, "img")
    victim = img / "mdmnist-train-000000.tar"
    data = bytearray(victim.read_bytes())
    data[1024 + 200] ^= 0x0F  # a token of the first sample's array: same size, other content
    victim.write_bytes(bytes(data))
    expected = json.loads((img / "manifest.json").read_text())["shards"][0]["sha256"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    for workers in (0, 2):
        ds = TokenStream(img, txt, batch_size=5, seed=3)
        with pytest.raises(T2IError, match=f"mdmnist-train-000000.tar: sha256 {actual}, the manifest says {expected}") as e:
            list(loader(ds, workers))
        assert "Traceback" not in str(e.value)  # one message, also from a dataloader worker


def test_a_text_shard_with_a_changed_byte_is_refused(tokens, tmp_path):
    """The issue's case: one byte of a text-token shard gives id 65285 in a 24-id vocabulary."""
    from t2i_data.tario import member_table
    from t2i_data.token_stream import npy_meta

    img, txt = _copy(tokens, tmp_path, "text")
    victim = txt / "mdmnist-train-000003.tar"
    data = bytearray(victim.read_bytes())
    names, offs, _ = member_table(victim, bytes(data))
    at = int(offs[[i for i, n in enumerate(names) if n.endswith(".text_tokens.npy")][0]])
    head = npy_meta(bytes(data[at:at + 512]))[3]
    data[at + head + 1] = 0xFF  # the high byte of the first id (little-endian uint16): 0xFF00 + its low byte
    victim.write_bytes(bytes(data))
    with pytest.raises(T2IError, match="mdmnist-train-000003.tar: sha256 .*, the manifest says"):
        list(TokenStream(img, txt, batch_size=5, seed=3))


def test_a_shard_truncated_on_a_member_boundary_is_an_error_not_a_short_epoch(tokens, tmp_path):
    from t2i_data.tario import member_table

    img, txt = _copy(tokens, tmp_path, "img")
    victim = img / "mdmnist-train-000002.tar"
    data = victim.read_bytes()
    names, offs, sizes = member_table(victim, data)
    cut = int(offs[10] + sizes[10] + (-sizes[10] % 512))  # after member 10: a well-formed tar without end blocks
    victim.write_bytes(data[:cut])
    with pytest.raises(T2IError, match=f"mdmnist-train-000002.tar: {cut} bytes where the manifest says {len(data)}"):
        list(TokenStream(img, txt, batch_size=5, seed=3))


def test_a_rewrite_after_a_verified_epoch_is_caught_in_the_next(tokens, tmp_path):
    """Verified shards are remembered by (inode, size, mtime, ctime): a later same-size rewrite changes ctime."""
    img, txt = _copy(tokens, tmp_path, "img")
    ds = TokenStream(img, txt, batch_size=5, seed=3)
    assert sum(int(b["valid"].sum()) for b in ds) == N
    victim = img / "mdmnist-train-000004.tar"
    data = bytearray(victim.read_bytes())
    data[1024 + 300] ^= 0x01
    victim.write_bytes(bytes(data))
    ds.set_epoch(1)
    with pytest.raises(T2IError, match="mdmnist-train-000004.tar: sha256"):
        list(ds)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_gone_mid_run_is_reported_counted_and_the_epoch_keeps_its_batches(tokens, tmp_path, caplog, workers):
    img, txt = _copy(tokens, tmp_path, "img")
    ds = TokenStream(img, txt, batch_size=5, seed=3)
    (img / "mdmnist-train-000002.tar").unlink()  # after the stream was made: an unreadable shard, not a wrong one
    with caplog.at_level(logging.WARNING):
        batches = list(loader(ds, workers))
    if workers == 0:
        assert "mdmnist-train-000002.tar: unreadable" in caplog.text
    assert sum(b["lost"] for b in batches) == 16
    per_shard = {}
    for b in batches:  # with workers, the shard's range may be split between two of them
        for k, v in b["lost_shards"].items():
            per_shard[k] = per_shard.get(k, 0) + v
    assert per_shard == {"mdmnist-train-000002.tar": 16}
    assert sum(int(b["valid"].sum()) for b in batches) == N - 16
    assert len(batches) == len(collect(tokens, 0, 1, workers, 5))  # same number of steps as a clean epoch


def test_an_out_of_range_id_in_a_matching_shard_stops_naming_shard_and_key(tmp_path):
    """Bytes that match the manifest but ids past the recorded vocabulary (a wrong manifest, a
    tokenizer bug): the per-chunk max names the shard and the sample."""
    for k in ("img", "txt"):
        (tmp_path / k).mkdir()
    _synthetic_sets(tmp_path, [2] * 8, text_vocab=500)  # sample i's text ids run to 100·i + 11
    with pytest.raises(T2IError, match=r"syn-train-000001.tar: sample syn-0005 has text token id 5\d\d \(position \d+\), outside "
                                       r"the tokenizer's vocabulary of 500 ids"):
        list(TokenStream(tmp_path / "img", tmp_path / "txt", batch_size=4, seed=1, shuffle_buffer=1))
    for k in ("img", "txt"):
        for p in (tmp_path / k).iterdir():
            p.unlink() if p.is_file() else None
    _synthetic_sets(tmp_path, [2] * 8, image_vocab=4000)  # sample i's image ids run to 1000·i + 7
    with pytest.raises(T2IError, match=r"sample syn-0004 has image token id 40\d\d .* autoencoder's vocabulary of 4000 ids"):
        list(TokenStream(tmp_path / "img", tmp_path / "txt", batch_size=4, seed=1, shuffle_buffer=1))


def test_refuses_misaligned_sets_and_other_fingerprints(tokens, tmp_path):
    build(MDMNISTConfig(seed=1, train=20, test=0, shard_size=16), tmp_path / "md2", InProcessRunner())
    tokenize(tokens / "tk", tmp_path / "md2" / "train", tmp_path / "text2", TokenizeConfig(length=12), InProcessRunner())
    with pytest.raises(T2IError, match="derive both from the same image set"):
        TokenStream(tokens / "img", tmp_path / "text2", batch_size=4)
    with pytest.raises(T2IError, match="the checkpoint expects 000000"):
        TokenStream(tokens / "img", tokens / "text", batch_size=4, expect_tokenizer="0" * 64)
    with pytest.raises(T2IError, match="image tokens made by autoencoder"):
        TokenStream(tokens / "img", tokens / "text", batch_size=4, expect_autoencoder="f" * 64)


def _synthetic_sets(root, captions_of, views=2, L=6, grid=2, shard=5, text_vocab=65536, image_vocab=65536):
    """An aligned pair of token sets whose samples have differing caption counts (as COCO's 5–7)."""
    import io

    import numpy as np

    from t2i_data.manifest import FORMAT_VERSION, write_manifest
    from t2i_data.tario import TarWriter

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    truth, recs = {}, {"img": [], "txt": []}
    n = len(captions_of)
    for s in range(0, n, shard):
        ws = {k: TarWriter(root / k / f"syn-train-{s // shard:06d}.tar") for k in recs}
        for i in range(s, min(s + shard, n)):
            key = f"syn-{i:04d}"
            t = (np.arange(captions_of[i] * L, dtype=np.uint16).reshape(-1, L) + 100 * i).astype(np.uint16)
            im = (np.arange(views * grid * grid, dtype=np.uint16).reshape(views, grid, grid) + 1000 * i).astype(np.uint16)
            truth[key] = (t, im)
            ws["img"].write({"__key__": key, "image_tokens.npy": npy(im)})
            ws["txt"].write({"__key__": key, "text_tokens.npy": npy(t)})
        for k, w in ws.items():
            recs[k].append(w.close())
    common = {"format_version": FORMAT_VERSION, "dataset": "syn", "split": "train", "aligned_to": "d" * 64, "quarantined": []}
    for k, kind, extra in (("img", "image_tokens", {"autoencoder": {"grid": grid, "fingerprint": "a" * 64, "vocab_size": image_vocab}}),
                           ("txt", "text_tokens", {"tokenizer": {"length": L, "pad_id": 0, "fingerprint": "t" * 64,
                                                                 "vocab_size": text_vocab}})):
        tot = {"shards": len(recs[k]), "samples": n, "bytes": sum(r["bytes"] for r in recs[k]), "quarantined": 0}
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


def test_shards_verified_by_workers_are_not_hashed_again_next_epoch(tokens, tmp_path, monkeypatch):
    """Workers send back what they verified; workers forked later from this process (another
    stream's DataLoader) start with it, and the stream's own persistent workers keep theirs, so a
    later epoch costs a stat per shard."""
    import types

    from t2i_data import manifest, stream

    img, txt = _copy(tokens, tmp_path, "img")
    stream.forget_verified()
    ds = TokenStream(img, txt, batch_size=5, seed=3)
    assert sum(int(b["valid"].sum()) for b in loader(ds, 2)) == N
    mine = {k for k in stream._VERIFIED if k[0].startswith(str(tmp_path))}
    assert len(mine) == 7  # every image-token shard of the copy, reported by the two workers

    def no_hash(*a, **k):
        raise AssertionError("hashed again")

    fresh = TokenStream(img, txt, batch_size=5, seed=3)
    monkeypatch.setattr(manifest, "hashlib", types.SimpleNamespace(sha256=no_hash))  # new workers fork with it
    fresh.set_epoch(1)
    assert sum(int(b["valid"].sum()) for b in loader(fresh, 2)) == N  # new workers, forked with this process' cache


def test_persistent_workers_hash_each_shard_once_over_epochs(tokens, tmp_path, monkeypatch):
    """A persistent worker handed, in a later epoch, a shard another worker verified finds it in the
    stream's shared table (``PlannedStream.verified_slot``) and does not hash it again. Two workers
    opening the same not-yet-verified shard at the same moment may both hash it (no lock between
    them: the cost is one extra hash, never a skipped one), so the test checks what is certain:
    no worker hashes a file twice, and no file hashed in one epoch is hashed in a later one."""
    import collections
    import os

    from t2i_data import stream

    img, txt = _copy(tokens, tmp_path, "img")
    stream.forget_verified()
    log, real = tmp_path / "hashed.log", stream.check_shard_file

    def counting(path, record, data=None):  # the workers fork with it; each appends what it hashes
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {path}\n")
        return real(path, record, data)

    monkeypatch.setattr(stream, "check_shard_file", counting)
    ds = TokenStream(img, txt, batch_size=5, seed=3)
    for epoch in range(4):  # the epochs' shard orders hand each worker shards the other one verified
        with open(log, "a") as f:
            f.write(f"epoch {epoch}\n")  # written before this epoch's batches are asked for
        ds.set_epoch(epoch)
        assert sum(int(b["valid"].sum()) for b in loader(ds, 2)) == N
    first_epoch, per_worker, epoch = {}, collections.Counter(), None
    for who, what in (line.split(" ", 1) for line in log.read_text().splitlines()):
        if who == "epoch":
            epoch = int(what)
            continue
        per_worker[who, what] += 1
        assert first_epoch.setdefault(what, epoch) == epoch, f"{what} hashed again in epoch {epoch}"
    assert max(per_worker.values()) == 1  # no worker hashes a file twice
    assert len({pid for pid, _ in per_worker}) == 2
    names = sorted(p.name for p in img.glob("*.tar"))
    assert sorted(first_epoch) == sorted(str(d / n) for d in (img, txt) for n in names)  # every file verified


# (epoch, batches already consumed, batches this run takes before it stops: None = all)
EPOCHS = [(0, 0, None), (1, 0, 2), (1, 2, None), (2, 3, None), (3, 0, None)]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_loader_keeps_its_workers_and_gives_the_batches_of_a_new_dataloader_per_epoch(tokens, workers):
    """set_epoch then loader every epoch (a break mid-epoch, a resume at a batch) on one stream with
    persistent workers: batch for batch the keys and token bytes of a new DataLoader per epoch."""
    ds = TokenStream(tokens / "img", tokens / "text", batch_size=4, seed=3, shuffle_buffer=8)
    for epoch, skip, take in EPOCHS:
        ds.set_epoch(epoch, skip, workers)
        got = []
        for b in loader(ds, workers):
            got.append(b)
            if len(got) == take:
                break
        want = collect(tokens, 0, 1, workers, 4, epoch=epoch, skip=skip)[:take]
        assert len(got) == (take or ds.batches_per_epoch(workers) - skip)
        assert [b["keys"] for b in got] == [b["keys"] for b in want]
        assert all(torch.equal(a[k], b[k]) for a, b in zip(got, want) for k in ("text", "image", "valid"))
    if workers:
        (dl,) = ds._loaders.values()
        assert dl.persistent_workers and dl._iterator is not None and len(dl._iterator._workers) == workers
