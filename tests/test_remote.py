"""Shard sets by URL (t2i_data/remote.py): a local HTTP server on 127.0.0.1 started here, fsspec's
memory filesystem and file:// URLs give the same samples, reports and exports as the local
folders; a download that differs from the manifest is refused and deleted; 404s, unreachable
stores and missing protocol packages are one line; the cache evicts least recently used shards
but never a pinned one (in this process or another) and never a file it did not make; prefetch
downloads the next shards of a reader's plan. Nothing here reaches outside the machine."""
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import uuid
from pathlib import Path

import fsspec
import pytest
from torch.utils.data import DataLoader

from fixtures_http import http_server
from fixtures_interop import md_sets  # sets HF_*_OFFLINE first

from t2i_data.errors import T2IError
from t2i_data.export import export
from t2i_data.inspect_shards import inspect
from t2i_data.manifest import data_files, dump_manifest, open_remote_set, open_shard_sets
from t2i_data.remote import RemoteShardSet, ShardMissing, StoreUnreachable, is_url, url_to_fs
from t2i_data.shard_cache import CACHE_MARK, ShardCache, parse_size
from t2i_data.stream import ShardStream, forget_verified
from t2i_data.tario import iter_samples
from t2i_data.token_stream import TokenStream
from t2i_data.verify import verify_path
from t2i_models.cli import main


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(root folder, base URL, request log): an HTTP server on 127.0.0.1 (port 0) serving ``root``."""
    root = tmp_path_factory.mktemp("served")
    with http_server(root) as (base, requests):
        yield root, base, requests


@pytest.fixture(scope="module")
def sets(md_tokens, served):
    """The md_tokens chain (103 MD-MNIST samples in 7 shards, its text and image tokens) copied
    under the server's root: {kind: (local folder, http URL)}."""
    root, base, _ = served
    out = {}
    for kind, d in md_sets(md_tokens).items():
        shutil.copytree(d, root / "sets" / kind)
        out[kind] = (root / "sets" / kind, f"{base}/sets/{kind}")
    return out


def to_memory(folder: Path) -> str:
    """``folder``'s manifest and shards copied to a fresh place in fsspec's memory filesystem; its URL."""
    url = f"memory://t2i-{uuid.uuid4().hex[:12]}/{folder.name}"
    fs, root = url_to_fs(url)
    for p in folder.iterdir():
        if p.is_file():
            fs.pipe(f"{root}/{p.name}", p.read_bytes())
    return url


def names(folder: Path) -> list[str]:
    return [s["name"] for s in json.loads((folder / "manifest.json").read_bytes())["shards"]]


def cached(cache: ShardCache) -> set[str]:
    return {p.name for p in cache.root.glob("*/*") if p.is_file() and not p.name.startswith(".")}


def digest_decode(sample, epoch):
    return {"key": sample["__key__"], "png": hashlib.sha256(sample["png"]).hexdigest()}


def batches(location, workers=0, **kw):
    ds = ShardStream(location, digest_decode, batch_size=8, seed=2, shuffle_buffer=16, **kw)
    ds.set_epoch(1, 0, workers)
    return [(b["key"], b["png"]) for b in DataLoader(ds, batch_size=None, num_workers=workers)]


# --- the same data as the local folders ------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_shard_stream_over_http_gives_the_local_sets_batches(sets, tmp_path, workers):
    local, url = sets["mdmnist"]
    cache = ShardCache(tmp_path / "cache", 10**8)
    expected = batches(local, workers)
    assert len(expected) == 12 and expected == batches(url, workers, cache=cache)  # (DataLoader workers: forked HTTP clients)
    assert cached(cache) <= set(names(local)) and len(cached(cache)) >= 6  # (the plan's leftovers may spare a shard)
    for name in cached(cache):  # the cached copies are the shards' bytes
        assert next(cache.root.glob(f"*/{name}")).read_bytes() == (local / name).read_bytes()


def test_token_stream_over_memory_and_http_gives_the_local_sets_batches(sets, tmp_path):
    (img, img_url), (txt, txt_url) = sets["image_tokens"], sets["text_tokens"]

    def run(a, b, **kw):
        ds = TokenStream(a, b, batch_size=6, seed=4, shuffle_buffer=10, **kw)
        ds.set_epoch(2)
        return [(b["keys"], b["text"].tolist(), b["image"].tolist(), b["valid"].tolist()) for b in ds]

    expected = run(img, txt)
    assert sum(sum(v) for *_, v in expected) == 103
    assert run(to_memory(img), to_memory(txt), cache=ShardCache(tmp_path / "c1", 10**8)) == expected
    assert run(img_url, txt_url, cache=ShardCache(tmp_path / "c2", 10**8), prefetch=0) == expected


def test_file_urls_are_read_in_place_and_never_copied(sets, tmp_path):
    local, _ = sets["mdmnist"]
    assert is_url("file:///x") and not is_url(str(local)) and not is_url(local)
    cache = ShardCache(tmp_path / "cache", 1)  # any fetch would need more than this
    assert batches(local.as_uri(), cache=cache) == batches(local)
    assert [ss.dir for ss in open_shard_sets(local.as_uri(), cache)] == [local]
    assert cached(cache) == set()


def test_verify_inspect_export_and_data_files_by_url_match_the_local_set(sets, tmp_path, monkeypatch):
    local, url = sets["mdmnist"]
    cache = ShardCache(tmp_path / "cache", 10**8)
    [(mpath, where, checks)] = verify_path(url, cache=cache)
    assert (mpath, where) == (f"{url}/manifest.json", url)
    assert [(c.name, c.status) for c in checks] == [(n, "ok") for n in names(local)]
    assert inspect([url], cache=cache)[0] == inspect([local])[0]
    export([url, sets["text_tokens"][1]], tmp_path / "remote", "parquet", cache=cache)
    export([local, sets["text_tokens"][0]], tmp_path / "local", "parquet")
    for name in ("export.json", "train/data-00000-of-00001.parquet"):
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    files = data_files(url, cache=cache)["train"]
    assert [Path(p).read_bytes() for p in files] == [p.read_bytes() for p in map(Path, data_files(local)["train"])]
    assert data_files(url, check=False, cache=cache) == {"train": [f"{url}/{n}" for n in names(local)]}
    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "cli-cache"))  # the commands' cache: T2I_CACHE_DIR, T2I_CACHE_BYTES
    assert main(["verify", url]) == 0
    assert main(["inspect", url, "--out", str(tmp_path / "fig")]) == 0
    assert main(["export", url, "--out", str(tmp_path / "cli-export")]) == 0
    assert (tmp_path / "cli-cache" / CACHE_MARK).is_file()


def test_verify_of_a_local_manifest_with_its_shards_in_a_store(sets, tmp_path):
    local, _ = sets["text_tokens"]
    mem = to_memory(local)
    [(_, where, checks)] = verify_path(local / "manifest.json", data=mem, cache=ShardCache(tmp_path / "c", 10**8))
    assert where == mem and {c.status for c in checks} == {"ok"} and len(checks) == len(names(local))


def test_a_store_that_cannot_list_is_said_by_verify_and_by_the_missing_manifest_line(sets, tmp_path, monkeypatch, caplog):
    local, _ = sets["text_tokens"]
    mem = to_memory(local)
    monkeypatch.setattr(RemoteShardSet, "list_names", lambda self: None)
    with caplog.at_level("WARNING", logger="t2i_data.verify"):
        [(_, _, checks)] = verify_path(mem, cache=ShardCache(tmp_path / "c", 10**8))
    assert {c.status for c in checks} == {"ok"}
    assert [r.getMessage() for r in caplog.records] == [
        f"{mem}: the store cannot list this folder; shard files the manifest does not list were not looked for"]

    def no_listing(self, path, detail=True, **kw):
        raise PermissionError("listing denied")

    monkeypatch.setattr(type(fsspec.filesystem("memory")), "ls", no_listing)
    with pytest.raises(ShardMissing, match=r"nor a manifest.json in a subfolder; its subfolders could not be listed "
                                           r"\(PermissionError: listing denied\)\)"):
        open_shard_sets(mem + "-nothing-here")


# --- what the store sends is checked ---------------------------------------------------------

def test_a_download_that_differs_from_the_manifest_is_refused_deleted_and_never_used(sets, tmp_path, capsys):
    local, _ = sets["mdmnist"]
    url = to_memory(local)
    fs, root = url_to_fs(url)
    bad = names(local)[2]
    data = bytearray((local / bad).read_bytes())
    data[700] ^= 1  # one bit of the first sample's PNG: same size, another sha256
    fs.pipe(f"{root}/{bad}", bytes(data))
    cache = ShardCache(tmp_path / "cache", 10**8)
    rs = open_remote_set(url, cache).remote
    with pytest.raises(T2IError, match=rf"{bad}: the store sent {len(data):,} bytes with sha256 {hashlib.sha256(data).hexdigest()}, "
                                       rf"the manifest says .* the download was deleted and not used"):
        rs.fetch(bad)
    assert rs.stats["refused"] == 1 and list(rs.dir.glob(f"{bad}*")) == []  # neither the shard nor a .part file
    with pytest.raises(T2IError, match=f"{bad}: the store sent"):
        batches(url, cache=cache)
    checks = {c.name: c for c in verify_path(url, cache=cache)[0][2]}
    assert checks[bad].status in ("mismatch", "unreadable") and {c.status for n, c in checks.items() if n != bad} == {"ok"}
    assert list(rs.dir.glob("*.part")) == []
    assert main(["verify", url]) == 1
    fs.pipe(f"{root}/{bad}", bytes(data[:-512]))  # cut short (every try): refused too
    with pytest.raises(T2IError, match=f"{bad}: the store sent {len(data) - 512:,} bytes"):
        rs.fetch(bad)


def test_a_cached_copy_damaged_on_disk_is_fetched_again(sets, tmp_path, caplog):
    local, _ = sets["mdmnist"]
    url = to_memory(local)
    cache = ShardCache(tmp_path / "cache", 10**8)
    rs = open_remote_set(url, cache).remote
    name = names(local)[0]
    path = rs.fetch(name)
    with open(path, "r+b") as f:  # the cached copy changes after it arrived
        f.seek(600)
        f.write(b"\xff")
    forget_verified()
    assert open_remote_set(url, cache).remote.fetch(name).read_bytes() == (local / name).read_bytes()
    assert "the cached copy differs from the manifest" in caplog.text


def test_a_manifest_or_shard_name_that_leaves_its_folder_is_refused(sets, tmp_path):
    local, _ = sets["mdmnist"]
    url = to_memory(local)
    fs, root = url_to_fs(url)
    m = json.loads((local / "manifest.json").read_bytes())
    hostile = dict(m, shards=[dict(m["shards"][0], name="../../etc/evil.tar")] + m["shards"][1:])
    fs.pipe(f"{root}/manifest.json", dump_manifest(hostile))  # its digest recomputed: no defence
    cache = ShardCache(tmp_path / "cache", 10**8)
    with pytest.raises(T2IError, match=r"shards\[0\]\.name is '\.\./\.\./etc/evil\.tar', expected 'mdmnist-train-000000\.tar'"):
        open_remote_set(url, cache).remote
    for name in ("../evil.tar", "/etc/evil.tar", "a/b.tar", ".."):  # a manifest handed over in memory: checked again
        with pytest.raises(T2IError, match="a shard must be a file"):
            RemoteShardSet(url, manifest=dict(m, shards=[dict(m["shards"][0], name=name)]), cache=cache)
    assert not (tmp_path / "etc").exists() and cached(cache) == set()


# --- one line when something is wrong --------------------------------------------------------

def test_missing_manifest_missing_shard_and_unreachable_store_are_one_line(sets, served, tmp_path, capsys, monkeypatch):
    root, base, requests = served
    local, _ = sets["mdmnist"]
    shutil.copytree(local, root / "gone")
    first = names(local)[0]
    (root / "gone" / first).unlink()
    cache = ShardCache(tmp_path / "cache", 10**8)
    with pytest.raises(ShardMissing, match=rf"{base}/nothing/manifest.json: not found in the store"):
        open_shard_sets(f"{base}/nothing", cache)
    rs = open_remote_set(f"{base}/gone", cache).remote
    with pytest.raises(ShardMissing, match=rf"{base}/gone/{first}: not found in the store \(no such file or key; HTTP 404\)"):
        rs.fetch(first)
    assert ("GET", f"/gone/{first}") in requests
    checks = {c.name: c.status for c in verify_path(f"{base}/gone", cache=cache)[0][2]}
    assert checks[first] == "missing" and list(checks.values()).count("ok") == len(names(local)) - 1
    ds = ShardStream(f"{base}/gone", digest_decode, batch_size=8, cache=cache)  # a stream counts the missing shard as lost
    ds.set_epoch(0)
    lost = [b["lost_shards"] for b in ds if b["lost"]]
    assert lost and all(set(x) == {first} for x in lost)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnreachable, match=rf"127.0.0.1:{port}/x/manifest.json: the store did not answer \(.*\) after 3 tries"):
        open_shard_sets(f"http://127.0.0.1:{port}/x", cache)
    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "cli-cache"))
    capsys.readouterr()
    assert main(["inspect", f"{base}/gone"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{first}: not found in the store" in err


def test_a_protocol_whose_package_is_missing_names_it(monkeypatch):
    def missing(url, **kw):
        raise ImportError({"s3": "Install s3fs to access S3", "gs": "Please install gcsfs to access Google Storage"}[url[:2]])

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)  # as when s3fs / gcsfs are not installed
    with pytest.raises(T2IError, match=r"s3://bucket/set: reading s3:// URLs needs the s3fs package, which is not installed: pip install s3fs"):
        open_shard_sets("s3://bucket/set")
    with pytest.raises(T2IError, match=r"gs://bucket/set: reading gs:// URLs needs the gcsfs package, .*: pip install gcsfs"):
        TokenStream("gs://bucket/set", "gs://bucket/text", batch_size=2)
    monkeypatch.undo()
    with pytest.raises(T2IError, match=r"nosuchproto://x/y: fsspec knows no nosuchproto:// protocol"):
        open_shard_sets("nosuchproto://x/y")
    assert parse_size("20G") == 20 * 10**9 and parse_size("1.5M") == 1_500_000 and parse_size("4096") == 4096
    with pytest.raises(T2IError, match="not a size"):
        parse_size("lots")


# --- the cache ----------------------------------------------------------------------------

def _hold(path_q, ready, release, url, cache_root, name):
    """In another process: pin ``name`` until told to let go (as a DataLoader worker reading it)."""
    rs = open_remote_set(url, ShardCache(cache_root, 10**9)).remote
    with rs.pinned(name) as path:
        path_q.put(str(path))
        ready.set()
        release.wait(30)


def test_the_cache_limit_evicts_the_least_recently_used_shard_but_never_a_pinned_one(sets, tmp_path):
    local, _ = sets["image_tokens"]  # 7 shards: 6 of 16 samples and one of 7
    url = to_memory(local)
    shard = names(local)
    size = (local / shard[0]).stat().st_size
    cache = ShardCache(tmp_path / "cache", int(2.5 * size))  # room for two whole shards
    rs = open_remote_set(url, cache).remote
    with rs.pinned(shard[0]):  # the least recently used, but in use
        rs.fetch(shard[1])
        rs.fetch(shard[2])  # no room: shard 1 goes, not shard 0
        assert cached(cache) == {shard[0], shard[2]} and cache.evicted == 1
    rs.fetch(shard[3])  # shard 0 let go: now it is the least recently used
    assert cached(cache) == {shard[2], shard[3]} and cache.evicted == 2
    rs.fetch(shard[2])  # a hit makes it the most recently used
    rs.fetch(shard[4])
    assert cached(cache) == {shard[2], shard[4]}
    assert cache.usage() <= cache.limit
    # a shard pinned by another process (a DataLoader worker, another rank) is skipped too
    ctx = multiprocessing.get_context("fork")
    q, ready, release = ctx.Queue(), ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(q, ready, release, url, cache.root, shard[5]))
    child.start()
    try:
        assert ready.wait(60)
        rs.fetch(shard[6])
        rs.fetch(shard[0])  # two fetches, and shard 5 (pinned over there) the oldest each time
        assert shard[5] in cached(cache) and shard[0] in cached(cache)
    finally:
        release.set()
        child.join(60)
    assert child.exitcode == 0
    with pytest.raises(T2IError, match=r"more than the shard cache's limit of 10 bytes"):
        open_remote_set(url, ShardCache(tmp_path / "tiny", 10)).remote.fetch(shard[0])


def test_the_cache_never_deletes_what_it_did_not_make(sets, tmp_path):
    local, _ = sets["mdmnist"]
    before = {p: p.read_bytes() for p in local.iterdir() if p.is_file()}
    with pytest.raises(T2IError, match="not a t2i shard cache .* and not empty"):
        ShardCache(local, 10)  # pointed at a local set: refused, nothing evicted from it
    root = tmp_path / "cache"
    cache = ShardCache(root, 3 * (local / names(local)[0]).stat().st_size)
    mine = root / "0123456789abcdef"  # a folder shaped like a set folder of the cache, but not made by it
    mine.mkdir()
    shutil.copy(local / names(local)[0], mine / names(local)[0])
    (root / "notes").mkdir()
    shutil.copy(local / names(local)[1], root / "notes" / "keep.tar")
    os.symlink(local / names(local)[2], root / "link.tar")
    url = to_memory(local)
    batches(url, cache=cache)
    own = next(d for d in root.iterdir() if (d / ".t2i-cache-set.json").is_file())  # the set folder the cache made
    (own / "my.tar").write_bytes(b"a user's own file inside the cache's set folder")
    batches(url, cache=cache, prefetch=4)  # many evictions
    assert cache.evicted >= 4
    assert (mine / names(local)[0]).is_file() and (root / "notes" / "keep.tar").is_file() and (root / "link.tar").is_file()
    assert (own / "my.tar").read_bytes() == b"a user's own file inside the cache's set folder"
    # a file put by hand under a shard's own name: refused, never replaced, evicted or read
    for p in own.glob("*.tar"):
        if p.name != "my.tar":
            p.unlink()
    (own / ".used" / names(local)[0]).unlink(missing_ok=True)  # as after an eviction
    (own / names(local)[0]).write_bytes(b"not the shard")
    with pytest.raises(T2IError, match=r"a file the shard cache did not download, where it keeps .*move it away"):
        open_remote_set(url, cache).remote.fetch(names(local)[0])
    assert (own / names(local)[0]).read_bytes() == b"not the shard"
    assert {p: p.read_bytes() for p in local.iterdir() if p.is_file()} == before


def test_prefetch_downloads_the_next_shards_of_the_plan_while_one_is_read(sets, tmp_path):
    local, _ = sets["mdmnist"]
    url = to_memory(local)
    for ahead in (0, 2):
        cache = ShardCache(tmp_path / f"cache{ahead}", 10**8)
        ds = ShardStream(url, digest_decode, batch_size=4, seed=1, shuffle_buffer=1, cache=cache, prefetch=ahead)
        ds.set_epoch(0)
        order = [ds.names[s] for s, _, _ in ds.share(0, 1, "shuffle").ranges]
        it = iter(ds)
        first = next(it)
        assert set(first["key"]) <= {s["__key__"] for s in iter_samples(local / order[0])}
        rs = ds.shard_sets[0].remote
        rs.wait_prefetched()
        assert cached(cache) == set(order[: 1 + ahead])  # the shard being read, and the next `ahead` of the plan
        assert rs.stats["downloads"] == 1 + ahead
        it.close()
        rs.close()


def test_token_stream_pins_what_it_gathers_and_releases_it(sets, tmp_path):
    (img, _), (txt, _) = sets["image_tokens"], sets["text_tokens"]
    size = max((img / n).stat().st_size + (txt / n).stat().st_size for n in names(img))
    cache = ShardCache(tmp_path / "cache", 4 * size)  # less than the two sets: the stream evicts as it goes
    ds = TokenStream(to_memory(img), to_memory(txt), batch_size=5, seed=0, cache=cache)
    ds.set_epoch(0)
    keys = [k for b in ds for k, v in zip(b["keys"], b["valid"]) if v]
    assert len(keys) == len(set(keys)) == 103 and cache.evicted > 0
    for rs in (ds.img_set.remote, ds.txt_set.remote):
        for p in rs.dir.glob("*.tar"):  # every pin released: each cached copy can be evicted now
            fd = os.open(p, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)


def test_a_cache_folder_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(T2IError, match=r"f: a file, not a folder; the shard cache needs a folder of its own"):
        ShardCache(tmp_path / "f", 10)
    with pytest.raises(T2IError, match=r"f/c: cannot make the shard cache folder \(.*\); set T2I_CACHE_DIR to a writable folder"):
        ShardCache(tmp_path / "f" / "c", 10)
    assert (tmp_path / "f").read_text() == "mine"


def test_a_failed_prefetch_is_counted_and_the_readers_fetch_raises_it(sets, tmp_path):
    local, _ = sets["mdmnist"]
    rs = open_remote_set(to_memory(local), ShardCache(tmp_path / "tiny", 10)).remote  # no shard fits
    rs.prefetch(names(local)[:2])
    rs.wait_prefetched()
    assert rs.stats["prefetch_failed"] == 2 and rs.stats["downloads"] == 0
    with pytest.raises(T2IError, match="more than the shard cache's limit of 10 bytes"):
        rs.fetch(names(local)[0])


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}  # the one timing field
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_and_eval_autoencoder_read_their_sets_by_url_as_from_the_folder(served, tmp_path_factory, tmp_path, monkeypatch):
    from fixtures_sources import coco_shards

    root, base, requests = served
    local = coco_shards(tmp_path_factory)  # COCO val2017, ae regime, 32 px, 2 images a shard
    shutil.copytree(local, root / "ae" / "val2017")
    url = f"{base}/ae/val2017"
    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "cache"))
    runs = {}
    for name, where in (("local", str(local)), ("http", url)):
        out = tmp_path / name
        assert main(["-q", "train", "autoencoder", "arch=dvae_tiny", f"images={where}", f"eval_images={where}", f"out={out}",
                     "steps=3", "batch_size=2", "log_every=1", "grid_every=100", "eval_n=4"]) == 0
        assert main(["-q", "eval", "autoencoder", "--autoencoder", str(out / "last.pt"), "--images", where, "--out", str(out / "ev"),
                     "--n", "4", "--grid", "2"]) == 0
        runs[name] = out
    assert _rows(runs["http"]) == _rows(runs["local"])  # train rows and the held-out rows
    assert [r["split"] for r in _rows(runs["http"])] == ["train", "train", "train", "test"]  # the held-out row at the end
    a, b = (json.loads((runs[n] / "ev" / "report.json").read_text()) for n in ("local", "http"))
    assert b.pop("image_set") == url and a.pop("image_set") == str(local)
    assert b.pop("autoencoder") != a.pop("autoencoder")  # the two checkpoints' paths
    assert a == b  # the same figures, digest and fingerprint
    assert (runs["http"] / "ev" / "reconstructions.png").read_bytes() == (runs["local"] / "ev" / "reconstructions.png").read_bytes()
    assert any(path.startswith("/ae/val2017/") and path.endswith(".tar") for _, path in requests)  # shards came over HTTP


def test_a_manifest_larger_than_one_streamed_read_arrives_whole(served, monkeypatch):
    # fsspec's streamed HTTP file returned 96 KiB of a 212 KB manifest from one read(); the reader loops to the end
    from t2i_data import remote

    root, base, _ = served
    for size in (98_304 + 1, 1_000_003):
        (root / f"big{size}").mkdir()
        body = json.dumps({"pad": "x" * (size - 11)}).encode()
        assert len(body) == size
        (root / f"big{size}" / "manifest.json").write_bytes(body)
        assert remote.read_manifest(f"{base}/big{size}") == (f"{base}/big{size}", body)
    monkeypatch.setattr(remote, "MAX_MANIFEST_BYTES", 500_000)  # the limit (256 MiB) still holds across reads
    with pytest.raises(T2IError, match="more than 500,000 bytes; not a t2i manifest"):
        remote.read_manifest(f"{base}/big1000003")


@pytest.mark.parametrize("tail", ["?x=1", "?X-Amz-Signature=abc", "#frag"])
def test_a_set_url_with_a_query_or_fragment_is_refused_in_one_line(sets, tail, capsys):
    _, url = sets["mdmnist"]
    with pytest.raises(T2IError, match=r"a shard-set URL names a folder, without a query string or fragment"):
        open_shard_sets(url + tail)
    assert main(["-q", "verify", url + tail]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"t2i: error: {url + tail}: a shard-set URL names a folder")


def test_a_build_folder_where_one_split_is_read_names_its_splits(tmp_path):
    from t2i_data.manifest import split_manifest

    for split in ("test", "train"):
        (tmp_path / "b" / split).mkdir(parents=True)
        (tmp_path / "b" / split / "manifest.json").write_text("{}")
    with pytest.raises(T2IError) as e:
        split_manifest(tmp_path / "b")
    assert str(e.value) == f"{tmp_path / 'b'}: holds 2 splits (test, train); give one split's folder, e.g. {tmp_path / 'b' / 'train'}"
