"""Issue 15: loading through a dataset card never returns another set's data. Aligned sets share
their shard names by design, and a rebuild with another seed keeps them, so a card config named
``default`` over relative names gave two sets one ``datasets`` cache entry. Here every kind of set,
two seeds and the build folders that hold their splits load in ONE cache dir, each row checked
against this package's own reader; plus the build-level card (a one-shard split, a split with no
samples) and the licence fields the hub asks for with ``license: other``."""
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures_interop import build_sets, md_sets, shard_paths  # sets HF_*_OFFLINE first

import datasets  # noqa: E402
from huggingface_hub import DatasetCard  # noqa: E402

from t2i_data.card import LICENCE_FILE, LICENCES, build_card_text, card_text, config_name, licence_text, write_build_card  # noqa: E402
from t2i_data.errors import T2IError  # noqa: E402
from t2i_data.manifest import load_manifest  # noqa: E402
from t2i_data.mdmnist import MDMNISTConfig, build  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402
from t2i_data.tario import iter_samples  # noqa: E402
from t2i_data.text import load_pretrained  # noqa: E402
from t2i_data.tokenize import TokenizeConfig, tokenize  # noqa: E402

TRAIN, TEST, SHARD = 20, 5, 8  # train: 3 shards; test: ONE shard (its folder has one .tar and one .json)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """seed0/mdmnist and seed1/mdmnist (train, test), seed0/md-text: their aligned text tokens,
    every build folder with its build card, written the way a producer will call it."""
    root = tmp_path_factory.mktemp("configs")
    for seed in (0, 1):
        out = root / f"seed{seed}" / "mdmnist"
        manifests = build(MDMNISTConfig(seed=seed, train=TRAIN, test=TEST, shard_size=SHARD), out, InProcessRunner())
        assert write_build_card(out, manifests) == out / "README.md"
    load_pretrained("mdmnist", None).save(root / "tk")
    text = root / "seed0" / "md-text"
    write_build_card(text, tokenize(root / "tk", root / "seed0" / "mdmnist", text, TokenizeConfig(length=12), InProcessRunner()))
    return root


def _split_dirs(folder: Path) -> dict[str, Path]:
    """{split: folder} of a shard-set folder or of a build folder (train before test, as built)."""
    if (folder / "manifest.json").is_file():
        return {load_manifest(folder / "manifest.json")["split"]: folder}
    return {load_manifest(p)["split"]: p.parent for p in sorted(folder.glob("*/manifest.json"), reverse=True)}


def _check_rows(ds: datasets.Dataset, split_dir: Path) -> None:
    """Every row equals what iter_samples reads from this folder's shards: key, the tar member's
    bytes (images), the decoded JSON, the token arrays with dtype and shape, and the shard path."""
    paths = [p for p, s in zip(shard_paths(split_dir), load_manifest(split_dir / "manifest.json")["shards"]) if s["samples"]]
    ours = [(p, s) for p in paths for s in iter_samples(p)]
    assert ds.num_rows == len(ours) > 0
    fields = {c for c in ds.column_names if not c.startswith("__")}
    raw = ds
    for image in fields & {"png", "jpg"}:
        raw = raw.cast_column(image, datasets.Image(decode=False))
    for row, (path, s) in zip(raw, ours):
        assert row["__key__"] == s["__key__"] and Path(row["__url__"]).resolve() == path.resolve()
        assert fields == {k for k in s if not k.startswith("__")}
        for f in fields:
            if f in ("png", "jpg"):
                assert row[f]["bytes"] == s[f]
            elif f == "json":
                assert row[f] == json.loads(s[f])  # every sample's JSON has every declared field (schema.py)
            else:
                arr = np.load(io.BytesIO(s[f]))
                got = np.asarray(row[f], dtype=arr.dtype)
                assert got.shape == arr.shape and np.array_equal(got, arr)


def test_every_set_two_seeds_and_every_build_folder_load_their_own_rows_from_one_cache(builds, md_tokens, tmp_path):
    md = md_sets(md_tokens)  # 103 samples, seed 0: images, text tokens, image tokens (one view)
    s0, s1, text = builds / "seed0" / "mdmnist", builds / "seed1" / "mdmnist", builds / "seed0" / "md-text"
    # the collision's preconditions: the same folder names and the same relative shard names
    for a, b in ((s0 / "train", text / "train"), (s0 / "train", s1 / "train"), (s0 / "test", s1 / "test"), (md["mdmnist"], md["text_tokens"])):
        assert [p.name for p in shard_paths(a)] == [p.name for p in shard_paths(b)]
    order = [s0 / "train", text / "train", s1 / "train", s0 / "test", text / "test", s1 / "test", s0, text, s1,
             md["mdmnist"], md["text_tokens"], md["image_tokens"], s0 / "train", s1]  # seed 0 first; images before tokens; again
    cache = str(tmp_path / "hf")  # ONE cache dir for every load
    entries: dict[str, set] = {}
    for folder in order:
        splits = _split_dirs(folder)
        loaded = datasets.load_dataset(str(folder), cache_dir=cache)
        assert sorted(loaded) == sorted(splits)  # the build card: every split, under its own name
        for split, ds in loaded.items():
            _check_rows(ds, splits[split])
        dirs = {str(Path(f["filename"]).parent) for ds in loaded.values() for f in ds.cache_files}
        for other, seen in entries.items():
            assert other == str(folder) or not dirs & seen, f"{folder} and {other} share a datasets cache entry"
        entries.setdefault(str(folder), set()).update(dirs)
    # a second load of the same set reuses its own entry
    assert len(entries[str(s0 / "train")]) == 1 and len(entries[str(s1)]) == 1


def test_cub_and_coco_build_folders_load_every_split_through_their_build_cards(tmp_path):
    """preprocess output: CUB train/test with shards left empty by quarantined inputs, COCO val2017."""
    built = build_sets(tmp_path / "sets")
    cache = str(tmp_path / "hf")
    for folder in (built["cub"], built["coco"].parent):
        splits = _split_dirs(folder)
        write_build_card(folder, {split: load_manifest(d / "manifest.json") for split, d in splits.items()})
        loaded = datasets.load_dataset(str(folder), cache_dir=cache)
        assert sorted(loaded) == sorted(s for s, d in splits.items() if load_manifest(d / "manifest.json")["totals"]["samples"])
        for split, ds in loaded.items():
            _check_rows(ds, splits[split])
    assert any(s["samples"] == 0 for s in load_manifest(built["cub"] / "train" / "manifest.json")["shards"])


def test_config_names_come_from_kind_digest_and_bytes_and_never_default(builds, md_tokens):
    folders = [builds / "seed0" / "mdmnist" / "train", builds / "seed1" / "mdmnist" / "train", builds / "seed0" / "md-text" / "train",
               *md_sets(md_tokens).values()]
    names = []
    for d in folders:
        m = load_manifest(d / "manifest.json")
        configs = DatasetCard.load(d / "README.md").data.to_dict()["configs"]
        assert [c["config_name"] for c in configs] == [config_name([m])] and configs[0]["default"] is True
        assert re.fullmatch(rf"mdmnist-{m['kind'].replace('_', '-')}-[0-9a-f]{{16}}", config_name([m]))
        names.append(config_name([m]))
    assert len(set(names)) == len(names)
    m = load_manifest(folders[0] / "manifest.json")
    rebyted = dict(m, shards=[dict(m["shards"][0], sha256="0" * 64), *m["shards"][1:]])  # same digest, other bytes (another zlib)
    assert config_name([rebyted]) != config_name([m])


def test_the_build_card_lists_only_each_splits_tar_shards(builds):
    for folder in (builds / "seed0" / "mdmnist", builds / "seed0" / "md-text"):
        splits = _split_dirs(folder)
        ms = [load_manifest(d / "manifest.json") for d in splits.values()]
        assert ms[1]["split"] == "test" and ms[1]["totals"]["shards"] == 1  # the case that failed without a build card
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert card == build_card_text([(d.name, m) for d, m in zip(splits.values(), ms)])  # from the manifests alone
        (config,) = DatasetCard.load(folder / "README.md").data.to_dict()["configs"]
        assert config["config_name"] == config_name(ms)
        expected = {m["split"]: [f"{d.name}/{s['name']}" for s in m["shards"] if s["samples"]] for d, m in zip(splits.values(), ms)}
        assert {x["split"]: x["path"] for x in config["data_files"]} == expected
        builder = datasets.load_dataset_builder(str(folder))  # what datasets resolves the patterns to
        resolved = {split: [Path(p) for p in files] for split, files in builder.config.data_files.items()}
        assert resolved == {split: [(folder / f).resolve() for f in files] for split, files in expected.items()}
        for m in ms:
            assert m["digest"] in card


def test_a_split_without_samples_is_left_out_and_an_empty_set_refuses_to_load(tmp_path):
    out = tmp_path / "md"
    write_build_card(out, build(MDMNISTConfig(seed=4, train=3, test=0, shard_size=8), out, InProcessRunner()))
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    assert list(ds) == ["train"]
    _check_rows(ds["train"], out / "train")
    # without a config, datasets would read the empty set's manifest.json as its one row
    with pytest.raises(datasets.exceptions.DataFilesNotFoundError):
        datasets.load_dataset(str(out / "test"), cache_dir=str(tmp_path / "hf"))


def test_every_card_names_its_licence_for_license_other(builds, md_tokens):
    folders = [builds / "seed0" / "mdmnist", builds / "seed0" / "md-text", builds / "seed1" / "mdmnist" / "test", *md_sets(md_tokens).values()]
    for d in folders:
        data = DatasetCard.load(d / "README.md").data.to_dict()
        assert data["license"] == "other" and data["license_link"] == LICENCE_FILE == "LICENSE.md"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", data["license_name"]) and data["license_name"] == "mdmnist-source-licences"
        ms = [load_manifest(s / "manifest.json") for s in _split_dirs(d).values()]
        lic = (d / LICENCE_FILE).read_text(encoding="utf-8")
        assert lic == licence_text(ms)
        for key in ("mnist", "mnist-embedded") if ms[0]["kind"] == "images" else ("mnist",):  # a derived set's sources: its image set
            assert f"| {LICENCES[key]['source']} | {LICENCES[key]['licence']} | {LICENCES[key]['url']} |" in lic
        assert ("Derived from the image set" in lic) == (ms[0]["kind"] != "images")


def test_write_build_card_on_a_single_set_and_on_wrong_input(builds, md_tokens, tmp_path):
    text = md_sets(md_tokens)["text_tokens"]  # tokenize wrote this one set into its out folder itself
    m = load_manifest(text / "manifest.json")
    before = (text / "README.md").read_bytes()
    assert write_build_card(text, {"train": m}) == text / "README.md" and (text / "README.md").read_bytes() == before == card_text(m).encode()
    with pytest.raises(T2IError, match="no folder in it holds the train manifest"):
        write_build_card(builds / "seed1" / "mdmnist", {"train": load_manifest(builds / "seed0" / "mdmnist" / "train" / "manifest.json")})
    s0 = builds / "seed0"
    with pytest.raises(T2IError, match="one kind and schema"):
        build_card_text([("mdmnist/train", load_manifest(s0 / "mdmnist" / "train" / "manifest.json")),
                         ("md-text/test", load_manifest(s0 / "md-text" / "test" / "manifest.json"))])
    same = tmp_path / "again"  # the build card is the same bytes for the same build, wherever it is
    write_build_card(same, build(MDMNISTConfig(seed=0, train=TRAIN, test=TEST, shard_size=SHARD), same, InProcessRunner()))
    assert (same / "README.md").read_bytes() == (s0 / "mdmnist" / "README.md").read_bytes()
    shutil.rmtree(same)
